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


# Annotation files, read by content wherever they lie: a label fixed in place (a class
# id, a coordinate) often leaves the file's size as it was.
_ANNOTATIONS = (".txt", ".xml", ".json", ".yaml", ".yml", ".csv")


def data_stamp(data_cfg, sources=()) -> list:
    """What the data config names, and the folders ``sources`` the task's reader reads
    besides (images beside a COCO file, the folders a YOLO data.yaml lists): a file by
    its content's sha256; under a folder, annotation files by content too, and every
    other file (an image, a mask) by its name there and its size (a stat, not a read of
    gigabytes): photos added, removed or replaced. Not modification times nor absolute
    paths, which differ between the copies of the data that the workers of a
    multi-worker run on several hosts read."""
    named = sorted((k, v) for k, v in dataclasses.asdict(data_cfg).items() if isinstance(v, str) and v)
    out = []
    for key, value in [*named, *(("source", str(s)) for s in sources)]:
        if not os.path.exists(value):
            continue
        if os.path.isfile(value):
            out.append([key, "", sha256(value)])
            continue
        root = len(os.path.join(value, ""))  # os.walk's paths start with it: the name under the folder
        for p in _files_under(value):
            try:
                out.append([key, p[root:], _digest(p) if p.lower().endswith(_ANNOTATIONS) else os.stat(p).st_size])
            except OSError:  # a broken link: the readers report it, if they read it
                continue
    return out


def _digest(path: str) -> str:
    """A small file's sha256, read whole: for tens of thousands of label files, without
    :func:`sha256`'s per-process cache (a realpath and a stat more each, 4 times slower)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _files_under(folder: str) -> list[str]:
    """Every file under ``folder``, through links to folders (a class folder may be
    one), each real folder once (a link to a parent does not loop)."""
    seen, files = set(), []
    for d, dirs, names in os.walk(folder, followlinks=True):
        st = os.stat(d)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
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
