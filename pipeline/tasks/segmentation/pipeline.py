"""tf.data for segmentation: image and mask augmented together, then normalized.

Geometric augmentation draws one affine map per sample (zoom, rotation, shear and
mirroring, as ``data.zoom``, ``data.rotation``, ``data.shear`` and ``data.flip`` say)
and warps image and mask through the same ``ImageProjectiveTransform``: bilinear for
the image, nearest for the mask, so a class id is never blended and the mask stays on
its pixels. Photometric
jitter touches the image only.

Samples stream from their files (:mod:`pipeline.data.stream`): parallel reads, the
cache that ``data.cache`` chooses, prefetch; the synthetic set is in memory already.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline._keras import tf
from pipeline.core.images import InputSpec, normalize
from pipeline.data.augment import Affine, Mix, uniform
from pipeline.data.stream import IN_MEMORY, CachePlan, augmented, cached_and_shuffled, read_indexed, shard_source
from pipeline.tasks.segmentation import IGNORE
from pipeline.tasks.segmentation.readers import SegSplit

AUTOTUNE = tf.data.AUTOTUNE


def random_transforms(batch, size, affine: Affine):
    """``(batch, 8)`` ``ImageProjectiveTransform`` rows, each mapping an output pixel to
    the input point it samples: about the image's centre, a zoom (log-uniform in
    ``affine.zoom``), a horizontal shear and a rotation, mirrored as ``affine.flip`` says,
    shifted at random as far as keeps the window inside the image (zoom in) or the image
    inside the window (zoom out)."""
    rand = lambda lo, hi: uniform([batch], lo, hi)  # noqa: E731
    lo, hi = affine.zoom
    s = tf.exp(rand(math.log(lo), math.log(hi)))
    sx, sy = s, s
    for mode in ("horizontal", "vertical"):
        if mode in affine.flip:  # "horizontal_and_vertical" draws each on its own
            sign = tf.where(rand(0.0, 1.0) < 0.5, -1.0, 1.0)
            sx, sy = (sx * sign, sy) if mode == "horizontal" else (sx, sy * sign)
    theta = rand(-1.0, 1.0) * math.radians(affine.rotation)
    k = tf.tan(rand(-1.0, 1.0) * math.radians(affine.shear))
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Forward A = rotation @ [[1, k], [0, 1]] @ diag(sx, sy): input offsets -> output offsets.
    a00, a01 = cos * sx, (cos * k - sin) * sy
    a10, a11 = sin * sx, (sin * k + cos) * sy
    det = a00 * a11 - a01 * a10
    i00, i01, i10, i11 = a11 / det, -a01 / det, -a10 / det, a00 / det
    size = tf.cast(size, tf.float32)
    centre = (size - 1.0) / 2.0
    span = tf.abs(s - 1.0) * (size - 1.0) / 2.0  # pixel centres: zoomed in, no sample falls outside
    ox, oy = centre + rand(-1.0, 1.0) * span, centre + rand(-1.0, 1.0) * span  # where the centre lands
    # input = A^-1 (output - (ox, oy)) + centre
    zero = tf.zeros([batch])
    return tf.stack(
        [i00, i01, centre - i00 * ox - i01 * oy, i10, i11, centre - i10 * ox - i11 * oy, zero, zero], axis=1
    )


def _warp(x, transforms, interpolation: str, fill: float):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms,
        output_shape=tf.shape(x)[1:3],
        fill_value=fill,
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )


def mix_batch(images, masks, mix: Mix):
    """New compositions from a batch's own samples, pixel for pixel (so a mask stays on
    its image): with chance ``mix.mosaic`` a sample's image is cut at a random point
    (a quarter to three quarters across and down) and three of its quarters come from the
    next three samples of the batch; with chance ``mix.copy_paste`` the object pixels
    (every class but 0 and the ignored) of another sample are pasted over it. Each sample
    keeps its own place and scale: the affine warp before this drew them. The others are
    the batch's next samples (a batch of fewer than four repeats some, one mixes nothing);
    class 0 is taken for the background."""
    n, size = tf.shape(images)[0], tf.shape(images)[1]
    draw = lambda p: uniform([n, 1, 1]) < p  # noqa: E731
    if mix.mosaic:
        cut = tf.cast(size, tf.float32) * uniform([n, 2, 1, 1], 0.25, 0.75)
        at = tf.cast(tf.range(size), tf.float32)
        right = tf.cast(at[None, None, :] >= cut[:, 0], tf.int32)  # (n, 1, S)
        below = tf.cast(at[None, :, None] >= cut[:, 1], tf.int32)  # (n, S, 1)
        quarter = tf.where(draw(mix.mosaic), right + 2 * below, 0)  # (n, S, S): whose pixel
        img_out, mask_out = images, masks
        for k in (1, 2, 3):
            take = quarter == k
            img_out = tf.where(take[..., None], tf.roll(images, -k, 0), img_out)
            mask_out = tf.where(take, tf.roll(masks, -k, 0), mask_out)
        images, masks = img_out, mask_out
    if mix.copy_paste:
        # The last sample's objects for the first: a different sample while the batch has two.
        other = tf.roll(masks, 1, 0)
        paste = draw(mix.copy_paste) & (other != 0) & (other != IGNORE)
        images = tf.where(paste[..., None], tf.roll(images, 1, 0), images)
        masks = tf.where(paste, other, masks)
    return images, masks


def augment_pair(images, masks, affine: Affine | None = None, photometric: bool = True, mix: Mix | None = None):
    """Augment a batch of float images in [0, 255] ``(N,S,S,C)`` and their masks
    ``(N,S,S)`` together, as ``affine`` and ``mix`` say (default: ``data``'s defaults);
    the output is the input's size."""
    n = tf.shape(images)[0]
    transforms = random_transforms(n, tf.shape(images)[1], affine or Affine())
    # Outside the image: black, and ignored in the mask (as letterbox padding is): class 0
    # may be a real class, and no label is known there.
    out = _warp(images, transforms, "BILINEAR", 0.0)
    m = _warp(tf.cast(masks[..., None], tf.float32), transforms, "NEAREST", float(IGNORE))
    m = tf.cast(tf.round(m[..., 0]), masks.dtype)
    if mix is not None:
        out, m = mix_batch(out, m, mix)
    if photometric:
        # Per-sample brightness and contrast, so the colour bands of the classes stay learnable.
        gain = uniform([n, 1, 1, 1], 0.75, 1.25)
        shift = uniform([n, 1, 1, 1], -20.0, 20.0)
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
    affine: Affine | None = None,
    mix: Mix | None = None,
    shuffle_buffer: int = 2048,
    seed: int = 0,
    cache: CachePlan | None = None,
):
    """Batched ``(normalized float image, int32 mask)`` for Keras ``fit``/``evaluate``."""
    ds = sample_dataset(split, spec, training=training, seed=seed, shuffle_buffer=shuffle_buffer, cache=cache)
    ds = ds.batch(batch_size, drop_remainder=training and len(split) >= batch_size)

    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), tf.cast(y, tf.int32)))
    if training and augment:
        ds = augmented(ds, lambda x, y: augment_pair(x, y, affine, mix=mix))
    return ds.map(lambda x, y: (normalize(x, spec), y), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def iterate_numpy(split: SegSplit, spec: InputSpec, batch_size: int, limit: int = 0):
    """``(uint8 images, uint8 masks)`` numpy batches in split order: evaluation input."""
    ds = sample_dataset(split, spec, limit=limit)
    yield from ds.batch(batch_size).prefetch(AUTOTUNE).as_numpy_iterator()
