"""Geometric augmentation settings shared by the three tasks: ``data.flip``,
``data.rotation``, ``data.shear`` and ``data.zoom``.

Classification and detection run them as keras-cv layers (which move boxes with the
pixels); segmentation warps image and mask through one affine map per sample
(:mod:`pipeline.tasks.segmentation.pipeline`), nearest-neighbour for the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.core.config import DataConfig

_DATA = DataConfig()  # the config's defaults are the only ones: Affine() and Mix() take them


def uniform(shape, lo: float = 0.0, hi: float = 1.0, dtype="float32"):
    """Uniform draws for augmentation, from TensorFlow's global generator (seeded by
    ``seed_everything``). The legacy ``tf.random.uniform`` in a dataset function restarts
    its sequence with every new iterator, and Keras makes one per epoch, so every epoch
    would draw the same transforms; the generator's state moves on instead."""
    from pipeline._keras import tf

    return tf.random.get_global_generator().uniform(shape, lo, hi, dtype=dtype)


class GeneratorUniform:
    """A keras-cv factor sampler (``keras_cv.core.FactorSampler``'s interface) that draws
    through :func:`uniform`; keras-cv's own ``UniformFactorSampler`` draws with the
    legacy op and would repeat every epoch's strengths."""

    def __init__(self, lower: float, upper: float):
        self.lower, self.upper = lower, upper

    def __call__(self, shape=(), dtype="float32"):
        return uniform(shape, self.lower, self.upper, dtype)

    def get_config(self) -> dict:
        return {"lower": self.lower, "upper": self.upper}


def on_generator(layers: list) -> list:
    """``layers`` (keras-cv augmentation layers) with every ``UniformFactorSampler``
    strength (contrast, brightness, shear, ``JitteredResize``'s scale) swapped for a
    :class:`GeneratorUniform` of the same range; layers already swapped stay as they
    are. Their other draws already come from the global generator."""
    from pipeline._keras import keras_cv

    for layer in layers:
        for name, value in list(vars(layer).items()):
            if isinstance(value, keras_cv.core.UniformFactorSampler):
                setattr(layer, name, GeneratorUniform(value.lower, value.upper))
    return layers


@dataclass(frozen=True)
class Affine:
    """What the geometric augmentation may do to a sample.

    Attributes:
        flip: keras-cv ``RandomFlip``'s modes, or ``"none"`` (digits, text, signs).
        rotation: ± degrees, uniform.
        shear: ± degrees of horizontal shear, uniform. Segmentation shears about the
            image's centre; keras-cv's ``RandomShear`` (classification, detection) about
            its top-left corner, so there the bottom rows move furthest.
        zoom: input size over window size; below 1 zooms out, padding. Segmentation
            draws it log-uniform, detection's ``JitteredResize`` uniform.
    """

    flip: str = _DATA.flip
    rotation: float = _DATA.rotation
    shear: float = _DATA.shear
    zoom: tuple[float, float] = tuple(_DATA.zoom)

    @classmethod
    def of(cls, d) -> Affine:
        """From a ``DataConfig``."""
        return cls(d.flip, d.rotation, d.shear, tuple(d.zoom))

    def keras_cv_layers(self, bounding_box_format: str | None = None) -> list:
        """keras-cv layers for the flip, rotation and shear (the zoom is the task's own:
        detection's ``JitteredResize``). Filled with black, never by reflection, which
        would show mirrored objects that no box or label covers."""
        from pipeline._keras import keras_cv

        # float32 whatever the global policy: augmentation is input work, not the model's.
        kw = {"dtype": "float32", **({"bounding_box_format": bounding_box_format} if bounding_box_format else {})}
        out = []
        if self.flip != "none":
            out.append(keras_cv.layers.RandomFlip(self.flip, **kw))
        if self.rotation:
            out.append(keras_cv.layers.RandomRotation(self.rotation / 360.0, fill_mode="constant", **kw))
        if self.shear:
            k = math.tan(math.radians(self.shear))
            out.append(keras_cv.layers.RandomShear(x_factor=k, fill_mode="constant", **kw))
        return on_generator(out)


@dataclass(frozen=True)
class Mix:
    """Batch mixing for segmentation (``data.mosaic``, ``data.copy_paste``): the chance
    per sample of becoming a mosaic of four, and of having another sample's objects
    pasted over it."""

    mosaic: float = _DATA.mosaic
    copy_paste: float = _DATA.copy_paste

    @classmethod
    def of(cls, d) -> Mix:
        """From a ``DataConfig``."""
        return cls(d.mosaic, d.copy_paste)
