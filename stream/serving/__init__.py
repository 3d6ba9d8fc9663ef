"""Live serving: an aiohttp + aiortc server that swaps faces in a browser's camera stream.

:class:`~stream.serving.server.FacestreamServer` answers WebRTC offers (one peer connection per
session), :mod:`~stream.serving.session` runs each session's frames through a processor off the event
loop with keep-latest queues, and :mod:`~stream.serving.metrics` exposes Prometheus metrics.
"""
