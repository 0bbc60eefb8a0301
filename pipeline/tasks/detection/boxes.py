"""Box geometry for the detector, one implementation each: anchor points and decoding
(NumPy or TensorFlow: training, the exported graph and tests share it), and NMS
(OpenCV, shared by evaluation and the video runner). TensorFlow-free: the runtime
imports it. Target assignment and the losses are in ``targets.py``, COCO mAP in
``metrics.py``.

The detector is anchor-free (FCOS-style): every cell of its stride-8 output map
predicts class scores and its distances to the four sides of a box, in units of
``UNIT`` strides, clamped by a ReLU6 to [0, 6] units (192 px at stride 8).
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=16)
def anchor_points(input_size: int, strides=STRIDES) -> Points:
    """Every level's cell centres for a square input of ``input_size`` (cached: pure)."""
    centers, st, lo, hi = [], [], [], []
    for k, (stride, side) in enumerate(zip(strides, grid_sizes(input_size, strides))):
        ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
        c = np.stack([xs.ravel(), ys.ravel()], 1) * stride + stride / 2
        centers.append(c)
        st.append(np.full(len(c), stride, np.float32))
        lo.append(np.full(len(c), 0.0 if k == 0 else 4.0 * stride, np.float32))
        hi.append(np.full(len(c), np.inf if k == len(strides) - 1 else 8.0 * stride, np.float32))
    return Points(*(np.concatenate(a) for a in (centers, st, lo, hi)))


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
    size: float | None = None,
) -> dict[str, np.ndarray]:
    """Per-class NMS over one image's decoded boxes (N, 4) and class scores (N, C).

    Each point votes for its best class (as YOLO-style heads do at inference); the
    ``pre_nms`` highest-scoring candidates above the threshold go through OpenCV's
    batched (class-aware) NMS. With ``size`` (the input's side) boxes are first clipped
    to the input, as the mobile form does before its NMS op: both forms then suppress
    by the same IoUs (unclipped, two boxes leaving the image overlap more).

    Returns:
        ``boxes`` (K, 4), ``scores`` (K,), ``classes`` (K,) sorted by score, and ``count`` K.
    """
    if size is not None:
        boxes = np.clip(boxes, 0, size)
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


def ssd_detections(outputs: list[np.ndarray], k: int, size: int, score_threshold: float = 0.0) -> dict:
    """Image ``k``'s outputs of the SSD post-processing op (the mobile form: boxes
    ``ymin xmin ymax xmax`` as ratios, classes, scores, count) → :func:`nms`-style
    detections in input pixels (x1 y1 x2 y2)."""
    boxes, classes, scores, count = (
        outputs[0][k],
        outputs[1][k],
        outputs[2][k],
        int(np.asarray(outputs[3]).reshape(-1)[k]),
    )
    boxes, classes, scores = boxes[:count], classes[:count], scores[:count]  # slots past count are not cleared
    keep = scores >= score_threshold
    xyxy = boxes[keep][:, [1, 0, 3, 2]] * size
    return {
        "boxes": xyxy.astype(np.float32),
        "scores": scores[keep].astype(np.float32),
        "classes": np.rint(classes[keep]).astype(np.int32),
        "count": np.int32(keep.sum()),
    }
