"""Classification readers: image folders, IDX (MNIST / Fashion-MNIST) and synthetic.

Each reader returns a :class:`ClassificationData`: a train and a validation
:class:`Split` plus class names. A split holds either decoded arrays (IDX,
synthetic) or file paths that tf.data decodes in parallel (folders).
"""

from __future__ import annotations

import gzip
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.config import Config
from pipeline.core.errors import DataError
from pipeline.core.images import SkipCounter, list_images
from pipeline.data.splits import split_indices
from pipeline.data.synthetic import classification_set

log = logging.getLogger(__name__)

VAL_SPLIT_NAMES = ("val", "validation", "valid", "test")


@dataclass(frozen=True)
class Split:
    """One split: ``images`` (N,H,W,C uint8) or ``paths``, and integer ``labels``."""

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> Split:
        return Split(
            labels=self.labels[idx],
            images=None if self.images is None else self.images[idx],
            paths=tuple(self.paths[i] for i in idx) if self.paths else (),
        )


@dataclass(frozen=True)
class ClassificationData:
    train: Split
    val: Split
    class_names: tuple[str, ...]
    skipped: SkipCounter = field(default_factory=SkipCounter, compare=False)  # what this stage could not read


def ratio_split(split: Split, val_split: float, seed: int) -> tuple[Split, Split]:
    """Stratified split by ratio and seed, so every class is in both halves."""
    train, val = split_indices(len(split), val_split, seed, labels=split.labels)
    return split.take(train), split.take(val)


# === Image folders ===


def _class_folder(root: Path, class_names: tuple[str, ...] | None = None) -> tuple[Split, tuple[str, ...]]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(f"{root}: no class folders; expected {root}/<class>/*.jpg|png|bmp")
    names = tuple(d.name for d in dirs)
    if class_names is not None and names != class_names:
        missing = sorted(set(class_names) - set(names)) or sorted(set(names) - set(class_names))
        raise DataError(f"{root}: classes differ from the training split's (e.g. {missing[0]!r})")
    paths, labels = [], []
    for i, d in enumerate(dirs):
        files = list_images(d)
        if not files:
            raise DataError(f"{d}: empty class folder (no .jpg/.jpeg/.png/.bmp files)")
        paths += [str(f) for f in files]
        labels += [i] * len(files)
    return Split(labels=np.asarray(labels, np.int32), paths=tuple(paths)), names


def read_folder(root: str | Path, val_split: float, seed: int) -> ClassificationData:
    """``root/<split>/<class>/*`` or ``root/<class>/*`` (then split by ratio and seed)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    if (root / "train").is_dir():
        val_dir = next((root / n for n in VAL_SPLIT_NAMES if (root / n).is_dir()), None)
        if val_dir is None:
            raise DataError(
                f"{root}: found split folder 'train' but no validation split "
                f"(one of {list(VAL_SPLIT_NAMES)}); add one, or put the class folders "
                f"directly under {root} to split by data.val_split"
            )
        train, names = _class_folder(root / "train")
        val, _ = _class_folder(val_dir, names)
    else:
        full, names = _class_folder(root)
        _check_classes(full, names, root)
        train, val = ratio_split(full, val_split, seed)
    # Class-sorted file lists would make shuffle buffers and max_samples subsets
    # see a few classes only; one seeded permutation fixes both.
    rng = np.random.default_rng(seed)
    train, val = train.take(rng.permutation(len(train))), val.take(rng.permutation(len(val)))
    _check_classes(train, names, root)
    return ClassificationData(train=train, val=val, class_names=names)


def _check_classes(split: Split, names: tuple[str, ...], where: Path) -> None:
    if len(names) < 2:
        raise DataError(f"{where}: only one class ({names[0]!r}); classification needs at least two")


# === IDX (MNIST family) ===


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from e
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({data.size} of {int(np.prod(dims))} values)")
    return data.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: missing IDX file {stem}[.gz]")


def read_idx(root: str | Path, class_names: tuple[str, ...] = ()) -> ClassificationData:
    """MNIST-format files: ``train-images-idx3-ubyte[.gz]`` and friends in one folder.

    The test files (``t10k-*``) are the validation split. Class names come from the
    config, else a ``labels.txt`` beside the files, else the digits.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: IDX folder does not exist")
    splits = []
    for prefix in ("train", "t10k"):
        images = _read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int32)
        if len(images) != len(labels):
            raise DataError(f"{root}: {prefix} has {len(images)} images but {len(labels)} labels")
        splits.append(Split(labels=labels, images=images[..., None]))
    n = int(max(splits[0].labels.max(), splits[1].labels.max())) + 1
    if not class_names and (root / "labels.txt").is_file():
        class_names = tuple(line.strip() for line in (root / "labels.txt").read_text().splitlines() if line.strip())
    names = tuple(class_names) or tuple(str(i) for i in range(n))
    if len(names) < n:
        raise DataError(f"{root}: labels go up to {n - 1} but only {len(names)} class names were given")
    present = np.unique(splits[0].labels)
    if len(present) < 2:
        raise DataError(f"{root}: every training label is {int(present[0])}; classification needs at least two classes")
    return ClassificationData(train=splits[0], val=splits[1], class_names=names)


# === Entry point ===


def load(cfg: Config) -> ClassificationData:
    """Read the configured classification dataset."""
    d = cfg.data
    if d.format == "synthetic":
        images, labels, names = classification_set(d.synthetic_samples, d.synthetic_classes, size=64, seed=d.seed)
        train, val = ratio_split(Split(labels=labels, images=images), d.val_split, d.seed)
        return ClassificationData(train, val, tuple(names))
    if d.format == "folder":
        data = read_folder(d.path, d.val_split, d.seed)
    elif d.format == "idx":
        data = read_idx(d.path, d.class_names)
    else:  # config validation already limits the formats
        raise DataError(f"data.format {d.format!r} is not a classification format")
    if d.class_names and d.format == "folder" and tuple(d.class_names) != data.class_names:
        raise DataError(
            f"{d.path}: data.class_names {list(d.class_names)} differ from the folders {list(data.class_names)}"
        )
    log.info("%s: %d train / %d val images, %d classes", d.path, len(data.train), len(data.val), len(data.class_names))
    return data
