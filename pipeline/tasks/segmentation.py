"""Semantic segmentation: mask / VOC / COCO / synthetic data, DeepLabV3+-lite, mIoU.

The exported model outputs per-pixel class logits at the input resolution (output
``logits``); the class map is their argmax, done on the CPU after the model because
XNNPACK runs neither an int8 softmax nor an ARG_MAX.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.data.segmentation import IGNORE
from pipeline.tasks import register_task
from pipeline.tasks.base import Task

# === Loss and metric ===


def segmentation_loss(num_classes: int, ignore_index: int):
    """Pixel cross-entropy plus soft Dice, both skipping ``ignore_index`` pixels.

    Dice weighs every class present in the batch equally, whatever its pixel count,
    so small or thin objects are not drowned by background (FACTS.md: a DeepLabV3+
    trained on plain cross-entropy predicted background everywhere).
    """
    from pipeline._keras import tf

    def loss(y_true, logits):
        logits = tf.cast(logits, tf.float32)
        y = tf.cast(tf.reshape(y_true, tf.shape(logits)[:-1]), tf.int32)
        valid = tf.cast(tf.not_equal(y, ignore_index), tf.float32)
        y = tf.where(y == ignore_index, tf.zeros_like(y), y)
        n_valid = tf.maximum(tf.reduce_sum(valid), 1.0)
        ce = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits) * valid) / n_valid
        probs = tf.nn.softmax(logits) * valid[..., None]
        onehot = tf.one_hot(y, num_classes) * valid[..., None]
        inter = tf.reduce_sum(probs * onehot, axis=[0, 1, 2])
        denom = tf.reduce_sum(probs, axis=[0, 1, 2]) + tf.reduce_sum(onehot, axis=[0, 1, 2])
        dice = 1.0 - tf.reduce_mean((2.0 * inter + 1.0) / (denom + 1.0))
        return ce + dice

    return loss


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """``(K, K)`` pixel counts, rows = ground truth, ignoring ``ignore_index`` pixels."""
    t = target.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = (t != ignore_index) & (t < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_scores(cm: np.ndarray, class_names) -> dict:
    """mIoU over the classes that occur (in ground truth or prediction), per-class IoU
    (``None`` for a class absent from both) and pixel accuracy."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    per = {n: (float(tp[i] / union[i]) if union[i] else None) for i, n in enumerate(class_names)}
    present = [v for v in per.values() if v is not None]
    return {
        "miou": float(np.mean(present)) if present else 0.0,
        "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "per_class_iou": per,
    }


# === Overlays ===


def overlay(rgb: np.ndarray, classes: np.ndarray, num_classes: int, alpha: float = 0.5, ignore_index: int = IGNORE):
    """Blend class colours over an RGB image; class 0 and ignored pixels stay as they are
    except that ignored ones are drawn white."""
    from pipeline.runtime.overlay import palette

    out = rgb.astype(np.float32).copy()
    colours = np.array(palette(max(num_classes, 1)), np.float32)[:, ::-1]  # BGR → RGB
    cls = np.where(classes < num_classes, classes, 0)
    fg = (classes > 0) & (classes < num_classes)
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[cls[fg]]
    out[classes == ignore_index] = 255.0
    return out.astype(np.uint8)


