"""The target table every benchmark ends with, and its exit status; the config a
benchmark's chain runs with."""

from __future__ import annotations

from collections.abc import Sequence


def chain_config(run, skip: set[str], overrides: Sequence[str], task: str, data: Sequence[str] = ()):
    """Resuming (``--skip train,...``): the run folder's own config plus any new
    ``--set`` (``overrides``). Else the task's defaults, the data set's settings
    (``data``: ``--realphoto``, ``--coco-train``), then the overrides, so that
    ``--skip prune,qat`` on a new folder trains, where it used to stop at the missing
    config. A resumed run keeps the data it trained on: its ``--set`` may have replaced
    the data set's training files (a replay set), which prune and QAT must fine-tune on
    too."""
    from pipeline.core import config

    return run.load_config(overrides) if "train" in skip else config.load(None, [*data, *overrides], task=task)


def target_table(rows: list[tuple[str, bool, str]]) -> str:
    """``(target, passed, measured)`` rows as a Markdown table."""
    lines = ["| target | measured | result |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {'PASS' if ok else 'FAIL'} |" for name, ok, measured in rows]
    return "\n".join(lines)


def report_targets(rows: list[tuple[str, bool, str]]) -> int:
    """Print the table; the exit status: 0 when every target passed, else 1."""
    print("\n" + target_table(rows))
    return 0 if all(ok for _, ok, _ in rows) else 1
