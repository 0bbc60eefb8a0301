"""The one train/validation split by ratio, shared by every task's readers."""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import DataError


def split_indices(
    n: int, val_split: float, seed: int, labels: np.ndarray | None = None, where: str = "the dataset"
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, val)`` indices of a seeded random split by ``val_split``.

    With ``labels`` the split is stratified: each class with two or more items lands
    on both sides (a class with one item stays in training). Without, both sides get
    at least one item.

    Raises:
        DataError: naming ``where`` when there are too few items to split.
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        if n < 2:
            raise DataError(f"{where}: only {n} image(s), too few to split into train and validation")
        idx = rng.permutation(n)
        n_val = min(max(1, int(round(n * val_split))), n - 1)
        return np.sort(idx[n_val:]), np.sort(idx[:n_val])
    val_mask = np.zeros(n, bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_split))
        if val_split > 0:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_mask[idx[:n_val]] = True
    return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
