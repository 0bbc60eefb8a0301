"""Pretrained weights for a backbone: ImageNet (keras.applications' files), a Keras
``.h5`` weights file, or an earlier edgepipe run.

Layers are matched by name. The backbone's layers must match in shape too (a
mismatch is another backbone or width: an error). The head loads too only from an
edgepipe run of the same classes (its train stage records their names): a segmenter
pretrained on a large set then seeds the whole segmenter for the user's set, layer by
layer where name and every shape match. Otherwise the head stays new, so a
classifier's run seeds a detector's backbone, and a model of other classes (even as
many) gets a new head. What loaded, and what did not, is logged and returned for the
manifest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

import numpy as np

from pipeline._keras import keras
from pipeline.core.backbones import backbone_info
from pipeline.core.config import Config
from pipeline.core.errors import WeightsError
from pipeline.core.rundir import RunDir
from pipeline.models.backbones import backbone_layer_names

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 15.0  # per socket operation: an absent network fails in seconds, not minutes


# === Where the weights come from ===


def keras_cache_dir() -> Path:
    """Where Keras' ``get_file`` caches downloads (``$KERAS_HOME`` or ``~/.keras``)."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(base) / "models"


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def imagenet_weights(cfg: Config) -> Path:
    """The keras.applications ImageNet file for the backbone, width and input size,
    from Keras' cache or downloaded into it by Keras' own ``get_file``.

    Raises:
        WeightsError: naming the backbone, width, size and file when there are no such
            weights or they cannot be fetched.
    """
    m = cfg.model
    info = backbone_info(m.backbone)
    what = f"model.backbone={m.backbone}, model.width={m.width:g}, model.input_size={m.input_size}"
    try:
        wf = info.imagenet_file(m.width, m.input_size)
    except ValueError as e:
        raise WeightsError(f"model.weights=imagenet ({what}): {e}; use model.weights=none or a PATH") from None
    cached = keras_cache_dir() / wf.file_name
    if wf.trained_size != m.input_size:
        log.info(
            "ImageNet weights of %s were trained at %d px; using them at %d px",
            m.backbone,
            wf.trained_size,
            m.input_size,
        )
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            path = keras.utils.get_file(wf.file_name, wf.origin, cache_subdir="models", file_hash=wf.file_hash)
    except Exception as e:  # noqa: BLE001 - get_file raises a bare Exception for URL errors
        raise WeightsError(
            f"model.weights=imagenet ({what}): cannot fetch Keras' weights file {wf.file_name} from {wf.origin} "
            f"({e}). Offline? Download that file on a machine with a network and copy it to {cached}, or set "
            f"model.weights=PATH to a Keras .h5 weights file of the backbone or an edgepipe run folder"
        ) from None
    return Path(path)


def source_class_names(source: Path) -> list[str] | None:
    """The class names an edgepipe run's train stage recorded, for its ``models/*.h5``
    (None for other files, and for runs trained before the names were recorded). A
    broken manifest is the run folder's own error, naming the file."""
    if source.parent.name != "models":
        return None
    stages = RunDir(source.parent.parent).manifest()["stages"]
    trains = [s for s in stages if isinstance(s, dict) and s.get("stage") == "train" and s.get("status") == "ok"]
    names = (trains[-1].get("results") or {}).get("class_names") if trains else None
    return [str(n) for n in names] if isinstance(names, list) else None


def resolve(cfg: Config) -> Path | None:
    """``model.weights`` → the ``.h5`` file to read (None for ``none``)."""
    spec = cfg.model.weights
    if spec == "none":
        return None
    if spec == "imagenet":
        return imagenet_weights(cfg)
    p = Path(spec).expanduser()
    if p.is_dir():
        f = p / "models" / "float.h5"
        if not f.is_file():
            raise WeightsError(
                f"model.weights: {p} is a folder but not a trained edgepipe run (no models/float.h5); "
                f"give a run folder, a .h5 weights file, none or imagenet"
            )
        return f
    if not p.is_file():
        raise WeightsError(f"model.weights: {p}: no such file or folder (expected none, imagenet or a PATH)")
    return p


# === Reading a Keras 2 HDF5 weights file ===


