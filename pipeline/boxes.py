"""Box geometry for the detector, one implementation each: anchor points, target
assignment and decoding (TensorFlow, used in training and inside the exported
graph), NMS (OpenCV, shared by evaluation and the video runner) and COCO mAP
(pycocotools).

The detector is anchor-free (FCOS-style): every cell of its stride-8 output map
predicts class scores and its distances to the four sides of a box, in units of
``UNIT`` strides, clamped by a ReLU6 to [0, 6] units (192 px at stride 8).
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass

import cv2
import numpy as np

STRIDES = (8,)  # one fused FPN level: see models/detector.py for why
UNIT = 4.0  # strides per unit of raw box distance
CENTER_RADIUS = 2.5  # positives lie within this many strides of a box's centre (FCOS center sampling)


@dataclass(frozen=True)
class Points:
    """The anchor points of every level, flattened finest level first.

    Attributes:
        centers: (N, 2) ``x, y`` pixel centres of the cells.
        strides: (N,) the stride of each point's level.
        lo, hi: (N,) the range of ``max(l, t, r, b)`` a point's level is responsible for.
    """

    centers: np.ndarray
    strides: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def units(self) -> np.ndarray:
        """(N,) pixels per unit of raw distance."""
        return self.strides * UNIT

    def __len__(self) -> int:
        return len(self.strides)


def grid_sizes(input_size: int, strides=STRIDES) -> list[int]:
    """Feature-map side per stride: 'same'-padded stride-2 convs round up at each halving."""
    sizes, side, s = [], input_size, 1
    for target in strides:
        while s < target:
            side, s = math.ceil(side / 2), s * 2
        sizes.append(side)
    return sizes


def anchor_points(input_size: int, strides=STRIDES) -> Points:
    centers, st, lo, hi = [], [], [], []
    for k, (stride, side) in enumerate(zip(strides, grid_sizes(input_size, strides))):
        ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
        c = np.stack([xs.ravel(), ys.ravel()], 1) * stride + stride / 2
        centers.append(c)
        st.append(np.full(len(c), stride, np.float32))
        lo.append(np.full(len(c), 0.0 if k == 0 else 4.0 * stride, np.float32))
        hi.append(np.full(len(c), np.inf if k == len(strides) - 1 else 8.0 * stride, np.float32))
    return Points(*(np.concatenate(a) for a in (centers, st, lo, hi)))


# === Training targets (TensorFlow) ===


def assign_targets(points: Points, gt_boxes, gt_classes, num_classes: int):
    """Center-sampled, scale-ranged FCOS assignment for a batch.

    Args:
        gt_boxes: (B, M, 4) ``x1 y1 x2 y2`` input pixels, padded rows anywhere.
        gt_classes: (B, M) class ids, ``-1`` on padding rows.

    Returns:
        ``box_target`` (B, N, 5): the assigned box and its weight (the point's
        centre-ness, 0 for background); ``cls_target`` (B, N, C): one-hot class
        times centre-ness, so the score learns to rank well-centred points first.
    """
    from pipeline._keras import tf

    gt_boxes = tf.cast(gt_boxes, tf.float32)
    px, py = points.centers[:, 0][None, :, None], points.centers[:, 1][None, :, None]
    x1, y1, x2, y2 = (gt_boxes[:, None, :, i] for i in range(4))  # (B, 1, M)
    ltrb = tf.stack([px - x1, py - y1, x2 - px, y2 - py], -1)  # (B, N, M, 4)
    inside = tf.reduce_min(ltrb, -1) > 0
    r = (CENTER_RADIUS * points.strides)[None, :, None]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    near = (tf.abs(px - cx) < r) & (tf.abs(py - cy) < r)
    extent = tf.reduce_max(ltrb, -1)
    in_range = (extent >= points.lo[None, :, None]) & (extent <= points.hi[None, :, None])
    real = (gt_classes >= 0)[:, None, :]
    valid = inside & near & in_range & real
    area = (x2 - x1) * (y2 - y1)
    cost = tf.where(valid, tf.broadcast_to(area, tf.shape(valid)), np.float32(np.inf))
    best = tf.argmin(cost, -1, output_type=tf.int32)  # (B, N): the smallest valid box
    pos = tf.reduce_any(valid, -1)
    box = tf.gather(gt_boxes, best, batch_dims=1)
    d = tf.gather(ltrb, best[..., None], batch_dims=2)[:, :, 0]
    lr, tb = tf.maximum(d[..., 0::2], 1e-6), tf.maximum(d[..., 1::2], 1e-6)
    ctr = tf.sqrt(tf.reduce_min(lr, -1) / tf.reduce_max(lr, -1) * tf.reduce_min(tb, -1) / tf.reduce_max(tb, -1))
    weight = tf.where(pos, ctr, 0.0)
    box = tf.where(pos[..., None], box, tf.constant([0.0, 0.0, 1.0, 1.0]))
    cls = tf.gather(tf.cast(gt_classes, tf.int32), best, batch_dims=1)
    cls_target = tf.one_hot(tf.where(pos, cls, -1), num_classes) * weight[..., None]
    return tf.concat([box, weight[..., None]], -1), cls_target


def decode(raw, points: Points):
    """Raw distances (…, N, 4) in units → ``x1 y1 x2 y2`` input pixels.

    One MUL and one ADD with constant (N, 4) tensors, no CONCATENATION: an int8
    concat of tensors with different scales needs requantize ops that XNNPACK does
    not take.
    """
    sign = np.array([-1, -1, 1, 1], np.float32)
    scale = points.units[:, None] * sign
    offset = np.concatenate([points.centers, points.centers], 1)
    return raw * scale + offset


# === Post-processing (NumPy + OpenCV) ===


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    pre_nms: int = 1000,
) -> dict[str, np.ndarray]:
    """Per-class NMS over one image's decoded boxes (N, 4) and class scores (N, C).

    Each point votes for its best class (as YOLO-style heads do at inference); the
    ``pre_nms`` highest-scoring candidates above the threshold go through OpenCV's
    batched (class-aware) NMS.

    Returns:
        ``boxes`` (K, 4), ``scores`` (K,), ``classes`` (K,) sorted by score, and ``count`` K.
    """
    cls = scores.argmax(-1)
    best = scores[np.arange(len(scores)), cls]
    cand = np.nonzero(best >= score_threshold)[0]
    if len(cand) > pre_nms:
        cand = cand[np.argpartition(-best[cand], pre_nms)[:pre_nms]]
    keep = np.empty(0, np.int64)
    if len(cand):
        b = boxes[cand]
        xywh = np.concatenate([b[:, :2], np.maximum(b[:, 2:] - b[:, :2], 0)], 1)
        idx = cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), best[cand].tolist(), cls[cand].tolist(), score_threshold, iou_threshold
        )
        keep = cand[np.asarray(idx, np.int64).reshape(-1)]
        keep = keep[np.argsort(-best[keep], kind="stable")][:max_detections]
    return {
        "boxes": boxes[keep].astype(np.float32),
        "scores": best[keep].astype(np.float32),
        "classes": cls[keep].astype(np.int32),
        "count": np.int32(len(keep)),
    }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (n, 4) and (m, 4) ``xyxy`` boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), -1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


# === Metric ===


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
