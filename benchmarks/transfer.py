"""Transfer-learning benchmark on Fashion-MNIST, offline: pretrain on one half of the
classes, fine-tune on the other half with few images, against training from scratch.

    apt-get install dataset-fashion-mnist         # IDX files, offline
    python benchmarks/transfer.py [--run-dir runs/transfer] [--shots 10,50] [--backbone mobilenet_v2_lite]

1. Pretrain on classes 0-4 (all 30,000 training images; IDX) -> RUN/pretrain.
2. For each K in --shots, fine-tune on classes 5-9 with K PNGs per class (a folder, as
   a user would have), at the same epochs and input size, four ways: ``scratch``
   (model.weights=none), ``transfer`` (model.weights=RUN/pretrain, the default
   train.backbone_lr_mult of 0.1), ``transfer, full lr`` (train.backbone_lr_mult=1.0)
   and ``transfer+freeze`` (train.freeze_backbone_epochs, then the full learning rate),
   each with --seeds training seeds. The checkpoint is chosen on 100 other training
   images per class; QAT follows; float32, int8 and qat_int8 are exported and
   evaluated on the 5,000 test images of classes 5-9. The table gives means over seeds.
3. Prints the table and checks the targets: transfer >= 10 points above scratch at 10
   images per class, QAT int8 within 1 point of its float model. Exit 1 on a miss.

With a network, the same comparison against ImageNet weights on your own folder is
``--pretrained imagenet --backbone mobilenet_v2 --set model.width=0.35 --set model.input_size=96``
(docs/benchmarks.md#transfer-learning).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import struct
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from targets import report_targets  # noqa: E402

NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
PRETRAIN, FINETUNE = range(0, 5), range(5, 10)
SELECTION_PER_CLASS = 100


# === Data ===


def _idx(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, names: dict[int, str]) -> None:
    import cv2

    for i, (img, y) in enumerate(zip(images, labels)):
        d = folder / names[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i:05d}.png"), img)


def prepare_data(src: Path, out: Path, shots: list[int], seed: int) -> dict[str, Path]:
    """Write the pretraining IDX set and the few-shot folders (idempotent)."""
    xtr, ytr = _idx(src / "train-images-idx3-ubyte.gz"), _idx(src / "train-labels-idx1-ubyte.gz")
    xte, yte = _idx(src / "t10k-images-idx3-ubyte.gz"), _idx(src / "t10k-labels-idx1-ubyte.gz")
    paths = {"pretrain": out / "pretrain", "test": out / "test_5-9"}
    if not (paths["pretrain"] / "labels.txt").is_file():
        paths["pretrain"].mkdir(parents=True, exist_ok=True)
        for prefix, x, y in (("train", xtr, ytr), ("t10k", xte, yte)):
            keep = np.isin(y, list(PRETRAIN))
            _write_idx(paths["pretrain"] / f"{prefix}-images-idx3-ubyte.gz", x[keep])
            _write_idx(paths["pretrain"] / f"{prefix}-labels-idx1-ubyte.gz", y[keep])
        (paths["pretrain"] / "labels.txt").write_text("\n".join(NAMES[i] for i in PRETRAIN) + "\n")
    names = {c: NAMES[c] for c in FINETUNE}
    if not paths["test"].is_dir():
        keep = np.isin(yte, list(FINETUNE))
        _write_pngs(paths["test"], xte[keep], yte[keep], names)
    rng = np.random.default_rng(seed)
    order = {c: rng.permutation(np.flatnonzero(ytr == c)) for c in FINETUNE}
    for k in shots:
        root = out / f"shots_{k}"
        paths[f"train_{k}"], paths[f"eval_{k}"] = root / "select", root / "evaluate"
        if root.is_dir():
            continue
        # The same K images train both folders; selection images never overlap them.
        train_idx = np.concatenate([order[c][:k] for c in FINETUNE])
        sel_idx = np.concatenate([order[c][k : k + SELECTION_PER_CLASS] for c in FINETUNE])
        _write_pngs(root / "select" / "train", xtr[train_idx], ytr[train_idx], names)
        _write_pngs(root / "select" / "val", xtr[sel_idx], ytr[sel_idx], names)
        _write_pngs(root / "evaluate" / "train", xtr[train_idx], ytr[train_idx], names)
        (root / "evaluate" / "val").symlink_to(paths["test"].resolve(), target_is_directory=True)
    return paths


# === Runs ===


def _chain(run_dir: Path, sets: list[str], eval_path: Path | None) -> dict:
    """train → qat → export → evaluate (on ``eval_path`` if given) in ``run_dir``; the report."""
    from pipeline.core import config
    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import run_stage

    run = RunDir(run_dir)
    if not (run.path / "report.json").is_file():
        cfg = config.load(None, sets, task="classification")
        t0 = time.time()
        for stage in ("train", "qat", "export"):
            if stage == "train" and run.has("float"):
                continue
            run_stage(stage, run, cfg)
        train_s = time.time() - t0
        if eval_path is not None:
            cfg = run.load_config([f"data.path={eval_path}"])
        run_stage("evaluate", run, cfg)
        report = json.loads((run.path / "report.json").read_text())
        report["benchmark_seconds"] = train_s
        (run.path / "report.json").write_text(json.dumps(report, indent=2))
    return json.loads((run.path / "report.json").read_text())


def _mean_report(reports: list[dict]) -> dict:
    f = [r["keras_float"] for r in reports]
    return {
        "keras_float": float(np.mean(f)),
        "keras_float_sd": float(np.std(f)),
        "int8": float(np.mean([r["variants"]["int8"]["metric"] for r in reports])),
        "qat_int8": float(np.mean([r["variants"]["qat_int8"]["metric"] for r in reports])),
        "seconds": float(np.mean([r["benchmark_seconds"] for r in reports])),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--run-dir", default="runs/transfer")
    ap.add_argument("--shots", default="10,50")
    ap.add_argument("--backbone", default="mobilenet_v2_lite")
    ap.add_argument("--pretrain-epochs", type=int, default=8)
    ap.add_argument("--finetune-epochs", type=int, default=30)
    ap.add_argument("--freeze-epochs", type=int, default=5)
    ap.add_argument("--pretrained", default="", help="weights for the transfer arms (default: the pretrain run)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config for every run")
    ap.add_argument("--seed", type=int, default=0, help="which K images per class are drawn")
    ap.add_argument("--seeds", default="0,1", help="training seeds per arm (means are reported)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not Path(args.data).is_dir():
        print(f"{args.data}: no Fashion-MNIST; `apt-get install dataset-fashion-mnist` or pass --data", file=sys.stderr)
        return 2
    out = Path(args.run_dir)
    shots = [int(k) for k in args.shots.split(",")]
    paths = prepare_data(Path(args.data), out / "data", shots, args.seed)
    model = [f"model.backbone={args.backbone}", "model.input_size=32", "model.channels=1", *args.overrides]
    common = [*model, "evaluate.latency_runs=20", "evaluate.latency_threads=[1]", "evaluate.threads=1"]
    pretrained = args.pretrained
    if not pretrained:
        sets = [*common, "data.format=idx", f"data.path={paths['pretrain']}", f"train.epochs={args.pretrain_epochs}"]
        sets += ["train.batch_size=128", "data.augment=false", "qat.sources=[float]", "export.variants=float32,int8"]
        pre = _chain(out / "pretrain", sets, None)
        print(f"pretrain (classes 0-4): float {pre['keras_float']:.4f}")
        pretrained = str(out / "pretrain")
    ft = [*common, "data.format=folder", f"train.epochs={args.finetune_epochs}", "train.batch_size=16"]
    ft += ["train.early_stopping_patience=0", "qat.epochs=2", "qat.sources=[float]"]
    ft += ["export.variants=float32,int8,qat_int8", "export.representative_samples=50"]
    full = "train.backbone_lr_mult=1.0"
    arms = {
        "scratch": [],
        "transfer": [f"model.weights={pretrained}"],
        "transfer, full lr": [f"model.weights={pretrained}", full],
        "transfer+freeze": [f"model.weights={pretrained}", full, f"train.freeze_backbone_epochs={args.freeze_epochs}"],
    }
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, results = [], {}
    for k in shots:
        for arm, extra in arms.items():
            rs = []
            for seed in seeds:
                sets = [*ft, f"data.path={paths[f'train_{k}']}", f"train.seed={seed}", *extra]
                slug = arm.replace("+", "_").replace(", ", "_").replace(" ", "_")
                rs.append(_chain(out / f"shots{k}_{slug}_seed{seed}", sets, paths[f"eval_{k}"]))
            results[k, arm] = r = _mean_report(rs)
            rows.append(
                f"| {k} | {arm} | {r['keras_float']:.4f} ± {r['keras_float_sd']:.4f} | {r['int8']:.4f} | "
                f"{r['qat_int8']:.4f} | {(r['qat_int8'] - r['keras_float']) * 100:+.2f} pt | {r['seconds']:.0f} |"
            )
    print(
        f"\n### Fine-tuning on Fashion-MNIST classes 5-9 ({args.backbone}, 32 px, gray, {args.finetune_epochs} epochs)\n"
    )
    print(f"(means over training seeds {args.seeds}; ± is their standard deviation)\n")
    print("| images per class | start | Keras float | int8 | QAT int8 | QAT int8 - float | train+qat+export s |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    checks = []
    if 10 in shots:
        s = results[10, "scratch"]["keras_float"]
        best = max((a for a in arms if a != "scratch"), key=lambda a: results[10, a]["keras_float"])
        t = results[10, best]["keras_float"]
        checks.append(
            (f"transfer ({best}) >= scratch + 10 pt at 10 images per class", t - s >= 0.10, f"{(t - s) * 100:+.1f} pt")
        )
    for (k, arm), r in results.items():
        d = (r["qat_int8"] - r["keras_float"]) * 100
        checks.append((f"QAT int8 within 1 pt of float ({k}/class, {arm})", d >= -1.0, f"{d:+.2f} pt"))
    return report_targets(checks)


if __name__ == "__main__":
    sys.exit(main())
