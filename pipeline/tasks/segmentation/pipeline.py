"""tf.data for segmentation: image and mask augmented together, then normalized.

Geometric augmentation draws one random box per sample (a zoom-in crop, mirrored
at random as ``data.flip`` says) and samples image and mask through the same
``tf.image.crop_and_resize`` call geometry: bilinear for the image, nearest for the
mask, so a class id is never blended and the mask stays on its pixels. Photometric
jitter touches the image only.

Samples stream from their files (:mod:`pipeline.data.stream`): parallel reads, the
cache that ``data.cache`` chooses, prefetch; the synthetic set is in memory already.
"""

from __future__ import annotations

import numpy as np

from pipeline._keras import tf
from pipeline.core.images import InputSpec, normalize
from pipeline.data.stream import IN_MEMORY, CachePlan, cached_and_shuffled, read_indexed, shard_source
from pipeline.tasks.segmentation.readers import SegSplit

AUTOTUNE = tf.data.AUTOTUNE


def random_boxes(batch, max_zoom: float = 1.5, flip: str = "horizontal", seed=None):
    """``(batch, 4)`` normalized ``y1 x1 y2 x2`` crop boxes; ``x1 > x2`` mirrors the crop
    left-right, ``y1 > y2`` upside down. ``flip``: ``data.flip``'s modes."""
    side = 1.0 / tf.random.uniform([batch], 1.0, max_zoom, seed=seed)
    y1 = tf.random.uniform([batch], 0, 1, seed=seed) * (1 - side)
    x1 = tf.random.uniform([batch], 0, 1, seed=seed) * (1 - side)
    boxes = tf.stack([y1, x1, y1 + side, x1 + side], axis=1)
    for mode, swap in (("horizontal", [0, 3, 2, 1]), ("vertical", [2, 1, 0, 3])):
        if mode in flip:  # "horizontal_and_vertical" draws each on its own
            mirror = tf.random.uniform([batch], 0, 1, seed=seed) < 0.5
            boxes = tf.where(mirror[:, None], tf.gather(boxes, swap, axis=1), boxes)
    return boxes


def augment_pair(images, masks, boxes=None, photometric: bool = True, flip: str = "horizontal"):
    """Augment a batch of float images in [0, 255] ``(N,S,S,C)`` and their masks
    ``(N,S,S)`` together. ``boxes`` (see :func:`random_boxes`) may be given to make the
    geometry reproducible; the output is the input's size."""
    shape = tf.shape(images)
    n, size = shape[0], shape[1:3]
    if boxes is None:
        boxes = random_boxes(n, flip=flip)
    ind = tf.range(n)
    out = tf.image.crop_and_resize(images, boxes, ind, size, method="bilinear")
    m = tf.image.crop_and_resize(tf.cast(masks[..., None], tf.float32), boxes, ind, size, method="nearest")
    m = tf.cast(tf.round(m[..., 0]), masks.dtype)
    if photometric:
        # Per-sample brightness and contrast, so the colour bands of the classes stay learnable.
        gain = tf.random.uniform([n, 1, 1, 1], 0.75, 1.25)
        shift = tf.random.uniform([n, 1, 1, 1], -20.0, 20.0)
        mean = tf.reduce_mean(out, axis=[1, 2, 3], keepdims=True)
        out = tf.clip_by_value((out - mean) * gain + mean + shift, 0.0, 255.0)
    return out, m


def sample_dataset(
    split: SegSplit,
    spec: InputSpec,
    *,
    training: bool = False,
    seed: int = 0,
    shuffle_buffer: int = 2048,
    cache: CachePlan | None = None,
    limit: int = 0,
) -> tf.data.Dataset:
    """Unbatched ``(uint8 image, uint8 mask)`` prepared for ``spec``, shuffled when
    ``training``; a pair that cannot be read is skipped and counted."""
    n = min(len(split), limit) if limit else len(split)
    if split.in_memory:
        cache = IN_MEMORY
        ds = shard_source(tf.data.Dataset.from_tensor_slices((split.images[:n], split.masks[:n])), n, training=training)
    else:
        cache = cache or CachePlan("off")
        s, c = spec.size, spec.channels
        blank = np.zeros((s, s, c), np.uint8), np.zeros((s, s), np.uint8)

        def load(i):
            pair = split.reader.load_or_skip(split.pairs[int(i)])
            return (*pair, True) if pair is not None else (*blank, False)

        ds = read_indexed(n, load, (tf.uint8, tf.uint8), ((s, s, c), (s, s)), shuffle_seed=seed if training else None,
                          reshuffle=not cache.cached, training=training)  # fmt: skip
    return cached_and_shuffled(ds, cache, training=training, n=n, shuffle_buffer=shuffle_buffer, seed=seed)


def training_dataset(
    split: SegSplit,
    spec: InputSpec,
    batch_size: int,
    *,
    training: bool,
    augment: bool = True,
    flip: str = "horizontal",
    shuffle_buffer: int = 2048,
    seed: int = 0,
    cache: CachePlan | None = None,
):
    """Batched ``(normalized float image, int32 mask)`` for Keras ``fit``/``evaluate``;
    ``flip`` is ``data.flip``."""
    ds = sample_dataset(split, spec, training=training, seed=seed, shuffle_buffer=shuffle_buffer, cache=cache)
    ds = ds.batch(batch_size, drop_remainder=training and len(split) >= batch_size)

    def finish(x, y):
        x = tf.cast(x, tf.float32)
        y = tf.cast(y, tf.int32)
        if training and augment:
            x, y = augment_pair(x, y, flip=flip)
        return normalize(x, spec), y

    return ds.map(finish, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def iterate_numpy(split: SegSplit, spec: InputSpec, batch_size: int, limit: int = 0):
    """``(uint8 images, uint8 masks)`` numpy batches in split order: evaluation input."""
    ds = sample_dataset(split, spec, limit=limit)
    yield from ds.batch(batch_size).prefetch(AUTOTUNE).as_numpy_iterator()
