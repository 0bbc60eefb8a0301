"""The teaching notebooks: their shape (fast) and a full execution with small settings (slow).

Execution is papermill-style: a cell with the small settings is inserted after the
cell tagged ``parameters``, and nbclient runs the notebook on a real Jupyter kernel in
a temporary folder; any cell error fails the test.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import ROOT

NOTEBOOKS = ROOT / "notebooks"

# Small settings per notebook: each runs in about 1-2 minutes on 2 CPU cores.
CI_PARAMETERS = {
    "01_how_a_cnn_sees.ipynb": {
        "SAMPLES": 480,
        "CLASSES": 3,
        "INPUT_SIZE": 32,
        "WIDTH": 0.25,
        "EPOCHS": 4,
        "BATCH_SIZE": 16,
    },
    "02_prune_quantize_export.ipynb": {
        "SAMPLES": 480,
        "CLASSES": 3,
        "INPUT_SIZE": 32,
        "WIDTH": 0.25,
        "EPOCHS": 4,
        "BATCH_SIZE": 16,
        "PRUNE_EPOCHS": 1,
        "QAT_EPOCHS": 1,
        "LATENCY_RUNS": 5,
        "QAT_SOURCES": "float",  # prune-preserving QAT and 4 of the 8 variants cost 2+ minutes more
        "VARIANTS": "int8,pruned_float32,pruned_int8,qat_int8",
    },
    "03_realtime_video.ipynb": {
        "DET_SAMPLES": 240,
        "DET_INPUT": 96,
        "DET_EPOCHS": 6,
        "WIDTH": 0.25,
        "CLIP_FRAMES": 24,
        "SEG_SAMPLES": 96,
        "SEG_INPUT": 64,
        "SEG_EPOCHS": 2,
    },
}


def load(name: str) -> dict:
    return json.loads((NOTEBOOKS / name).read_text())


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_every_notebook_has_ci_parameters():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CI_PARAMETERS)


@pytest.mark.parametrize("name", sorted(CI_PARAMETERS))
def test_notebook_teaches_in_order_and_is_stored_with_its_outputs(name):
    nb = load(name)
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and "What you will learn" in source(cells[0])
    assert cells[-1]["cell_type"] == "markdown" and "## Summary" in source(cells[-1])
    code = [c for c in cells if c["cell_type"] == "code"]
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and params[0] is code[0], "the first code cell holds the parameters"
    for key in CI_PARAMETERS[name]:
        assert f"\n{key} = " in "\n" + source(params[0]), f"CI sets {key}, which the parameters cell lacks"
    # Stored as `make notebooks` executed them, at the defaults shown, top to bottom in one
    # kernel, so a reader on the web sees every figure.
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "run `make notebooks`"
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not [c for c in code if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    for c in code:
        if "plt.show()" in source(c):
            shown = any("image/png" in o.get("data", {}) for o in c["outputs"])
            skipped = any("skipped" in "".join(o.get("text", "")) for o in c["outputs"] if o["output_type"] == "stream")
            assert shown or skipped, f"a figure cell without its figure: {source(c)[:120]}"
    # The notebooks import the package; logic that needs a def or a class belongs in it.
    for c in code:
        lines = source(c).splitlines()
        assert not [ln for ln in lines if ln.startswith(("def ", "class ", "async def "))], source(c)[:200]


def with_parameters(nb, values: dict):
    """Insert the CI values after the ``parameters`` cell (what papermill does)."""
    import nbformat

    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CI_PARAMETERS))
def test_notebook_runs_end_to_end(name, tmp_path, monkeypatch):
    # Not importorskip: CI installs the dev extra, and a skipped notebook would rot unseen.
    import nbclient
    import nbformat

    # The kernel imports this checkout's package and writes only under tmp_path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = with_parameters(
        nbformat.read(NOTEBOOKS / name, as_version=4), {**CI_PARAMETERS[name], "WORK_DIR": str(tmp_path)}
    )
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / name)  # the executed copy, for a look after a failure
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # Every plotting cell shows its figure, unless it says why it skipped (a task not in this build).
    for c in nb.cells:
        if c.cell_type == "code" and "plt.show()" in c.source:
            shown = any("image/png" in o.get("data", {}) for o in c.outputs)
            skipped = any("skipped" in o.get("text", "") for o in c.outputs if o.output_type == "stream")
            assert shown or skipped, c.source[:200]
