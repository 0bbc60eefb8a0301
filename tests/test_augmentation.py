"""Geometric augmentation as the config says, per task: ``data.flip`` (never with "none":
digits, text and signs change meaning when mirrored), ``data.rotation``, ``data.shear``
and ``data.zoom``, with masks and boxes kept on their pixels."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.augment import Affine, Mix

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

    return _augmenter(Affine(flip))(images, training=True)


def _detection(images, flip):
    from pipeline.tasks.detection.task import _augmenter

    boxes = np.tile(np.array([[[2.0, 2.0, 12.0, 12.0]]], np.float32), (N, 1, 1))
    classes = np.zeros((N, 1), np.float32)
    out = _augmenter(S, Affine(flip, zoom=(0.75, 1.3)))(
        {"images": images, "bounding_boxes": {"boxes": boxes, "classes": classes}}, training=True
    )
    return out["images"]


def _segmentation(images, flip):
    from pipeline._keras import tf
    from pipeline.tasks.segmentation.pipeline import augment_pair

    masks = np.zeros((N, S, S), np.uint8)
    return augment_pair(tf.constant(images), tf.constant(masks), Affine(flip), photometric=False)[0]


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


# === Rotation, shear and zoom (data.rotation, data.shear, data.zoom) ===


def _bar(n: int = N, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A horizontal bar of class 2 across the middle, its class written in the red channel."""
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, size // 2 - 3 : size // 2 + 3, 8:-8] = 2
    images = np.zeros((n, size, size, 3), np.float32)
    images[..., 0] = masks * 100.0
    return images, masks


def _tilt(mask: np.ndarray) -> float:
    """The angle (degrees, 0 = horizontal) of the principal axis of a mask's pixels."""
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.stack([xs, ys]).astype(float))
    vals, vecs = np.linalg.eigh(cov)
    vx, vy = vecs[:, -1]
    return float(np.degrees(np.arctan2(abs(vy), abs(vx))))


def test_segmentation_rotates_shears_and_zooms_image_and_mask_together():
    from pipeline._keras import tf
    from pipeline.tasks.segmentation.pipeline import augment_pair

    images, masks = _bar()
    plain = Affine("none", zoom=(1.0, 1.0))
    x, y = (a.numpy() for a in augment_pair(tf.constant(images), tf.constant(masks), plain, photometric=False))
    np.testing.assert_array_equal(y, masks)  # the identity map is exact
    np.testing.assert_allclose(x, images, atol=1e-3)

    x, y = augment_pair(tf.constant(images), tf.constant(masks), Affine("none", 40.0, 10.0), photometric=False)
    x, y = x.numpy(), y.numpy()
    tilts = [_tilt(m == 2) for m in y if (m == 2).any()]
    assert max(tilts) > 15 and min(tilts) < 15  # rotated by up to 40 degrees, some little
    assert set(np.unique(y)) <= {0, 2, 255}  # nearest: no blended ids
    known = y != 255
    # The mask stays on its pixels: only the bar's edges, blended by the bilinear image
    # and not by the nearest mask, disagree (0.980 ± 0.001 over 60 seeds' draws).
    assert (np.round(x[..., 0] / 100)[known] == y[known]).mean() > 0.97
    assert (~known).any() and (x[~known] == 0).mean() > 0.9  # the corners rotated in: black, label unknown

    flat_x, flat_y = np.full_like(images, 200.0), np.ones_like(masks)
    x, y = augment_pair(tf.constant(flat_x), tf.constant(flat_y), Affine("none", zoom=(1.5, 2.0)), photometric=False)
    assert np.asarray(x).min() > 199.9 and (np.asarray(y) == 1).all()  # zoomed in: every sample inside the image

    _, y = augment_pair(tf.constant(images), tf.constant(masks), Affine("none", zoom=(0.5, 0.5)), photometric=False)
    area = (y.numpy() == 2).sum(axis=(1, 2)) / (masks == 2).sum(axis=(1, 2))
    np.testing.assert_allclose(area, 0.25, atol=0.05)  # half the size: a quarter of the pixels


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_keras_cv_tasks_rotate_as_data_rotation_says(task):
    images, _ = _bar()
    run = _classification_affine if task == "classification" else _detection_affine
    assert (
        max(_tilt(m[..., 0] > 0.5 * m[..., 0].max()) for m in np.asarray(run(images, Affine("none", zoom=(1.0, 1.0)))))
        < 2
    )
    assert (
        max(
            _tilt(m[..., 0] > 0.5 * m[..., 0].max())
            for m in np.asarray(run(images, Affine("none", 40.0, zoom=(1.0, 1.0))))
        )
        > 15
    )


