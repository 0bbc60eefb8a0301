"""Backbones: functions from an input tensor to feature maps at strides 4, 8, 16 and 32.

Registered by name (timm's ``@register_model``), so classification, detection and
segmentation heads share any backbone and tests parametrise over the registry.
keras.applications backbones are built on the task's own input tensor and their
feature maps are taken by layer name, so their layers sit flat in the task's
functional graph: TFMOT refuses a Keras model nested inside another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline._keras import keras, layers
from pipeline.core.backbones import backbone_info
from pipeline.core.config import ModelConfig
from pipeline.models.blocks import conv_bn_act, inverted_residual, make_divisible


@dataclass(frozen=True)
class Features:
    """What a backbone gives the heads.

    Attributes:
        maps: feature maps at strides 4, 8, 16 and 32 (2, 4, 8 and 16 with
            ``model.stem_stride=1``), finest first.
        top: the backbone's last, wide 1×1 conv at stride 32 (keras.applications'
            ``Conv_1``, our ``head``), which the classifier pools. Part of the backbone,
            so a classifier's run transfers it whole: a new head is then one Dense
            layer, which few images can fit. Detection and segmentation heads read
            ``maps`` and leave it out of their graphs.
    """

    maps: list
    top: Any


BACKBONES: dict[str, Callable[[Any, ModelConfig], Features]] = {}


def register_backbone(name: str):
    def wrap(fn: Callable) -> Callable:
        backbone_info(name)  # every builder has its catalogue entry (normalization, weights)
        BACKBONES[name] = fn
        return fn

    return wrap


def build_backbone(inputs, cfg: ModelConfig) -> Features:
    """Build ``cfg.backbone`` on ``inputs``."""
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone {cfg.backbone!r}. Expected one of {sorted(BACKBONES)}.")
    return BACKBONES[cfg.backbone](inputs, cfg)


def backbone_layer_names(cfg: ModelConfig) -> frozenset[str]:
    """Names of the layers that make up ``cfg``'s backbone (what transfer learning loads
    and freezes), found by building the backbone alone; the layers a head adds differ."""
    inputs = keras.Input((cfg.input_size, cfg.input_size, cfg.channels))
    f = build_backbone(inputs, cfg)
    outs = [*f.maps, f.top]
    return frozenset(
        layer.name for layer in keras.Model(inputs, outs).layers if not isinstance(layer, layers.InputLayer)
    )


# === mobilenet_v2_lite (ours) ===

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
def mobilenet_v2_lite(x, cfg: ModelConfig) -> Features:
    """A slimmer MobileNetV2 (expansion 4, fewer repeats), ReLU6 throughout; the offline
    default. ``model.width``, ``model.depth`` and ``model.stem_stride`` apply."""
    width, depth = cfg.width, cfg.depth
    x = conv_bn_act(x, make_divisible(32 * width), 3, cfg.stem_stride, name="stem")
    maps = []
    for s, (t, c, n, stride) in enumerate(_MBV2_LITE):
        repeats = max(1, round(n * depth))
        if stride == 2 and s > 1:  # the end of each stage before a downsampling one
            maps.append(x)
        for i in range(repeats):
            x = inverted_residual(x, make_divisible(c * width), t, stride if i == 0 else 1, name=f"stage{s}_block{i}")
    maps.append(x)
    top = conv_bn_act(x, make_divisible(max(256, 512 * width)), 1, name="head")
    return Features(maps, top)


# === keras.applications ===

# Feature maps by layer name: the end of the last block at each stride.
_TAPS = {
    "mobilenet_v2": ("block_2_add", "block_5_add", "block_12_add", "block_16_project_BN"),
    "mobilenet_v3_small_minimalistic": (
        "expanded_conv/project/BatchNorm",
        "expanded_conv_2/Add",
        "expanded_conv_7/Add",
        "expanded_conv_10/Add",
    ),
    "mobilenet_v3_large_minimalistic": (
        "expanded_conv_2/Add",
        "expanded_conv_5/Add",
        "expanded_conv_11/Add",
        "expanded_conv_14/Add",
    ),
}


def _applications(x, cfg: ModelConfig, build: Callable) -> Features:
    base = build(input_tensor=x, input_shape=tuple(x.shape[1:]), include_top=False, weights=None, alpha=cfg.width)
    # keras.applications' BatchNorm momentum of 0.999 leaves the moving statistics near
    # their initial values for the first few thousand steps: from scratch they would
    # be wrong at inference (measured: a DeepLabV3+ peer predicted background only).
    # Pretrained statistics are worth keeping, so they move slower.
    momentum = 0.9 if cfg.weights == "none" else 0.99
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum
    return Features([base.get_layer(name).output for name in _TAPS[cfg.backbone]], top=base.output)


@register_backbone("mobilenet_v2")
def mobilenet_v2(x, cfg: ModelConfig) -> Features:
    """keras.applications MobileNetV2; ``model.width`` is its alpha."""
    return _applications(x, cfg, keras.applications.MobileNetV2)


@register_backbone("mobilenet_v3_small_minimalistic")
def mobilenet_v3_small_minimalistic(x, cfg: ModelConfig) -> Features:
    """keras.applications MobileNetV3-Small, minimalistic: ReLU, 3×3 kernels, no
    squeeze-excite and no hard-swish, so TFMOT wraps and XNNPACK runs every op."""
    return _applications(
        x, cfg, lambda **kw: keras.applications.MobileNetV3Small(minimalistic=True, include_preprocessing=False, **kw)
    )


@register_backbone("mobilenet_v3_large_minimalistic")
def mobilenet_v3_large_minimalistic(x, cfg: ModelConfig) -> Features:
    """keras.applications MobileNetV3-Large, minimalistic (see the small one)."""
    return _applications(
        x, cfg, lambda **kw: keras.applications.MobileNetV3Large(minimalistic=True, include_preprocessing=False, **kw)
    )
