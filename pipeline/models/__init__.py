"""Model builders: backbones and task heads from built-in Keras layers only."""

from pipeline.models.backbones import BACKBONES, get_backbone, register_backbone
from pipeline.models.classifier import build_classifier

__all__ = ["BACKBONES", "get_backbone", "register_backbone", "build_classifier"]
