"""Fashion-MNIST benchmark: the whole chain on the real dataset, then the targets.

    apt-get install dataset-fashion-mnist        # IDX files, offline
    python benchmarks/fashion_mnist.py [--data DIR] [--run-dir DIR] [--set key=value ...]

Runs train → prune → qat → export → evaluate with pipeline/configs/fashion_mnist.yaml
(``--skip train,prune`` reuses stages already done in --run-dir), prints the report
table and checks the issue's targets on the measured numbers. Exit status 1 if a
target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from targets import report_targets  # noqa: E402


def check_targets(report: dict) -> list[tuple[str, bool, str]]:
    """The issue's targets, each as (name, passed, measured)."""
    v = report["variants"]
    ref = report["keras_float"]
    rows = [("Keras float accuracy >= 92%", ref >= 0.92, f"{ref:.4f}")]

    def within(name: str, points: float) -> None:
        if name in v:
            d = (ref - v[name]["metric"]) * 100
            rows.append((f"{name} within {points} pt of Keras float", d <= points, f"{-d:+.2f} pt"))

    within("qat_int8", 0.5)
    within("int8", 1.5)
    within("pqat_int8", 1.0)
    if "float32" in v and "int8" in v:
        r = v["int8"]["size_bytes"] / v["float32"]["size_bytes"]
        rows.append(("int8 file <= 0.3x float32 file", r <= 0.3, f"{r:.3f}x"))
    if "pqat_int8" in v and "int8" in v:
        r = v["pqat_int8"]["gzip_bytes"] / v["int8"]["gzip_bytes"]
        rows.append(
            (
                "pruned int8 gzip <= 0.7x unpruned int8 gzip",
                r <= 0.7,
                f"{r:.3f}x (sparsity {v['pqat_int8']['sparsity']:.2f})",
            )
        )
    if "float32" in v and "int8" in v:
        for t in sorted(v["int8"]["latency_by_threads"], key=int):
            a, b = v["int8"]["latency_by_threads"][t]["p50"], v["float32"]["latency_by_threads"][t]["p50"]
            rows.append((f"int8 p50 <= float32 p50, {t} thread(s)", a <= b, f"{a:.3f} vs {b:.3f} ms"))
    for name, m in v.items():
        if m["undelegated_ops"]:
            rows.append((f"{name}: ops not on XNNPACK (listed, not a target)", True, json.dumps(m["undelegated_ops"])))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--run-dir", default="runs/fashion_mnist")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--skip", default="", help="comma list of stages already done in --run-dir")
    args = ap.parse_args()

    import logging

    from pipeline.core import config
    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import CHAIN, run_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not Path(args.data).is_dir():
        print(
            f"{args.data}: no Fashion-MNIST here; `apt-get install dataset-fashion-mnist` or pass --data",
            file=sys.stderr,
        )
        return 2
    cfg_file = ROOT / "pipeline" / "configs" / "fashion_mnist.yaml"
    cfg = config.load(cfg_file, [f"data.path={args.data}", *args.overrides])
    run = RunDir(args.run_dir)
    skip = set(filter(None, args.skip.split(",")))
    for stage in CHAIN:
        if stage not in skip:
            run_stage(stage, run, cfg)
    report = json.loads((run.path / "report.json").read_text())
    print((run.path / "report.md").read_text())
    rows = check_targets(report)
    return report_targets(rows)


if __name__ == "__main__":
    sys.exit(main())
