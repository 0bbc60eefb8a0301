"""Segmentation readers: mask folders, Pascal VOC, COCO instances, and a synthetic set.

Every reader returns a :class:`SegmentationData` whose splits list image/mask pairs
that are read when the input pipeline needs them (so memory stays bounded whatever
the dataset's size); only the synthetic set lives in memory. A sample is prepared
for the model's :class:`InputSpec` by the shared :func:`prepare` (image) and
:func:`prepare_mask` (mask: the same geometry, nearest-neighbour). The pairs are
checked from the files' headers before training starts, so a missing, unreadable or
mis-sized mask is an error naming its file, never a crash mid-epoch; a corrupt
photo is skipped and counted.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.config import DataConfig
from pipeline.core.errors import DataError
from pipeline.core.images import ImageError, InputSpec, SkipCounter, geometry, list_images, prepare, read_image
from pipeline.data.splits import split_indices
from pipeline.data.synthetic import class_colour, paint, shape_mask, textured_background
from pipeline.tasks.segmentation import IGNORE

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
# Shapes with thin parts (cross, ring, star, bar) come early, so small class counts have them.
SEG_SHAPES = ("circle", "cross", "triangle", "ring", "star", "bar", "square", "diamond")


@dataclass(frozen=True)
class SegSplit:
    """One split's samples: prepared ``images`` (N,S,S,C uint8) and ``masks`` (N,S,S
    uint8 class ids or the ignore index) in memory, or ``pairs`` of ``(image path,
    mask)`` read by ``reader`` when needed, the mask a PNG path or a zero-argument
    callable (a COCO image's rasterizer). ``names`` are the source files (or
    ``synthetic/<i>``)."""

    images: np.ndarray | None = None
    masks: np.ndarray | None = None
    names: tuple[str, ...] = ()
    pairs: tuple = ()
    reader: PairReader | None = None

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def __len__(self) -> int:
        return len(self.images) if self.in_memory else len(self.pairs)

    def take(self, idx: np.ndarray) -> SegSplit:
        names = tuple(self.names[i] for i in idx) if self.names else ()
        if self.in_memory:
            return SegSplit(self.images[idx], self.masks[idx], names)
        return SegSplit(names=names, pairs=tuple(self.pairs[i] for i in idx), reader=self.reader)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` prepared for the model.

        Raises:
            ImageError: the photo is unreadable (skip it and count it).
            DataError: the mask is unusable; names the file.
        """
        if self.in_memory:
            return self.images[i], self.masks[i]
        return self.reader.read(*self.pairs[i])

    def arrays(self, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The first ``limit`` (default all) readable samples stacked in memory: for
        small sets, tests and figures; training streams instead."""
        n = min(len(self), limit) if limit else len(self)
        if self.in_memory:
            return self.images[:n], self.masks[:n]
        pairs = [self.reader.load_or_skip(p) for p in self.pairs[:n]]
        pairs = [p for p in pairs if p is not None]
        if not pairs:
            raise DataError(f"{self.names[0] if self.names else 'the split'}: no readable image/mask pairs")
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@dataclass(frozen=True)
class SegmentationData:
    train: SegSplit
    val: SegSplit
    class_names: tuple[str, ...]
    ignore_index: int = 255
    skipped: SkipCounter = field(default_factory=SkipCounter, compare=False)  # what this stage could not read


# === Masks: reading, checking, preparing ===


def read_mask(path: str | Path) -> np.ndarray:
    """A mask PNG → (H, W) class ids. Palette PNGs give their indices (not colours);
    grayscale and 16-bit PNGs their values; an RGB file whose channels are equal is
    read as grayscale.

    Raises:
        DataError: naming the file if it is unreadable, or an RGB(A) colour mask.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: cannot read mask ({e})") from e
    if mode in ("RGB", "RGBA") or (arr.ndim == 3 and arr.shape[2] >= 3):
        rgb = arr[..., :3]
        if (rgb == rgb[..., :1]).all():
            return rgb[..., 0].astype(np.uint8)
        raise DataError(
            f"{path}: an RGB colour mask ({mode}); masks must hold class indices. Save it as a "
            "single-channel PNG whose values are class ids (0..K-1, and the ignore index), or as a "
            "palette PNG ('P' mode), e.g. with Pillow: map each colour to its id into a uint8 array "
            "`ids`, then Image.fromarray(ids, mode='L').save(path)"
        )
    if arr.ndim == 3:  # LA: the luminance channel
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255:
            raise DataError(f"{path}: mask values go up to {int(arr.max())}; class ids must fit in 0..255")
        arr = arr.astype(np.uint8)
    return arr


def check_pair(image_hw, mask_hw, image_path, mask_path) -> None:
    """Raise a :class:`DataError` naming the files when a mask's ``(height, width)``
    differs from its image's."""
    (ih, iw), (mh, mw) = tuple(image_hw)[:2], tuple(mask_hw)[:2]
    if (ih, iw) != (mh, mw):
        raise DataError(
            f"{mask_path}: mask is {mw}x{mh} but its image {image_path} is {iw}x{ih} (width x height); they must match"
        )


class StrayValues:
    """Mask values beyond the configured classes, mapped to the ignore index: each file
    is warned about once, with its values and a running count (masks are read in
    tf.data's threads, epoch after epoch)."""

    def __init__(self, num_classes: int, ignore: int) -> None:
        self.num_classes, self.ignore = num_classes, ignore
        self.files: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def clean(self, mask: np.ndarray, where) -> np.ndarray:
        stray = (mask >= self.num_classes) & (mask != self.ignore)
        if not stray.any():
            return mask
        values = np.unique(mask[stray]).tolist()
        with self._lock:
            new = str(where) not in self.files
            self.files[str(where)] = values
            n = len(self.files)
        if new:
            log.warning(
                "segmentation: mask file %d with values beyond the %d classes, ignored (data.ignore_index=%d): "
                "%s: %s", n, self.num_classes, self.ignore, where, values[:5],
            )  # fmt: skip
        return np.where(stray, self.ignore, mask).astype(np.uint8)


class PairReader:
    """Reads one image/mask pair and prepares it for ``spec``: the mask checked against
    its image, stray values ignored, the configured ignore index mapped to ours."""

    def __init__(self, spec: InputSpec, stray: StrayValues, skipped: SkipCounter) -> None:
        self.spec, self.stray, self.skipped = spec, stray, skipped

    def read(self, img_path, mask) -> tuple[np.ndarray, np.ndarray]:
        img = read_image(img_path)
        mask_path = mask if isinstance(mask, (str, Path)) else img_path
        m = read_mask(mask) if isinstance(mask, (str, Path)) else mask()
        check_pair(img.shape, m.shape, img_path, mask_path)
        m = self.stray.clean(m, mask_path)
        if self.stray.ignore != IGNORE:
            m = np.where(m == self.stray.ignore, IGNORE, m).astype(np.uint8)
        return prepare(img, self.spec), prepare_mask(m, self.spec, IGNORE)

    def load_or_skip(self, pair) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`read`, or ``None`` with the file counted as skipped: what the input
        pipeline does mid-epoch, where an exception would stop training."""
        return self.skipped.attempt(pair[0], lambda: self.read(*pair))


def prepare_mask(mask: np.ndarray, spec: InputSpec, ignore: int) -> np.ndarray:
    """Resize a mask the way :func:`prepare` resizes its image, nearest-neighbour, so
    class ids are never blended; letterbox padding becomes the ignore index."""
    h, w = mask.shape[:2]
    s = spec.size
    if (h, w) == (s, s):
        return mask
    g = geometry((h, w), spec)
    resized = cv2.resize(mask, (g.width, g.height), interpolation=cv2.INTER_NEAREST)
    if spec.resize != "letterbox":
        return resized
    canvas = np.full((s, s), ignore, np.uint8)
    canvas[g.top : g.top + g.height, g.left : g.left + g.width] = resized
    return canvas


def header_size(path) -> tuple[int, int] | None:
    """``(height, width)`` from the file's header (Pillow reads no pixels), or ``None``
    when Pillow cannot tell."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            # EXIF orientations 5-8 turn the photo a quarter: it decodes upright (decode_file)
            turned = im.format == "JPEG" and im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            return (w, h) if turned else (h, w)
    except Exception:  # noqa: BLE001 - any failure: the full decoder decides later
        return None


def _check_pairs(pairs, reader: PairReader) -> SegSplit:
    """Check ``(image_path, mask path or (rasterizer, height, width))`` pairs from their
    headers, before any training: a mask that is unreadable, a colour image or of
    another size than its photo is a :class:`DataError` naming the files; a photo
    whose header is unreadable is decoded to decide, and skipped and counted if bad."""
    kept, names = [], []
    for img_path, mask in pairs:
        size = header_size(img_path)
        if size is None:
            try:
                size = read_image(img_path).shape[:2]
            except ImageError as e:
                reader.skipped.add(str(img_path), str(e))  # a corrupt photo is skipped and counted
                continue
        if isinstance(mask, (str, Path)):
            check_pair(size, _mask_header(mask), img_path, mask)
            kept.append((img_path, mask))
        else:
            rasterize, h, w = mask
            check_pair(size, (h, w), img_path, f"{img_path} (annotations)")
            kept.append((img_path, rasterize))
        names.append(str(img_path))
    if not kept:
        first = str(pairs[0][0]) if pairs else "the dataset"
        raise DataError(
            f"{first}: no readable image/mask pairs among {len(pairs)} (unreadable images are listed above)"
        )
    return SegSplit(names=tuple(names), pairs=tuple(kept), reader=reader)


def _mask_header(path) -> tuple[int, int]:
    """A mask's ``(height, width)`` from its header; a colour or unreadable mask is
    decoded by :func:`read_mask`, which raises the error that names it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: cannot read mask ({e})") from e
    if mode not in ("L", "P", "1"):
        read_mask(path)  # raises for a colour mask or 16-bit values over 255; equal RGB channels read as gray
    return h, w


def ratio_split(split: SegSplit, val_split: float, seed: int) -> tuple[SegSplit, SegSplit]:
    """A seeded random train/val split (at least one image on each side)."""
    train, val = split_indices(len(split), val_split, seed)
    return split.take(train), split.take(val)


RARE_SHARE = 1e-3  # a value on fewer than this share of the labelled pixels is no class to infer


def infer_class_count(mask_paths, ignore: int) -> int:
    """The class count the masks imply, 1 + the largest id, or a :class:`DataError`
    when that count rests on a doubtful value: ids that skip others (a stray 200 among
    0..5 would make 195 phantom classes), or a value too rare to be a class (an
    anti-aliased edge). The error names the files and values, and the config keys
    that settle it."""
    pixels = np.zeros(256, np.int64)
    where: dict[int, list[str]] = {}
    for p in mask_paths:
        m = read_mask(p)
        counts = np.bincount(m[m != ignore].ravel(), minlength=256)
        pixels += counts
        for v in np.flatnonzero(counts):
            where.setdefault(int(v), []).append(str(p))
    present = np.flatnonzero(pixels)
    if not present.size:
        return 2
    top = int(present.max())
    total = int(pixels.sum())
    # Only values that would raise the count are in doubt: those above the largest id
    # that covers a fair share of the pixels (a rare class below it changes nothing,
    # nor does a rare 1 in binary masks), and everything above a gap in the ids.
    common = [int(v) for v in present if pixels[v] >= RARE_SHARE * total]
    floor = max([*common, 1])
    doubtful = [int(v) for v in present if v > floor]
    if 0 < ignore < top:
        raise DataError(
            f"data.ignore_index={ignore} lies among the mask ids (up to {top}, e.g. in {where[top][0]}): the "
            "ignore index must not be a class id; set it to a value above the classes, or data.num_classes"
        )
    gaps = [v for v in range(1, top) if not pixels[v]]
    if gaps:
        doubtful = sorted(set(doubtful) | {int(v) for v in present if v > gaps[0]})
    if not doubtful:
        return max(top + 1, 2)
    detail = "; ".join(
        f"value {v} on {int(pixels[v])} pixels in {len(where[v])} file(s), e.g. {where[v][0]}" for v in doubtful[:5]
    )
    shown = ", ".join(map(str, gaps[:8])) + (", ..." if len(gaps) > 8 else "")
    why = f"ids {shown} never occur" if gaps else "too few pixels to be a class"
    raise DataError(
        f"mask values {doubtful[:10]} would set the class count to {top + 1}, but {why}: {detail}. "
        "Fix those masks, or say how many classes there are with data.num_classes (or data.class_names); "
        f"values beyond them then become data.ignore_index={ignore}, with a warning"
    )


# === Mask folders ===


def _mask_pairs(images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    """Images paired with ``masks_dir/<stem>.png`` by file stem."""
    for d, what in ((images_dir, "image"), (masks_dir, "mask")):
        if not d.is_dir():
            raise DataError(f"{d}: {what} folder does not exist")
    files = list_images(images_dir)
    if not files:
        raise DataError(f"{images_dir}: no images (.jpg/.jpeg/.png/.bmp)")
    masks = {p.stem: p for p in list_images(masks_dir)}
    pairs = []
    for f in files:
        if f.stem not in masks:
            raise DataError(f"{f}: image has no mask; expected {masks_dir / (f.stem + '.png')}")
        if masks[f.stem].suffix.lower() in (".jpg", ".jpeg"):
            # JPEG's compression moves class ids along every edge (12.7 % of a test mask's
            # pixels), to other valid ids that no check would notice: a wrong label silently
            raise DataError(
                f"{masks[f.stem]}: a JPEG mask; its lossy compression changes class ids along the edges. "
                "Save masks as PNG (lossless)"
            )
        pairs.append((f, masks[f.stem]))
    orphans = sorted(set(masks) - {f.stem for f in files})
    if orphans:  # an image deleted, or renamed with a typo: its labelled mask would go unused unsaid
        log.warning(
            "%s: %d mask(s) without an image in %s, not used: %s",
            masks_dir,
            len(orphans),
            images_dir,
            ", ".join(masks[s].name for s in orphans[:5]),
        )
    return pairs


def _mask_folders(d: DataConfig) -> tuple[list, list | None]:
    if d.train_images or d.train_masks:
        if not (d.train_images and d.train_masks):
            raise DataError("data.train_images and data.train_masks: set both, or neither (then data.path)")
        train = _mask_pairs(Path(d.train_images), Path(d.train_masks))
        val = _mask_pairs(Path(d.val_images), Path(d.val_masks)) if d.val_images and d.val_masks else None
        return train, val
    root = Path(d.path)
    tr, va = d.splits
    if (root / "images" / tr).is_dir():
        train = _mask_pairs(root / "images" / tr, root / "masks" / tr)
        val = _mask_pairs(root / "images" / va, root / "masks" / va) if (root / "images" / va).is_dir() else None
        return train, val
    if (root / "images").is_dir():
        return _mask_pairs(root / "images", root / "masks"), None
    raise DataError(
        f"{root}: expected {root}/images/{tr} with {root}/masks/{tr} (and /{va}), or {root}/images with "
        f"{root}/masks, or set data.train_images and data.train_masks"
    )


def _finish(d: DataConfig, spec: InputSpec, train_pairs, val_pairs, names: tuple[str, ...]) -> SegmentationData:
    if d.num_classes and d.num_classes != len(names):
        raise DataError(
            f"data.num_classes={d.num_classes}, but this dataset defines {len(names)} classes ({list(names)[:8]}); "
            "leave data.num_classes at 0, or set data.class_names"
        )
    if d.ignore_index < len(names):
        raise DataError(f"data.ignore_index {d.ignore_index} is a class id (there are {len(names)} classes)")
    skipped = SkipCounter()
    reader = PairReader(spec, StrayValues(len(names), d.ignore_index), skipped)
    train = _check_pairs(train_pairs, reader)
    if val_pairs is not None:
        val = _check_pairs(val_pairs, reader)
    else:
        train, val = ratio_split(train, d.val_split, d.seed)
    _warn_about_labels(train, names, d.ignore_index)
    return SegmentationData(train, val, names, d.ignore_index, skipped)


LABEL_SAMPLE = 256  # training masks read to warn about classes without pixels


def _warn_about_labels(train: SegSplit, names: tuple[str, ...], ignore: int) -> None:
    """Warn about classes without a training pixel (among up to ``LABEL_SAMPLE`` masks
    spread over the split, read here and again when training: a bounded cost).

    When no class but 0 has any, it is an error: the model would learn background
    only, and score a perfect mIoU on the one class its validation holds. The usual
    cause is binary masks saved as 0/255 with 255 the ignore index: every foreground
    pixel is ignored. (Letterbox padding and VOC's void border are ignored pixels too,
    so their share alone proves nothing.)
    """
    idx = np.unique(np.linspace(0, len(train) - 1, min(len(train), LABEL_SAMPLE)).astype(int))
    masks = train.take(idx).arrays()[1]
    labelled = masks[masks != IGNORE]
    counts = np.bincount(labelled.ravel(), minlength=len(names))
    empty = [n for n, c in zip(names, counts) if c == 0]
    if not empty:
        return
    sampled = f" (in {len(idx)} of {len(train)} masks)" if len(idx) < len(train) else ""
    if counts[1:].sum() == 0:
        hint = "the masks hold class 0 (background) only"
        if (masks == IGNORE).any():
            hint = (
                f"only class 0 and data.ignore_index={ignore} occur: binary masks saved as 0/{ignore} "
                f"need {ignore} written as 1"
            )
        raise DataError(
            f"segmentation: no training pixels of class(es) {empty}{sampled}; {hint}. Trained so, a model learns "
            "background only (and scores a perfect mIoU on it)"
        )
    log.warning("segmentation: no training pixels of class(es) %s%s", empty, sampled)


def read_masks(d: DataConfig, spec: InputSpec) -> SegmentationData:
    """Image and mask folders paired by file stem; class names from the config or
    ``class_<id>`` up to the largest id found."""
    train, val = _mask_folders(d)
    names = tuple(d.class_names)
    if not names:
        k = d.num_classes or infer_class_count([m for _, m in train + (val or [])], d.ignore_index)
        names = tuple(f"class_{i}" for i in range(k))
    return _finish(d, spec, train, val, names)


# === Pascal VOC ===


def read_voc(d: DataConfig, spec: InputSpec) -> SegmentationData:
    """``JPEGImages/`` + palette PNGs in ``SegmentationClass/``; splits from
    ``ImageSets/Segmentation/<split>.txt`` when present, else by ratio."""
    root = Path(d.path)
    seg = root / "SegmentationClass"
    if not seg.is_dir():
        from pipeline.tasks.detection.readers import voc_root_hint

        hint = voc_root_hint(root, "SegmentationClass") or "; is this a VOC2007/VOC2012 folder?"
        raise DataError(f"{root}: no SegmentationClass folder{hint}")

    def pairs(stems) -> list:
        out = []
        for s in stems:
            img = root / "JPEGImages" / f"{s}.jpg"
            if not img.is_file():
                raise DataError(f"{seg / (s + '.png')}: mask has no image; expected {img}")
            out.append((img, seg / f"{s}.png"))
        return out

    lists = root / "ImageSets" / "Segmentation"
    tr, va = d.splits
    if lists.is_dir():  # the split lists decide: a missing train list is a typo, not a ratio split

        def listed(name: str) -> list[str] | None:
            f = lists / f"{name}.txt"
            if not f.is_file():
                return None
            stems = [line.split()[0] for line in f.read_text().splitlines() if line.strip()]
            if not stems:
                raise DataError(f"{f}: lists no images")
            return stems

        train_stems = listed(tr)
        if train_stems is None:
            found = sorted(p.name for p in lists.glob("*.txt"))
            raise DataError(f"{lists / (tr + '.txt')}: VOC split list not found; found {found}: set data.splits")
        val_stems = listed(va)
        if val_stems is None:
            log.warning("%s: no %s.txt; splitting %s.txt by data.val_split", lists, va, tr)
        train, val = pairs(train_stems), (pairs(val_stems) if val_stems is not None else None)
    else:
        train, val = pairs(sorted(p.stem for p in seg.glob("*.png"))), None
    return _finish(d, spec, train, val, tuple(d.class_names) or VOC_CLASSES)


# === COCO instances ===


def _area_first(a: dict) -> float:
    """Sort key, largest first: the annotation's ``area``, or where that is missing or
    not a number (it is optional in practice, and a null or a string crashed the sort)
    its bbox's, else 0."""
    for area in (a.get("area"), _bbox_area(a.get("bbox"))):
        if isinstance(area, (int, float)) and not isinstance(area, bool) and math.isfinite(area):
            return -float(area)
    return 0.0


def _bbox_area(bbox) -> float | None:
    try:
        return float(bbox[2]) * float(bbox[3])
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def coco_image_annotations(coco, image_id: int, cat_to_class: dict[int, int], dropped: list) -> list[dict]:
    """One image's instances, checked without rasterizing (that waits for training):
    each has a segmentation and a known category; polygons of fewer than 3 points are
    dropped, as detectron2 does, their ids appended to ``dropped``; an RLE is decoded
    once here, since only decoding proves it. Largest first, so small objects stay
    visible when painted in order.

    Raises:
        DataError: naming the annotation id.
    """
    out = []
    for a in sorted(coco.loadAnns(coco.getAnnIds(imgIds=[image_id])), key=_area_first):
        if "segmentation" not in a:
            raise DataError(f"annotation id {a.get('id')!r} has no 'segmentation' (a detection-only file?)")
        if a.get("category_id") not in cat_to_class:
            raise DataError(f"annotation id {a.get('id')!r} has unknown category_id {a.get('category_id')!r}")
        seg = a["segmentation"]
        if isinstance(seg, list):
            polygons = [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
            if not polygons:
                dropped.append(a.get("id"))
                continue
            a = {**a, "segmentation": polygons}
        else:
            _annotation_mask(coco, a)
        out.append(a)
    return out


def _annotation_mask(coco, a: dict) -> np.ndarray:
    """One annotation's pixels, the size of its image."""
    info = coco.imgs[a["image_id"]]
    try:
        m = coco.annToMask(a).astype(bool)
        if m.shape != (info["height"], info["width"]):
            raise ValueError(f"a {m.shape[1]}x{m.shape[0]} mask on a {info['width']}x{info['height']} image")
        return m
    except Exception as e:  # noqa: BLE001 - pycocotools raises bare Exception, IndexError... on bad data
        raise DataError(f"annotation id {a.get('id')!r}: unusable segmentation ({type(e).__name__}: {e})") from None


def coco_semantic(coco, image_id: int, anns: list[dict], cat_to_class: dict[int, int], ignore: int) -> np.ndarray:
    """Rasterize one image's checked instances (:func:`coco_image_annotations`) into a
    semantic mask with pycocotools; crowd regions become ``ignore``."""
    info = coco.imgs[image_id]
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    for a in anns:
        mask[_annotation_mask(coco, a)] = ignore if a.get("iscrowd") else cat_to_class[a["category_id"]]
    return mask


def _coco_split(ann_path: Path, image_root: Path, ignore: int, cats=None) -> tuple[list, list]:
    """``(image path, (rasterizer, height, width))`` pairs of one COCO file, and its categories."""
    from pycocotools.coco import COCO

    from pipeline.tasks.detection.readers import read_coco_json, working_folder_hint

    coco = COCO()  # pycocotools' index over the document we checked (not a second read of the file)
    coco.dataset = read_coco_json(ann_path, ("id", "file_name", "height", "width"))
    coco.createIndex()
    cats = cats or sorted(coco.cats.values(), key=lambda c: (isinstance(c["id"], str), c["id"]))
    cat_to_class = {c["id"]: i + 1 for i, c in enumerate(cats)}
    pairs, dropped = [], []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        path = image_root / info["file_name"]
        if not path.is_file():
            raise DataError(
                f"{ann_path}: image {path} (id {image_id}) does not exist" + working_folder_hint(info["file_name"])
            )
        try:
            anns = coco_image_annotations(coco, image_id, cat_to_class, dropped)
        except DataError as e:
            raise DataError(f"{ann_path}: image {path}: {e}") from None
        rasterize = functools.partial(coco_semantic, coco, image_id, anns, cat_to_class, ignore)
        pairs.append((path, (rasterize, int(info["height"]), int(info["width"]))))
    if dropped:
        log.warning(
            "%s: %d annotation(s) without a polygon of 3+ points dropped (ids %s)", ann_path, len(dropped), dropped[:5]
        )
    return pairs, cats


def data_sources(d: DataConfig) -> list:
    """What is read that no ``data.*`` setting names (the detection reader's rule)."""
    from pipeline.tasks.detection.readers import coco_sources

    return coco_sources(d) if d.format == "coco" else []


def read_coco(d: DataConfig, spec: InputSpec) -> SegmentationData:
    """COCO instances JSON per split; class 0 is background, then categories by id."""
    if not d.train_annotations:
        raise DataError("data.train_annotations: required for data.format 'coco' (a COCO instances JSON)")
    from pipeline.tasks.detection.readers import coco_image_roots

    (ann, root, _), *val_file = coco_image_roots(d)
    train, cats = _coco_split(ann, root, d.ignore_index)
    val = None
    if val_file:
        val, _ = _coco_split(val_file[0][0], val_file[0][1], d.ignore_index, cats)
    names = tuple(d.class_names) or ("background", *(c["name"] for c in cats))
    return _finish(d, spec, train, val, names)


# === Synthetic ===


@lru_cache(maxsize=4)
def segmentation_set(n: int, num_classes: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple]:
    """``n`` images with 1-4 shapes each on textured backgrounds, and their masks.

    Class 0 is background; each other class has its own shape and hue band. Shapes
    vary in size (a tenth to a third of the image), rotation and position, overlap
    (the later one occludes) and include thin parts (cross, ring, star, bar).
    """
    rng = np.random.default_rng(seed)
    kinds = SEG_SHAPES[: num_classes - 1]
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        img = textured_background(rng, size, lines=3)
        for _ in range(int(rng.integers(1, 5))):
            c = int(rng.integers(1, num_classes))
            r = rng.uniform(0.1, 0.33) * size
            cx, cy = rng.uniform(0.3 * r, size - 0.3 * r, 2)  # may be cut by the border
            thick = max(2, int(r * rng.uniform(0.12, 0.25)))
            m = shape_mask(kinds[c - 1], size, cx, cy, r, rng.uniform(0, 2 * np.pi), thick)
            paint(img, m, rng, class_colour(rng, c, num_classes))
            masks[i][m > 0] = c
        images[i] = img
    images.setflags(write=False)
    masks.setflags(write=False)
    return images, masks, ("background", *kinds)


# === Entry point ===


def load(d: DataConfig, spec: InputSpec) -> SegmentationData:
    """Read the configured segmentation dataset (``cfg.data``), prepared for ``spec``."""
    if d.format == "synthetic":
        images, masks, names = segmentation_set(d.synthetic_samples, d.synthetic_classes, spec.size, d.seed)
        if spec.channels == 1:
            images = np.stack([prepare(im, spec) for im in images])
        full = SegSplit(images, masks, tuple(f"synthetic/{i}" for i in range(len(images))))
        train, val = ratio_split(full, d.val_split, d.seed)
        return SegmentationData(train, val, names, d.ignore_index)
    readers = {"masks": read_masks, "voc": read_voc, "coco": read_coco}
    if d.format not in readers:
        raise DataError(f"data.format {d.format!r} is not a segmentation format; expected one of {sorted(readers)}")
    data = readers[d.format](d, spec)
    log.info("%s: %d train / %d val images, %d classes", d.path, len(data.train), len(data.val), len(data.class_names))
    return data
