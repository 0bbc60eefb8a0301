"""Detection's training half: readers, the anchor-free detector, its losses, COCO mAP
on the exported model, and the export signature (decoded boxes + sigmoid scores)."""

from __future__ import annotations

import logging

import numpy as np

from pipeline.core.images import ImageError, InputSpec, SkipCounter, geometry, prepare, read_image
from pipeline.data.augment import Affine, on_generator
from pipeline.tasks.base import Task
from pipeline.tasks.detection import SPEC
from pipeline.tasks.detection import boxes as B
from pipeline.tasks.detection import readers as det_data
from pipeline.tasks.detection.runtime import RUN_SCORE, RUNTIME

log = logging.getLogger(__name__)

MAX_BOXES = 100  # objects per image kept for training (more are rare and cost memory)
EVAL_SCORE = 0.01  # low threshold for mAP: the PR curve needs the low-confidence tail
# The mobile form's score floor in the op: measured on the real-photo detector, 0.05
# gives the same mAP as 0.01 (0.0410 both) and cuts the op's cost from 2.2 to 0.5 ms
# (1 thread, 320 px; per-class NMS then) by sending fewer candidates through NMS.
MOBILE_SCORE = 0.05
MAX_DETECTIONS, NMS_IOU = 100, 0.6  # what evaluate keeps, and the mobile form's op
MOBILE_SIGNATURE = [  # the SSD op's output ports, in order
    {"name": "location", "kind": "ssd_location", "meaning": "[1, K, 4] boxes ymin, xmin, ymax, xmax as ratios of the "
     "model input (letterboxed or stretched as 'input.resize' says), best first; K = max_detections"},
    {"name": "category", "kind": "ssd_category", "meaning": "[1, K] class index into the labels file (float)"},
    {"name": "score", "kind": "ssd_score", "meaning": "[1, K] sigmoid score of that class"},
    {"name": "number of detections", "kind": "ssd_count", "meaning": "[1] how many of the K slots hold detections"},
]  # fmt: skip


# === Data ===


def _augmenter(size: int, affine: Affine):
    """``affine``: ``Affine.of(cfg.data)`` (the task's default zoom lives in its config)."""
    from pipeline._keras import keras, keras_cv

    fmt = "xyxy"
    # float32 whatever the global policy: under mixed_float16, JitteredResize would get
    # float16 boxes and fail multiplying them by its float32 scales (a GPU run's default).
    f32 = {"dtype": "float32"}
    layers = [
        *affine.keras_cv_layers(bounding_box_format=fmt),
        keras_cv.layers.JitteredResize((size, size), scale_factor=affine.zoom, bounding_box_format=fmt, **f32),
        keras_cv.layers.RandomBrightness(0.15, value_range=(0, 255), **f32),
        keras_cv.layers.RandomContrast(value_range=(0, 255), factor=0.2, **f32),
    ]
    return keras.Sequential(on_generator(layers), name="augment")


