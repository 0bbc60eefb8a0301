"""Tracking and counting quality: ``edgepipe run --track`` on a sequence with known identities.

    python benchmarks/tracking.py [--run-dir runs/tracking] [--frames 300]

1. Trains a detector for the scene unless ``--run-dir`` already holds one, and exports
   it int8: on frames of 48 *other* sequences of the same scene (other seeds, 4 to 10
   objects, other backgrounds; written once under RUN/scene as COCO), or with
   ``--detector-data synthetic`` on the built-in synthetic set (single shapes whose
   kind and hue band are the class).
2. Renders a deterministic 640×480 video of those shapes moving over a textured
   background: objects that move in straight lines and bounce, cross each other
   (the later one drawn on top hides the other), pass behind a bar that hides them
   for a few frames, and walk across a counting line and through a zone. Every
   frame's ground truth (id, class, visible box) is known.
3. Runs the runner headless with ``--track``, one counting line and one zone, and
   scores the tracks with ``motmetrics`` (MOTA, IDF1, ID switches; a match needs
   IoU >= 0.5), and the line and zone counts against the ground truth's.

Targets: IDF1 >= 0.8; line and zone counts equal to the ground truth. Exit 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from targets import report_targets  # noqa: E402

W, H, FPS = 640, 480, 30.0
LINE = (320.0, 60.0, 320.0, 420.0)  # vertical: "in" is moving left (the left of the line drawn downwards)
ZONE = ((420.0, 300.0), (620.0, 300.0), (620.0, 460.0), (420.0, 460.0))
BAR = (150, 0, 190, 480)  # an occluder: a pillar that hides what passes behind it


# === The sequence ===


def _objects(rng: np.random.Generator, n: int, num_classes: int, first: int = 0) -> list[dict]:
    objs = []
    for i in range(n):
        size = float(rng.uniform(50, 90))
        objs.append(
            {
                "id": i + 1,
                "cls": (first + i) % num_classes,
                "pos": np.array([rng.uniform(60, W - 60), rng.uniform(60, H - 60)]),
                "vel": rng.uniform(2.0, 5.0, 2) * rng.choice([-1, 1], 2),
                "w": size * rng.uniform(0.8, 1.2),
                "h": size * rng.uniform(0.8, 1.2),
                "colour_seed": int(rng.integers(1 << 30)),
                "behind_bar": i % 3 == 0,  # these pass behind the pillar, the rest in front
            }
        )
    return objs


def render(
    frames: int, num_classes: int, names, seed: int = 0, objects: int = 7, every: int = 1
) -> tuple[list[np.ndarray], list[list[dict]]]:
    """The video frames (BGR) and, per frame, the visible objects: id, class, box
    (every ``every``-th frame only: the objects move at every frame).

    Objects marked ``behind_bar`` are drawn first, then the pillar over them, then the
    others in id order (a later one hides an earlier one where they overlap). An object
    is in the ground truth while at least a quarter of it shows."""
    from pipeline.data.synthetic import class_colour, paint, textured_background
    from pipeline.tasks.detection.readers import _stretched_shape

    rng = np.random.default_rng(seed)
    base = textured_background(rng, max(W, H), lines=0)[:H, :W]
    objs = _objects(rng, objects, num_classes, first=seed % num_classes)  # other seeds, other class orders
    video, truth = [], []
    for index in range(frames):
        if index % every:
            _move(objs)
            continue
        img = base.copy()
        owner = np.full((H, W), -1, np.int32)
        full = {}
        order = [o for o in objs if o["behind_bar"]] + [None] + [o for o in objs if not o["behind_bar"]]
        for o in order:
            if o is None:  # the pillar covers what is behind it, and nothing in front
                x1, y1, x2, y2 = BAR
                img[y1:y2, x1:x2] = (90, 90, 90)
                owner[y1:y2, x1:x2] = -1
                continue
            shape_rng = np.random.default_rng(o["colour_seed"])  # the same shape every frame
            m = _stretched_shape(names[o["cls"]], max(W, H), o["pos"][0], o["pos"][1], o["w"], o["h"], shape_rng)
            m = m[:H, :W]
            paint(img, m, shape_rng, class_colour(shape_rng, o["cls"], num_classes))
            owner[m > 0] = o["id"]
            full[o["id"]] = int((m > 0).sum())
        visible = []
        for o in objs:
            ys, xs = np.nonzero(owner == o["id"])
            if len(xs) >= max(40, 0.25 * full[o["id"]]):
                box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
                visible.append({"id": o["id"], "cls": o["cls"], "box": box})
        video.append(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        truth.append(visible)
        _move(objs)
    return video, truth


def _move(objs: list[dict]) -> None:
    """One frame's step, bouncing off the frame edges."""
    for o in objs:
        o["pos"] = o["pos"] + o["vel"]
        for k, lim in ((0, W), (1, H)):
            if not 30 <= o["pos"][k] <= lim - 30:
                o["vel"][k] *= -1


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))  # near-lossless
    for f in frames:
        out.write(f)
    out.release()
    return path


