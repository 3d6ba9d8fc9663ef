"""Calibration sets and FP16/INT8 accuracy checks for engines. Depends on ``engines`` only."""
