"""What a task is: a spec (data), a runtime half and a training half.

A task is one folder, ``pipeline/tasks/<name>/``, plus its line in the registry
(:mod:`pipeline.core.registry`):

* ``__init__.py`` holds its :class:`~pipeline.core.registry.TaskSpec`: names, formats,
  defaults, demo settings; plain data, importable anywhere.
* ``runtime.py`` holds its :class:`TaskRuntime`: what a deployed model's outputs mean
  (post-processing, JSON, drawing), with NumPy and OpenCV only, so ``edgepipe run``
  works where TensorFlow is not installed.
* ``task.py`` holds its :class:`Task`: data reading, model, loss, metric and the export
  signature, which the shared stages call and nothing else does.

Nothing outside a task's folder branches on its name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.registry import TaskSpec


@dataclass(frozen=True)
class ExportGraph:
    """A task's own graph for one export form (e.g. detection's mobile form, which ends
    in a post-processing op): ``module.serve(image)`` is what the converter takes.

    Attributes:
        module: a ``tf.Module`` whose ``serve`` is a ``tf.function`` of the image.
        uint8_input: full-integer presets take uint8 input whatever ``export.int8_io``
            says (MediaPipe reads uint8 or float32 input only).
        float_outputs: the outputs stay float32 in every preset (an op that computes
            in float, such as NMS, gives float outputs).
    """

    module: Any
    uint8_input: bool = False
    float_outputs: bool = False


class TaskRuntime:
    """What a deployed model's outputs mean: NumPy and OpenCV only."""

    name: str = ""
    # Whether postprocess gives boxes the runner can track (--track): then its
    # predictions are a dict with "boxes" (K, 4) in frame pixels, "scores" and "classes".
    trackable: bool = False

    def postprocess(self, outputs: list[np.ndarray], class_names, **kw) -> Any:
        """One frame's outputs (batch of 1) → predictions.

        Keyword args the runner passes: ``spec`` (the model's InputSpec) and
        ``frame_shape`` (``(h, w)`` of the original frame), so that boxes and masks
        come back in frame coordinates; plus the task's ``run_options``.
        """
        raise NotImplementedError

    def to_json(self, predictions: Any) -> Any:
        """``postprocess`` predictions → plain JSON (e.g. a mask → per-class pixel fractions)."""
        return predictions

    def classes_in(self, outputs: list[np.ndarray]) -> int | None:
        """How many classes the model's outputs score, where every one needs a label
        (a class without one would fail mid-run); None where labels are optional."""
        return None

    def draw(self, frame: np.ndarray, predictions: Any, class_names) -> np.ndarray:
        """Overlay ``postprocess`` predictions on a BGR frame (in place, returned)."""
        raise NotImplementedError


class Task:
    """The training half: the four plug-in points of the shared stages (data, model,
    loss and metric, export signature) plus the report's task figures."""

    spec: TaskSpec
    runtime: TaskRuntime

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def metric(self) -> str:
        return self.spec.metric

    # === Data ===
    def load_data(self, cfg) -> Any:
        """Read the dataset once; returns an object the methods below accept, with a
        ``skipped`` counter of the unreadable files this stage met."""
        raise NotImplementedError

    def class_names(self, data) -> tuple[str, ...]:
        return data.class_names

    def data_sources(self, cfg) -> list:
        """``(name, path)`` of the files and folders :meth:`load_data` reads that no
        ``data.*`` setting names (the images a COCO file lists beside it, the folders a
        YOLO data.yaml names): resume's data key covers them too."""
        return []

    def unseen_classes(self, data) -> list[str]:
        """Classes that had training images, every one of them unreadable (skipped):
        the model learned nothing of them, yet they ship in labels.txt. Asked after
        training, when every file has been read once."""
        return []

    def datasets(self, data, cfg, spec, cache_dir=None):
        """``(train_ds, val_ds)`` of batched, normalized tf.data for ``fit``; splits read
        from files are cached as ``data.cache`` says, on disk under ``cache_dir``."""
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

    def compile_args(self, cfg, num_classes: int) -> dict:
        """``loss`` and ``metrics`` for ``model.compile``."""
        raise NotImplementedError

    def score(self, outputs: list[np.ndarray], targets: list, class_names, spec) -> dict:
        """Task metrics from stacked model outputs (of any export form), for an input of
        ``spec``; must include ``self.spec.metric``."""
        raise NotImplementedError

    def agreement(self, a: list[np.ndarray], b: list[np.ndarray], spec) -> float:
        """Fraction in [0, 1] of predictions where two models agree."""
        raise NotImplementedError

    # === Export ===
    def export_forms(self, cfg) -> tuple[str, ...]:
        """The forms export writes of every variant: ``""`` is the task's own (written
        as ``<variant>.tflite``), others go to ``<variant>_<form>.tflite``."""
        return ("",)

    def export_graph(self, model, cfg, form: str, class_names) -> ExportGraph | None:
        """The graph of a form other than ``""``; None: the model and :meth:`serving`."""
        return None

    def serving(self, outputs, cfg) -> dict:
        """The exported graph's outputs: Keras outputs → ``{name: tensor}``.

        In-graph post-processing (box decoding) goes here, in TF ops. The TFLite file
        lists the outputs in alphabetical order of the names, and
        :meth:`output_signature` lists them in that order too.
        """
        return {"scores": outputs}

    def output_signature(self, class_names, form: str = "") -> list[dict]:
        """What each output tensor means, for the sidecar and the TFLite metadata, in the
        exported graph's order (alphabetical by name for :meth:`serving`'s dict; the op's
        port order for a post-processing op). ``kind`` says how metadata describes it:
        ``class_scores``, ``boxes``, ``per_class_scores`` (a mask per class) or the SSD
        op's ``ssd_location``, ``ssd_category``, ``ssd_score``, ``ssd_count``."""
        raise NotImplementedError

    def sidecar_extras(self, cfg, form: str = "") -> dict:
        """Task-specific sidecar fields, e.g. how an app post-processes the outputs."""
        return {}

    # === Report figures ===
    def sample_grid(
        self, images: np.ndarray, outputs: list[np.ndarray], targets: list, class_names
    ) -> np.ndarray | None:
        """An RGB uint8 grid of sample predictions (evaluate saves it as a PNG), or None."""
        return None

    def report_figures(self, report: dict, out_dir) -> list:
        """Task-specific PNGs for the report, from ``report.json`` data; their paths."""
        return []
