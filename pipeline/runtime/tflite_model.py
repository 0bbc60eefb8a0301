"""A ``.tflite`` model on the LiteRT interpreter: prepare → quantize → invoke → dequantize.

Used by the evaluator, the exporter's checks and the video runner, so every one of
them feeds a model the same way: the shared :func:`prepare`/:func:`normalize`, then
the input tensor's own dtype and quantization parameters.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import ModelFileError
from pipeline.core.images import InputSpec, normalize
from pipeline.core.metadata import ssd_output_order
from pipeline.core.tflite import check_header, not_a_model_file, output_order, ssd_op_options

log = logging.getLogger(__name__)


def open_interpreter(model_path: str | Path | None = None, model_content: bytes | None = None, threads: int = 1):
    """A LiteRT interpreter with XNNPACK, tensors allocated; clear error on a bad file."""
    from ai_edge_litert.interpreter import Interpreter

    where = str(model_path) if model_path is not None else "<in-memory model>"
    if model_path is not None:
        p = Path(model_path)
        if not p.is_file():
            raise ModelFileError(not_a_model_file(p))
        with p.open("rb") as f:
            check_header(f.read(8), p)
    try:
        it = Interpreter(
            model_path=None if model_path is None else str(model_path), model_content=model_content, num_threads=threads
        )
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ModelFileError(f"{where}: cannot load TFLite model (truncated or corrupt?): {e}") from e
    return it


def quantize_input(x: np.ndarray, detail: dict, spec: InputSpec) -> np.ndarray:
    """uint8 pixels → the input tensor's dtype, via the model's own scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    scale, zp = detail["quantization"]
    if dtype.itemsize == 1 and x.dtype == np.uint8:
        # uint8 pixels take 256 values: a table gives the same result as the formula
        # below without float temporaries (the runner's per-frame cost), and often
        # is the identity (uint8 input, scale 1/255, zero point 0).
        lut = _quantize_lut(dtype.str, float(scale), int(zp), float(spec.mean), float(spec.std))
        if lut is None:
            return x
        # cv2.LUT is a byte table lookup (~20x numpy's fancy indexing): int8 as its bytes.
        flat = np.ascontiguousarray(x).reshape(-1, x.shape[-1] * x.shape[-2] if x.ndim > 1 else x.size)
        return cv2.LUT(flat, lut).view(dtype).reshape(x.shape)
    f = normalize(x, spec)
    if dtype == np.float32:
        return f
    info = np.iinfo(dtype)
    return np.clip(np.round(f / scale + zp), info.min, info.max).astype(dtype)


@functools.lru_cache(maxsize=16)
def _quantize_lut(dtype: str, scale: float, zp: int, mean: float, std: float) -> np.ndarray | None:
    """``quantize_input`` of every uint8 value as a byte table (int8 values as their
    bytes, for ``cv2.LUT``), or None where that is the identity."""
    dt = np.dtype(dtype)
    pixels = np.arange(256, dtype=np.uint8)
    f = normalize(pixels, InputSpec(size=1, mean=mean, std=std))
    info = np.iinfo(dt)
    lut = np.clip(np.round(f / scale + zp), info.min, info.max).astype(dt)
    return None if dt == np.uint8 and np.array_equal(lut, pixels) else lut.view(np.uint8)


def dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zp = detail["quantization"]
    if not scale or y.dtype == np.float32:
        return y.astype(np.float32, copy=False)
    return (y.astype(np.float32) - zp) * scale


def ordered_outputs(interpreter) -> list[dict]:
    """Output details in our exporter's signature order (alphabetical by output name);
    outputs named otherwise, such as a post-processing op's, by tensor id, which follows
    the op's ports; else the file's order (:func:`pipeline.core.tflite.output_order`)."""
    details = interpreter.get_output_details()
    order = output_order([d["name"] for d in details], [int(d["index"]) for d in details])
    return [d for _, d in sorted(zip(order, details), key=lambda kd: kd[0])]


def warn_regular_nms(path: Path, blob: bytes, threads: int) -> bool:
    """Warn (and say True) when ``blob``'s SSD op runs regular NMS on more threads than
    one: LiteRT then drops the class whose index equals the thread count
    (tensorflow/tensorflow#56058). Our exports use fast NMS; older ones and other SSD
    models may not."""
    opts = ssd_op_options(blob)
    if not opts or not opts.get("use_regular_nms") or threads < 2 or int(opts.get("num_classes", 0)) <= threads:
        return False
    log.warning(
        "%s: its TFLite_Detection_PostProcess op runs regular (per-class) NMS, which LiteRT gets wrong on %d "
        "threads: class %d is never detected (tensorflow/tensorflow#56058). Re-export it with this edgepipe "
        "(fast NMS), or run it on 1 thread",
        path,
        threads,
        threads,
    )
    return True


