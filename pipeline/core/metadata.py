"""Standard TFLite model metadata: what MediaPipe Tasks and the LiteRT support library read.

The metadata is the ``tflite.ModelMetadata`` flatbuffer (``metadata_schema.fbs``),
stored the way tflite-support's ``MetadataPopulator`` stores it: a buffer in the
model named by a ``TFLITE_METADATA`` entry of ``Model.metadata``, with the
associated files (``labels.txt``) appended to the model as an uncompressed zip.

Why vendored code: tflite-support's writers pin ``protobuf<4`` and cannot share an
environment with TensorFlow 2.21, and mediapipe's writers need a native module its
wheel lacks (docs/deployment.md). The flatbuffer schema itself is plain generated Python, so
``pipeline/_vendor`` carries mediapipe 1.2.2's generated files (Apache-2.0) and this
module builds the same tables the mediapipe writers build, with the ``flatbuffers``
package TensorFlow already depends on. The MediaPipe Tasks test checks the result.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import flatbuffers
import numpy as np

from pipeline._vendor import image_segmenter_metadata_schema_py_generated as seg_fb
from pipeline._vendor import metadata_schema_py_generated as md_fb
from pipeline.core import tflite
from pipeline.core.errors import MetadataError
from pipeline.core.tflite import TFLITE_ID, output_order, schema

METADATA_NAME = "TFLITE_METADATA"  # the Model.metadata entry every reader looks for
SEGMENTER_METADATA = "SEGMENTER_METADATA"  # MediaPipe ImageSegmenter's custom metadata
_METADATA_ID, _SEGMENTER_ID = b"M001", b"V001"
_ACTIVATIONS = {
    "none": seg_fb.Activation.NONE,
    "sigmoid": seg_fb.Activation.SIGMOID,
    "softmax": seg_fb.Activation.SOFTMAX,
}


# === Building the metadata tables ===


def _labels_file(name: str, values: bool = False) -> md_fb.AssociatedFileT:
    """The labels file, for a tensor indexed by class (axis labels) or holding class ids
    as values (``values``: the SSD post-processing op's ``category`` output)."""
    f = md_fb.AssociatedFileT()
    f.name = name
    f.description = "Class names, one per line, in class-id order."
    f.type = md_fb.AssociatedFileType.TENSOR_VALUE_LABELS if values else md_fb.AssociatedFileType.TENSOR_AXIS_LABELS
    return f


# The TFLite_Detection_PostProcess op's outputs, as MediaPipe's ObjectDetector and the
# Task Library find them: by these metadata names, with boxes as (ymin, xmin, ymax,
# xmax) ratios of the input (BoundingBoxProperties index [1, 0, 3, 2], RATIO).
SSD_OUTPUT_NAMES = {
    "ssd_location": "location",
    "ssd_category": "category",
    "ssd_score": "score",
    "ssd_count": "number of detections",
}
DETECTION_GROUP = "detection_result"


def _input_metadata(spec, dtype: str) -> md_fb.TensorMetadataT:
    t = md_fb.TensorMetadataT()
    t.name = "image"
    t.description = (
        f"{spec.channels}-channel {'RGB' if spec.channels == 3 else 'grayscale'} image, "
        f"{spec.size}x{spec.size}, {spec.resize} resize, (pixel - mean) / std"
        + (" (uint8 input: raw pixels, the input quantization does the scaling)" if dtype != "float32" else "")
    )
    props = md_fb.ImagePropertiesT()
    props.colorSpace = md_fb.ColorSpaceType.RGB if spec.channels == 3 else md_fb.ColorSpaceType.GRAYSCALE
    t.content = md_fb.ContentT()
    t.content.contentPropertiesType = md_fb.ContentProperties.ImageProperties
    t.content.contentProperties = props
    norm = md_fb.ProcessUnitT()
    norm.optionsType = md_fb.ProcessUnitOptions.NormalizationOptions
    norm.options = md_fb.NormalizationOptionsT()
    norm.options.mean = [float(spec.mean)] * spec.channels
    norm.options.std = [float(spec.std)] * spec.channels
    t.processUnits = [norm]
    t.stats = md_fb.StatsT()
    if dtype == "float32":  # the range the model sees, as the mediapipe writers record it
        t.stats.min = [(0.0 - spec.mean) / spec.std] * spec.channels
        t.stats.max = [(255.0 - spec.mean) / spec.std] * spec.channels
    else:
        t.stats.min, t.stats.max = [0.0], [255.0]
    return t


def _output_metadata(sig: dict, num_classes: int, labels: str) -> md_fb.TensorMetadataT:
    """One output's metadata, by its ``kind``: class scores with labels, a mask per
    class (``per_class_scores``), or ``boxes``."""
    t = md_fb.TensorMetadataT()
    t.name = sig["name"]
    t.description = sig.get("meaning", "")
    shape = list(sig.get("shape", []))
    content = md_fb.ContentT()
    kind = sig.get("kind", "class_scores")
    if kind in SSD_OUTPUT_NAMES:
        return _ssd_output_metadata(kind, sig, labels)
    if kind == "boxes":
        props = md_fb.BoundingBoxPropertiesT()
        props.index = [0, 1, 2, 3]  # x1 y1 x2 y2 = left top right bottom
        props.type = md_fb.BoundingBoxType.BOUNDARIES
        props.coordinateType = md_fb.CoordinateType.PIXEL
        content.contentPropertiesType = md_fb.ContentProperties.BoundingBoxProperties
        content.contentProperties = props
        content.range = _range(2, 2)  # the box coordinates lie along dimension 2
    elif kind == "per_class_scores" and len(shape) in (3, 4):
        props = md_fb.ImagePropertiesT()
        props.colorSpace = md_fb.ColorSpaceType.GRAYSCALE  # one plane per class
        content.contentPropertiesType = md_fb.ContentProperties.ImageProperties
        content.contentProperties = props
        content.range = _range(1, 2)
        t.associatedFiles = [_labels_file(labels)]
    else:
        content.contentPropertiesType = md_fb.ContentProperties.FeatureProperties
        content.contentProperties = md_fb.FeaturePropertiesT()
        if shape and shape[-1] == num_classes:
            t.associatedFiles = [_labels_file(labels)]
    t.content = content
    return t


def _ssd_output_metadata(kind: str, sig: dict, labels: str) -> md_fb.TensorMetadataT:
    t = md_fb.TensorMetadataT()
    t.name = SSD_OUTPUT_NAMES[kind]
    t.description = sig.get("meaning", "")
    if kind == "ssd_count":
        return t
    content = md_fb.ContentT()
    if kind == "ssd_location":
        props = md_fb.BoundingBoxPropertiesT()
        props.index = [1, 0, 3, 2]  # the op writes ymin xmin ymax xmax
        props.type = md_fb.BoundingBoxType.BOUNDARIES
        props.coordinateType = md_fb.CoordinateType.RATIO
        content.contentPropertiesType = md_fb.ContentProperties.BoundingBoxProperties
        content.contentProperties = props
    else:
        content.contentPropertiesType = md_fb.ContentProperties.FeatureProperties
        content.contentProperties = md_fb.FeaturePropertiesT()
    content.range = _range(2, 2)  # one value (or box) per detection, along dimension 2
    t.content = content
    if kind == "ssd_category":
        t.associatedFiles = [_labels_file(labels, values=True)]
    return t


def _range(lo: int, hi: int) -> md_fb.ValueRangeT:
    r = md_fb.ValueRangeT()
    r.min, r.max = lo, hi
    return r


def _segmenter_options(activation: str) -> md_fb.CustomMetadataT:
    opts = seg_fb.ImageSegmenterOptionsT()
    opts.activation = _ACTIVATIONS[activation]
    b = flatbuffers.Builder(0)
    b.Finish(opts.Pack(b), _SEGMENTER_ID)
    custom = md_fb.CustomMetadataT()
    custom.name = SEGMENTER_METADATA
    custom.data = list(b.Output())
    return custom


def build_metadata(
    *,
    name: str,
    description: str,
    version: str,
    spec,
    input_dtype: str,
    outputs: list[dict],
    num_classes: int,
    labels_file: str = "labels.txt",
) -> bytes:
    """The ``ModelMetadata`` flatbuffer for one model.

    Args:
        outputs: the sidecar's output signature (name, shape, meaning, and for
            segmentation an optional ``activation``: none | sigmoid | softmax), in the
            order of the model file's output tensors.
    """
    meta = md_fb.ModelMetadataT()
    meta.name, meta.description, meta.version, meta.author = name, description, version, "edgepipe"
    sub = md_fb.SubGraphMetadataT()
    sub.inputTensorMetadata = [_input_metadata(spec, input_dtype)]
    sub.outputTensorMetadata = [_output_metadata(s, num_classes, labels_file) for s in outputs]
    masks = [s for s in outputs if s.get("kind") == "per_class_scores"]
    if masks:  # MediaPipe's ImageSegmenter reads how to turn the masks into scores
        act = str(masks[0].get("activation", "none")).lower()
        if act not in _ACTIVATIONS:
            raise ValueError(f"segmentation output activation {act!r}: expected one of {sorted(_ACTIVATIONS)}")
        sub.customMetadata = [_segmenter_options(act)]
    if any(s.get("kind") == "ssd_location" for s in outputs):  # MediaPipe groups the detection outputs
        group = md_fb.TensorGroupT()
        group.name = DETECTION_GROUP
        group.tensorNames = [SSD_OUTPUT_NAMES[k] for k in ("ssd_location", "ssd_category", "ssd_score")]
        sub.outputTensorGroups = [group]
    meta.subgraphMetadata = [sub]
    meta.associatedFiles = []
    # The parser version a reader needs: output tensor groups arrived in schema 1.2.0,
    # custom metadata in 1.5.0.
    meta.minParserVersion = "1.5.0" if sub.customMetadata else "1.2.0" if sub.outputTensorGroups else "1.0.0"
    b = flatbuffers.Builder(0)
    b.Finish(meta.Pack(b), _METADATA_ID)
    return bytes(b.Output())


# === Writing into and reading from a model ===


def populate(model: bytes, metadata: bytes, files: dict[str, bytes]) -> bytes:
    """Put ``metadata`` into the model's ``TFLITE_METADATA`` buffer and zip ``files`` onto it.

    Replaces earlier metadata, and earlier associated files of the same name, as
    MetadataPopulator does.
    """
    sch = schema()
    files = {**associated_files(model), **files}
    m = sch.ModelT.InitFromPackedBuf(bytearray(_flatbuffer_part(model)), 0)
    buf = sch.BufferT()
    buf.data = np.frombuffer(metadata, np.uint8)
    m.metadata = m.metadata or []
    m.buffers = m.buffers or []
    entry = next((e for e in m.metadata if _name(e.name) == METADATA_NAME), None)
    if entry is None:
        entry = sch.MetadataT()
        entry.name = METADATA_NAME
        m.metadata.append(entry)
        m.buffers.append(buf)
        entry.buffer = len(m.buffers) - 1
    else:
        m.buffers[entry.buffer] = buf
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), TFLITE_ID)
    out = io.BytesIO(bytes(b.Output()))
    out.seek(0, io.SEEK_END)
    # Mode "a" on a non-zip appends a fresh archive; readers find it from the end.
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        for fname, data in files.items():
            zf.writestr(fname, data)
    return out.getvalue()


