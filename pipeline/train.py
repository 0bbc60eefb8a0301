"""Float training: strategy from the hardware, callbacks, resumable ``fit``."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline._keras import keras, tf
from pipeline.config import Config
from pipeline.data.classification import DataError
from pipeline.data.images import InputSpec
from pipeline.data.pipeline import SKIPPED
from pipeline.models.backbones import backbone_layer_names
from pipeline.models.weights import load_pretrained
from pipeline.rundir import PRODUCER, RunDir, StageInputError, atomic_path, write_text
from pipeline.tasks import get_task

log = logging.getLogger(__name__)


# === Hardware ===


@dataclass(frozen=True)
class Hardware:
    strategy: tf.distribute.Strategy
    gpus: int
    mixed_precision: bool
    xla: bool


def select_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirrored when TF_CONFIG names several workers, Mirrored on several
    GPUs, else the default strategy (one GPU or the CPU)."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    if len(cluster.get("worker", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def setup_hardware(cfg: Config) -> Hardware:
    """Pick the strategy; mixed precision and XLA default on for GPUs, off on CPU."""
    strategy = select_strategy()
    gpus = len(tf.config.list_physical_devices("GPU"))
    mp = cfg.train.mixed_precision == "on" or (cfg.train.mixed_precision == "auto" and gpus > 0)
    xla = cfg.train.xla == "on" or (cfg.train.xla == "auto" and gpus > 0)
    keras.mixed_precision.set_global_policy("mixed_float16" if mp else "float32")
    log.info("strategy %s, %d GPU(s), mixed precision %s, XLA %s", type(strategy).__name__, gpus, mp, xla)
    return Hardware(strategy, gpus, mp, xla)


def input_spec(cfg: Config) -> InputSpec:
    """What the model takes: size, channels, resize mode, and the normalization its
    backbone's weights expect."""
    from pipeline.models.catalog import backbone_info

    info = backbone_info(cfg.model.backbone)
    m = cfg.model
    return InputSpec(size=m.input_size, channels=m.channels, resize=m.resize, mean=info.mean, std=info.std)


# === Schedule ===


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then cosine decay to zero; per step, so a resumed run continues it.

    ``offset`` steps are added to the optimizer's own count: a later training phase
    with a fresh optimizer goes on where the previous phase left the schedule.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, offset: int = 0) -> None:
        self.peak, self.total, self.warmup = peak, max(1, total_steps), max(0, warmup_steps)
        self.offset = max(0, offset)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + self.offset
        warm = self.peak * (step + 1) / max(1, self.warmup)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        cos = 0.5 * self.peak * (1 + tf.cos(math.pi * tf.clip_by_value(progress, 0.0, 1.0)))
        return tf.where(step < self.warmup, warm, cos)

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": self.total, "warmup_steps": self.warmup, "offset": self.offset}


class AdamW(keras.optimizers.AdamW):
    """Keras' AdamW with a learning-rate multiplier per variable (the backbone's
    ``train.backbone_lr_mult`` in fine-tuning).

    Scaling gradients would not do it: Adam divides the scale out again. So the
    learning rate itself is scaled, for the update and the decoupled weight decay
    alike, while each variable's update is traced (a Python value per variable,
    also under XLA, whose update functions are traced per variable).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._multipliers: dict = {}
        self._scale = 1.0

    def set_lr_multiplier(self, variables, multiplier: float) -> None:
        for v in variables:
            self._multipliers[self._var_key(v)] = float(multiplier)

    def _multiplier(self, variable) -> float:
        return self._multipliers.get(self._var_key(variable), 1.0)

    @property
    def learning_rate(self):
        lr = super().learning_rate
        return lr * self._scale if self._scale != 1.0 else lr

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        keras.optimizers.AdamW.learning_rate.fset(self, value)

    @contextlib.contextmanager
    def _scaled(self, multiplier: float):
        self._scale = multiplier
        try:
            yield
        finally:
            self._scale = 1.0

    def _update_step(self, gradient, variable):
        with self._scaled(self._multiplier(variable)):
            return super()._update_step(gradient, variable)

    def _apply_weight_decay(self, variables):
        groups: dict[float, list] = {}
        for v in variables:
            groups.setdefault(self._multiplier(v), []).append(v)
        for multiplier, group in groups.items():
            with self._scaled(multiplier):
                super()._apply_weight_decay(group)


def steps_per_epoch(cfg: Config, n_train: int) -> int:
    if cfg.train.steps_per_epoch:
        return cfg.train.steps_per_epoch
    return max(1, n_train // cfg.train.batch_size)


def make_optimizer(lr: float, total_steps: int, warmup_steps: int, weight_decay: float, offset: int = 0) -> AdamW:
    schedule = WarmupCosine(lr, total_steps, warmup_steps, offset) if total_steps > 1 else lr
    return AdamW(schedule, weight_decay=weight_decay)


@contextlib.contextmanager
def explain_empty_epochs(cfg: Config, n_files: int) -> Iterator[None]:
    """Turn Keras' "Empty logs" (an epoch without a single batch) into a data error.

    It happens when unreadable files leave fewer readable images than one batch,
    which the file count that sized the batches could not know.
    """
    try:
        yield
    except ValueError as e:
        if "Empty logs" not in str(e):
            raise
        raise DataError(
            f"{cfg.data.path or 'the training split'}: not one full batch of train.batch_size={cfg.train.batch_size} "
            f"images ({n_files} files, {len(SKIPPED)} of them unreadable); lower train.batch_size"
        ) from None


def verbose() -> int:
    """Keras' live progress bar on a terminal, one line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


