"""The one measuring code: latency percentiles, peak memory and per-op timing on LiteRT.

``edgepipe benchmark``, ``edgepipe evaluate`` and :class:`TFLiteModel` all time
``invoke`` with :func:`~pipeline.runtime.tflite_model.time_invokes` and summarize with :func:`summarize`.

Per-op timing: ai_edge_litert 2.3.0 exposes no op profiler to Python (the
``Interpreter`` has no profiler hook, the ``CompiledModel`` wrapper has none, and the
profiler in ``libLiteRt.so`` is only reachable through the C API), and no PyPI wheel
ships TFLite's ``benchmark_model``. So :func:`profile_ops` measures each op the way
one can from Python: it times prefixes of the graph (ops ``0..k``, cut at op ``k``'s
outputs) on the same runtime and XNNPACK delegate, and attributes the difference
between consecutive prefixes to op ``k``. Small ops are within noise; a slow or
undelegated op stands out, which is what the profile is for.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


# === Latency ===


def summarize(times_ms: np.ndarray) -> dict:
    """Latency percentiles (ms) of a timing array."""
    t = np.asarray(times_ms, np.float64)
    return {
        "p50": float(np.percentile(t, 50)),
        "p90": float(np.percentile(t, 90)),
        "p99": float(np.percentile(t, 99)),
        "mean": float(t.mean()),
        "min": float(t.min()),
        "runs": int(t.size),
    }


def fill_input(interpreter, seed: int = 0) -> None:
    """Random, in-range input for every input tensor (pixels for images)."""
    rng = np.random.default_rng(seed)
    for d in interpreter.get_input_details():
        dtype = np.dtype(d["dtype"])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            x = rng.integers(info.min, int(info.max) + 1, d["shape"], dtype=dtype)
        else:
            x = rng.random(d["shape"], dtype=np.float32).astype(dtype)
        interpreter.set_tensor(d["index"], x)


# === Memory ===


def _rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


def _memory_probe(path: str, threads: int, runs: int) -> dict:
    """Runs in the child process of :func:`peak_memory`."""
    import ai_edge_litert.interpreter  # noqa: F401 - import cost is not the model's

    from pipeline.runtime.tflite_model import open_interpreter

    before = _rss_kb()
    it = open_interpreter(path, threads=threads)
    fill_input(it)
    for _ in range(runs):
        it.invoke()
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent
    # across fork + exec, so a child of a 2 GB training process would report 2 GB.
    return {"baseline_kb": before, "peak_kb": _rss_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


_PROBE = (
    "import json, sys; from pipeline.runtime.benchmark import _memory_probe; "
    "json.dump(_memory_probe(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])), sys.stdout)"
)


def peak_memory(path: str | Path, threads: int = 1, runs: int = 5) -> dict:
    """Peak resident memory of loading and running the model, in a fresh process.

    Returns:
        ``baseline_mb`` (the process after importing LiteRT), ``peak_mb`` (its high-water
        mark after load and ``runs`` invokes) and ``delta_mb``, their difference: the model
        plus what LiteRT and XNNPACK allocate for it (about 20 MB even for a tiny model).
    """
    import pipeline

    # A fresh interpreter process: no TensorFlow, no earlier models in the high-water mark.
    root = str(Path(pipeline.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(threads), str(runs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1:] or ["no error output"]
        raise RuntimeError(f"{path}: measuring memory failed: {tail[0]}")
    m = json.loads(r.stdout)
    base, peak = m["baseline_kb"] / 1024, m["peak_kb"] / 1024
    return {"baseline_mb": round(base, 2), "peak_mb": round(peak, 2), "delta_mb": round(peak - base, 2)}


# === Per-op timing ===


def _prefix_model(model_t, k: int) -> bytes:
    """The model cut after op ``k``: ops ``0..k``, op ``k``'s outputs as the outputs."""
    import copy

    import flatbuffers

    m = copy.copy(model_t)
    g = copy.copy(model_t.subgraphs[0])
    g.operators = model_t.subgraphs[0].operators[: k + 1]
    g.outputs = [int(t) for t in g.operators[-1].outputs if t >= 0]
    m.subgraphs = [g, *model_t.subgraphs[1:]]
    m.signatureDefs = None  # the signature names outputs that no longer exist
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), b"TFL3")
    return bytes(b.Output())


