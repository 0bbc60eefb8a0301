"""Backbones: functions from an input tensor to feature maps at growing strides.

Registered by name (timm's ``@register_model``), so classification, detection and
segmentation heads share one backbone and tests can parametrise over the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.models.blocks import conv_bn_act, inverted_residual, make_divisible

BACKBONES: dict[str, Callable] = {}


def register_backbone(name: str):
    def wrap(fn: Callable) -> Callable:
        BACKBONES[name] = fn
        return fn

    return wrap


def get_backbone(name: str) -> Callable:
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}. Expected one of {sorted(BACKBONES)}.")
    return BACKBONES[name]


# (expansion, channels, repeats, stride) per stage; strides 2, 4, 8, 16, 32 with a stride-2 stem.
_MBV2_LITE = (
    (1, 16, 1, 1),
    (4, 24, 2, 2),
    (4, 32, 3, 2),
    (4, 64, 3, 2),
    (4, 96, 2, 1),
    (4, 160, 2, 2),
)


@register_backbone("mobilenet_v2_lite")
def mobilenet_v2_lite(x, width: float = 1.0, depth: float = 1.0, stem_stride: int = 2) -> list:
    """A slimmer MobileNetV2 (expansion 4, fewer repeats), ReLU6 throughout.

    Returns:
        Feature maps after each downsampling stage, finest first (the heads pick
        the strides they need: the classifier takes the last, a detector the last
        three, a segmenter the first and the last).
    """
    x = conv_bn_act(x, make_divisible(32 * width), 3, stem_stride, name="stem")
    features = []
    for s, (t, c, n, stride) in enumerate(_MBV2_LITE):
        repeats = max(1, round(n * depth))
        if stride == 2 and s > 0:
            features.append(x)
        for i in range(repeats):
            x = inverted_residual(x, make_divisible(c * width), t, stride if i == 0 else 1, name=f"stage{s}_block{i}")
    features.append(x)
    return features
