"""The deployment report: report.md + report.html + matplotlib PNGs beside them.

``evaluate`` calls :func:`write_report` after measuring; ``edgepipe compare`` calls
:func:`compare`. Figures use matplotlib's object API (no pyplot state, no display)
at a fixed size, and are written atomically like every other output.
"""

from __future__ import annotations

import html
import io
import logging
from pathlib import Path

import numpy as np

from pipeline.core.rundir import StageInputError, read_csv_log, read_json, write_bytes, write_text
from pipeline.core.tflite import layer_sparsity
from pipeline.core.variants import VARIANTS, preferred_int8

log = logging.getLogger(__name__)

FIGSIZE = (8.0, 5.0)  # inches; at DPI this is the PNG size tests check
DPI = 100
STAGES = ("train", "prune", "qat", "pqat")  # RUN/<stage>_log.csv, in pipeline order
PRUNED_SOURCES = ("pruned", "pqat")


def new_figure(figsize: tuple[float, float] = FIGSIZE):
    """A matplotlib Figure that needs no display (Agg canvas, no pyplot state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=DPI, layout="constrained")


def save_figure(fig, path: Path) -> Path:
    """Render ``fig`` to PNG atomically at the fixed size."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    write_bytes(path, buf.getvalue())
    return path


# === Figures ===


def pareto_figure(report: dict, path: Path) -> Path:
    """Metric vs p50 latency, marker area ∝ file size, the Pareto front joined."""
    fig = new_figure()
    ax = fig.add_subplot()
    vs = report["variants"]
    names = list(vs)
    lat = np.array([vs[n]["latency_ms_p50"] for n in names])
    met = np.array([vs[n]["metric"] for n in names])
    size_kb = np.array([vs[n]["size_bytes"] / 1024 for n in names])
    area = 40 + 600 * size_kb / max(size_kb.max(), 1e-9)
    ax.scatter(lat, met, s=area, alpha=0.6, c=range(len(names)), cmap="tab10", edgecolors="k")
    for n, x, y, kb in zip(names, lat, met, size_kb):
        ax.annotate(f"{n}\n{kb:.0f} KB", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    front = _pareto_front(lat, met)
    ax.plot(lat[front], met[front], "k--", lw=1, label="Pareto front (faster and better)")
    ax.axhline(report["keras_float"], color="gray", lw=0.8, ls=":", label="Keras float")
    ax.set_xlabel(f"p50 latency, ms ({report['threads']} thread(s), LiteRT + XNNPACK)")
    ax.set_ylabel(report["metric"])
    ax.set_title(f"{report['run']}: {report['metric']} vs latency (marker size = file size)")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def _pareto_front(lat: np.ndarray, met: np.ndarray) -> list[int]:
    """Indices of variants no other variant beats on both latency and metric, by latency."""
    keep = [
        i
        for i in range(len(lat))
        if not any(
            (lat[j] <= lat[i] and met[j] >= met[i]) and (lat[j] < lat[i] or met[j] > met[i]) for j in range(len(lat))
        )
    ]
    return sorted(keep, key=lambda i: lat[i])


def read_logs(run_dir: Path) -> dict[str, list[dict]]:
    """The CSV logs Keras' CSVLogger wrote, per stage that ran."""
    logs = {}
    for stage in STAGES:
        p = run_dir / f"{stage}_log.csv"
        if p.is_file():
            command = {"pqat": "qat"}.get(stage, stage)
            try:
                rows = read_csv_log(p, f"run `edgepipe {command}` again to rewrite it")
            except StageInputError as e:  # the curves are lost, not the report
                log.warning("training curves left out: %s", e)
                continue
            if rows:
                logs[stage] = rows
    return logs


def training_figure(logs: dict[str, list[dict]], path: Path) -> Path:
    """Loss and metrics per epoch across train → prune → qat → pqat, stages marked."""
    fig = new_figure()
    ax_loss, ax_met = fig.subplots(1, 2)
    start = 0
    for stage, rows in logs.items():
        x = np.arange(start, start + len(rows))
        for key in rows[0]:
            if key in ("epoch", "lr", "learning_rate"):
                continue
            y = [r.get(key, np.nan) for r in rows]
            ax = ax_loss if key.endswith("loss") else ax_met
            ls = "--" if key.startswith("val_") else "-"
            ax.plot(x, y, ls=ls, marker="o", ms=3, label=f"{stage} {key}")  # markers: 1-epoch stages show
        for ax in (ax_loss, ax_met):
            ax.axvline(start - 0.5, color="gray", lw=0.5)
        start += len(rows)
    for ax, title in ((ax_loss, "loss"), (ax_met, "metrics")):
        ax.set_xlabel("epoch (all stages)")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=7)
    return save_figure(fig, path)


