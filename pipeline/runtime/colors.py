"""The one colour palette for class overlays (segmentation masks, legends, sample grids).

Pascal VOC's bit-interleaved colour map: index 0 is black (background), the next
ones are well separated, and a VOC ``SegmentationClass`` PNG shows the same colours.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def _palette(n: int) -> np.ndarray:
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    out.setflags(write=False)
    return out


def palette(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 RGB colours, one per class id (read-only)."""
    if n < 1:
        raise ValueError(f"palette size must be at least 1, got {n}")
    return _palette(int(n))