class TFLiteModel:
    """One exported model: interpreter plus the input spec from its sidecar."""

    def __init__(self, path: str | Path, spec: InputSpec, threads: int = 2) -> None:
        self.path = Path(path)
        self.spec = spec
        self.threads = threads
        self.interpreter = open_interpreter(self.path, threads=threads)
        self.input = self.interpreter.get_input_details()[0]
        blob = self.path.read_bytes()
        self._ssd_order = ssd_output_order(blob)
        warn_regular_nms(self.path, blob, threads)
        self.outputs = self._ordered()
        self._batch = int(self.input["shape"][0])
        self._fixed_batch = False

    def _resize(self, batch: int) -> bool:
        """Resize the batch dimension; False when the graph has the batch baked in
        (e.g. a Reshape to a fixed shape), so the caller feeds one image at a time."""
        if batch == self._batch:
            return True
        if self._fixed_batch:
            return batch == 1
        try:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.input["shape"][1:]])
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError):
            # A failed resize leaves the interpreter unusable: start a fresh one at batch 1.
            self._fixed_batch = True
            self.interpreter = open_interpreter(self.path, threads=self.threads)
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self._ordered()
        self._batch = int(self.input["shape"][0])
        return self._batch == batch

    def _ordered(self) -> list[dict]:
        """Output details in signature order; an SSD post-processing op's four outputs in
        port order (boxes, classes, scores, count), found by their metadata names."""
        if self._ssd_order is not None:
            details = self.interpreter.get_output_details()
            return [details[k] for k in self._ssd_order]
        return ordered_outputs(self.interpreter)  # unnamed op outputs: by tensor id, the op's port order

    def quantize(self, images: np.ndarray) -> np.ndarray:
        """Prepared uint8 images → the input tensor's dtype (what :meth:`invoke` feeds)."""
        return quantize_input(images, self.input, self.spec)

    def invoke(self, images: np.ndarray, quantized: bool = False) -> list[np.ndarray]:
        """Prepared uint8 images (N,S,S,C) → dequantized float outputs, one array per output.

        ``quantized``: the images already went through :meth:`quantize` (the video
        runner does that on its capture thread, beside inference).
        """
        if not self._resize(len(images)):
            parts = [self.invoke(images[i : i + 1], quantized) for i in range(len(images))]
            return [np.concatenate(p) for p in zip(*parts)]
        self.interpreter.set_tensor(self.input["index"], images if quantized else self.quantize(images))
        self.interpreter.invoke()
        return [dequantize(self.interpreter.get_tensor(d["index"]), d) for d in self.outputs]

    __call__ = invoke

    def latency_ms(self, image: np.ndarray, runs: int = 50, warmup: int = 5) -> np.ndarray:
        """Per-invoke wall times at batch 1, after warm-up (inference only)."""
        self._resize(1)
        self.interpreter.set_tensor(self.input["index"], quantize_input(image[None], self.input, self.spec))
        return time_invokes(self.interpreter, runs, warmup)


def delegated_op_indices(interpreter) -> set[int]:
    """Indices of the ops inside a DELEGATE node (XNNPACK's partitions).

    A delegate node's partition is found by walking back from its output tensors to
    its input tensors; every op met on the way is delegated.
    """
    ops = interpreter._get_ops_details()
    producer = {int(t): o for o in ops if o["op_name"] != "DELEGATE" for t in o["outputs"]}
    delegated: set[int] = set()
    for d in (o for o in ops if o["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        while stack:
            t = stack.pop()
            o = producer.get(t)
            if t in boundary or o is None or o["index"] in delegated:
                continue
            delegated.add(o["index"])
            stack += [int(x) for x in o["inputs"] if x >= 0]
    return delegated


def undelegated_ops(interpreter) -> dict[str, int]:
    """Ops that still run on the builtin kernels rather than inside a DELEGATE node."""
    ops = interpreter._get_ops_details()
    delegated = delegated_op_indices(interpreter)
    return dict(Counter(o["op_name"] for o in ops if o["op_name"] != "DELEGATE" and o["index"] not in delegated))


def time_invokes(interpreter, runs: int = 50, warmup: int = 5) -> np.ndarray:
    """Wall times in ms of ``runs`` invokes after ``warmup`` ones; the input must be set."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    for _ in range(warmup):
        interpreter.invoke()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        interpreter.invoke()
        times[i] = (time.perf_counter() - t0) * 1e3
    return times
