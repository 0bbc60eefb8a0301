"""Task plug-ins, registered by name.

A task supplies exactly four things to the shared stages: its data reader, its
model builder, its loss and metric, and its post-processing. The trainer,
optimizer, exporter and evaluator only ever talk to a :class:`Task`.
"""

from __future__ import annotations

from pipeline.tasks.base import Task

_REGISTRY: dict[str, Task] = {}


# Imported on first use, so `edgepipe train --task classification` never loads detection code.
_MODULES = {
    "classification": "pipeline.tasks.classification",
    "detection": "pipeline.tasks.detection",
    "segmentation": "pipeline.tasks.segmentation",
}


def register_task(task: Task) -> Task:
    _REGISTRY[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name``; detection/segmentation register when built."""
    if name not in _REGISTRY and name in _MODULES:
        import importlib

        importlib.import_module(_MODULES[name])  # registers itself
    if name not in _REGISTRY:
        raise ValueError(f"Task {name!r} is not available. Available: {sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def available_tasks() -> list[str]:
    for name in _MODULES:
        get_task(name)
    return sorted(_REGISTRY)


__all__ = ["Task", "register_task", "get_task", "available_tasks"]