def _text(v) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def read_weights_file(path: str | Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``{layer name: [(weight name, value), ...]}`` from a Keras ``save_weights`` (or
    whole-model ``save``) HDF5 file, in each layer's weight order."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"model.weights: {path}: not a readable HDF5 weights file ({e})") from None
    with f:
        g = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in g.attrs:
            raise WeightsError(f"model.weights: {path}: not a Keras weights file (no layer_names attribute)")
        out = {}
        for layer in map(_text, g.attrs["layer_names"]):
            lg = g[layer]
            names = [_text(n) for n in lg.attrs.get("weight_names", [])]
            if names:
                out[layer] = [(n, np.asarray(lg[n])) for n in names]
        return out


def _base(weight_name: str) -> str:
    return weight_name.rsplit("/", 1)[-1]


def _values_for(layer, stored: dict) -> list[np.ndarray] | None:
    """The file's values for ``layer``: under its own name, or inside a TFMOT
    ``quant_<name>`` wrapper (a QAT run's weights), matched by weight name."""
    if layer.name in stored:
        return [v for _, v in stored[layer.name]]
    wrapped = stored.get(f"quant_{layer.name}")
    if wrapped is None:
        return None
    by_base = {_base(n): v for n, v in wrapped}
    values = [by_base.get(_base(w.name)) for w in layer.weights]
    return None if any(v is None for v in values) else values


def _fit(value: np.ndarray, shape: tuple, layer: str, index: int, source: Path, notes: list[str]) -> np.ndarray:
    """``value`` in the model's shape, or a WeightsError naming the layer and both shapes.

    One mismatch is adapted: an RGB stem under a grayscale model (``model.channels=1``)
    gets its kernel summed over the RGB axis, the usual way to keep what the
    filters respond to on a gray image.
    """
    if tuple(value.shape) == shape:
        return value
    if (
        value.ndim == 4
        and value.shape[2] == 3
        and shape[2] == 1
        and value.shape[:2] + value.shape[3:] == shape[:2] + shape[3:]
    ):
        notes.append(f"{layer}: RGB kernel {tuple(value.shape)} summed over its input channels for the grayscale model")
        return value.sum(axis=2, keepdims=True)
    raise WeightsError(
        f"model.weights: {source}: layer {layer!r} weight {index} has shape {tuple(value.shape)} in the file but "
        f"{shape} in the model (another model.backbone, model.width or model.channels?)"
    )


def load_backbone_weights(model: keras.Model, cfg: Config, source: Path, class_names=None) -> dict:
    """Load the backbone layers of ``model`` from ``source`` by name and shape; and, when
    ``source`` is an edgepipe run of the same ``class_names``, the head layers whose name
    and shapes both match.

    Returns:
        A summary for the manifest: backbone layers and parameters loaded, backbone
        layers not found in the file, the head layers and parameters loaded, and the
        (new) head layers.

    Raises:
        WeightsError: when nothing matches, or a backbone layer's shapes differ.
    """
    stored = read_weights_file(source)
    backbone = backbone_layer_names(cfg.model)
    loaded, missing, notes, params = [], [], [], 0
    for layer in model.layers:
        if layer.name not in backbone or not layer.weights:
            continue
        values = _values_for(layer, stored)
        if values is None:
            missing.append(layer.name)
            continue
        if len(values) != len(layer.weights):
            raise WeightsError(
                f"model.weights: {source}: layer {layer.name!r} has {len(values)} weights in the file but "
                f"{len(layer.weights)} in the model"
            )
        shapes = [tuple(w.shape) for w in layer.weights]
        layer.set_weights([_fit(v, s, layer.name, i, source, notes) for i, (v, s) in enumerate(zip(values, shapes))])
        loaded.append(layer.name)
        params += sum(int(np.prod(s)) for s in shapes)
    if not loaded:
        example = next(iter(stored), "none")
        raise WeightsError(
            f"model.weights: {source}: no layer of the {cfg.model.backbone} backbone matches the file by name "
            f"({len(stored)} layers with weights in it, e.g. {example!r}); is it a file of another backbone?"
        )
    head_loaded, head_params = [], 0
    same_classes = class_names is not None and source_class_names(source) == list(class_names)
    for layer in model.layers:
        if not same_classes or layer.name in backbone or not layer.weights:
            continue
        values = _values_for(layer, stored)
        shapes = [tuple(w.shape) for w in layer.weights]
        if values is None or [tuple(v.shape) for v in values] != shapes:
            continue  # another task's or class count's head: it stays new
        layer.set_weights(values)
        head_loaded.append(layer.name)
        head_params += sum(int(np.prod(s)) for s in shapes)
    head = [layer.name for layer in model.layers if layer.weights and layer.name not in backbone]
    new = [name for name in head if name not in head_loaded]
    for note in notes:
        log.info(note)
    log.info(
        "loaded %d backbone layers (%s parameters) and %d head layers (%s; %s) from %s; %d backbone layers not in "
        "the file%s; new (head) layers: %s",
        len(loaded),
        f"{params:,}",
        len(head_loaded),
        f"{head_params:,} parameters",
        "a run of the same classes" if same_classes else "the head loads only from a run of the same classes",
        source,
        len(missing),
        f" ({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''})" if missing else "",
        ", ".join(new) or "none",
    )
    return {
        "source": str(source),
        "loaded_layers": len(loaded),
        "loaded_params": params,
        "backbone_layers_not_loaded": missing,
        "head_layers_loaded": head_loaded,
        "head_params_loaded": head_params,
        "new_layers": new,
        "adapted": notes,
    }


def load_pretrained(model: keras.Model, cfg: Config, class_names=None) -> dict | None:
    """Apply ``model.weights`` to a freshly built model of ``class_names`` (None for ``none``)."""
    source = resolve(cfg)
    return None if source is None else load_backbone_weights(model, cfg, source, class_names)
