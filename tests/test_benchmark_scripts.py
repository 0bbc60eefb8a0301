"""The scale and GPU benchmark scripts run end to end in their tiny modes (CI has no
GPU and no time for 50,000 images): the paths they measure work, the figures are sane."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, subprocess_env


@pytest.mark.slow
def test_gpu_check_runs_every_precision_and_the_chain_after_mixed_precision(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=subprocess_env(), timeout=1500)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    if not report["gpus"]:
        assert "NO GPU" in out.stdout and report["tiny"]
    assert [r["task"] for r in report["rows"]] == ["classification", "detection", "segmentation"]
    for r in report["rows"]:
        assert r["pipeline_images_per_s"] > 0
        for mode in ("float32", "mixed_float16", "mixed_float16 + XLA"):
            assert r[mode]["images_per_s"] > 0 and r[mode]["loss"] == pytest.approx(r[mode]["loss"])  # finite
    chain = report["chains"]["classification"]["on"]
    assert {"float32", "int8", "qat_int8"} <= set(chain) and all(0 <= v <= 1 for v in chain.values())


@pytest.mark.slow
def test_scale_benchmark_reads_every_task_from_files_and_reports_memory(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--tiny", "--cache", "auto", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads((tmp_path / "scale.json").read_text())["rows"]
    assert {(r["task"], r["size"]) for r in rows} == {(t, n) for t in ("classification", "detection", "segmentation")
                                                      for n in (64, 256)}  # fmt: skip
    for r in rows:
        assert 0.85 * r["size"] <= r["images"] <= 0.95 * r["size"]  # data.val_split=0.1
        assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0 and r["pipeline_ips_epoch1"] > 0 and r["model_ips"] > 0