def profile_ops(path: str | Path, threads: int = 1, runs: int = 30, warmup: int = 3) -> list[dict]:
    """Per-op median time (ms) by timing graph prefixes; see the module docstring.

    Returns:
        One row per op in execution order: ``index``, ``op``, ``ms`` (may be slightly
        negative: noise), ``delegated`` (inside an XNNPACK partition).
    """
    from ai_edge_litert import schema_py_generated as schema

    from pipeline.runtime.tflite_model import delegated_op_indices, open_interpreter, time_invokes

    full = open_interpreter(path, threads=threads)
    ops = [o for o in full._get_ops_details() if o["op_name"] != "DELEGATE"]
    delegated = delegated_op_indices(full)
    model_t = schema.ModelT.InitFromPackedBuf(bytearray(Path(path).read_bytes()), 0)
    n = len(model_t.subgraphs[0].operators)
    rows, prev = [], 0.0
    for k in range(n):
        it = open_interpreter(model_content=_prefix_model(model_t, k), threads=threads)
        fill_input(it)
        t = float(np.median(time_invokes(it, runs, warmup)))
        name = ops[k]["op_name"] if k < len(ops) else "?"
        rows.append({"index": k, "op": name, "ms": t - prev, "delegated": k in delegated})
        prev = t
    return rows


# === The benchmark ===


def benchmark(
    path: str | Path,
    threads: Sequence[int] = (1, 2, 4),
    runs: int = 50,
    warmup: int = 5,
    profile: bool = False,
    memory: bool = True,
) -> dict:
    """Latency per thread count, peak memory and (optionally) per-op times of one model."""
    from pipeline.runtime.tflite_model import open_interpreter, time_invokes, undelegated_ops

    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be at least 1 and warmup at least 0, got {runs} and {warmup}")
    path = Path(path)
    result: dict = {"model": str(path), "size_bytes": path.stat().st_size if path.is_file() else None, "latency": {}}
    for t in threads:
        if t < 1:
            raise ValueError(f"thread counts must be at least 1, got {t}")
        it = open_interpreter(path, threads=t)
        fill_input(it)
        result["latency"][str(t)] = summarize(time_invokes(it, runs, warmup))
        result.setdefault("undelegated_ops", undelegated_ops(it))
        log.info("%s: %d thread(s) p50 %.3f ms", path.name, t, result["latency"][str(t)]["p50"])
    if memory:
        result["memory"] = peak_memory(path, threads=threads[0])
    if profile:
        result["ops"] = profile_ops(path, threads=threads[0], runs=max(10, runs // 2), warmup=warmup)
    return result


def render(result: dict, top: int = 15) -> str:
    """A benchmark result as readable text; the profile lists the slowest ops first."""
    lines = [f"{result['model']}  ({result['size_bytes'] / 1024:.1f} KB)", ""]
    lines.append(f"{'threads':>7} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'runs':>5}")
    for t, s in result["latency"].items():
        lines.append(f"{t:>7} {s['p50']:>9.3f} {s['p90']:>9.3f} {s['p99']:>9.3f} {s['mean']:>9.3f} {s['runs']:>5}")
    if "memory" in result:
        m = result["memory"]
        lines.append(
            f"\npeak memory: {m['peak_mb']:.1f} MB ({m['delta_mb']:+.1f} MB over the {m['baseline_mb']:.1f} MB "
            "of a Python process with LiteRT imported)"
        )
    off = ", ".join(f"{k}×{n}" for k, n in result.get("undelegated_ops", {}).items())
    lines.append(f"not on XNNPACK: {off or 'none'}")
    if "ops" in result:
        total = sum(max(r["ms"], 0.0) for r in result["ops"]) or 1.0
        lines.append(f"\nper-op time (graph-prefix differences, {len(result['ops'])} ops), slowest {top}:")
        for r in sorted(result["ops"], key=lambda r: -r["ms"])[:top]:
            where = "XNNPACK" if r["delegated"] else "builtin kernel (NOT delegated)"
            lines.append(
                f"  #{r['index']:<4} {r['op']:<26} {r['ms']:>8.4f} ms {100 * max(r['ms'], 0) / total:5.1f}%  {where}"
            )
    return "\n".join(lines) + "\n"
