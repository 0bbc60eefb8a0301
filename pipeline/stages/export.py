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
from pipeline.core.errors import EdgepipeError
from pipeline.core.images import normalize, with_full_range
from pipeline.core.metadata import add_metadata
from pipeline.core.rundir import StageInputError, folder_lock, sha256, write_bytes, write_json, write_text
from pipeline.core.sidecar import Sidecar, read_sidecar, sidecar_path, write_sidecar
from pipeline.core.tflite import describe_tensor, weight_sparsity
from pipeline.core.variants import VARIANTS, check_variant_names
from pipeline.stages.optimize import build_qat, overall_sparsity
from pipeline.stages.resume import stage_key
from pipeline.stages.weights import rebuild
from pipeline.tasks import get_task
from pipeline.tasks.base import ExportGraph

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
    """Full integer; ``io`` is the input and output type, or ``uint8+float`` for a graph
    that ends in a float op (uint8 input, float32 outputs, the float op allowed)."""
    from pipeline._keras import tf

    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    if io == "uint8+float":
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        conv.inference_input_type = tf.uint8
        return
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8 if io == "uint8" else tf.int8
    conv.inference_output_type = tf.uint8 if io == "uint8" else tf.int8


PRESETS: dict[str, Callable] = {"float32": _float32, "float16": _float16, "dynamic": _dynamic, "int8": _int8}


def convert(
    model,
    preset: str,
    representative: Callable | None = None,
    int8_io: str = "uint8",
    serving: Callable | None = None,
    graph: ExportGraph | None = None,
) -> bytes:
    """Convert a Keras model with batch size 1 under the named preset.

    Args:
        serving: the task's ``serving(outputs) -> {name: tensor}``: in-graph post-processing
            (e.g. box decoding) and the output names. The TFLite outputs come in
            alphabetical order of those names (TFLite names them ``Identity_<k>`` in
            the sorted order of the dict's keys), and :class:`TFLiteModel` relies on it.
        graph: a task's own graph instead (``ExportGraph``: a module whose ``serve`` runs
            the model and, e.g., a post-processing op), converted with its module so
            the model's variables come along.
    """
    from pipeline._keras import tf

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}. Expected one of {sorted(PRESETS)}.")
    with _quiet_absl():
        if graph is not None:
            conv = tf.lite.TFLiteConverter.from_concrete_functions(
                [graph.module.serve.get_concrete_function()], graph.module
            )
            conv.allow_custom_ops = True
            if graph.float_outputs:
                int8_io = "uint8+float"
        else:
            shape = [1, *model.input_shape[1:]]

            @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
            def serve(x):
                y = model(x, training=False)
                return serving(y) if serving is not None else {"scores": y}

            # Without ``trackable_obj`` the converter freezes the graph directly instead
            # of writing a SavedModel first: 2 s instead of 20-30 s per variant on 2
            # cores, and the round-trip tests check that the files are the same model.
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
    default_io = task.spec.default_config.get("export", {}).get("int8_io", "uint8")
    if cfg.export.int8_io == "int8" and default_io == "uint8" and any(VARIANTS[n].preset == "int8" for n in names):
        # MediaPipe Tasks hands a model uint8 or float32 and refuses an int8 input tensor
        log.warning(
            "export.int8_io=int8: the int8 models take int8 input, which MediaPipe Tasks and the TFLite Task "
            "Library refuse (they take uint8 or float32); edgepipe run and LiteRT take it. For an app, keep "
            "export.int8_io=uint8 (this task's default)"
        )
    sources = sorted({VARIANTS[n].source for n in names})
    key = stage_key(cfg, "export", export_extra(names, out))
    with run.stage("export", inputs=[run.weights(s) for s in sources] + [run.config_path], key=key) as entry:
        check_export_folder(out, run)  # first: before the data is read or a model converted
        # The folder's lock, held to the end, and the check again under it: two exports
        # into one folder at the same moment (runs named alike) would both pass the check
        # made before, then mix their files. The lock file lies beside the folder, not in
        # what is copied to a device, nor on the run folder's own lock (an export to it).
        lock = out.parent / f".{out.name}.export.lock"
        with folder_lock(out, "export", "export folder", "export elsewhere (--out DIR)", lock):
            check_export_folder(out, run)
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
                for form in task.export_forms(cfg):
                    file_name = f"{name}_{form}" if form else name
                    log.info("converting %s (%s model, %s preset)", file_name, v.source, v.preset)
                    blob = _convert_form(task, cfg, models[v.source], v.preset, form, class_names, rep)
                    path = _write_model(run, cfg, task, out / f"{file_name}.tflite", blob, v, form, class_names)
                    sidecar = _sidecar(run, cfg, task, path, blob, v, form, class_names, models[v.source])
                    entry["outputs"] += [path, write_sidecar(path, sidecar)]
                    written[file_name] = str(path.resolve())  # evaluate may run from another directory
            entry["outputs"].append(out / "labels.txt")
            write_json(run.path / "exports.json", {"dir": str(out.resolve()), "variants": written})
            entry["outputs"].append(run.path / "exports.json")  # a rerun of train, prune or qat removes it: not done
            _remove_stale(out, run, set(written))
    return written


