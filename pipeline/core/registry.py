"""The task registry: one line per task, naming its folder, and the task spec type.

A task is one folder, ``pipeline/tasks/<name>/`` (see :mod:`pipeline.tasks.base`),
plus its line in :data:`REGISTRY`. The registry lives in the core so that the config
can check task names and defaults without importing any task; each part of a task is
imported on first use, so the runtime loads only a task's ``runtime.py`` (no
TensorFlow) and ``edgepipe train --task classification`` never loads detection code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import ConfigError

REGISTRY: dict[str, str] = {
    "classification": "pipeline.tasks.classification",
    "detection": "pipeline.tasks.detection",
    "segmentation": "pipeline.tasks.segmentation",
}


@dataclass(frozen=True)
class TaskSpec:
    """A task as data (in its folder's ``__init__.py``).

    Attributes:
        name: the ``--task`` value.
        metric: the report.json metric name (``accuracy``, ``map50_95``, ``miou``).
        data_formats: the ``data.format`` values its readers take.
        default_config: config values that differ from the global defaults.
        demo_settings: ``--set`` overrides of ``edgepipe demo``: the whole chain in minutes.
        monitor, monitor_mode: the Keras log key checkpointing and early stopping watch.
        run_options: the ``edgepipe run`` post-processing options it reads (e.g. ``top_k``).
    """

    name: str
    metric: str
    data_formats: tuple[str, ...]
    default_config: dict = field(default_factory=dict)
    demo_settings: tuple[str, ...] = ()
    monitor: str = "val_loss"
    monitor_mode: str = "min"
    run_options: tuple[str, ...] = ()


def task_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def _module(name: str, part: str = ""):
    if name not in REGISTRY:
        raise ConfigError(f"task: {name!r} is not one of {list(REGISTRY)}")
    return importlib.import_module(REGISTRY[name] + part)


def get_spec(name: str) -> TaskSpec:
    """The task's :class:`TaskSpec` (plain data)."""
    return _module(name).SPEC


def get_runtime(name: str) -> Any:
    """The task's :class:`~pipeline.tasks.base.TaskRuntime`: post-processing, JSON and
    drawing, NumPy and OpenCV only."""
    return _module(name, ".runtime").RUNTIME


def get_task(name: str) -> Any:
    """The task's :class:`~pipeline.tasks.base.Task`, its training half (imports its
    readers, models and TensorFlow)."""
    return _module(name, ".task").TASK
