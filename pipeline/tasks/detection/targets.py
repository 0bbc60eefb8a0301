"""Training targets and losses of the anchor-free detector (TensorFlow)."""

from __future__ import annotations

import numpy as np

from pipeline.tasks.detection.boxes import CENTER_RADIUS, Points, decode


def assign_targets(points: Points, gt_boxes, gt_classes, num_classes: int):
    """Center-sampled, scale-ranged FCOS assignment for a batch.

    Args:
        gt_boxes: (B, M, 4) ``x1 y1 x2 y2`` input pixels, padded rows anywhere.
        gt_classes: (B, M) class ids, ``-1`` on padding rows.

    Returns:
        ``box_target`` (B, N, 5): the assigned box and its weight (the point's
        centre-ness, 0 for background); ``cls_target`` (B, N, C): one-hot class
        times centre-ness, so the score learns to rank well-centred points first.
    """
    from pipeline._keras import tf

    gt_boxes = tf.cast(gt_boxes, tf.float32)
    px, py = points.centers[:, 0][None, :, None], points.centers[:, 1][None, :, None]
    x1, y1, x2, y2 = (gt_boxes[:, None, :, i] for i in range(4))  # (B, 1, M)
    ltrb = tf.stack([px - x1, py - y1, x2 - px, y2 - py], -1)  # (B, N, M, 4)
    inside = tf.reduce_min(ltrb, -1) > 0
    r = (CENTER_RADIUS * points.strides)[None, :, None]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    near = (tf.abs(px - cx) < r) & (tf.abs(py - cy) < r)
    extent = tf.reduce_max(ltrb, -1)
    in_range = (extent >= points.lo[None, :, None]) & (extent <= points.hi[None, :, None])
    real = (gt_classes >= 0)[:, None, :]
    valid = inside & near & in_range & real
    area = (x2 - x1) * (y2 - y1)
    cost = tf.where(valid, tf.broadcast_to(area, tf.shape(valid)), np.float32(np.inf))
    best = tf.argmin(cost, -1, output_type=tf.int32)  # (B, N): the smallest valid box
    pos = tf.reduce_any(valid, -1)
    box = tf.gather(gt_boxes, best, batch_dims=1)
    d = tf.gather(ltrb, best[..., None], batch_dims=2)[:, :, 0]
    lr, tb = tf.maximum(d[..., 0::2], 1e-6), tf.maximum(d[..., 1::2], 1e-6)
    ctr = tf.sqrt(tf.reduce_min(lr, -1) / tf.reduce_max(lr, -1) * tf.reduce_min(tb, -1) / tf.reduce_max(tb, -1))
    weight = tf.where(pos, ctr, 0.0)
    box = tf.where(pos[..., None], box, tf.constant([0.0, 0.0, 1.0, 1.0]))
    cls = tf.gather(tf.cast(gt_classes, tf.int32), best, batch_dims=1)
    cls_target = tf.one_hot(tf.where(pos, cls, -1), num_classes) * weight[..., None]
    return tf.concat([box, weight[..., None]], -1), cls_target


# === Losses ===


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


def losses(points: Points):
    from pipeline._keras import keras, tf

    class BoxLoss(keras.losses.Loss):
        """GIoU on decoded boxes, plus L1 on the distances (in units), weighted by centre-ness."""

        def call(self, y_true, y_pred):
            box, w = y_true[..., :4], y_true[..., 4]
            pred = decode(y_pred, points)
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
