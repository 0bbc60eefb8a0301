"""The interface every task implements."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


class Task:
    """One task's plug-in points; shared stages call nothing else task-specific.

    Attributes:
        name: the ``--task`` value.
        metric: the report.json metric name (``accuracy``, ``map50_95``, ``miou``).
        data_formats: the ``data.format`` values this task reads.
        default_config: config values that differ from the global defaults.
        monitor: the Keras log key that checkpointing and early stopping watch.
    """

    name: str = ""
    metric: str = ""
    data_formats: tuple[str, ...] = ()
    default_config: dict = {}
    monitor: str = "val_loss"
    monitor_mode: str = "min"

    # === Data ===
    def load_data(self, cfg) -> Any:
        """Read the dataset once; returns an object the methods below accept."""
        raise NotImplementedError

    def class_names(self, data) -> tuple[str, ...]:
        raise NotImplementedError

    def datasets(self, data, cfg, spec):
        """``(train_ds, val_ds)`` of batched, normalized tf.data for ``fit``."""
        raise NotImplementedError

    def eval_batches(self, data, cfg, spec, batch_size: int, limit: int = 0) -> Iterator[tuple[np.ndarray, Any]]:
        """``(uint8 images, targets)`` of the validation split, for LiteRT evaluation."""
        raise NotImplementedError

    def calibration_images(self, data, cfg, spec, n: int) -> Iterator[np.ndarray]:
        """Up to ``n`` prepared uint8 training images for int8 calibration."""
        raise NotImplementedError

    # === Model, loss, metric ===
    def build_model(self, cfg, num_classes: int):
        raise NotImplementedError

    def compile_args(self, cfg) -> dict:
        """``loss`` and ``metrics`` for ``model.compile``."""
        raise NotImplementedError

    def score(self, outputs: list[np.ndarray], targets: list, class_names) -> dict:
        """Task metrics from stacked model outputs; must include ``self.metric``."""
        raise NotImplementedError

    def agreement(self, a: list[np.ndarray], b: list[np.ndarray]) -> float:
        """Fraction in [0, 1] of predictions where two models agree."""
        raise NotImplementedError

    # === Export and post-processing ===
    def serving(self, outputs) -> dict:
        """The exported graph's outputs: Keras outputs → ``{name: tensor}``.

        In-graph post-processing (box decoding, an argmax) goes here, in TF ops. The
        TFLite file lists the outputs in alphabetical order of the names, and
        :meth:`output_signature` must list them in that order too.
        """
        return {"scores": outputs}

    def output_signature(self, class_names) -> list[dict]:
        """What each output tensor means, for the sidecar; alphabetical by name."""
        raise NotImplementedError

    def sidecar_extras(self, cfg) -> dict:
        """Task-specific sidecar fields, e.g. how an app post-processes the outputs."""
        return {}

    def postprocess(self, outputs: list[np.ndarray], class_names, **kw) -> Any:
        """One frame's outputs (batch of 1) → JSON-ready predictions.

        Keyword args the runner passes: ``spec`` (the model's InputSpec) and
        ``frame_shape`` (``(h, w)`` of the original frame), so that boxes and masks
        come back in frame coordinates; plus task options such as ``top_k`` or
        ``score_threshold``.
        """
        raise NotImplementedError

    def to_json(self, predictions: Any) -> Any:
        """``postprocess`` predictions → plain JSON (e.g. a mask → per-class pixel counts)."""
        return predictions

    def draw(self, frame: np.ndarray, predictions: Any, class_names) -> np.ndarray:
        """Overlay ``postprocess`` predictions on a BGR frame (in place, returned)."""
        raise NotImplementedError

    # === Report figures ===
    def sample_grid(
        self, images: np.ndarray, outputs: list[np.ndarray], targets: list, class_names
    ) -> np.ndarray | None:
        """An RGB uint8 grid of sample predictions (evaluate saves it as a PNG), or None.

        ``images`` are prepared uint8 inputs, ``outputs`` the model's outputs for them
        and ``targets`` their ground truth, in ``eval_batches`` form.
        """
        return None

    def report_figures(self, report: dict, out_dir) -> list:
        """Task-specific PNGs for the report (e.g. a confusion matrix), written into
        ``out_dir`` from ``report.json`` data; returns their paths. Default: none."""
        return []
