"""The real-time video runner: any exported model on a camera, stream, video or images.

Three stages overlap, each on its own thread: capture (decoding, the shared
:func:`prepare` and input quantization), inference, and the main thread's
post-processing, drawing and outputs (where HighGUI wants its window); video
encoding has a fourth. On 2 cores that keeps the interpreter busy while the next
frame is decoded and the last one drawn. Everything
the model needs (task, input size and normalization, labels) comes from the model
file and its sidecar; options only override. Per frame it records capture,
preprocess, inference, postprocess and draw times (ultralytics' predictor idiom) and
ends with a summary: frames, dropped frames, reconnects, mean/p50/p90 per stage, FPS.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import numbers
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import ConfigError, MetadataError, ModelFileError, ModelNotFoundError, RunError
from pipeline.core.images import InputSpec, prepare
from pipeline.core.overlay import hud_panel, paste_hud
from pipeline.core.registry import get_runtime
from pipeline.core.rundir import atomic_path, through_link, write_json, write_text
from pipeline.core.sidecar import read_sidecar, sidecar_path
from pipeline.runtime.sinks import (
    BatchLines,
    Display,
    ImageFiles,
    LiveLines,
    StdoutLines,
    Throttle,
    VideoSegments,
    VideoSink,
    check_output,
    check_output_file,
    ends_as,
    output_kind,
)
from pipeline.runtime.sources import Capture, Frame, FrameSource, ImageSource, open_source
from pipeline.runtime.stats import StageStats
from pipeline.runtime.tflite_model import TFLiteModel
from pipeline.runtime.tracking import LineCounter, Tracking, TrackOptions, ZoneCounter, is_whole

log = logging.getLogger(__name__)

STAGES = ("capture", "preprocess", "inference", "postprocess", "draw")
# Also recorded: the age of a frame when its overlay is done (read → drawn), queue
# waits included; latest-frame-only capture keeps it bounded on live sources.
LATENCY = "latency"
# ``stopped_by`` when a camera or stream failed and every reopen did too: not an end
# (``edgepipe run`` exits 1, so that a service manager restarts it)
SOURCE_LOST = "source lost"


@dataclass(frozen=True)
class RunOptions:
    """Everything :func:`run` needs; ``None`` means "from the model and its sidecar".

    Attributes:
        model: the ``.tflite`` file (its sidecar ``.json`` sits beside it).
        source: camera index, video file, stream URL, image folder, glob or image, or a
            :class:`FrameSource` object.
        task, labels, resize, mean, std: overrides; ``labels`` is a file (one name a
            line) or a comma-separated list. A model without a sidecar needs task and labels.
        task_options: passed to ``Task.postprocess`` (``top_k``, ``score_threshold``,
            ``iou_threshold``, ``alpha``…); a task ignores those it does not use.
        display: show a window; None shows one when ``$DISPLAY``/``$WAYLAND_DISPLAY`` is set.
        pace: play files at their frame rate, dropping frames the model cannot keep up with.
        loop: restart a video file at its end.
        max_frames: stop after this many frames (0: until the source ends).
        output_segment: cut ``output`` into files of this many seconds (of recording
            by the clock from a camera or stream, of video from a file), each finished
            and moved into place when full (``door-20261205-143000Z.mp4``), so a crash
            loses one segment, not a recording of days
            (:class:`~pipeline.runtime.sinks.VideoSegments`).
        output, jsonl, summary_json: the annotated video, a JSON line per frame, and the
            summary as JSON at the end; each written atomically, each checked before
            the first frame. From a camera or stream (no end), the JSON lines go to the
            file as they come instead, replacing it, or appended to it with
            ``resume_counts`` (:class:`~pipeline.runtime.sinks.LiveLines`); from a file
            with ``resume_counts``, this run's lines are added to the file's at the end.
            An output that is a symbolic link is written through it; one that is the
            model, its sidecar, the labels or the source file is an error. ``jsonl``
            ``"-"`` (the string): to standard output as they come, from any source
            (:class:`~pipeline.runtime.sinks.StdoutLines`).
        summary_every: seconds between rewrites of ``summary_json`` while the run goes
            on (``stopped_by`` null until it ends), so a camera that runs for days shows
            its counts as they grow and keeps them through a crash or a power cut;
            0: at the end only. None: every 10 s from a camera or stream, at the end
            only from a file (whose outputs appear complete when it is done).
        track: track detections across frames (ids, trails, line and zone counts);
            detection models only.
        resume_counts: carry on the line and zone counts (and track ids) in an existing
            ``summary_json`` of the same lines and zones: a counter restarted after a
            crash or power cut keeps its totals (:meth:`Tracking.resume`).
        parallel: how ``threads`` are used: ``frames`` (that many single-thread
            interpreters on successive frames, results in frame order: the most frames
            per second) or ``ops`` (one interpreter with that many threads: the least
            latency per frame).
    """

    model: Path
    source: str | int | FrameSource
    threads: int = 2
    task: str | None = None
    labels: str | None = None
    resize: str | None = None
    mean: float | None = None
    std: float | None = None
    task_options: dict = field(default_factory=dict)
    display: bool | None = None
    output: Path | None = None
    output_fps: float | None = None
    output_segment: float | None = None
    jsonl: Path | str | None = None  # "-": standard output
    max_frames: int = 0
    pace: bool = False
    loop: bool = False
    hud: bool = True
    reconnect_attempts: int = 10
    reconnect_backoff_s: float = 0.5
    track: TrackOptions | None = None
    parallel: str = "frames"  # frames: `threads` single-thread interpreters on successive frames; ops: one
    summary_json: Path | None = None
    summary_every: float | None = None
    resume_counts: bool = False


@dataclass
class LoadedModel:
    model: TFLiteModel
    spec: InputSpec
    task_name: str
    class_names: list[str]

    @property
    def task(self):
        return get_runtime(self.task_name)

    def predict(self, image: np.ndarray, bgr: bool = False, **options):
        """One image (RGB, or BGR as OpenCV reads it with ``bgr``; any size) → the
        task's predictions in its pixels, by the runner's own preprocessing and
        post-processing; ``options`` as the runner's task options (``top_k``,
        ``score_threshold``...)."""
        outputs = self.model.invoke(prepare(image, self.spec, bgr=bgr)[None])
        return self.task.postprocess(outputs, self.class_names, spec=self.spec, frame_shape=image.shape[:2], **options)


# === Model, sidecar, metadata and overrides ===


def load_model(opts: RunOptions | str | Path) -> LoadedModel:
    """The interpreter, input spec, task and labels for ``opts.model`` (or a model
    path, with the runner's defaults), or a clear error.

    They come from the sidecar beside the model, else from its TFLite metadata (a model
    copied without its sidecar, or one exported elsewhere); options override both.
    From Python: ``load_model("exports/r1/int8.tflite").predict(rgb_image)``.
    """
    if not isinstance(opts, RunOptions):
        opts = RunOptions(model=Path(opts), source="")
    path = Path(opts.model)
    for name in ("threads", "max_frames", "reconnect_attempts"):
        low = 1 if name == "threads" else 0
        if getattr(opts, name) < low:
            raise RunError(f"{name} must be at least {low}, got {getattr(opts, name)}")
    if opts.summary_every is not None and not 0 <= opts.summary_every < float("inf"):  # NaN fails too
        raise RunError(f"--summary-every must be a number of seconds, at least 0, got {opts.summary_every}")
    _check_numbers(opts)
    if Path(opts.model).is_dir():
        raise RunError(f"{opts.model}: is a folder; --model takes a .tflite file")
    model = TFLiteModel(path, InputSpec(size=1), opts.threads)  # ModelFileError on a bad file
    side, md = None, None
    try:
        side = read_sidecar(path)
    except ModelNotFoundError:
        md = _metadata(path)
    except ModelFileError as e:
        raise RunError(str(e)) from None
    where = sidecar_path(path) if side is not None else path
    task_name = opts.task or (side.task if side else _task_from_metadata(md))
    if not task_name and side is not None:
        raise RunError(f"{where}: cannot tell the model's task (no 'task' in the sidecar); pass --task")
    if not task_name:
        raise RunError(
            f"{sidecar_path(path)}: no sidecar beside {path.name}, and no TFLite metadata that tells the task; "
            f"a model without them needs --task and --labels"
        )
    try:
        get_runtime(task_name)
    except ConfigError as e:
        raise RunError(f"{path.name}: cannot run task {task_name!r}: {e}") from None
    if opts.parallel not in ("frames", "ops"):
        raise RunError(f"parallel {opts.parallel!r}: expected 'frames' or 'ops'")
    if opts.track is not None and not get_runtime(task_name).trackable:
        raise RunError(f"--track follows detected objects; {path.name} is a {task_name} model")
    if opts.track is not None:
        try:
            opts.track.check()
            for i, t in enumerate(opts.track.lines):
                LineCounter.parse(t, i)
            for i, t in enumerate(opts.track.zones):
                ZoneCounter.parse(t, i)
        except ValueError as e:
            raise RunError(str(e)) from None
    spec = _input_spec(model, side.spec if side else _spec_from_metadata(model, md), opts, path)
    model.spec = spec
    names = _class_names(path, side, md, opts.labels, where)
    loaded = LoadedModel(model, spec, task_name, names)
    _check_outputs(loaded, opts, path, opts.labels or where)
    return loaded


# Post-processing options' ranges, checked before the model loads: a threshold of 5 or
# NaN would otherwise run with no detections, or fail in OpenCV's NMS mid-run.
_UNIT_OPTIONS = ("score_threshold", "iou_threshold", "alpha")
_COUNT_OPTIONS = ("top_k", "max_detections")


def _check_numbers(opts: RunOptions) -> None:
    """The numeric options in range (NaN fails every comparison, so it fails here too)."""
    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731 - the CLI's name for it
    for name, v in opts.task_options.items():
        if name in _UNIT_OPTIONS and not (isinstance(v, numbers.Real) and 0 <= v <= 1):
            raise RunError(f"{flag(name)} must be between 0 and 1, got {v}")
        if name in _COUNT_OPTIONS and v is not None and not (isinstance(v, numbers.Integral) and v >= 1):
            raise RunError(f"{flag(name)} must be a whole number, at least 1, got {v}")
    if opts.mean is not None and not abs(opts.mean) < float("inf"):
        raise RunError(f"--mean must be a finite number, got {opts.mean}")
    if opts.std is not None and not 0 < opts.std < float("inf"):
        raise RunError(f"--std must be a positive number (inputs are divided by it), got {opts.std}")
    # a time-lapse at 0.01 (a frame shown 100 s) is written; below that OpenCV opens no writer
    if opts.output_fps is not None and not 0.01 <= opts.output_fps <= 1000:
        raise RunError(f"--output-fps must be between 0.01 and 1000 frames a second, got {opts.output_fps}")


def _check_outputs(m: LoadedModel, opts: RunOptions, path: Path, told_by) -> None:
    """One invoke on a blank input, and the task's post-processing of what comes out:
    a model of another task (``--task`` wrong, a sidecar from another export) or fewer
    labels than classes fails here, named, not with an IndexError on some frame."""
    detail = m.model.interpreter.get_input_details()[0]
    outputs = m.model.invoke(np.zeros((1, *detail["shape"][1:]), detail["dtype"]), quantized=True)
    shapes = ", ".join(str(list(o.shape)) for o in outputs)
    n = len(m.class_names)
    try:
        classes = m.task.classes_in(outputs)
        if classes is not None and n < classes:
            raise RunError(
                f"{path.name}: its outputs ({shapes}) score {classes} classes as a {m.task_name} model, but there "
                f"are {n} labels (from {told_by}); check --task, --labels or the sidecar"
            )
        # every class ranked, so a label missing for any of them would show here too
        options = {**opts.task_options, "top_k": max(classes or 0, opts.task_options.get("top_k") or 0, 1)}
        m.task.postprocess(outputs, m.class_names, spec=m.spec, frame_shape=(m.spec.size, m.spec.size), **options)
    except RunError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever breaks, the outputs do not fit the task
        raise RunError(
            f"{path.name}: its outputs ({shapes}) do not fit a {m.task_name} model with {n} labels "
            f"(from {told_by}; {type(e).__name__}: {e}); check --task, --labels or the sidecar"
        ) from None


def _metadata(path: Path) -> dict | None:
    from pipeline.core.metadata import read_metadata

    try:
        return read_metadata(path.read_bytes())
    except MetadataError as e:
        raise RunError(f"{path}: no sidecar and its TFLite metadata is unreadable ({e})") from None


def _task_from_metadata(md: dict | None) -> str | None:
    """The task a model's standard metadata describes: boxes are detection, a mask
    per class is segmentation, one labelled score tensor is classification."""
    if not md:
        return None
    outs = md.get("outputs", [])
    if any("box" in o for o in outs):
        return "detection"
    if "SEGMENTER_METADATA" in md.get("custom", {}) or any(o.get("color_space") == "GRAYSCALE" for o in outs):
        return "segmentation"
    if len(outs) == 1 and outs[0].get("labels"):
        return "classification"
    return None


def _spec_from_metadata(model: TFLiteModel, md: dict | None) -> InputSpec:
    """The input spec a model without a sidecar implies.

    A uint8 input takes raw pixels, as MediaPipe and the LiteRT support library feed
    it, so the spec is its own quantization (scale and zero point); a float input
    uses the metadata's NormalizationOptions. The resize mode is read from our
    metadata's input description, else it is a stretch (what MediaPipe does).
    """
    shape = [int(s) for s in model.input["shape"]]
    size, channels = shape[1], shape[3] if len(shape) == 4 else 3
    inp = (md or {}).get("inputs", [{}])[0] if md else {}
    resize = "letterbox" if "letterbox resize" in (inp.get("description") or "") else "stretch"
    scale, zp = model.input["quantization"]
    if np.dtype(model.input["dtype"]) == np.uint8 and scale:
        return InputSpec(size, channels, resize, mean=float(zp), std=1.0 / float(scale))
    norm = inp.get("normalization") or {"mean": [0.0], "std": [255.0]}
    return InputSpec(size, channels, resize, mean=float(norm["mean"][0]), std=float(norm["std"][0]))


def _input_spec(model: TFLiteModel, spec: InputSpec, opts: RunOptions, path: Path) -> InputSpec:
    shape = [int(s) for s in model.input["shape"]]
    if len(shape) != 4 or shape[1] != shape[2]:
        raise RunError(f"{path.name}: input tensor shape {shape} is not a square NHWC image")
    overrides = {k: getattr(opts, k) for k in ("resize", "mean", "std") if getattr(opts, k) is not None}
    if overrides.get("resize", "stretch") not in ("stretch", "letterbox"):
        raise RunError(f"resize {opts.resize!r}: expected 'stretch' or 'letterbox'")
    spec = replace(spec, **overrides)
    if (spec.size, spec.channels) != (shape[1], shape[3]):
        raise RunError(
            f"{path.name}: the sidecar says {spec.size}×{spec.size}×{spec.channels} input, "
            f"the model's input tensor is {shape[1]}×{shape[2]}×{shape[3]}"
        )
    return spec


def _class_names(path: Path, side, md: dict | None, labels: str | None, where) -> list[str]:
    if labels:
        p = Path(labels)
        if p.is_file():
            names = p.read_text().splitlines()
        elif "," not in labels and (
            p.suffix.lower() in (".txt", ".names", ".labels") or p.parent.name and p.parent.is_dir()
        ):
            raise RunError(f"--labels {labels}: no such labels file (or give the names, comma-separated)")
        else:
            names = labels.split(",")
    elif side is not None and side.class_names:
        names = list(side.class_names)
    elif side is not None and side.labels_file and (path.parent / side.labels_file).is_file():
        names = (path.parent / side.labels_file).read_text().splitlines()
    elif md and any(o.get("labels") for o in md.get("outputs", [])):
        names = next(o["labels"] for o in md["outputs"] if o.get("labels"))
    else:
        raise RunError(f"{where}: no labels (none in the sidecar or the TFLite metadata); pass --labels")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise RunError(f"{labels or path.name}: the labels are empty")
    return names


# === The loop ===


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event, reason: list):
    """SIGINT/SIGTERM end the run cleanly; a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt
        reason.append(signal.Signals(signum).name)
        log.info("%s received: finishing the outputs", reason[-1])
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _Loop:
    """One run's state: the model, the outputs and the statistics."""

    def __init__(
        self, m: LoadedModel, opts: RunOptions, capture: Capture, sink, jsonl, display, tracking: Tracking | None
    ) -> None:
        self.m, self.task, self.opts = m, m.task, opts
        self.capture, self.sink, self.jsonl, self.display = capture, sink, jsonl, display
        self.stats = StageStats((*STAGES, LATENCY))
        self.tracking = tracking
        # With tracking, the tracker sees low-score detections too (ByteTrack's second stage).
        self.task_options = dict(opts.task_options)
        if self.tracking is not None:
            self.task_options.setdefault("score_threshold", self.tracking.tracker.low_threshold)
        self.frames = 0
        self.fps = 0.0
        self._last = self._dt = None
        self._hud, self._hud_t, self._hud_shape = None, 0.0, None
        self._edge_shape: tuple = (0, 0)
        self.held: dict | None = None  # the tracking counts a summary shows until the run commits its own
        # No live panel on annotated photos, which are deliverables: there it read "0.0
        # FPS", gave the previous photo's timings, and covered a small photo whole.
        self.hud = opts.hud and not isinstance(sink, ImageFiles)

    def step(self, f: Frame, outputs: list, inference_ms: float) -> bool:
        """Post-process, draw and emit one inferred frame; False when the user quit."""
        t1 = time.perf_counter()
        preds = self.task.postprocess(
            outputs, self.m.class_names, spec=self.m.spec, frame_shape=f.image.shape[:2], **self.task_options
        )
        events = []
        if self.tracking is not None:
            if not self.frames:
                self.tracking.check_frame(*f.image.shape[:2])
            preds, events = self.tracking.step(preds, f.index, f.session)
            self._clip(preds["boxes"], f.image.shape)
        t2 = time.perf_counter()
        if self.sink is not None or self.display is not None:
            self._draw(f, preds, t1)  # headless without --output: nobody sees the frame, so skip it
        t3 = time.perf_counter()
        ms = {
            "capture": f.capture_ms,
            "preprocess": f.preprocess_ms,
            "inference": inference_ms,
            "postprocess": (t2 - t1) * 1e3,
            "draw": (t3 - t2) * 1e3,
            LATENCY: (t3 - f.read_at) * 1e3,
        }
        self.stats.add(ms)
        if self._last is not None:  # smooth the frame interval, not its inverse (bursts)
            dt = t3 - self._last
            self._dt = dt if self._dt is None else 0.9 * self._dt + 0.1 * dt
            self.fps = 1 / max(self._dt, 1e-9)
        self._last = t3
        if self.jsonl is not None:
            line = {
                "frame": self.frames,
                "source_frame": f.index,
                **({"file": f.file} if f.file is not None else {}),  # which photo, for a folder of them
                "time": round(f.timestamp, 6),
                "predictions": self.task.to_json(preds),
                "timings_ms": {k: round(v, 3) for k, v in ms.items()},
            }
            if self.tracking is not None:
                line["events"] = events
            self.jsonl.write(json.dumps(line) + "\n")
        if self.sink is not None:
            self.sink.write(f.image, f.file)
        self.frames += 1
        return self.display.show(f.image) if self.display is not None else True

    def _clip(self, boxes: np.ndarray, shape: tuple) -> None:
        """A filtered box may reach past the frame's edge: clipped in place, as
        detections are (two ufuncs against a cached edge: half of ``np.clip``'s cost,
        which counts in tracking's per-frame budget)."""
        if shape != self._edge_shape:
            self._edge, self._edge_shape = np.array([shape[1], shape[0]] * 2, np.float32), shape
        np.minimum(boxes, self._edge, out=boxes)
        np.maximum(boxes, 0, out=boxes)

    def _draw(self, f: Frame, preds, now: float) -> None:
        if self.hud:  # first, so that on a small frame predictions stay on top
            # Numbers that change 60 times a second are unreadable: re-render the
            # panel 4 times a second and paste it (a copy) on every frame.
            if self._hud is None or now - self._hud_t > 0.25 or self._hud_shape != f.image.shape:
                extra = [f"{self.tracking.live} tracks"] if self.tracking is not None else []
                self._hud = hud_panel(f.image.shape, self.fps, self.stats.recent(), extra)
                self._hud_t, self._hud_shape = now, f.image.shape
            paste_hud(f.image, self._hud)
        self.task.draw(f.image, preds, self.m.class_names)
        if self.tracking is not None:
            self.tracking.draw(f.image, dict(zip(preds["track_ids"].tolist(), preds["classes"].tolist())))


def run(opts: RunOptions) -> dict:
    """Run a model on a source until it ends, ``max_frames``, ``q``/Esc, SIGINT or SIGTERM.

    Raises (before any frame is read):
        ModelFileError: the file is not a loadable TFLite model.
        RunError: no sidecar or labels (and no override), unknown task, bad options, outputs
            that do not fit the task or its labels, an output file that cannot be written.
        SourceError: the source cannot be opened.

    Returns:
        The summary (see :func:`format_summary`): frames, dropped, reconnects, gap_s,
        stage latencies (mean/p50/p90 ms) and FPS.
    """
    m = load_model(opts)
    try:
        opts = _checked_outputs(opts)
    except ValueError as e:
        raise RunError(str(e)) from None
    tracking = Tracking(opts.track, m.class_names) if opts.track is not None else None
    source = opts.source if isinstance(opts.source, FrameSource) else open_source(opts.source, loop=opts.loop)
    if opts.output is not None:
        _check_image_output(Path(opts.output), source)
    if opts.resume_counts:
        _resume_counts(tracking, opts, source.live)
    stop, reason = threading.Event(), []
    started: list = []  # (loop, clock) once frames flow
    # Signal handlers stay in place while the outputs are finalised, so a SIGTERM
    # during clean-up cannot kill the process halfway through writing them.
    with _stop_on_signals(stop, reason):
        with _final_summary_on_error(opts, source, started), contextlib.ExitStack() as stack:
            # The capture thread already runs OpenCV beside the interpreter; OpenCV's own
            # worker pool would only compete with XNNPACK's threads for the same cores.
            stack.callback(cv2.setNumThreads, cv2.getNumThreads())
            cv2.setNumThreads(1)
            capture = Capture(
                source,
                prepare=partial(_model_input, m),
                pace=opts.pace,
                reconnect_attempts=opts.reconnect_attempts,
                backoff_s=opts.reconnect_backoff_s,
            ).start()  # SourceError here, before any output file exists
            stack.callback(capture.stop)
            log.info("running %s (%s, %d px input) on %s", Path(opts.model).name, m.task_name, m.spec.size, source.name)
            loop = _Loop(m, opts, capture, *_open_outputs(stack, opts, capture), tracking)
            if opts.resume_counts and not source.live:
                # From a file the counts are committed with the JSONL's lines, at the end:
                # until then (a rewrite, a failure) the summary keeps those it started from,
                # or the file counted again after a failure would count its events twice.
                loop.held = tracking.summary()
            clock = time.perf_counter(), time.process_time()
            started += [loop, clock]
            checkpoints = None
            every = opts.summary_every if opts.summary_every is not None else 10.0 if source.live else 0.0
            if opts.summary_json is not None and every > 0:
                running = partial(_summary, loop, opts, source, clock, None)  # stopped_by null: running
                checkpoints = _Checkpoints(Path(opts.summary_json), every, running)
                stack.callback(checkpoints.close)  # a write in flight ends before the final one
            inference = _Inference(_interpreters(m, opts), capture).start()
            stack.callback(inference.stop)  # before capture.stop: it may be waiting on a frame
            reason.append(_drive(loop, inference, stop, opts.max_frames, checkpoints))
            ended = time.perf_counter(), time.process_time()
        summary = _summary(loop, opts, source, clock, reason[0], ended, committed=True)
        if opts.summary_json is not None:  # still under the signal handlers: never half written
            try:
                write_json(opts.summary_json, summary)
            except OSError as e:  # checked before the run; the disk filled or the folder went since
                raise RunError(
                    f"--summary-json {opts.summary_json}: {e.strerror or e}; the summary was:\n{format_summary(summary)}"
                ) from None
    return summary


@contextlib.contextmanager
def _final_summary_on_error(opts: RunOptions, source: FrameSource, started: list):
    """A run that fails midway (an error from the model, a disk that filled) still
    leaves its counts so far in ``--summary-json``, ``stopped_by`` naming the error, so
    that neither a dashboard nor ``--resume-counts`` takes it for a run still going.
    ``started`` holds (loop, clock) once frames flow."""
    try:
        yield
    except Exception as e:
        if opts.summary_json is not None and started:
            loop, clock = started
            try:
                write_json(opts.summary_json, _summary(loop, opts, source, clock, f"error: {type(e).__name__}: {e}"))
            except Exception as again:  # noqa: BLE001 - the first error is the one to report
                log.warning("--summary-json %s: not written after the error (%s)", opts.summary_json, again)
        raise


def _check_image_output(output: Path, source: FrameSource) -> None:
    """A folder or an image file as ``--output`` takes an image source's photos, and
    never in their place."""
    kind = output_kind(output)
    if kind == "video":
        return
    if not isinstance(source, ImageSource):
        what = "a folder" if kind == "images" else "an image file"
        raise RunError(
            f"--output {output}: {what} takes the annotated photos of an image source (a folder, a glob or an "
            "image); for a video, a camera or a stream give a video file (.mp4, .avi)"
        )
    if kind == "image" and len(source.paths) != 1:
        raise RunError(
            f"--output {output}: one image file, but the source has {len(source.paths)} images: give a folder"
        )
    if kind == "images" and os.path.realpath(output) in {os.path.realpath(p.parent) for p in source.paths}:
        raise RunError(f"--output {output}: holds the source's photos, which their annotated copies would replace")
    if kind == "image" and os.path.realpath(output) in {os.path.realpath(p) for p in source.paths}:
        raise RunError(f"--output {output}: is the source's photo, which its annotated copy would replace")


def _checked_outputs(opts: RunOptions) -> RunOptions:
    """The outputs checked before any frame is read (a ValueError names the problem),
    and ``opts`` with them as they will be written: an output that is a symbolic link
    is written through it (the atomic rename would replace the link itself), a
    ``--jsonl`` that names standard output (``/dev/stdout``) is ``-``, and ``display``
    is decided (:func:`_window_problem`)."""
    if opts.output_segment is not None:
        if opts.output is None or output_kind(opts.output) != "video":
            raise ValueError("--output-segment cuts the --output video into files: add --output with a video file")
        if not 1.0 <= opts.output_segment < float("inf"):  # NaN fails too
            raise ValueError(f"--output-segment must be at least 1 second, got {opts.output_segment}")
    if opts.output_fps is not None and opts.output is not None and output_kind(opts.output) != "video":
        raise ValueError(f"--output-fps is the frame rate of a video; --output {opts.output} writes images")
    for flag, path in (("--output", opts.output), ("--summary-json", opts.summary_json)):
        if path is not None and str(path) == "-":
            raise ValueError(f"{flag} -: only --jsonl takes - (standard output); {flag} is written to a file")
    jsonl = opts.jsonl
    if jsonl is not None and not _stdout(jsonl) and _stream_of(Path(jsonl)) == "standard output":
        jsonl = "-"  # --jsonl /dev/stdout: lines as they come, not a file renamed over the stream
    if _stdout(jsonl) and sys.stdout is None:
        raise ValueError("--jsonl -: standard output is closed")
    given = {"--output": opts.output, "--jsonl": None if _stdout(jsonl) else jsonl, "--summary-json": opts.summary_json}
    outputs = {flag: through_link(Path(p)) for flag, p in given.items() if p is not None}
    # What the run reads must survive it: the same file as an output would be overwritten.
    inputs = {"--model file": Path(opts.model), "model's sidecar": sidecar_path(Path(opts.model))}
    try:  # the labels file the export ships beside the model (an unreadable sidecar is load_model's error)
        shipped = read_sidecar(opts.model).labels_file
    except (ModelFileError, OSError):
        shipped = ""
    if shipped:
        inputs["model's labels file"] = Path(opts.model).parent / shipped
    if opts.labels and Path(opts.labels).is_file():
        inputs["--labels file"] = Path(opts.labels)
    if isinstance(opts.source, str) and Path(opts.source).is_file():
        inputs["--source file"] = Path(opts.source)
    seen: dict[str, str] = {}
    for flag, path in outputs.items():
        stream = _stream_of(Path(given[flag]))  # as given: a stream's link may name a deleted file
        if stream:
            raise ValueError(f"{flag} {given[flag]}: is {stream}; {flag} is written to a file")
        if flag == "--output":
            check_output(path)
        else:
            check_output_file(path, flag)
        key = os.path.realpath(path)
        what = next((k for k, p in inputs.items() if os.path.realpath(p) == key), None)
        if what is not None and not (flag == "--output" and opts.output_segment):  # segments have their own names
            raise ValueError(f"{flag} {given[flag]}: is the {what}; writing it would destroy it")
        if key in seen:
            raise ValueError(f"{seen[key]} and {flag} name the same file ({given[flag]})")
        seen[key] = flag
    show = opts.display
    if show is None:
        show = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    problem = _window_problem() if show else None
    if problem and opts.display:
        raise ValueError(f"--display: cannot open a window ({problem}); run with --no-display")
    if problem:
        log.warning("no window: cannot open one (%s); running headless (--no-display says so)", problem)
    return replace(
        opts,
        output=outputs.get("--output"),
        jsonl="-" if _stdout(jsonl) else outputs.get("--jsonl"),
        summary_json=outputs.get("--summary-json"),
        display=show and not problem,
    )


def _stream_of(path: Path) -> str | None:
    """ "standard output" or "standard error" when ``path`` is that stream's file
    (``/dev/stdout``, ``/proc/self/fd/2``, or a file the shell redirected it to)."""
    try:
        st = os.stat(path)
    except OSError:  # not there yet: a file of our own
        return None
    if os.path.realpath(path) == os.devnull:  # where both may go: a device, not a stream of ours
        return None
    for fd, name in ((1, "standard output"), (2, "standard error")):
        try:
            std = os.fstat(fd)
        except OSError:  # closed
            continue
        if (st.st_dev, st.st_ino) == (std.st_dev, std.st_ino):
            return name
    return None


def _window_problem() -> str | None:
    """Why no window can open here, or None. Asked of a child process: without a
    display (a stale ``$DISPLAY`` after ssh, none at all), OpenCV's Qt backend aborts
    the whole process, which no handler can catch, losing every output."""
    code = "import cv2; cv2.namedWindow('edgepipe'); cv2.destroyAllWindows()"
    display = f"DISPLAY={os.environ.get('DISPLAY', '')!r}"
    try:  # 30 s: a first import of OpenCV from a Raspberry Pi's SD card can take 10
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return f"{display}: opening a window gave no answer in 30 s"
    except OSError as e:
        return f"{display}: {e}"
    if r.returncode == 0:
        return None
    said = [s.strip() for s in r.stderr.splitlines() if s.strip() and not s.startswith(("Traceback", "  "))]
    return f"{display}: {said[0] if said else f'exit status {r.returncode}'}"


def _resume_counts(tracking: Tracking | None, opts: RunOptions, live: bool = True) -> None:
    """``--resume-counts``: the counts in ``--summary-json``, if it exists, are where
    ``tracking`` starts; a file that is not such a summary is an error before any frame."""
    if tracking is None or opts.summary_json is None:
        raise RunError("--resume-counts carries on the counts in --summary-json: it needs --track and --summary-json")
    path = Path(opts.summary_json)
    if not path.exists():
        log.info("--resume-counts: %s does not exist yet; counting from 0", path)
        # a run that crashed before its first rewrite: its ids stay its own
        if opts.jsonl is not None and not _stdout(opts.jsonl):
            tracking.ids_above(_last_track_id(Path(opts.jsonl)))
        return
    where = f"--resume-counts {path}"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise RunError(
            f"{where}: cannot read a summary from it ({e}); move it aside, or run without --resume-counts "
            "to count from 0"
        ) from None
    try:
        tracking.resume(saved.get("tracking") if isinstance(saved, dict) else None, where)
    except ValueError as e:
        raise RunError(str(e)) from None
    log.info("%s: carrying on its counts (%d tracks so far)", where, tracking.seen)
    if opts.jsonl is not None and not _stdout(opts.jsonl):
        at = Path(opts.jsonl), saved.get("jsonl_offset"), saved.get("jsonl_tail_crc32")
        if live:
            _replay_jsonl(tracking, *at)
        else:
            _cut_back(tracking, *at)


def _cut_back(tracking: Tracking, jsonl: Path, offset, crc) -> None:
    """From a file, the JSONL's lines past the summary's offset are those of a run that
    died while adding them (:class:`BatchLines`), whose counts never reached the
    summary: they go, as its counts did, and the file counted again adds them once.
    Where the offset does not fit the file (rotated, replaced, an older summary) it is
    left as it is, and only its ids are kept clear of."""
    try:
        size = jsonl.stat().st_size
        with open(jsonl, "rb+") as f:
            if is_whole(offset) and 0 <= offset < size and is_whole(crc) and ends_as(f, offset, crc):
                f.truncate(offset)
                os.fsync(f.fileno())
                log.warning(
                    "--resume-counts: cut the last %d bytes off %s: lines an interrupted run was adding, "
                    "whose counts it never saved",
                    size - offset,
                    jsonl,
                )
    except FileNotFoundError:
        return
    except OSError as e:
        raise RunError(f"--resume-counts: cannot read the JSONL {jsonl} ({e.strerror or e})") from None
    tracking.ids_above(_last_track_id(jsonl))


def _stdout(jsonl) -> bool:
    """``--jsonl -`` (the string; a ``Path("-")`` is a file of that name): the lines go
    to standard output."""
    return jsonl == "-"


def _replay_jsonl(tracking: Tracking, jsonl: Path, offset, crc=None) -> None:
    """A crash loses the summary's last seconds, not the JSONL's (written every second):
    the counting events in the lines after the summary's ``jsonl_offset`` are counted
    again, so the totals lose nothing that reached the JSONL, and the ids given there
    do not come again. Without an offset that fits the file (a summary of a file
    source, a JSONL rotated or replaced since: shorter than the offset, or its bytes
    before it not those the summary's ``jsonl_tail_crc32`` fingerprints), only the
    ids are kept clear of it."""
    try:
        size = jsonl.stat().st_size
    except OSError:
        return
    if not is_whole(offset) or not 0 <= offset <= size:
        tracking.ids_above(_last_track_id(jsonl))
        return
    try:
        with open(jsonl, "rb") as f:
            # older summaries have no fingerprint: the offset alone, as then; one that is
            # not a number (edited by hand) vouches for nothing
            if crc is not None and not (is_whole(crc) and ends_as(f, offset, crc)):
                log.info(
                    "--resume-counts: %s is not the JSONL the summary was taken with (rotated or replaced "
                    "since): its lines are not counted again",
                    jsonl,
                )
                tracking.ids_above(_last_track_id(jsonl))
                return
            # A line begins at the offset. A summary without a fingerprint may be off by
            # lines a full disk refused: then the replay starts at the next line.
            if offset:
                f.seek(offset - 1)
                if f.read(1) != b"\n":
                    f.readline()
            lines, unreadable = tracking.replay(f)
    except OSError as e:
        raise RunError(f"--resume-counts: cannot read the JSONL {jsonl} to count its last events again ({e})") from None
    if lines:
        log.info(
            "--resume-counts: counted again the events of %d JSONL lines written after the summary%s",
            lines,
            f" ({unreadable} unreadable lines skipped)" if unreadable else "",
        )


def _last_track_id(jsonl: Path, tail: int = 8 << 20) -> int:
    """The highest track id in the last ``tail`` bytes of a JSONL and of its newest
    rotated copy (logrotate's ``tracks.jsonl.1`` or ``tracks.jsonl-20261205``; not a
    compressed one), 0 without them: the ids an earlier run gave after its summary's
    last rewrite (some 10 s, which at 30 fps and 50 objects a frame is about 2.5 MB of
    lines), which a rotation since may have moved to the copy."""

    def last_in(path: Path) -> int:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
                data = f.read()
        except OSError:
            return 0
        return max(map(int, re.findall(rb'"track_id": (\d+)', data)), default=0)

    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0

    copies = [
        p
        for p in jsonl.parent.glob(glob.escape(jsonl.name) + "[.-]*")
        if p.suffix.lower() not in (".gz", ".xz", ".bz2", ".zst", ".lz4")
    ]
    newest = max(copies, key=mtime, default=None)
    return max(last_in(jsonl), last_in(newest) if newest else 0)


def _open_outputs(stack: contextlib.ExitStack, opts: RunOptions, capture: Capture) -> tuple:
    """(video sink, JSONL file, display), each closed by ``stack`` in the right order:
    the writer is released before its temporary file is moved into place."""
    sink = jsonl = display = None
    kind = output_kind(opts.output) if opts.output is not None else None
    if kind in ("image", "images"):  # an image source's (checked by _check_image_output)
        sink = ImageFiles(Path(opts.output), single=kind == "image")
    elif opts.output is not None and opts.output_segment:
        fps, live = opts.output_fps or capture.fps or 30.0, capture.source.live
        sink = VideoSegments(Path(opts.output), fps, opts.output_segment, time.monotonic if live else None)
        stack.callback(sink.close)
    elif opts.output is not None:
        tmp = stack.enter_context(atomic_path(opts.output))
        sink = VideoSink(tmp, opts.output_fps or capture.fps or 30.0, shown=Path(opts.output))
        stack.callback(sink.close)
    if _stdout(opts.jsonl):
        jsonl = stack.enter_context(StdoutLines())
    elif opts.jsonl is not None and capture.source.live:
        jsonl = stack.enter_context(LiveLines(Path(opts.jsonl), append=opts.resume_counts))
    elif opts.jsonl is not None and opts.resume_counts:  # files counted one after another
        jsonl = stack.enter_context(BatchLines(Path(opts.jsonl)))
    elif opts.jsonl is not None:
        jsonl = stack.enter_context(open(stack.enter_context(atomic_path(opts.jsonl)), "w"))
    if opts.display:  # decided by _checked_outputs
        display = Display(f"edgepipe: {capture.source.name}")
        stack.callback(display.close)
    return sink, jsonl, display


def _interpreters(m: LoadedModel, opts: RunOptions) -> list[TFLiteModel]:
    """One interpreter with ``threads`` threads, or (frame-parallel) ``threads`` with one each."""
    if opts.parallel == "ops" or opts.threads == 1:
        return [m.model]
    extra = [TFLiteModel(m.model.path, m.spec, threads=1) for _ in range(opts.threads - 1)]
    m.model = TFLiteModel(m.model.path, m.spec, threads=1)
    return [m.model, *extra]


def _model_input(m: LoadedModel, image) -> object:
    """BGR frame → the input tensor's dtype: the shared :func:`prepare`, then the
    model's own quantization (both on the capture thread)."""
    return m.model.quantize(prepare(image, m.spec, bgr=True))


class _Inference:
    """The interpreters, each on its own thread, between capture and the main thread.

    With ``threads`` > 1 and ``parallel="frames"`` (the default) there are that many
    single-thread interpreters working on successive frames at once, and results are
    handed on in frame order; with ``parallel="ops"`` one interpreter spreads each
    frame over its threads (lower latency per frame, lower throughput: XNNPACK's
    threads wait for each other, and the capture and drawing threads take their cores).
    The main thread takes the finished frames straight from the workers, in frame order
    (an ordering thread in between cost 0.07 ms of CPU and a thread switch a frame). At
    most two frames more than there are interpreters are past capture and not yet
    taken, so a slow consumer holds inference back (and a live capture drops frames)
    instead of building up latency. An error in ``invoke`` is re-raised on the main
    thread, after the frames before it, and again at any later call.
    """

    def __init__(self, models: list[TFLiteModel], capture: Capture) -> None:
        self.models, self.capture = models, capture
        self._stop = threading.Event()
        self._take = threading.Lock()  # frames are numbered in the order workers take them
        self._cond = threading.Condition()
        self._done: dict[int, object] = {}  # sequence number -> (frame, outputs, ms), an error, or None (end)
        self._next_seq = self._next_out = 0
        self._threads = [
            threading.Thread(target=self._work, args=(m,), name=f"inference{k}", daemon=True)
            for k, m in enumerate(models)
        ]

    def start(self) -> _Inference:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=5)

    def get(self, timeout: float = 0.25) -> tuple | None:
        """The next ``(frame, outputs, inference ms)`` in frame order; None once the source has ended."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._next_out in self._done, timeout):
                raise TimeoutError
            item = self._done[self._next_out]
            if item is not None and not isinstance(item, BaseException):  # an end stays, for later calls
                del self._done[self._next_out]
                self._next_out += 1
                self._cond.notify_all()
        if isinstance(item, BaseException):
            raise item
        return item

    def _work(self, model: TFLiteModel) -> None:
        # Frames taken but not yet taken by the main thread: one per interpreter, plus two
        # finished ones that may wait while the interpreters work on the next frames (the
        # one the main thread is about to take, and one more). Without the second, an
        # interpreter idles whenever the main thread is a little late (2 threads: 0.80x of
        # bare FPS against 0.82-0.85x, 1 thread 0.93x against 0.95x; docs/benchmarks.md).
        # It adds at most one frame of latency.
        ahead = len(self.models) + 2
        while not self._stop.is_set():
            with self._cond:  # back-pressure: at most `ahead` frames in flight or waiting
                if not self._cond.wait_for(
                    lambda: self._stop.is_set() or self._next_seq - self._next_out < ahead, 0.25
                ):
                    continue
            with self._take:
                try:
                    f = self.capture.get(timeout=0.25)
                except TimeoutError:
                    continue
                seq = self._next_seq
                self._next_seq += 1
            if f is None:
                self._finish(seq, None)
                return
            try:
                t0 = time.perf_counter()
                outputs = model.invoke(f.prepared[None], quantized=True)
                self._finish(seq, (f, outputs, (time.perf_counter() - t0) * 1e3))
            except Exception as e:  # noqa: BLE001 - handed to the main thread, which raises it
                self._finish(seq, e)
                return

    def _finish(self, seq: int, item) -> None:
        with self._cond:
            self._done[seq] = item
            self._cond.notify_all()


class _Checkpoints:
    """Rewrites ``--summary-json`` every ``every`` seconds of a run, atomically: a reader
    (a dashboard polling the counts) always finds a whole file, and a run killed by a
    crash or a power cut leaves its counts as they were about ``every`` seconds before.

    The summary is built on the main thread (it reads the live counters) and written on
    a thread of its own: on an SD card, a write and its fsync can take longer than many
    frames. A write still going when the next is due is not doubled up: that one is
    skipped. So is a write while no frame came (a camera offline), which would wear
    the card for nothing. A failed write (the disk filled) is a warning, once a minute
    at most, and the run goes on; the write at the end reports it as an error. The
    thread is not a daemon, and the end of the run waits for it on an Event, not with
    ``join``: a second Ctrl-C during a write then lets the write finish at exit rather
    than leave a temporary file and no summary (a ``join`` interrupted by Ctrl-C marks
    the thread as ended in CPython 3.11, and exit no longer waits for it)."""

    def __init__(self, path: Path, every: float, summary) -> None:
        self.path, self.every, self.summary = path, every, summary
        self.failures = 0
        # The first write at once: a counter that crashes within its first ``every``
        # seconds leaves where its JSONL started, and --resume-counts replays from there.
        self._due = time.monotonic()
        self._idle = threading.Event()  # no write going on
        self._idle.set()
        self._written: tuple | None = None  # what the last write saw: frames, reconnects
        self._warn = Throttle()

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + self.every
        if not self._idle.is_set():
            return
        summary = self.summary()
        seen = summary["frames"], summary["reconnects"]
        if seen == self._written:
            return
        self._written = seen
        text = json.dumps(summary, indent=2) + "\n"  # a snapshot: the counters go on changing
        self._idle.clear()
        threading.Thread(target=self._write, args=(text,), name="summary-writer").start()

    def _write(self, text: str) -> None:
        try:
            write_text(self.path, text)
        except OSError as e:
            self.failures += 1
            if self._warn():
                log.warning(
                    "--summary-json %s: cannot rewrite it (%s; %d failed so far); the run goes on",
                    self.path,
                    e.strerror or e,
                    self.failures,
                )
        finally:
            self._idle.set()

    def close(self) -> None:
        self._idle.wait()


def _drive(
    loop: _Loop, inference: _Inference, stop: threading.Event, max_frames: int, checkpoints: _Checkpoints | None = None
) -> str:
    while not stop.is_set():
        # Checked before the tick: a running summary that the final one replaces at once
        # would only be a stale file for a dashboard to read meanwhile.
        if max_frames and loop.frames >= max_frames:
            return "max frames"
        if checkpoints is not None:
            checkpoints.tick()
        try:
            item = inference.get(timeout=0.25)
        except TimeoutError:
            continue
        if item is None:
            return SOURCE_LOST if inference.capture.lost else "end of source"
        if not loop.step(*item):
            return "quit key"
    return "signal"


def _summary(
    loop: _Loop,
    opts: RunOptions,
    source: FrameSource,
    start: tuple,
    reason: str | None,
    end: tuple | None = None,
    committed: bool = False,
) -> dict:
    """The run's summary; ``start`` and ``end`` are (wall, CPU) clock readings, ``end``
    now by default (a summary written while the run goes on, ``reason`` None). Until
    ``committed`` (the run's outputs are in place) the tracking counts are ``loop.held``
    where the run holds them back."""
    cap = loop.capture
    end = end or (time.perf_counter(), time.process_time())
    wall, cpu = end[0] - start[0], end[1] - start[1]
    return {
        "source": source.name,
        "model": str(opts.model),
        "task": loop.m.task_name,
        "frames": loop.frames,
        "dropped": cap.dropped,
        "skipped_images": getattr(source, "skipped", 0),
        "bad_frames": cap.bad_frames,
        "read_failures": cap.read_failures,
        "reconnects": cap.reconnects,
        "gap_s": round(cap.gap_s, 3),
        "wall_s": round(wall, 3),
        "fps": round(loop.frames / wall, 2) if wall > 0 else 0.0,
        "stages_ms": loop.stats.summary(),
        "stopped_by": reason,
        **({"tracking": _counts(loop, committed)} if loop.tracking is not None else {}),
        "output": str(opts.output) if opts.output else None,
        **({"output_segments": loop.sink.summary()} if isinstance(loop.sink, VideoSegments) else {}),
        "jsonl": _shown(opts.jsonl),
        # a camera's JSONL: its length at this summary, where --resume-counts replays from
        "jsonl_offset": getattr(loop.jsonl, "position", None),
        # and the CRC-32 of its last 64 bytes there: a JSONL rotated or replaced since is not replayed
        "jsonl_tail_crc32": getattr(loop.jsonl, "tail_crc32", None),
        # lines a full disk or a reader that stalled or went away (--jsonl -) cost
        "jsonl_lost": getattr(loop.jsonl, "lost", None),
        "cpu_s": round(cpu, 3),
    }


def _shown(jsonl) -> str | None:
    """``--jsonl`` as the summary gives it: "-" for standard output, ./- for a file of that name."""
    if jsonl is None or _stdout(jsonl):
        return jsonl
    return "./-" if str(jsonl) == "-" else str(jsonl)


def _counts(loop: _Loop, committed: bool) -> dict:
    return loop.held if loop.held is not None and not committed else loop.tracking.summary()


def format_summary(s: dict) -> str:
    """The summary as a few lines of text and a per-stage table."""
    lines = [
        f"source {s['source']}  task {s['task']}  stopped by {s['stopped_by']}",
        f"frames {s['frames']}  dropped {s['dropped']}  skipped images {s['skipped_images']}  "
        f"reconnects {s['reconnects']} (gap {s['gap_s']:.1f} s)  wall {s['wall_s']:.1f} s  FPS {s['fps']:.1f}",
        f"{'stage':<12}{'mean ms':>10}{'p50 ms':>10}{'p90 ms':>10}",
    ]
    for name, v in s["stages_ms"].items():
        lines.append(f"{name:<12}{v['mean']:>10.2f}{v['p50']:>10.2f}{v['p90']:>10.2f}")
    if seg := s.get("output_segments"):
        failed = f", {seg['failed']} lost ({seg['lost_frames']} frames not recorded)" if seg["failed"] else ""
        lines.append(f"output {seg['written']} segments{failed}, the last {seg['last']}")
    t = s.get("tracking")
    if t:
        lines.append(f"tracks {t['tracks']}  (reset {t['resets']} times)")
        for k, c in enumerate(t["lines"]):  # numbered as on the frame and in the JSONL's events
            at = ",".join(f"{v:g}" for v in c["line"])
            lines.append(f"line {k} ({at}): in {_per_label(c['in'])}  out {_per_label(c['out'])}")
        for k, z in enumerate(t["zones"]):
            lines.append(
                f"zone {k} ({len(z['zone'])} points): inside now {_per_label(z['inside'])}  "
                f"entries {_per_label(z['entries'])}"
            )
    return "\n".join(lines)


def _per_label(counts: dict) -> str:
    """``{"car": 3, "bus": 1}`` → ``4 (car 3, bus 1)``; ``0`` when empty."""
    total = sum(counts.values())
    return f"{total} ({', '.join(f'{k} {v}' for k, v in counts.items())})" if counts else "0"
