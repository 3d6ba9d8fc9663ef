"""Networks, checkpoints, export and inference backends. Never imports ``stream``."""
