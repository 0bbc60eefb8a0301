"""What a segmenter's output means: a class mask in frame coordinates, as per-class
pixel fractions in JSON and as a blended overlay with a legend.

The exported model outputs per-pixel class logits at the input resolution; the class
map is their argmax, taken here because XNNPACK runs neither an int8 softmax nor an
ARG_MAX.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.core.images import geometry
from pipeline.core.overlay import blend_mask
from pipeline.tasks.base import TaskRuntime


class SegmentationRuntime(TaskRuntime):
    name = "segmentation"

    def postprocess(self, outputs, class_names, spec=None, frame_shape=None, alpha: float = 0.5, **kw):
        """``{"mask": uint8 HxW class ids in frame coordinates, ...}``; ``alpha`` is the overlay's opacity."""
        logits = np.asarray(outputs[0])[0]
        classes = logits.argmax(-1).astype(np.uint8)
        if spec is not None and frame_shape is not None:
            h, w = int(frame_shape[0]), int(frame_shape[1])
            classes = cv2.resize(geometry((h, w), spec).crop(classes), (w, h), interpolation=cv2.INTER_NEAREST)
        return {"mask": classes, "class_names": list(class_names), "alpha": float(alpha)}

    def to_json(self, predictions):
        mask, names = predictions["mask"], predictions["class_names"]
        counts = np.bincount(mask.reshape(-1), minlength=len(names))
        total = max(int(mask.size), 1)
        return {
            "classes": [
                {"class_id": i, "label": names[i], "fraction": round(float(c) / total, 4)}
                for i, c in enumerate(counts[: len(names)])
                if c
            ],
            "size": [int(mask.shape[1]), int(mask.shape[0])],
        }

    def classes_in(self, outputs):
        return int(outputs[0].shape[-1])  # a mask's colours and legend need every class

    def draw(self, frame, predictions, class_names):
        mask = predictions["mask"]
        if mask.shape != frame.shape[:2]:
            mask = cv2.resize(mask, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        return blend_mask(frame, mask, class_names, alpha=predictions.get("alpha", 0.5))


RUNTIME = SegmentationRuntime()
