"""Segmentation metrics on class maps (NumPy): the confusion matrix and IoU scores."""

from __future__ import annotations

import numpy as np


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """``(K, K)`` pixel counts, rows = ground truth, ignoring ``ignore_index`` pixels."""
    t = target.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = (t != ignore_index) & (t < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_scores(cm: np.ndarray, class_names) -> dict:
    """mIoU over the classes that occur (in ground truth or prediction), per-class IoU
    (``None`` for a class absent from both) and pixel accuracy."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    per = {n: (float(tp[i] / union[i]) if union[i] else None) for i, n in enumerate(class_names)}
    present = [v for v in per.values() if v is not None]
    return {
        "miou": float(np.mean(present)) if present else 0.0,
        "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "per_class_iou": per,
    }
