"""The one place that selects Keras 2 and imports TensorFlow.

TFMOT only wraps tf-keras (Keras 2) models, so ``TF_USE_LEGACY_KERAS=1`` must be
set before TensorFlow is first imported. Every module imports ``tf`` and ``keras``
from here; nothing else in the package imports ``tensorflow`` or ``tf_keras``.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ INFO lines drown the progress bar; users can still lower this.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

layers = keras.layers

__all__ = ["tf", "keras", "layers"]  # plus tfmot and keras_cv, loaded on first use


def __getattr__(name: str):
    # TFMOT and keras-cv take seconds to import; only the stages that need them pay.
    if name == "tfmot":
        import tensorflow_model_optimization as tfmot

        return tfmot
    if name == "keras_cv":
        import keras_cv

        return keras_cv
    raise AttributeError(name)