def sparsity_figure(report: dict, path: Path) -> Path | None:
    """Per-layer zero fraction of each pruned variant's weights, read from its file."""
    pruned = {n: v for n, v in report["variants"].items() if n in VARIANTS and VARIANTS[n].source in PRUNED_SOURCES}
    if not pruned:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    width = 0.8 / len(pruned)
    for k, (name, v) in enumerate(pruned.items()):
        p = Path(v["path"])
        if not p.is_file():
            log.warning("%s: missing, no sparsity bars for %s", p, name)
            continue
        layers = layer_sparsity(p.read_bytes())
        x = np.arange(len(layers))
        ax.bar(x + k * width, [zeros / max(total, 1) for _, zeros, total in layers], width, label=name)
        ax.set_xticks(
            x + width * (len(pruned) - 1) / 2, [_short(lname) for lname, _, _ in layers], rotation=90, fontsize=6
        )
    ax.set_ylim(0, 1)
    ax.set_ylabel("zero fraction of weights")
    ax.set_title("Per-layer sparsity of pruned variants (from the .tflite files)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _short(tensor_name: str) -> str:
    """``model/block_3_expand/Conv2D;…`` → ``block_3_expand``: the Keras layer name."""
    parts = tensor_name.split(";")[0].split("/")
    name = parts[-2] if len(parts) >= 2 else parts[0][:24]
    return name.removeprefix("quant_").removeprefix("prune_low_magnitude_")


# === Report files ===


def write_report(run_dir: Path, report: dict, task) -> list[Path]:
    """Figures, report.md and report.html in ``run_dir``; returns the paths written."""
    run_dir = Path(run_dir)
    figures: dict[str, Path] = {"Metric vs latency": pareto_figure(report, run_dir / "pareto.png")}
    logs = read_logs(run_dir)
    if logs:
        figures["Training curves"] = training_figure(logs, run_dir / "training_curves.png")
    sp = sparsity_figure(report, run_dir / "sparsity.png")
    if sp is not None:
        figures["Per-layer sparsity"] = sp
    for p in task.report_figures(report, run_dir):
        figures[p.stem.replace("_", " ").capitalize()] = p
    if "samples_png" in report:
        figures[f"Sample predictions ({report['samples_png']['variant']})"] = Path(report["samples_png"]["path"])
    md = render_markdown(report, figures)
    write_text(run_dir / "report.md", md)
    write_text(run_dir / "report.html", render_html(report, figures))
    return [*figures.values(), run_dir / "report.md", run_dir / "report.html"]


def _table(report: dict) -> tuple[list[str], list[list[str]]]:
    threads = sorted({int(t) for v in report["variants"].values() for t in v["latency_by_threads"]})
    head = ["variant", report["metric"], "Δ vs Keras", "agreement", "size KB", "gzip KB", "sparsity"]
    head += [f"p50 ms ({t}T)" for t in threads] + [f"p90 ms ({report['threads']}T)", "peak MB", "not on XNNPACK"]
    rows = []
    for name, v in report["variants"].items():
        ops = ", ".join(f"{k}×{n}" for k, n in v["undelegated_ops"].items()) or "–"
        row = [
            name,
            f"{v['metric']:.4f}",
            f"{(v['metric'] - report['keras_float']) * 100:+.2f} pt",
            f"{v['agreement']:.4f}",
            f"{v['size_bytes'] / 1024:.1f}",
            f"{v['gzip_bytes'] / 1024:.1f}",
            f"{v['sparsity']:.2f}",
        ]
        row += [
            f"{v['latency_by_threads'][str(t)]['p50']:.3f}" if str(t) in v["latency_by_threads"] else ""
            for t in threads
        ]
        mem = v.get("memory", {}).get("peak_mb")
        row += [f"{v['latency_ms_p90']:.3f}", f"{mem:.1f}" if mem is not None else "", ops]
        rows.append(row)
    return head, rows


def render_markdown(report: dict, figures: dict[str, Path] | None = None) -> str:
    """The variant table as Markdown, with the machine and date, then the figures."""
    head, rows = _table(report)
    lines = [
        f"# {report['task']} report: {report['run']}",
        "",
        f"Keras float {report['metric']}: **{report['keras_float']:.4f}** on {report['samples']} validation samples.",
        f"Measured with LiteRT + XNNPACK on {report['machine']}, {report['date']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    for title, p in (figures or {}).items():
        lines += ["", f"## {title}", "", f"![{title}]({p.name})"]
    return "\n".join(lines) + "\n"


def render_html(report: dict, figures: dict[str, Path]) -> str:
    """A self-contained page (images beside it) for people who do not read Markdown."""
    head, rows = _table(report)
    e = html.escape
    cells = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    figs = "".join(f'<h2>{e(t)}</h2><img src="{e(p.name)}" alt="{e(t)}">' for t, p in figures.items())
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(report['run'])}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>"
        f"<h1>{e(report['task'])} report: {e(report['run'])}</h1>"
        f"<p>Keras float {e(report['metric'])}: <b>{report['keras_float']:.4f}</b> on {report['samples']} samples. "
        f"Measured with LiteRT + XNNPACK on {e(report['machine'])}, {e(report['date'])}.</p>"
        f"<table><tr>{cells}</tr>{body}</table>{figs}</body></html>\n"
    )


