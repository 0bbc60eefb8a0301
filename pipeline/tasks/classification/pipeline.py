"""tf.data input pipelines: parallel decode, cache, shuffle, augment, prefetch.

Images are decoded and prepared by :func:`pipeline.core.images.prepare` (the same
function the runner uses) inside ``tf.numpy_function``, which runs in parallel
because OpenCV releases the GIL (:func:`pipeline.data.stream.read_indexed`). A
corrupt file is skipped, logged with its path and counted; it never stops an epoch.
``data.cache`` decides where the prepared images are kept (:mod:`pipeline.data.stream`).
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline._keras import tf
from pipeline.core.images import InputSpec, SkipCounter, normalize, prepare, read_image
from pipeline.data.stream import IN_MEMORY, CachePlan, augmented, cached_and_shuffled, read_indexed, shard_source
from pipeline.tasks.classification.readers import Split

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE


def prepare_array(images: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Prepare a stack of decoded images (N,H,W,C) once, up front."""
    if images.shape[1:] == (spec.size, spec.size, spec.channels):
        return images
    return np.stack([prepare(im, spec) for im in images])


def _decode_fn(split: Split, spec: InputSpec, skipped: SkipCounter):
    blank = np.zeros((spec.size, spec.size, spec.channels), np.uint8)

    def load(i) -> tuple[np.ndarray, np.int32, bool]:
        i = int(i)
        p, label = split.paths[i], np.int32(split.labels[i])
        x = skipped.attempt(p, lambda: prepare(read_image(p), spec))
        return (blank, label, False) if x is None else (x, label, True)

    return load


def raw_dataset(
    split: Split,
    spec: InputSpec,
    skipped: SkipCounter,
    *,
    shuffle_seed: int | None = None,
    reshuffle: bool = True,
    training: bool = False,
) -> tf.data.Dataset:
    """Unbatched ``(uint8 image, int32 label)`` pairs, prepared for ``spec``; bad files
    dropped. Files are read in order, or reshuffled each epoch with ``shuffle_seed``
    (arrays in memory come in order: the caller shuffles them)."""
    if split.images is not None:
        ds = tf.data.Dataset.from_tensor_slices((prepare_array(split.images, spec), split.labels.astype(np.int32)))
        return shard_source(ds, len(split), training=training)
    shape = (spec.size, spec.size, spec.channels)
    load = _decode_fn(split, spec, skipped)
    return read_indexed(
        len(split), load, (tf.uint8, tf.int32), (shape, ()), shuffle_seed=shuffle_seed, reshuffle=reshuffle,
        training=training,
    )  # fmt: skip


def training_dataset(
    split: Split,
    spec: InputSpec,
    batch_size: int,
    *,
    training: bool,
    augment=None,
    cache: CachePlan | None = None,
    shuffle_buffer: int = 2048,
    seed: int = 0,
    skipped: SkipCounter,
) -> tf.data.Dataset:
    """Batched ``(normalized float image, label)`` for Keras ``fit``/``evaluate``.

    ``augment`` is a callable on a uint8-range float batch (keras-cv layers); ``cache``
    is ``data.cache``'s plan for a split read from files (arrays in memory need none).
    """
    cache = IN_MEMORY if split.images is not None else cache or CachePlan("off")
    ds = raw_dataset(split, spec, skipped, shuffle_seed=seed if training else None, reshuffle=not cache.cached,
                     training=training)  # fmt: skip
    ds = cached_and_shuffled(ds, cache, training=training, n=len(split), shuffle_buffer=shuffle_buffer, seed=seed)
    # Dropping the ragged last batch spares BatchNorm a batch of one or two; the
    # schedules count len(split) // batch_size steps (train.steps_per_epoch). If
    # unreadable files leave no full batch, train.explain_empty_epochs says so.
    ds = ds.batch(batch_size, drop_remainder=training and len(split) >= batch_size)
    if training and augment is not None:
        ds = augmented(ds, lambda x, y: (augment(tf.cast(x, tf.float32), training=True), y))
    ds = ds.map(lambda x, y: (normalize(tf.cast(x, tf.float32), spec), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def iterate_numpy(split: Split, spec: InputSpec, batch_size: int, limit: int = 0, skipped: SkipCounter | None = None):
    """Yield ``(uint8 images, labels)`` numpy batches: evaluation and calibration input."""
    ds = raw_dataset(split, spec, skipped if skipped is not None else SkipCounter())
    if limit:
        ds = ds.take(limit)
    yield from ds.batch(batch_size).prefetch(AUTOTUNE).as_numpy_iterator()
