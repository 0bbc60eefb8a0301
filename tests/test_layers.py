"""The layering, checked from the code's own import statements (function-level ones too).

* No import cycles among the package's modules.
* The runtime side (core, runtime, each task's spec and ``runtime.py``) imports nothing
  from the training side, so ``edgepipe run`` works where TensorFlow is not installed;
  and at run time importing it leaves TensorFlow, Keras, TFMOT and keras-cv unloaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT, subprocess_env

PKG = ROOT / "pipeline"
HEAVY = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "keras_cv", "keras")


def _modules() -> dict[str, ast.Module]:
    mods = {}
    for p in PKG.rglob("*.py"):
        if "_vendor" in p.parts:
            continue
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = ast.parse(p.read_text())
    return mods


def _imports(tree: ast.Module) -> set[str]:
    """Every module named by an import statement anywhere in the file (``a.b`` and ``a.b.c``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between package modules, the external top-level packages each imports)."""
    mods = _modules()
    edges, external = {m: set() for m in mods}, {m: set() for m in mods}
    for m, tree in mods.items():
        for target in _imports(tree):
            if not target.startswith("pipeline"):
                external[m].add(target.split(".")[0])
                continue
            t = target
            while t and t not in mods:
                t = t.rpartition(".")[0]
            # A module's own package is not an edge: Python runs it first anyway.
            if t and t != m and not m.startswith(t + ".") and t != "pipeline":
                edges[m].add(t)
    return edges, external


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def _runtime_side(m: str) -> bool:
    """Core, runtime, and of each task its spec (the package), its runtime half and the
    TensorFlow-free box geometry; the CLI is checked by importing it (it loads the
    training stages only inside the commands that train)."""
    parts = m.split(".")
    if len(parts) > 1 and parts[1] in ("core", "runtime"):
        return True
    return len(parts) > 1 and parts[1] == "tasks" and (len(parts) <= 3 or parts[-1] in ("runtime", "boxes"))


def test_the_package_has_no_import_cycles():
    assert _cycles(_graph()[0]) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_runtime_side_imports_nothing_from_training():
    edges, external = _graph()
    side = {m for m in edges if _runtime_side(m)}
    assert {"pipeline.runtime.runner", "pipeline.tasks.detection.runtime", "pipeline.core.config"} <= side
    for m in sorted(side):
        outside = sorted(t for t in edges[m] if t not in side)
        assert not outside, f"{m} imports training-side modules {outside}"
        heavy = sorted(set(external[m]) & set(HEAVY))
        assert not heavy, f"{m} imports {heavy}"


def test_importing_the_runtime_and_every_tasks_postprocessing_loads_no_tensorflow():
    code = (
        "import sys\n"
        "import pipeline.cli, pipeline.runtime.runner, pipeline.runtime.inspect_model, pipeline.runtime.benchmark\n"
        "from pipeline.core.registry import get_runtime, get_spec, task_names\n"
        "for t in task_names():\n"
        "    get_spec(t); get_runtime(t)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout
