"""The target table every benchmark ends with, and its exit status."""

from __future__ import annotations


def target_table(rows: list[tuple[str, bool, str]]) -> str:
    """``(target, passed, measured)`` rows as a Markdown table."""
    lines = ["| target | measured | result |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {'PASS' if ok else 'FAIL'} |" for name, ok, measured in rows]
    return "\n".join(lines)


def report_targets(rows: list[tuple[str, bool, str]]) -> int:
    """Print the table; the exit status: 0 when every target passed, else 1."""
    print("\n" + target_table(rows))
    return 0 if all(ok for _, ok, _ in rows) else 1
