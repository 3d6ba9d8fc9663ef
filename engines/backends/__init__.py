"""Inference backends."""
def create_engine(*a, **k): raise NotImplementedError