def _remove_stale(out: Path, run, written: set[str]) -> None:
    """Remove this run's earlier exports in ``out`` whose source model has changed since
    (a retrain deletes the pruned and QAT models, so their variants are not exported
    again): left beside the new ``labels.txt``, an old ``pqat_int8.tflite`` would ship
    with labels that are not its own. An export still made from the current weights
    (``export --variants int8`` after a full export) stays."""
    ours, stale = run.path.resolve(), []
    for model in sorted(out.glob("*.tflite")):
        if model.stem in written:
            continue
        try:
            side = read_sidecar(model)
        except (EdgepipeError, OSError):
            continue  # not ours to judge
        if side.model_file != model.name:  # a copy kept under another name (float32_v1.tflite): the user's
            continue
        if side.run_folder is None or side.run_folder.resolve() != ours:
            continue
        if not side.made_from(run.path):
            stale.append(model)
    for model in stale:
        model.unlink(missing_ok=True)
        sidecar_path(model).unlink(missing_ok=True)
    if stale:
        log.warning(
            "%s: removed %s, exported earlier from weights this run has since replaced (a retrain): they would "
            "ship beside this export's files as if they were its own",
            out,
            ", ".join(m.name for m in stale),
        )


def export_extra(names, out: Path) -> list:
    """What an export's key holds beyond the config: its variants and its folder."""
    return [sorted(names), str(Path(out).resolve())]


def check_export_folder(out: Path, run) -> None:
    """Before any work: ``out`` must be a folder this run can write, and must not hold
    another run's models. The default folder is ``export.dir/<run name>``, so runs named
    alike in different places (``exp1/r1``, ``exp2/r1``) would meet there and the second
    would silently replace the first one's models (evaluate then measures files of
    another task or size). A folder left by a run folder that no longer exists is free."""
    if out.exists() and not out.is_dir():
        raise StageInputError(f"export folder {out}: is a file, not a folder; pass --out DIR or --set export.dir=DIR")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StageInputError(f"export folder {out}: cannot create it ({e.strerror or e})") from None
    for model in sorted(out.glob("*.tflite")):
        try:
            side = read_sidecar(model)
        except (EdgepipeError, OSError):
            continue  # no sidecar this version reads: no owner to protect
        owner = side.run_folder
        if not side.of_run(run.path) and (owner / "config.yaml").is_file():  # another run, still there
            raise StageInputError(
                f"export folder {out}: holds the models of another run, {owner} ({model.name}); exporting there "
                f"would replace them. Export this run elsewhere (--out DIR, or --set export.dir=DIR for "
                f"DIR/{run.name}), or remove that folder first"
            )


def _convert_form(task, cfg, model, preset: str, form: str, class_names, rep) -> bytes:
    graph = task.export_graph(model, cfg, form, class_names) if form else None
    io = "uint8" if graph is not None and graph.uint8_input else cfg.export.int8_io
    return convert(model, preset, rep, io, serving=functools.partial(task.serving, cfg=cfg), graph=graph)


def _write_model(run, cfg, task, path: Path, blob: bytes, v, form: str, class_names) -> Path:
    """The model file, with its TFLite metadata and labels packed in."""
    form_note = f", {form} form" if form else ""
    blob = add_metadata(
        blob,
        name=f"{run.name} {path.stem}",
        description=f"{cfg.task} model from edgepipe: {v.source} weights, {v.preset} preset{form_note}",
        version=f"edgepipe {__version__}",
        spec=cfg.input_spec(),
        outputs=task.output_signature(class_names, form),
        class_names=class_names,
    )
    write_bytes(path, blob)
    return path


def _sidecar(run, cfg, task, path: Path, blob: bytes, v, form: str, class_names, model) -> Sidecar:
    io = _io_details(path.read_bytes())
    signature = task.output_signature(class_names, form)
    return Sidecar(
        task=cfg.task,
        variant=path.stem,
        source_model=v.source,
        preset=v.preset,
        model_file=path.name,
        labels_file="labels.txt",
        class_names=tuple(class_names),
        input={**cfg.input_spec().to_dict(), **io["input"]},
        outputs=tuple({**sig, **o} for sig, o in zip(signature, io["outputs"])),
        extras={**task.sidecar_extras(cfg, form), **({"form": form} if form else {})},
        sparsity=round(weight_sparsity(blob), 4),
        keras_sparsity=round(overall_sparsity(model), 4),
        sources={  # absolute: they say which run folder the model came from (check_export_folder)
            str(run.weights(v.source).resolve()): sha256(run.weights(v.source)),
            str(run.config_path.resolve()): sha256(run.config_path),
        },
        model_sha256=sha256(path),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _io_details(blob: bytes) -> dict:
    """Input/output dtype, shape and quantization as the runtime will see them."""
    from pipeline.runtime.tflite_model import open_interpreter, ordered_outputs

    it = open_interpreter(model_content=blob)

    def describe(d: dict) -> dict:
        return {k: v for k, v in describe_tensor(d).items() if k != "name"}

    return {"input": describe(it.get_input_details()[0]), "outputs": [describe(d) for d in ordered_outputs(it)]}
