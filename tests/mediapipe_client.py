"""Runs exported models in MediaPipe Tasks; executed by the MediaPipe venv's Python.

MediaPipe needs opencv-contrib-python, which clashes with our opencv-python, so
tests/test_metadata.py runs this file in its own virtual environment:

    python tests/mediapipe_client.py JOB.json OUT.json

JOB.json: ``[{"model": PATH, "kind": "classifier" | "segmenter" | "detector", "image": NPY_PATH}]``
(RGB uint8 images). OUT.json gets one result per job: categories with index, label
and score; the category mask and the confidence masks; or detections (box in image
pixels, category name, score).
"""

import json
import sys

import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import BaseOptions, vision


def classify(model: str, image: np.ndarray) -> dict:
    opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model), max_results=100)
    with vision.ImageClassifier.create_from_options(opts) as c:
        r = c.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
    cats = r.classifications[0].categories
    return {"categories": [{"index": x.index, "label": x.category_name, "score": x.score} for x in cats]}


def segment(model: str, image: np.ndarray) -> dict:
    opts = vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=model), output_category_mask=True, output_confidence_masks=True
    )
    with vision.ImageSegmenter.create_from_options(opts) as s:
        r = s.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
        labels = list(s.labels)
    return {
        "labels": labels,
        "category_mask": r.category_mask.numpy_view().tolist(),
        "confidence_masks": [m.numpy_view().tolist() for m in r.confidence_masks],
    }


def detect(model: str, image: np.ndarray) -> dict:
    opts = vision.ObjectDetectorOptions(
        base_options=BaseOptions(model_asset_path=model), max_results=-1, score_threshold=0.0
    )
    with vision.ObjectDetector.create_from_options(opts) as d:
        r = d.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
    out = []
    for det in r.detections:
        b, c = det.bounding_box, det.categories[0]
        out.append({"box": [b.origin_x, b.origin_y, b.width, b.height], "label": c.category_name, "score": c.score})
    return {"detections": out}


def main(job_path: str, out_path: str) -> None:
    results = []
    for job in json.load(open(job_path)):
        image = np.ascontiguousarray(np.load(job["image"]))
        fn = {"classifier": classify, "segmenter": segment, "detector": detect}[job["kind"]]
        results.append(fn(job["model"], image))
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
