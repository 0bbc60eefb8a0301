"""Reading a ``.tflite`` file without TensorFlow: the header check, the output order
our exporter gives, tensor descriptions and weight sparsity.

One implementation each, shared by the exporter, the metadata writer, the
evaluator, ``inspect`` and the runtime. The model schema is LiteRT's generated Python.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.errors import ModelFileError, ModelNotFoundError

TFLITE_ID = b"TFL3"  # the flatbuffer file identifier at bytes 4-8 of every model


def schema():
    # LiteRT ships the model schema as plain Python: no TensorFlow import.
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def check_header(data: bytes, where: str | Path, error: type[ModelFileError] = ModelFileError) -> None:
    """Raise ``error`` naming ``where`` unless ``data`` starts like a TFLite model."""
    if len(data) < 8 or data[4:8] != TFLITE_ID:
        raise error(f"{where}: not a TFLite model (no TFL3 flatbuffer identifier)")


def not_a_model_file(p: Path) -> str:
    """Why ``p`` is no model file to read: missing, or a folder (a run or export folder
    given for the model in it: its .tflite files are named)."""
    if p.is_dir():
        models = sorted(m.name for m in p.glob("*.tflite"))
        inside = f"; it holds {', '.join(models[:4])}" if models else "; the models are in the export folder"
        return f"{p}: a folder, not a model file: give a .tflite{inside}"
    return f"{p}: no such model file"


def read_model_file(path: str | Path, error: type[ModelFileError] = ModelFileError) -> bytes:
    """A ``.tflite`` file's bytes, with a clear error for a missing file (a folder said
    as one) or a foreign one (``error``)."""
    p = Path(path)
    if not p.is_file():
        raise ModelNotFoundError(not_a_model_file(p))
    data = p.read_bytes()
    check_header(data, p, error)
    return data


def output_order(names: list[str], tensor_ids: list[int] | None = None) -> list[int]:
    """For output tensors as the file lists them, their positions in the order our
    exporter's signature has them.

    TFLite names the outputs of a converted signature ``Identity``, ``Identity_1``, …
    in sorted-key order (our signatures are alphabetical by output name), but may list
    them in another order in the file. Outputs of a post-processing op such as
    ``TFLite_Detection_PostProcess`` are named otherwise; their tensor ids follow the
    op's output ports (boxes, classes, scores, count), so with ``tensor_ids`` they are
    ordered by id. Without either, the file's order stands.
    """
    keys = []
    for n in names:
        head, _, k = n.rpartition("_")
        keys.append(0 if n == "Identity" else int(k) if head == "Identity" and k.isdigit() else -1)
    if -1 not in keys and len(set(keys)) == len(keys):
        return keys
    if tensor_ids is not None and len(set(tensor_ids)) == len(tensor_ids):
        return [sorted(tensor_ids).index(t) for t in tensor_ids]
    return list(range(len(names)))


def describe_tensor(detail: dict) -> dict:
    """An interpreter tensor detail as plain JSON: name, shape, dtype and quantization."""
    scale, zp = detail["quantization"]
    return {
        "name": detail["name"],
        "tensor_shape": [int(s) for s in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "quantization": {"scale": float(scale), "zero_point": int(zp)} if scale else None,
    }


def layer_sparsity(tflite: bytes) -> list[tuple[str, int, int]]:
    """``(weight tensor name, zeros, weights)`` per CONV_2D / DEPTHWISE_CONV_2D /
    FULLY_CONNECTED op, in execution order, read from the flatbuffer itself (through
    DEQUANTIZE for float16 weights), so the figure describes the file that ships."""
    s = schema()
    m = s.ModelT.InitFromPackedBuf(tflite, 0)
    codes = {i: c.builtinCode or c.deprecatedBuiltinCode for i, c in enumerate(m.operatorCodes)}
    op = s.BuiltinOperator
    weighted = {op.CONV_2D, op.DEPTHWISE_CONV_2D, op.FULLY_CONNECTED}
    dtypes = {
        s.TensorType.FLOAT32: np.float32,
        s.TensorType.FLOAT16: np.float16,
        s.TensorType.INT8: np.int8,
        s.TensorType.UINT8: np.uint8,
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


def weight_sparsity(tflite: bytes) -> float:
    """Zero fraction of the conv / dense weight tensors of a model file (:func:`layer_sparsity`)."""
    layers = layer_sparsity(tflite)
    return sum(z for _, z, _ in layers) / max(sum(n for _, _, n in layers), 1)


SSD_OP = b"TFLite_Detection_PostProcess"


def ssd_op_options(tflite: bytes) -> dict | None:
    """The options of the model's ``TFLite_Detection_PostProcess`` op (its flexbuffer
    custom options: ``use_regular_nms``, ``num_classes``, ...); None without the op."""
    from flatbuffers import flexbuffers

    m = schema().Model.GetRootAs(tflite, 0)  # the lazy reader: no copy of the weights
    customs = {i for i in range(m.OperatorCodesLength()) if m.OperatorCodes(i).CustomCode() == SSD_OP}
    if not customs:
        return None
    for i in range(m.SubgraphsLength()):
        g = m.Subgraphs(i)
        for j in range(g.OperatorsLength()):
            op = g.Operators(j)
            if op.OpcodeIndex() in customs:
                raw = op.CustomOptionsAsNumpy()
                return dict(flexbuffers.Loads(bytes(raw))) if not isinstance(raw, int) else {}
    return None
