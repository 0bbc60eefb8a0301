"""TFLite export: named quantization presets → ``.tflite`` + labels + JSON sidecar.

A variant is a (source model, preset) pair from one table, the way model_maker's
``QuantizationConfig.for_int8 / for_float16 / for_dynamic`` name presets: one
function applies any preset to a converter, no pile of booleans.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline.data.images import normalize, with_full_range

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    source: str  # float | pruned | qat | pqat: weights in RUN/models
    preset: str  # float32 | float16 | dynamic | int8


VARIANTS: dict[str, Variant] = {
    "float32": Variant("float", "float32"),
    "float16": Variant("float", "float16"),
    "dynamic": Variant("float", "dynamic"),
    "int8": Variant("float", "int8"),
    "pruned_float32": Variant("pruned", "float32"),
    "pruned_int8": Variant("pruned", "int8"),
    "qat_int8": Variant("qat", "int8"),
    "pqat_int8": Variant("pqat", "int8"),
}


def check_variant_names(names) -> None:
    """Raise a config error for an unknown variant name (``auto`` means all available)."""
    from pipeline.config import ConfigError

    if "auto" in names and len(names) > 1:
        raise ConfigError(
            f"export.variants: 'auto' means every available variant; do not mix it with names ({list(names)})"
        )
    for n in names:
        if n != "auto" and n not in VARIANTS:
            raise ConfigError(f"export.variants: unknown variant {n!r}. Expected 'auto' or some of {sorted(VARIANTS)}.")


# === Presets ===


def _float32(conv, rep, io) -> None:
    pass


def _float16(conv, rep, io) -> None:
    from pipeline._keras import tf

    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]


def _dynamic(conv, rep, io) -> None:
    from pipeline._keras import tf

    conv.optimizations = [tf.lite.Optimize.DEFAULT]


def _int8(conv, rep, io) -> None:
    from pipeline._keras import tf

    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8 if io == "uint8" else tf.int8
    conv.inference_output_type = tf.uint8 if io == "uint8" else tf.int8


PRESETS: dict[str, Callable] = {"float32": _float32, "float16": _float16, "dynamic": _dynamic, "int8": _int8}


def convert(
    model, preset: str, representative: Callable | None = None, int8_io: str = "uint8", serving: Callable | None = None
) -> bytes:
    """Convert a Keras model with batch size 1 under the named preset.

    Args:
        serving: the task's ``serving(outputs) -> {name: tensor}``: in-graph post-processing
            (e.g. box decoding) and the output names. The TFLite outputs come in
            alphabetical order of those names (TFLite names them ``Identity_<k>`` in
            the sorted order of the dict's keys), and :class:`TFLiteModel` relies on it.
    """
    from pipeline._keras import tf

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}. Expected one of {sorted(PRESETS)}.")
    shape = [1, *model.input_shape[1:]]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    def serve(x):
        y = model(x, training=False)
        return serving(y) if serving is not None else {"scores": y}

    # Without ``trackable_obj`` the converter freezes the graph directly instead of
    # writing a SavedModel first: 2 s instead of 20-30 s per variant on 2 cores, and
    # the round-trip tests check that the files are the same model.
    with _quiet_absl():
        conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])
    PRESETS[preset](conv, representative, int8_io)
    return conv.convert()


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def representative_dataset(images: list[np.ndarray], spec) -> Callable:
    """Calibration generator over prepared uint8 images, normalized like training, with
    the input range pinned to the full pixel range (:func:`with_full_range`)."""
    pinned = with_full_range(list(images))

    def gen():
        for img in pinned:
            yield [normalize(img[None], spec)]

    return gen


# === Inspecting a .tflite file ===


def weight_sparsity(tflite: bytes) -> float:
    """Zero fraction of the weight tensors of CONV_2D / DEPTHWISE_CONV_2D /
    FULLY_CONNECTED ops, read from the flatbuffer itself (through DEQUANTIZE for
    float16 weights), so the figure describes the file that ships."""
    layers = layer_sparsity(tflite)
    return sum(z for _, z, _ in layers) / max(sum(n for _, _, n in layers), 1)


def layer_sparsity(tflite: bytes) -> list[tuple[str, int, int]]:
    """``(weight tensor name, zeros, weights)`` per CONV_2D / DEPTHWISE_CONV_2D /
    FULLY_CONNECTED op, in execution order (see :func:`weight_sparsity`)."""
    from tensorflow.lite.python import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(tflite, 0)
    codes = {i: c.builtinCode or c.deprecatedBuiltinCode for i, c in enumerate(m.operatorCodes)}
    op = schema.BuiltinOperator
    weighted = {op.CONV_2D, op.DEPTHWISE_CONV_2D, op.FULLY_CONNECTED}
    dtypes = {
        schema.TensorType.FLOAT32: np.float32,
        schema.TensorType.FLOAT16: np.float16,
        schema.TensorType.INT8: np.int8,
        schema.TensorType.UINT8: np.uint8,
    }
    layers = []
    for g in m.subgraphs:
        producer = {o.outputs[0]: o for o in g.operators if o.outputs is not None and len(o.outputs)}
        for o in g.operators:
            if codes[o.opcodeIndex] not in weighted:
                continue
            t = int(o.inputs[1])
            src = producer.get(t)
            if src is not None and codes[src.opcodeIndex] == op.DEQUANTIZE:
                t = int(src.inputs[0])
            tensor = g.tensors[t]
            buf = m.buffers[tensor.buffer].data
            if buf is None or tensor.type not in dtypes:
                continue
            w = np.frombuffer(bytes(bytearray(buf)), dtypes[tensor.type])
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            layers.append((name, int((w == 0).sum()), int(w.size)))
    return layers


# === Stage ===


def resolve_variants(requested, run) -> list[str]:
    """``auto`` → every variant whose source model exists; explicit names must exist."""
    from pipeline.rundir import StageInputError

    if list(requested) == ["auto"] or not requested:
        names = [n for n, v in VARIANTS.items() if run.has(v.source)]
        if not names:
            run.require("float")
        return names
    check_variant_names(requested)
    missing = [n for n in requested if not run.has(VARIANTS[n].source)]
    if missing:
        try:
            run.require(VARIANTS[missing[0]].source)
        except StageInputError as e:
            raise StageInputError(f"variant {missing[0]!r}: {e}") from None
    return list(requested)


def export(run, cfg, variants=None, out_dir: str | Path | None = None) -> dict:
    """Write each variant to ``exports/<run-name>/`` with labels and a sidecar.

    Returns:
        ``{variant: path}``, also saved as ``RUN/exports.json``.
    """
    from pipeline import __version__
    from pipeline.metadata import add_metadata
    from pipeline.optimize import build_qat, overall_sparsity
    from pipeline.rundir import sha256, write_bytes, write_json, write_text
    from pipeline.tasks import get_task
    from pipeline.train import input_spec, rebuild

    task = get_task(cfg.task)
    names = resolve_variants(variants or cfg.export.variants, run)
    spec = input_spec(cfg)
    out = Path(out_dir or Path(cfg.export.dir) / run.name)
    sources = sorted({VARIANTS[n].source for n in names})
    with run.stage("export", inputs=[run.weights(s) for s in sources] + [run.config_path]) as entry:
        data = task.load_data(cfg)
        class_names = list(task.class_names(data))
        calib = list(task.calibration_images(data, cfg, spec, cfg.export.representative_samples))
        rep = representative_dataset(calib, spec)
        write_text(out / "labels.txt", "\n".join(class_names) + "\n")
        models = {}
        written = {}
        for name in names:
            v = VARIANTS[name]
            if v.source not in models:
                w = run.weights(v.source)
                models[v.source] = (
                    build_qat(cfg, len(class_names), v.source, w)
                    if v.source in ("qat", "pqat")
                    else rebuild(cfg, len(class_names), w)
                )
            log.info("converting %s (%s model, %s preset)", name, v.source, v.preset)
            blob = convert(models[v.source], v.preset, rep, cfg.export.int8_io, serving=task.serving)
            blob = add_metadata(
                blob,
                task=cfg.task,
                name=f"{run.name} {name}",
                description=f"{cfg.task} model from edgepipe: {v.source} weights, {v.preset} preset",
                version=f"edgepipe {__version__}",
                spec=spec,
                outputs=task.output_signature(class_names),
                class_names=class_names,
            )
            path = out / f"{name}.tflite"
            write_bytes(path, blob)
            sidecar = {
                "format": "edgepipe-sidecar/1",
                "task": cfg.task,
                "variant": name,
                "source_model": v.source,
                "preset": v.preset,
                "model_file": path.name,
                "labels_file": "labels.txt",
                "class_names": class_names,
                "input": {**spec.to_dict(), **_io_details(blob)["input"]},
                "outputs": [
                    {**sig, **io} for sig, io in zip(task.output_signature(class_names), _io_details(blob)["outputs"])
                ],
                **task.sidecar_extras(cfg),
                "sparsity": round(weight_sparsity(blob), 4),
                "keras_sparsity": round(overall_sparsity(models[v.source]), 4),
                "sources": {
                    str(run.weights(v.source)): sha256(run.weights(v.source)),
                    str(run.config_path): sha256(run.config_path),
                },
                "model_sha256": sha256(path),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            write_json(path.with_suffix(".json"), sidecar)
            written[name] = str(path.resolve())  # evaluate may run from another directory
            entry["outputs"] += [path, path.with_suffix(".json")]
        entry["outputs"].append(out / "labels.txt")
        write_json(run.path / "exports.json", {"dir": str(out.resolve()), "variants": written})
    return written


def _io_details(blob: bytes) -> dict:
    """Input/output dtype, shape and quantization as the runtime will see them."""
    from pipeline.runtime.tflite_model import open_interpreter, ordered_outputs

    it = open_interpreter(model_content=blob)

    def describe(d: dict) -> dict:
        scale, zp = d["quantization"]
        return {
            "dtype": np.dtype(d["dtype"]).name,
            "tensor_shape": [int(s) for s in d["shape"]],
            "quantization": {"scale": float(scale), "zero_point": int(zp)} if scale else None,
        }

    return {"input": describe(it.get_input_details()[0]), "outputs": [describe(d) for d in ordered_outputs(it)]}


def read_sidecar(model_path: str | Path) -> dict:
    """The sidecar JSON beside a ``.tflite`` file."""
    p = Path(model_path).with_suffix(".json")
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no sidecar beside {Path(model_path).name}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: sidecar is not valid JSON ({e})") from e


if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main("export")