def _flatbuffer_part(model: bytes) -> bytes:
    """The model without the zip of associated files appended to it."""
    bio = io.BytesIO(model)
    if not zipfile.is_zipfile(bio):
        return model
    with zipfile.ZipFile(bio) as zf:
        # zipfile shifts header offsets by the prefix length, so they are file offsets.
        starts = [i.header_offset for i in zf.infolist()]
    return model[: min(starts)] if starts else model


def _name(n) -> str:
    return n.decode() if isinstance(n, bytes) else str(n)


def metadata_buffer(model: bytes) -> bytes | None:
    """The raw ``TFLITE_METADATA`` flatbuffer of a model, or None when it has none."""
    sch = schema()
    m = sch.Model.GetRootAs(model, 0)
    for i in range(m.MetadataLength()):
        e = m.Metadata(i)
        if _name(e.Name()) == METADATA_NAME:
            return m.Buffers(e.Buffer()).DataAsNumpy().tobytes()
    return None


def associated_files(model: bytes) -> dict[str, bytes]:
    """The files zipped onto a model (``{}`` when none)."""
    bio = io.BytesIO(model)
    if not zipfile.is_zipfile(bio):
        return {}
    with zipfile.ZipFile(bio) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def read_metadata(model: bytes) -> dict | None:
    """A model's metadata as plain JSON-ready data, with its labels; None when it has none.

    Raises:
        MetadataError: when the ``TFLITE_METADATA`` buffer is not a metadata flatbuffer.
    """
    try:
        return _read_metadata(model)
    except MetadataError:
        raise
    except Exception as e:  # a damaged flatbuffer fails anywhere in the generated readers
        raise MetadataError(f"TFLITE_METADATA is damaged ({type(e).__name__}: {e})") from None