def _classification_affine(images, affine):
    from pipeline.tasks.classification.task import _augmenter

    return _augmenter(affine)(images, training=True)


def test_detection_boxes_follow_rotated_pixels():
    from pipeline.tasks.detection.task import _augmenter

    images, masks = _bar()
    ys, xs = np.nonzero(masks[0])
    boxes = np.tile(np.array([[[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]], np.float32), (N, 1, 1))
    out = _augmenter(64, Affine("none", 30.0, 10.0, zoom=(1.0, 1.0)))(
        {"images": images, "bounding_boxes": {"boxes": boxes, "classes": np.zeros((N, 1), np.float32)}},
        training=True,
    )
    from pipeline._keras import keras_cv

    dense = keras_cv.bounding_box.to_dense(out["bounding_boxes"], max_boxes=1)
    for img, box in zip(np.asarray(out["images"]), np.asarray(dense["boxes"])):
        ys, xs = np.nonzero(img[..., 0] > 0.5 * img[..., 0].max())  # brightness and contrast jitter
        x1, y1, x2, y2 = box[0]
        assert xs.min() >= x1 - 2 and xs.max() <= x2 + 2 and ys.min() >= y1 - 2 and ys.max() <= y2 + 2
        assert (x2 - x1) * (y2 - y1) < 1.6 * (np.ptp(xs) + 3) * (np.ptp(ys) + 3)  # and tight around it


def _detection_affine(images, affine):
    from pipeline.tasks.detection.task import _augmenter

    boxes = np.tile(np.array([[[8.0, 29.0, 56.0, 35.0]]], np.float32), (N, 1, 1))
    out = _augmenter(64, affine)(
        {"images": images, "bounding_boxes": {"boxes": boxes, "classes": np.zeros((N, 1), np.float32)}}, training=True
    )
    return out["images"]


@pytest.mark.parametrize(
    "item, message",
    [("data.zoom=1.5,1.0", "low <= high"), ("data.rotation=200", "above the maximum"), ("data.zoom=0.1,1", "below")],
)
def test_bad_augmentation_settings_are_config_errors(item, message):
    from pipeline.core import config

    with pytest.raises(config.ConfigError, match=message):
        config.load(None, [item])


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_batch_mixing_outside_segmentation_is_a_config_error(task):
    from pipeline.core import config

    for key in ("mosaic", "copy_paste"):
        with pytest.raises(config.ConfigError, match=f"data.{key}: segmentation only"):
            config.load(None, [f"data.{key}=0.5"], task=task)


def test_the_config_reaches_segmentation_training_batches():
    """``data.zoom`` (and the rest, through the same object) reaches ``Task.datasets``: at
    half size every training mask holds a quarter of its objects' pixels, the rest of
    the window ignored."""
    from pipeline.core import config
    from pipeline.core.images import InputSpec
    from pipeline.tasks import get_task

    task = get_task("segmentation")
    sets = ["data.synthetic_samples=32", "model.input_size=64", "train.batch_size=8", "data.flip=none"]
    cfg = config.load(None, [*sets, "data.zoom=0.5,0.5"], task="segmentation")
    data = task.load_data(cfg)
    train, _ = task.datasets(data, cfg, InputSpec(64))
    masks = np.concatenate([np.asarray(y) for _, y in train])
    raw = np.asarray(data.train.masks)
    ratio = ((masks > 0) & (masks < 255)).sum() / len(masks) / ((raw > 0) & (raw < 255)).sum() * len(raw)
    assert 0.2 < ratio < 0.3
    assert ((masks == 255).mean(axis=(1, 2)) > 0.7).all()  # three quarters of each window lie outside


def test_flip_off_in_yaml_reads_as_none(tmp_path):
    from pipeline.core import config

    (tmp_path / "c.yaml").write_text("data:\n  flip: off\n")  # YAML 1.1 reads off as false
    assert config.load(tmp_path / "c.yaml").data.flip == "none"


def _sources(n: int = 4, size: int = 64):
    """``n`` flat images ``10 + 50·i`` whose masks are class ``i + 1`` on their left half
    (class 0 on the right, 255 in the top rows): whose pixel each output pixel is."""
    images = np.broadcast_to((10.0 + 50.0 * np.arange(n))[:, None, None, None], (n, size, size, 3)).astype(np.float32)
    masks = np.zeros((n, size, size), np.int32)
    masks[:, :, : size // 2] = (np.arange(n) + 1)[:, None, None]
    masks[:, :4] = 255
    return images, masks


def test_mosaic_makes_each_sample_four_quarters_of_the_batch_pixel_for_pixel():
    from pipeline.tasks.segmentation.pipeline import mix_batch

    images, masks = _sources()
    out, m = (np.asarray(t) for t in mix_batch(images, masks, Mix(mosaic=1.0)))
    source = np.rint((out[..., 0] - 10) / 50).astype(int)  # (n, S, S): whose image each pixel is
    assert np.allclose(out[..., 0], 10 + 50 * source) and (out == out[..., :1]).all()
    # the mask comes from the same sample as the image, at the same place
    assert (m == np.take_along_axis(masks, source, 0)).all()
    for j in range(4):
        s = source[j]
        col, row = int(np.argmax(s[0] != j)), int(np.argmax(s[:, 0] != j))  # the cut
        assert 16 <= col <= 48 and 16 <= row <= 48
        quarters = [s[:row, :col], s[:row, col:], s[row:, :col], s[row:, col:]]
        assert [np.unique(q).tolist() for q in quarters] == [[j], [(j + 1) % 4], [(j + 2) % 4], [(j + 3) % 4]]


@pytest.mark.parametrize("mix", [{"mosaic": 0.5}, {"copy_paste": 0.5}])
def test_each_sample_is_mixed_on_its_own_draw(mix):
    """At a chance of 0.5, about half the samples of a batch are mixed, not all or none."""
    from pipeline.tasks.segmentation.pipeline import mix_batch

    images, masks = _sources(64, 32)
    masks[:, :, 16:] = 0  # the right half background in every sample
    masks[:, :, 24:] = np.arange(64)[:, None, None] % 2 + 1  # ...but a strip that copy-paste can bring
    _, m = mix_batch(images, masks, Mix(**mix))
    mixed = (np.asarray(m) != masks).any(axis=(1, 2))
    assert 0.25 < mixed.mean() < 0.75


def test_mix_settings_come_from_their_own_keys():
    from pipeline.core import config

    d = config.load(None, ["data.mosaic=0.25", "data.copy_paste=0.75"], task="segmentation").data
    assert Mix.of(d) == Mix(mosaic=0.25, copy_paste=0.75)


def test_copy_paste_pastes_another_samples_objects_and_nothing_else():
    from pipeline.tasks.segmentation.pipeline import mix_batch

    images, masks = _sources()
    masks[1, :, :16] = 0  # sample 1's object on a quarter only: it shows what is pasted onto 2
    out, m = (np.asarray(t) for t in mix_batch(images, masks, Mix(copy_paste=1.0)))
    other = np.roll(masks, 1, 0)
    pasted = (other != 0) & (other != 255)
    assert (m[pasted] == other[pasted]).all() and (m[~pasted] == masks[~pasted]).all()
    assert (out[pasted] == np.roll(images, 1, 0)[pasted]).all() and (out[~pasted] == images[~pasted]).all()
    assert (m[2, 4:, :16] == 3).all() and (m[2, 4:, 16:32] == 2).all() and (m[2, :4] == 255).all()
    unchanged = (np.asarray(t) for t in mix_batch(images, masks, Mix()))
    assert all((a == b).all() for a, b in zip(unchanged, (images, masks)))


@pytest.mark.parametrize("mosaic, mixed", [(0.0, False), (1.0, True)])
def test_data_mosaic_reaches_segmentation_training_batches(mosaic, mixed):
    """With the affine map the identity (zoom 1, no flip), a training mask is one of the
    set's masks unless ``data.mosaic`` mixed it."""
    from pipeline.core import config
    from pipeline.core.images import InputSpec
    from pipeline.tasks import get_task

    task = get_task("segmentation")
    sets = ["data.synthetic_samples=24", "model.input_size=64", "train.batch_size=8", "data.flip=none"]
    cfg = config.load(None, [*sets, "data.zoom=1,1", f"data.mosaic={mosaic}"], task="segmentation")
    data = task.load_data(cfg)
    train, _ = task.datasets(data, cfg, InputSpec(64))
    raw = {np.asarray(r).tobytes() for r in np.asarray(data.train.masks).astype(np.int32)}
    masks = np.concatenate([np.asarray(y) for _, y in train])
    assert np.mean([y.tobytes() in raw for y in masks]) == (0.0 if mixed else 1.0)


def _seg_case(affine: Affine, photometric: bool = False, mix=None):
    def run(x):
        from pipeline._keras import tf
        from pipeline.tasks.segmentation.pipeline import augment_pair

        masks = tf.cast(x[..., 0] > 128, tf.uint8)
        return augment_pair(x, masks, affine, photometric=photometric, mix=mix)[0]

    return run


def _keras_cv_case(layer: str, **kw):
    def run(x):
        from pipeline._keras import keras_cv
        from pipeline.data.augment import on_generator

        made = getattr(keras_cv.layers, layer)(value_range=(0, 255), dtype="float32", **kw)
        return on_generator([made])[0](x, training=True)

    return run


_DRAW_CASES = {
    "seg-affine": _seg_case(Affine("none", 20.0, 10.0, (0.8, 1.3))),
    "seg-photometric": _seg_case(Affine("none", zoom=(1.0, 1.0)), photometric=True),
    "seg-mosaic": _seg_case(Affine("none", zoom=(1.0, 1.0)), mix=Mix(mosaic=1.0)),
    "contrast": _keras_cv_case("RandomContrast", factor=0.3),
    "brightness": _keras_cv_case("RandomBrightness", factor=0.2),
}


@pytest.mark.parametrize("case", list(_DRAW_CASES))
def test_each_epoch_draws_new_transforms(case):
    """Keras makes a new dataset iterator every epoch. Draws with the legacy
    ``tf.random.uniform`` restart with each one, so under a seed every epoch would repeat
    the first epoch's transforms; drawn from the global generator, they move on (and a
    seed still gives the same sequence)."""
    from pipeline._keras import tf
    from pipeline.data.stream import augmented
    from pipeline.stages.fit import seed_everything

    images = np.random.default_rng(0).uniform(0, 255, (8, S, S, 3)).astype(np.float32)  # all different
    fn = _DRAW_CASES[case]

    def epochs(seed: int) -> list[np.ndarray]:
        seed_everything(seed)
        ds = augmented(tf.data.Dataset.from_tensors(tf.constant(images)), fn)
        return [next(iter(ds)).numpy() for _ in range(2)]

    first, second = epochs(0)
    assert not np.allclose(first, second), "the second epoch repeated the first one's transforms"
    again = epochs(0)
    np.testing.assert_array_equal(first, again[0])
    np.testing.assert_array_equal(second, again[1])


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_keras_cv_augmenters_draw_every_strength_from_the_generator(task):
    """Shear, zoom, contrast and brightness strengths come from ``on_generator``'s
    sampler, never keras-cv's legacy ``UniformFactorSampler`` (repeats every epoch)."""
    from pipeline._keras import keras_cv
    from pipeline.data.augment import GeneratorUniform

    if task == "classification":
        from pipeline.tasks.classification.task import _augmenter

        model = _augmenter(Affine("horizontal", 10.0, 10.0))
    else:
        from pipeline.tasks.detection.task import _augmenter

        model = _augmenter(S, Affine("horizontal", 10.0, 10.0, (0.75, 1.3)))
    samplers = [v for layer in model.layers for v in vars(layer).values()]
    assert not [v for v in samplers if isinstance(v, keras_cv.core.UniformFactorSampler)]
    assert sum(isinstance(v, GeneratorUniform) for v in samplers) >= (2 if task == "classification" else 4)
