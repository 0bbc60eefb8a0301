"""Evaluate every exported variant on the LiteRT runtime → report.json / report.md.

Accuracy, agreement with the Keras float model, file and gzip size, weight
sparsity, latency percentiles (XNNPACK, configurable threads) and the ops XNNPACK
did not take, for each ``.tflite`` file, side by side in one run.
"""

from __future__ import annotations

import gzip
import logging
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline.core.config import Config
from pipeline.core.errors import ModelNotFoundError
from pipeline.core.images import normalize
from pipeline.core.rundir import RunDir, StageInputError, read_json, write_json
from pipeline.core.sidecar import read_sidecar
from pipeline.core.tflite import weight_sparsity
from pipeline.core.variants import preferred_int8
from pipeline.report import write_report
from pipeline.runtime.benchmark import peak_memory, summarize
from pipeline.runtime.tflite_model import TFLiteModel, undelegated_ops
from pipeline.stages.resume import stage_key
from pipeline.stages.weights import rebuild
from pipeline.tasks import get_task

log = logging.getLogger(__name__)


def _stack(outputs: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.concatenate(parts) for parts in zip(*outputs)]


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def evaluate(run: RunDir, cfg: Config) -> dict:
    """Measure every variant listed in ``RUN/exports.json``; write the reports."""
    exports = run.path / "exports.json"
    if not exports.is_file():
        raise StageInputError(f"{exports} is missing: run `edgepipe export --run-dir {run.path}` first")
    redo = f"rerun `edgepipe export --run-dir {run.path}`"
    listed = read_json(exports, redo).get("variants")
    if not isinstance(listed, dict):
        raise StageInputError(f"{exports}: no 'variants' object; {redo}")
    if not listed:
        raise StageInputError(f"{exports}: lists no models; {redo}")
    for name, path in listed.items():
        if not isinstance(path, str) or not path:
            raise StageInputError(f"{exports}: variant {name!r} has path {path!r}, not a file path; {redo}")
    _check_exported_here(run, listed, redo)
    task = get_task(cfg.task)
    spec = cfg.input_spec()
    ev = cfg.evaluate
    inputs = [Path(p) for p in listed.values()] + [run.weights("float"), exports]  # what it lists, too
    with run.stage("evaluate", inputs=inputs, key=stage_key(cfg, "evaluate")) as entry:
        data = task.load_data(cfg)
        class_names = task.class_names(data)
        batches = list(task.eval_batches(data, cfg, spec, ev.batch_size, ev.max_samples))
        if not batches:
            raise StageInputError("the validation split is empty: nothing to evaluate")
        images = [x for x, _ in batches]
        targets = [t for _, t in batches]
        keras_model = rebuild(cfg, len(class_names), run.require("float"))
        serve = served_outputs(keras_model, task, cfg)
        ref = _stack([serve(normalize(x, spec)) for x in images])
        keras_scores = task.score(ref, targets, class_names, spec)
        report = {
            "task": cfg.task,
            "metric": task.metric,
            "keras_float": keras_scores[task.metric],
            "variants": {},
            "run": run.name,
            "samples": int(sum(len(x) for x in images)),
            "threads": ev.threads,
            "machine": machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "keras_float_details": keras_scores,
            "keras_params": int(keras_model.count_params()),
        }
        grid_from = preferred_int8(listed) or next(iter(listed))
        for name, path in listed.items():
            report["variants"][name], outputs = _measure(Path(path), spec, task, images, targets, class_names, ref, ev)
            if name == grid_from:
                n = len(images[0])
                grid = task.sample_grid(images[0], [o[:n] for o in outputs], targets[0], class_names)
                if grid is not None:
                    _write_png(run.path / "samples.png", grid)
                    report["samples_png"] = {"path": str(run.path / "samples.png"), "variant": name}
                    entry["outputs"].append(run.path / "samples.png")
            log.info(
                "%s: %s=%.4f p50=%.3f ms",
                name,
                task.metric,
                report["variants"][name]["metric"],
                report["variants"][name]["latency_ms_p50"],
            )
        write_json(run.path / "report.json", report)
        entry["outputs"] += [run.path / "report.json", *write_report(run.path, report, task)]
        entry["results"] = {
            n: {task.metric: v["metric"], "p50_ms": v["latency_ms_p50"]} for n, v in report["variants"].items()
        }
    return report