# === A detector trained for the scene ===


def training_set(out: Path, names, sequences: int = 48, frames: int = 90, every: int = 6) -> list[str]:
    """COCO train and validation sets of frames from *other* sequences of this scene
    (seeds 1 and up, 4 to 10 objects, other backgrounds and class orders; the last
    sixth of them for validation), so the detector learns the scene's object scale,
    crossings and the pillar without ever seeing the scored sequence (seed 0).
    Written once (the JSON files last) and reused when present. Returns the config
    overrides that train on it."""
    from pipeline.core.rundir import write_json

    images = out / "images"
    files = {"train": out / "train.json", "val": out / "val.json"}
    if not all(f.is_file() for f in files.values()):
        images.mkdir(parents=True, exist_ok=True)
        cats = [{"id": i, "name": n} for i, n in enumerate(names)]
        docs = {k: {"images": [], "annotations": [], "categories": cats} for k in files}
        n_val = max(1, sequences // 6)
        for seed in range(1, sequences + 1):
            doc = docs["val" if seed > sequences - n_val else "train"]
            count = int(np.random.default_rng([seed, 7]).integers(4, 11))
            video, truth = render(frames, len(names), names, seed=seed, objects=count, every=every)
            for k in range(len(video)):
                name = f"s{seed:03d}_f{k * every:03d}.jpg"
                cv2.imwrite(str(images / name), video[k], [cv2.IMWRITE_JPEG_QUALITY, 90])
                image_id = len(doc["images"]) + 1
                doc["images"].append({"id": image_id, "file_name": name, "width": W, "height": H})
                for o in truth[k]:
                    x1, y1, x2, y2 = o["box"]
                    box = [x1, y1, x2 - x1, y2 - y1]
                    aid = len(doc["annotations"]) + 1
                    ann = {"id": aid, "image_id": image_id, "category_id": o["cls"], "bbox": box, "iscrowd": 0}
                    doc["annotations"].append(ann | {"area": box[2] * box[3]})
        for k, f in files.items():
            write_json(f, docs[k])
    return [f"data.{k}_annotations={f}" for k, f in files.items()] + ["data.format=coco", f"data.path={images}"]


# === Ground-truth counts ===


def true_counts(truth: list[list[dict]], names) -> tuple[dict, dict]:
    """Line crossings (once per track and direction) and zone entries from the true boxes,
    by the runner's own counters."""
    from pipeline.runtime.tracking import LineCounter, Tracks, ZoneCounter

    line = LineCounter.parse(",".join(str(v) for v in LINE))
    zone = ZoneCounter.parse(",".join(f"{x},{y}" for x, y in ZONE))
    for objs in truth:
        t = Tracks(
            np.array([o["id"] for o in objs], int),
            np.array([o["box"] for o in objs], float).reshape(-1, 4),
            np.ones(len(objs)),
            np.array([o["cls"] for o in objs], int),
        )
        line.update(t, names)
        zone.update(t, names)
    return line.summary(), zone.summary()


# === Scoring ===


def _iou_dist(a, b, max_d: float = 0.5) -> np.ndarray:
    """1 - IoU of x1y1x2y2 boxes; NaN where they may not pair (motmetrics' convention)."""
    from pipeline.tasks.detection.boxes import box_iou

    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    d = 1 - box_iou(a, b)
    return np.where(d > max_d, np.nan, d)


def score(truth: list[list[dict]], lines: list[dict]) -> dict:
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for objs, rec in zip(truth, lines):
        hyp = rec["predictions"]
        acc.update(
            [o["id"] for o in objs],
            [p["track_id"] for p in hyp],
            _iou_dist([o["box"] for o in objs], [p["box"] for p in hyp]),
        )
    mh = mm.metrics.create()
    s = mh.compute(acc, metrics=["mota", "idf1", "num_switches", "num_false_positives", "num_misses"], name="run")
    return {k: float(s[k].iloc[0]) for k in s.columns}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/tracking")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="detector config overrides")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--detector-data",
        choices=("scene", "synthetic"),
        default="scene",
        help="train the detector on other sequences of this scene (default) or on the built-in synthetic set",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pipeline.core import config
    from pipeline.core.rundir import RunDir, write_json
    from pipeline.data.synthetic import SHAPES
    from pipeline.runtime.runner import RunOptions, format_summary, run
    from pipeline.runtime.tracking import TrackOptions
    from pipeline.stages.chain import run_stage

    run_dir = RunDir(args.run_dir)
    sets = ["model.input_size=320", "data.synthetic_samples=800", "train.epochs=20", "model.width=0.75"]
    if args.detector_data == "scene":
        sets += training_set(
            run_dir.path / "scene", SHAPES[: config.load(None, [], task="detection").data.synthetic_classes]
        )
    sets += ["export.variants=int8", f"export.dir={run_dir.path / 'exports'}", *args.overrides]
    if not run_dir.has("float"):
        run_stage("train", run_dir, config.load(None, sets, task="detection"))
    cfg = run_dir.load_config()
    model = Path(run_stage("export", run_dir, cfg, ["int8"])["int8"])
    names = list(json.loads(model.with_suffix(".json").read_text())["class_names"])
    frames, truth = render(args.frames, len(names), names)
    video = write_video(run_dir.path / "sequence.avi", frames)
    jsonl = run_dir.path / "tracks.jsonl"
    track = TrackOptions(lines=(",".join(str(v) for v in LINE),), zones=(",".join(f"{x},{y}" for x, y in ZONE),))
    summary = run(
        RunOptions(
            model=model,
            source=str(video),
            threads=args.threads,
            display=False,
            jsonl=jsonl,
            output=run_dir.path / "tracked.mp4",
            track=track,
        )
    )
    print(format_summary(summary))
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    metrics = score(truth, lines)
    want_line, want_zone = true_counts(truth, names)
    got_line, got_zone = summary["tracking"]["lines"][0], summary["tracking"]["zones"][0]
    write_json(run_dir.path / "tracking.json", {"metrics": metrics, "summary": summary, "true_line": want_line})
    print("\n| metric | value |\n|---|---|")
    for k, v in metrics.items():
        print(f"| {k} | {v:.4f} |" if isinstance(v, float) and v < 10 else f"| {k} | {v:g} |")
    rows = [
        ("IDF1 >= 0.8", metrics["idf1"] >= 0.8, f"{metrics['idf1']:.3f}"),
        ("line counts equal the truth", (got_line["in"], got_line["out"]) == (want_line["in"], want_line["out"]),
         f"in {got_line['in']} out {got_line['out']} vs in {want_line['in']} out {want_line['out']}"),
        ("zone entries equal the truth", got_zone["entries"] == want_zone["entries"],
         f"{got_zone['entries']} vs {want_zone['entries']}"),
    ]  # fmt: skip
    return report_targets(rows)


if __name__ == "__main__":
    sys.exit(main())
