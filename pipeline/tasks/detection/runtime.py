"""What a detector's outputs mean: NMS'd boxes in frame pixels, as JSON and drawn.

The exported graph ends in decoded boxes (model-input pixels) and sigmoid class
scores; NMS runs here, in :func:`boxes.nms` (OpenCV's batched NMS), for evaluation
and the video runner alike.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.images import geometry
from pipeline.core.overlay import draw_boxes
from pipeline.tasks.base import TaskRuntime
from pipeline.tasks.detection import boxes as B

RUN_SCORE = 0.3  # default threshold when drawing / serving predictions


class DetectionRuntime(TaskRuntime):
    name = "detection"
    trackable = True

    def postprocess(
        self,
        outputs,
        class_names,
        spec=None,
        frame_shape=None,
        score_threshold: float = RUN_SCORE,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        **kw,
    ):
        """One image's outputs → NMS'd detections, in frame pixels when ``frame_shape``
        is given (else input pixels). Either form: decoded boxes and scores (NMS here),
        or the four outputs of the SSD post-processing op (the mobile form, ours or a
        third party's: boxes as ratios, NMS done in the model), which need ``spec``."""
        if len(outputs) == 4:
            if spec is None:
                raise ValueError("the SSD form's boxes are ratios of the input: postprocess needs spec")
            d = B.ssd_detections(outputs, 0, spec.size, score_threshold)
            d = {k: v[:max_detections] if k != "count" else np.int32(min(int(v), max_detections)) for k, v in d.items()}
        else:
            size = spec.size if spec is not None else None
            d = B.nms(outputs[0][0], outputs[1][0], score_threshold, iou_threshold, max_detections, size=size)
        boxes = d["boxes"]
        if frame_shape is not None and spec is not None:
            h, w = frame_shape[:2]
            boxes = np.clip(geometry((h, w), spec).to_frame(boxes), 0, [w, h, w, h])
            # A box that lay in the letterbox padding has no area once clipped: drop it.
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, d = boxes[keep], {k: v[keep] for k, v in d.items() if k != "count"}
            d["count"] = int(keep.sum())
        return {
            "boxes": boxes,
            "scores": d["scores"],
            "classes": d["classes"],
            "labels": [class_names[k] if k < len(class_names) else str(k) for k in d["classes"]],
            "count": int(d["count"]),
        }

    def classes_in(self, outputs):
        # the raw form scores every class per point; the SSD form gives class ids only
        return int(outputs[1].shape[-1]) if len(outputs) == 2 else None

    def to_json(self, predictions):
        ids = predictions.get("track_ids")
        out = [
            {"label": lab, "class_id": int(c), "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
            for b, s, c, lab in zip(
                predictions["boxes"], predictions["scores"], predictions["classes"], predictions["labels"]
            )
        ]
        if ids is not None:  # tracked: each object keeps its id from frame to frame
            for o, tid in zip(out, ids):
                o["track_id"] = int(tid)
        return out

    def draw(self, frame, predictions, class_names):
        ids = predictions.get("track_ids")
        captions = None
        if ids is not None:
            captions = [
                f"#{int(t)} {lab} {float(s):.2f}"
                for t, lab, s in zip(ids, predictions["labels"], predictions["scores"])
            ]
        return draw_boxes(
            frame, predictions["boxes"], predictions["classes"], predictions["scores"], class_names, captions
        )


RUNTIME = DetectionRuntime()
