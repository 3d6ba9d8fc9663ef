"""facestream: real-time face swap, reenactment and restoration.

The ``stream`` package holds everything that touches media: sources, tracking, stages, the pipeline,
sinks, serving and the ``facestream`` CLI. Networks and inference backends live in ``engines``.
"""

__version__ = "0.1.0"
