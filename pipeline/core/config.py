"""Typed, frozen configuration: YAML → validated dataclasses.

A config is locked (big_vision's ``lock_config``): an unknown key, a value of the
wrong type or a value out of range is a :class:`ConfigError` that names the key and
the value, raised before any work starts. Each task supplies its own defaults and
its own data formats; the user's file and ``--set key=value`` overrides go on top.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.core.backbones import BACKBONE_INFO, backbone_info
from pipeline.core.errors import ConfigError
from pipeline.core.images import InputSpec
from pipeline.core.registry import get_spec, task_names
from pipeline.core.variants import check_variant_names

log = logging.getLogger(__name__)


def _range(lo: float | None = None, hi: float | None = None, **kw: Any) -> dict:
    return {"range": (lo, hi), **kw}


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split and augmented."""

    format: str = "synthetic"
    path: str = ""
    val_split: float = field(default=0.2, metadata=_range(0.0, 0.9, open_lo=True))
    seed: int = field(default=0, metadata=_range(0, 2**32 - 1))
    class_names: tuple[str, ...] = ()
    # Segmentation: how many classes the masks hold (0: from data.class_names, else
    # inferred from the masks). Mask values beyond it become data.ignore_index.
    num_classes: int = field(default=0, metadata=_range(0, 255))
    synthetic_samples: int = field(default=1200, metadata=_range(8, None))
    synthetic_classes: int = field(default=4, metadata=_range(2, 8))
    splits: tuple[str, str] = ("train", "val")
    train_annotations: str = ""
    val_annotations: str = ""
    train_images: str = ""
    val_images: str = ""
    train_masks: str = ""
    val_masks: str = ""
    ignore_index: int = field(default=255, metadata=_range(0, 255))
    augment: bool = True
    # Mirroring in augmentation (keras-cv RandomFlip's modes). "none" where left and
    # right differ: digits, text, signs, arrows (a mirrored 2 is a 5-like shape).
    flip: Literal["horizontal", "vertical", "horizontal_and_vertical", "none"] = "horizontal"
    # Random rotation and shear, ± degrees (Ultralytics' degrees and shear); 0: none.
    rotation: float = field(default=0.0, metadata=_range(0.0, 180.0))
    shear: float = field(default=0.0, metadata=_range(0.0, 45.0))
    # Segmentation and detection: the random zoom (input size over window size); below 1
    # zooms out, padding with black (ignored in segmentation masks). Detection's default
    # is (0.75, 1.3); classification ignores it.
    zoom: tuple[float, float] = field(default=(1.0, 1.5), metadata=_range(0.25, 4.0))
    # Segmentation: fresh compositions from each training batch's own samples, against a
    # few hundred photos being memorised. mosaic: the chance that a sample becomes four
    # (its own and three others' quarters, split at a random point, each at its own
    # place and scale); copy_paste: the chance that another sample's objects (every class
    # but 0, which must be the background) are pasted over it where they stand.
    mosaic: float = field(default=0.0, metadata=_range(0.0, 1.0))
    copy_paste: float = field(default=0.0, metadata=_range(0.0, 1.0))
    # Prepared samples after their first read: in memory when they fit the budget, else
    # on disk in RUN/cache, or read from the files every epoch (pipeline/data/stream.py).
    cache: Literal["auto", "memory", "disk", "off"] = "auto"
    cache_budget_mb: int = field(default=1024, metadata=_range(0, None))
    shuffle_buffer: int = field(default=2048, metadata=_range(1, None))


@dataclass(frozen=True)
class ModelConfig:
    """Architecture knobs shared by every task's model."""

    backbone: str = "mobilenet_v2_lite"
    weights: str = "none"  # none | imagenet | PATH (a .h5 weights file or an edgepipe run folder)
    input_size: int = field(default=64, metadata=_range(16, 1024))
    channels: Literal[1, 3] = 3
    width: float = field(default=1.0, metadata=_range(0.125, 4.0))
    depth: float = field(default=1.0, metadata=_range(0.25, 4.0))
    stem_stride: Literal[1, 2] = 2
    resize: Literal["stretch", "letterbox"] = "stretch"
    dropout: float = field(default=0.1, metadata=_range(0.0, 0.9))


