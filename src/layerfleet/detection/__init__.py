"""Print-failure detection: the shipped model and its runtime (ONNX Runtime, no PyTorch)."""

from layerfleet.detection.imaging import BadImage
from layerfleet.detection.runtime import ALERT_SCORE, Detector, FrameResult, ModelMissing

__all__ = ["ALERT_SCORE", "BadImage", "Detector", "FrameResult", "ModelMissing"]
