"""Object detection: COCO / VOC / YOLO / synthetic data, an FCOS-style detector,
COCO mAP on the TFLite model, NMS in shared post-processing.

The exported graph ends in decoded boxes (input pixels) and sigmoid class scores,
two outputs with their own int8 scales. NMS runs after the model, in
:func:`pipeline.boxes.nms` (OpenCV's batched NMS), which the evaluator and the
video runner both call through :meth:`Detection.postprocess`.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline import boxes as B
from pipeline.data import detection as det_data
from pipeline.data.images import ImageError, geometry, prepare, read_image
from pipeline.tasks import register_task
from pipeline.tasks.base import Task

log = logging.getLogger(__name__)

MAX_BOXES = 100  # objects per image kept for training (more are rare and cost memory)
EVAL_SCORE = 0.01  # low threshold for mAP: the PR curve needs the low-confidence tail
RUN_SCORE = 0.3  # default threshold when drawing / serving predictions


# === Loss ===


def _giou(a, b):
    """Element-wise GIoU of ``xyxy`` boxes (…, 4). keras-cv's GIoULoss is pairwise
    (N × M), which at 2,000 points per image is 4 M pairs; this is N."""
    from pipeline._keras import tf

    lt, rb = tf.maximum(a[..., :2], b[..., :2]), tf.minimum(a[..., 2:], b[..., 2:])
    inter = tf.reduce_prod(tf.nn.relu(rb - lt), -1)
    area = lambda x: tf.reduce_prod(tf.nn.relu(x[..., 2:] - x[..., :2]), -1)  # noqa: E731
    union = area(a) + area(b) - inter
    hull = tf.reduce_prod(tf.maximum(a[..., 2:], b[..., 2:]) - tf.minimum(a[..., :2], b[..., :2]), -1)
    return inter / (union + 1e-7) - (hull - union) / (hull + 1e-7)


def _losses(points: B.Points):
    from pipeline._keras import keras, tf

    class BoxLoss(keras.losses.Loss):
        """GIoU on decoded boxes, plus L1 on the distances (in units), weighted by centre-ness."""

        def call(self, y_true, y_pred):
            box, w = y_true[..., :4], y_true[..., 4]
            pred = B.decode(y_pred, points)
            target = tf.concat([points.centers - box[..., :2], box[..., 2:] - points.centers], -1)
            target = tf.clip_by_value(target / points.units[:, None], 0.0, 6.0)
            l1 = tf.reduce_sum(tf.abs(y_pred - target), -1)
            per_point = (1.0 - _giou(pred, box)) + 0.25 * l1
            n = tf.cast(tf.shape(y_true)[0], tf.float32)
            return 2.0 * tf.reduce_sum(w * per_point, -1) * n / tf.maximum(tf.reduce_sum(w), 1.0)

    class QualityFocalLoss(keras.losses.Loss):
        """Sigmoid BCE against soft (centre-ness) targets, down-weighting easy points."""

        def call(self, y_true, y_pred):
            p = tf.sigmoid(y_pred)
            ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=y_pred)
            per_point = tf.reduce_sum(ce * tf.square(y_true - p), -1)
            n = tf.cast(tf.shape(y_true)[0], tf.float32)
            pos = tf.reduce_sum(tf.cast(tf.reduce_max(y_true, -1) > 0, tf.float32))
            return tf.reduce_sum(per_point, -1) * n / tf.maximum(pos, 1.0)

    return BoxLoss(name="box_loss"), QualityFocalLoss(name="cls_loss")


# === Data ===


def _augmenter(size: int):
    from pipeline._keras import keras, keras_cv

    fmt = "xyxy"
    return keras.Sequential(
        [
            keras_cv.layers.RandomFlip("horizontal", bounding_box_format=fmt),
            keras_cv.layers.JitteredResize((size, size), scale_factor=(0.75, 1.3), bounding_box_format=fmt),
            keras_cv.layers.RandomBrightness(0.15, value_range=(0, 255)),
            keras_cv.layers.RandomContrast(value_range=(0, 255), factor=0.2),
        ],
        name="augment",
    )


def load_sample(split: det_data.DetSplit, i: int, spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``i`` prepared for the model, with its boxes mapped into input pixels."""
    ref = split.images[i]
    img = split.arrays[ref] if split.arrays is not None else read_image(ref)
    g = geometry(img.shape[:2], spec)
    return prepare(img, spec), g.to_input(split.boxes[i]), split.classes[i]


