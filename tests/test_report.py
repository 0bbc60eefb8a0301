"""The report: figures are real PNGs of the fixed size, report.md/html link them, compare."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.rundir import StageInputError
from pipeline.report import DPI, FIGSIZE, compare, write_report
from pipeline.tasks import get_task


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_non_blank(path: Path) -> None:
    import cv2

    img = cv2.imread(str(path))
    assert img is not None and img.std() > 5, f"{path} is blank"


def _tflite(path: Path, zero_fraction: float) -> Path:
    """A tiny Dense model as a float32 .tflite, with a given fraction of zero weights."""
    from pipeline._keras import keras
    from pipeline.stages.export import convert

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, name="conv")(keras.layers.Rescaling(1.0)(inp))
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(keras.layers.Flatten()(x)))
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            k = ws[0].copy().reshape(-1)
            k[: int(zero_fraction * k.size)] = 0
            layer.set_weights([k.reshape(ws[0].shape), *ws[1:]])
    path.write_bytes(convert(model, "float32"))
    return path


def fake_report(run_dir: Path, exports: Path, run: str = "r1") -> dict:
    names = ["cat", "dog", "bird"]
    confusion = [[8, 1, 1], [0, 9, 1], [2, 0, 8]]
    details = {"per_class_accuracy": dict(zip(names, [0.8, 0.9, 0.8])), "confusion": confusion}

    def variant(name, metric, p50, size, sparsity):
        return {
            "path": str(exports / f"{name}.tflite"),
            "size_bytes": size,
            "gzip_bytes": size // 2,
            "sparsity": sparsity,
            "metric": metric,
            "latency_ms_p50": p50,
            "latency_ms_p90": p50 * 1.2,
            "agreement": 0.95,
            "latency_by_threads": {"1": {"p50": p50, "p90": p50 * 1.2}},
            "undelegated_ops": {"SOFTMAX": 1},
            "memory": {"baseline_mb": 60.0, "peak_mb": 80.0, "delta_mb": 20.0},
            "details": details,
        }

    report = {
        "task": "classification",
        "metric": "accuracy",
        "keras_float": 0.85,
        "run": run,
        "samples": 30,
        "threads": 1,
        "machine": "test machine",
        "date": "2026-11-26",
        "keras_float_details": details,
        "variants": {
            "float32": variant("float32", 0.85, 2.0, 40000, 0.0),
            "int8": variant("int8", 0.83, 1.0, 12000, 0.0),
            "pruned_float32": variant("pruned_float32", 0.84, 1.9, 40000, 0.5),
        },
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report))
    return report


def _logs(run_dir: Path) -> None:
    (run_dir / "train_log.csv").write_text(
        "epoch,accuracy,loss,val_accuracy,val_loss\n0,0.4,1.1,0.5,1.0\n1,0.6,0.9,0.7,0.8\n2,0.8,0.5,0.8,0.6\n"
    )
    (run_dir / "prune_log.csv").write_text("epoch,accuracy,loss,val_accuracy,val_loss\n0,0.78,0.6,0.79,0.62\n")


@pytest.mark.slow
def test_report_writes_every_figure_at_the_fixed_size_and_links_them(tmp_path):
    from pipeline.core.tflite import layer_sparsity
    from pipeline.report import _short

    run_dir, exports = tmp_path / "run", tmp_path / "exports"
    exports.mkdir()
    layers = layer_sparsity(_tflite(exports / "pruned_float32.tflite", 0.5).read_bytes())
    assert [_short(name) for name, _, _ in layers] == ["conv", "head"]
    assert all(abs(zeros / total - 0.5) < 0.01 for _, zeros, total in layers)
    report = fake_report(run_dir, exports)
    _logs(run_dir)
    written = write_report(run_dir, report, get_task("classification"))
    pngs = {p.name for p in written if p.suffix == ".png"}
    assert pngs == {"pareto.png", "training_curves.png", "sparsity.png", "confusion_matrix.png"}
    full = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    for name in ("pareto.png", "training_curves.png", "sparsity.png"):
        assert png_size(run_dir / name) == full
        assert_non_blank(run_dir / name)
    assert png_size(run_dir / "confusion_matrix.png") == (600, 500)
    md = (run_dir / "report.md").read_text()
    assert "| pruned_float32 | 0.8400 | -1.00 pt |" in md and "peak MB" in md
    for name in pngs:
        assert f"]({name})" in md
    page = (run_dir / "report.html").read_text()
    assert page.count("<img ") == 4 and "<td>int8</td>" in page


def test_pareto_front_keeps_only_variants_nothing_beats():
    from pipeline.report import _pareto_front

    lat = np.array([2.0, 1.0, 1.5, 3.0])
    met = np.array([0.85, 0.83, 0.80, 0.84])  # 1.5 ms is beaten by 1.0 ms; 3.0 ms by 2.0 ms
    assert _pareto_front(lat, met) == [1, 0]


def test_compare_puts_runs_side_by_side_and_names_a_missing_report(tmp_path):
    fake_report(tmp_path / "a", tmp_path, run="run_a")
    rb = fake_report(tmp_path / "b", tmp_path, run="run_b")
    rb["variants"]["int8"]["metric"] = 0.7
    (tmp_path / "b" / "report.json").write_text(json.dumps(rb))
    table = compare([tmp_path / "a", tmp_path / "b"])
    rows = [line for line in table.splitlines() if "| int8 |" in line]
    assert len(rows) == 2 and "| run_a |" in rows[0] and "0.7000" in rows[1] and "-15.00 pt" in rows[1]
    with pytest.raises(StageInputError, match="c/report.json is missing"):
        compare([tmp_path / "a", tmp_path / "c"])
    # an odd entry (a hand edit, another version) is named; a figure left out is a blank cell
    for change, message in (
        (lambda r: r["variants"]["int8"].pop("metric"), "variant 'int8' is not a measured variant"),
        (lambda r: r["variants"].update(int8="x"), "variant 'int8' is not a measured variant"),
        (lambda r: r["variants"]["int8"].update(metric="high"), "variant 'int8' is not a measured variant"),
    ):
        r = fake_report(tmp_path / "d", tmp_path, run="run_d")
        change(r)
        (tmp_path / "d" / "report.json").write_text(json.dumps(r))
        with pytest.raises(StageInputError, match=f"d/report.json: {message}"):
            compare([tmp_path / "a", tmp_path / "d"])
    r = fake_report(tmp_path / "e", tmp_path, run="run_e")
    r["keras_float"] = None
    del r["variants"]["int8"]["latency_ms_p50"]
    (tmp_path / "e" / "report.json").write_text(json.dumps(r))
    row = next(line for line in compare([tmp_path / "e"]).splitlines() if "| int8 |" in line)
    assert "run_e" in row and "|  |" in row


@pytest.mark.slow
def test_evaluate_writes_the_report_figures_and_memory(chain):
    run, _, _ = chain
    for name in ("pareto.png", "training_curves.png", "sparsity.png", "confusion_matrix.png", "samples.png"):
        assert_non_blank(run.path / name)
    assert png_size(run.path / "pareto.png") == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    report = json.loads((run.path / "report.json").read_text())
    for v in report["variants"].values():
        assert v["memory"]["peak_mb"] > v["memory"]["baseline_mb"]
        assert v["latency_by_threads"]["1"]["p99"] >= v["latency_by_threads"]["1"]["p50"]
    assert "![Per-layer sparsity](sparsity.png)" in (run.path / "report.md").read_text()
    assert (run.path / "report.html").is_file()


def test_classification_sample_grid_captions_every_image(tmp_path):
    from pipeline.stages.evaluate import _write_png

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    scores = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    targets = np.array([0, 1, 2, 1, 1, 2])
    grid = get_task("classification").sample_grid(images, [scores], targets, ["cat", "dog", "bird"])
    assert grid.shape == (2 * (128 + 18), 4 * 128, 3) and grid.dtype == np.uint8

    def caption(i):  # the text strip under image i
        r, c = divmod(i, 4)
        strip = grid[r * 146 + 128 : r * 146 + 146, c * 128 : (c + 1) * 128].astype(int)
        red = (strip[..., 0] > 150) & (strip[..., 1] < 80)
        green = (strip[..., 1] > 100) & (strip[..., 0] < 80)
        return red.any(), green.any()

    assert caption(0) == (False, True)  # right: green text
    assert caption(3) == (True, False)  # predicted cat, was dog: red text
    _write_png(tmp_path / "samples.png", grid)
    assert png_size(tmp_path / "samples.png") == (512, 292)


def test_detection_and_segmentation_figure_helpers_draw_real_pngs(tmp_path):
    from pipeline.report import iou_bars_figure, pr_curves_figure

    r = np.linspace(0, 1, 101)
    pr = pr_curves_figure({"car": (r, 1 - 0.5 * r, 0.75), "dog": (r, 1 - r**2, 0.66)}, tmp_path)
    iou = iou_bars_figure({"background": 0.95, "disc": 0.6, "square": None}, tmp_path)
    for p in (pr, iou):
        assert png_size(p) == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
        assert_non_blank(p)


def test_a_log_written_twice_is_a_clear_error_naming_the_file_and_line(tmp_path, caplog):
    """Two processes appending one CSV log leave a header in the middle."""
    from pipeline.core.errors import StageInputError
    from pipeline.report import read_logs
    from pipeline.stages.fit import best_so_far

    header, row = "epoch,accuracy,loss,val_accuracy\n", "0,0.5,1.2,0.55\n"
    (tmp_path / "train_log.csv").write_text(header + row + header + row.replace("0,", "1,", 1))
    with caplog.at_level("WARNING"):
        assert read_logs(tmp_path) == {}  # the report goes on without the curves, and says why
    assert re.search(r"curves left out: .*train_log\.csv: line 3, column 'epoch': 'epoch' is not a number", caplog.text)
    with pytest.raises(StageInputError, match=r"train_log\.csv: line 3"):
        best_so_far(tmp_path / "train_log.csv", "val_accuracy", "max")  # a resume must not guess
    (tmp_path / "train_log.csv").write_text(header.replace("\n", ",lst\n") + row.replace("\n", ',"[1, 2]"\n'))
    assert best_so_far(tmp_path / "train_log.csv", "val_accuracy", "max") == pytest.approx(0.55)
    (tmp_path / "train_log.csv").write_text(header + row + "1,0.6,NA,0.7\n")
    assert best_so_far(tmp_path / "train_log.csv", "val_accuracy", "max") == pytest.approx(0.7)
    assert read_logs(tmp_path)["train"][1]["val_accuracy"] == pytest.approx(0.7)
