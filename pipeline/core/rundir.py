"""The run folder: resolved config, weights per stage, a manifest, atomic writes.

Layout::

    RUN/config.yaml            the resolved config (rewritten when a stage gets --set)
    RUN/manifest.json          every stage that ran: when, inputs (sha256), outputs, seconds
    RUN/models/<name>.h5          float | pruned | qat | pqat weights
    RUN/checkpoints/           best weights and BackupAndRestore state while training
    RUN/logs/                  TensorBoard; RUN/<stage>_log.csv the CSV logs
    RUN/exports.json           where `export` put each variant
    RUN/report.json, report.md from `evaluate`

Every stage reads its inputs here, so each one can be rerun alone.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from pipeline.core import config as config_mod
from pipeline.core.errors import StageInputError

log = logging.getLogger(__name__)

# Which stage produces each model, for "run X first" messages.
PRODUCER = {"float": "train", "pruned": "prune", "qat": "qat", "pqat": "qat"}
_LOG_OF = {"pruned": "prune", "qat": "qat", "pqat": "pqat"}  # each fine-tuned model's CSV log, <name>_log.csv


# === Atomic writes ===

# mkstemp creates 0600 files; an exported model or report should get the mode a plain
# open() gives (0666 less the umask), so other users and an app's build can read it.
# Read once at import, while no other thread can be changing the umask.
_UMASK = os.umask(0)
os.umask(_UMASK)


def through_link(path: Path) -> Path:
    """``path``, or where it points when it is a symbolic link (one to a file still
    to be written, too), so that a write replaces the file, not the link, as ``open``
    would. Not a ``/proc`` link to an open file, whose name is no path
    (``pipe:[123]``, ``/tmp/x (deleted)``): that one is left as it is."""
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    try:
        st = os.stat(path)
    except OSError:  # a link to a file not there yet: it will be made there
        return target
    try:
        same = os.path.samestat(st, os.stat(target))
    except OSError:
        same = False
    return target if same else path


@contextlib.contextmanager
def folder_lock(folder: Path, command: str, what: str, remedy: str, lock: Path | None = None) -> Iterator[None]:
    """Hold ``lock`` (default ``folder/.lock``) with ``flock``, which goes with its
    process however that ends, so a killed holder leaves no stale lock, while
    ``command`` works in ``folder``; a second process gets a StageInputError naming the
    holder and ``remedy``. Where the file system has no ``flock``, or the lock file
    cannot be made, a warning, and the work goes on unguarded."""
    import fcntl

    path = lock or Path(folder) / ".lock"
    try:
        f = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    except OSError as e:
        log.warning("%s: cannot lock the %s (%s); going on unguarded", path, what, e.strerror or e)
        yield
        return
    try:
        locked = True
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: EWOULDBLOCK / EAGAIN
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise StageInputError(f"{folder}: in use by {holder}; wait for it to end, or {remedy}") from None
        except OSError as e:  # a file system without flock (Lustre without -o flock, some NFS)
            log.warning("%s: cannot lock the %s (%s); going on unguarded", path, what, e.strerror or e)
            locked = False
        if locked:
            f.seek(0)
            f.truncate()
            since = datetime.now(timezone.utc).isoformat(timespec="seconds")
            f.write(f"edgepipe {command} (pid {os.getpid()} on {socket.gethostname()}, since {since})\n")
            f.flush()
        yield
    finally:
        f.close()  # releases the lock


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place atomically.

    The temporary name keeps the suffix, so writers that dispatch on it (Keras'
    ``.h5``) behave. On failure the temporary file is removed and ``path`` is untouched.
    A symbolic link is written through (:func:`through_link`): the rename replaces the
    file it points to, not the link (``/dev/stdout`` was once replaced that way).
    """
    path = through_link(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """The rename survives a power cut only once the folder's entry is on disk too
    (a camera's counts rewritten every few seconds, a checkpoint). Best effort: some
    filesystems refuse to open or sync a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, remedy: str) -> dict:
    """A run-folder JSON object, or an error naming the file and ``remedy`` (what to do)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StageInputError(f"{path}: not valid JSON ({e}); {remedy}") from None
    if not isinstance(obj, dict):
        raise StageInputError(f"{path}: expected a JSON object, found {type(obj).__name__}; {remedy}")
    return obj


def read_csv_log(path: str | Path, remedy: str, columns: tuple[str, ...] | None = None) -> list[dict[str, float]]:
    """A stage's CSVLogger file as rows of numbers (NaN where Keras wrote nothing or
    "NA"), or an error naming the file, the line and ``remedy``: two processes writing
    one log leave a header in the middle, a killed one a cut line. With ``columns``,
    only those must be numbers (others read as NaN when they are not: a list-valued
    metric, say)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise StageInputError(f"{path}: not a text CSV log ({e}); {remedy}") from None
    rows = list(csv.reader(lines))
    if not rows:
        return []
    header = rows[0]
    if "epoch" not in header:
        raise StageInputError(f"{path}: line 1 is not a CSV log header (no 'epoch' column); {remedy}")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise StageInputError(f"{path}: line {n} has {len(row)} fields, the header {len(header)}; {remedy}")
        values = {}
        for key, text in zip(header, row):
            try:
                values[key] = float(text) if text not in ("", "NA") else math.nan
            except ValueError:
                if columns is not None and key not in columns:
                    values[key] = math.nan
                    continue
                raise StageInputError(
                    f"{path}: line {n}, column {key!r}: {text!r} is not a number "
                    f"(a second header? two processes wrote this log); {remedy}"
                ) from None
        out.append(values)
    return out


_DIGESTS: dict[tuple, str] = {}  # (real path, inode, size, mtime in ns) -> sha256, for this process


def sha256(path: str | Path) -> str:
    """A file's sha256, read once per process while it is unchanged: a resumed ``all``
    checks each stage's inputs and outputs, and the weights are among those of every
    stage (hashing 2 GB five times would be the resume's whole cost)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


# === The run folder ===


class RunDir:
    """A run folder and the conventions for what lives in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def weights(self, model: str) -> Path:
        return self.path / "models" / f"{model}.h5"

    @property
    def cache(self) -> Path:
        """Where ``data.cache: disk`` keeps prepared samples (train, prune and QAT read them)."""
        return self.path / "cache"

    def has(self, model: str) -> bool:
        return self.weights(model).is_file()

    def forget_made_from(self, models: tuple[str, ...]) -> None:
        """``models`` (and their training logs) were made from a model just replaced,
        and so was the last export: removed, so that no later stage or export ships
        them as if they were made from the new one."""
        for m in models:
            self.weights(m).unlink(missing_ok=True)
            (self.path / f"{_LOG_OF[m]}_log.csv").unlink(missing_ok=True)
        (self.path / "exports.json").unlink(missing_ok=True)

    def require(self, model: str) -> Path:
        """The weights of ``model``, or an error naming the stage that makes them."""
        p = self.weights(model)
        if not p.is_file():
            stage = PRODUCER[model]
            raise StageInputError(f"{p} is missing: run `edgepipe {stage} --run-dir {self.path}` first")
        return p

    # --- config ---
    def save_config(self, cfg: config_mod.Config) -> None:
        write_text(self.config_path, config_mod.dump(cfg))

    def load_config(self, overrides: list[str] | tuple[str, ...] = (), save: bool = True) -> config_mod.Config:
        """The saved config with ``overrides`` applied (and saved back when given and ``save``)."""
        if not self.config_path.is_file():
            raise StageInputError(
                f"{self.config_path} is missing: run `edgepipe train --task ... --run-dir {self.path}` first"
            )
        raw = config_mod.read_yaml(self.config_path)
        frozen = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] in ("task", "model")]
        if frozen:  # the trained value itself is no change (a stage rerun with all's --set list)
            same = config_mod.load(None, frozen, task=raw.get("task"), base=raw)
            saved = config_mod.load(None, (), task=raw.get("task"), base=raw)
            frozen = [] if (same.task, same.model) == (saved.task, saved.model) else frozen
        if frozen:
            raise config_mod.ConfigError(
                f"{frozen[0]!r}: the model's shape is fixed once trained; "
                f"change it with `edgepipe train --set ...` in a new run folder"
            )
        cfg = config_mod.load(None, overrides, task=raw.get("task"), base=raw)
        if overrides and save:
            self.save_config(cfg)
        return cfg

    # --- one process at a time ---
    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold ``RUN/.lock`` while ``command`` works in the run folder: a second
        process (another train started by mistake, a second worker's ``all`` on a
        shared disk) gets a StageInputError naming the holder, instead of resuming the
        first one's live checkpoints or interleaving its logs. ``flock`` is released
        when the holder's process ends, however it ends, so a killed run leaves no
        stale lock. (Workers of one multi-worker run share the folder: only its chief
        takes the lock.)"""
        if not self.path.is_dir():
            if command not in ("train", "all"):
                yield  # no run yet: the stage says which one to run first
                return
            self.path.mkdir(parents=True, exist_ok=True)  # exist_ok: a second train racing to make it
        with folder_lock(self.path, command, "run folder", "use another --run-dir"):
            yield

    # --- manifest ---
    def manifest(self) -> dict:
        if not self.manifest_path.is_file():
            return {"run": self.name, "stages": []}
        m = read_json(self.manifest_path, "it only records what ran: fix it, or move it aside to start a new one")
        if not isinstance(m.get("stages"), list):
            raise StageInputError(
                f"{self.manifest_path}: no 'stages' list; fix it, or move it aside to start a new one"
            )
        return m

    @contextlib.contextmanager
    def stage(self, name: str, inputs: list[Path] = (), key: str | None = None) -> Iterator[dict]:
        """Record a stage in the manifest: inputs with checksums, outputs, duration, status,
        and ``key`` (what of the config and data it read: ``pipeline.stages.resume``).

        The body may append paths to ``entry["outputs"]`` and fill ``entry["results"]``.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest()  # a corrupt manifest stops the stage before its work, not after
        entry = {
            "stage": name,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            # absolute, and the folder they were in: a run folder moved elsewhere is
            # still found done by ``edgepipe all`` (pipeline.stages.resume.completed)
            "root": str(self.path.resolve()),
            "inputs": {str(Path(p).resolve()): sha256(p) for p in inputs if Path(p).is_file()},
            "outputs": [],
            "results": {},
            "status": "running",
            **({"key": key} if key else {}),
        }
        t0 = time.perf_counter()
        try:
            yield entry
            entry["status"] = "ok"
        except BaseException as e:
            entry["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            entry["error"] = f"{type(e).__name__}: {e}"
            raise
        finally:
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            entry["outputs"] = {str(p.resolve()): sha256(p) for p in map(Path, entry["outputs"]) if p.is_file()}
            m = self.manifest()
            m["stages"].append(entry)
            write_json(self.manifest_path, m)
