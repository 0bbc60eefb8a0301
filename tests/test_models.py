"""Every registered backbone: builds, trains a step, prunes, quantizes; no Lambda layers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config

from pipeline._keras import keras, layers, tf
from pipeline.models import BACKBONES
from pipeline.stages.fit import WarmupCosine, select_strategy, setup_hardware

ALLOWED = (
    layers.InputLayer,
    layers.Conv2D,
    layers.DepthwiseConv2D,
    layers.BatchNormalization,
    layers.ReLU,
    layers.Add,
    layers.GlobalAveragePooling2D,
    layers.Dropout,
    layers.Dense,
    layers.Activation,
    layers.ZeroPadding2D,  # keras.applications' stride-2 blocks
)


def _variants():
    from pipeline.core.backbones import backbone_info

    for backbone in sorted(BACKBONES):
        # keras.applications backbones have a fixed stem: their gray variant keeps stride 2.
        gray_stem = 1 if backbone_info(backbone).configurable_depth else 2
        yield from ((backbone, 3, 2), (backbone, 1, gray_stem))


@pytest.mark.parametrize("backbone, channels, stem", list(_variants()))
def test_classifier_is_built_from_quantizable_layers_only(backbone, channels, stem):
    from pipeline.core.backbones import backbone_info
    from pipeline.stages.optimize import quantize
    from pipeline.tasks import get_task

    depth = "0.5" if backbone_info(backbone).configurable_depth else "1.0"
    cfg = tiny_config(
        f"model.backbone={backbone}", f"model.channels={channels}", f"model.stem_stride={stem}", f"model.depth={depth}"
    )
    model = get_task("classification").build_model(cfg, 5)
    assert model.output_shape == (None, 5)
    assert all(isinstance(layer, ALLOWED) for layer in model.layers), [
        type(x).__name__ for x in model.layers if not isinstance(x, ALLOWED)
    ]
    x = np.random.default_rng(0).random((2, 32, 32, channels), np.float32)
    np.testing.assert_allclose(model(x).numpy().sum(-1), 1.0, rtol=1e-5)
    q = quantize(model, prune_preserving=False)
    assert q(x).shape == (2, 5)
    model.compile("adam", "sparse_categorical_crossentropy")
    loss = model.train_on_batch(x, np.array([0, 4]))
    assert np.isfinite(loss)


def test_qat_range_calibration_makes_a_fresh_qat_model_match_float():
    """TFMOT starts activation ranges at ±6 (and the input range at 0): a fresh QAT
    model in inference mode is far off the float one until its ranges are calibrated."""
    from pipeline.core.images import InputSpec
    from pipeline.stages.optimize import calibrate_ranges, quantize

    inp = keras.Input((32, 32, 3))
    y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same")(inp)))
    model = keras.Model(inp, layers.Conv2D(4, 1)(y))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), np.uint8) for _ in range(24)]
    x = np.stack(images).astype(np.float32) / 255.0
    ref = model(x, training=False).numpy()
    q = quantize(model, prune_preserving=False)
    before = np.abs(q(x, training=False).numpy() - ref).max()
    calibrate_ranges(q, iter(images), InputSpec(32, 3), batch=8)
    after = np.abs(q(x, training=False).numpy() - ref).max()
    assert after < 0.1 * ref.std() and after * 10 < before, (before, after, ref.std())
    ranges = [float(v.numpy().max()) for v in q.non_trainable_weights if v.name.endswith("post_activation_max:0")]
    assert ranges and all(0 < r < 6 for r in ranges), ranges
    # The patched TFMOT ops are restored: inference leaves the ranges alone again.
    kept = [v.numpy().copy() for v in q.non_trainable_weights]
    q(x * 3, training=False)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(kept, q.non_trainable_weights))


@pytest.mark.parametrize("prune_preserving", [False, True])
def test_the_qat_segmenter_keeps_its_concat_inputs_in_order_and_matches_float(prune_preserving):
    """TFMOT's ConcatTransform reordered the ASPP concat's inputs (model-optimization
    #1061): a calibrated QAT segmenter then computed something else than its float
    model. The wrapped model takes them in the float model's order and, calibrated,
    stays near the float output."""
    from pipeline.core import config
    from pipeline.core.images import InputSpec
    from pipeline.models.segmenter import build_segmenter
    from pipeline.stages.optimize import calibrate_ranges, quantize

    keras.utils.set_random_seed(0)
    model = build_segmenter(config.load(None, ["model.input_size=64"], task="segmentation").model, 4)
    q = quantize(model, prune_preserving=prune_preserving)

    def sources(layer, node: int):
        return [t._keras_history.layer.name for t in tf.nest.flatten(layer._inbound_nodes[node].input_tensors)]

    concats = [layer for layer in model.layers if isinstance(layer, layers.Concatenate)]
    assert len(concats) == 3
    for layer in concats:
        wrapped = q.get_layer(f"quant_{layer.name}")
        assert sources(wrapped, -1) == [f"quant_{s}" for s in sources(layer, 0)]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), np.uint8) for _ in range(16)]
    x = np.stack(images).astype(np.float32) / 255.0
    ref = model(x, training=False).numpy()
    calibrate_ranges(q, iter(images), InputSpec(64, 3), batch=8)
    err = np.abs(q(x, training=False).numpy() - ref).mean() / np.abs(ref).mean()
    assert err < 0.1, err


def test_width_and_depth_scale_the_model():
    from pipeline.tasks import get_task

    task = get_task("classification")
    small = task.build_model(tiny_config("model.width=0.25"), 3).count_params()
    wide = task.build_model(tiny_config("model.width=1.0"), 3).count_params()
    deep = task.build_model(tiny_config("model.width=0.25", "model.depth=2.0"), 3).count_params()
    assert small < deep < wide or small < wide and small < deep


def test_single_machine_strategy_and_cpu_switches(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert isinstance(select_strategy(), type(tf.distribute.get_strategy()))
    hw = setup_hardware(tiny_config())
    assert (hw.gpus, hw.mixed_precision, hw.xla) == (0, False, False)
    assert keras.mixed_precision.global_policy().name == "float32"
    hw = setup_hardware(tiny_config("train.mixed_precision=on"))
    assert hw.mixed_precision and keras.mixed_precision.global_policy().name == "mixed_float16"
    keras.mixed_precision.set_global_policy("float32")


def test_tf_config_with_several_workers_selects_multi_worker(monkeypatch):
    """Only the choice is checked: creating the strategy would start a gRPC server."""
    seen = []
    import pipeline.stages.fit as fit_module

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", lambda: seen.append(1) or "mwms")
    monkeypatch.setattr(fit_module, "barrier", lambda strategy: seen.append(strategy))  # the workers meet
    cluster = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    assert select_strategy() == "mwms" and seen == [1, "mwms"]


def test_mixed_precision_model_keeps_float32_scores():
    from pipeline.tasks import get_task

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = get_task("classification").build_model(tiny_config(), 3)
        assert model.output.dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_augmented_training_batches_under_the_mixed_precision_policy(task):
    """A GPU run sets mixed_float16 globally before the data is built; augmentation
    layers must not pick it up (keras-cv's JitteredResize then fails on float16 boxes)."""
    from pipeline.tasks import get_task

    cfg = tiny_config("data.synthetic_samples=32", "train.batch_size=8", task=task)
    t = get_task(task)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        data = t.load_data(cfg)
        x, _ = next(iter(t.datasets(data, cfg, cfg.input_spec())[0]))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert x.dtype == tf.float32 and x.shape[0] == 8 and np.isfinite(x.numpy()).all()


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_a_seed_gives_the_same_training_batches(task):
    """Two runs of one config see the same augmented batches, so they train the same
    model: ``seed_everything`` also seeds TensorFlow's global generator, which keras-cv's
    augmentation layers draw from (else seeded from the OS), and the detection reader
    keeps its order. Another seed gives other batches."""
    from pipeline.stages.fit import seed_everything
    from pipeline.tasks import get_task

    cfg = tiny_config("data.synthetic_samples=32", "train.batch_size=8", task=task)
    t = get_task(task)

    def batches(seed: int) -> list[np.ndarray]:
        seed_everything(seed)
        data = t.load_data(cfg)
        train, _ = t.datasets(data, cfg, cfg.input_spec())
        return [np.asarray(a) for batch in train.take(3) for a in tf.nest.flatten(batch)]

    first, again, other = batches(0), batches(0), batches(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_learning_rate_warms_up_then_decays_to_zero():
    s = WarmupCosine(1e-2, total_steps=100, warmup_steps=10)
    lr = [float(s(i)) for i in (0, 9, 10, 55, 100)]
    assert (
        lr[0] < lr[1] <= 1e-2 and lr[2] == pytest.approx(1e-2) and lr[3] < lr[2] and lr[4] == pytest.approx(0, abs=1e-9)
    )