@dataclass(frozen=True)
class TrainConfig:
    """Float training: schedule, callbacks and hardware switches."""

    epochs: int = field(default=10, metadata=_range(1, 10_000))
    batch_size: int = field(default=64, metadata=_range(1, 65_536))
    learning_rate: float = field(default=3e-3, metadata=_range(0.0, 10.0, open_lo=True))
    warmup_epochs: float = field(default=1.0, metadata=_range(0.0, None))
    weight_decay: float = field(default=1e-4, metadata=_range(0.0, 1.0))
    early_stopping_patience: int = field(default=5, metadata=_range(0, None))
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    xla: Literal["auto", "on", "off"] = "auto"
    seed: int = field(default=0, metadata=_range(0, 2**32 - 1))
    steps_per_epoch: int = field(default=0, metadata=_range(0, None))
    freeze_backbone_epochs: int = field(default=0, metadata=_range(0, 10_000))
    backbone_lr_mult: float = field(default=0.1, metadata=_range(0.0, 10.0))
    # Segmentation: cross-entropy weight per pixel = its class's frequency in the batch
    # to the power -class_balance (0: plain; 1: every class present weighs the same).
    class_balance: float = field(default=0.0, metadata=_range(0.0, 2.0))
    # Several workers: how long each waits for the others to meet before it stops,
    # naming TF_CONFIG and the addresses it cannot reach.
    worker_timeout_s: float = field(default=300.0, metadata=_range(1.0, None))


@dataclass(frozen=True)
class PruneConfig:
    """Magnitude pruning with a polynomial schedule, then strip."""

    target_sparsity: float = field(default=0.5, metadata=_range(0.0, 0.99))
    epochs: int = field(default=2, metadata=_range(1, 10_000))
    learning_rate: float = field(default=5e-4, metadata=_range(0.0, 10.0, open_lo=True))
    structured_2_4: bool = False
    schedule_end: float = field(default=0.7, metadata=_range(0.05, 1.0))
    min_params: int = field(default=512, metadata=_range(0, None))


@dataclass(frozen=True)
class QATConfig:
    """Quantization-aware fine-tuning (prune-preserving when a pruned model exists)."""

    epochs: int = field(default=2, metadata=_range(1, 10_000))
    learning_rate: float = field(default=2e-4, metadata=_range(0.0, 10.0, open_lo=True))
    sources: tuple[Literal["float", "pruned"], ...] = ("float", "pruned")


@dataclass(frozen=True)
class ExportConfig:
    """Which TFLite variants to write, and how int8 is calibrated."""

    variants: tuple[str, ...] = ("auto",)
    dir: str = "exports"
    representative_samples: int = field(default=200, metadata=_range(1, 100_000))
    int8_io: Literal["uint8", "int8"] = "uint8"
    # Detection only: the forms of each variant, "none" (decoded boxes and scores, NMS
    # after the model) and "mobile" (the SSD post-processing op in the graph, for
    # MediaPipe's ObjectDetector and the Task Library), written as <variant>_mobile.tflite.
    detection_postprocess: tuple[Literal["none", "mobile"], ...] = ("none", "mobile")


@dataclass(frozen=True)
class EvaluateConfig:
    """How each exported variant is measured on the LiteRT runtime."""

    threads: int = field(default=2, metadata=_range(1, 64))
    latency_threads: tuple[int, ...] = field(default=(1, 2), metadata=_range(1, 64))  # per item
    latency_runs: int = field(default=50, metadata=_range(1, 100_000))
    warmup_runs: int = field(default=5, metadata=_range(0, 10_000))
    max_samples: int = field(default=0, metadata=_range(0, None))
    batch_size: int = field(default=32, metadata=_range(1, 4096))