# === Stage ===


def train(run: RunDir, cfg: Config) -> dict:
    """Train the float model; resumes from ``RUN/checkpoints/backup`` if a run was killed.

    Returns:
        Validation results of the best weights, also saved as ``models/float.h5``.
    """
    run.path.mkdir(parents=True, exist_ok=True)
    # A retrain that fails (bad data, no validation metric...) puts back the config
    # the trained models were built with. A killed one keeps the new config, which
    # is what its BackupAndRestore state was made with, so rerunning resumes it.
    previous = run.config_path.read_text() if run.has("float") and run.config_path.is_file() else None
    run.save_config(cfg)
    try:
        return _train(run, cfg)
    except Exception:
        if previous is not None:
            write_text(run.config_path, previous)
        raise


# === Phases: transfer learning's frozen-backbone start, then the main fit ===

FROZEN_DONE = "frozen_phase.h5"  # weights after the frozen phase: it finished, resume in the next


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


def _train(run: RunDir, cfg: Config) -> dict:
    task = get_task(cfg.task)
    keras.utils.set_random_seed(cfg.train.seed)
    hw = setup_hardware(cfg)
    spec = input_spec(cfg)
    ckpt = run.path / "checkpoints"
    phases = plan_phases(cfg)
    with run.stage("train") as entry:
        data = task.load_data(cfg)
        train_ds, val_ds = task.datasets(data, cfg, spec)
        steps = steps_per_epoch(cfg, len(data.train))
        resuming = (ckpt / FROZEN_DONE).is_file() or any((ckpt / p.backup).is_dir() for p in phases)
        with hw.strategy.scope():
            model = task.build_model(cfg, len(task.class_names(data)))
        if resuming:
            log.info("resuming a killed run from %s (delete it to start over)", ckpt)
            transfer = None
        else:
            _forget_previous_attempt(run)
            transfer = load_pretrained(model, cfg)
        tuned = len(phases) > 1 or phases[-1].freeze_backbone or phases[-1].backbone_lr_mult != 1.0
        backbone = backbone_layer_names(cfg.model) if tuned else frozenset()
        for phase in phases:
            if phase.name == "frozen" and (ckpt / FROZEN_DONE).is_file():
                continue  # finished before the run was killed
            if (ckpt / FROZEN_DONE).is_file() and not (ckpt / phase.backup).is_dir():
                load_weights(model, ckpt / FROZEN_DONE)
            _fit_phase(model, phase, backbone, run, cfg, task, hw, (train_ds, val_ds), steps, len(data.train))
            if phase.name == "frozen":
                save_weights(model, ckpt / FROZEN_DONE)
        # fit() returned: the run is complete, so the resume state is obsolete.
        for p in phases:
            shutil.rmtree(ckpt / p.backup, ignore_errors=True)
        (ckpt / FROZEN_DONE).unlink(missing_ok=True)
        if (ckpt / "best.h5").is_file():
            load_weights(model, ckpt / "best.h5")
        results = model.evaluate(val_ds, return_dict=True, verbose=0)
        save_weights(model, run.weights("float"))
        entry["outputs"].append(run.weights("float"))
        # Models and exports made from an earlier float model no longer match it.
        for stale in [*(run.weights(m) for m in ("pruned", "qat", "pqat")), run.path / "exports.json"]:
            stale.unlink(missing_ok=True)
        entry["results"] = {k: float(v) for k, v in results.items()}
        entry["results"]["skipped_images"] = len(SKIPPED)
        entry["results"]["hardware"] = {"gpus": hw.gpus, "mixed_precision": hw.mixed_precision, "xla": hw.xla}
        if transfer is not None:
            entry["results"]["pretrained"] = transfer
    log.info("float model: %s", {k: v for k, v in entry["results"].items() if k != "pretrained"})
    return entry["results"]


def _forget_previous_attempt(run: RunDir) -> None:
    """A fresh start in a used run folder: the old CSV log and best checkpoint belong to
    another training, and would seed the new one's best value and curves."""
    (run.path / "train_log.csv").unlink(missing_ok=True)
    (run.path / "checkpoints" / "best.h5").unlink(missing_ok=True)