def _sample_fn(split, spec):
    from pipeline.data.pipeline import SKIPPED

    blank = np.zeros((spec.size, spec.size, spec.channels), np.uint8)

    def load(i):
        i = int(i)
        try:
            x, b, c = load_sample(split, i, spec)
        except ImageError as e:
            SKIPPED.add(str(split.images[i]), str(e))
            return blank, np.zeros((MAX_BOXES, 4), np.float32), np.full(MAX_BOXES, -1, np.float32), False
        k = min(len(c), MAX_BOXES)
        boxes = np.zeros((MAX_BOXES, 4), np.float32)
        classes = np.full(MAX_BOXES, -1, np.float32)
        boxes[:k], classes[:k] = b[:k], c[:k]
        return x, boxes, classes, True

    return load


class Detection(Task):
    name = "detection"
    metric = "map50_95"
    data_formats = ("synthetic", "coco", "voc", "yolo")
    default_config: dict = {
        "data": {"synthetic_samples": 1000, "synthetic_classes": 4, "shuffle_buffer": 512},
        "model": {"input_size": 320, "width": 0.75, "resize": "letterbox", "dropout": 0.0},
        "train": {"epochs": 30, "batch_size": 16, "learning_rate": 0.004, "early_stopping_patience": 8},
        "prune": {"epochs": 6},  # 2 epochs cost 14 mAP points at 50 % sparsity, 6 cost 4.5 (README)
        "qat": {"epochs": 3},
        # int8 in and out: a uint8 input or output adds QUANTIZE ops that XNNPACK does not take.
        "export": {"representative_samples": 200, "int8_io": "int8"},
    }
    monitor = "val_loss"
    monitor_mode = "min"

    def __init__(self) -> None:
        self._points: dict[int, B.Points] = {}

    def points(self, size: int) -> B.Points:
        """Anchor points for an input size; building a model registers them for ``serving``."""
        if size not in self._points:
            self._points[size] = B.anchor_points(size)
        return self._points[size]

    # === Data ===
    def load_data(self, cfg):
        return det_data.load(cfg)

    def class_names(self, data):
        return data.class_names

    def box_batches(self, split, cfg, spec, training: bool):
        """Batches of ``(normalized images, boxes (B, MAX_BOXES, 4), classes (B, MAX_BOXES))``,
        boxes in input pixels, padded with class -1; augmented when training. Shared by
        training and by the benchmark's keras-cv peer, so both see the same data."""
        from pipeline._keras import keras_cv, tf
        from pipeline.data.images import normalize

        d = cfg.data
        load = _sample_fn(split, spec)
        ds = tf.data.Dataset.range(len(split))
        if training:  # shuffle indices, not pixels: cheap and a full shuffle
            ds = ds.shuffle(len(split), seed=d.seed, reshuffle_each_iteration=True)
        ds = ds.map(
            lambda i: tf.numpy_function(load, [i], [tf.uint8, tf.float32, tf.float32, tf.bool]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=not training,
        )
        ds = ds.filter(lambda x, b, c, ok: ok)
        size, ch = spec.size, spec.channels

        def shape(x, b, c, ok):
            x = tf.ensure_shape(x, (size, size, ch))
            return tf.cast(x, tf.float32), tf.ensure_shape(b, (MAX_BOXES, 4)), tf.ensure_shape(c, (MAX_BOXES,))

        ds = ds.map(shape).batch(cfg.train.batch_size, drop_remainder=training)
        augment = _augmenter(size) if training and d.augment else None

        def augmented(x, b, c):
            if augment is not None:
                out = augment({"images": x, "bounding_boxes": {"boxes": b, "classes": c}}, training=True)
                x = out["images"]
                dense = keras_cv.bounding_box.to_dense(out["bounding_boxes"], max_boxes=MAX_BOXES)
                b, c = dense["boxes"], dense["classes"]
            return normalize(x, spec), b, c

        return ds.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)

    def _dataset(self, split, cfg, spec, training: bool, num_classes: int):
        from pipeline._keras import tf

        points = self.points(spec.size)

        def encode(x, b, c):
            return x, B.assign_targets(points, b, c, num_classes)

        ds = self.box_batches(split, cfg, spec, training)
        return ds.map(encode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def datasets(self, data, cfg, spec):
        k = len(data.class_names)
        return self._dataset(data.train, cfg, spec, True, k), self._dataset(data.val, cfg, spec, False, k)

    def eval_batches(self, data, cfg, spec, batch_size, limit=0):
        from pipeline.data.pipeline import SKIPPED

        n = len(data.val) if not limit else min(limit, len(data.val))
        xs, ts = [], []
        for i in range(n):
            try:
                x, b, c = load_sample(data.val, i, spec)
            except ImageError as e:
                SKIPPED.add(str(data.val.images[i]), str(e))
                continue
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
            try:
                yield load_sample(data.train, int(i), spec)[0]
            except ImageError:
                continue

    # === Model, loss, metric ===
    def build_model(self, cfg, num_classes):
        from pipeline.models.detector import build_detector

        model = build_detector(cfg.model, num_classes)
        points = self.points(cfg.model.input_size)
        if model.outputs[0].shape[1] != len(points):
            raise ValueError(f"detector has {model.outputs[0].shape[1]} outputs per image, expected {len(points)}")
        return model

    def compile_args(self, cfg):
        return {"loss": list(_losses(self.points(cfg.model.input_size)))}

    def score(self, outputs, targets, class_names):
        truths = [t for batch in targets for t in batch]
        dets = [B.nms(b, s, EVAL_SCORE, 0.6, 100) for b, s in zip(outputs[0], outputs[1])]
        return B.coco_map(dets, truths, class_names)

    def agreement(self, a, b):
        """Mean over images of matched detections (same class, IoU ≥ 0.5) / the larger count."""
        fractions = []
        for ba, sa, bb, sb in zip(a[0], a[1], b[0], b[1]):
            da, db = B.nms(ba, sa, RUN_SCORE), B.nms(bb, sb, RUN_SCORE)
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

    # === Export and post-processing ===
    def serving(self, outputs):
        from pipeline._keras import tf

        raw, logits = outputs  # raw distances are ReLU6'd in the model
        size = int(raw.shape[1])
        points = next((p for p in self._points.values() if len(p) == size), None)
        if points is None:
            raise ValueError(f"no anchor points for {size} outputs: build the model through this task")
        return {"boxes": B.decode(raw, points), "scores": tf.sigmoid(logits)}

    def output_signature(self, class_names):
        return [
            {
                "name": "boxes",
                "meaning": "decoded boxes, one per anchor point: x1, y1, x2, y2 in model-input pixels "
                "(letterboxed or stretched as 'input.resize' says); run NMS on them",
            },
            {
                "name": "scores",
                "meaning": "sigmoid score per anchor point and class, in labels-file order",
            },
        ]

    def sidecar_extras(self, cfg):
        return {
            "postprocess": {
                "steps": [
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
                "implementation": "pipeline.boxes.nms (OpenCV NMSBoxesBatched), used by evaluate and edgepipe run",
            },
            "anchor_points": len(self.points(cfg.model.input_size)),
        }

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
        """Decoded outputs of one image → NMS'd detections, in frame pixels when
        ``frame_shape`` is given (else input pixels)."""
        d = B.nms(outputs[0][0], outputs[1][0], score_threshold, iou_threshold, max_detections)
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

    def to_json(self, predictions):
        return [
            {"label": lab, "class_id": int(c), "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
            for b, s, c, lab in zip(
                predictions["boxes"], predictions["scores"], predictions["classes"], predictions["labels"]
            )
        ]

    def draw(self, frame, predictions, class_names):
        from pipeline.runtime.overlay import draw_boxes

        return draw_boxes(frame, predictions["boxes"], predictions["classes"], predictions["scores"], class_names)

    def report_figures(self, report, out_dir):
        """Precision–recall curves at IoU 0.5 of the int8 variant (or Keras float)."""
        from pipeline.report import pr_curves_figure

        name = next((n for n in ("int8", "qat_int8", "pqat_int8") if n in report["variants"]), None)
        details = report["variants"][name]["details"] if name else report["keras_float_details"]
        recall = np.linspace(0, 1, 101)
        curves = {c: (recall, np.asarray(p), float(np.mean(p))) for c, p in details.get("pr50", {}).items()}
        return [pr_curves_figure(curves, out_dir)] if curves else []

    def sample_grid(self, images, outputs, targets, class_names):
        import cv2

        from pipeline.runtime.overlay import draw_boxes, grid

        tiles = []
        for k in range(min(8, len(images))):
            tile = cv2.cvtColor(np.ascontiguousarray(images[k][..., :3]), cv2.COLOR_RGB2BGR)
            for b in targets[k]["boxes"]:
                cv2.rectangle(tile, tuple(int(v) for v in b[:2]), tuple(int(v) for v in b[2:]), (255, 255, 255), 1)
            p = self.postprocess([o[k : k + 1] for o in outputs], class_names)
            tiles.append(
                cv2.cvtColor(draw_boxes(tile, p["boxes"], p["classes"], p["scores"], class_names), cv2.COLOR_BGR2RGB)
            )
        return grid(tiles)


register_task(Detection())