def load_sample(split: det_data.DetSplit, i: int, spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``i`` prepared for the model, with its boxes mapped into input pixels."""
    img = _image(split, i)
    g = geometry(img.shape[:2], spec)
    return prepare(img, spec), g.to_input(split.placed(i, img.shape[:2])), split.classes[i]


def _image(split: det_data.DetSplit, i: int) -> np.ndarray:
    ref = split.images[i]
    return split.arrays[ref] if split.arrays is not None else read_image(ref)


def _sample_fn(split, spec, skipped: SkipCounter):
    blank = np.zeros((spec.size, spec.size, spec.channels), np.uint8)

    def load(i):
        i = int(i)
        sample = skipped.attempt(split.images[i], lambda: load_sample(split, i, spec))
        if sample is None:
            return blank, np.zeros((MAX_BOXES, 4), np.float32), np.full(MAX_BOXES, -1, np.float32), False
        x, b, c = sample
        k = min(len(c), MAX_BOXES)
        boxes = np.zeros((MAX_BOXES, 4), np.float32)
        classes = np.full(MAX_BOXES, -1, np.float32)
        boxes[:k], classes[:k] = b[:k], c[:k]
        return x, boxes, classes, True

    return load


SAMPLE_EXTRA_BYTES = MAX_BOXES * 5 * 4  # a sample's padded boxes and classes (float32)


def box_batches(split, cfg, spec, training: bool, skipped: SkipCounter, cache=None):
    """Batches of ``(normalized images, boxes (B, MAX_BOXES, 4), classes (B, MAX_BOXES))``,
    boxes in input pixels, padded with class -1; augmented when training. Shared by
    training and by the benchmark's keras-cv peer, so both see the same data. Images
    stream from their files through ``cache`` (``data.cache``'s plan; none: read each
    epoch); the synthetic set's arrays are in memory already."""
    from pipeline._keras import keras_cv, tf
    from pipeline.core.images import normalize
    from pipeline.data.stream import CachePlan, augmented, cached_and_shuffled, read_indexed

    d = cfg.data
    size, ch = spec.size, spec.channels
    cache = CachePlan("off") if cache is None or split.arrays is not None else cache
    ds = read_indexed(
        len(split),
        _sample_fn(split, spec, skipped),
        (tf.uint8, tf.float32, tf.float32),
        ((size, size, ch), (MAX_BOXES, 4), (MAX_BOXES,)),
        shuffle_seed=d.seed if training else None,  # indices: a full shuffle for free (once, before a cache)
        reshuffle=not cache.cached,
        training=training,
    )
    ds = cached_and_shuffled(ds, cache, training=training, n=len(split), shuffle_buffer=d.shuffle_buffer, seed=d.seed)
    ds = ds.map(lambda x, b, c: (tf.cast(x, tf.float32), b, c)).batch(cfg.train.batch_size, drop_remainder=training)
    augment = _augmenter(size, Affine.of(d)) if training and d.augment else None

    def augment_batch(x, b, c):
        out = augment({"images": x, "bounding_boxes": {"boxes": b, "classes": c}}, training=True)
        dense = keras_cv.bounding_box.to_dense(out["bounding_boxes"], max_boxes=MAX_BOXES)
        return out["images"], dense["boxes"], dense["classes"]

    if augment is not None:
        ds = augmented(ds, augment_batch)
    return ds.map(lambda x, b, c: (normalize(x, spec), b, c), num_parallel_calls=tf.data.AUTOTUNE)


def _detections(outputs: list[np.ndarray], size: int, score_threshold: float, iou: float = 0.5) -> list[dict]:
    """Per image, NMS'd detections in input pixels, from either form's stacked outputs:
    the raw ``[boxes, scores]`` (NMS here) or the mobile form's four (NMS done in the op)."""
    if len(outputs) == 4:
        return [B.ssd_detections(outputs, k, size, score_threshold) for k in range(len(outputs[0]))]
    return [B.nms(b, s, score_threshold, iou, MAX_DETECTIONS, size=size) for b, s in zip(outputs[0], outputs[1])]


def _mobile_extras(cfg) -> dict:
    letterbox = cfg.model.resize == "letterbox"
    return {
        "postprocess": {
            "in_graph": "TFLite_Detection_PostProcess: anchor decoding, class-agnostic (fast) NMS (IoU "
            f"{NMS_IOU}), each box with its best class, the {MAX_DETECTIONS} best with score >= {MOBILE_SCORE}",
            "mediapipe": "MediaPipe's ObjectDetector and the TFLite Task Library read this file as it is; they "
            "stretch the frame to the input size"
            + (
                ": this model was trained on letterboxed frames, so letterbox the frame yourself (centred, pad "
                "value 114) before handing it over, and map boxes back by undoing the letterbox"
                if letterbox
                else ", as this model was trained"
            ),
            "result": {"location": "ymin, xmin, ymax, xmax ratios of the input", "count": "valid slots"},
        },
        "anchor_points": len(B.anchor_points(cfg.model.input_size)),
    }


class Detection(Task):
    spec = SPEC
    runtime = RUNTIME

    # === Data ===
    def load_data(self, cfg):
        return det_data.load(cfg)

    def data_sources(self, cfg):
        return det_data.data_sources(cfg.data)

    def box_batches(self, split, cfg, spec, training: bool, skipped: SkipCounter | None = None):
        return box_batches(split, cfg, spec, training, skipped if skipped is not None else SkipCounter())

    def _dataset(self, data, split, cfg, spec, training: bool, cache_dir=None):
        from pipeline._keras import tf
        from pipeline.data.stream import plan_split
        from pipeline.tasks.detection.targets import assign_targets

        points = B.anchor_points(spec.size)
        k = len(data.class_names)

        def encode(x, b, c):
            return x, assign_targets(points, b, c, k)

        cache = None
        if split.arrays is None:
            sample_bytes = spec.size * spec.size * spec.channels + SAMPLE_EXTRA_BYTES
            name = "train" if training else "val"
            cache = plan_split(cfg, spec, name, split.images, sample_bytes, cache_dir)
        ds = box_batches(split, cfg, spec, training, data.skipped, cache)
        return ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def datasets(self, data, cfg, spec, cache_dir=None):
        return (
            self._dataset(data, data.train, cfg, spec, True, cache_dir),
            self._dataset(data, data.val, cfg, spec, False, cache_dir),
        )

    def eval_batches(self, data, cfg, spec, batch_size, limit=0):
        n = len(data.val) if not limit else min(limit, len(data.val))
        xs, ts = [], []
        for i in range(n):
            sample = data.skipped.attempt(data.val.images[i], lambda: load_sample(data.val, i, spec))  # noqa: B023
            if sample is None:
                continue
            x, b, c = sample
            xs.append(x)
            ts.append({"boxes": b, "classes": c})
            if len(xs) == batch_size:
                yield np.stack(xs), ts
                xs, ts = [], []
        if xs:
            yield np.stack(xs), ts

    def calibration_images(self, data, cfg, spec, n):
        rng = np.random.default_rng(cfg.data.seed)
        for i in np.sort(rng.permutation(len(data.train))[:n]):
            try:  # the image alone: calibration has no use for boxes that may not be placeable
                yield prepare(_image(data.train, int(i)), spec)
            except ImageError:
                continue

    # === Model, loss, metric ===
    def build_model(self, cfg, num_classes):
        from pipeline.models.detector import build_detector

        model = build_detector(cfg.model, num_classes)
        points = B.anchor_points(cfg.model.input_size)
        if model.outputs[0].shape[1] != len(points):
            raise ValueError(f"detector has {model.outputs[0].shape[1]} outputs per image, expected {len(points)}")
        return model

    def compile_args(self, cfg, num_classes):
        from pipeline.tasks.detection.targets import losses

        return {"loss": list(losses(B.anchor_points(cfg.model.input_size)))}

    def score(self, outputs, targets, class_names, spec):
        from pipeline.tasks.detection.metrics import coco_map

        truths = [t for batch in targets for t in batch]
        return coco_map(_detections(outputs, spec.size, EVAL_SCORE, NMS_IOU), truths, class_names)

    def agreement(self, a, b, spec):
        """Mean over images of matched detections (same class, IoU ≥ 0.5) / the larger count."""
        fractions = []
        for da, db in zip(_detections(a, spec.size, RUN_SCORE), _detections(b, spec.size, RUN_SCORE)):
            na, nb = int(da["count"]), int(db["count"])
            if not na and not nb:
                fractions.append(1.0)
                continue
            iou = B.box_iou(da["boxes"], db["boxes"]) * (da["classes"][:, None] == db["classes"][None])
            matched = 0
            while iou.size and iou.max() >= 0.5:
                i, j = np.unravel_index(iou.argmax(), iou.shape)
                iou[i, :], iou[:, j] = 0, 0
                matched += 1
            fractions.append(matched / max(na, nb))
        return float(np.mean(fractions)) if fractions else 1.0

    # === Export ===
    def export_forms(self, cfg):
        return tuple("" if p == "none" else p for p in cfg.export.detection_postprocess)

    def export_graph(self, model, cfg, form, class_names):
        from pipeline.tasks.base import ExportGraph
        from pipeline.tasks.detection import mobile

        if form != "mobile":
            raise ValueError(f"Unknown detection export form {form!r}. Expected 'mobile'.")
        m = cfg.model
        module = mobile.module(
            model, m.input_size, m.channels, len(class_names), max_detections=MAX_DETECTIONS,
            score_threshold=MOBILE_SCORE, iou_threshold=NMS_IOU,
        )  # fmt: skip
        return ExportGraph(module, uint8_input=True, float_outputs=True)

    def serving(self, outputs, cfg):
        from pipeline._keras import tf

        raw, logits = outputs  # raw distances are ReLU6'd in the model
        return {"boxes": B.decode(raw, B.anchor_points(cfg.model.input_size)), "scores": tf.sigmoid(logits)}

    def output_signature(self, class_names, form=""):
        if form == "mobile":
            return MOBILE_SIGNATURE
        return [
            {
                "name": "boxes",
                "kind": "boxes",
                "shape": [1, -1, 4],
                "meaning": "decoded boxes, one per anchor point: x1, y1, x2, y2 in model-input pixels "
                "(letterboxed or stretched as 'input.resize' says); run NMS on them",
            },
            {
                "name": "scores",
                "kind": "class_scores",
                # the shape ties the labels file to this tensor in the metadata: a model
                # copied without its sidecar still has its labels
                "shape": [1, -1, len(class_names)],
                "meaning": "sigmoid score per anchor point and class, in labels-file order",
            },
        ]

    def sidecar_extras(self, cfg, form=""):
        if form == "mobile":
            return _mobile_extras(cfg)
        return {
            "postprocess": {
                "steps": [
                    "clip the boxes to the model input (0 to size), as the mobile form does before its NMS",
                    "for each anchor point take its best class and score",
                    "drop points below score_threshold",
                    "non-max suppression per class (IoU above iou_threshold suppresses the lower score)",
                    "keep the max_detections best",
                    "map boxes from model-input pixels to the frame: x = (x - input_left) / scale_x, "
                    "y = (y - input_top) / scale_y (letterbox: the frame is scaled by "
                    "size / max(h, w) and centred; stretch: scale_x = size / w, scale_y = size / h)",
                ],
                "score_threshold": RUN_SCORE,
                "iou_threshold": 0.5,
                "max_detections": 100,
                "result": {
                    "boxes": "[K, 4] x1, y1, x2, y2 in frame pixels",
                    "scores": "[K] in [0, 1]",
                    "classes": "[K] index into the labels file",
                    "count": "K",
                },
                "implementation": "pipeline.tasks.detection.boxes.nms (OpenCV NMSBoxesBatched), used by evaluate "
                "and edgepipe run",
            },
            "anchor_points": len(B.anchor_points(cfg.model.input_size)),
        }

    # === Report figures ===
    def report_figures(self, report, out_dir):
        """Precision–recall curves at IoU 0.5 of the int8 variant (or Keras float)."""
        from pipeline.core.variants import preferred_int8
        from pipeline.report import pr_curves_figure

        name = preferred_int8(report["variants"])
        details = report["variants"][name]["details"] if name else report["keras_float_details"]
        recall = np.linspace(0, 1, 101)
        curves = {c: (recall, np.asarray(p), float(np.mean(p))) for c, p in details.get("pr50", {}).items()}
        return [pr_curves_figure(curves, out_dir)] if curves else []

    def sample_grid(self, images, outputs, targets, class_names):
        import cv2

        from pipeline.core.overlay import draw_boxes, grid

        # boxes in input pixels: the images are the model's inputs. The mobile form's
        # boxes are ratios of the input, so postprocess needs its size.
        spec = InputSpec(int(images.shape[1]))
        tiles = []
        for k in range(min(8, len(images))):
            img = images[k] if images[k].shape[-1] == 3 else np.repeat(images[k][..., :1], 3, -1)
            tile = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
            for b in targets[k]["boxes"]:
                cv2.rectangle(tile, tuple(int(v) for v in b[:2]), tuple(int(v) for v in b[2:]), (255, 255, 255), 1)
            p = self.runtime.postprocess([o[k : k + 1] for o in outputs], class_names, spec=spec)
            tiles.append(
                cv2.cvtColor(draw_boxes(tile, p["boxes"], p["classes"], p["scores"], class_names), cv2.COLOR_BGR2RGB)
            )
        return grid(tiles)


TASK = Detection()
