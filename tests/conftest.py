"""Shared fixtures: tiny synthetic configs and one full chain run reused by many tests."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

import pipeline._keras  # noqa: F401 - Keras 2 before anything imports TensorFlow

ROOT = Path(__file__).resolve().parents[1]

# Small enough for a 2-core CI box, large enough that the model learns something.
TINY = [
    "data.synthetic_samples=480",
    "data.synthetic_classes=3",
    "model.input_size=32",
    "model.width=0.25",
    "model.depth=0.5",
    "train.epochs=4",
    "train.batch_size=16",
    "train.learning_rate=0.005",
    "prune.epochs=1",
    "prune.min_params=64",
    "qat.epochs=1",
    "export.representative_samples=64",
    "evaluate.latency_runs=5",
    "evaluate.warmup_runs=1",
    "evaluate.latency_threads=[1]",
    "evaluate.threads=1",
]


def tiny_config(*extra: str, task: str = "classification"):
    from pipeline.core import config

    return config.load(None, [*TINY, *extra], task=task)


def run_chain(tmp_path_factory, name: str, task: str, overrides: list[str]):
    """train → prune → qat → export → evaluate in a fresh folder; ``(run, cfg, results)``."""
    from pipeline.core import config
    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import CHAIN, run_stage

    logging.getLogger().setLevel(logging.WARNING)
    base = tmp_path_factory.mktemp(name)
    run = RunDir(base / "run")
    cfg = config.load(None, [*overrides, f"export.dir={base / 'exports'}"], task=task)
    results = {stage: run_stage(stage, run, cfg) for stage in CHAIN}
    return run, cfg, results


@pytest.fixture(scope="session")
def chain(tmp_path_factory):
    """A run folder after train → prune → qat → export → evaluate on tiny synthetic data."""
    return run_chain(tmp_path_factory, "chain", "classification", TINY)


def edgepipe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env
