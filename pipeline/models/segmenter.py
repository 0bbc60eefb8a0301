"""Semantic segmenter: DeepLabV3+-lite (ASPP-lite + two skip connections) on the shared backbone.

Built only from Conv2D, DepthwiseConv2D, BatchNormalization, ReLU6,
Concatenate, global pooling and bilinear UpSampling2D, so TFMOT prunes and
quantizes every layer and XNNPACK runs every op of the int8 model (no Lambda, no
hard-swish, no resize-nearest).
"""

from __future__ import annotations

from pipeline._keras import keras, layers
from pipeline.core.config import ModelConfig
from pipeline.models.backbones import build_backbone
from pipeline.models.blocks import conv_bn_act, dw_bn_act, make_divisible, upsample_bilinear


def aspp_lite(x, filters: int, name: str = "aspp"):
    """ASPP-lite: a 1×1 branch, a dilated depthwise-separable branch and an image-pooling
    branch, concatenated and projected. The pooled branch goes back to the map's size by
    a bilinear resize of a 1×1 map (a broadcast), because TFMOT cannot quantize a
    Multiply gate and XNNPACK does not take a resize-nearest."""
    h, w = int(x.shape[1]), int(x.shape[2])
    local = conv_bn_act(x, filters, 1, name=f"{name}_1x1")
    wide = layers.DepthwiseConv2D(3, padding="same", dilation_rate=2, use_bias=False, name=f"{name}_atrous_dw")(x)
    wide = layers.BatchNormalization(momentum=0.9, name=f"{name}_atrous_dwbn")(wide)
    wide = layers.ReLU(6.0, name=f"{name}_atrous_dwrelu6")(wide)
    wide = conv_bn_act(wide, filters, 1, name=f"{name}_atrous_pw")
    ctx = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    ctx = conv_bn_act(ctx, filters, 1, name=f"{name}_pool_pw")
    ctx = upsample_bilinear(ctx, (h, w), f"{name}_pool_up")
    y = layers.Concatenate(name=f"{name}_concat")([local, wide, ctx])
    return conv_bn_act(y, filters, 1, name=f"{name}_proj")


def _fuse(x, skip, filters: int, factor: int, name: str):
    """Upsample ``x`` bilinearly to the skip's stride, concatenate a 1×1 projection of
    the skip, and mix with a depthwise-separable conv."""
    if factor > 1:
        x = upsample_bilinear(x, factor, f"{name}_up")
    skip = conv_bn_act(skip, max(8, filters // 2), 1, name=f"{name}_skip")
    x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = dw_bn_act(x, 3, 1, name=name)
    return conv_bn_act(x, filters, 1, name=f"{name}_pw")


def build_segmenter(cfg: ModelConfig, num_classes: int) -> keras.Model:
    """Per-pixel class logits at the input resolution: ``(N, S, S, num_classes)``.

    The model ends in logits, not a softmax: XNNPACK has no int8 softmax, so a
    softmax would leave the largest tensor of the int8 model on the slow builtin
    kernels, and the class map (argmax) is the same. The last layers run in float32
    so mixed precision never rounds the logits.
    """
    # === Layers ===
    size = cfg.input_size
    inputs = keras.Input((size, size, cfg.channels), name="image")
    maps = build_backbone(inputs, cfg).maps
    fine, mid, coarse = maps[0], maps[1], maps[3]  # strides 4, 8, 32 (2, 4, 16 at stem 1)
    filters = make_divisible(96 * cfg.width)
    x = aspp_lite(coarse, filters)
    x = _fuse(x, mid, filters, mid.shape[1] // coarse.shape[1], name="dec_mid")
    x = _fuse(x, fine, filters, fine.shape[1] // mid.shape[1], name="dec_fine")
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="dropout")(x)
    x = layers.Conv2D(num_classes, 1, dtype="float32", name="classifier")(x)
    # Bilinear upsampling of logits (not of argmaxed classes) keeps boundaries smooth
    # and is the resize that XNNPACK and TFMOT both handle.
    outputs = layers.UpSampling2D(size // fine.shape[1], interpolation="bilinear", dtype="float32", name="logits")(x)
    # === Functional Model ===
    return keras.Model(inputs, outputs, name=f"{cfg.backbone}_segmenter")