def _read_metadata(model: bytes) -> dict | None:
    raw = metadata_buffer(model)
    if raw is None:
        return None
    if len(raw) < 8 or raw[4:8] != _METADATA_ID:
        raise MetadataError(f"TFLITE_METADATA buffer has no {_METADATA_ID.decode()} identifier")
    meta = md_fb.ModelMetadataT.InitFromObj(md_fb.ModelMetadata.GetRootAs(raw, 0))
    files = associated_files(model)
    sub = meta.subgraphMetadata[0] if meta.subgraphMetadata else md_fb.SubGraphMetadataT()
    return {
        "name": _s(meta.name),
        "description": _s(meta.description),
        "version": _s(meta.version),
        "author": _s(meta.author),
        "min_parser_version": _s(meta.minParserVersion),
        "inputs": [_tensor_dict(t, files) for t in sub.inputTensorMetadata or []],
        "outputs": [_tensor_dict(t, files) for t in sub.outputTensorMetadata or []],
        "custom": {_s(c.name): _custom_dict(c) for c in sub.customMetadata or []},
        "associated_files": sorted(files),
    }


def _s(v) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


_CONTENT = {v: k for k, v in vars(md_fb.ContentProperties).items() if not k.startswith("_")}
_COLOR = {v: k for k, v in vars(md_fb.ColorSpaceType).items() if not k.startswith("_")}
_FILE_TYPE = {v: k for k, v in vars(md_fb.AssociatedFileType).items() if not k.startswith("_")}
_BOX_TYPE = {v: k for k, v in vars(md_fb.BoundingBoxType).items() if not k.startswith("_")}
_COORD = {v: k for k, v in vars(md_fb.CoordinateType).items() if not k.startswith("_")}


