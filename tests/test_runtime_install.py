"""The base install is the runtime: in a venv with ``pip install edgepipe`` alone (no
extras), ``edgepipe run``, ``inspect`` and ``benchmark`` work on exported models of
every task, and TensorFlow is not there."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig

import cv2
import numpy as np
import pytest
from conftest import ROOT, tiny_config

TASK_SIZES = {"classification": 32, "detection": 64, "segmentation": 64}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """An int8 export of an untrained model per task, through the real export stage."""
    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import run_stage
    from pipeline.stages.weights import save_weights
    from pipeline.tasks import get_task

    base = tmp_path_factory.mktemp("runtime_models")
    out = {}
    for task_name, size in TASK_SIZES.items():
        cfg = tiny_config(
            f"model.input_size={size}",
            "data.synthetic_samples=32",
            "export.representative_samples=4",
            f"export.dir={base / 'exports'}",
            task=task_name,
        )
        run = RunDir(base / task_name)
        run.save_config(cfg)
        task = get_task(task_name)
        save_weights(task.build_model(cfg, len(task.class_names(task.load_data(cfg)))), run.weights("float"))
        out[task_name] = run_stage("export", run, cfg, ["int8"])["int8"]
    return out


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory):
    base = tmp_path_factory.mktemp("venv")
    # A copy of the sources: building the wheel in place would leave build/ in the checkout.
    src = base / "src"
    # (without the checkout's own build of the tracker's C step: the install builds it)
    shutil.copytree(ROOT / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    for f in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / f, src / f)
    venv = base / "rt"
    for cmd in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", str(src)],
    ):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_the_base_install_runs_every_task_without_tensorflow(exported, runtime_venv, tmp_path):
    py, edgepipe = runtime_venv / "bin" / "python", runtime_venv / "bin" / "edgepipe"
    probe = "import importlib.util as u; print([m for m in ('tensorflow', 'tf_keras', 'keras_cv') if u.find_spec(m)])"
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)
    # the tracker's compiled step, built by the install where there is a C compiler
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    probe = "from pipeline.runtime.bytetrack import native; print(native())"
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == str(shutil.which(cc) is not None), (cc, r.stdout, r.stderr)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i}.png"), np.random.default_rng(i).integers(0, 256, (120, 160, 3), np.uint8))
    for task_name, model in exported.items():
        r = subprocess.run([str(edgepipe), "inspect", model, "--json"], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout)["metadata"]["outputs"], task_name
        r = subprocess.run(
            [str(edgepipe), "benchmark", model, "--threads", "1", "--runs", "3", "--warmup", "1", "--json"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout)["latency"]["1"]["p50"] > 0
        jsonl = tmp_path / f"{task_name}.jsonl"
        cmd = [str(edgepipe), "run", "--model", model, "--source", str(frames), "--no-display", "--jsonl", str(jsonl)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
        assert len(lines) == 3 and all("predictions" in line for line in lines), task_name
