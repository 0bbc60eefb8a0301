"""``edgepipe inspect`` and ``edgepipe benchmark`` on a tiny int8 model with metadata."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from conftest import edgepipe_cmd, subprocess_env

from pipeline.core.images import InputSpec

SPEC = InputSpec(size=32)
CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    from pipeline._keras import keras
    from pipeline.core.metadata import add_metadata
    from pipeline.stages.export import convert, representative_dataset
    from pipeline.tasks import get_task

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    rng = np.random.default_rng(0)
    rep = representative_dataset([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(8)], SPEC)
    task = get_task("classification")
    blob = convert(model, "int8", rep, serving=lambda y: task.serving(y, None))
    blob = add_metadata(
        blob,
        name="tiny int8",
        description="d",
        version="1",
        spec=SPEC,
        outputs=task.output_signature(CLASSES),
        class_names=CLASSES,
    )
    path = tmp_path_factory.mktemp("ib") / "tiny_int8.tflite"
    path.write_bytes(blob)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(edgepipe_cmd(*args), capture_output=True, text=True, env=subprocess_env(), timeout=300)


@pytest.mark.slow
def test_inspect_shows_io_quantization_metadata_labels_and_xnnpack_coverage(int8_model):
    r = _cli("inspect", str(int8_model))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "image: uint8[1, 32, 32, 3]  scale=0.00392157 zero_point=0" in out
    assert "metadata: 'tiny int8'" in out and "mean=[0.0, 0.0, 0.0] std=[255.0, 255.0, 255.0]" in out
    assert "labels: cat, dog, bird" in out
    assert "CONV_2D" in out and "QUANTIZE" in out and "NOT on XNNPACK" in out
    info = json.loads(_cli("inspect", str(int8_model), "--json").stdout)
    assert info["labels"] == CLASSES
    assert info["ops"]["CONV_2D"] == 1 and info["xnnpack"]["delegated"]["CONV_2D"] == 1
    assert sum(info["ops"].values()) == sum(info["xnnpack"]["delegated"].values()) + sum(
        info["xnnpack"]["not_delegated"].values()
    )
    assert info["outputs"][0]["quantization"]["scale"] == pytest.approx(1 / 256)


@pytest.mark.slow
def test_benchmark_measures_each_thread_count_memory_and_every_op(int8_model):
    from pipeline.runtime.benchmark import benchmark
    from pipeline.runtime.inspect_model import describe

    r = benchmark(int8_model, threads=(1, 2), runs=8, warmup=2, profile=True)
    assert set(r["latency"]) == {"1", "2"}
    for s in r["latency"].values():
        assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] and s["runs"] == 8
    m = r["memory"]
    assert m["peak_mb"] > m["baseline_mb"] > 10  # a real process, measured
    ops = describe(int8_model)["ops"]
    assert len(r["ops"]) == sum(ops.values())
    assert {row["op"] for row in r["ops"]} == set(ops)
    assert [row["delegated"] for row in r["ops"] if row["op"] == "CONV_2D"] == [True]


@pytest.mark.slow
def test_benchmark_cli_prints_percentiles_and_the_profile(int8_model):
    r = _cli("benchmark", str(int8_model), "--threads", "1", "--runs", "5", "--profile")
    assert r.returncode == 0, r.stderr
    assert "p50 ms" in r.stdout and "peak memory:" in r.stdout and "per-op time" in r.stdout
    assert "CONV_2D" in r.stdout


def test_inspect_and_benchmark_reject_bad_files_and_arguments(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64)
    r = _cli("inspect", str(junk))
    assert r.returncode == 2 and "junk.tflite: not a TFLite model" in r.stderr
    r = _cli("benchmark", str(tmp_path / "none.tflite"))
    assert r.returncode == 2 and "none.tflite: no such model file" in r.stderr
    # a run or export folder given for its model: said so, with the models in it
    r = _cli("inspect", str(tmp_path))
    assert r.returncode == 2 and "a folder, not a model file: give a .tflite; it holds junk.tflite" in r.stderr
    r = _cli("benchmark", str(junk), "--threads", "one")
    assert r.returncode == 2 and "--threads 'one'" in r.stderr


def test_shared_timing_loop_rejects_zero_runs_and_summarizes_percentiles():
    from pipeline.runtime.benchmark import summarize
    from pipeline.runtime.tflite_model import time_invokes

    with pytest.raises(ValueError, match="runs must be at least 1"):
        time_invokes(None, runs=0)
    s = summarize(np.arange(1, 101, dtype=float))
    assert (s["p50"], s["min"], s["runs"]) == (50.5, 1.0, 100)
