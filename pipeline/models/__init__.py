"""Model builders: backbones and task heads from built-in Keras layers only.

Loaded lazily, so ``pipeline.core.backbones`` (what each backbone is) imports
without TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BACKBONES": "pipeline.models.backbones",
    "Features": "pipeline.models.backbones",
    "build_backbone": "pipeline.models.backbones",
    "backbone_layer_names": "pipeline.models.backbones",
    "register_backbone": "pipeline.models.backbones",
    "build_classifier": "pipeline.models.classifier",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
