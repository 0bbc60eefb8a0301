"""What a classifier's output means: top-k labels, as JSON and drawn on a frame."""

from __future__ import annotations

import numpy as np

from pipeline.core.overlay import draw_labels, palette
from pipeline.tasks.base import TaskRuntime


class ClassificationRuntime(TaskRuntime):
    name = "classification"

    def postprocess(self, outputs, class_names, top_k: int = 5, **kw):
        """Top-``top_k`` classes by score; ``spec``/``frame_shape`` are not needed here."""
        scores = outputs[0].reshape(-1)
        top = np.argsort(-scores)[:top_k]
        return [{"class_id": int(i), "label": class_names[i], "score": float(scores[i])} for i in top]

    def classes_in(self, outputs):
        return int(outputs[0].shape[-1])

    def draw(self, frame, predictions, class_names):
        colors = palette(len(class_names))
        lines = [f"{p['label']} {p['score']:.2f}" for p in predictions]
        return draw_labels(frame, lines, colors=[colors[p["class_id"]] for p in predictions])


RUNTIME = ClassificationRuntime()
