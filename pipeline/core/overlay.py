"""Drawing primitives shared by every task's ``Task.draw`` and the runner's HUD.

All functions draw on a BGR uint8 frame in place and return it. Colours come from
one :func:`palette`, so a class has the same colour in boxes, masks and legends.
Text scales with the frame, so a 320×240 and a 1920×1080 frame both stay readable.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


@lru_cache(maxsize=32)
def _palette(n: int) -> tuple[tuple[int, int, int], ...]:
    # Golden-ratio hue steps: neighbouring class ids get far-apart hues.
    out = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
        out.append((int(b * 255), int(g * 255), int(r * 255)))
    return tuple(out)


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct BGR colours, the same for the same ``n`` and index in every run."""
    return list(_palette(max(1, int(n))))


def _text_scale(frame: np.ndarray) -> tuple[float, int]:
    scale = max(0.4, min(frame.shape[:2]) / 720)
    return scale, max(1, round(scale * 1.5))


def _text_box(frame, text: str, org: tuple[int, int], color, scale: float, thick: int) -> int:
    """Text on a filled box whose top-left is ``org``; returns the box height."""
    color = tuple(int(c) for c in color)
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
    x, y = org
    h = th + base + 4
    cv2.rectangle(frame, (x, y), (x + tw + 6, y + h), color, -1)
    light = sum(color) / 3 > 140
    cv2.putText(
        frame, text, (x + 3, y + th + 2), FONT, scale, (0, 0, 0) if light else (255, 255, 255), thick, cv2.LINE_AA
    )
    return h


