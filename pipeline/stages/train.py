"""Float training: the strategy from the hardware, transfer learning's phases, resumable ``fit``."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass

from pipeline._keras import keras
from pipeline.core.config import Config
from pipeline.core.rundir import RunDir, StageInputError, write_text
from pipeline.data.stream import sharded
from pipeline.models.backbones import backbone_layer_names
from pipeline.models.weights import load_pretrained
from pipeline.stages.fit import (
    barrier,
    best_so_far,
    fit,
    fit_batch,
    make_optimizer,
    seed_everything,
    setup_hardware,
    shard_by_data,
    sharded_at_source,
    steps_per_epoch,
    worker_role,
)
from pipeline.stages.resume import stage_key
from pipeline.stages.weights import load_weights, save_weights
from pipeline.tasks import get_task

log = logging.getLogger(__name__)

FROZEN_DONE = "frozen_phase.h5"  # weights after the frozen phase: it finished, resume in the next
RESUME_KEY = "resume_key"  # the training's stage key (config and data files): a resume must match it


def train(run: RunDir, cfg: Config) -> dict:
    """Train the float model; a killed run resumes from ``RUN/checkpoints``.

    Returns:
        Validation results of the best weights, also saved as ``models/float.h5``.
    """
    role = worker_role()
    if not role.chief:
        return _train_as_worker(run, cfg, role)
    run.path.mkdir(parents=True, exist_ok=True)
    # A retrain that fails (bad data, no validation metric, a killed run's checkpoint
    # of another config...) puts back the config the trained models, or that
    # checkpoint, were built with. A killed one keeps the new config, which
    # is what its BackupAndRestore state was made with, so rerunning resumes it.
    previous = run.config_path.read_text() if run.config_path.is_file() else None
    run.save_config(cfg)
    try:
        return _train(run, cfg)
    except Exception:
        if previous is not None:
            write_text(run.config_path, previous)
        raise


def _train_as_worker(run: RunDir, cfg: Config, role) -> dict:
    """A non-chief worker trains in step with the chief but writes its config,
    manifest, logs and model to a temporary folder, removed at the end (kept when
    EDGEPIPE_KEEP_WORKER_DIR is set, for checking); it reads the chief's checkpoints."""
    tmp = RunDir(tempfile.mkdtemp(prefix=f"edgepipe-{role.task_type}{role.index}-"))
    log.info("%s %d of %d workers: %s is the chief's to write; this worker writes to %s",
             role.task_type, role.index, role.workers, run.path, tmp.path)  # fmt: skip
    try:
        tmp.save_config(cfg)
        return _train(run, cfg, out=tmp)
    finally:
        if not os.environ.get("EDGEPIPE_KEEP_WORKER_DIR"):
            shutil.rmtree(tmp.path, ignore_errors=True)


# === Phases: transfer learning's frozen-backbone start, then the main fit ===


@dataclass(frozen=True)
class Phase:
    """One ``fit`` over epochs ``[first_epoch, end_epoch)`` with its own resume state."""

    name: str
    first_epoch: int
    end_epoch: int
    freeze_backbone: bool
    backbone_lr_mult: float
    backup: str  # its BackupAndRestore folder under RUN/checkpoints


def plan_phases(cfg: Config) -> list[Phase]:
    """``train.freeze_backbone_epochs`` with the backbone frozen (the head learns on
    fixed features), then the rest with everything trainable and the backbone's learning
    rate scaled by ``train.backbone_lr_mult``. The multiplier applies whenever the
    backbone starts from weights (``model.weights`` is not ``none``) or was frozen first;
    from scratch it does not."""
    t = cfg.train
    frozen = min(t.freeze_backbone_epochs, t.epochs)
    mult = t.backbone_lr_mult if (frozen or cfg.model.weights != "none") else 1.0
    phases = [Phase("frozen", 0, frozen, True, 1.0, "backup_frozen")] if frozen else []
    if frozen < t.epochs:
        phases.append(Phase("main", frozen, t.epochs, False, mult, "backup"))
    return phases


def _set_trainable(model: keras.Model, backbone: frozenset, phase: Phase, keep_bn_frozen: bool) -> None:
    """Freeze or unfreeze the backbone. A frozen BatchNorm also runs in inference mode
    (Keras 2), and after a frozen phase the backbone's BatchNorm stays so when the rest
    thaws: the Keras transfer-learning rule, since small batches of new data would
    overwrite statistics that the pretrained weights rely on."""
    for layer in model.layers:
        if layer.name in backbone:
            bn = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = not phase.freeze_backbone and not (keep_bn_frozen and bn)


