"""tf.data for segmentation: image and mask augmented together, then normalized.

Geometric augmentation draws one random box per sample (a zoom-in crop, mirrored
at random) and samples image and mask through the same
``tf.image.crop_and_resize`` call geometry: bilinear for the image, nearest for the
mask, so a class id is never blended and the mask stays on its pixels. Photometric
jitter touches the image only.
"""

from __future__ import annotations

import numpy as np

from pipeline._keras import tf
from pipeline.core.images import InputSpec, normalize
from pipeline.tasks.segmentation.readers import SegSplit

AUTOTUNE = tf.data.AUTOTUNE


def random_boxes(batch, max_zoom: float = 1.5, flip: bool = True, seed=None):
    """``(batch, 4)`` normalized ``y1 x1 y2 x2`` crop boxes; ``x1 > x2`` mirrors the crop."""
    side = 1.0 / tf.random.uniform([batch], 1.0, max_zoom, seed=seed)
    y1 = tf.random.uniform([batch], 0, 1, seed=seed) * (1 - side)
    x1 = tf.random.uniform([batch], 0, 1, seed=seed) * (1 - side)
    boxes = tf.stack([y1, x1, y1 + side, x1 + side], axis=1)
    if flip:
        mirror = tf.random.uniform([batch], 0, 1, seed=seed) < 0.5
        boxes = tf.where(mirror[:, None], tf.gather(boxes, [0, 3, 2, 1], axis=1), boxes)
    return boxes


def augment_pair(images, masks, boxes=None, photometric: bool = True):
    """Augment a batch of float images in [0, 255] ``(N,S,S,C)`` and their masks
    ``(N,S,S)`` together. ``boxes`` (see :func:`random_boxes`) may be given to make the
    geometry reproducible; the output is the input's size."""
    shape = tf.shape(images)
    n, size = shape[0], shape[1:3]
    if boxes is None:
        boxes = random_boxes(n)
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


def training_dataset(
    split: SegSplit,
    spec: InputSpec,
    batch_size: int,
    *,
    training: bool,
    augment: bool = True,
    shuffle_buffer: int = 2048,
    seed: int = 0,
):
    """Batched ``(normalized float image, int32 mask)`` for Keras ``fit``/``evaluate``."""
    ds = tf.data.Dataset.from_tensor_slices((split.images, split.masks))
    if training:
        ds = ds.shuffle(min(shuffle_buffer, max(len(split), 1)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=training and len(split) >= batch_size)

    def finish(x, y):
        x = tf.cast(x, tf.float32)
        y = tf.cast(y, tf.int32)
        if training and augment:
            x, y = augment_pair(x, y)
        return normalize(x, spec), y

    return ds.map(finish, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def iterate_numpy(split: SegSplit, batch_size: int, limit: int = 0):
    """``(uint8 images, uint8 masks)`` numpy batches: evaluation input."""
    n = min(len(split), limit) if limit else len(split)
    for i in range(0, n, batch_size):
        j = min(i + batch_size, n)
        yield np.ascontiguousarray(split.images[i:j]), np.ascontiguousarray(split.masks[i:j])
