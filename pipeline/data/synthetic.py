"""Deterministic, offline synthetic images: shapes on textured backgrounds.

The generator is the embedded default data for the demo and the tests. The shape
drawing is shared by the classification set here and the detection and
segmentation sets, which need the exact extent of every object.
"""

from __future__ import annotations

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "bar", "star")


def textured_background(rng: np.random.Generator, size: int, lines: int = 3) -> np.ndarray:
    """A smooth colour gradient plus blurred noise blobs and up to ``lines`` random lines."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None]
    img = c0 + (c1 - c0) * (t - t.min()) / (np.ptp(t) + 1e-6)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size, 3)).astype(np.float32), (0, 0), size / 16)
    img += noise / (noise.std() + 1e-6) * rng.uniform(4, 16)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, lines + 1)):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(img, tuple(map(int, p1)), tuple(map(int, p2)), tuple(map(int, rng.integers(0, 255, 3))), 1)
    return img


def shape_mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float, thick: int) -> np.ndarray:
    """A binary mask of one shape centred at (cx, cy) with radius ``r`` in pixels."""
    m = np.zeros((size, size), np.uint8)
    c = (int(round(cx)), int(round(cy)))

    def poly(n: int, radii: list[float]) -> np.ndarray:
        a = angle + np.arange(n) * 2 * np.pi / n
        rr = np.resize(np.asarray(radii, np.float32), n)
        return np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1).round().astype(np.int32)

    if kind == "circle":
        cv2.circle(m, c, int(r), 1, -1)
    elif kind == "ring":
        cv2.circle(m, c, int(r), 1, max(2, thick))
    elif kind == "square":
        cv2.fillPoly(m, [poly(4, [r])], 1)
    elif kind == "diamond":
        cv2.fillPoly(m, [poly(4, [r, r * 0.55])], 1)
    elif kind == "triangle":
        cv2.fillPoly(m, [poly(3, [r])], 1)
    elif kind == "star":
        cv2.fillPoly(m, [poly(10, [r, r * 0.45])], 1)
    elif kind == "cross":
        p = poly(4, [r])
        cv2.line(m, tuple(map(int, p[0])), tuple(map(int, p[2])), 1, max(2, thick))
        cv2.line(m, tuple(map(int, p[1])), tuple(map(int, p[3])), 1, max(2, thick))
    elif kind == "bar":
        p = poly(2, [r])
        cv2.line(m, tuple(map(int, p[0])), tuple(map(int, p[1])), 1, max(3, thick * 2))
    else:
        raise ValueError(f"Unknown shape {kind!r}. Expected one of {list(SHAPES)}.")
    return m


def class_colour(rng: np.random.Generator, class_id: int, num_classes: int) -> np.ndarray:
    """A colour from the class's own hue band (varied saturation and value)."""
    hue = (class_id + rng.uniform(-0.3, 0.3)) / num_classes * 180.0
    hsv = np.array([[[hue % 180, rng.uniform(150, 255), rng.uniform(150, 255)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def paint(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, colour: np.ndarray | None = None) -> None:
    """Fill ``mask`` on ``img`` with ``colour`` (default: random, contrasting with the background)."""
    bg = img[mask > 0].mean(0) if mask.any() else np.full(3, 128.0)
    if colour is None:
        colour = rng.uniform(0, 255, 3)
        while np.abs(colour - bg).sum() < 150:
            colour = rng.uniform(0, 255, 3)
    shade = colour + rng.normal(0, 12, img.shape).astype(np.float32)
    img[mask > 0] = np.clip(shade[mask > 0], 0, 255).astype(np.uint8)


def classification_set(
    n: int, num_classes: int, size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` RGB images, each with one shape whose kind is the label.

    Returns:
        images (n, size, size, 3) uint8, labels (n,) int32 and the class names.
    """
    rng = np.random.default_rng(seed)
    names = list(SHAPES[:num_classes])
    labels = np.arange(n, dtype=np.int32) % num_classes
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), np.uint8)
    for i, y in enumerate(labels):
        # One large, fully visible object per image. Its class sets its shape and its
        # hue band, so a small CNN learns the set in minutes on a CPU; size, position,
        # rotation, shade and the textured background vary.
        img = textured_background(rng, size, lines=1)
        r = rng.uniform(0.28, 0.42) * size
        cx, cy = rng.uniform(r, size - r, 2)
        mask = shape_mask(names[y], size, cx, cy, r, rng.uniform(0, 2 * np.pi), int(rng.integers(2, 5)))
        paint(img, mask, rng, class_colour(rng, int(y), num_classes))
        images[i] = img
    return images, labels, names
