"""Pruning and quantization-aware training with TFMOT.

* ``prune``: magnitude pruning to ``prune.target_sparsity`` with a polynomial
  schedule (or 2:4 structured sparsity), fine-tuning, then ``strip_pruning``.
* ``qat``: QAT of the float model (``qat``), and prune-preserving QAT of the pruned
  model (``pqat``) so that its zeros survive quantization. Before fine-tuning, the
  quantization ranges are calibrated on the int8 calibration images (TFMOT would
  start them at ±6), and BatchNorm is frozen during it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import numpy as np

from pipeline._keras import keras, layers, tf, tfmot
from pipeline.core.config import Config
from pipeline.core.rundir import RunDir, read_json, write_json
from pipeline.stages.fit import best_so_far, fit, fit_batch, make_optimizer, seed_everything, steps_per_epoch
from pipeline.stages.resume import completed, stage_key
from pipeline.stages.weights import load_weights, rebuild, save_weights
from pipeline.tasks import get_task

log = logging.getLogger(__name__)

# TFMOT's prune registry leaves DepthwiseConv2D kernels alone (they are tiny).
PRUNABLE = (layers.Conv2D, layers.Dense)


def _kernels(model) -> list:
    # Conv, depthwise and dense kernels are the variables named ".../kernel:0" or
    # ".../depthwise_kernel:0", whether or not a TFMOT wrapper sits around the layer.
    return [v for v in model.weights if v.name.split("/")[-1].split(":")[0] in ("kernel", "depthwise_kernel")]


def kernel_sparsity(model: keras.Model) -> dict[str, float]:
    """Fraction of exact zeros in each conv / dense kernel, by variable name."""
    return {v.name.rsplit(":", 1)[0]: float((v.numpy() == 0).mean()) for v in _kernels(model)}


def overall_sparsity(model: keras.Model) -> float:
    """Zero fraction over all conv / dense kernels, weighted by size."""
    ks = [v.numpy() for v in _kernels(model)]
    return float(sum(int((k == 0).sum()) for k in ks) / max(1, sum(k.size for k in ks)))


def _can_prune_2_4(layer) -> bool:
    # 2:4 groups run along the input-channel axis of Conv2D/Dense kernels.
    return (
        isinstance(layer, (layers.Conv2D, layers.Dense))
        and not isinstance(layer, layers.DepthwiseConv2D)
        and (layer.kernel.shape[-2] % 4 == 0)
    )


def _finetune(
    model, cfg: Config, run: RunDir, data, epochs: int, lr: float, name: str, callbacks=(), keep_best: bool = False
) -> dict:
    """Fine-tune ``model``; with ``keep_best`` the weights it ends with are those of its
    best validation, the starting weights included (epoch 0), so a fine-tune on little
    data can only keep or improve what it started from."""
    task = get_task(cfg.task)
    datasets = task.datasets(data, cfg, cfg.input_spec(), run.cache)
    steps = steps_per_epoch(cfg, len(data.train))
    opt = make_optimizer(lr, steps * epochs, 0, 0.0)
    model.compile(optimizer=opt, **task.compile_args(cfg, len(task.class_names(data))))
    ckpt = run.path / "checkpoints"
    backup, best = ckpt / f"{name}_backup", ckpt / f"{name}_best.h5"
    log_csv = run.path / f"{name}_log.csv"
    if not backup.is_dir():  # a fresh fine-tune: an earlier one's log would set its bar and mix its curves
        log_csv.unlink(missing_ok=True)
    callbacks = [*callbacks, keras.callbacks.CSVLogger(str(log_csv), append=True)]
    if keep_best:
        callbacks.append(_keep_best(model, task, cfg, datasets[1], best, backup.is_dir(), log_csv))
    fit(model, task, cfg, data, datasets, epochs=epochs, backup=backup, callbacks=callbacks)
    shutil.rmtree(backup, ignore_errors=True)  # the fine-tune is done: nothing to resume
    if keep_best and best.is_file():
        load_weights(model, best)
        best.unlink()
        best.with_suffix(".json").unlink(missing_ok=True)
    return {k: float(v) for k, v in model.evaluate(datasets[1], return_dict=True, verbose=0).items()}


def _keep_best(model, task, cfg: Config, val_ds, best: Path, resuming: bool, log_csv: Path):
    """A checkpoint of the best epoch that starts from the model as it is (its value
    measured now, or kept from before a killed run)."""
    monitor, mode = task.spec.monitor, task.spec.monitor_mode
    record = best.with_suffix(".json")
    if not resuming or not record.is_file():
        logs = model.evaluate(val_ds, return_dict=True, verbose=0)
        start = float(logs[monitor.removeprefix("val_")])
        save_weights(model, best)
        write_json(record, {"monitor": monitor, "start": start})
        log.info("before fine-tuning: %s %.4f", monitor, start)
    values = [
        v for v in (read_json(record, "delete it").get("start"), best_so_far(log_csv, monitor, mode)) if v is not None
    ]
    threshold = (max if mode == "max" else min)(values)
    return keras.callbacks.ModelCheckpoint(
        str(best), monitor=monitor, mode=mode, save_best_only=True, save_weights_only=True,
        initial_value_threshold=threshold,
    )  # fmt: skip


def _prunable(layer, min_params: int) -> bool:
    return (
        isinstance(layer, PRUNABLE)
        and not isinstance(layer, layers.DepthwiseConv2D)
        and layer.count_params() >= min_params
    )


def pruning_schedule(model: keras.Model, cfg: Config, n_train: int):
    """The ``PolynomialDecay`` that :func:`prune` uses: per-layer sparsity from 0 to the
    level that makes ``prune.target_sparsity`` overall, over ``prune.schedule_end`` of
    fine-tuning. Calling it with a step gives ``(prune now?, sparsity)``."""
    p = cfg.prune
    steps = steps_per_epoch(cfg, n_train)
    end = max(1, int(steps * p.epochs * p.schedule_end))
    # target_sparsity is over all conv/dense kernels; the few small layers left
    # dense are made up for by pruning the others a little harder.
    total = sum(int(np.prod(v.shape)) for v in _kernels(model))
    covered = sum(
        int(np.prod(v.shape)) for layer in model.layers if _prunable(layer, p.min_params) for v in _kernels(layer)
    )
    per_layer = min(0.95, p.target_sparsity * total / max(covered, 1))
    return tfmot.sparsity.keras.PolynomialDecay(0.0, per_layer, begin_step=0, end_step=end, frequency=max(1, end // 20))


def wrap_for_pruning(model: keras.Model, cfg: Config, n_train: int) -> keras.Model:
    """A copy of ``model`` (weights included) with TFMOT's pruning wrapper on every
    prunable layer: magnitude pruning on :func:`pruning_schedule`, or 2:4 sparsity."""
    p = cfg.prune
    schedule = pruning_schedule(model, cfg, n_train)

    def wrap(layer):
        if not _prunable(layer, p.min_params):
            return layer
        if p.structured_2_4:
            if not _can_prune_2_4(layer):
                return layer
            return tfmot.sparsity.keras.prune_low_magnitude(layer, sparsity_m_by_n=(2, 4))
        return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)

    pruned = keras.models.clone_model(model, clone_function=wrap)
    _copy_weights(model, pruned)
    return pruned


def prune(run: RunDir, cfg: Config) -> dict:
    """Prune the float model to the target sparsity, fine-tune, strip, save ``pruned``."""
    task = get_task(cfg.task)
    src = run.require("float")
    p = cfg.prune
    seed_everything(cfg.train.seed)
    with run.stage("prune", inputs=[src, run.config_path], key=stage_key(cfg, "prune")) as entry:
        data = task.load_data(cfg)
        cfg = fit_batch(cfg, len(data.train))
        model = rebuild(cfg, len(task.class_names(data)), src)
        pruned = wrap_for_pruning(model, cfg, len(data.train))
        results = _finetune(
            pruned, cfg, run, data, p.epochs, p.learning_rate, "prune", [tfmot.sparsity.keras.UpdatePruningStep()]
        )
        stripped = tfmot.sparsity.keras.strip_pruning(pruned)
        save_weights(stripped, run.weights("pruned"))
        entry["outputs"].append(run.weights("pruned"))
        run.forget_made_from(("pqat",))  # prune-preserving QAT of the previous pruned model
        results["sparsity"] = overall_sparsity(stripped)
        results["layer_sparsity"] = kernel_sparsity(stripped)
        entry["results"] = results
    log.info(
        "pruned model: sparsity %.3f, %s",
        results["sparsity"],
        {k: v for k, v in results.items() if k != "layer_sparsity"},
    )
    return results


def _copy_weights(src: keras.Model, dst: keras.Model) -> None:
    """Copy weights layer by layer into a model whose layers may be TFMOT-wrapped."""
    for layer in dst.layers:
        inner = getattr(layer, "layer", layer)
        source = src.get_layer(inner.name)
        inner.set_weights(source.get_weights())


def quantize(model: keras.Model, prune_preserving: bool) -> keras.Model:
    """Wrap ``model`` for QAT; with ``prune_preserving`` its zero weights stay zero."""
    q = tfmot.quantization.keras
    if not prune_preserving:
        return restore_concat_order(model, q.quantize_model(model))
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
        default_8bit_prune_preserve_quantize_scheme as pp,
    )

    wrapped = q.quantize_apply(q.quantize_annotate_model(model), pp.Default8BitPrunePreserveQuantizeScheme())
    return restore_concat_order(model, wrapped)


def _node(model: keras.Model, layer):
    """``layer``'s call in ``model``'s graph. A layer can be called in several graphs
    (TFMOT's wrappers call the original layers again), so the node is the one that
    ``model`` lists as its own."""
    own = model._network_nodes  # noqa: SLF001 - Keras keeps the graph there
    nodes = [n for i, n in enumerate(layer._inbound_nodes) if f"{layer.name}_ib-{i}" in own]  # noqa: SLF001
    if len(nodes) != 1:
        raise ValueError(f"layer {layer.name} is called {len(nodes)} times in {model.name}; expected once")
    return nodes[0]


def _sources(model: keras.Model, layer) -> list[str]:
    """Names of the layers whose outputs ``layer`` takes in ``model``, in its input order."""
    return [t._keras_history.layer.name for t in tf.nest.flatten(_node(model, layer).input_tensors)]  # noqa: SLF001


def restore_concat_order(base: keras.Model, wrapped: keras.Model) -> keras.Model:
    """``wrapped`` (TFMOT's QAT model of ``base``) with every Concatenate taking its
    inputs in ``base``'s order.

    TFMOT's ConcatTransform can rebuild a Concatenate with its inputs in another
    order (tensorflow/model-optimization#1061, open): the segmenter's ASPP concat
    ``[1×1, atrous, pooled]`` came out ``[pooled, 1×1, atrous]``, so the projection
    after it read permuted channels. The QAT model started 27 mIoU points below its
    float model on real photos, and one QAT epoch won back a quarter of it. When that
    happens the graph is replayed on the same (already wrapped) layer objects with
    the order put back, so weights, names and quantizers stay as they are.
    """
    want = {c.name: _sources(base, c) for c in base.layers if isinstance(c, layers.Concatenate)}
    inner = {w.name: getattr(w, "layer", w).name for w in wrapped.layers}
    fixes = {}
    for layer in wrapped.layers:
        name = inner[layer.name]
        if name not in want:
            continue
        got = [inner[s] for s in _sources(wrapped, layer)]
        if got != want[name]:
            if sorted(got) != sorted(want[name]) or len(set(got)) != len(got):
                raise ValueError(f"QAT model: {name} takes {got}, the float model {want[name]}")
            fixes[layer.name] = [got.index(s) for s in want[name]]
    if not fixes:
        return wrapped
    out: dict[str, list] = {}
    for layer in wrapped.layers:
        if isinstance(layer, keras.layers.InputLayer):
            out[layer.name] = [layer.output]
            continue
        node = _node(wrapped, layer)
        if node.call_kwargs:
            raise ValueError(f"QAT model: cannot replay {layer.name}, called with {sorted(node.call_kwargs)}")
        history = [t._keras_history for t in tf.nest.flatten(node.input_tensors)]  # noqa: SLF001
        args = [out[h.layer.name][h.tensor_index] for h in history]
        if layer.name in fixes:
            args = [args[i] for i in fixes[layer.name]]
        result = layer(tf.nest.pack_sequence_as(node.input_tensors, args))
        out[layer.name] = tf.nest.flatten(result)
    outputs = [out[h.layer.name][h.tensor_index] for h in (t._keras_history for t in wrapped.outputs)]  # noqa: SLF001
    log.info("QAT model: put back the input order of %s (TFMOT reordered it)", ", ".join(inner[n] for n in fixes))
    return keras.Model(wrapped.inputs, outputs if len(outputs) > 1 else outputs[0], name=wrapped.name)


@contextlib.contextmanager
def _range_calibration():
    """Inside, TFMOT's quantizers collect ranges as in training, whatever the
    ``training`` flag: weight ranges from the weights, and activation ranges as the
    min / max over every batch seen (``AllValuesQuantize``, what post-training
    calibration does) instead of a slow EMA."""
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    saved = {n: getattr(quant_ops, n) for n in ("MovingAvgQuantize", "LastValueQuantize", "AllValuesQuantize")}

    def all_values(inputs, min_var, max_var, per_channel=False, **kw):
        if per_channel:  # not used by the default 8-bit scheme for activations
            return saved["MovingAvgQuantize"](inputs, min_var, max_var, per_channel=True, **{**kw, "is_training": True})
        keep = {k: kw[k] for k in ("num_bits", "narrow_range", "symmetric") if k in kw}
        return saved["AllValuesQuantize"](inputs, min_var, max_var, is_training=True, **keep)

    def forced(fn):
        return lambda *args, **kw: fn(*args, **{**kw, "is_training": True})

    quant_ops.MovingAvgQuantize = all_values
    quant_ops.LastValueQuantize = forced(saved["LastValueQuantize"])
    quant_ops.AllValuesQuantize = forced(saved["AllValuesQuantize"])
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(quant_ops, n, fn)


def calibrate_ranges(model: keras.Model, images, spec, batch: int = 16, passes: int = 2) -> None:
    """Set a fresh QAT model's quantization ranges from data before fine-tuning.

    TFMOT starts every activation range at [-6, 6] and moves it by an EMA with decay
    0.999, so after a short QAT (a detector's 80 steps) the ranges are still about
    92 % of that guess: a tensor that lives in [0, 0.5] gets 1/24th of the int8
    levels, and fine-tuning spends itself working around that. Here the ranges start
    at zero and take the min / max of the calibration images (the ones post-training
    int8 uses), with the model in inference mode so BatchNorm statistics stay as
    they are. The second pass sees activations quantized with settled upstream ranges.
    """
    from pipeline._keras import tf
    from pipeline.core.images import normalize, with_full_range

    images = with_full_range(list(images))
    if not images:
        return
    x = normalize(np.stack(images), spec)
    for v in model.non_trainable_weights:
        if v.name.split(":")[0].endswith(("_min", "_max")):
            v.assign(tf.zeros_like(v))
    with _range_calibration():
        forward = tf.function(lambda b: model(b, training=False))
        for _ in range(passes):
            for i in range(0, len(x), batch):
                forward(tf.constant(x[i : i + batch]))


def build_qat(cfg: Config, num_classes: int, source: str, weights=None) -> keras.Model:
    """The QAT model for ``source`` (``qat`` from float, ``pqat`` from pruned)."""
    base = rebuild(cfg, num_classes)
    model = quantize(base, prune_preserving=source == "pqat")
    if weights is not None:
        load_weights(model, weights)
    return model


def qat(run: RunDir, cfg: Config, skip_done: bool = False) -> dict:
    """Quantization-aware fine-tuning of each configured source that exists.

    ``skip_done`` (``edgepipe all``): a fine-tune already done with this config and
    model (:func:`pipeline.stages.resume.completed`) is skipped; after a new prune,
    only the prune-preserving one runs again."""
    task = get_task(cfg.task)
    jobs = []
    if "float" in cfg.qat.sources:
        jobs.append(("qat", run.require("float")))
    if "pruned" in cfg.qat.sources and run.has("pruned"):
        jobs.append(("pqat", run.weights("pruned")))
    elif "pruned" in cfg.qat.sources:
        log.info("no pruned model in %s: prune-preserving QAT skipped (run `edgepipe prune` to add it)", run.path)
    out = {}
    spec = cfg.input_spec()
    # each fine-tune's key, of the config as given: fit_batch below may shrink the batch
    keys = {name: stage_key(cfg, f"qat:{name}") for name, _ in jobs}
    for name, src in jobs:
        if skip_done and completed(run, f"qat:{name}", keys[name]):
            log.info("qat:%s: done before with this config and model: skipped", name)
            continue
        seed_everything(cfg.train.seed)
        with run.stage(f"qat:{name}", inputs=[src, run.config_path], key=keys[name]) as entry:
            data = task.load_data(cfg)
            cfg = fit_batch(cfg, len(data.train))
            n = len(task.class_names(data))
            base = rebuild(cfg, n, src)
            # BatchNorm frozen (inference mode, its statistics and affine kept), the
            # usual QAT recipe (PyTorch's freeze_bn_stats). Measured on the detector:
            # 1 QAT epoch at a learning rate of 1e-9 with BatchNorm training lost 0.9
            # mAP points through the statistics alone.
            for layer in base.layers:
                if isinstance(layer, layers.BatchNormalization):
                    layer.trainable = False
            model = quantize(base, prune_preserving=name == "pqat")
            calibrate_ranges(model, task.calibration_images(data, cfg, spec, cfg.export.representative_samples), spec)
            results = _finetune(model, cfg, run, data, cfg.qat.epochs, cfg.qat.learning_rate, name, keep_best=True)
            save_weights(model, run.weights(name))
            entry["outputs"].append(run.weights(name))
            run.forget_made_from(())  # the last export was of the previous QAT model
            results["sparsity"] = overall_sparsity(model)
            entry["results"] = out[name] = results
        log.info("%s model: %s", name, results)
    return out
