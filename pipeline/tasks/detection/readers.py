"""Detection data: COCO JSON, Pascal VOC XML, YOLO txt, and a built-in synthetic set.

Every reader returns :class:`DetSplit` lists of image references with boxes in
``x1 y1 x2 y2`` pixels of the original image. Boxes partly outside the image are
clipped and boxes of no area dropped, counted in one warning per file; structural
problems (a missing image, an unknown category, a bad YOLO line, malformed JSON or
XML) are :class:`DataError` naming the file and the entry. Images without objects
stay in as negatives.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.images import IMAGE_SUFFIXES, SkipCounter, decode_file, list_images
from pipeline.data.splits import split_indices
from pipeline.data.synthetic import SHAPES, class_colour, paint, shape_mask, textured_background

log = logging.getLogger(__name__)


@dataclass
class DetSplit:
    """One split: image references (paths, or indices into ``arrays``) and their boxes."""

    images: list = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)  # (n, 4) float32 xyxy pixels
    classes: list[np.ndarray] = field(default_factory=list)  # (n,) int32
    arrays: np.ndarray | None = None  # in-memory images (synthetic)
    # (height, width) that the annotation file gives each image, which its boxes are in;
    # None where the reader measured the image itself. Checked against the decoded image
    # when it is loaded (``placed``), where reading the size costs nothing.
    sizes: list[tuple[int, int] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def add(self, image, boxes, classes, size: tuple[int, int] | None = None) -> None:
        self.images.append(image)
        self.boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
        self.classes.append(np.asarray(classes, np.int32).reshape(-1))
        self.sizes.append(size)

    def take(self, idx) -> DetSplit:
        out = DetSplit(arrays=self.arrays)
        for i in idx:
            out.add(self.images[i], self.boxes[i], self.classes[i], self.sizes[i])
        return out

    def placed(self, i: int, hw: tuple[int, int]) -> np.ndarray:
        """Image ``i``'s boxes in the pixels of its decoded ``hw`` image. Annotations
        made on the originals of a resized copy (the same shape, another size) are
        scaled to it. Any other size (another image under that name, or a photo that
        its EXIF orientation turns and the annotations did not) would put the boxes
        in the wrong place: a DataError naming the file and both sizes, which the
        input pipeline counts and skips."""
        declared, boxes = self.sizes[i], self.boxes[i]
        if declared is None or tuple(declared) == tuple(hw):
            return boxes
        (dh, dw), (h, w) = declared, hw
        sx, sy = w / dw, h / dh
        if not (_resized(dw, dh, w, h) or _resized(dh, dw, h, w)):
            turned = _resized(dw, dh, h, w)  # the same shape on its side: an EXIF-turned photo
            raise DataError(
                f"{self.images[i]}: its annotations give the image as {dw}x{dh} (width x height), but it "
                f"is {w}x{h}{' upright (by its EXIF orientation)' if turned else ''}: its boxes cannot be placed"
            )
        return boxes * np.array([sx, sy, sx, sy], np.float32)

    def object_count(self) -> int:
        return int(sum(len(c) for c in self.classes))


@dataclass
class DetectionData:
    train: DetSplit
    val: DetSplit
    class_names: tuple[str, ...]
    skipped: SkipCounter = field(default_factory=SkipCounter, compare=False)  # what this stage could not read


# === Box hygiene ===


def clean_boxes(boxes: np.ndarray, classes: np.ndarray, hw: tuple[int, int], where: str):
    """Clip boxes to the image and drop those of zero or negative area, as given or
    once clipped (wholly outside the image: annotations of another image size, or
    coordinates swapped); one warning per file, telling the two apart."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes, np.int32).reshape(-1)
    h, w = hw
    clipped = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    degenerate = ~((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    n_clipped = int(((np.abs(clipped - boxes) > 1e-3).any(1) & keep).sum())
    n_outside, n_degenerate = int((~keep & ~degenerate).sum()), int(degenerate.sum())
    if n_clipped or n_outside or n_degenerate:
        log.warning(
            "%s: %d box(es) clipped to the %dx%d image; dropped: %d wholly outside it, %d of zero or negative area",
            where,
            n_clipped,
            w,
            h,
            n_outside,
            n_degenerate,
        )
    return clipped[keep], classes[keep]


def _resized(dw: int, dh: int, w: int, h: int) -> bool:
    """Whether a ``w`` × ``h`` image is a ``dw`` × ``dh`` one resized: its height is the
    scaled height to within a pixel of rounding on each side."""
    return abs(dh * w / dw - h) <= 1.0 + 1e-6


def _declared(height, width) -> tuple[int, int] | None:
    """The ``(h, w)`` an annotation file gives an image; None where it gives none, or
    0 (some VOC exporters write 0 for "unknown"), so the image is measured instead."""
    if height is None or width is None:
        return None
    hw = int(float(height)), int(float(width))
    return hw if min(hw) > 0 else None


def _image_size(path: Path) -> tuple[int, int]:
    """``(h, w)`` of an image as training sees it (upright by its EXIF orientation), for
    annotations that do not declare it."""
    return decode_file(path).shape[:2]


# === COCO ===


def coco_image_roots(d) -> list[tuple[Path, Path, bool]]:
    """``(annotation file, image folder, whether a data.* setting names it)`` of the
    train and (if given) val COCO files, for every task that reads COCO: the folder
    their ``file_name``s are relative to is ``data.train_images`` (val:
    ``data.val_images``, then ``data.train_images``), else ``data.path``, else the
    annotation file's own folder, where exporters (Roboflow, CVAT) put it beside the
    images."""
    out = []
    for ann, folders in ((d.train_annotations, (d.train_images, d.path)),
                         (d.val_annotations, (d.val_images, d.train_images, d.path))):  # fmt: skip
        if ann:
            given = next((f for f in folders if f), "")
            out.append((Path(ann), Path(given or Path(ann).parent), bool(given)))
    return out


def working_folder_hint(file_name: str) -> str:
    """For an image not found where a COCO file's names point: a hint when it lies in
    the working folder, where detection looked by default before 2026-12-06."""
    if Path(file_name).is_file():
        return "; it is in the working folder: set data.train_images=. (or data.val_images=.)"
    return ""


def coco_listed_images(annotations: Path, root: Path) -> list[tuple[str, Path]]:
    """``(file_name, path)`` of the images a COCO file lists, unchecked (a malformed
    file is the reader's error): what resume's data key stamps where the images lie
    beside the file, in a folder that may hold anything else (the working folder)."""
    try:
        with open(annotations, "rb") as f:
            images = json.load(f).get("images")
    except (OSError, ValueError, AttributeError):
        return []
    names = [im.get("file_name") for im in images if isinstance(im, dict)] if isinstance(images, list) else []
    return [(n, root / n) for n in names if isinstance(n, str)]


def read_coco_json(path: Path, image_fields: tuple[str, ...] = ("id", "file_name")) -> dict:
    """A COCO instances JSON, its structure checked: ``images``, ``annotations`` and
    ``categories`` lists; entries with their required fields and unique ids; every
    annotation on a listed image. Shared by the detection and the mask reader, so a
    malformed file is a DataError naming the file and the entry in both."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: malformed JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{path}: not a COCO instances file (no 'images' list)")
    if not isinstance(doc.get("annotations"), list):
        # e.g. an image_info_test file: images without labels would train as negatives
        raise DataError(f"{path}: no 'annotations' list (an image-info file has no labels to train on)")
    if not _coco_entries(path, doc.get("categories"), "categories", ("id", "name")):
        raise DataError(f"{path}: no 'categories'")
    image_ids = {im["id"] for im in _coco_entries(path, doc["images"], "images", image_fields)}
    for k, im in enumerate(doc["images"]):
        name = im.get("file_name", "-")  # required where the caller reads images
        if not isinstance(name, str) or not name:
            raise DataError(f"{path}: images[{k}] has file_name {name!r}, not a file name")
    for k, a in enumerate(doc["annotations"]):
        try:
            known = a["image_id"] in image_ids
        except (KeyError, TypeError):  # not a dict, no image_id, or an unhashable one
            raise DataError(f"{path}: annotation #{k} lacks a valid image_id") from None
        if not known:
            raise DataError(f"{path}: annotations refer to image ids not in 'images': image_id {a['image_id']!r}")
    return doc


def read_coco(annotations: Path, image_root: Path, names: tuple[str, ...] | None = None):
    """A COCO instances JSON → (DetSplit, class names in category-id order)."""
    doc = read_coco_json(annotations)
    cats = sorted(doc["categories"], key=lambda c: (isinstance(c["id"], str), c["id"]))  # ids may mix ints and str
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    class_names = tuple(str(c["name"]) for c in cats)
    if names and tuple(names) != class_names:
        raise DataError(f"{annotations}: categories {list(class_names)} differ from the train split's {list(names)}")
    per_image: dict[int, list] = {}
    for k, a in enumerate(doc["annotations"]):
        try:
            img_id, cat, bbox = a["image_id"], a["category_id"], a["bbox"]
            if not isinstance(bbox, (list, tuple)):  # a string would unpack one character at a time
                raise TypeError
            x, y, bw, bh = (float(v) for v in bbox)
            hash(cat)  # a list as category_id: TypeError here, not a crash as a dict key below
            if not np.isfinite([x, y, bw, bh]).all():
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{annotations}: annotation #{k} lacks a valid image_id, category_id or bbox") from None
        crowd = a.get("iscrowd") or 0
        if crowd not in (0, 1):  # True and False are 1 and 0; "no" would be taken for a crowd
            raise DataError(f"{annotations}: annotation #{k} (id {a.get('id')}) has iscrowd {crowd!r}, not 0 or 1")
        if cat not in cat_index:
            raise DataError(
                f"{annotations}: annotation #{k} (id {a.get('id')}) has unknown category_id {cat!r}; "
                f"known ids: {sorted(cat_index)}"
            )
        if crowd:
            continue
        per_image.setdefault(img_id, []).append(([x, y, x + bw, y + bh], cat_index[cat]))
    images = {im["id"]: im for im in doc["images"]}
    split = DetSplit()
    for img_id, im in images.items():
        path = Path(image_root) / im["file_name"]
        if not path.is_file():
            raise DataError(
                f"{annotations}: image {im['file_name']!r} (id {img_id}) not found under {image_root}"
                + working_folder_hint(im["file_name"])
            )
        objs = per_image.get(img_id, [])
        try:
            declared = _declared(im.get("height"), im.get("width"))
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"{annotations}: image id {img_id!r} has a non-numeric height or width") from None
        b, c = clean_boxes([o[0] for o in objs], [o[1] for o in objs], declared or _image_size(path), str(path))
        split.add(str(path), b, c, declared)
    return split, class_names


def _coco_entries(path: Path, entries, key: str, required: tuple[str, ...]) -> list[dict]:
    """``doc[key]`` as a list of dicts with ``required`` keys and unique ids, or a DataError."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise DataError(f"{path}: '{key}' is a {type(entries).__name__}, not a list")
    seen: set = set()
    for k, e in enumerate(entries):
        if not isinstance(e, dict):
            raise DataError(f"{path}: {key}[{k}] is a {type(e).__name__}, not an object")
        missing = [r for r in required if r not in e]
        if missing:
            raise DataError(f"{path}: {key}[{k}] has no {missing[0]!r}")
        try:
            if e["id"] in seen:
                raise DataError(f"{path}: {key}[{k}] repeats id {e['id']!r}; ids must be unique")
            seen.add(e["id"])
        except TypeError:
            raise DataError(f"{path}: {key}[{k}] has id {e['id']!r}, not a number or string") from None
    return entries


# === Pascal VOC ===


def voc_root_hint(root: Path, marker: str) -> str:
    """A hint for a ``data.path`` one or two levels above a VOC folder (the folder
    holding ``VOCdevkit/VOC2012``): the VOC folder found under it, by its ``marker``."""
    found = sorted(p.parent for pattern in (f"*/{marker}", f"*/*/{marker}") for p in Path(root).glob(pattern))
    return f"; did you mean data.path={found[0]}?" if found else ""


def read_voc(root: Path, split_name: str, names: tuple[str, ...] | None = None):
    """``root/ImageSets/Main/<split>.txt`` + ``Annotations/*.xml`` + ``JPEGImages``."""
    root = Path(root)
    listing = root / "ImageSets" / "Main" / f"{split_name}.txt"
    if not listing.is_file():
        hint = "" if (root / "Annotations").is_dir() else voc_root_hint(root, "Annotations")
        raise DataError(f"{listing}: VOC split list not found{hint}")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{listing}: lists no images")
    objects: list[tuple[str, list]] = []
    found: list[str] = list(names or ())
    for image_id in ids:
        xml = root / "Annotations" / f"{image_id}.xml"
        try:
            tree = ET.parse(xml).getroot()
        except FileNotFoundError:
            raise DataError(f"{xml}: annotation for {image_id!r} (listed in {listing.name}) not found") from None
        except ET.ParseError as e:
            raise DataError(f"{xml}: malformed XML ({e})") from e
        file_name = tree.findtext("filename") or f"{image_id}.jpg"
        objs = []
        for k, o in enumerate(tree.findall("object")):
            name, bb = (o.findtext("name") or "").strip(), o.find("bndbox")
            try:
                box = [float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
            except (AttributeError, TypeError, ValueError):
                raise DataError(f"{xml}: object #{k} ({name!r}) has no valid bndbox") from None
            if not name:
                raise DataError(f"{xml}: object #{k} has no name")
            if names and name not in names:
                raise DataError(f"{xml}: object #{k} has class {name!r}, not among the classes {list(names)}")
            if name not in found:
                found.append(name)
            objs.append((box, name, o.findtext("difficult") == "1"))
        size = tree.find("size")
        hw = None
        if size is not None and size.findtext("height") and size.findtext("width"):
            try:
                hw = _declared(size.findtext("height"), size.findtext("width"))
            except (ValueError, OverflowError):
                raise DataError(f"{xml}: <size> height / width are not numbers") from None
        objects.append((str(root / "JPEGImages" / file_name), objs, hw, str(xml)))
    class_names = tuple(names) if names else tuple(sorted(found))
    split = DetSplit()
    for path, objs, hw, xml in objects:
        if not Path(path).is_file():
            raise DataError(f"{xml}: image {path} not found")
        objs = [o for o in objs if not o[2]]  # VOC "difficult" objects are not scored
        declared = hw
        hw = hw or _image_size(Path(path))
        b, c = clean_boxes([o[0] for o in objs], [class_names.index(o[1]) for o in objs], hw, xml)
        split.add(path, b, c, declared)
    return split, class_names


# === YOLO ===


def read_yolo_yaml(data_yaml: Path) -> tuple[Path, dict[str, Path], tuple[str, ...]]:
    """A YOLO ``data.yaml`` → (root, {split: image folder}, class names)."""
    import yaml

    p = Path(data_yaml)
    if p.is_dir():
        if not (p / "data.yaml").is_file():
            raise DataError(f"{p}: a folder; data.path takes the dataset's data.yaml")
        p = p / "data.yaml"
    try:
        doc = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: YOLO data.yaml not found") from None
    except yaml.YAMLError as e:
        raise DataError(f"{p}: malformed YAML ({e})") from e
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a UTF-8 text file") from None
    if not isinstance(doc, dict) or "names" not in doc:
        raise DataError(f"{p}: no 'names' list of classes")
    names = doc["names"]
    if isinstance(names, dict):
        # Ultralytics' {0: person, 1: bicycle}: the keys are the class ids in the labels
        try:
            names = {int(k): v for k, v in names.items()}  # Ultralytics accepts '0' as well as 0
        except (TypeError, ValueError):
            names = {None: None}
        if set(names) != set(range(len(names))):
            raise DataError(f"{p}: 'names' keys must be the class ids 0..{len(names) - 1}, got {list(doc['names'])}")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{p}: 'names' must be a non-empty list (or an id → name mapping), got {names!r}")
    for key in ("path", "train", "val", "test"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise DataError(f"{p}: '{key}' must be a folder path (text), got {doc[key]!r}")
    root = Path(doc.get("path") or p.parent)
    root = root if root.is_absolute() else p.parent / root
    splits = {k: root / doc[k] for k in ("train", "val", "test") if doc.get(k)}
    return root, splits, tuple(str(n) for n in names)


def yolo_labels_dir(images_dir: Path) -> Path | None:
    """YOLO's label folder of an image folder: its last ``images`` part made ``labels``;
    None without one."""
    parts = list(Path(images_dir).parts)
    if "images" not in parts:
        return None
    k = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:k], "labels", *parts[k + 1 :])


def read_yolo(images_dir: Path, class_names: tuple[str, ...]) -> DetSplit:
    """``images/<split>/*`` with ``labels/<split>/<stem>.txt`` lines ``class cx cy w h`` (normalized)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: YOLO image folder not found")
    labels_dir = yolo_labels_dir(images_dir)
    if labels_dir is None:
        raise DataError(f"{images_dir}: YOLO image folders live under an 'images' folder, labels under 'labels'")
    if not labels_dir.is_dir():
        raise DataError(f"{labels_dir}: YOLO label folder not found (the labels of {images_dir})")
    split = DetSplit()
    unlabelled = 0
    for img in list_images(images_dir):
        txt = labels_dir / f"{img.stem}.txt"
        rows: list[list[float]] = []
        if not txt.is_file():
            unlabelled += 1  # YOLO's convention: an image without a label file has no objects
        else:
            try:
                text = txt.read_text()
            except UnicodeDecodeError:
                raise DataError(f"{txt}: not a text file") from None
            for n, line in enumerate(text.splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 5:
                    raise DataError(f"{txt}:{n}: expected 5 fields 'class cx cy w h', got {len(parts)}: {line!r}")
                try:
                    k, *xywh = int(parts[0]), *(float(v) for v in parts[1:])
                except ValueError:
                    raise DataError(f"{txt}:{n}: not numbers: {line!r}") from None
                if not 0 <= k < len(class_names):
                    raise DataError(f"{txt}:{n}: class {k} out of range 0..{len(class_names) - 1}")
                if max(xywh) > 1.5:  # a little over 1 is rounding; more is pixels
                    raise DataError(f"{txt}:{n}: {line!r} looks like pixels; YOLO boxes are normalized to 0..1")
                rows.append([k, *xywh])
        h, w = _image_size(img)
        a = np.asarray(rows, np.float32).reshape(-1, 5)
        xyxy = np.stack(
            [
                (a[:, 1] - a[:, 3] / 2) * w,
                (a[:, 2] - a[:, 4] / 2) * h,
                (a[:, 1] + a[:, 3] / 2) * w,
                (a[:, 2] + a[:, 4] / 2) * h,
            ],
            1,
        )
        b, c = clean_boxes(xyxy, a[:, 0].astype(np.int32), (h, w), str(txt))
        split.add(str(img), b, c)
    if not len(split):
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    if unlabelled:
        log.warning(
            "%s: %d of %d images have no label file in %s: read as images without objects",
            images_dir,
            unlabelled,
            len(split),
            labels_dir,
        )
    return split


# === Synthetic ===


def synthetic_detection_set(n: int, num_classes: int, size: int, seed: int = 0) -> tuple[DetSplit, tuple[str, ...]]:
    """``n`` images of ``size``² with 0–6 shapes each; the shape kind and hue band are the class.

    Objects vary in scale (6–55% of the side) and aspect ratio (0.5–2), may overlap
    partly (at most 35% of an earlier object's box is covered) and may be cut by the
    border. Boxes are the exact extent of each object's visible pixels.
    """
    names = tuple(SHAPES[:num_classes])
    arrays = np.empty((n, size, size, 3), np.uint8)
    split = DetSplit(arrays=arrays)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        img = textured_background(rng, size, lines=2)
        count = 0 if rng.random() < 0.04 else int(rng.integers(1, 7))
        boxes: list[np.ndarray] = []
        classes: list[int] = []
        masks: list[np.ndarray] = []
        for _ in range(count * 4):  # placement attempts
            if len(boxes) == count:
                break
            k = int(rng.integers(num_classes))
            side = rng.uniform(0.06, 0.55) * size
            aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
            w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
            cx, cy = rng.uniform(-0.15 * w, size + 0.15 * w), rng.uniform(-0.15 * h, size + 0.15 * h)
            m = _stretched_shape(names[k], size, cx, cy, w, h, rng)
            ys, xs = np.nonzero(m)
            if len(xs) < 12:
                continue
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            if any(_covered(b, box) > 0.35 or _covered(box, b) > 0.35 for b in boxes):
                continue
            paint(img, m, rng, class_colour(rng, k, num_classes))
            boxes.append(box)
            classes.append(k)
            masks.append(m)
        arrays[i] = img
        split.add(i, np.asarray(boxes, np.float32).reshape(-1, 4), classes)
    return split, names


def _stretched_shape(kind: str, size: int, cx: float, cy: float, w: float, h: float, rng) -> np.ndarray:
    """A shape drawn in a square patch, stretched to ``w × h`` and pasted (clipped) at (cx, cy)."""
    s = max(8, int(round(max(w, h))))
    patch = shape_mask(kind, s, s / 2, s / 2, s / 2 - 1, rng.uniform(0, 2 * np.pi), max(2, s // 12))
    patch = cv2.resize(patch, (max(2, int(round(w))), max(2, int(round(h)))), interpolation=cv2.INTER_NEAREST)
    m = np.zeros((size, size), np.uint8)
    x0, y0 = int(round(cx - patch.shape[1] / 2)), int(round(cy - patch.shape[0] / 2))
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + patch.shape[1], size), min(y0 + patch.shape[0], size)
    if xb > xa and yb > ya:
        m[ya:yb, xa:xb] = patch[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return m


def _covered(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of box ``a``'s area that box ``b`` covers."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / max((a[2] - a[0]) * (a[3] - a[1]), 1e-6)


# === Loading by config ===


def _ratio_split(split: DetSplit, val_split: float, seed: int) -> tuple[DetSplit, DetSplit]:
    train, val = split_indices(len(split), val_split, seed)
    return split.take(train), split.take(val)


def data_sources(d) -> list[tuple[str, Path]]:
    """``(name, path)`` of what the configured data is read from that no ``data.*``
    setting names, for resume's data key (so a label fixed there trains again): the
    images a COCO file lists where they default to its folder (that folder may be the
    working folder, runs and all: only the listed files), and the image and label
    folders of the splits trained on that a YOLO data.yaml names."""
    if d.format == "coco":
        return coco_sources(d)
    if d.format == "yolo" and d.path:
        try:
            _, folders, _ = read_yolo_yaml(Path(d.path))
        except DataError:  # training reports it
            return []
        used = [folders[s] for s in d.splits if s in folders]
        return [(f"yolo {p.parent.name}/{p.name}", p) for f in used for p in (f, yolo_labels_dir(f)) if p is not None]
    return []


def coco_sources(d) -> list[tuple[str, Path]]:
    """:func:`data_sources` of COCO files, for both tasks that read them."""
    return [
        (f"{ann.name}: {name}", path)
        for ann, root, given in coco_image_roots(d)
        if not given
        for name, path in coco_listed_images(ann, root)
    ]


def load(cfg) -> DetectionData:
    """Read the dataset the config names (``data.format``: coco | voc | yolo | synthetic)."""
    d = cfg.data
    fmt = d.format
    if fmt == "synthetic":
        full, names = synthetic_detection_set(d.synthetic_samples, d.synthetic_classes, cfg.model.input_size, d.seed)
        train, val = _ratio_split(full, d.val_split, d.seed)
    elif fmt == "coco":
        if not d.train_annotations:
            raise DataError(
                "data.format=coco needs data.train_annotations (images: data.train_images, data.path, or beside it)"
            )
        (ann, root, _), *val_file = coco_image_roots(d)
        train, names = read_coco(ann, root)
        if val_file:
            val, _ = read_coco(val_file[0][0], val_file[0][1], names)
        else:
            train, val = _ratio_split(train, d.val_split, d.seed)
    elif fmt == "voc":
        if not d.path:
            raise DataError("data.format=voc needs data.path, the folder holding Annotations/ and JPEGImages/")
        # VOC labels are names: data.class_names, when given, fixes their ids and order.
        train, names = read_voc(Path(d.path), d.splits[0], tuple(d.class_names) or None)
        val, _ = read_voc(Path(d.path), d.splits[1], names)
    elif fmt == "yolo":
        if not d.path:
            raise DataError("data.format=yolo needs data.path, the dataset's data.yaml")
        _, folders, names = read_yolo_yaml(Path(d.path))
        tr, va = d.splits
        if tr not in folders:
            raise DataError(f"{d.path}: no {tr!r} entry")
        train = read_yolo(folders[tr], names)
        if va in folders:
            val = read_yolo(folders[va], names)
        else:
            train, val = _ratio_split(train, d.val_split, d.seed)
    else:
        raise DataError(f"data.format {fmt!r} is not a detection format. Expected coco, voc, yolo or synthetic.")
    if d.class_names and tuple(d.class_names) != tuple(names):
        if len(d.class_names) != len(names):
            raise DataError(
                f"data.class_names has {len(d.class_names)} names but the {fmt} data defines {len(names)} "
                f"classes {list(names)}; give one name per class, in class-id order"
            )
        names = tuple(d.class_names)  # display names for the same class ids
    if not len(train) or not len(val):
        raise DataError(f"empty split: {len(train)} train and {len(val)} validation images")
    log.info(
        "detection data: %d train images (%d objects), %d val images (%d objects), classes %s",
        len(train),
        train.object_count(),
        len(val),
        val.object_count(),
        list(names),
    )
    return DetectionData(train, val, tuple(names))