def _tensor_dict(t: md_fb.TensorMetadataT, files: dict[str, bytes]) -> dict:
    d: dict = {"name": _s(t.name), "description": _s(t.description)}
    c = t.content
    if c is not None:
        d["content"] = _CONTENT.get(c.contentPropertiesType, "NONE")
        p = c.contentProperties
        if isinstance(p, md_fb.ImagePropertiesT):
            d["color_space"] = _COLOR.get(p.colorSpace)
        elif isinstance(p, md_fb.BoundingBoxPropertiesT):
            d["box"] = {
                "index": [int(i) for i in p.index],
                "type": _BOX_TYPE.get(p.type),
                "coordinates": _COORD.get(p.coordinateType),
            }
        if c.range is not None:
            d["range"] = [c.range.min, c.range.max]
    for pu in t.processUnits or []:
        if isinstance(pu.options, md_fb.NormalizationOptionsT):
            d["normalization"] = {
                "mean": [float(x) for x in pu.options.mean],
                "std": [float(x) for x in pu.options.std],
            }
    if t.stats is not None and t.stats.min is not None:
        d["stats"] = {"min": [float(x) for x in t.stats.min], "max": [float(x) for x in t.stats.max]}
    for f in t.associatedFiles or []:
        entry = {"name": _s(f.name), "type": _FILE_TYPE.get(f.type)}
        d.setdefault("associated_files", []).append(entry)
        labelled = (md_fb.AssociatedFileType.TENSOR_AXIS_LABELS, md_fb.AssociatedFileType.TENSOR_VALUE_LABELS)
        if f.type in labelled and _s(f.name) in files:
            d["labels"] = files[_s(f.name)].decode().splitlines()
    return d


