"""What lets ``edgepipe all`` resume: a stage's key (the config it reads, and for
training the data files it reads) and whether a stage is already done in a run folder.

An ``all`` interrupted in its export must not train again: hours of training (and
on a GPU, a different model) lost to a Ctrl-C. Each stage records its key in the
manifest; ``all`` skips a stage whose last entry ended ok with the same key and whose
recorded input and output files are still those files (sha256). Change the config a
stage reads, the data, or a model a stage reads, and that stage and those after it
run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from pipeline.core.images import IMAGE_SUFFIXES
from pipeline.core.rundir import RunDir, sha256
from pipeline.tasks import get_task

# The config sections each stage reads (cumulative: a later stage's model comes from
# the earlier ones'). A changed evaluate.* reruns evaluate only. QAT's two fine-tunes
# apart: the one from the float model (``qat:qat``) reads no prune settings, so a new
# prune redoes only the prune-preserving one (``qat:pqat``, as ``qat``).
_BASE = ("task", "data", "model", "train")
SECTIONS = {
    "train": _BASE,
    "prune": (*_BASE, "prune"),
    "qat": (*_BASE, "prune", "qat"),
    "qat:qat": (*_BASE, "qat"),
    "export": (*_BASE, "prune", "qat", "export"),
    "evaluate": (*_BASE, "prune", "qat", "export", "evaluate"),
}


# Settings that change how a stage runs, not what it makes: a resume after an
# out-of-memory kill with data.cache=disk, or with XLA off, is the same training.
_HOW = {"data": ("cache", "cache_budget_mb"), "train": ("xla", "worker_timeout_s")}
# Single settings a stage reads from a section it does not hold: QAT calibrates its
# quantization ranges on export.representative_samples images.
_ALSO = {"qat": (("export", "representative_samples"),)}


# Annotation files, read by content wherever they lie: a label fixed in place (a class
# id, a coordinate) often leaves the file's size as it was. So are segmentation masks
# (the images under these folders, or under data.train_masks / data.val_masks: an
# uncompressed PNG relabelled in place keeps its size) and MNIST's idx files.
_ANNOTATIONS = (".txt", ".xml", ".json", ".yaml", ".yml", ".csv")
_MASK_FOLDERS = {"masks", "SegmentationClass", "SegmentationObject"}
_MASK_KEYS = ("train_masks", "val_masks")


def _read_by_readers(name: str) -> bool:
    """Whether a file under a data folder is of a kind some reader reads: an image, an
    annotation or an idx file. Not a Finder's .DS_Store or Windows' Thumbs.db, which the
    desktop rewrites on a glance at the folder: in the key, they retrained for nothing."""
    lower = name.lower()
    return lower.endswith((*IMAGE_SUFFIXES, *_ANNOTATIONS)) or "ubyte" in lower


def data_stamp(data_cfg, sources=()) -> list:
    """What the data config names, and what the task's reader reads besides
    (``sources``: ``(name, path)`` of the images a COCO file lists beside it, the
    folders a YOLO data.yaml names): a file a ``data.*`` setting names by its
    content's sha256; under a folder (the files of kinds a reader reads, outside hidden
    folders), and among ``sources``, annotation files and masks by content too, and
    every other file (an image) by its name and its size (a stat, not a read of
    gigabytes): photos added, removed or replaced. A folder reached twice is
    read once, and a named file found again under a folder is not read again. Not
    modification times nor absolute paths, which differ between the copies of the data
    that the workers of a multi-worker run on several hosts read."""
    named = sorted((k, v, True) for k, v in dataclasses.asdict(data_cfg).items() if isinstance(v, str) and v)
    given = [e for e in [*named, *((name, str(p), False) for name, p in sources)] if os.path.exists(e[1])]
    out, seen, walked = [], set(), []
    # files first, so that one found again under a folder (the JSON inside data.path) is not read twice
    for key, value, is_named in sorted(given, key=lambda e: not os.path.isfile(e[1])):
        real = os.path.realpath(value)
        if real in seen or any(real.startswith(w) for w in walked):  # a folder under one walked already
            continue
        seen.add(real)
        if os.path.isfile(value):
            out.append([key, "", sha256(value) if is_named else _stamp(value)])
            continue
        walked.append(os.path.join(real, ""))
        # named files in this folder (the JSON inside data.path): skipped below, found by name
        # first (a realpath for every label file would double the key's time)
        inside = {os.path.basename(s) for s in seen if s.startswith(walked[-1])}
        root = len(os.path.join(value, ""))  # os.walk's paths start with it: the name under the folder
        masks = key in _MASK_KEYS
        for p in _files_under(value):
            name = p[root:]
            if not _read_by_readers(name):
                continue
            try:
                if inside and os.path.basename(p) in inside and os.path.realpath(p) in seen:
                    continue
                whole = masks or not _MASK_FOLDERS.isdisjoint(name.split(os.sep)[:-1])
                out.append([key, name, _stamp(p, whole)])
            except OSError:  # a broken link: the readers report it, if they read it
                continue
    return out


def _stamp(path: str, whole: bool = False):
    """A data file's part of the key: an annotation file's (or with ``whole``, a mask's)
    sha256, another's size."""
    if not (whole or path.lower().endswith(_ANNOTATIONS) or "ubyte" in path.lower()):
        return os.stat(path).st_size
    # Without sha256()'s per-process cache (a realpath and a stat more each, 4 times
    # slower over tens of thousands of label files); a large JSON in 1 MB pieces.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _files_under(folder: str) -> list[str]:
    """Every file under ``folder`` outside hidden folders (no reader reads
    ``.ipynb_checkpoints`` or ``.cache``), through links to folders (a class folder may
    be one), each real folder once (a link to a parent does not loop)."""
    seen, files = set(), []
    for d, dirs, names in os.walk(folder, followlinks=True):
        st = os.stat(d)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        files += [os.path.join(d, n) for n in names]
    return sorted(files)


def stage_key(cfg, stage: str, extra=None) -> str:
    """The hash of what ``stage`` reads from the config (``qat:pqat`` is ``qat``), of
    the data files for training, and of ``extra`` (export's variants and folder)."""
    base = stage if stage in SECTIONS else stage.split(":")[0]
    d = cfg.to_dict()
    identity = {s: d.get(s) for s in SECTIONS[base]}
    for section, keys in _HOW.items():
        if isinstance(identity.get(section), dict):
            identity[section] = {k: v for k, v in identity[section].items() if k not in keys}
    for section, key in _ALSO.get(base.split(":")[0], ()):
        identity[f"{section}.{key}"] = d.get(section, {}).get(key)
    if base == "train":
        identity["files"] = data_stamp(cfg.data, get_task(cfg.task).data_sources(cfg))
    identity["extra"] = extra
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


def completed(run: RunDir, stage: str, key: str) -> bool:
    """Whether the last ``stage`` entry of the manifest ended ok with ``key``, wrote
    something, and its input and output files are unchanged. The config file itself
    is left out: the key holds the part of it that the stage reads."""
    entries = [e for e in run.manifest()["stages"] if isinstance(e, dict) and e.get("stage") == stage]
    if not entries:
        return False
    last = entries[-1]
    outputs, inputs = last.get("outputs"), last.get("inputs")
    if last.get("status") != "ok" or last.get("key") != key or not outputs or not isinstance(outputs, dict):
        return False
    files = {**(inputs if isinstance(inputs, dict) else {}), **outputs}
    root = last.get("root")
    return all(Path(p).name == "config.yaml" or _unchanged(_here(Path(p), root, run), h) for p, h in files.items())


def _here(path: Path, root, run: RunDir) -> Path:
    """Where a recorded path is now: one inside the run folder as it was (``root``)
    is inside the run folder as it is, wherever that was moved."""
    if isinstance(root, str) and path.is_absolute():
        try:
            return run.path / path.relative_to(root)
        except ValueError:
            pass  # outside the run folder (an export folder): where it was
    return path


def _unchanged(path: Path, digest: str) -> bool:
    return path.is_file() and sha256(path) == digest