def draw_labels(
    frame: np.ndarray,
    lines: Sequence[str],
    origin: tuple[int, int] = (8, 8),
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Lines of text on filled boxes, stacked downwards from ``origin`` (top-left).

    Args:
        lines: e.g. ``["cat 0.91", "dog 0.05"]`` for classification's top-k.
        colors: a BGR box colour per line (default dark grey).
    """
    scale, thick = _text_scale(frame)
    x, y = origin
    for i, line in enumerate(lines):
        color = tuple(colors[i]) if colors is not None else (40, 40, 40)
        y += _text_box(frame, line, (x, y), color, scale, thick) + 2
    return frame


def draw_boxes(
    frame: np.ndarray,
    boxes_xyxy: np.ndarray,
    class_ids: Sequence[int],
    scores: Sequence[float] | None,
    class_names: Sequence[str],
    captions: Sequence[str] | None = None,
) -> np.ndarray:
    """Boxes in frame pixels (``x1 y1 x2 y2``), each outlined in its class's colour and
    captioned ``"name 0.87"`` (or ``captions``); ``scores`` may be None."""
    colors = palette(len(class_names))
    scale, thick = _text_scale(frame)
    scale *= 0.8
    h, w = frame.shape[:2]
    for i, box in enumerate(np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)):
        c = int(class_ids[i])
        color = colors[c % len(colors)]
        x1, y1, x2, y2 = (int(round(v)) for v in np.clip(box, [0, 0, 0, 0], [w - 1, h - 1, w - 1, h - 1]))
        cv2.rectangle(frame, (x1, y1), (x2, y2), color, max(2, thick + 1))
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        text = captions[i] if captions is not None else name if scores is None else f"{name} {float(scores[i]):.2f}"
        (_, th), base = cv2.getTextSize(text, FONT, scale, thick)
        _text_box(frame, text, (x1, max(0, y1 - th - base - 4)), color, scale, thick)
    return frame


def blend_mask(
    frame: np.ndarray,
    mask: np.ndarray,
    class_names: Sequence[str],
    alpha: float = 0.5,
    background: int | None = 0,
    legend: bool = True,
    ignore: int | None = None,
) -> np.ndarray:
    """Blend a per-pixel class mask over the frame, with a legend of the classes present.

    Args:
        mask: (H, W) integer class ids at the frame's size (resize with
            ``cv2.INTER_NEAREST`` first when it is not).
        alpha: weight of the class colour, 0 (invisible) to 1 (opaque).
        background: a class id left untinted (None tints every class).
        ignore: a mask value (e.g. 255, unlabelled) painted white and left out of the legend.
    """
    if mask.shape[:2] != frame.shape[:2]:
        raise ValueError(f"mask shape {mask.shape[:2]} differs from frame shape {frame.shape[:2]}")
    lut = np.array(palette(len(class_names)), np.uint8)
    ignored = np.asarray(mask) == ignore if ignore is not None else None
    ids = np.asarray(mask).astype(np.intp, copy=False) % len(lut)
    if ignored is not None:
        ids = np.where(ignored, background if background is not None else 0, ids)
    colored = lut[ids]
    blended = cv2.addWeighted(frame, 1.0 - alpha, colored, alpha, 0.0)
    keep = ids != background if background is not None else np.ones(ids.shape, bool)
    np.copyto(frame, blended, where=keep[..., None])
    if ignored is not None:
        frame[ignored] = 255
    if legend:
        present = [int(c) for c in np.unique(ids) if background is None or c != background]
        names = [class_names[c] if c < len(class_names) else str(c) for c in present]
        scale, thick = _text_scale(frame)
        width = max((cv2.getTextSize(n, FONT, scale, thick)[0][0] for n in names), default=0)
        draw_labels(frame, names, (max(0, frame.shape[1] - width - 14), 8), [lut[c] for c in present])
    return frame


def hud_panel(
    frame_shape: tuple[int, ...], fps: float, stages_ms: dict[str, float], extra: Sequence[str] = ()
) -> np.ndarray:
    """An opaque BGR panel with FPS and per-stage latency, sized for a frame of ``frame_shape``.

    Opaque, so a runner can render it a few times a second and paste it on every
    frame (:func:`paste_hud`) instead of drawing text per frame.
    """
    lines = [f"{fps:5.1f} FPS", *extra] + [f"{k:<11} {v:6.1f} ms" for k, v in stages_ms.items()]
    scale = max(0.4, min(frame_shape[:2]) / 720) * 0.7
    thick = max(1, round(scale * 1.5))
    (_, th), base = cv2.getTextSize("0", FONT, scale, thick)
    step = th + base + 6
    width = max(cv2.getTextSize(line, FONT, scale, thick)[0][0] for line in lines) + 12
    panel = np.full((step * len(lines) + 6, width, 3), 20, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(panel, line, (6, 3 + i * step + th + 2), FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return panel


def paste_hud(frame: np.ndarray, panel: np.ndarray, margin: int = 8) -> np.ndarray:
    """Paste a :func:`hud_panel` in the bottom-left corner (labels keep the top-left)."""
    h = min(panel.shape[0], frame.shape[0] - margin)
    w = min(panel.shape[1], frame.shape[1] - margin)
    if h > 0 and w > 0:
        y = frame.shape[0] - margin - h
        frame[y : y + h, margin : margin + w] = panel[:h, :w]
    return frame


def draw_hud(frame: np.ndarray, fps: float, stages_ms: dict[str, float]) -> np.ndarray:
    """FPS and per-stage latency in the bottom-left corner."""
    return paste_hud(frame, hud_panel(frame.shape, fps, stages_ms))


def grid(tiles: list[np.ndarray], cols: int = 4, pad: int = 2) -> np.ndarray:
    """Same-size images tiled row by row on a white background (every report sample grid)."""
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, min(cols, len(tiles)) * (w + pad) + pad, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = t
    return out


def image_grid(
    images: np.ndarray, captions: list[str], correct: list[bool], cell: int = 128, cols: int = 4, max_n: int = 16
) -> np.ndarray:
    """Prepared uint8 images (RGB or gray) as a :func:`grid` of ``cell``-px tiles, each
    captioned green (right) or red (wrong) below it."""
    bar = 18
    tiles = []
    for img, caption, ok in list(zip(images, captions, correct))[:max_n]:
        tile = np.full((cell + bar, cell, 3), 255, np.uint8)
        img = np.repeat(img, 3, -1) if img.shape[-1] == 1 else img
        tile[:cell] = cv2.resize(img, (cell, cell), interpolation=cv2.INTER_NEAREST)
        color = (0, 140, 0) if ok else (200, 0, 0)
        cv2.putText(tile, caption[:24], (2, cell + 13), FONT, 0.35, color, 1, cv2.LINE_AA)
        tiles.append(tile)
    return grid(tiles, cols, pad=0)


def draw_polyline(frame: np.ndarray, points: np.ndarray, color, closed: bool = False, label: str = "") -> np.ndarray:
    """A line or polygon (frame pixels), e.g. a counting line or zone, with a caption at its first point."""
    scale, thick = _text_scale(frame)
    pts = np.round(np.asarray(points, np.float32)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(frame, [pts], closed, tuple(int(c) for c in color), max(2, thick + 1), cv2.LINE_AA)
    if label:
        x, y = (int(v) for v in pts[0, 0])
        _text_box(frame, label, (max(0, x), max(0, y - 20)), color, scale * 0.8, thick)
    return frame
