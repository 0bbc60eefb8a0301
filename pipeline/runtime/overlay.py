"""Drawing on BGR frames: one colour palette and the primitives every task's overlay uses."""

from __future__ import annotations

import cv2
import numpy as np


def palette(n: int) -> np.ndarray:
    """``n`` distinct BGR colours (evenly spaced hues), the same for every tool."""
    hsv = np.stack([np.arange(n) * 180 // max(n, 1), np.full(n, 220), np.full(n, 255)], 1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0]


def draw_boxes(frame: np.ndarray, boxes, class_ids, scores, class_names) -> np.ndarray:
    """Boxes in per-class colours with ``label score`` tags; in place, returned."""
    colours = palette(max(len(class_names), 1))
    for b, k, s in zip(np.asarray(boxes).reshape(-1, 4), class_ids, scores):
        c = tuple(int(v) for v in colours[int(k) % len(colours)])
        x1, y1, x2, y2 = (int(round(float(v))) for v in b)
        cv2.rectangle(frame, (x1, y1), (x2, y2), c, 2)
        text = f"{class_names[int(k)] if int(k) < len(class_names) else k} {float(s):.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        ty = max(y1, th + 4)
        cv2.rectangle(frame, (x1, ty - th - 4), (x1 + tw + 4, ty), c, -1)
        cv2.putText(frame, text, (x1 + 2, ty - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return frame


def grid(tiles: list[np.ndarray], cols: int = 4, pad: int = 2) -> np.ndarray:
    """Same-size images tiled row by row on a white background."""
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, min(cols, len(tiles)) * (w + pad) + pad, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = t
    return out
