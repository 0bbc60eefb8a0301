"""``edgepipe inspect``: what a ``.tflite`` file holds and how LiteRT will run it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.core.tflite import describe_tensor


def _tensor(d: dict) -> dict:
    t = describe_tensor(d)
    return {"name": t["name"], "shape": t["tensor_shape"], "dtype": t["dtype"], "quantization": t["quantization"]}


def describe(path: str | Path, threads: int = 1) -> dict:
    """Inputs, outputs, quantization, metadata, labels, op counts and XNNPACK coverage.

    Raises:
        FileNotFoundError, MetadataError, ModelFileError: naming the file.
    """
    from pipeline.core.metadata import MetadataError, read_metadata, read_model_file
    from pipeline.runtime.tflite_model import delegated_op_indices, open_interpreter, ordered_outputs

    path = Path(path)
    blob = read_model_file(path)
    it = open_interpreter(path, threads=threads)
    ops = [o for o in it._get_ops_details() if o["op_name"] != "DELEGATE"]
    delegated = delegated_op_indices(it)
    try:
        metadata = read_metadata(blob)
    except MetadataError as e:
        raise MetadataError(f"{path}: {e}") from e
    labels = next((o["labels"] for o in (metadata or {}).get("outputs", []) if "labels" in o), None)
    return {
        "model": str(path),
        "size_bytes": len(blob),
        "inputs": [_tensor(d) for d in it.get_input_details()],
        "outputs": [_tensor(d) for d in ordered_outputs(it)],
        "ops": dict(Counter(o["op_name"] for o in ops)),
        "xnnpack": {
            "delegated": dict(Counter(o["op_name"] for o in ops if o["index"] in delegated)),
            "not_delegated": dict(Counter(o["op_name"] for o in ops if o["index"] not in delegated)),
            "partitions": sum(o["op_name"] == "DELEGATE" for o in it._get_ops_details()),
        },
        "metadata": metadata,
        "labels": labels,
    }


def render(info: dict) -> str:
    """``describe`` as readable text."""
    lines = [f"{info['model']}  ({info['size_bytes'] / 1024:.1f} KB)", ""]
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}:")
        for t in info[kind]:
            q = t["quantization"]
            qs = f"  scale={q['scale']:.6g} zero_point={q['zero_point']}" if q else ""
            lines.append(f"  {t['name']}: {t['dtype']}{t['shape']}{qs}")
    md = info["metadata"]
    lines.append("")
    if md is None:
        lines.append("metadata: none (no TFLITE_METADATA entry)")
    else:
        lines.append(
            f"metadata: {md['name']!r} version {md['version']!r} by {md['author']} (parser ≥ {md['min_parser_version']})"
        )
        lines.append(f"  {md['description']}")
        for kind in ("inputs", "outputs"):
            for t in md[kind]:
                extra = []
                if "color_space" in t:
                    extra.append(t["color_space"])
                if "normalization" in t:
                    n = t["normalization"]
                    extra.append(f"mean={n['mean']} std={n['std']}")
                if "box" in t:
                    extra.append(f"box {t['box']['type']} {t['box']['coordinates']} index={t['box']['index']}")
                if "labels" in t:
                    extra.append(f"{len(t['labels'])} labels")
                lines.append(f"  {kind[:-1]} {t['name']}: {t['content'] if 'content' in t else ''} {'; '.join(extra)}")
        for name, c in md["custom"].items():
            lines.append(f"  custom {name}: {c}")
        lines.append(f"  associated files: {', '.join(md['associated_files']) or 'none'}")
    if info["labels"]:
        lines.append(f"labels: {', '.join(info['labels'])}")
    lines += ["", f"ops ({sum(info['ops'].values())}):"]
    x = info["xnnpack"]
    for op, n in sorted(info["ops"].items(), key=lambda kv: -kv[1]):
        off = x["not_delegated"].get(op, 0)
        lines.append(f"  {op:<28} {n:>4}  " + ("XNNPACK" if not off else f"{off} NOT on XNNPACK"))
    lines.append(f"XNNPACK partitions: {x['partitions']}")
    return "\n".join(lines) + "\n"
