"""TFLite export: named quantization presets → ``.tflite`` + labels + metadata + sidecar.

A variant (:mod:`pipeline.core.variants`) is a source model and a preset name; one
function applies any preset to a converter from a table, no pile of booleans.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.core.images import normalize, with_full_range
from pipeline.core.metadata import add_metadata
from pipeline.core.rundir import StageInputError, sha256, write_bytes, write_json, write_text
from pipeline.core.sidecar import Sidecar, write_sidecar
from pipeline.core.tflite import describe_tensor, weight_sparsity
from pipeline.core.variants import VARIANTS, check_variant_names
from pipeline.stages.optimize import build_qat, overall_sparsity
from pipeline.stages.weights import rebuild
from pipeline.tasks import get_task

log = logging.getLogger(__name__)


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


# === Stage ===


def resolve_variants(requested, run) -> list[str]:
    """``auto`` → every variant whose source model exists; explicit names must exist."""
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
    task = get_task(cfg.task)
    names = resolve_variants(variants or cfg.export.variants, run)
    spec = cfg.input_spec()
    out = Path(out_dir or Path(cfg.export.dir) / run.name)
    sources = sorted({VARIANTS[n].source for n in names})
    with run.stage("export", inputs=[run.weights(s) for s in sources] + [run.config_path]) as entry:
        data = task.load_data(cfg)
        class_names = list(task.class_names(data))
        calib = list(task.calibration_images(data, cfg, spec, cfg.export.representative_samples))
        rep = representative_dataset(calib, spec)
        write_text(out / "labels.txt", "\n".join(class_names) + "\n")
        models, written = {}, {}
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
            serving = functools.partial(task.serving, cfg=cfg)
            blob = convert(models[v.source], v.preset, rep, cfg.export.int8_io, serving=serving)
            blob = add_metadata(
                blob,
                name=f"{run.name} {name}",
                description=f"{cfg.task} model from edgepipe: {v.source} weights, {v.preset} preset",
                version=f"edgepipe {__version__}",
                spec=spec,
                outputs=task.output_signature(class_names),
                class_names=class_names,
            )
            path = out / f"{name}.tflite"
            write_bytes(path, blob)
            io = _io_details(blob)
            sidecar = Sidecar(
                task=cfg.task,
                variant=name,
                source_model=v.source,
                preset=v.preset,
                model_file=path.name,
                class_names=tuple(class_names),
                input={**spec.to_dict(), **io["input"]},
                outputs=tuple({**sig, **o} for sig, o in zip(task.output_signature(class_names), io["outputs"])),
                extras=task.sidecar_extras(cfg),
                sparsity=round(weight_sparsity(blob), 4),
                keras_sparsity=round(overall_sparsity(models[v.source]), 4),
                sources={
                    str(run.weights(v.source)): sha256(run.weights(v.source)),
                    str(run.config_path): sha256(run.config_path),
                },
                model_sha256=sha256(path),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            entry["outputs"] += [path, write_sidecar(path, sidecar)]
            written[name] = str(path.resolve())  # evaluate may run from another directory
        entry["outputs"].append(out / "labels.txt")
        write_json(run.path / "exports.json", {"dir": str(out.resolve()), "variants": written})
    return written


def _io_details(blob: bytes) -> dict:
    """Input/output dtype, shape and quantization as the runtime will see them."""
    from pipeline.runtime.tflite_model import open_interpreter, ordered_outputs

    it = open_interpreter(model_content=blob)

    def describe(d: dict) -> dict:
        return {k: v for k, v in describe_tensor(d).items() if k != "name"}

    return {"input": describe(it.get_input_details()[0]), "outputs": [describe(d) for d in ordered_outputs(it)]}
