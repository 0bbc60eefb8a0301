"""Transfer learning: model.weights (a .h5 file, a run folder, imagenet) and the frozen phase."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import tiny_config

from pipeline._keras import keras, tf


def _applications_file(tmp_path, channels: int = 3):
    """A keras.applications MobileNetV2 (alpha 0.35, no top) with seeded random weights, saved."""
    keras.utils.set_random_seed(1)
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    rng = np.random.default_rng(1)
    base.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in base.get_weights()])
    path = tmp_path / "mobilenet_v2_035_no_top.h5"
    base.save_weights(str(path))
    return base, path


def test_weights_file_loads_the_backbone_by_name_and_leaves_the_head_new(tmp_path):
    from pipeline.models.weights import load_pretrained
    from pipeline.tasks import get_task

    base, path = _applications_file(tmp_path)
    cfg = tiny_config("model.backbone=mobilenet_v2", "model.depth=1.0", "model.width=0.35", f"model.weights={path}")
    model = get_task("classification").build_model(cfg, 3)
    head_before = [w.copy() for w in model.get_layer("logits").get_weights()]
    summary = load_pretrained(model, cfg)
    for layer in (x for x in base.layers if x.weights):
        for got, want in zip(model.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(model.get_layer("logits").get_weights(), head_before):
        np.testing.assert_array_equal(got, want)
    assert summary["loaded_layers"] == sum(1 for layer in base.layers if layer.weights)
    assert summary["loaded_params"] == base.count_params()
    assert "logits" in summary["new_layers"] and not summary["backbone_layers_not_loaded"]


def test_a_run_of_the_same_classes_seeds_the_head_too_and_other_classes_get_a_new_one(tmp_path):
    """A segmenter pretrained on a large set seeds the user's segmenter whole (decoder
    and classifier) when its run recorded the same class names; with other names, as
    many or not, or from a bare weights file, only the backbone loads."""
    import json

    from pipeline.models.backbones import backbone_layer_names
    from pipeline.models.weights import load_pretrained
    from pipeline.tasks import get_task

    task = get_task("segmentation")
    keras.utils.set_random_seed(2)
    source = task.build_model(tiny_config(task="segmentation"), 4)
    rng = np.random.default_rng(2)
    source.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in source.get_weights()])
    (tmp_path / "run" / "models").mkdir(parents=True)
    path = tmp_path / "run" / "models" / "float.h5"
    source.save_weights(str(path))
    names = ["background", "a", "b", "c"]
    train = {"stage": "train", "status": "ok", "results": {"class_names": names}}
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"run": "run", "stages": [train]}))
    cfg = tiny_config(f"model.weights={tmp_path / 'run'}", task="segmentation")
    backbone = backbone_layer_names(cfg.model)
    head = [x.name for x in source.layers if x.weights and x.name not in backbone]

    same = task.build_model(cfg, 4)
    summary = load_pretrained(same, cfg, names)
    for layer in (x for x in source.layers if x.weights):
        for got, want in zip(same.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(got, want, err_msg=layer.name)
    assert summary["new_layers"] == [] and summary["head_layers_loaded"] == head and "classifier" in head
    assert summary["loaded_params"] + summary["head_params_loaded"] == source.count_params()

    for classes in (["background", "x", "y", "z"], [*names, "d"], None):  # other names, count, or unknown
        other = task.build_model(cfg, len(classes or names))
        before = {n: [w.copy() for w in other.get_layer(n).get_weights()] for n in head}
        summary = load_pretrained(other, cfg, classes)
        assert summary["head_layers_loaded"] == [] and summary["new_layers"] == head, classes
        for n in head:
            for got, want in zip(other.get_layer(n).get_weights(), before[n]):
                np.testing.assert_array_equal(got, want, err_msg=n)


def test_grayscale_model_sums_the_rgb_stem_kernel(tmp_path, caplog):
    from pipeline.models.weights import load_pretrained
    from pipeline.tasks import get_task

    base, path = _applications_file(tmp_path)
    cfg = tiny_config(
        "model.backbone=mobilenet_v2",
        "model.depth=1.0",
        "model.width=0.35",
        "model.channels=1",
        f"model.weights={path}",
    )
    model = get_task("classification").build_model(cfg, 3)
    with caplog.at_level("INFO"):
        load_pretrained(model, cfg)
    rgb = base.get_layer("Conv1").get_weights()[0]
    np.testing.assert_allclose(model.get_layer("Conv1").get_weights()[0], rgb.sum(2, keepdims=True), rtol=1e-6)
    assert "summed over its input channels" in caplog.text


def test_a_backbone_shape_mismatch_names_the_layer_and_both_shapes(tmp_path):
    from pipeline.models.weights import WeightsError, load_pretrained
    from pipeline.tasks import get_task

    _, path = _applications_file(tmp_path)
    cfg = tiny_config("model.backbone=mobilenet_v2", "model.depth=1.0", "model.width=0.5", f"model.weights={path}")
    model = get_task("classification").build_model(cfg, 3)
    with pytest.raises(
        WeightsError, match=r"layer '\w+' weight \d has shape \(.*\) in the file but \(.*\) in the model"
    ):
        load_pretrained(model, cfg)


def test_weights_of_another_backbone_are_an_error_not_a_silent_no_op(tmp_path):
    from pipeline.models.weights import WeightsError, load_pretrained
    from pipeline.tasks import get_task

    _, path = _applications_file(tmp_path)
    cfg = tiny_config(f"model.weights={path}")  # mobilenet_v2_lite: no layer names in common
    model = get_task("classification").build_model(cfg, 3)
    with pytest.raises(WeightsError, match="no layer of the mobilenet_v2_lite backbone matches"):
        load_pretrained(model, cfg)


def test_missing_weights_path_and_run_folder_without_a_model_are_clear_errors(tmp_path):
    from pipeline.models.weights import WeightsError, resolve

    with pytest.raises(WeightsError, match="nowhere.h5: no such file or folder"):
        resolve(tiny_config(f"model.weights={tmp_path / 'nowhere.h5'}"))
    with pytest.raises(WeightsError, match="not a trained edgepipe run"):
        resolve(tiny_config(f"model.weights={tmp_path}"))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5")
    from pipeline.models.weights import read_weights_file

    with pytest.raises(WeightsError, match="garbage.h5: not a readable HDF5 weights file"):
        read_weights_file(garbage)


def test_imagenet_without_a_network_fails_fast_with_the_file_and_the_alternative(tmp_path, monkeypatch):
    from pipeline.core import backbones as catalog
    from pipeline.models.weights import WeightsError, resolve

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("no_proxy", "*")  # a CI's proxy would make the refusal a 15 s wait
    # Port 9 (discard) on the loopback: refused at once, like a machine with no network.
    monkeypatch.setattr(catalog, "KERAS_APPLICATIONS_URL", "http://127.0.0.1:9/")
    cfg = tiny_config(
        "model.backbone=mobilenet_v2",
        "model.depth=1.0",
        "model.width=0.5",
        "model.input_size=128",
        "model.weights=imagenet",
    )
    t0 = time.monotonic()
    with pytest.raises(WeightsError) as e:
        resolve(cfg)
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    for part in (
        "model.backbone=mobilenet_v2",
        "model.width=0.5",
        "model.input_size=128",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_128_no_top.h5",
        str(tmp_path / "keras" / "models"),
        "model.weights=PATH",
    ):
        assert part in msg, (part, msg)


def test_imagenet_is_refused_where_no_weights_were_published():
    from pipeline.core.config import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"no published ImageNet weights for model.backbone='mobilenet_v3_small_minimalistic' at model.width=0.5",
    ):
        tiny_config(
            "model.backbone=mobilenet_v3_small_minimalistic",
            "model.depth=1.0",
            "model.width=0.5",
            "model.weights=imagenet",
        )
    with pytest.raises(ConfigError, match="model.depth: 0.5 applies to model.backbone=mobilenet_v2_lite only"):
        tiny_config("model.backbone=mobilenet_v2")  # TINY sets model.depth=0.5


def test_old_model_name_key_still_loads_as_model_backbone(tmp_path):
    from pipeline.core import config

    f = tmp_path / "c.yaml"
    f.write_text("model:\n  name: mobilenet_v2_lite\n  width: 0.5\n")
    assert config.load(f).model.backbone == "mobilenet_v2_lite"


def test_adamw_scales_the_backbone_learning_rate_per_variable():
    """Adam's first step moves each weight by about the learning rate, whatever the
    gradient's size: a 0.1 multiplier must show as a 10x smaller step."""
    from pipeline.stages.fit import make_optimizer

    a, b = tf.Variable(np.ones(4, np.float32)), tf.Variable(np.ones(4, np.float32))
    opt = make_optimizer(0.01, 1, 0, 1e-2)
    opt.set_lr_multiplier([a], 0.1)
    grad = tf.constant([1.0, -2.0, 3.0, -4.0])
    opt.apply_gradients([(grad, a), (grad, b)])
    step_a, step_b = np.abs(1 - a.numpy()), np.abs(1 - b.numpy())
    np.testing.assert_allclose(step_a, 0.1 * step_b, rtol=1e-3)
    assert step_b.min() > 0.009


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A tiny trained classification run (mobilenet_v2_lite) to transfer from."""
    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import run_stage

    run = RunDir(tmp_path_factory.mktemp("src") / "run")
    run_stage("train", run, tiny_config("train.epochs=1", "data.synthetic_samples=96"))
    return run


def _weights(path, names) -> dict:
    from pipeline.models.weights import read_weights_file

    stored = read_weights_file(path)
    return {n: [v for _, v in stored[n]] for n in names if n in stored}


@pytest.mark.slow
def test_a_classifier_run_seeds_a_detector_backbone(classifier_run, tmp_path):
    from pipeline.models.backbones import backbone_layer_names
    from pipeline.models.weights import load_pretrained
    from pipeline.tasks import get_task

    cfg = tiny_config("model.input_size=64", f"model.weights={classifier_run.path}", task="detection")
    model = get_task("detection").build_model(cfg, 3)
    summary = load_pretrained(model, cfg)
    backbone = backbone_layer_names(cfg.model) & {layer.name for layer in model.layers}
    want = _weights(classifier_run.weights("float"), backbone)
    assert want and summary["loaded_layers"] == len(want)
    for name, values in want.items():
        for got, v in zip(model.get_layer(name).get_weights(), values):
            np.testing.assert_array_equal(got, v)
    assert {"head_box", "head_cls", "fpn_lat3_conv"} <= set(summary["new_layers"])


@pytest.mark.slow
def test_frozen_epochs_keep_the_backbone_and_later_epochs_tune_it(classifier_run, tmp_path, monkeypatch):
    from pipeline.core.rundir import RunDir, read_json
    from pipeline.models.backbones import backbone_layer_names
    from pipeline.stages.chain import run_stage

    sets = ["data.synthetic_samples=96", f"model.weights={classifier_run.path}", "train.freeze_backbone_epochs=1"]
    source = classifier_run.weights("float")
    backbone = backbone_layer_names(tiny_config().model)
    before = _weights(source, backbone)
    frozen = RunDir(tmp_path / "frozen")
    run_stage("train", frozen, tiny_config(*sets, "train.epochs=1"))
    after_frozen = _weights(frozen.weights("float"), backbone)
    for name in before:
        for a, b in zip(after_frozen[name], before[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)  # BatchNorm statistics included
    head = _weights(frozen.weights("float"), ["logits"])["logits"]
    assert not np.array_equal(head[0], _weights(source, ["logits"])["logits"][0])

    # Two epochs, one frozen: the weights after each phase (the saved model is the best
    # epoch's, which on this tiny set may well be the frozen one).
    from pipeline.stages import train as train_mod

    after_phase = {}
    fit_phase = train_mod._fit_phase

    def spy(model, phase, *args, **kw):
        fit_phase(model, phase, *args, **kw)
        after_phase[phase.name] = {n: [w.copy() for w in model.get_layer(n).get_weights()] for n in before}

    monkeypatch.setattr(train_mod, "_fit_phase", spy)
    tuned = RunDir(tmp_path / "tuned")
    run_stage("train", tuned, tiny_config(*sets, "train.epochs=2"))
    for name in before:
        for a, b in zip(after_phase["frozen"][name], before[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    after = after_phase["main"]
    changed = {n for n in before if any(not np.array_equal(a, b) for a, b in zip(after[n], before[n]))}
    # Every conv learned; BatchNorm stayed frozen (the Keras rule after a frozen phase).
    assert changed == {n for n in before if not n.endswith("bn")}, changed
    entry = read_json(tuned.manifest_path, "")["stages"][-1]
    assert entry["results"]["pretrained"]["loaded_layers"] == len(before)
    assert not (tuned.path / "checkpoints" / "frozen_phase.h5").exists()