def _check_exported_here(run: RunDir, listed: dict, redo: str) -> None:
    """Each listed model must be this run's: one that another run's export has since
    replaced (runs named alike share ``export.dir/<name>``, or a copied run folder)
    would be measured against this run's data, of another task or input size."""
    for path in listed.values():
        try:
            side = read_sidecar(path)
        except ModelNotFoundError:
            continue  # a bare model: evaluate measures it as it is
        if not side.of_run(run.path):
            raise StageInputError(f"{path}: exported by another run, {side.run_folder}, not by {run.path}; {redo}")


def served_outputs(model, task, cfg):
    """Keras model → a function giving the exported graph's outputs as NumPy arrays,
    in the TFLite file's order (sorted names), so Keras and LiteRT compare like for like."""
    from pipeline._keras import tf

    @tf.function
    def run(x):
        return task.serving(model(x, training=False), cfg)

    def call(x: np.ndarray) -> list[np.ndarray]:
        named = run(tf.constant(x))
        return [np.asarray(named[k]) for k in sorted(named)]

    return call


def _measure(path: Path, spec, task, images, targets, class_names, ref, ev) -> dict:
    if not path.is_file():
        raise StageInputError(f"{path} is missing: run `edgepipe export` again")
    model = TFLiteModel(path, spec, threads=ev.threads)
    redo = "a model of another run? rerun `edgepipe export` for this run"
    shape, want = tuple(int(v) for v in model.input["shape"][1:]), (spec.size, spec.size, spec.channels)
    if shape != want:
        raise StageInputError(f"{path}: it takes {shape} input, this run's models take {want}: {redo}")
    outputs = _stack([model(x) for x in images])
    try:
        scores = task.score(outputs, targets, class_names, spec)
    except (IndexError, ValueError, KeyError, TypeError) as e:  # another task's outputs, or other classes
        shapes = ", ".join(str(list(o.shape[1:])) for o in outputs)
        raise StageInputError(
            f"{path}: its outputs ({shapes} a sample) do not fit this run's {task.name} task with "
            f"{len(class_names)} classes ({type(e).__name__}: {e}): {redo}"
        ) from None
    blob = path.read_bytes()
    lat = {}
    for t in sorted({ev.threads, *ev.latency_threads}):
        m = model if t == ev.threads else TFLiteModel(path, spec, threads=t)
        lat[str(t)] = summarize(m.latency_ms(images[0][0], runs=ev.latency_runs, warmup=ev.warmup_runs))
    record = {
        "path": str(path),
        "size_bytes": len(blob),
        "gzip_bytes": len(gzip.compress(blob, 9)),
        "sparsity": weight_sparsity(blob),  # of the file's own weight buffers
        "metric": float(scores[task.metric]),
        "latency_ms_p50": lat[str(ev.threads)]["p50"],
        "latency_ms_p90": lat[str(ev.threads)]["p90"],
        "agreement": task.agreement(outputs, ref, spec),
        "latency_by_threads": lat,
        "input_dtype": str(np.dtype(model.input["dtype"])),
        "undelegated_ops": undelegated_ops(model.interpreter),
        "memory": peak_memory(path, threads=ev.threads),
        "details": {k: v for k, v in scores.items() if k != task.metric},
    }
    return record, outputs


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    from pipeline.core.rundir import write_bytes

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: could not encode the sample grid as PNG")
    write_bytes(path, buf.tobytes())
