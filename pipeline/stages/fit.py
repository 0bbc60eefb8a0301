"""The one fit loop: hardware, schedule, optimizer and the callbacks every stage's
training shares (float training's phases, pruning's and QAT's fine-tuning)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline._keras import keras, tf
from pipeline.core.cluster import peers_within, worker_role
from pipeline.core.config import Config
from pipeline.core.errors import DataError
from pipeline.core.rundir import read_csv_log

log = logging.getLogger(__name__)


# === Seeds ===


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and TensorFlow's global ``tf.random.Generator``:
    keras-cv's augmentation layers draw from that one, and ``keras.utils.set_random_seed``
    leaves it seeded from the OS, so without this two runs of one config augment
    differently and train different models (the demo's detection mAP spread 0.11-0.20).
    Call it after the distribution strategy is made: creating the generator starts
    TensorFlow's runtime, after which a multi-worker strategy can no longer set up."""
    keras.utils.set_random_seed(seed)
    tf.random.set_global_generator(tf.random.Generator.from_seed(seed))


# === Hardware ===


@dataclass(frozen=True)
class Hardware:
    strategy: tf.distribute.Strategy
    gpus: int
    mixed_precision: bool
    xla: bool


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Wait for every worker (a collective all-reduce); a no-op in one process. After
    ``fit``, it makes sure the chief has written what the others read next."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


def shard_by_data(ds):
    """Auto-shard policy DATA, for validation: every worker reads the whole split and
    keeps its part of each batch, so Keras' evaluation steps add up on every worker."""
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(opts)


def sharded_at_source(ds):
    """Auto-shard policy OFF: the datasets were built under
    :func:`pipeline.data.stream.sharded`, so each worker already reads only its own
    share of the files (TensorFlow's FILE policy needs datasets that open files
    themselves, TFRecord; DATA would have every worker decode every file and keep a
    part). Each worker's batches hold ``train.batch_size`` samples, which the strategy
    splits across all replicas, each worker taking its replicas' pieces: one step
    consumes one global batch, so an epoch is ``n // train.batch_size`` steps, given to
    ``fit`` explicitly (Keras would count the worker's own batches)."""
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(opts)


def select_strategy(worker_timeout_s: float = 300.0) -> tf.distribute.Strategy:
    """MultiWorkerMirrored when TF_CONFIG names several workers (chief included),
    Mirrored on several GPUs, else the default strategy (one GPU or the CPU). The
    workers must all meet within ``worker_timeout_s`` (a first collective), else the
    process stops naming TF_CONFIG and the addresses it cannot reach."""
    if worker_role().workers > 1:
        with peers_within(worker_timeout_s):
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            barrier(strategy)
        return strategy
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def setup_hardware(cfg: Config) -> Hardware:
    """Pick the strategy; mixed precision and XLA default on for GPUs, off on CPU."""
    strategy = select_strategy(cfg.train.worker_timeout_s)
    gpus = len(tf.config.list_physical_devices("GPU"))
    mp = cfg.train.mixed_precision == "on" or (cfg.train.mixed_precision == "auto" and gpus > 0)
    xla = cfg.train.xla == "on" or (cfg.train.xla == "auto" and gpus > 0)
    keras.mixed_precision.set_global_policy("mixed_float16" if mp else "float32")
    log.info("strategy %s, %d GPU(s), mixed precision %s, XLA %s", type(strategy).__name__, gpus, mp, xla)
    return Hardware(strategy, gpus, mp, xla)


# === Schedule and optimizer ===


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


def fit_batch(cfg: Config, n_train: int) -> Config:
    """``cfg`` with ``train.batch_size`` shrunk to ``n_train`` when the training split
    holds fewer images than one batch: a user with six photos wants a model, not an
    error. The learning rate is kept (AdamW's step is nearly batch-size free)."""
    if 0 < n_train < cfg.train.batch_size:
        log.warning(
            "%s: %d training images, fewer than train.batch_size=%d; training with batches of %d",
            cfg.data.path or "the training split",
            n_train,
            cfg.train.batch_size,
            n_train,
        )
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=n_train))
    return cfg


def steps_per_epoch(cfg: Config, n_train: int) -> int:
    if cfg.train.steps_per_epoch:
        return cfg.train.steps_per_epoch
    return max(1, n_train // cfg.train.batch_size)


def make_optimizer(lr: float, total_steps: int, warmup_steps: int, weight_decay: float, offset: int = 0) -> AdamW:
    schedule = WarmupCosine(lr, total_steps, warmup_steps, offset) if total_steps > 1 else lr
    return AdamW(schedule, weight_decay=weight_decay)


@contextlib.contextmanager
def explain_empty_epochs(cfg: Config, n_files: int, skipped) -> Iterator[None]:
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
            f"images ({n_files} files, {len(skipped)} of them unreadable); lower train.batch_size"
        ) from None


def verbose() -> int:
    """Keras' live progress bar on a terminal, one line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


# === Callbacks ===


class RequireValidation(keras.callbacks.Callback):
    """Stop after the first epoch whose validation gave no metric.

    That happens when every validation image was unreadable: Keras would only warn,
    train on without model selection, and leave a model nobody can evaluate.
    """

    def __init__(self, monitor: str, where: str, skipped) -> None:
        super().__init__()
        self.monitor, self.where, self.skipped = monitor, where, skipped

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.monitor not in (logs or {}):
            raise DataError(
                f"{self.where}: the validation split gave no readable images ({len(self.skipped)} files skipped "
                f"so far, listed above), so there is no {self.monitor} to select a model by"
            )


def fit(
    model, task, cfg: Config, data, datasets, *, epochs: int, backup: Path, initial_epoch: int = 0, callbacks=()
) -> None:
    """``model.fit`` as every stage runs it.

    ``train.steps_per_epoch`` is honoured (over a repeated dataset); an epoch whose
    validation gave no metric stops the run before it is backed up or logged; a
    BackupAndRestore state in ``backup`` lets a killed run resume (the caller removes
    it once its stage is done); an epoch without a single batch is a data error.
    """
    train_ds, val_ds = datasets
    spe = cfg.train.steps_per_epoch
    if worker_role().workers > 1:
        # Workers read their own shares and may skip different unreadable files: over a
        # repeated dataset with a fixed step count none runs out before the others.
        spe = steps_per_epoch(cfg, len(data.train))
    where = cfg.data.path or cfg.data.val_images or "the validation split"
    with explain_empty_epochs(cfg, len(data.train), data.skipped):
        model.fit(
            train_ds.repeat() if spe else train_ds,
            validation_data=val_ds,
            initial_epoch=initial_epoch,
            epochs=epochs,
            steps_per_epoch=spe or None,
            callbacks=[
                RequireValidation(task.spec.monitor, where, data.skipped),  # first: nothing saved of such an epoch
                keras.callbacks.BackupAndRestore(str(backup)),
                *callbacks,
            ],
            verbose=verbose(),
        )


def best_so_far(log_path: Path, monitor: str, mode: str) -> float | None:
    """The best monitored value a CSV log holds, so resuming never overwrites a
    better checkpoint with a worse one."""
    if not log_path.is_file():
        return None
    rows = read_csv_log(
        log_path,
        "it keeps a resumed run from overwriting a better checkpoint with a worse one; delete it, and the "
        "stage's checkpoints folder, to start the stage over",
        columns=("epoch", monitor),
    )
    values = [v for r in rows if not math.isnan(v := r.get(monitor, math.nan))]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)
