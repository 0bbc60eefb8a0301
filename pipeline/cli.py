"""``edgepipe``: one console script, a subcommand per stage.

The CLI turns arguments into a config and calls one library function; library
code never prints, parses arguments or exits.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from pipeline.core.errors import EdgepipeError, UsageError
from pipeline.core.registry import task_names


def _common(p: argparse.ArgumentParser, needs_task: bool = False) -> None:
    p.add_argument("--run-dir", required=True, type=Path, help="the run folder (created by train)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.epochs=5",
    )
    if needs_task:
        p.add_argument("--task", default=None, help=" | ".join(task_names()))
        p.add_argument("--config", type=Path, default=None, help="YAML config (optional; defaults per task)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edgepipe", description="Train, prune, quantize, export and measure edge vision models."
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("train", help="train the float model"), needs_task=True)
    _common(sub.add_parser("prune", help="magnitude-prune and fine-tune the float model"))
    _common(sub.add_parser("qat", help="quantization-aware training (prune-preserving for the pruned model)"))
    p = sub.add_parser("export", help="write TFLite variants, labels and sidecars")
    _common(p)
    p.add_argument("--variants", default=None, help="comma list, e.g. float32,int8,qat_int8 (default: export.variants)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: exports/<run-name>)")
    _common(sub.add_parser("evaluate", help="measure every exported variant on LiteRT"))
    p = sub.add_parser("all", help="train → prune → qat → export → evaluate")
    _common(p, needs_task=True)
    p = sub.add_parser("demo", help="the whole chain on the built-in synthetic set, small settings")
    p.add_argument("--run-dir", type=Path, default=None, help="default: runs/demo-<task>")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--task", default="all", help=" | ".join(task_names()) + " | all (default)")
    p = sub.add_parser("inspect", help="inputs, outputs, quantization, metadata, labels and ops of a .tflite")
    p.add_argument("model", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = sub.add_parser("benchmark", help="latency percentiles per thread count and peak memory of a .tflite")
    p.add_argument("model", type=Path)
    p.add_argument("--threads", default="1,2,4", help="comma list of thread counts (default 1,2,4)")
    p.add_argument("--runs", type=int, default=50, help="timed invokes per thread count (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed invokes first (default 5)")
    p.add_argument("--profile", action="store_true", help="add per-op timing, slowest first")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = sub.add_parser("compare", help="several runs' reports side by side")
    p.add_argument("run_dirs", nargs="+", type=Path)
    p = sub.add_parser("config", help="print the resolved config, or the reference of all keys")
    p.add_argument("--task", default=None, help="default: the --config file's task, else classification")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--reference", action="store_true", help="print every key as a Markdown table")
    _run_parser(sub.add_parser("run", help="run an exported model on a camera, stream, video or images"))
    return ap


def _run_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="an exported .tflite (its sidecar .json beside it)")
    p.add_argument(
        "--source", required=True, help="camera index, video file, rtsp/http URL, image folder, glob or image"
    )
    p.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    p.add_argument(
        "--parallel",
        choices=["frames", "ops"],
        default="frames",
        help="frames: THREADS single-thread interpreters on successive frames (most FPS, the default); "
        "ops: one interpreter with THREADS threads (least latency per frame)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write the annotated video (.mp4, .avi); for an image source a folder (an annotated copy of each "
        "photo, at its size and under its name) or, for one image, an image file",
    )
    p.add_argument("--output-fps", type=float, default=None, help="frame rate of --output (default: the source's)")
    p.add_argument(
        "--output-segment",
        type=float,
        default=None,
        metavar="SECONDS",
        help="cut --output into files (door-20261205-143000Z.mp4...): one every SECONDS of recording from a "
        "camera or stream, SECONDS of video each from a file; each finished when full, so a camera recording "
        "for days loses one segment in a crash, not all of it",
    )
    p.add_argument(
        "--jsonl",
        type=lambda v: v if v == "-" else Path(v),  # "-" as given: ./- is a file of that name
        default=None,
        help="one JSON line per frame: predictions and timings (from a camera or stream, written as they come; "
        "-: standard output, as they come, the summary then on standard error)",
    )
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: until the source ends)")
    p.add_argument("--no-display", dest="display", action="store_false", default=None, help="run headless")
    p.add_argument("--display", dest="display", action="store_true", help="show a window even without $DISPLAY")
    p.add_argument("--pace", action="store_true", help="play files at their frame rate, dropping late frames")
    p.add_argument("--loop", action="store_true", help="restart a video file at its end")
    p.add_argument("--no-hud", dest="hud", action="store_false", help="no FPS/latency overlay")
    p.add_argument("--reconnect-attempts", type=int, default=10, help="reopen tries after a source fails")
    p.add_argument("--summary-json", type=Path, default=None, help="also write the summary as JSON")
    p.add_argument(
        "--summary-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="rewrite --summary-json this often while running, for live counts that survive a crash "
        "(default: 10 from a camera or stream, only at the end from a file; 0: only at the end)",
    )
    g = p.add_argument_group("overrides (default: the model's sidecar)")
    g.add_argument("--task", default=None, help=" | ".join(task_names()))
    g.add_argument("--labels", default=None, help="labels file (one a line) or a comma-separated list")
    g.add_argument("--resize", choices=["stretch", "letterbox"], default=None)
    g.add_argument("--mean", type=float, default=None, help="input normalization: (pixel - mean) / std")
    g.add_argument("--std", type=float, default=None)
    g = p.add_argument_group("post-processing (each task uses the ones it knows)")
    g.add_argument("--top-k", type=int, default=None, help="classification: labels shown (default 5)")
    g.add_argument("--score-threshold", type=float, default=None, help="detection: minimum score")
    g.add_argument("--iou-threshold", type=float, default=None, help="detection: NMS IoU")
    g.add_argument("--alpha", type=float, default=None, help="segmentation: mask opacity 0-1")
    g = p.add_argument_group("tracking and counting (detection models)")
    g.add_argument("--track", action="store_true", help="follow objects across frames: ids, trails (ByteTrack)")
    g.add_argument(
        "--resume-counts",
        action="store_true",
        help="carry on the line and zone counts in an existing --summary-json (the same lines and zones): "
        "a restarted counter keeps its totals",
    )
    for flag, (_, kind, text) in _TRACK_OPTIONS.items():
        g.add_argument(flag, type=kind, default=None, help=text)
    for flag, metavar, what in (
        ("--count-line", "X1,Y1,X2,Y2", "crossings of this segment"),
        ("--zone", "X1,Y1,X2,Y2,X3,Y3,...", "occupancy of this polygon"),
    ):
        g.add_argument(
            flag,
            action="append",
            default=[],
            metavar=metavar,
            help=f"count {what}, in source-frame pixels (repeatable)",
        )


# The tracker's options: flag -> (TrackOptions field, type, help). Their defaults are
# None, so that one given without --track is an error, not ignored; TrackOptions holds
# the defaults.
_TRACK_OPTIONS = {
    "--track-buffer": ("buffer", int, "frames a lost track is kept (default 30)"),
    "--track-threshold": (
        "threshold",
        float,
        "score of a confident detection (default 0.4, below 0.9); new tracks start 0.1 above it",
    ),
    "--match-iou": ("match_iou", float, "minimum IoU x score to continue a track (0.1)"),
    "--track-refind": (
        "refind",
        float,
        "how far a lost track reaches for its object at most, box heights per frame lost (default 0.3; 0: off)",
    ),
}


def _run(args) -> int:
    from pipeline.runtime.runner import SOURCE_LOST, RunOptions, format_summary, run

    names = ("top_k", "score_threshold", "iou_threshold", "alpha")
    for flag, given in (("--summary-every", args.summary_every is not None), ("--resume-counts", args.resume_counts)):
        if given and args.summary_json is None:
            raise UsageError(f"{flag} is about the --summary-json file: add --summary-json")
    opts = RunOptions(
        model=args.model,
        source=args.source,
        threads=args.threads,
        task=args.task,
        labels=args.labels,
        resize=args.resize,
        mean=args.mean,
        std=args.std,
        task_options={k: getattr(args, k) for k in names if getattr(args, k) is not None},
        display=args.display,
        output=args.output,
        output_fps=args.output_fps,
        output_segment=args.output_segment,
        jsonl=args.jsonl,
        summary_json=args.summary_json,
        summary_every=args.summary_every,
        max_frames=args.max_frames,
        pace=args.pace,
        loop=args.loop,
        hud=args.hud,
        reconnect_attempts=args.reconnect_attempts,
        track=_track_options(args),
        resume_counts=args.resume_counts,
        parallel=args.parallel,
    )
    # run() writes --summary-json; with --jsonl - standard output carries the JSON lines alone
    summary = run(opts)
    print(format_summary(summary), file=sys.stderr if summary["jsonl"] == "-" else sys.stdout)
    if summary["stopped_by"] == SOURCE_LOST:  # not an end: a service manager should restart us
        print(f"edgepipe run: error: {summary['source']}: lost, and every reopen failed", file=sys.stderr)
        return 1
    if not summary["frames"] and summary["skipped_images"]:  # a script must not take "nothing" for success
        print(f"edgepipe run: error: {summary['source']}: no readable image (every one skipped)", file=sys.stderr)
        return 1
    return 0


def _track_options(args):
    from pipeline.runtime.tracking import TrackOptions

    given = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in _TRACK_OPTIONS}  # argparse's dest
    given = {flag: v for flag, v in given.items() if v is not None}
    if not args.track:
        if args.resume_counts:
            raise UsageError("--resume-counts carries on tracked objects' counts: add --track")
        if args.count_line or args.zone:
            raise UsageError("--count-line and --zone count tracked objects: add --track")
        if given:
            raise UsageError(f"{', '.join(given)} set up the tracker: add --track")
        return None
    fields = {_TRACK_OPTIONS[flag][0]: v for flag, v in given.items()}
    return TrackOptions(lines=tuple(args.count_line), zones=tuple(args.zone), **fields)


def _resolve_for_train(args):
    from pipeline.core import config
    from pipeline.core.rundir import RunDir

    run = RunDir(args.run_dir)
    if args.config is None and args.task is None and run.config_path.is_file():
        # A rerun of train in an existing run: train() saves the config, and puts the
        # old one back if the retrain fails.
        return run, run.load_config(args.overrides, save=False)
    return run, config.load(args.config, args.overrides, task=args.task)


def _demo(args) -> int:
    """``edgepipe demo``: the chain on the built-in set for one task, or every task in turn."""
    from pipeline.stages.chain import demo

    for run in demo(args.task, args.run_dir, args.overrides):
        print((run.path / "report.md").read_text())
    return 0


def _inspect(args) -> str:
    import json

    from pipeline.runtime.inspect_model import describe, render

    info = describe(args.model)
    return json.dumps(info, indent=2) + "\n" if args.json else render(info)


def _benchmark(args) -> str:
    import json

    from pipeline.runtime.benchmark import benchmark, render

    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        raise UsageError(f"--threads {args.threads!r}: expected a comma list of integers, e.g. 1,2,4") from None
    for flag, values, least in (("--threads", threads, 1), ("--runs", [args.runs], 1), ("--warmup", [args.warmup], 0)):
        if min(values) < least:
            raise UsageError(f"{flag}: must be at least {least}, got {min(values)}")
    result = benchmark(args.model, threads=threads, runs=args.runs, warmup=args.warmup, profile=args.profile)
    return json.dumps(result, indent=2) + "\n" if args.json else render(result)


def _compare(args) -> str:
    from pipeline.report import compare

    return compare(args.run_dirs)


TOOLS = {"inspect": _inspect, "benchmark": _benchmark, "compare": _compare}


def _dispatch(args) -> int:
    import contextlib

    from pipeline.core import config
    from pipeline.core.cluster import worker_role
    from pipeline.core.rundir import RunDir

    if args.command == "run":
        return _run(args)
    if args.command in TOOLS:
        print(TOOLS[args.command](args), end="")
        return 0
    if args.command == "config":
        if args.reference:
            print(config.reference())
        else:
            print(config.dump(config.load(args.config, args.overrides, task=args.task)), end="")
        return 0
    if args.command == "demo":
        return _demo(args)
    # train and all: config errors before the run folder is made
    run, cfg = _resolve_for_train(args) if args.command in ("train", "all") else (RunDir(args.run_dir), None)
    # One process at a time in a run folder; a multi-worker run's other workers share it.
    with run.lock(args.command) if worker_role().chief else contextlib.nullcontext():
        return _stages(args, run, cfg)


def _stages(args, run, cfg) -> int:
    """``train``, ``prune``, ``qat``, ``export``, ``evaluate`` or ``all`` on ``run``
    (``cfg``: train's and all's, resolved already)."""
    from pipeline.core.cluster import worker_role
    from pipeline.core.rundir import write_text
    from pipeline.stages.chain import run_chain, run_stage

    if args.command == "all":
        # run_chain skips the stages already done (a rerun after an interrupt resumes
        # at the stage it stopped in), cleans the input cache after export, and leaves
        # the stages after training to the chief of a multi-worker run.
        run_chain(run, cfg, resume=True)
        if (run.path / "report.md").is_file() and worker_role().chief:
            print((run.path / "report.md").read_text())
        return 0
    previous = None  # the config before this command's --set, where a failure puts it back
    if args.command != "train":
        # A stage that fails puts back the config as it was, as train does: a --set that
        # made it fail (an export.dir that is a file) must not stay in config.yaml and
        # fail every later command that reads it.
        previous = run.config_path.read_text() if args.overrides and run.config_path.is_file() else None
        cfg = run.load_config(args.overrides)
    variants = args.variants.split(",") if getattr(args, "variants", None) else None
    try:
        logging.getLogger("edgepipe").info("=== %s ===", args.command)
        result = run_stage(args.command, run, cfg, variants, getattr(args, "out", None))
    except BaseException:
        if previous is not None:
            write_text(run.config_path, previous)
            logging.getLogger("edgepipe").info("%s put back as it was before this %s", run.config_path, args.command)
        raise
    if args.command == "evaluate":
        print((run.path / "report.md").read_text())
    elif args.command == "export":
        for name, path in result.items():
            print(f"{name}\t{path}")
    return 0


def _joined_coordinates(argv: list[str]) -> list[str]:
    """``--count-line -10,0,...`` as ``--count-line=-10,0,...``: argparse takes a value
    that starts with a minus (a point left of or above the frame) for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _POINT_FLAGS and re.fullmatch(r"-[\d.]+(,[-+\d.eE]+)+", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


_POINT_FLAGS = ("--count-line", "--zone")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(_joined_coordinates(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return _dispatch(args)
    except EdgepipeError as e:  # expected: bad input, named in the message; anything else is a bug
        print(f"edgepipe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgepipe {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def stage_main(stage: str) -> None:
    """``python -m pipeline.<stage> ARGS`` is ``edgepipe <stage> ARGS``."""
    sys.exit(main([stage, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
