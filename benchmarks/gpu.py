"""GPU check: training images/s in float32, mixed_float16 and mixed_float16 + XLA,
the input pipeline alone, and the chain after a mixed-precision train.

    python benchmarks/gpu.py [--out DIR] [--tasks classification,detection,segmentation]
                             [--steps 50] [--tiny]

For each task's default model and input size, on the built-in synthetic data:

* **input pipeline alone**: images/s of the training tf.data (``edgepipe train``'s own,
  augmentation included), so a reader bottleneck shows;
* **training**: images/s of ``fit`` on one batch repeated from memory, under the
  strategy ``edgepipe train`` picks (``MirroredStrategy`` over every visible GPU when
  there are several), in float32, ``mixed_float16``, and ``mixed_float16`` + XLA
  (``jit_compile``), each after a warm-up that compiles;
* **the chain after mixed precision**: train with ``train.mixed_precision=on`` and
  with ``off`` (same seed, a short schedule), then prune, QAT, export and evaluate each;
  the int8 and QAT int8 metrics of the two must agree within ``--tolerance`` points
  (the tiny mode runs the mixed-precision chain only: tiny models learn nothing to compare).

Targets (on a GPU): mixed precision + XLA >= 2x float32 images/s for every task's
default model, and the input pipeline >= 3x the fastest training images/s. Without a
GPU the script says so, runs tiny models on tiny inputs (``--tiny``, used by CI) to
prove that every path runs, and checks no target. Writes OUT/gpu.json and OUT/gpu.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from targets import report_targets  # noqa: E402

TASKS = ("classification", "detection", "segmentation")
MODES = {"float32": ("off", "off"), "mixed_float16": ("on", "off"), "mixed_float16 + XLA": ("on", "on")}
TINY = ["model.input_size=32", "model.width=0.25", "train.batch_size=8", "data.synthetic_samples=64"]


def devices() -> tuple[list[str], str]:
    from pipeline._keras import tf

    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for g in gpus:
        try:
            names.append(tf.config.experimental.get_device_details(g).get("device_name", g.name))
        except Exception:  # noqa: BLE001 - details are informative only
            names.append(g.name)
    return names, (", ".join(names) if names else "no GPU")


def pipeline_ips(task: str, overrides: list[str], batches: int) -> float:
    """Images/s of the training input pipeline alone."""
    from pipeline.core import config
    from pipeline.tasks import get_task

    cfg = config.load(None, overrides, task=task)
    t = get_task(task)
    data = t.load_data(cfg)
    train, _ = t.datasets(data, cfg, cfg.input_spec())
    it = iter(train.repeat())
    next(it)  # the first batch traces the pipeline
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        n += int(next(it)[0].shape[0])
    return n / (time.perf_counter() - t0)


def train_ips(task: str, overrides: list[str], mode: str, steps: int) -> dict:
    """Images/s of ``fit`` on one batch repeated from memory, in ``mode``."""
    from pipeline._keras import keras, tf
    from pipeline.core import config
    from pipeline.stages.fit import make_optimizer, setup_hardware
    from pipeline.tasks import get_task

    mp, xla = MODES[mode]
    cfg = config.load(None, [*overrides, f"train.mixed_precision={mp}", f"train.xla={xla}"], task=task)
    t = get_task(task)
    keras.utils.set_random_seed(0)
    hw = setup_hardware(cfg)
    data = t.load_data(cfg)
    k = len(t.class_names(data))
    train, _ = t.datasets(data, cfg, cfg.input_spec())
    batch = next(iter(train))
    ds = tf.data.Dataset.from_tensors(batch).repeat()
    with hw.strategy.scope():
        model = t.build_model(cfg, k)
        model.compile(optimizer=make_optimizer(1e-3, 1000, 0, 0.0), jit_compile=hw.xla, **t.compile_args(cfg, k))
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # compile and warm up
    t0 = time.perf_counter()
    hist = model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    dt = time.perf_counter() - t0
    keras.mixed_precision.set_global_policy("float32")
    loss = float(hist.history["loss"][-1])
    return {"images_per_s": steps * int(batch[0].shape[0]) / dt, "loss": loss,
            "strategy": type(hw.strategy).__name__, "replicas": hw.strategy.num_replicas_in_sync}  # fmt: skip


def chain_after_mixed_precision(task: str, overrides: list[str], out: Path, compare: bool = True) -> dict:
    """The whole chain after a mixed-precision train, and (``compare``) after a float32 one."""
    from pipeline._keras import keras
    from pipeline.core import config
    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import CHAIN, run_stage

    metrics = {}
    for mp in ("on", "off") if compare else ("on",):
        run = RunDir(out / f"{task}-mixed-{mp}")
        cfg = config.load(None, [*overrides, f"train.mixed_precision={mp}", f"export.dir={run.path / 'exports'}",
                                 "export.variants=float32,int8,qat_int8", "qat.sources=[float]"], task=task)  # fmt: skip
        results = {stage: run_stage(stage, run, cfg) for stage in CHAIN}
        keras.mixed_precision.set_global_policy("float32")
        report = results["evaluate"]
        metrics[mp] = {"keras_float": report.get("keras_float")} | {
            name: v["metric"] for name, v in report["variants"].items()
        }
    return metrics


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--steps", type=int, default=50, help="timed training steps per measurement")
    ap.add_argument("--pipeline-batches", type=int, default=50)
    ap.add_argument("--tolerance", type=float, default=2.0, help="points between the mixed and float32 chains")
    ap.add_argument("--chain-tasks", default=None, help="tasks whose chain runs (default: all; --tiny: classification)")
    ap.add_argument("--tiny", action="store_true", help="tiny models and inputs: proves the paths run (CI)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    names, device = devices()
    tiny = args.tiny or not names
    if not names:
        print("NO GPU: this machine has none, so nothing here measures a GPU; running the tiny mode, which "
              "checks that every path runs and checks no target")  # fmt: skip
    steps = 3 if tiny else args.steps
    batches = 3 if tiny else args.pipeline_batches
    tasks = args.tasks.split(",")
    chain_tasks = (args.chain_tasks or ("classification" if tiny else ",".join(tasks))).split(",")
    rows, chains = [], {}
    for task in tasks:
        over = list(TINY) if tiny else []
        row = {"task": task, "pipeline_images_per_s": pipeline_ips(task, over, batches)}
        for mode in MODES:
            row[mode] = train_ips(task, over, mode, steps)
        rows.append(row)
        print(json.dumps(row), flush=True)
    for task in chain_tasks:
        over = [*TINY, "train.epochs=2", "prune.epochs=1", "qat.epochs=1", "export.representative_samples=16",
                "evaluate.latency_runs=2", "evaluate.latency_threads=[1]"] if tiny else ["train.epochs=4"]  # fmt: skip
        chains[task] = chain_after_mixed_precision(task, over, args.out / "chains", compare=not tiny)
        print(task, json.dumps(chains[task]), flush=True)
    report = {"device": device, "gpus": len(names), "tiny": tiny, "date": time.strftime("%Y-%m-%d"),
              "python": platform.python_version(), "command": " ".join(sys.argv), "rows": rows, "chains": chains}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
    md = [f"Device: {device}{' (tiny mode: no GPU measured)' if tiny else ''}; {report['date']}; "
          f"`{report['command']}`", "",
          "| task | input pipeline img/s | float32 img/s | mixed_float16 | mixed_float16 + XLA | "
          "mixed + XLA / float32 | strategy |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        f32, mxla = r["float32"]["images_per_s"], r["mixed_float16 + XLA"]["images_per_s"]
        md.append(f"| {r['task']} | {r['pipeline_images_per_s']:.0f} | {f32:.0f} | "
                  f"{r['mixed_float16']['images_per_s']:.0f} | {mxla:.0f} | {mxla / f32:.2f}x | "
                  f"{r['float32']['strategy']} x{r['float32']['replicas']} |")  # fmt: skip
    md += ["", "| task | variant | after mixed-precision train | after float32 train | difference (pt) |",
           "|---|---|---|---|---|"]  # fmt: skip
    checks = []
    for task, m in chains.items():
        for name in sorted(m["on"]):
            a, b = m["on"][name], m.get("off", {}).get(name)
            if a is None or b is None:
                md.append(f"| {task} | {name} | {a} | not run | |")
                continue
            d = (a - b) * 100
            md.append(f"| {task} | {name} | {a:.4f} | {b:.4f} | {d:+.2f} |")
            if name in ("int8", "qat_int8"):
                checks.append((f"{task} {name}: mixed-precision chain within {args.tolerance} pt of float32",
                               abs(d) <= args.tolerance, f"{d:+.2f} pt"))  # fmt: skip
    (args.out / "gpu.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if tiny:
        print(f"tiny mode on {device}: every path ran; no target is checked without a GPU")
        return 0
    for r in rows:
        f32, mxla = r["float32"]["images_per_s"], r["mixed_float16 + XLA"]["images_per_s"]
        fastest = max(r[m]["images_per_s"] for m in MODES)
        checks.append((f"{r['task']}: mixed precision + XLA >= 2x float32", mxla >= 2 * f32, f"{mxla / f32:.2f}x"))
        checks.append((f"{r['task']}: input pipeline >= 3x training img/s", r["pipeline_images_per_s"] >= 3 * fastest,
                       f"{r['pipeline_images_per_s'] / fastest:.1f}x"))  # fmt: skip
    return report_targets(checks)


if __name__ == "__main__":
    sys.exit(main())
