"""The input pipelines' shared front: samples read from files in parallel, and a
cache chosen by size (``data.cache``).

Every task reads its samples by index through :func:`read_indexed` (a Python reader
under ``tf.numpy_function``, run in parallel: OpenCV and Pillow release the GIL), so
memory holds the file list and the annotations, never the decoded set. What happens
to the prepared samples after the first epoch is :class:`CachePlan`'s decision:

* ``memory``: kept in memory (``Dataset.cache()``);
* ``disk``: written once to ``RUN/cache/`` and read back sequentially;
* ``off``: read from the files every epoch;
* ``auto`` (default): ``memory`` when the prepared set fits ``data.cache_budget_mb``,
  else ``disk`` when the stage has a run folder, else ``off``.

Shuffling follows the plan: without a cache the *indices* are shuffled before
reading (a full shuffle that costs nothing); a cache is filled in file order, so its
samples are shuffled afterwards through a buffer of ``data.shuffle_buffer``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline._keras import tf

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class CachePlan:
    """Where one split's prepared samples are kept after their first read."""

    mode: str  # memory | disk | off, or arrays (in memory already: nothing to cache)
    path: Path | None = None  # the disk cache's file prefix

    def apply(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        if self.mode == "memory":
            return ds.cache()
        if self.mode == "disk":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A killed run leaves tf.data's lock file behind, and the next run would
            # refuse the cache ("a concurrently running iterator"); the folder is this
            # process's own (each worker caches in its own run folder), so it is stale.
            for stale in self.path.parent.glob(f"{self.path.name}*.lockfile*"):
                stale.unlink(missing_ok=True)
            return ds.cache(str(self.path))
        return ds

    @property
    def cached(self) -> bool:
        return self.mode != "off"


IN_MEMORY = CachePlan("arrays")  # samples held as arrays: shuffled through the buffer, like a cache


def plan_cache(data_cfg, split: str, n: int, sample_bytes: int, cache_dir: Path | None, identity: object) -> CachePlan:
    """The cache for one split of ``n`` samples of ``sample_bytes`` each.

    ``identity`` is anything that tells this data apart (config, input spec, file
    names): it names the disk cache, so a cache made for other data or another input
    size is never read back.
    """
    mode = data_cfg.cache
    size = n * sample_bytes
    budget = data_cfg.cache_budget_mb * 2**20
    if mode == "auto":
        mode = "memory" if size <= budget else ("disk" if cache_dir is not None else "off")
    if mode == "disk" and cache_dir is None:
        mode = "off"  # evaluation and calibration read once: nothing to cache
    path = None
    if mode == "disk":
        key = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"{split}-{key}"
    log.info("%s: %d samples, %.0f MB prepared: cache %s%s (data.cache=%s, data.cache_budget_mb=%d)",
             split, n, size / 2**20, mode, f" in {path}" if path else "", data_cfg.cache,
             data_cfg.cache_budget_mb)  # fmt: skip
    return CachePlan(mode, path)


def plan_split(cfg, spec, split: str, names, sample_bytes: int, cache_dir: Path | None) -> CachePlan:
    """:func:`plan_cache` for one split of a task read from the files ``names``; the
    disk cache is named by the task, the data config, the input spec and the files."""
    d = dataclasses.asdict(cfg.data)
    for k in ("cache", "cache_budget_mb", "shuffle_buffer", "augment"):
        d.pop(k)  # they change how the samples are used, not what they are
    identity = {"task": cfg.task, "data": d, "spec": spec, "names": [str(n) for n in names]}
    return plan_cache(cfg.data, split, len(names), sample_bytes, cache_dir, identity)


def read_indexed(
    n: int,
    load: Callable,
    types: tuple,
    shapes: tuple,
    *,
    shuffle_seed: int | None = None,
    deterministic: bool = True,
) -> tf.data.Dataset:
    """Samples ``0..n-1`` read in parallel by ``load(i) -> (*arrays, ok)``; samples
    whose ``ok`` is false (an unreadable file, counted by the reader) are dropped.
    With ``shuffle_seed`` the indices are reshuffled each epoch before reading."""
    ds = tf.data.Dataset.range(n)
    if shuffle_seed is not None:
        ds = ds.shuffle(max(n, 1), seed=shuffle_seed, reshuffle_each_iteration=True)

    def read(i):
        out = tf.numpy_function(load, [i], [*types, tf.bool], stateful=False)
        for t, s in zip(out, (*shapes, ())):
            t.set_shape(s)
        return tuple(out)

    def readable(*sample):
        return sample[-1]

    def without_flag(*sample):
        return sample[:-1] if len(sample) > 2 else sample[0]

    ds = ds.map(read, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return ds.filter(readable).map(without_flag)


def cached_and_shuffled(
    ds: tf.data.Dataset, plan: CachePlan, *, training: bool, n: int, shuffle_buffer: int, seed: int
) -> tf.data.Dataset:
    """Apply ``plan`` to a dataset read in file order; a training split read through a
    cache is shuffled after it (read uncached, :func:`read_indexed` shuffled the indices)."""
    ds = plan.apply(ds)
    if training and plan.cached:
        ds = ds.shuffle(min(shuffle_buffer, max(n, 1)), seed=seed, reshuffle_each_iteration=True)
    return ds