def _fit_phase(model, phase: Phase, backbone, run: RunDir, cfg: Config, task, hw, datasets, steps: int, n_train: int):
    train_ds, val_ds = datasets
    _set_trainable(model, backbone, phase, keep_bn_frozen=cfg.train.freeze_backbone_epochs > 0)
    t = cfg.train
    with hw.strategy.scope():
        opt = make_optimizer(
            t.learning_rate, steps * t.epochs, int(steps * t.warmup_epochs), t.weight_decay, phase.first_epoch * steps
        )
        if phase.backbone_lr_mult != 1.0:
            chosen = [w for layer in model.layers if layer.name in backbone for w in layer.trainable_weights]
            opt.set_lr_multiplier(chosen, phase.backbone_lr_mult)
        model.compile(optimizer=opt, jit_compile=hw.xla, **task.compile_args(cfg))
    if phase.name == "frozen" or phase.backbone_lr_mult != 1.0:
        log.info(
            "training phase %r, epochs %d-%d: backbone %s",
            phase.name,
            phase.first_epoch + 1,
            phase.end_epoch,
            "frozen" if phase.freeze_backbone else f"learning rate x{phase.backbone_lr_mult:g}",
        )
    with explain_empty_epochs(cfg, n_train):
        model.fit(
            train_ds.repeat() if t.steps_per_epoch else train_ds,
            validation_data=val_ds,
            initial_epoch=phase.first_epoch,
            epochs=phase.end_epoch,
            steps_per_epoch=t.steps_per_epoch or None,
            callbacks=_callbacks(run, cfg, task, run.path / "checkpoints" / phase.backup),
            verbose=verbose(),
        )


def _callbacks(run: RunDir, cfg: Config, task, backup: Path) -> list:
    best = run.path / "checkpoints" / "best.h5"
    callbacks = [
        # First, so an epoch without a validation metric is never backed up or logged.
        _RequireValidation(task.monitor, cfg.data.path or cfg.data.val_images or "the validation split"),
        keras.callbacks.BackupAndRestore(str(backup)),
        keras.callbacks.ModelCheckpoint(
            str(best),
            monitor=task.monitor,
            mode=task.monitor_mode,
            save_best_only=True,
            save_weights_only=True,
            # A resumed run or a later phase never overwrites a better checkpoint with a worse one.
            initial_value_threshold=_best_so_far(run, task),
        ),
        keras.callbacks.CSVLogger(str(run.path / "train_log.csv"), append=True),
        keras.callbacks.TensorBoard(str(run.path / "logs" / "train"), profile_batch=0),
        keras.callbacks.TerminateOnNaN(),
    ]
    if cfg.train.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                task.monitor, patience=cfg.train.early_stopping_patience, mode=task.monitor_mode
            )
        )
    return callbacks


class _RequireValidation(keras.callbacks.Callback):
    """Stop after the first epoch whose validation gave no metric.

    That happens when every validation image was unreadable: Keras would only warn,
    train on without model selection, and leave a model nobody can evaluate.
    """

    def __init__(self, monitor: str, where: str) -> None:
        super().__init__()
        self.monitor, self.where = monitor, where

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.monitor not in (logs or {}):
            raise DataError(
                f"{self.where}: the validation split gave no readable images ({len(SKIPPED)} files skipped "
                f"so far, listed above), so there is no {self.monitor} to select a model by"
            )


def _best_so_far(run: RunDir, task) -> float | None:
    """The best monitored value a killed run logged, so resuming never overwrites a
    better checkpoint with a worse one."""
    import csv

    log_path = run.path / "train_log.csv"
    if not log_path.is_file():
        return None
    values = []
    for r in csv.DictReader(log_path.open()):
        try:
            v = float(r.get(task.monitor) or "")
        except ValueError:  # empty, or "NA": an epoch the CSV logger saw without the metric
            continue
        if not math.isnan(v):
            values.append(v)
    if not values:
        return None
    return max(values) if task.monitor_mode == "max" else min(values)


def save_weights(model: keras.Model, path) -> None:
    """Save weights atomically, so a killed stage never leaves a half-written file."""
    with atomic_path(path) as tmp:
        model.save_weights(str(tmp))


def load_weights(model: keras.Model, path) -> None:
    """Load an HDF5 weights file, or say which file is unreadable and which stage rewrites it.

    h5py's own error ("truncated file: eof = ...") names no file, and a file from a
    model of another shape gives a bare ValueError.
    """
    try:
        model.load_weights(str(path))
    except (OSError, ValueError) as e:
        p = Path(path)
        stage = PRODUCER.get(p.stem, "train")
        raise StageInputError(
            f"{p}: cannot load weights ({e}); if the file is damaged, rerun `edgepipe {stage} --run-dir "
            f"{p.parent.parent}`; if --set changed the classes (data.*), the weights were made for other settings"
        ) from None


def rebuild(cfg: Config, num_classes: int, weights=None) -> keras.Model:
    """The task's model in float32 (whatever policy trained it), with ``weights`` loaded."""
    keras.mixed_precision.set_global_policy("float32")
    model = get_task(cfg.task).build_model(cfg, num_classes)
    if weights is not None:
        load_weights(model, weights)
    return model


if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main("train")
