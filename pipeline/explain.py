"""Looking inside a model: conv arithmetic, filters, feature maps, pooling, int8.

The teaching notebooks (``notebooks/``) call these on the pipeline's own models,
so every figure they show comes from code that is tested here, not from a cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from pipeline._keras import keras, layers

# === Convolution arithmetic ===


def conv_output_size(
    size: int, kernel: int, stride: int = 1, padding: Literal["valid", "same"] | int = "valid", dilation: int = 1
) -> int:
    """Output length of a convolution or pooling along one axis.

    ``valid``: floor((n - d(k-1) - 1) / s) + 1; ``same``: ceil(n / s) (Keras pads so
    that this holds); an int ``p`` pads ``p`` on each side: floor((n + 2p - d(k-1) - 1) / s) + 1.
    """
    if min(size, kernel, stride, dilation) < 1:
        raise ValueError(f"size, kernel, stride and dilation must be >= 1, got {size, kernel, stride, dilation}")
    if padding == "same":
        return math.ceil(size / stride)
    pad = 0 if padding == "valid" else int(padding)
    span = dilation * (kernel - 1) + 1
    if size + 2 * pad < span:
        raise ValueError(f"kernel span {span} is larger than the padded input {size + 2 * pad}")
    return (size + 2 * pad - span) // stride + 1


# === Filters and feature maps ===


def first_conv_kernels(model: keras.Model) -> np.ndarray:
    """The kernel ``(k, k, in_channels, filters)`` of the model's first Conv2D."""
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and not isinstance(layer, layers.DepthwiseConv2D):
            return layer.get_weights()[0]
    raise ValueError(f"model {model.name!r} has no Conv2D layer")


def filters_as_images(kernels: np.ndarray) -> np.ndarray:
    """``(k, k, C, F)`` kernels → ``(F, k, k, C)`` in [0, 1], each filter scaled on its
    own so that its pattern shows (0.5 is a zero weight)."""
    f = np.moveaxis(np.asarray(kernels, np.float32), -1, 0)
    peak = np.abs(f).reshape(len(f), -1).max(1).reshape(-1, 1, 1, 1)
    return 0.5 + 0.5 * f / np.maximum(peak, 1e-12)


def stage_ends(model: keras.Model) -> list[str]:
    """Names of the stem's activation and of the last layer of each backbone stage,
    shallow to deep: the feature maps at increasing depth."""
    names = [layer.name for layer in model.layers]
    ends = [n for n in names if n.startswith("stem_")][-1:]
    stages = sorted({n.split("_")[0] for n in names if n.startswith("stage")}, key=lambda s: int(s[5:]))
    ends += [[n for n in names if n.startswith(f"{s}_")][-1] for s in stages]
    return ends


def feature_maps(model: keras.Model, layer_names: Sequence[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of the named layers for a batch of model-ready (normalized) images."""
    missing = [n for n in layer_names if n not in {layer.name for layer in model.layers}]
    if missing:
        raise ValueError(f"model {model.name!r} has no layer(s) {missing}")
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in layer_names])
    # A direct call, not predict(): predict traces a new tf.function for every probe.
    outs = probe(np.asarray(images, np.float32), training=False)
    outs = outs if isinstance(outs, list) else [outs]
    return {n: np.asarray(o) for n, o in zip(layer_names, outs)}


def split_params(model: keras.Model, cfg) -> dict[str, int]:
    """Parameter count of the shared backbone (``cfg.model.backbone``) and of the task's head."""
    from pipeline.models.backbones import backbone_layer_names

    names = backbone_layer_names(cfg.model)
    backbone = sum(layer.count_params() for layer in model.layers if layer.name in names)
    return {"backbone": int(backbone), "head": int(model.count_params() - backbone)}


# === Pooling and shifts ===


def pool(fmap: np.ndarray, kind: Literal["max", "average"], size: int = 2) -> np.ndarray:
    """Keras ``MaxPooling2D``/``AveragePooling2D`` (``size``, stride ``size``, valid) on an
    ``(H, W, C)`` or ``(N, H, W, C)`` map."""
    cls = {"max": layers.MaxPooling2D, "average": layers.AveragePooling2D}
    if kind not in cls:
        raise ValueError(f"Unknown pooling {kind!r}. Expected one of {sorted(cls)}.")
    x = np.asarray(fmap, np.float32)
    batched = x[None] if x.ndim == 3 else x
    out = cls[kind](size)(batched).numpy()
    return out[0] if x.ndim == 3 else out


def relative_change(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / ||a||``: 0 means unchanged."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))


def shift_sensitivity(fmap: np.ndarray, shift: int = 1, pooling: str | None = None, size: int = 2) -> dict:
    """How much a map, or its pooled version, changes when its content moves ``shift``
    cells to the right.

    Both views are cut from ``fmap`` (no wrap-around, no padding): ``a`` is columns
    ``[0, W - shift)``, ``b`` the same content moved, so every difference comes from the
    shift alone. Widths are trimmed to a multiple of ``size`` before pooling.

    Returns:
        ``relative_change`` (see :func:`relative_change`) and ``unchanged``, the
        fraction of output values that stay exactly equal.
    """
    x = np.asarray(fmap, np.float32)
    w = x.shape[1] - shift
    if pooling:
        w -= w % size
        h = x.shape[0] - x.shape[0] % size
        x = x[:h]
    if w <= 0:
        raise ValueError(f"map of width {fmap.shape[1]} is too narrow for a shift of {shift}")
    a, b = x[:, :w], x[:, shift : shift + w]
    if pooling:
        a, b = pool(a, pooling, size), pool(b, pooling, size)
    return {"relative_change": relative_change(a, b), "unchanged": float(np.mean(a == b))}


def translate(images: np.ndarray, dx: int, dy: int = 0) -> np.ndarray:
    """Images ``(N, H, W, C)`` moved by ``(dx, dy)`` pixels, edges filled by reflection
    (so no black border tells the model that something moved)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    out = [
        cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT_101).reshape(img.shape)
        for img in np.asarray(images)
    ]
    return np.stack(out)


# === int8 ===


def affine_qparams(lo: float, hi: float, dtype: str = "int8", symmetric: bool = False) -> tuple[float, int]:
    """TFLite's scale and zero point for values in ``[lo, hi]``: ``real = scale * (q - zp)``.

    The range is widened to include 0, so that zero (padding, ReLU's floor, pruned
    weights) is exact. ``symmetric`` (TFLite's weights) pins the zero point to 0.
    """
    info = np.iinfo(dtype)
    qmin, qmax = (info.min + 1, info.max) if symmetric else (info.min, info.max)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        scale = max(abs(lo), hi) / qmax
        return (scale if scale > 0 else 1.0), 0
    scale = (hi - lo) / (qmax - qmin)
    if scale == 0:
        return 1.0, 0
    return scale, int(np.clip(round(qmin - lo / scale), qmin, qmax))


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str = "int8") -> np.ndarray:
    """Float → integer: ``round(x / scale) + zero_point``, saturated to the dtype."""
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer → float: ``scale * (q - zero_point)``."""
    return (scale * (np.asarray(q, np.float64) - zero_point)).astype(np.float32)