# === Stage ===


def _train(run: RunDir, cfg: Config, out: RunDir | None = None) -> dict:
    """Train in ``run``; ``out`` (default ``run``) is where this process writes its
    config, manifest, logs and model: a worker's temporary folder in a multi-worker run."""
    out = out or run
    chief = out is run
    task = get_task(cfg.task)
    hw = setup_hardware(cfg)  # first: a multi-worker strategy must set up before TF's runtime starts
    seed_everything(cfg.train.seed)  # (the generator it makes starts the runtime)
    spec = cfg.input_spec()
    ckpt = run.path / "checkpoints"
    phases = plan_phases(cfg)
    key = stage_key(cfg, "train")
    with out.stage("train", inputs=[out.config_path], key=key) as entry:
        data = task.load_data(cfg)
        role = worker_role()
        cfg = fit_batch(cfg, len(data.train) // role.workers)  # each worker batches its own share
        fresh = not (ckpt / FROZEN_DONE).is_file() and not any((ckpt / p.backup).is_dir() for p in phases)
        if fresh:  # a disk cache of earlier data (same file names, other contents) must not be read back
            shutil.rmtree(out.cache, ignore_errors=True)
        with sharded(role.workers, role.index):  # each worker reads its own share of the training files
            train_ds, val_ds = task.datasets(data, cfg, spec, out.cache)
        datasets = sharded_at_source(train_ds), shard_by_data(val_ds)
        if role.workers > 1:
            log.info("%s %d reads %d of the %d training samples (a share per worker)", role.task_type, role.index,
                     len(data.train) // role.workers, len(data.train))  # fmt: skip
        class_names = task.class_names(data)
        num_classes = len(class_names)
        # Every worker decides from the same files: read them all, then wait for every
        # worker before the chief changes anything (a worker deciding differently would
        # train from other weights, or call a collective the others never call).
        frozen_done = (ckpt / FROZEN_DONE).is_file()
        resuming = frozen_done or any((ckpt / p.backup).is_dir() for p in phases)
        made_with = (ckpt / RESUME_KEY).read_text().strip() if resuming and (ckpt / RESUME_KEY).is_file() else None
        if made_with is not None and made_with != key:
            # Resuming it would go on under other settings (or crash on another class count)
            raise StageInputError(
                f"{ckpt}: holds a killed training of another config or data (train.*, model.*, data.* or the "
                f"data files changed since it started); run the command it was started with to resume it, or "
                f"delete {ckpt} to train afresh with this one"
            )
        monitor, mode = task.spec.monitor, task.spec.monitor_mode
        threshold = best_so_far(run.path / "train_log.csv", monitor, mode) if resuming else None
        barrier(hw.strategy)
        with hw.strategy.scope():
            model = task.build_model(cfg, num_classes)
        if resuming:
            log.info("resuming a killed run from %s (delete it to start over)", ckpt)
            transfer = None
        else:
            if chief:
                _forget_previous_attempt(run)
                write_text(ckpt / RESUME_KEY, key + "\n")  # what a resume must match
            transfer = load_pretrained(model, cfg, class_names)
        tuned = len(phases) > 1 or phases[-1].freeze_backbone or phases[-1].backbone_lr_mult != 1.0
        backbone = backbone_layer_names(cfg.model) if tuned else frozenset()
        for phase in phases:
            if phase.name == "frozen" and frozen_done:
                continue  # finished before the run was killed
            if frozen_done and not (ckpt / phase.backup).is_dir():
                load_weights(model, ckpt / FROZEN_DONE)  # resume where the frozen phase ended
            threshold = _fit_phase(model, phase, backbone, run, cfg, task, hw, data, datasets, num_classes, out,
                                   threshold)  # fmt: skip
            if phase.name == "frozen":
                # Every worker saves (reading BatchNorm's statistics is a collective under
                # MultiWorkerMirroredStrategy); the chief's copy is the one that counts.
                save_weights(model, ckpt / FROZEN_DONE if chief else out.path / FROZEN_DONE)
        barrier(hw.strategy)  # the chief has written best.h5 (and the frozen phase's weights)
        if (ckpt / "best.h5").is_file():
            load_weights(model, ckpt / "best.h5")
        results = model.evaluate(datasets[1], return_dict=True, verbose=0)
        barrier(hw.strategy)  # every worker has read best.h5 before the chief cleans up
        if chief:
            # fit() returned: the run is complete, so the resume state is obsolete.
            for p in phases:
                shutil.rmtree(ckpt / p.backup, ignore_errors=True)
            (ckpt / FROZEN_DONE).unlink(missing_ok=True)
            (ckpt / RESUME_KEY).unlink(missing_ok=True)
        save_weights(model, out.weights("float"))
        entry["outputs"].append(out.weights("float"))
        # Models, logs and exports made from an earlier float model no longer match it.
        out.forget_made_from(("pruned", "qat", "pqat"))
        entry["results"] = {k: float(v) for k, v in results.items()}
        entry["results"]["skipped_images"] = len(data.skipped)
        unseen = task.unseen_classes(data)
        if unseen:
            entry["results"]["classes_without_readable_training_images"] = unseen
            log.warning(
                "class(es) %s: every training image was unreadable (skipped), so the model never saw them, yet "
                "they are in its labels; fix or remove those images and train again",
                ", ".join(map(repr, unseen)),
            )
        entry["results"]["class_names"] = list(class_names)  # a later run's model.weights reads them
        entry["results"]["hardware"] = {
            "gpus": hw.gpus, "mixed_precision": hw.mixed_precision, "xla": hw.xla,
            "strategy": type(hw.strategy).__name__, "replicas": hw.strategy.num_replicas_in_sync,
        }  # fmt: skip
        if transfer is not None:
            entry["results"]["pretrained"] = transfer
    log.info("float model: %s", {k: v for k, v in entry["results"].items() if k not in ("pretrained", "class_names")})
    return entry["results"]


def _forget_previous_attempt(run: RunDir) -> None:
    """A fresh start in a used run folder: the old CSV log and best checkpoint belong to
    another training, and would seed the new one's best value and curves."""
    (run.path / "train_log.csv").unlink(missing_ok=True)
    (run.path / "checkpoints" / "best.h5").unlink(missing_ok=True)


def _fit_phase(
    model,
    phase: Phase,
    backbone,
    run: RunDir,
    cfg: Config,
    task,
    hw,
    data,
    datasets,
    num_classes: int,
    out: RunDir,
    threshold: float | None,
) -> float | None:
    """One phase's ``fit``; returns the best monitored value so far, which the next
    phase's checkpoint must beat (carried in memory: every worker holds the same)."""
    _set_trainable(model, backbone, phase, keep_bn_frozen=cfg.train.freeze_backbone_epochs > 0)
    t = cfg.train
    steps = steps_per_epoch(cfg, len(data.train))
    with hw.strategy.scope():
        opt = make_optimizer(
            t.learning_rate, steps * t.epochs, int(steps * t.warmup_epochs), t.weight_decay, phase.first_epoch * steps
        )
        if phase.backbone_lr_mult != 1.0:
            chosen = [w for layer in model.layers if layer.name in backbone for w in layer.trainable_weights]
            opt.set_lr_multiplier(chosen, phase.backbone_lr_mult)
        model.compile(optimizer=opt, jit_compile=hw.xla, **task.compile_args(cfg, num_classes))
    if phase.name == "frozen" or phase.backbone_lr_mult != 1.0:
        what = "frozen" if phase.freeze_backbone else f"learning rate x{phase.backbone_lr_mult:g}"
        log.info(
            "training phase %r, epochs %d-%d: backbone %s", phase.name, phase.first_epoch + 1, phase.end_epoch, what
        )
    monitor, mode = task.spec.monitor, task.spec.monitor_mode
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            str(run.path / "checkpoints" / "best.h5"),
            monitor=monitor,
            mode=mode,
            save_best_only=True,
            save_weights_only=True,
            # A resumed run or a later phase never overwrites a better checkpoint with a worse one.
            initial_value_threshold=threshold,
        ),
        # Keras writes a non-chief's ModelCheckpoint and BackupAndRestore to temporary
        # folders itself; the CSV log and TensorBoard go to this process's own folder.
        keras.callbacks.CSVLogger(str(out.path / "train_log.csv"), append=True),
        keras.callbacks.TensorBoard(str(out.path / "logs" / "train"), profile_batch=0),
        keras.callbacks.TerminateOnNaN(),
    ]
    if t.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor, patience=t.early_stopping_patience, mode=mode))
    fit(
        model,
        task,
        cfg,
        data,
        datasets,
        epochs=phase.end_epoch,
        initial_epoch=phase.first_epoch,
        backup=run.path / "checkpoints" / phase.backup,
        callbacks=callbacks,
    )
    best = float(callbacks[0].best)
    return best if math.isfinite(best) else None
