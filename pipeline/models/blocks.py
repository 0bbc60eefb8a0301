"""Building blocks made only of layers TFMOT can prune and quantize.

Conv2D/DepthwiseConv2D + BatchNormalization + ReLU6 is the pattern that TFMOT folds
for QAT and that XNNPACK runs on its fast int8 paths. Hard-swish and squeeze-excite
are left out on purpose: a MobileNetV3 with them was measured with an int8 model
slower than its float one (docs/design.md).
"""

from __future__ import annotations

from pipeline._keras import layers


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` (never down by more than 10%)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_act(x, filters: int, kernel: int = 3, stride: int = 1, act: bool = True, name: str = ""):
    """Conv → BN → ReLU6."""
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x) if act else x


def dw_bn_act(x, kernel: int = 3, stride: int = 1, name: str = ""):
    """Depthwise conv → BN → ReLU6."""
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_dwbn")(x)
    return layers.ReLU(6.0, name=f"{name}_dwrelu6")(x)


def upsample_bilinear(x, size, name: str):
    """Bilinear ``UpSampling2D`` (RESIZE_BILINEAR: on XNNPACK, and TFMOT quantizes it).

    It computes in float32 whatever the global policy: under ``mixed_float16`` with
    XLA, the float16 resize's gradient (ResizeBilinearGrad) comes out float32 and XLA
    refuses the mixed graph ("mixed precision is disallowed"). The layers after it
    cast back to the policy's float16 themselves."""
    return layers.UpSampling2D(size, interpolation="bilinear", dtype="float32", name=name)(x)


def inverted_residual(x, filters: int, expansion: int, stride: int, name: str):
    """MobileNetV2 block: 1×1 expand → 3×3 depthwise → 1×1 linear project (+ skip)."""
    in_ch = x.shape[-1]
    y = conv_bn_act(x, in_ch * expansion, 1, name=f"{name}_expand") if expansion != 1 else x
    y = dw_bn_act(y, 3, stride, name=name)
    y = conv_bn_act(y, filters, 1, act=False, name=f"{name}_project")
    if stride == 1 and in_ch == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y