def _custom_dict(c: md_fb.CustomMetadataT) -> dict:
    if _s(c.name) == SEGMENTER_METADATA:
        opts = seg_fb.ImageSegmenterOptions.GetRootAs(bytes(bytearray(c.data)), 0)
        names = {v: k for k, v in vars(seg_fb.Activation).items() if not k.startswith("_")}
        return {"activation": names.get(opts.Activation())}
    return {"bytes": len(c.data or [])}


# === The export hook ===


def file_output_order(model: bytes) -> list[int]:
    """For each output tensor in file order, its index in the alphabetical signature
    (:func:`pipeline.core.tflite.output_order`): metadata must follow the file."""
    g = schema().Model.GetRootAs(model, 0).Subgraphs(0)
    ids = [int(g.Outputs(i)) for i in range(g.OutputsLength())]
    return output_order([_s(g.Tensors(t).Name()) for t in ids], ids)


def _input_dtype(model: bytes) -> str:
    sch = schema()
    g = sch.Model.GetRootAs(model, 0).Subgraphs(0)
    t = g.Tensors(g.Inputs(0)).Type()
    return {sch.TensorType.FLOAT32: "float32", sch.TensorType.UINT8: "uint8", sch.TensorType.INT8: "int8"}.get(
        t, str(t)
    )


def add_metadata(
    model: bytes,
    *,
    name: str,
    description: str,
    version: str,
    spec,
    outputs: list[dict],
    class_names: list[str],
    labels_file: str = "labels.txt",
) -> bytes:
    """``model`` with standard metadata and its labels file packed in: the export hook.

    Args:
        outputs: the task's ``output_signature`` (alphabetical by output name).
    """
    order = file_output_order(model)
    if len(order) != len(outputs):
        raise ValueError(
            f"the model has {len(order)} output tensors but the output signature lists {len(outputs)}: "
            f"{[o.get('name') for o in outputs]}"
        )
    ordered = [outputs[k] for k in order]
    meta = build_metadata(
        name=name,
        description=description,
        version=version,
        spec=spec,
        input_dtype=_input_dtype(model),
        outputs=ordered,
        num_classes=len(class_names),
        labels_file=labels_file,
    )
    return populate(model, meta, {labels_file: ("\n".join(class_names) + "\n").encode()})


def read_model_file(path: str | Path) -> bytes:
    """A ``.tflite`` file's bytes for reading its metadata, with a clear error for a
    missing or foreign file (:func:`pipeline.core.tflite.read_model_file`)."""
    return tflite.read_model_file(path, MetadataError)


def ssd_output_order(model: bytes) -> list[int] | None:
    """Where (in file order) the SSD op's outputs are, by their metadata names: the
    positions of location, category, score and number of detections; None when the
    metadata does not name them (MediaPipe pairs them the same way)."""
    try:
        md = read_metadata(model)
    except MetadataError:
        return None
    names = [o["name"] for o in (md or {}).get("outputs", [])]
    wanted = list(SSD_OUTPUT_NAMES.values())
    if not set(wanted) <= set(names):
        return None
    return [names.index(n) for n in wanted]
