"""The detector's mobile form: the SSD post-processing contract MediaPipe's
ObjectDetector and the TFLite Task Library read.

The graph ends in the ``TFLite_Detection_PostProcess`` custom op (decoding, NMS and
the top detections in the model), which LiteRT's default op resolver runs. The op
decodes SSD box encodings against anchors: ``ycenter = ty / y_scale * anchor_h +
anchor_y``, ``h = exp(th / h_scale) * anchor_h``. Our head is anchor-free: each cell
predicts its distances (l, t, r, b) to the box sides, in units of ``UNIT`` strides. With
one anchor per cell, centred on it, of side one unit, and every scale 1, the same box is

    ty = (b - t) / 2,  tx = (r - l) / 2,  th = log(t + b),  tw = log(l + r)

(distances in units), so the op's decoding reproduces ours exactly (one LOG per side).
Distances are first clipped at the image border: the op does not clip, and MediaPipe
clamps a box's corner and size separately, which would move a box that starts outside.

The op is created the way TensorFlow's object detection API exports SSD models
(``export_tflite_graph_lib_tf2.py``): a ``tf.function`` with
``experimental_implements="TFLite_Detection_PostProcess"`` and the op's attributes,
whose body the converter replaces by the op. Its four outputs come in port order
boxes, classes, scores, count, whatever order the file lists them in.
"""

from __future__ import annotations

import numpy as np

from pipeline.tasks.detection import boxes as B

OP_NAME = "TFLite_Detection_PostProcess"


def anchors(points: B.Points, size: int) -> np.ndarray:
    """``(N, 4)`` anchors ``(y_center, x_center, h, w)`` as ratios of the input: one per
    cell, centred on it, one unit (``UNIT`` strides) on a side."""
    c = points.centers / size
    u = points.units / size
    return np.stack([c[:, 1], c[:, 0], u, u], 1).astype(np.float32)


def implements(max_detections: int, num_classes: int, score_threshold: float, iou_threshold: float) -> str:
    """The op's attributes, as the converter reads them from ``experimental_implements``."""
    attrs = [
        ("max_detections", "i", max_detections),
        ("max_classes_per_detection", "i", 1),
        ("num_classes", "i", num_classes),
        # Fast (class-agnostic) NMS, each box with its best class: LiteRT's regular
        # (per-class) NMS drops a whole class when the interpreter has more than one
        # thread, the class whose index is the thread count (tensorflow/tensorflow#56058,
        # closed as stale, not fixed; measured: digit 2's AP 0.187 at 1 thread, 0 at 2),
        # and phones run detectors on several threads.
        ("use_regular_nms", "b", "false"),
        ("nms_score_threshold", "f", f"{score_threshold:f}"),
        ("nms_iou_threshold", "f", f"{iou_threshold:f}"),
        ("y_scale", "f", "1.0"),
        ("x_scale", "f", "1.0"),
        ("h_scale", "f", "1.0"),
        ("w_scale", "f", "1.0"),
    ]
    body = " ".join(f'attr {{ key: "{k}" value {{ {t}: {v} }} }}' for k, t, v in attrs)
    return f'name: "{OP_NAME}" {body}'


def encode(raw, points: B.Points, size: int):
    """Raw distances (1, N, 4) l, t, r, b in units → the op's (ty, tx, th, tw), with each
    box first clipped to the input."""
    from pipeline._keras import tf

    cx, cy = points.centers[:, 0], points.centers[:, 1]
    room = np.stack([cx, cy, size - cx, size - cy], 1) / points.units[:, None]  # units to each border
    ltrb = tf.minimum(raw, tf.constant(room[None], tf.float32))
    left, top, right, bottom = tf.unstack(ltrb, axis=-1)
    tiny = 1e-3  # a point on the border has zero room on one side
    return tf.stack(
        [
            (bottom - top) / 2.0,
            (right - left) / 2.0,
            tf.math.log(tf.maximum(top + bottom, tiny)),
            tf.math.log(tf.maximum(left + right, tiny)),
        ],
        axis=-1,
    )


def module(model, size: int, channels: int, num_classes: int, *, max_detections: int, score_threshold: float,
           iou_threshold: float):  # fmt: skip
    """A ``tf.Module`` whose ``serve(image)`` runs the detector and the op: what the
    converter takes (the module must be given to it, or the model's variables are lost
    and the file silently returns the placeholder's zeros)."""
    from pipeline._keras import tf

    points = B.anchor_points(size)
    table = anchors(points, size)
    signature = implements(max_detections, num_classes, score_threshold, iou_threshold)

    class Mobile(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

            @tf.function(experimental_implements=signature)
            def postprocess(box_encodings, class_predictions, anchor_table):
                # The converter replaces this body by the op; only the 4 float outputs count.
                zero = tf.constant(0.0, tf.float32)
                return zero, zero, zero, zero

            self._postprocess = postprocess
            spec = tf.TensorSpec([1, size, size, channels], tf.float32, name="image")
            self.serve = tf.function(self._serve, input_signature=[spec])

        def _serve(self, image):
            raw, logits = self.model(image, training=False)
            encodings = encode(raw, points, size)
            # The op takes probabilities: it applies no sigmoid. Its tf.function reverses
            # the outputs (as TensorFlow's SSD exporter notes), so reverse them back.
            return self._postprocess(encodings, tf.sigmoid(logits), tf.constant(table))[::-1]

    return Mobile()
