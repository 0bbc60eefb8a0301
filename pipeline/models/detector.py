"""A single-stage, anchor-free detector: backbone → light top-down FPN → one head
with a shared first layer and decoupled box / class second layers.

FCOS-style: each cell of the stride-8 map predicts class logits and four distances
to the box sides. The FPN fuses strides 32 and 16 into stride 8 (bilinear
upsampling + add), so one head sees every scale; a single level needs no
concatenation of levels, which in int8 means requantize ops XNNPACK does not take.

It is built only from Conv2D / DepthwiseConv2D / BatchNorm / ReLU6 / UpSampling2D /
Add / Reshape, so TFMOT prunes and quantizes all of it and XNNPACK runs all of it
in int8. Box distances (ReLU6, fused into the conv) and class scores are separate
outputs, so int8 gives each its own scale (docs/design.md: one shared tensor made
keras-cv YOLOv8's int8 scores nearly binary).
"""

from __future__ import annotations

import math

from pipeline._keras import keras, layers
from pipeline.core.config import ModelConfig
from pipeline.models.backbones import build_backbone
from pipeline.models.blocks import conv_bn_act, dw_bn_act, make_divisible, upsample_bilinear

PRIOR = 0.01  # initial foreground probability (focal-loss prior) so early training is stable


def build_detector(cfg: ModelConfig, num_classes: int) -> keras.Model:
    """Outputs ``boxes`` (B, N, 4) distances in [0, 6] units and ``scores`` (B, N, C) logits.

    N is the number of anchor points over all levels (:func:`pipeline.tasks.detection.boxes.anchor_points`).
    Decoding and the sigmoid are added at export (``Detection.serving``) and in the loss.
    """
    # === Layers ===
    inputs = keras.Input((cfg.input_size, cfg.input_size, cfg.channels), name="image")
    if cfg.stem_stride != 2:
        raise ValueError("the detector expects model.stem_stride=2 (features at strides 8, 16, 32)")
    c3, c4, c5 = build_backbone(inputs, cfg).maps[1:]
    dim = make_divisible(max(32, 96 * cfg.width))
    # Top-down FPN: 1×1 laterals, bilinear upsampling (RESIZE_BILINEAR is on XNNPACK,
    # nearest is not), add, then the head's depthwise-separable convs smooth the sum.
    p5 = conv_bn_act(c5, dim, 1, name="fpn_lat5")
    p4 = layers.Add(name="fpn_add4")([conv_bn_act(c4, dim, 1, name="fpn_lat4"), upsample_bilinear(p5, 2, "fpn_up5")])
    x = layers.Add(name="fpn_add3")([conv_bn_act(c3, dim, 1, name="fpn_lat3"), upsample_bilinear(p4, 2, "fpn_up4")])
    x = dw_bn_act(x, 3, name="head_0")
    x = conv_bn_act(x, dim, 1, name="head_0_pw")
    # The second layer is decoupled (YOLOX, YOLOv8): a good class score and a good box
    # edge want different features, and one shared layer makes them compete for the
    # same channels. One layer per branch, not two: at 320 px and width 0.75, two layers
    # at 128·w channels ran 10.2 ms at 1 thread (keras-cv's YOLOv8: 10.3), this 8.6 ms.
    towers = {
        branch: conv_bn_act(dw_bn_act(x, 3, name=f"tower_{branch}"), dim, 1, name=f"tower_{branch}_pw")
        for branch in ("box", "cls")
    }
    reg = layers.Conv2D(4, 1, bias_initializer=keras.initializers.Constant(1.0), name="head_box")(towers["box"])
    reg = layers.ReLU(6.0, name="head_box_relu6")(reg)
    cls = layers.Conv2D(
        num_classes,
        1,
        bias_initializer=keras.initializers.Constant(-math.log((1 - PRIOR) / PRIOR)),
        name="head_cls",
    )(towers["cls"])
    # float32 outputs: mixed precision never rounds what the loss and decoding read.
    out_boxes = layers.Reshape((-1, 4), dtype="float32", name="boxes")(reg)
    out_scores = layers.Reshape((-1, num_classes), dtype="float32", name="scores")(cls)
    # === Functional Model ===
    return keras.Model(inputs, [out_boxes, out_scores], name=f"{cfg.backbone}_detector")
