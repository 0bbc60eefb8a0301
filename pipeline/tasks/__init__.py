"""Task plug-ins: one folder each (``classification/``, ``detection/``,
``segmentation/``), registered in :mod:`pipeline.core.registry`; see :mod:`.base`."""

from __future__ import annotations

from pipeline.core.registry import REGISTRY, TaskSpec, get_runtime, get_spec, get_task, task_names
from pipeline.tasks.base import Task, TaskRuntime

__all__ = ["REGISTRY", "Task", "TaskRuntime", "TaskSpec", "get_runtime", "get_spec", "get_task", "task_names"]
