"""This process's place in a multi-worker run, from ``TF_CONFIG`` (no TensorFlow:
``edgepipe all`` decides from it which stages a worker runs)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def peer_addresses() -> list[str]:
    """Every other task's ``host:port`` in TF_CONFIG's cluster."""
    doc = _tf_config()
    task = doc.get("task", {})
    me = (task.get("type", "worker"), int(task.get("index", 0)))
    return [a for kind, addrs in doc.get("cluster", {}).items() for i, a in enumerate(addrs) if (kind, i) != me]


def _probe(address: str) -> str | None:
    """Why ``host:port`` cannot be reached, or ``None`` when it accepts a connection."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):  # [::1]:port is IPv6
            return None
    except (OSError, ValueError) as e:
        return str(e) or type(e).__name__


def unmet_message(timeout_s: float) -> str:
    """What to tell a user whose workers did not meet: TF_CONFIG, and which addresses
    do not answer."""
    role = worker_role()
    down = [f"{a} ({why})" for a in peer_addresses() if (why := _probe(a))]
    what = (
        f"cannot reach {', '.join(down)}"
        if down
        else "every peer answers at its address, but the cluster did not assemble (a worker started with "
        "another cluster list or task, or one still starting?)"
    )
    return (
        f"TF_CONFIG: {role.task_type} {role.index} waited {timeout_s:.0f} s (train.worker_timeout_s) for the "
        f"other workers and {what}. Start every worker with the same cluster list and its own task index, and "
        "check the addresses and that their ports are open between the hosts"
    )


@contextlib.contextmanager
def peers_within(timeout_s: float) -> Iterator[None]:
    """Stop this process with an error naming TF_CONFIG and the unreachable addresses
    when the workers have not all met within ``timeout_s``: TensorFlow itself would wait
    for a missing worker for up to an hour, saying nothing. TensorFlow blocks in C++
    holding the GIL, where no Python thread or signal handler runs, so the watchdog is
    a small separate process (no TensorFlow) that prints the error and ends this one
    (SIGTERM, then SIGKILL 5 s later: the waiting runtime does not heed SIGTERM); it is
    stopped as soon as the workers have met."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [sys.executable, "-m", "pipeline.core.cluster", str(os.getpid()), str(timeout_s)]
    watcher = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
    try:
        yield
    finally:
        watcher.terminate()
        watcher.wait()


def _watch(pid: int, timeout_s: float) -> None:
    """The watchdog's body: wait, unless the watched process ends or stops us first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.getppid() != pid:
            return  # the worker is gone: nothing to watch
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    print(f"error: {unmet_message(timeout_s)}", file=sys.stderr, flush=True)
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):  # TensorFlow's runtime may hold SIGTERM while it waits
        time.sleep(0.1)
        if os.getppid() != pid:
            return
    os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    _watch(int(sys.argv[1]), float(sys.argv[2]))