def _legend(img: np.ndarray, ids, class_names, bgr: bool) -> None:
    from pipeline.runtime.overlay import palette

    colours = palette(len(class_names))  # BGR
    for row, i in enumerate(ids):
        y = 6 + row * 16
        c = tuple(int(v) for v in (colours[i] if bgr else colours[i][::-1]))
        cv2.rectangle(img, (6, y), (18, y + 12), c, -1)
        cv2.putText(img, str(class_names[i]), (24, y + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)


class Segmentation(Task):
    name = "segmentation"
    metric = "miou"
    data_formats = ("synthetic", "masks", "voc", "coco")
    # 256×256 per the issue; width, samples and epochs sized so the default chain
    # trains in about 10 minutes on 2 CPU cores.
    default_config: dict = {
        "data": {"synthetic_samples": 480, "synthetic_classes": 5},
        "model": {"input_size": 256, "width": 0.35, "dropout": 0.0},
        "train": {"epochs": 8, "batch_size": 16, "learning_rate": 0.005, "early_stopping_patience": 0},
        "prune": {"epochs": 1},
        "qat": {"epochs": 1},
        "export": {"representative_samples": 64},
        "evaluate": {"batch_size": 8},
    }
    monitor = "val_miou"
    monitor_mode = "max"

    # === Data ===
    def load_data(self, cfg):
        from pipeline.data import segmentation as seg_data
        from pipeline.train import input_spec

        # One slot: the stages of a chain in one process read and check the files once.
        key = (cfg.data, cfg.model.input_size, cfg.model.channels)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, seg_data.load(cfg, input_spec(cfg)))
        return self._cached[1]

    _cached: tuple | None = None

    def class_names(self, data):
        return data.class_names

    def datasets(self, data, cfg, spec):
        from pipeline.data.mask_pipeline import training_dataset

        d = cfg.data
        kw = dict(shuffle_buffer=d.shuffle_buffer, seed=d.seed)
        train = training_dataset(data.train, spec, cfg.train.batch_size, training=True, augment=d.augment, **kw)
        val = training_dataset(data.val, spec, cfg.train.batch_size, training=False, **kw)
        return train, val

    def eval_batches(self, data, cfg, spec, batch_size, limit=0):
        from pipeline.data.mask_pipeline import iterate_numpy

        return iterate_numpy(data.val, batch_size, limit)

    def calibration_images(self, data, cfg, spec, n):
        idx = np.random.default_rng(cfg.data.seed).permutation(len(data.train))[:n]
        for i in np.sort(idx):
            yield data.train.images[i]

    # === Model, loss, metric ===
    def build_model(self, cfg, num_classes):
        from pipeline.models.segmenter import build_segmenter

        return build_segmenter(cfg.model, num_classes)

    def compile_args(self, cfg):
        from pipeline._keras import keras

        k = self._num_classes(cfg)
        return {
            "loss": segmentation_loss(k, IGNORE),
            "metrics": [keras.metrics.MeanIoU(k, name="miou", ignore_class=IGNORE, sparse_y_pred=False)],
        }

    def _num_classes(self, cfg) -> int:
        # compile_args gets only the config; the class count is the data's.
        if cfg.data.class_names:
            return len(cfg.data.class_names)
        if cfg.data.format == "synthetic":
            return cfg.data.synthetic_classes
        return len(self.load_data(cfg).class_names)

    def score(self, outputs, targets, class_names):
        pred = outputs[0].argmax(-1)
        cm = confusion(pred, np.concatenate(targets), len(class_names), IGNORE)
        return {**iou_scores(cm, class_names), "confusion": cm.tolist()}

    def agreement(self, a, b):
        return float((a[0].argmax(-1) == b[0].argmax(-1)).mean())

    # === Export and post-processing ===
    def serving(self, outputs):
        return {"logits": outputs}

    def output_signature(self, class_names):
        return [
            {
                "name": "logits",
                "shape": [1, -1, -1, len(class_names)],
                "kind": "per_class_scores",
                "meaning": "per-pixel class logits at the input resolution (tensor_shape), in labels-file "
                "order; the class map is their argmax over the last axis (not in the graph), softmax "
                "gives probabilities",
            }
        ]

    def postprocess(self, outputs, class_names, spec=None, frame_shape=None, alpha: float = 0.5, **kw):
        """``{"mask": uint8 HxW class ids in frame coordinates, ...}``; ``alpha`` is the overlay's opacity."""
        from pipeline.data.images import geometry

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

    def draw(self, frame, predictions, class_names):
        from pipeline.runtime.overlay import blend_mask

        mask = predictions["mask"]
        if mask.shape != frame.shape[:2]:
            mask = cv2.resize(mask, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        return blend_mask(frame, mask, class_names, alpha=predictions.get("alpha", 0.5))

    # === Report figures ===
    def sample_grid(self, images, outputs, targets, class_names, rows: int = 6):
        k = len(class_names)
        pred = outputs[0].argmax(-1)
        tiles = []
        for i in range(min(rows, len(images))):
            rgb = images[i] if images.shape[-1] == 3 else np.repeat(images[i], 3, -1)
            tiles.append(np.concatenate([rgb, overlay(rgb, targets[i], k), overlay(rgb, pred[i], k)], axis=1))
        grid = np.concatenate(tiles, axis=0)
        _legend(grid, range(1, k), class_names, bgr=False)
        return grid


register_task(Segmentation())
