"""``python -m stream`` is the ``facestream`` command."""

from stream.cli import main

raise SystemExit(main())
