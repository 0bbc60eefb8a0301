"""COCO box mAP with pycocotools: the detection metric of evaluate and the benchmarks."""

from __future__ import annotations

import contextlib
import io

import numpy as np


def coco_map(detections: list[dict], truths: list[dict], class_names) -> dict:
    """COCO mAP@[.5:.95], mAP@.5 and per-class AP with pycocotools.

    Args:
        detections: per image, ``nms`` output (boxes in the same pixels as the truths).
        truths: per image, ``{"boxes": (n, 4), "classes": (n,)}``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, (d, t) in enumerate(zip(detections, truths)):
        images.append({"id": i})
        for b, c in zip(np.asarray(t["boxes"]).reshape(-1, 4), np.asarray(t["classes"]).reshape(-1)):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(c),
                    "bbox": [float(b[0]), float(b[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for b, s, c in zip(d["boxes"], d["scores"], d["classes"]):
            dets.append(
                {
                    "image_id": i,
                    "category_id": int(c),
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                    "score": float(s),
                }
            )
    empty = {"map50_95": 0.0, "map50": 0.0, "per_class_ap": {n: None for n in class_names}}
    if not anns or not dets:
        return empty
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": k, "name": n} for k, n in enumerate(class_names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (iou, recall, class) at area=all, maxDets=100
    per_class, pr50 = {}, {}
    for k, name in enumerate(class_names):
        p = precision[:, :, k]
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else None
        if (p[0] > -1).any():  # IoU 0.5, at COCO's 101 recall points
            pr50[name] = [round(float(v), 4) for v in np.clip(p[0], 0, 1)]
    return {
        "map50_95": max(0.0, float(ev.stats[0])),
        "map50": max(0.0, float(ev.stats[1])),
        "per_class_ap": per_class,
        "pr50": pr50,
    }
