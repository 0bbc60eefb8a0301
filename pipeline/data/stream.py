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
  else ``disk`` when the stage has a run folder, else ``off``. A disk cache pays off
  where decoding costs (phone photos of several megapixels prepared to a few hundred
  pixels); ``off`` is the leanest where files are already small.

Shuffling follows the plan: without a cache the *indices* are shuffled before
reading, anew each epoch (a full shuffle that costs nothing); a cache is filled in one
fixed shuffled order, and its samples are shuffled again each epoch through a buffer
of ``data.shuffle_buffer`` (capped behind a disk cache).

With several workers (:func:`sharded`), each worker reads only its own share of the
training samples, cut at the source before any file is opened. Without a cache every
worker shuffles all the indices alike (the same seed) and keeps its share, so each
epoch splits the set afresh and sees every sample once across the workers; with a
cache the share is fixed (each worker caches its own). Every share is cut to
``n // workers`` samples, so all workers take the same number of steps. Validation
splits are read whole by every worker and split by TensorFlow's DATA policy: they
are small, and Keras counts evaluation steps from the dataset it is given.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline._keras import tf
from pipeline.data.augment import Affine, Mix

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE
_SHARD: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("input_shard", default=None)


@contextlib.contextmanager
def sharded(workers: int, index: int) -> Iterator[None]:
    """Datasets built inside read only worker ``index``'s share of ``workers``."""
    token = _SHARD.set((workers, index) if workers > 1 else None)
    try:
        yield
    finally:
        _SHARD.reset(token)


