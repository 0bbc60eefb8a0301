"""``data.flip``: each task's augmentation mirrors as the config says, and never with "none"
(digits, text and signs change meaning when mirrored)."""

from __future__ import annotations

import numpy as np
import pytest

N, S = 48, 32


def _ramp(axis: int) -> np.ndarray:
    """N images bright at the left (axis 2) or the top (axis 1), dark at the other side."""
    ramp = np.linspace(250.0, 5.0, S, dtype=np.float32)
    shape = [1, 1, 1, 1]
    shape[axis] = S
    return np.broadcast_to(ramp.reshape(shape), (N, S, S, 3)).copy()


def _reversed(images: np.ndarray, axis: int) -> np.ndarray:
    """Per image: is the far side (right or bottom) now the brighter one?"""
    images = np.moveaxis(np.asarray(images, np.float32), axis, 1)
    q = S // 4
    return images[:, -q:].mean(axis=(1, 2, 3)) > images[:, :q].mean(axis=(1, 2, 3)) + 5


def _classification(images, flip):
    from pipeline.tasks.classification.task import _augmenter

    return _augmenter(flip)(images, training=True)


def _detection(images, flip):
    from pipeline.tasks.detection.task import _augmenter

    boxes = np.tile(np.array([[[2.0, 2.0, 12.0, 12.0]]], np.float32), (N, 1, 1))
    classes = np.zeros((N, 1), np.float32)
    out = _augmenter(S, flip)({"images": images, "bounding_boxes": {"boxes": boxes, "classes": classes}}, training=True)
    return out["images"]


def _segmentation(images, flip):
    from pipeline._keras import tf
    from pipeline.tasks.segmentation.pipeline import augment_pair

    masks = np.zeros((N, S, S), np.uint8)
    return augment_pair(tf.constant(images), tf.constant(masks), photometric=False, flip=flip)[0]


@pytest.mark.parametrize("augment", [_classification, _detection, _segmentation], ids=lambda f: f.__name__[1:])
def test_flip_none_never_mirrors_and_horizontal_does(augment):
    images = _ramp(axis=2)
    assert not _reversed(augment(images, "none"), 2).any()
    assert _reversed(augment(images, "horizontal"), 2).sum() >= N // 8  # about half, allowing for zoom and crop


def test_segmentation_flips_vertically_on_its_own_or_with_horizontal():
    rows, cols = _ramp(axis=1), _ramp(axis=2)
    assert _reversed(_segmentation(rows, "vertical"), 1).sum() >= N // 8
    assert not _reversed(_segmentation(cols, "vertical"), 2).any()  # vertical only: left stays left
    assert not _reversed(_segmentation(rows, "horizontal"), 1).any()
    assert _reversed(_segmentation(rows, "horizontal_and_vertical"), 1).sum() >= N // 8
    assert _reversed(_segmentation(cols, "horizontal_and_vertical"), 2).sum() >= N // 8


def test_an_unknown_flip_mode_is_a_config_error():
    from pipeline.core import config

    with pytest.raises(config.ConfigError, match="data.flip"):
        config.load(None, ["data.flip=diagonal"])