# === Several runs side by side ===


def compare(run_dirs: list[str | Path]) -> str:
    """One Markdown table of every variant of every run's ``report.json``."""
    head = ["run", "task", "variant", "metric", "value", "Δ vs Keras", "size KB", "p50 ms", "threads", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in map(Path, run_dirs):
        p = d / "report.json"
        if not p.is_file():
            raise StageInputError(f"{p} is missing: run `edgepipe evaluate --run-dir {d}` first")
        redo = f"rerun `edgepipe evaluate --run-dir {d}`"
        r = read_json(p, redo)
        if not isinstance(r.get("variants"), dict) or "task" not in r or "metric" not in r:
            raise StageInputError(f"{p}: not a report (no task, metric or variants); {redo}")
        for name, v in r["variants"].items():
            try:
                lines.append("| " + " | ".join(_compare_row(r, d, name, v)) + " |")
            except (KeyError, TypeError, ValueError, AttributeError) as e:  # a hand edit, an older tool
                raise StageInputError(f"{p}: variant {name!r} is not a measured variant ({e!r}); {redo}") from None
    return "\n".join(lines) + "\n"


def _compare_row(r: dict, d: Path, name: str, v: dict) -> list[str]:
    """One variant's row of :func:`compare`; a missing figure is blank, a malformed one raises."""

    def num(x, fmt: str) -> str:
        return "" if x is None else format(float(x), fmt)

    mem = (v.get("memory") or {}).get("peak_mb")
    keras = r.get("keras_float")
    return [
        str(r.get("run", d.name)),
        str(r["task"]),
        name,
        str(r["metric"]),
        num(v["metric"], ".4f"),
        "" if keras is None else f"{(float(v['metric']) - float(keras)) * 100:+.2f} pt",
        num(v.get("size_bytes") and v["size_bytes"] / 1024, ".1f"),
        num(v.get("latency_ms_p50"), ".3f"),
        str(r.get("threads", "")),
        num(mem, ".1f"),
    ]


# === Task figures (called through Task.report_figures) ===


def confusion_figure(report: dict, out_dir: Path) -> Path:
    """Row-normalized confusion matrix of the int8 variant (or Keras float), counts in cells."""
    name = preferred_int8(report["variants"])
    details = report["variants"][name]["details"] if name else report["keras_float_details"]
    cm = np.asarray(details["confusion"], np.int64)
    classes = list(details.get("per_class_accuracy", {})) or [str(i) for i in range(len(cm))]
    fig = new_figure((6.0, 5.0))
    ax = fig.add_subplot()
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(cm)):
        for j in range(len(cm)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color="w" if norm[i, j] > 0.5 else "k")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix: {name or 'Keras float'}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, Path(out_dir) / "confusion_matrix.png")


def pr_curves_figure(curves: dict[str, tuple], out_dir: Path, name: str = "pr_curves.png") -> Path:
    """Precision–recall curves, one per class: ``{class: (recall[], precision[], ap)}``.

    For detection's ``Task.report_figures``; pycocotools' ``eval["precision"]`` at
    IoU 0.5 gives the arrays (101 recall points per class).
    """
    fig = new_figure()
    ax = fig.add_subplot()
    for cls, (recall, precision, ap) in curves.items():
        ax.plot(recall, precision, label=f"{cls} (AP {ap:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision–recall per class")
    if curves:
        ax.legend(fontsize=8)
    return save_figure(fig, Path(out_dir) / name)


def iou_bars_figure(per_class: dict[str, float | None], out_dir: Path, name: str = "per_class_iou.png") -> Path:
    """Per-class IoU bars (None = class absent from the split), for segmentation."""
    fig = new_figure()
    ax = fig.add_subplot()
    names = list(per_class)
    values = [np.nan if per_class[n] is None else per_class[n] for n in names]
    bars = ax.bar(range(len(names)), np.nan_to_num(values), color="tab:blue")
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("IoU")
    ax.set_title("Per-class IoU")
    return save_figure(fig, Path(out_dir) / name)
