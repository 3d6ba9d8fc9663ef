"""Calibration sets and FP16/INT8 accuracy checks for engines. Depends on ``engines`` only."""

from calibration.accuracy import AccuracyReport, OutputAccuracy, compare_engines, fp16_accuracy_report
from calibration.dataset import build_calibration_set, face_crop, load_calibration_set

__all__ = [
    "AccuracyReport",
    "OutputAccuracy",
    "build_calibration_set",
    "compare_engines",
    "face_crop",
    "fp16_accuracy_report",
    "load_calibration_set",
]
