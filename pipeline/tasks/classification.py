"""Image classification: folder / IDX / synthetic data, softmax head, top-1 accuracy."""

from __future__ import annotations

import numpy as np

from pipeline.data import classification as cls_data
from pipeline.tasks import register_task
from pipeline.tasks.base import Task


def _augmenter(spec):
    from pipeline._keras import keras, keras_cv

    # keras-cv layers on [0, 255] floats; flips and small shifts keep labels valid.
    return keras.Sequential(
        [
            keras_cv.layers.RandomFlip("horizontal"),
            keras_cv.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect"),
            keras_cv.layers.RandomContrast(value_range=(0, 255), factor=0.2),
        ],
        name="augment",
    )


class Classification(Task):
    name = "classification"
    metric = "accuracy"
    data_formats = ("synthetic", "folder", "idx")
    default_config: dict = {}
    monitor = "val_accuracy"
    monitor_mode = "max"

    def load_data(self, cfg):
        return cls_data.load(cfg)

    def class_names(self, data):
        return data.class_names

    def datasets(self, data, cfg, spec):
        from pipeline.data.pipeline import training_dataset

        d = cfg.data
        augment = _augmenter(spec) if d.augment else None
        kw = dict(cache=d.cache, shuffle_buffer=d.shuffle_buffer, seed=d.seed)
        train = training_dataset(data.train, spec, cfg.train.batch_size, training=True, augment=augment, **kw)
        val = training_dataset(data.val, spec, cfg.train.batch_size, training=False, **kw)
        return train, val

    def eval_batches(self, data, cfg, spec, batch_size, limit=0):
        from pipeline.data.pipeline import iterate_numpy

        return iterate_numpy(data.val, spec, batch_size, limit)  # readers already shuffled val

    def calibration_images(self, data, cfg, spec, n):
        from pipeline.data.pipeline import iterate_numpy

        rng = np.random.default_rng(cfg.data.seed)
        idx = rng.permutation(len(data.train))[:n]
        for x, _ in iterate_numpy(data.train.take(np.sort(idx)), spec, 1):
            yield x[0]

    def build_model(self, cfg, num_classes):
        from pipeline.models import build_classifier

        return build_classifier(cfg.model, num_classes)

    def compile_args(self, cfg):
        from pipeline._keras import keras

        return {
            "loss": keras.losses.SparseCategoricalCrossentropy(),
            "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        }

    def score(self, outputs, targets, class_names):
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

    def agreement(self, a, b):
        return float((a[0].argmax(-1) == b[0].argmax(-1)).mean())

    def output_signature(self, class_names):
        return [
            {
                "name": "scores",
                "shape": [1, len(class_names)],
                "meaning": "softmax probability per class, in labels-file order",
            }
        ]

    def postprocess(self, outputs, class_names, top_k: int = 5, **kw):
        """Top-``top_k`` classes by score; ``spec``/``frame_shape`` are not needed here."""
        scores = outputs[0].reshape(-1)
        top = np.argsort(-scores)[:top_k]
        return [{"class_id": int(i), "label": class_names[i], "score": float(scores[i])} for i in top]

    def draw(self, frame, predictions, class_names):
        from pipeline.runtime.overlay import draw_labels, palette

        colors = palette(len(class_names))
        lines = [f"{p['label']} {p['score']:.2f}" for p in predictions]
        return draw_labels(frame, lines, colors=[colors[p["class_id"]] for p in predictions])

    def sample_grid(self, images, outputs, targets, class_names):
        from pipeline.report import image_grid

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


register_task(Classification())
