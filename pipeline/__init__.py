"""edgepipe: vision models from data to phone.

Public API, re-exported here (TFMOT's ``api/`` idiom) and loaded lazily so that
``import pipeline`` stays cheap until TensorFlow is really needed.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "pipeline.core.config",
    "ConfigError": "pipeline.core.errors",
    "EdgepipeError": "pipeline.core.errors",
    "load_config": ("pipeline.core.config", "load"),
    "RunDir": "pipeline.core.rundir",
    "InputSpec": "pipeline.core.images",
    "prepare": "pipeline.core.images",
    "normalize": "pipeline.core.images",
    "Sidecar": "pipeline.core.sidecar",
    "read_sidecar": "pipeline.core.sidecar",
    "get_task": "pipeline.core.registry",
    "get_runtime": "pipeline.core.registry",
    "run_stage": "pipeline.stages.chain",
    "run_chain": "pipeline.stages.chain",
    "TFLiteModel": "pipeline.runtime.tflite_model",
    "RunOptions": "pipeline.runtime.runner",
    "load_model": "pipeline.runtime.runner",
    "run_video": ("pipeline.runtime.runner", "run"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    target = _EXPORTS[name]
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(importlib.import_module(module), attr)
