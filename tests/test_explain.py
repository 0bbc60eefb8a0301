"""pipeline.explain: the helpers the teaching notebooks build their figures from."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config

from pipeline import explain
from pipeline._keras import keras, layers


@pytest.mark.parametrize("size", [7, 32, 33])
@pytest.mark.parametrize("kernel,stride,dilation", [(1, 1, 1), (3, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2), (7, 3, 1)])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_conv_output_size_matches_keras(size, kernel, stride, dilation, padding):
    if dilation > 1 and stride > 1:
        pytest.skip("Keras refuses strides > 1 with dilation > 1")
    conv = layers.Conv2D(1, kernel, strides=stride, padding=padding, dilation_rate=dilation)
    out = conv(np.zeros((1, size, size, 1), np.float32)).shape[1]
    assert explain.conv_output_size(size, kernel, stride, padding, dilation) == out


def test_conv_output_size_with_explicit_padding_and_bad_values():
    conv = keras.Sequential([layers.ZeroPadding2D(2), layers.Conv2D(1, 5, strides=2)])
    assert explain.conv_output_size(31, 5, 2, 2) == conv(np.zeros((1, 31, 31, 1), np.float32)).shape[1] == 16
    with pytest.raises(ValueError, match="larger than the padded input"):
        explain.conv_output_size(2, 5)
    with pytest.raises(ValueError, match=">= 1"):
        explain.conv_output_size(8, 3, stride=0)


@pytest.fixture(scope="module")
def classifier():
    from pipeline.stages.weights import rebuild

    return rebuild(tiny_config(), 3)


def test_stage_ends_are_backbone_maps_at_decreasing_resolution(classifier):
    names = explain.stage_ends(classifier)
    assert names[0] == "stem_relu6" and all(n.startswith("stage") for n in names[1:])
    maps = explain.feature_maps(classifier, names, np.zeros((2, 32, 32, 3), np.float32))
    sides = [maps[n].shape[1] for n in names]
    assert list(maps) == names and all(m.shape[0] == 2 for m in maps.values())
    assert sides == sorted(sides, reverse=True) and sides[0] == 16 and sides[-1] == 1


def test_feature_maps_equal_the_full_model_and_name_missing_layers(classifier):
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    maps = explain.feature_maps(classifier, ["scores"], x)
    np.testing.assert_allclose(maps["scores"], classifier.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no_such_layer"):
        explain.feature_maps(classifier, ["no_such_layer"], x)


def test_first_filters_and_their_display_range(classifier):
    k = explain.first_conv_kernels(classifier)
    assert k.shape[:3] == (3, 3, 3)
    tiles = explain.filters_as_images(k)
    assert tiles.shape == (k.shape[3], 3, 3, 3)
    assert tiles.min() >= 0 and tiles.max() <= 1
    # each filter is scaled on its own: its largest weight reaches 0 or 1
    np.testing.assert_allclose(np.maximum(tiles.max(axis=(1, 2, 3)), 1 - tiles.min(axis=(1, 2, 3))), 1.0)
    # zero weight sits at mid-grey
    z = np.zeros((3, 3, 3, 1), np.float32)
    z[0, 0, 0, 0] = 2.0
    assert explain.filters_as_images(z)[0, 1, 1, 0] == 0.5


def test_backbone_and_head_params_add_up(classifier):
    p = explain.split_params(classifier, tiny_config())
    assert p["backbone"] > 0 and p["head"] > 0
    assert p["backbone"] + p["head"] == classifier.count_params()


def test_pooling_matches_numpy_windows():
    x = np.random.default_rng(1).normal(size=(6, 8, 3)).astype(np.float32)
    windows = x.reshape(3, 2, 4, 2, 3)
    np.testing.assert_allclose(explain.pool(x, "max"), windows.max(axis=(1, 3)))
    np.testing.assert_allclose(explain.pool(x, "average"), windows.mean(axis=(1, 3)), rtol=1e-6)
    with pytest.raises(ValueError, match="Unknown pooling 'min'"):
        explain.pool(x, "min")


def test_max_pooling_absorbs_a_shift_inside_its_window():
    # Isolated peaks at even columns: a 1-cell shift moves each peak inside its 2x2 window.
    fmap = np.zeros((8, 16, 1), np.float32)
    fmap[::2, ::2] = np.arange(1, 33, dtype=np.float32).reshape(4, 8, 1)
    raw = explain.shift_sensitivity(fmap, 1)
    maxed = explain.shift_sensitivity(fmap, 1, "max")
    avg = explain.shift_sensitivity(fmap, 1, "average")
    assert raw["relative_change"] > 1.0 and raw["unchanged"] < 0.8
    assert maxed["relative_change"] < raw["relative_change"] / 2
    assert avg["relative_change"] < raw["relative_change"]
    assert explain.shift_sensitivity(fmap, 0, "max") == {"relative_change": 0.0, "unchanged": 1.0}
    with pytest.raises(ValueError, match="too narrow"):
        explain.shift_sensitivity(fmap, 16)


def test_translate_moves_content_and_keeps_shape():
    img = np.zeros((1, 10, 12, 1), np.uint8)
    img[0, 4, 3, 0] = 200
    moved = explain.translate(img, 2, 1)
    assert moved.shape == img.shape and moved[0, 5, 5, 0] == 200 and moved[0, 4, 3, 0] == 0


@pytest.mark.parametrize("lo,hi", [(-1.0, 3.0), (0.0, 6.0), (0.2, 0.9), (-4.0, -1.0)])
def test_affine_int8_round_trip_is_within_half_a_step_and_zero_is_exact(lo, hi):
    scale, zp = explain.affine_qparams(lo, hi)
    x = np.linspace(lo, hi, 1001).astype(np.float32)
    q = explain.quantize(x, scale, zp)
    assert q.dtype == np.int8
    assert np.abs(explain.dequantize(q, scale, zp) - x).max() <= scale / 2 + 1e-6
    assert explain.dequantize(explain.quantize(np.zeros(1), scale, zp), scale, zp)[0] == 0.0
    assert len(np.unique(q)) <= 256


def test_symmetric_weights_have_zero_point_zero_and_saturate():
    scale, zp = explain.affine_qparams(-0.5, 0.25, symmetric=True)
    assert zp == 0 and scale == pytest.approx(0.5 / 127)
    assert explain.quantize(np.array([10.0, -10.0]), scale, zp).tolist() == [127, -128]


def test_pruning_schedule_ramps_from_zero_to_the_level_that_meets_the_target(classifier):
    from pipeline.stages.optimize import pruning_schedule

    cfg = tiny_config("prune.target_sparsity=0.5", "prune.epochs=2", "prune.schedule_end=0.5")
    sched = pruning_schedule(classifier, cfg, n_train=160)  # batch 16 → 10 steps/epoch → ends at step 10
    levels = [float(sched(step)[1]) for step in range(0, 11)]
    assert levels[0] == 0.0 and levels == sorted(levels)
    # small layers stay dense, so the pruned ones go a little past the overall target
    assert 0.5 <= levels[-1] <= 0.95 and float(sched(100)[1]) == pytest.approx(levels[-1])
