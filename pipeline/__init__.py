"""edgepipe: vision models from data to phone.

Public API, re-exported here (TFMOT's ``api/`` idiom) and loaded lazily so that
``import pipeline`` stays cheap until TensorFlow is really needed.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "pipeline.config",
    "ConfigError": "pipeline.config",
    "load_config": ("pipeline.config", "load"),
    "RunDir": "pipeline.rundir",
    "InputSpec": "pipeline.data.images",
    "prepare": "pipeline.data.images",
    "normalize": "pipeline.data.images",
    "get_task": "pipeline.tasks",
    "run_stage": "pipeline.cli",
    "TFLiteModel": "pipeline.runtime.tflite_model",
    "RunOptions": "pipeline.runtime.runner",
    "run_video": ("pipeline.runtime.runner", "run"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    target = _EXPORTS[name]
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(importlib.import_module(module), attr)
