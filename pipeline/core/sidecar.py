"""The export → runtime contract: the JSON sidecar beside every exported ``.tflite``.

One versioned dataclass, written by the exporter and read by the runner, ``evaluate``
and ``inspect`` through :func:`read_sidecar` alone. The format string carries a major
version: a reader refuses a major it does not know, with an error naming the file,
instead of misreading it.

Layout (``format`` first; a task's extras, e.g. detection's ``postprocess``, sit at
the top level beside the fixed keys)::

    {"format": "edgepipe-sidecar/1", "task": ..., "variant": ..., "source_model": ...,
     "preset": ..., "model_file": ..., "labels_file": ..., "class_names": [...],
     "input": {size, layout, channels, color_space, resize, normalization, dtype,
               tensor_shape, quantization},
     "outputs": [{name, kind, meaning, dtype, tensor_shape, quantization}, ...],
     "sparsity": ..., "keras_sparsity": ..., "sources": {path: sha256},
     "model_sha256": ..., "created": ...}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import ModelFileError, ModelNotFoundError
from pipeline.core.images import InputSpec
from pipeline.core.rundir import sha256, write_json

FORMAT = "edgepipe-sidecar/1"
_PREFIX, MAJOR = FORMAT.rsplit("/", 1)


@dataclass(frozen=True)
class Sidecar:
    """What an app (and our runtime) needs to use an exported model."""

    input: dict
    task: str = ""  # empty: the runner asks for --task
    variant: str = ""
    class_names: tuple[str, ...] = ()
    outputs: tuple[dict, ...] = ()
    model_file: str = ""
    labels_file: str = ""
    source_model: str = ""
    preset: str = ""
    sparsity: float = 0.0
    keras_sparsity: float = 0.0
    sources: dict = field(default_factory=dict)
    model_sha256: str = ""
    created: str = ""
    extras: dict = field(default_factory=dict)  # task-specific, e.g. detection's "postprocess"
    format: str = FORMAT

    @property
    def spec(self) -> InputSpec:
        return InputSpec.from_dict(self.input)

    @property
    def run_folder(self) -> Path | None:
        """The run folder the model was exported from: its ``sources`` name the run's
        config.yaml by absolute path. None where they do not (a hand-written sidecar,
        or one exported before the paths were absolute)."""
        for p in map(Path, self.sources if isinstance(self.sources, dict) else ()):
            if p.name == "config.yaml" and p.is_absolute():
                return p.parent
        return None

    def of_run(self, run_path: str | Path) -> bool:
        """Whether it is that run's export as far as can be told: it names that folder,
        or its weights are that run's now (the same run, moved or mounted elsewhere).
        One that names no folder (older, or hand-written) counts as the run's."""
        owner = self.run_folder
        return owner is None or owner.resolve() == Path(run_path).resolve() or self.made_from(run_path)

    def made_from(self, run_path: str | Path) -> bool:
        """Whether the weights it was exported from are those in ``run_path/models`` now
        (by sha256): the same run wherever its folder was moved or mounted, and not
        after a retrain."""
        weights = {Path(p).name: h for p, h in (self.sources or {}).items() if Path(p).name != "config.yaml"}
        models = Path(run_path) / "models"
        return bool(weights) and all((models / n).is_file() and sha256(models / n) == h for n, h in weights.items())

    def __getitem__(self, key: str):
        """Read access by JSON key, as when the sidecar was a plain dict."""
        return self.to_dict()[key]

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extras", "format")}
        d["class_names"], d["outputs"] = list(self.class_names), list(self.outputs)
        return {"format": self.format, **d, **self.extras}

    @classmethod
    def from_dict(cls, d: dict, where: str | Path = "sidecar") -> Sidecar:
        """Parse and check a sidecar dict; a :class:`ModelFileError` names ``where`` and the problem."""
        if not isinstance(d, dict):
            raise ModelFileError(f"{where}: expected a JSON object, found {type(d).__name__}")
        fmt = d.get("format", FORMAT)  # hand-written ones often leave it out: read them as this version
        prefix, _, major = str(fmt).rpartition("/")
        if prefix != _PREFIX:
            raise ModelFileError(f"{where}: not an edgepipe sidecar (format {fmt!r}, expected {FORMAT!r})")
        if major != MAJOR:
            raise ModelFileError(
                f"{where}: sidecar format {fmt!r} is from another edgepipe version (this one reads {FORMAT!r}); "
                f"re-export the model with this version"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"extras", "format"}
        if "input" not in d:
            raise ModelFileError(f"{where}: sidecar has no 'input'; re-export the model")
        try:
            InputSpec.from_dict(d["input"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ModelFileError(f"{where}: sidecar 'input' is malformed ({type(e).__name__}: {e})") from None
        fixed = {k: d[k] for k in names if k in d}
        fixed["class_names"] = tuple(str(n) for n in fixed.get("class_names", ()))
        fixed["outputs"] = tuple(fixed.get("outputs", ()))
        extras = {k: v for k, v in d.items() if k not in names and k != "format"}
        return cls(**fixed, extras=extras, format=fmt)


def sidecar_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def write_sidecar(model_path: str | Path, sidecar: Sidecar) -> Path:
    path = sidecar_path(model_path)
    write_json(path, sidecar.to_dict())
    return path


def read_sidecar(model_path: str | Path) -> Sidecar:
    """The sidecar beside a ``.tflite`` file.

    Raises:
        ModelNotFoundError: there is none (also a ``FileNotFoundError``).
        ModelFileError: it is not valid JSON or not a sidecar this version reads.
    """
    p = sidecar_path(model_path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ModelNotFoundError(f"{p}: no sidecar beside {Path(model_path).name}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{p}: cannot read the sidecar ({e})") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{p}: sidecar is not valid JSON ({e})") from None
    return Sidecar.from_dict(d, p)
