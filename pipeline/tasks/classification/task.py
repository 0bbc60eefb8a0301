"""Classification's training half: readers, the classifier, cross-entropy and accuracy."""

from __future__ import annotations

import numpy as np

from pipeline.data.augment import Affine, on_generator
from pipeline.tasks.base import Task
from pipeline.tasks.classification import SPEC
from pipeline.tasks.classification import readers as cls_data
from pipeline.tasks.classification.runtime import RUNTIME


def _augmenter(affine: Affine):
    from pipeline._keras import keras, keras_cv

    # keras-cv layers on [0, 255] floats; flips, rotations, shears (data.*) and small
    # shifts keep labels valid. float32 whatever the global policy: input work.
    layers = [
        *affine.keras_cv_layers(),
        keras_cv.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", dtype="float32"),
        keras_cv.layers.RandomContrast(value_range=(0, 255), factor=0.2, dtype="float32"),
    ]
    return keras.Sequential(on_generator(layers), name="augment")


class Classification(Task):
    spec = SPEC
    runtime = RUNTIME

    def load_data(self, cfg):
        return cls_data.load(cfg)

    def unseen_classes(self, data):
        train = data.train
        if not train.paths:  # arrays in memory: nothing to skip
            return []
        unread, k = set(data.skipped.paths), len(data.class_names)
        read = np.fromiter((str(p) not in unread for p in train.paths), bool, len(train.paths))
        labels = np.asarray(train.labels, int)
        had, kept = np.bincount(labels, minlength=k), np.bincount(labels[read], minlength=k)
        return [data.class_names[c] for c in np.flatnonzero((had > 0) & (kept == 0))]

    def datasets(self, data, cfg, spec, cache_dir=None):
        from pipeline.data.stream import plan_split
        from pipeline.tasks.classification.pipeline import training_dataset

        d = cfg.data
        augment = _augmenter(Affine.of(d)) if d.augment else None
        kw = dict(shuffle_buffer=d.shuffle_buffer, seed=d.seed, skipped=data.skipped)
        sample_bytes = spec.size * spec.size * spec.channels + 4
        train, val = (
            training_dataset(
                s, spec, cfg.train.batch_size, training=name == "train", augment=augment if name == "train" else None,
                cache=None if s.images is not None else plan_split(cfg, spec, name, s.paths, sample_bytes,
                                                                        cache_dir), **kw,
            )
            for s, name in ((data.train, "train"), (data.val, "val"))
        )  # fmt: skip
        return train, val

    def eval_batches(self, data, cfg, spec, batch_size, limit=0):
        from pipeline.tasks.classification.pipeline import iterate_numpy

        return iterate_numpy(data.val, spec, batch_size, limit, data.skipped)  # readers already shuffled val

    def calibration_images(self, data, cfg, spec, n):
        from pipeline.tasks.classification.pipeline import iterate_numpy

        rng = np.random.default_rng(cfg.data.seed)
        idx = rng.permutation(len(data.train))[:n]
        for x, _ in iterate_numpy(data.train.take(np.sort(idx)), spec, 1, skipped=data.skipped):
            yield x[0]

    def build_model(self, cfg, num_classes):
        from pipeline.models import build_classifier

        return build_classifier(cfg.model, num_classes)

    def compile_args(self, cfg, num_classes):
        from pipeline._keras import keras

        return {
            "loss": keras.losses.SparseCategoricalCrossentropy(),
            "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        }

    def score(self, outputs, targets, class_names, spec=None):
        scores = outputs[0]
        labels = np.concatenate(targets)
        pred = scores.argmax(-1)
        k = len(class_names)
        confusion = np.zeros((k, k), np.int64)
        np.add.at(confusion, (labels, pred), 1)
        per_class = {
            name: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None
            for i, name in enumerate(class_names)
        }
        return {
            "accuracy": float((pred == labels).mean()),
            "per_class_accuracy": per_class,
            "confusion": confusion.tolist(),
        }

    def agreement(self, a, b, spec=None):
        return float((a[0].argmax(-1) == b[0].argmax(-1)).mean())

    def output_signature(self, class_names, form=""):
        return [
            {
                "name": "scores",
                "kind": "class_scores",
                "shape": [1, len(class_names)],
                "meaning": "softmax probability per class, in labels-file order",
            }
        ]

    def sample_grid(self, images, outputs, targets, class_names):
        from pipeline.core.overlay import image_grid

        scores = outputs[0]
        pred = scores.argmax(-1)
        captions = [
            f"{class_names[p]} {scores[i, p]:.2f}" + ("" if p == t else f" (true {class_names[t]})")
            for i, (p, t) in enumerate(zip(pred, targets))
        ]
        return image_grid(images, captions, [p == t for p, t in zip(pred, targets)])

    def report_figures(self, report, out_dir):
        from pipeline.report import confusion_figure

        return [confusion_figure(report, out_dir)]


TASK = Classification()