@dataclass(frozen=True)
class Config:
    """The whole, resolved configuration of one run."""

    task: str = "classification"  # a name in pipeline.core.registry.REGISTRY
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig = PruneConfig()
    qat: QATConfig = QATConfig()
    export: ExportConfig = ExportConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists) for YAML/JSON."""
        return _plain(dataclasses.asdict(self))

    def input_spec(self) -> InputSpec:
        """What the model takes: size, channels, resize mode, and the normalization its
        backbone's weights expect."""
        m, info = self.model, backbone_info(self.model.backbone)
        return InputSpec(size=m.input_size, channels=m.channels, resize=m.resize, mean=info.mean, std=info.std)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# === Validation ===


def _coerce(key: str, value: Any, tp: Any, meta: dict) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and "off" in choices:
            # YAML 1.1 reads a bare on/off as a bool (and data.cache was a bool once)
            value = ("on" if "on" in choices else "auto") if value else "off"
        elif value is False and "none" in choices:  # data.flip: off / no / false
            value = "none"
        if value not in choices or type(value) is not type(choices[0]):
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        item_tp = args[0]
        if isinstance(value, str):  # --set k=a,b; numbers read as YAML (1,2 gives ints), names stay text
            value = [v.strip() if item_tp is str else _yaml_scalar(v.strip()) for v in value.split(",") if v.strip()]
        elif args[-1] is Ellipsis and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # --set evaluate.latency_threads=2
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} items, got {list(value)!r}")
        return tuple(_coerce(f"{key}[{i}]", v, item_tp, meta) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(
                f"{key}: expected a string, got {value!r} (YAML read it as {type(value).__name__}); "
                'quote it in YAML, e.g. --set \'data.path="2024"\' or class_names: ["0", "1"]'
            )
    lo, hi = meta.get("range", (None, None))
    if lo is not None and (value < lo or (meta.get("open_lo") and value == lo)):
        if meta.get("open_lo"):
            raise ConfigError(f"{key}: {value!r} must be greater than {lo}")
        raise ConfigError(f"{key}: {value!r} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: {value!r} is above the maximum {hi}")
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key '{where}{unknown[0]}' (value {raw[unknown[0]]!r}); "
            f"valid keys under {prefix or 'the top level'}: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key)
        else:
            kwargs[name] = _coerce(key, value, tp, dict(fields[name].metadata))
    return cls(**kwargs)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _yaml_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_override(item: str) -> dict:
    """Turn ``a.b=value`` into ``{"a": {"b": value}}``, the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; an empty file is an empty mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start}); is it a config?") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    task: str | None = None,
    base: dict | None = None,
) -> Config:
    """Resolve a config: task defaults ← ``base`` ← YAML file ← ``--set`` overrides.

    Raises:
        ConfigError: for unknown keys, wrong types, out-of-range values or a data
            format the task does not read.
    """
    raw = _migrate(dict(base or {}), "the saved config")
    if path is not None:
        raw = _merge(raw, _migrate(read_yaml(path), str(path)))
    for item in overrides:
        raw = _merge(raw, _migrate(parse_override(item), f"--set {item}"))
    chosen = task or raw.get("task") or "classification"
    if raw.get("task") not in (None, chosen):
        raise ConfigError(f"task: the config says {raw['task']!r} but --task is {chosen!r}")
    if not isinstance(chosen, str) or chosen not in task_names():
        raise ConfigError(f"task: {chosen!r} is not one of {list(task_names())}")
    spec = get_spec(chosen)
    raw = _merge(_merge({}, spec.default_config), raw)
    raw["task"] = chosen
    cfg = _build(Config, raw, "")
    # ~ in a path, as a shell would (model.weights does the same): --set data.path=~/photos
    paths = {f.name: getattr(cfg.data, f.name) for f in dataclasses.fields(DataConfig) if f.type == "str"}
    home = {k: os.path.expanduser(v) for k, v in paths.items() if v.startswith("~")}
    if home:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **home))
    if cfg.export.dir.startswith("~"):
        cfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, dir=os.path.expanduser(cfg.export.dir)))
    if cfg.data.format not in spec.data_formats:
        raise ConfigError(
            f"data.format: {cfg.data.format!r} is not a {chosen} format; expected one of {list(spec.data_formats)}"
        )
    d = cfg.data
    if d.format != "synthetic" and not (d.path or d.train_annotations or d.train_images):
        raise ConfigError(f"data.path: required when data.format is {cfg.data.format!r}")
    _check_model(cfg)
    d = cfg.data
    if d.num_classes and d.class_names and d.num_classes != len(d.class_names):
        raise ConfigError(
            f"data.num_classes={d.num_classes} but data.class_names lists {len(d.class_names)} names; "
            "give one of them, or make them agree"
        )
    if d.zoom[0] > d.zoom[1]:
        raise ConfigError(f"data.zoom: expected low,high with low <= high, got {list(d.zoom)}")
    for key in ("mosaic", "copy_paste"):
        if getattr(d, key) and chosen != "segmentation":  # silently ignored would mislead an A/B
            raise ConfigError(f"data.{key}: segmentation only (the {chosen} task does not mix batches); leave it 0")
    check_variant_names(cfg.export.variants)
    for key, value, what in (
        ("export.detection_postprocess", cfg.export.detection_postprocess, "a form, none or mobile"),
        ("export.variants", cfg.export.variants, "a variant, or auto"),
        ("evaluate.latency_threads", cfg.evaluate.latency_threads, "a thread count"),
    ):
        if not value:  # an empty list would export or time nothing, and say nothing
            raise ConfigError(f"{key}: empty; give at least {what}")
    return cfg


# Keys renamed since a release: old configs (and run folders' config.yaml) still load.
_RENAMED = {("model", "name"): ("model", "backbone")}


def _migrate(raw: dict, where: str) -> dict:
    for (section, old), (_, new) in _RENAMED.items():
        block = raw.get(section)
        if isinstance(block, dict) and old in block:
            block = dict(block)
            if new in block:
                raise ConfigError(f"{where}: {section}.{old} is the old name of {section}.{new}; give only {new}")
            log.warning("%s: %s.%s is now called %s.%s", where, section, old, section, new)
            block[new] = block.pop(old)
            raw = {**raw, section: block}
    return raw


def _check_model(cfg: Config) -> None:
    """Backbone-dependent rules, checked before any work starts."""
    m = cfg.model
    info = BACKBONE_INFO.get(m.backbone)
    if info is None:
        raise ConfigError(f"model.backbone: unknown backbone {m.backbone!r}. Expected one of {sorted(BACKBONE_INFO)}.")
    if not info.configurable_depth:
        for key, value, default in (("depth", m.depth, 1.0), ("stem_stride", m.stem_stride, 2)):
            if value != default:
                raise ConfigError(
                    f"model.{key}: {value!r} applies to model.backbone=mobilenet_v2_lite only; "
                    f"{m.backbone} has a fixed {key} (leave model.{key} at {default})"
                )
        if m.input_size < 32:
            raise ConfigError(f"model.input_size: {m.input_size} is below {m.backbone}'s minimum of 32")
    if m.weights == "imagenet":
        try:
            info.imagenet_file(m.width, m.input_size)
        except ValueError as e:
            raise ConfigError(f"model.weights=imagenet: {e}; use model.weights=none or a PATH") from None
    elif not m.weights:
        raise ConfigError("model.weights: expected none, imagenet or a PATH, got an empty string")


def dump(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def reference() -> str:
    """A Markdown table of every key, its type and default, generated from the classes."""
    rows = ["| key | type | default | range |", "| --- | --- | --- | --- |"]
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(cls):
            rows.append(f"| `{section.name}` | {_type_name(cls)} | `{section.default}` | |")
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            lo, hi = f.metadata.get("range", (None, None))
            rng = (
                ""
                if lo is None and hi is None
                else f"{'' if lo is None else lo}{' (excl.)' if f.metadata.get('open_lo') else ''} … {'' if hi is None else hi}"
            )
            rows.append(f"| `{section.name}.{f.name}` | {_type_name(hints[f.name])} | `{_plain(f.default)}` | {rng} |")
    return "\n".join(rows)


def write_reference(path: str | Path) -> None:
    """Rewrite the generated block of a Markdown file (``docs/config.md``) with :func:`reference`."""
    p = Path(path)
    text = p.read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    i, j = text.index(start) + len(start), text.index(end)
    p.write_text(text[:i] + reference() + "\n" + text[j:])


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))
