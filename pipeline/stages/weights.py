"""Model weights in the run folder: atomic saves, loads that name the file, rebuilds."""

from __future__ import annotations

from pathlib import Path

from pipeline._keras import keras
from pipeline.core.config import Config
from pipeline.core.rundir import PRODUCER, StageInputError, atomic_path
from pipeline.tasks import get_task


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
    except (OSError, ValueError, KeyError, TypeError) as e:  # h5py: KeyError for a damaged group
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
