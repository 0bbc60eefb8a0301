"""What each backbone is, without building it: input normalization, the knobs it takes
and the published ImageNet weights for it.

TensorFlow-free, so the config can validate ``model.backbone`` and the runtime can
know a model's normalization without importing Keras.
"""

from __future__ import annotations

from dataclasses import dataclass

# keras.applications' own download locations; Keras caches the files under
# ~/.keras/models (or $KERAS_HOME/models), where keras.applications looks too.
KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

_MOBILENET_V3_HASHES = {  # tf_keras/src/applications/mobilenet_v3.py, the no-top files
    "large_minimalistic_224_1.0_float": "ec5221f64a2f6d1ef965a614bdae7973",
    "small_minimalistic_224_1.0_float": "cde8136e733e811080d9fcd8a252f7e4",
}


@dataclass(frozen=True)
class WeightsFile:
    """A published weights file: Keras' cache name, where it is downloaded from, its hash."""

    file_name: str
    origin: str
    file_hash: str | None
    trained_size: int


@dataclass(frozen=True)
class BackboneInfo:
    """One registered backbone, as data.

    Attributes:
        mean, std: the input normalization its weights expect, ``(pixel - mean) / std``.
            keras.applications backbones take [-1, 1]; ``(p - 128) / 128`` is that range
            with a uint8 quantization that is exact (scale 1/128, zero point 128),
            which ``(p - 127.5) / 127.5`` cannot be (its zero point would be 127.5).
        imagenet_widths: the ``model.width`` values ImageNet weights were published for.
        imagenet_sizes: the input sizes they were trained at (the closest is used).
        configurable_depth: whether ``model.depth`` and ``model.stem_stride`` apply.
    """

    name: str
    mean: float
    std: float
    imagenet_widths: tuple[float, ...] = ()
    imagenet_sizes: tuple[int, ...] = ()
    configurable_depth: bool = False

    def imagenet_file(self, width: float, size: int) -> WeightsFile:
        """The keras.applications weights file for this width and input size.

        Raises:
            ValueError: when no ImageNet weights were published for the width.
        """
        if not self.imagenet_widths:
            raise ValueError(f"{self.name!r} has no published ImageNet weights")
        if float(width) not in self.imagenet_widths:
            raise ValueError(
                f"no published ImageNet weights for model.backbone={self.name!r} at model.width={width:g} "
                f"(published: {', '.join(f'{w:g}' for w in self.imagenet_widths)})"
            )
        rows = min(self.imagenet_sizes, key=lambda s: (abs(s - size), -s))
        if self.name == "mobilenet_v2":
            name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(width)}_{rows}_no_top.h5"
            return WeightsFile(name, KERAS_APPLICATIONS_URL + "mobilenet_v2/" + name, None, rows)
        kind = "small" if "small" in self.name else "large"
        key = f"{kind}_minimalistic_224_{float(width)}_float"
        name = f"weights_mobilenet_v3_{key}_no_top_v2.h5"
        return WeightsFile(name, KERAS_APPLICATIONS_URL + "mobilenet_v3/" + name, _MOBILENET_V3_HASHES[key], 224)


_APPLICATIONS = dict(mean=128.0, std=128.0)

BACKBONE_INFO: dict[str, BackboneInfo] = {
    info.name: info
    for info in (
        # Ours: [0, 1] input, so a uint8 input tensor is the raw pixel (scale 1/255).
        BackboneInfo("mobilenet_v2_lite", mean=0.0, std=255.0, configurable_depth=True),
        BackboneInfo(
            "mobilenet_v2",
            **_APPLICATIONS,
            imagenet_widths=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
            imagenet_sizes=(96, 128, 160, 192, 224),
        ),
        BackboneInfo("mobilenet_v3_small_minimalistic", **_APPLICATIONS, imagenet_widths=(1.0,), imagenet_sizes=(224,)),
        BackboneInfo("mobilenet_v3_large_minimalistic", **_APPLICATIONS, imagenet_widths=(1.0,), imagenet_sizes=(224,)),
    )
}


def backbone_info(name: str) -> BackboneInfo:
    if name not in BACKBONE_INFO:
        raise ValueError(f"Unknown backbone {name!r}. Expected one of {sorted(BACKBONE_INFO)}.")
    return BACKBONE_INFO[name]