def shard_source(ds: tf.data.Dataset, n: int, *, training: bool) -> tf.data.Dataset:
    """This worker's share (``n // workers`` samples) of a training source of ``n``;
    the whole source outside :func:`sharded` or for validation."""
    shard = _SHARD.get()
    if shard is None or not training:
        return ds
    workers, index = shard
    return ds.shard(workers, index).take(n // workers)


@dataclass(frozen=True)
class CachePlan:
    """Where one split's prepared samples are kept after their first read."""

    mode: str  # memory | disk | off, or arrays (in memory already: nothing to cache)
    path: Path | None = None  # the disk cache's file prefix
    shuffle_cap: int = 0  # the most samples the shuffle buffer after the cache may hold (0: no cap)

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


def plan_cache(
    data_cfg, split: str, n: int, sample_bytes: int, cache_dir: Path | None, identity: object | Callable[[], object]
) -> CachePlan:
    """The cache for one split of ``n`` samples of ``sample_bytes`` each.

    ``identity`` is anything that tells this data apart (config, input spec, file
    names), or a function that builds it (called only for a disk cache): it names the
    disk cache, so a cache made for other data or another input size is never read back.
    """
    mode = data_cfg.cache
    size = n * sample_bytes
    budget = data_cfg.cache_budget_mb * 2**20
    if mode == "auto":
        mode = "memory" if size <= budget else ("disk" if cache_dir is not None else "off")
    if mode == "disk" and cache_dir is None:
        mode = "off"  # evaluation and calibration read once: nothing to cache
    path, cap = None, 0
    if mode == "disk":
        identity = identity() if callable(identity) else identity  # built only for a disk cache
        key = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"{split}-{key}"
        # A disk cache is read in file order, so it is shuffled through a buffer; that
        # buffer holds prepared samples in memory (measured: 2,048 segmentation samples at
        # 256 px took 0.9 GB), so it gets a quarter of the memory budget at most.
        cap = max(64, budget // 4 // max(sample_bytes, 1))
    log.info("%s: %d samples, %.0f MB prepared: cache %s%s (data.cache=%s, data.cache_budget_mb=%d)",
             split, n, size / 2**20, mode, f" in {path}" if path else "", data_cfg.cache,
             data_cfg.cache_budget_mb)  # fmt: skip
    return CachePlan(mode, path, cap)


def _stamp(path) -> list[int] | None:
    """A file's size and modification time (ns), None for what is not a file: what
    tells a file changed under its name apart, at the cost of a stat, not a read."""
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return None
    return [st.st_size, st.st_mtime_ns] if stat.S_ISREG(st.st_mode) else None


def plan_split(cfg, spec, split: str, names, sample_bytes: int, cache_dir: Path | None) -> CachePlan:
    """:func:`plan_cache` for one split of a task read from the files ``names``; the
    disk cache is named by the task, the data config, the input spec and the files (each
    with its size and modification time)."""
    d = dataclasses.asdict(cfg.data)
    # They change how the prepared samples are used, not what they are; so do the
    # augmentation settings (their data.* keys are the fields of Affine and Mix), which
    # act after the cache: an A/B of augmentation settings reuses it.
    augmentation = [f.name for cls in (Affine, Mix) for f in dataclasses.fields(cls)]
    for k in ("cache", "cache_budget_mb", "shuffle_buffer", "augment", *augmentation):
        d.pop(k)
    shard = _SHARD.get() if split == "train" else None  # a worker's cache holds its share only

    def identity() -> dict:
        # Each file by name, size and modification time, the data config's files (COCO
        # annotations, a mask list) too: a photo or label edited in place between a run
        # and its resume (or its prune and QAT, which read the cache) names another
        # cache. A stat per file, so only when a disk cache is chosen.
        files = {k: _stamp(v) for k, v in d.items() if isinstance(v, str)}
        return {
            "task": cfg.task, "data": d, "spec": spec, "shard": shard,
            "names": [[str(n), _stamp(n)] for n in names],
            "config_files": {k: v for k, v in files.items() if v},
        }  # fmt: skip

    return plan_cache(cfg.data, split, len(names), sample_bytes, cache_dir, identity)


def read_indexed(
    n: int,
    load: Callable,
    types: tuple,
    shapes: tuple,
    *,
    shuffle_seed: int | None = None,
    reshuffle: bool = True,
    training: bool = False,
) -> tf.data.Dataset:
    """Samples ``0..n-1`` read in parallel by ``load(i) -> (*arrays, ok)``; samples
    whose ``ok`` is false (an unreadable file, counted by the reader) are dropped.
    With ``shuffle_seed`` the indices are shuffled before reading: anew each epoch, or
    once (``reshuffle=False``: the fixed order a cache is filled in, so files kept in
    name order, such as video frames, do not reach the cache's shuffle buffer in runs);
    under :func:`sharded` a ``training`` source is read in this worker's share only."""
    ds = tf.data.Dataset.range(n)
    if shuffle_seed is not None:
        ds = ds.shuffle(max(n, 1), seed=shuffle_seed, reshuffle_each_iteration=reshuffle)
    ds = shard_source(ds, n, training=training)

    def read(i):
        out = tf.numpy_function(load, [i], [*types, tf.bool], stateful=False)
        for t, s in zip(out, (*shapes, ())):
            t.set_shape(s)
        return tuple(out)

    def readable(*sample):
        return sample[-1]

    def without_flag(*sample):
        return sample[:-1] if len(sample) > 2 else sample[0]

    ds = ds.map(read, num_parallel_calls=AUTOTUNE)  # in order: a seed gives the same batches
    return ds.filter(readable).map(without_flag)


def augmented(ds: tf.data.Dataset, fn: Callable) -> tf.data.Dataset:
    """``ds.map(fn)`` for an ``fn`` that draws random numbers (augmentation): one batch at
    a time on a CPU-only machine, since parallel calls take their draws from the shared
    generators in whatever order the threads run, and the same seed would give other
    batches, and another model, on every run. There the model, not the augmentation, is
    the bottleneck (segmentation's augmentation on 2 cores: 440 images/s in order, 610
    in parallel, against the 10-20 images/s its training takes). With a GPU, which
    training can outrun it and whose kernels are not bit-reproducible anyway, in
    parallel. What follows it (normalising) stays parallel."""
    if tf.config.list_physical_devices("GPU"):
        return ds.map(fn, num_parallel_calls=AUTOTUNE)
    return ds.map(fn)


def cached_and_shuffled(
    ds: tf.data.Dataset, plan: CachePlan, *, training: bool, n: int, shuffle_buffer: int, seed: int
) -> tf.data.Dataset:
    """Apply ``plan`` to a dataset read in file order; a training split read through a
    cache is shuffled after it (read uncached, :func:`read_indexed` shuffled the indices)."""
    ds = plan.apply(ds)
    if training and plan.cached:
        buffer = min(shuffle_buffer, plan.shuffle_cap or shuffle_buffer, max(n, 1))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return ds
