"""Segmentation's training half: readers, DeepLabV3+-lite, cross-entropy + Dice, mIoU."""

from __future__ import annotations

import functools

import numpy as np

from pipeline.tasks.base import Task
from pipeline.tasks.segmentation import IGNORE, SPEC
from pipeline.tasks.segmentation.metrics import confusion, iou_scores
from pipeline.tasks.segmentation.runtime import RUNTIME

# === Loss ===


def segmentation_loss(num_classes: int, ignore_index: int, class_balance: float = 0.0):
    """Pixel cross-entropy plus soft Dice, both skipping ``ignore_index`` pixels.

    Dice weighs every class present in the batch equally, whatever its pixel count,
    so small or thin objects are not drowned by background (measured: keras-cv's
    DeepLabV3+ trained on plain cross-entropy predicted background everywhere).
    ``class_balance`` (``train.class_balance``) weighs each pixel's cross-entropy by
    its class's frequency in the batch to the power ``-class_balance``: 0 is plain
    cross-entropy, 1 gives every class present the same total weight. For objects
    that are a few percent of the pixels, where the model otherwise finds few of them.
    """
    from pipeline._keras import tf

    def loss(y_true, logits):
        logits = tf.cast(logits, tf.float32)
        y = tf.cast(tf.reshape(y_true, tf.shape(logits)[:-1]), tf.int32)
        valid = tf.cast(tf.not_equal(y, ignore_index), tf.float32)
        y = tf.where(y == ignore_index, tf.zeros_like(y), y)
        pixel_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
        onehot = tf.one_hot(y, num_classes) * valid[..., None]
        counts = tf.reduce_sum(onehot, axis=[0, 1, 2])
        if class_balance:
            freq = counts / tf.maximum(tf.reduce_sum(counts), 1.0)
            weights = tf.where(counts > 0, tf.pow(tf.maximum(freq, 1e-6), -class_balance), 0.0)
            valid = tf.gather(weights, y) * valid  # a weight per pixel; the mean below stays a mean
        ce = tf.reduce_sum(pixel_ce * valid) / tf.maximum(tf.reduce_sum(valid), 1e-6)
        probs = tf.nn.softmax(logits) * tf.cast(valid > 0, tf.float32)[..., None]
        inter = tf.reduce_sum(probs * onehot, axis=[0, 1, 2])
        denom = tf.reduce_sum(probs, axis=[0, 1, 2]) + counts
        dice = 1.0 - tf.reduce_mean((2.0 * inter + 1.0) / (denom + 1.0))
        return ce + dice

    return loss


@functools.lru_cache(maxsize=1)
def _read(data_cfg, spec):
    """One slot: the stages of a chain in one process read and check the files once."""
    from pipeline.tasks.segmentation import readers

    return readers.load(data_cfg, spec)


class Segmentation(Task):
    spec = SPEC
    runtime = RUNTIME

    # === Data ===
    def load_data(self, cfg):
        return _read(cfg.data, cfg.input_spec())

    def data_sources(self, cfg):
        from pipeline.tasks.segmentation import readers

        return readers.data_sources(cfg.data)

    def datasets(self, data, cfg, spec, cache_dir=None):
        from pipeline.data.augment import Affine, Mix
        from pipeline.data.stream import plan_split
        from pipeline.tasks.segmentation.pipeline import training_dataset

        d = cfg.data
        kw = dict(shuffle_buffer=d.shuffle_buffer, seed=d.seed)
        sample_bytes = spec.size * spec.size * (spec.channels + 1)
        plans = [
            None if s.in_memory else plan_split(cfg, spec, name, s.names, sample_bytes, cache_dir)
            for s, name in ((data.train, "train"), (data.val, "val"))
        ]
        train = training_dataset(data.train, spec, cfg.train.batch_size, training=True, augment=d.augment,
                                 affine=Affine.of(d), mix=Mix.of(d), cache=plans[0], **kw)  # fmt: skip
        val = training_dataset(data.val, spec, cfg.train.batch_size, training=False, cache=plans[1], **kw)
        return train, val

    def eval_batches(self, data, cfg, spec, batch_size, limit=0):
        from pipeline.tasks.segmentation.pipeline import iterate_numpy

        return iterate_numpy(data.val, spec, batch_size, limit)

    def calibration_images(self, data, cfg, spec, n):
        from pipeline.tasks.segmentation.pipeline import iterate_numpy

        idx = np.random.default_rng(cfg.data.seed).permutation(len(data.train))[:n]
        for x, _ in iterate_numpy(data.train.take(np.sort(idx)), spec, 1):
            yield x[0]

    # === Model, loss, metric ===
    def build_model(self, cfg, num_classes):
        from pipeline.models.segmenter import build_segmenter

        return build_segmenter(cfg.model, num_classes)

    def compile_args(self, cfg, num_classes):
        from pipeline._keras import keras

        return {
            "loss": segmentation_loss(num_classes, IGNORE, cfg.train.class_balance),
            "metrics": [keras.metrics.MeanIoU(num_classes, name="miou", ignore_class=IGNORE, sparse_y_pred=False)],
        }

    def score(self, outputs, targets, class_names, spec=None):
        pred = outputs[0].argmax(-1)
        cm = confusion(pred, np.concatenate(targets), len(class_names), IGNORE)
        return {**iou_scores(cm, class_names), "confusion": cm.tolist()}

    def agreement(self, a, b, spec=None):
        return float((a[0].argmax(-1) == b[0].argmax(-1)).mean())

    # === Export ===
    def serving(self, outputs, cfg):
        return {"logits": outputs}

    def output_signature(self, class_names, form=""):
        return [
            {
                "name": "logits",
                "shape": [1, -1, -1, len(class_names)],
                "kind": "per_class_scores",
                # logits: MediaPipe's ImageSegmenter applies the softmax for its confidence masks
                "activation": "softmax",
                "meaning": "per-pixel class logits at the input resolution (tensor_shape), in labels-file "
                "order; the class map is their argmax over the last axis (not in the graph), softmax "
                "gives probabilities",
            }
        ]

    # === Report figures ===
    def sample_grid(self, images, outputs, targets, class_names, rows: int = 6):
        """Rows of image | ground truth | prediction, ignored pixels white, one legend."""
        from pipeline.core.overlay import blend_mask, draw_labels, palette

        pred = outputs[0].argmax(-1)
        tiles = []
        for i in range(min(rows, len(images))):
            rgb = images[i] if images.shape[-1] == 3 else np.repeat(images[i], 3, -1)
            panels = [rgb]
            for mask in (targets[i], pred[i]):
                bgr = np.ascontiguousarray(rgb[..., ::-1])
                blend_mask(bgr, mask, class_names, legend=False, ignore=IGNORE)
                panels.append(bgr[..., ::-1])
            tiles.append(np.concatenate(panels, axis=1))
        grid = np.ascontiguousarray(np.concatenate(tiles, axis=0)[..., ::-1])  # BGR to draw the legend
        colours = palette(len(class_names))
        draw_labels(grid, [str(n) for n in class_names[1:]], (6, 6), colours[1:])
        return np.ascontiguousarray(grid[..., ::-1])


TASK = Segmentation()
