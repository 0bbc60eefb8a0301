"""This process's place in a multi-worker run, from ``TF_CONFIG`` (no TensorFlow:
``edgepipe all`` decides from it which stages a worker runs)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pipeline.core.errors import ConfigError


def _tf_config() -> dict:
    text = os.environ.get("TF_CONFIG") or "{}"
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("cluster", {}), dict):
            raise ValueError("expected {'cluster': {...}, 'task': {'type': ..., 'index': ...}}")
        task = doc.get("task", {})
        int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"TF_CONFIG (environment): not a valid cluster description ({e}): {text[:200]}") from None
    return doc


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in a multi-worker run (TF_CONFIG). Only the chief writes
    the run folder; the others write to temporary folders, as TensorFlow's
    multi-worker guide prescribes, so two writers never interleave one file."""

    task_type: str
    index: int
    workers: int  # chief and workers together

    @property
    def chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0 and not self.has_chief)

    has_chief: bool = False


def worker_role() -> WorkerRole:
    doc = _tf_config()
    cluster, task = doc.get("cluster", {}), doc.get("task", {})
    n = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    return WorkerRole(task.get("type", "worker"), int(task.get("index", 0)), max(1, n), bool(cluster.get("chief")))
