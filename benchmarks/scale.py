"""Input pipelines at scale: peak memory and images/s as the dataset grows.

    python benchmarks/scale.py [--out DIR] [--sizes 1000,10000,50000]
                               [--tasks classification,detection,segmentation]
                               [--cache off,auto] [--tiny]

For each task, writes a dataset of the largest size in the task's own file format
(class folders of PNGs; YOLO images and labels; image and mask folders), each image
at 5/4 of the task's default input size so the pipeline really resizes. The pixels
come from a pool of 500 images of the built-in generator, written again and again
under new names: every file is a real file to open and decode, and writing 50,000 of
them takes seconds. Smaller sizes are hard links to the first N files.

Then, for each task, size and ``data.cache`` mode, a fresh process reads the dataset
with the task's reader and iterates the training pipeline (the exact tf.data that
``edgepipe train`` uses, augmentation included) for one epoch, then a second (read
from the cache when there is one). It reports:

* peak RSS of that process (``ru_maxrss``: data, pipeline and the model's training
  steps) and its RSS with TensorFlow, Keras and keras-cv loaded, before any data;
* input-pipeline images/s in epochs 1 and 2 (with ``data.cache=off``, an epoch is cut
  to ``--epoch-images``, default 10,000: streamed memory does not grow within an epoch);
* the default model's training images/s on the same machine (``train_on_batch`` on
  batches of the pipeline's shape, after warm-up).

Targets (the issue): peak RSS grows by less than 10 % from 10,000 to 50,000 images,
and the input pipeline alone delivers at least 3x the model's training images/s.
``--tiny`` (CI) runs 64 and 256 images at a tiny input size and checks that the
script works, not the targets. Writes OUT/scale.json and OUT/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from targets import report_targets  # noqa: E402

POOL = 500
TASKS = ("classification", "detection", "segmentation")


# === Datasets on disk ===


def write_dataset(task: str, root: Path, n: int, size: int) -> list[str]:
    """``n`` files of ``task``'s format under ``root`` (written once); the config
    overrides that read them."""
    import cv2

    done = root / "done"
    if done.is_file() and int(done.read_text()) >= n:
        return _overrides(task, root)
    if task == "classification":
        from pipeline.data.synthetic import classification_set

        images, labels, names = classification_set(POOL, 4, size, seed=0)
        pool = [(cv2.imencode(".png", im[..., ::-1])[1].tobytes(), names[y]) for im, y in zip(images, labels)]
        for i in range(n):
            data, name = pool[i % POOL]
            _put(root / name / f"{i:06d}.png", data)
    elif task == "detection":
        from pipeline.tasks.detection.readers import synthetic_detection_set

        split, names = synthetic_detection_set(POOL, 4, size, seed=0)
        pool = []
        for k in range(POOL):
            lines = [
                f"{c} {(b[0] + b[2]) / 2 / size:.5f} {(b[1] + b[3]) / 2 / size:.5f} "
                f"{(b[2] - b[0]) / size:.5f} {(b[3] - b[1]) / size:.5f}"
                for b, c in zip(split.boxes[k], split.classes[k])
            ]
            pool.append((cv2.imencode(".jpg", split.arrays[k][..., ::-1])[1].tobytes(), "\n".join(lines) + "\n"))
        for i in range(n):
            data, labels = pool[i % POOL]
            _put(root / "images" / "train" / f"{i:06d}.jpg", data)
            _put(root / "labels" / "train" / f"{i:06d}.txt", labels.encode())
        (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nnames: {list(names)}\n")
    else:
        from pipeline.tasks.segmentation.readers import segmentation_set

        images, masks, _ = segmentation_set.__wrapped__(POOL, 5, size, 0)
        pool = [
            (cv2.imencode(".jpg", im[..., ::-1])[1].tobytes(), cv2.imencode(".png", m)[1].tobytes())
            for im, m in zip(images, masks)
        ]
        for i in range(n):
            data, mask = pool[i % POOL]
            _put(root / "images" / f"{i:06d}.jpg", data)
            _put(root / "masks" / f"{i:06d}.png", mask)
    done.write_text(str(n))
    return _overrides(task, root)


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _overrides(task: str, root: Path) -> list[str]:
    if task == "classification":
        return ["data.format=folder", f"data.path={root}"]
    if task == "detection":
        return ["data.format=yolo", f"data.path={root / 'data.yaml'}", "data.splits=[train,val]"]
    return ["data.format=masks", f"data.path={root}", "data.num_classes=5"]


def subset(task: str, full: Path, root: Path, n: int) -> list[str]:
    """The first ``n`` files of ``full`` as hard links under ``root``."""
    if not (root / "done").is_file():
        for src in sorted(p for p in full.rglob("*") if p.is_file() and p.name not in ("done", "data.yaml")):
            stem = src.stem
            if stem.isdigit() and int(stem) >= n:
                continue
            dst = root / src.relative_to(full)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                os.link(src, dst)
        if (full / "data.yaml").is_file():
            (root / "data.yaml").write_text((full / "data.yaml").read_text())
        (root / "done").write_text(str(n))
    return _overrides(task, root)


# === One measurement (a fresh process) ===


def measure(task: str, overrides: list[str], cache_dir: Path, model_steps: int, epoch_images: int = 0) -> dict:
    """Read the dataset, iterate the training pipeline twice, time the model. With
    ``data.cache=off`` an epoch may be cut to ``epoch_images`` (streamed memory does
    not grow as an epoch goes on; a cache needs whole epochs to fill and to be read)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from pipeline.core import config
    from pipeline.tasks import get_task

    cfg = config.load(None, overrides, task=task)
    t = get_task(task)
    from pipeline._keras import keras, keras_cv  # noqa: F401 - loaded before the baseline

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    data = t.load_data(cfg)
    read_s = time.perf_counter() - t0
    spec = cfg.input_spec()
    train, _ = t.datasets(data, cfg, spec, cache_dir)
    if epoch_images and cfg.data.cache == "off":
        train = train.take(max(1, epoch_images // cfg.train.batch_size))
    epochs = []
    for _ in range(2):
        n, t0 = 0, time.perf_counter()
        for batch in train:
            n += int(batch[0].shape[0])
        epochs.append(n / (time.perf_counter() - t0))
    batch = next(iter(train))
    model = t.build_model(cfg, len(t.class_names(data)))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), **t.compile_args(cfg, len(t.class_names(data))))
    for _ in range(3):
        model.train_on_batch(*batch)
    t0 = time.perf_counter()
    for _ in range(model_steps):
        model.train_on_batch(*batch)
    model_ips = model_steps * int(batch[0].shape[0]) / (time.perf_counter() - t0)
    return {
        "images": len(data.train),
        "images_per_epoch_measured": n,
        "read_s": round(read_s, 2),
        "rss_before_mb": round(rss0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pipeline_ips_epoch1": round(epochs[0], 1),
        "pipeline_ips_epoch2": round(epochs[1], 1),
        "model_ips": round(model_ips, 1),
        "batch_size": cfg.train.batch_size,
        "input_size": spec.size,
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# === Driver ===


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0]
    except (OSError, IndexError):
        return platform.processor()
    have = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f" {f}" in flags]
    return f"{os.cpu_count()} cores, " + ", ".join(have)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "scale")
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--cache", default="off,auto", help="data.cache modes to measure")
    ap.add_argument("--model-steps", type=int, default=10)
    ap.add_argument("--epoch-images", type=int, default=10_000, help="data.cache=off: images per timed epoch")
    ap.add_argument("--tiny", action="store_true", help="CI: small sets, tiny inputs, no targets")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = ap.parse_args()
    if args.one:
        job = json.loads(args.one)
        result = measure(job["task"], job["overrides"], Path(job["cache_dir"]), job["steps"], job["epoch_images"])
        print("RESULT " + json.dumps(result))
        return 0
    sizes = [64, 256] if args.tiny else [int(s) for s in args.sizes.split(",")]
    tasks = args.tasks.split(",")
    modes = args.cache.split(",")
    from pipeline.core.registry import get_spec

    rows = []
    for task in tasks:
        default = get_spec(task).default_config.get("model", {}).get("input_size", 64)
        size = 32 if args.tiny else default
        src = (size * 5) // 4
        full = args.out / "data" / f"{task}-{max(sizes)}"
        write_dataset(task, full, max(sizes), src)
        for n in sizes:
            over = subset(task, full, args.out / "data" / f"{task}-{n}", n) if n < max(sizes) else \
                write_dataset(task, full, n, src)  # fmt: skip
            extra = ["data.val_split=0.1", f"model.input_size={size}"]
            if args.tiny:
                extra += ["model.width=0.25", "train.batch_size=16"]
            for mode in modes:
                cache_dir = args.out / "cache" / f"{task}-{n}-{mode}"
                job = {"task": task, "overrides": [*over, *extra, f"data.cache={mode}"],
                       "cache_dir": str(cache_dir), "steps": 2 if args.tiny else args.model_steps,
                       "epoch_images": args.epoch_images}  # fmt: skip
                print(f"{task} {n} images, data.cache={mode} ...", flush=True)
                out = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True,
                                     text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
                line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
                if out.returncode or not line:
                    print(out.stdout[-2000:], out.stderr[-4000:])
                    return 2
                r = {"task": task, "size": n, "cache": mode, **json.loads(line[0][7:])}
                print("  ", r, flush=True)
                rows.append(r)
                shutil.rmtree(cache_dir, ignore_errors=True)
    report = {"machine": cpu_flags(), "python": platform.python_version(), "rows": rows, "tiny": args.tiny,
              "command": " ".join(sys.argv)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=2))
    md = [f"Machine: {report['machine']}; Python {report['python']}.", "",
          "| task | images | data.cache | RSS before data MB | peak RSS MB | pipeline img/s epoch 1 | epoch 2 | "
          "model train img/s | pipeline / model |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ratio = min(r["pipeline_ips_epoch1"], r["pipeline_ips_epoch2"]) / r["model_ips"]
        md.append(f"| {r['task']} ({r['input_size']} px) | {r['size']} | {r['cache']} | {r['rss_before_mb']} | "
                  f"{r['peak_rss_mb']} | {r['pipeline_ips_epoch1']} | {r['pipeline_ips_epoch2']} | "
                  f"{r['model_ips']} | {ratio:.1f}x |")  # fmt: skip
    (args.out / "scale.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if args.tiny:
        print("tiny mode: the script ran end to end; targets are measured at full size")
        return 0
    checks = []
    for task in tasks:
        for mode in modes:
            by = {r["size"]: r for r in rows if r["task"] == task and r["cache"] == mode}
            if 10_000 in by and 50_000 in by:
                growth = by[50_000]["peak_rss_mb"] / by[10_000]["peak_rss_mb"] - 1
                checks.append((f"{task}, data.cache={mode}: peak RSS 10k -> 50k grows < 10 %", growth < 0.10,
                               f"{by[10_000]['peak_rss_mb']:.0f} -> {by[50_000]['peak_rss_mb']:.0f} MB "
                               f"({growth * 100:+.1f} %)"))  # fmt: skip
            for n, r in sorted(by.items()):
                ratio = min(r["pipeline_ips_epoch1"], r["pipeline_ips_epoch2"]) / r["model_ips"]
                checks.append((f"{task}, {n} images, data.cache={mode}: pipeline >= 3x model img/s", ratio >= 3,
                               f"{ratio:.1f}x"))  # fmt: skip
    return report_targets(checks)


if __name__ == "__main__":
    sys.exit(main())
