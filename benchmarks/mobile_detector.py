"""The detector's raw form against its mobile form (the SSD post-processing op that
MediaPipe's ObjectDetector reads), and MediaPipe's own mAP, from one run.

    python benchmarks/mobile_detector.py [--run-dir DIR] [--realphoto DIR] [--skip train] [--set k=v ...]

Runs the detection chain (train, qat from the float model, export, evaluate) with
``export.variants=[float32, int8, qat_int8]`` in both forms and latency at 1 and 2
threads, then feeds the same validation images (letterboxed or stretched to the input
size as the model was trained, so MediaPipe's own resize is the identity) to MediaPipe
Tasks' ``ObjectDetector`` in its own venv (``make mediapipe-venv``) and scores its
detections with the same pycocotools code. The op's NMS is class-agnostic (each box
once, with its best class), as MediaPipe reports boxes. Target: the mobile form's mAP within 0.5 pt of the raw
form's for int8 and qat_int8. Exit 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from targets import report_targets  # noqa: E402

VARIANTS = ("float32", "int8", "qat_int8")
MP_PYTHON = Path(os.environ.get("EDGEPIPE_MEDIAPIPE_PYTHON", ROOT / ".venv-mediapipe" / "bin" / "python"))


def mediapipe_map(model: Path, images: list[np.ndarray], truths: list[dict], class_names, mp_python: Path) -> dict:
    """COCO mAP of MediaPipe's ObjectDetector on ``images`` (RGB, input-sized)."""
    from pipeline.tasks.detection.metrics import coco_map

    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for i, x in enumerate(images):
            np.save(f"{tmp}/{i}.npy", x)
            jobs.append({"model": str(model), "kind": "detector", "image": f"{tmp}/{i}.npy"})
        Path(tmp, "job.json").write_text(json.dumps(jobs))
        subprocess.run(
            [str(mp_python), str(ROOT / "tests" / "mediapipe_client.py"), f"{tmp}/job.json", f"{tmp}/out.json"],
            check=True,
        )
        results = json.loads(Path(tmp, "out.json").read_text())
    index = {name: k for k, name in enumerate(class_names)}
    dets = []
    for r in results:
        d = r["detections"]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (e["box"] for e in d)], np.float32).reshape(-1, 4)
        dets.append(
            {
                "boxes": boxes,
                "scores": np.array([e["score"] for e in d], np.float32),
                "classes": np.array([index[e["label"]] for e in d], np.int32),
            }
        )
    return coco_map(dets, truths, class_names)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/mobile_detector")
    ap.add_argument("--realphoto", metavar="DIR", help="the real-photo COCO set of benchmarks/realphoto.py")
    ap.add_argument("--skip", default="prune", help="comma list of stages to skip (done already, or not wanted)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--mediapipe-python", type=Path, default=MP_PYTHON)
    args = ap.parse_args()

    from pipeline.core import config
    from pipeline.core.rundir import RunDir, write_json
    from pipeline.stages.chain import CHAIN, run_stage
    from pipeline.tasks import get_task

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = [
        f"export.variants=[{','.join(VARIANTS)}]",
        "export.detection_postprocess=[none,mobile]",
        "qat.sources=[float]",
        "evaluate.latency_threads=[1,2]",
        "evaluate.latency_runs=50",
    ]
    if args.realphoto:
        import realphoto

        overrides = [*realphoto.config_overrides(realphoto.build(Path(args.realphoto))), *overrides]
    overrides += args.overrides
    run = RunDir(args.run_dir)
    skip = set(filter(None, args.skip.split(",")))
    cfg = run.load_config(overrides) if (run.path / "config.yaml").is_file() else None
    cfg = cfg or config.load(None, overrides, task="detection")
    for stage in CHAIN:
        if stage not in skip:
            run_stage(stage, run, cfg)
    report = json.loads((run.path / "report.json").read_text())
    v = report["variants"]

    task = get_task("detection")
    spec = cfg.input_spec()
    data = task.load_data(cfg)
    images, truths = [], []
    for xs, ts in task.eval_batches(data, cfg, spec, 32, cfg.evaluate.max_samples):
        images += list(xs)
        truths += ts
    if spec.channels == 1:
        images = [np.repeat(x, 3, -1) for x in images]
    class_names = task.class_names(data)
    exported = json.loads((run.path / "exports.json").read_text())["variants"]
    mp = {}
    for name in ("int8_mobile", "qat_int8_mobile", "float32_mobile"):
        path = Path(exported[name])
        mp[name] = mediapipe_map(path, images, truths, class_names, args.mediapipe_python)
    write_json(run.path / "mediapipe_map.json", mp)

    print(f"\n### Raw and mobile forms, {spec.size} px, {len(images)} validation images\n")
    print("| variant | form | mAP@[.5:.95] | MediaPipe mAP | size KB | p50 ms 1 thread | p50 ms 2 threads |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for base in VARIANTS:
        for form in ("", "_mobile"):
            m = v.get(base + form)
            if m is None:
                continue
            lat = m["latency_by_threads"]
            mpv = mp.get(base + form, {}).get("map50_95")
            print(
                f"| {base} | {'mobile' if form else 'raw'} | {m['metric']:.4f} | "
                f"{'' if mpv is None else f'{mpv:.4f}'} | {m['size_bytes'] / 1024:.0f} | "
                f"{lat['1']['p50']:.2f} | {lat['2']['p50']:.2f} |"
            )
        if base != "float32" and base in v and base + "_mobile" in v:
            d = (v[base + "_mobile"]["metric"] - v[base]["metric"]) * 100
            rows.append((f"{base}: mobile mAP within 0.5 pt of raw", abs(d) <= 0.5, f"{d:+.2f} pt"))
    return report_targets(rows)


if __name__ == "__main__":
    sys.exit(main())
