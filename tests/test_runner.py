"""The video runner: sources, capture thread, overlays, outputs, errors and signals.

Every video here is written by the test with cv2.VideoWriter; every run is headless.
Tests that need an exported model share one tiny untrained classifier exported
through the real export path (``model`` fixture, ~30 s of TF on 2 cores).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TINY, edgepipe_cmd, subprocess_env

from pipeline.core.images import InputSpec
from pipeline.core.overlay import blend_mask, draw_boxes, palette
from pipeline.runtime.sources import Capture, FrameSource, SourceError, VideoSource, open_source, redact

CLASSES = ["circle", "square", "triangle"]  # the synthetic set's names for 3 classes


def write_video(path: Path, frames: int, size=(160, 120), fps: float = 25.0) -> Path:
    """A short MJPG video: a bright disc moving over grey, frame number readable in red."""
    w, h = size
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert out.isOpened()
    for i in range(frames):
        f = np.full((h, w, 3), 90, np.uint8)
        cv2.circle(f, (10 + (i * 7) % (w - 20), h // 2), h // 6, (0, 200, 255), -1)
        f[-4:, :] = (0, 0, min(255, 10 * i))
        out.write(f)
    out.release()
    return path


def read_all(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} is not playable"
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def has_color(img: np.ndarray, bgr, min_pixels: int = 20, tol: int = 0) -> bool:
    """At least ``min_pixels`` pixels within ``tol`` of a colour (tol > 0 for lossy video)."""
    close = np.abs(img.astype(np.int16) - np.array(bgr, np.int16)).max(-1) <= tol
    return int(close.sum()) >= min_pixels


# === Sources and the capture thread (no model needed) ===


def test_credentials_never_appear_in_source_names():
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/live") == "rtsp://***@10.0.0.5:554/live"
    assert redact("http://cam.local/mjpg?user=bob&password=hunter2&res=hd") == (
        "http://cam.local/mjpg?user=bob&password=***&res=hd"
    )
    assert redact("https://x.io/s?token=abc") == "https://x.io/s?token=***"
    assert redact("videos/a.mp4") == "videos/a.mp4" and redact(0) == "0"
    src = open_source("rtsp://admin:hunter2@127.0.0.1:1/live")
    assert src.live and "hunter2" not in src.name
    with pytest.raises(SourceError) as e:
        src.open()
    assert "hunter2" not in str(e.value) and "***@127.0.0.1" in str(e.value)


def test_source_kinds_are_told_apart(tmp_path):
    write_video(tmp_path / "v.avi", 3)
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.zeros((8, 8, 3), np.uint8))
    assert isinstance(open_source("0"), VideoSource) and open_source("0").live
    assert open_source("rtsp://h/x").live and open_source("http://h/x.mjpg").live
    v = open_source(str(tmp_path / "v.avi"))
    assert isinstance(v, VideoSource) and not v.live
    assert len(open_source(str(tmp_path)).paths) == 2  # folder: images only
    assert len(open_source(str(tmp_path / "img*.png")).paths) == 2
    assert len(open_source(str(tmp_path / "img1.png")).paths) == 1
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "missing.png"))


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_a_looped_file_starts_over_however_short(tmp_path, frames):
    """A one-frame mp4 does not seek back from its end: the loop reopens it instead."""
    out = cv2.VideoWriter(str(tmp_path / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    for i in range(frames):
        out.write(np.full((48, 64, 3), 60 * i, np.uint8))
    out.release()
    s = open_source(str(tmp_path / "v.mp4"), loop=True)
    s.open()
    assert all(s.read() is not None for _ in range(3 * frames + 1)) and s.restarts == 3
    s.close()


def _drain(cap: Capture, delay: float = 0.0) -> list:
    """Every frame until the end, as the runner's loop takes them (a TimeoutError
    means "ask again"; a stalled capture fails the test)."""
    frames, deadline = [], time.monotonic() + 20
    while True:
        try:
            f = cap.get(timeout=1)
        except TimeoutError:
            if time.monotonic() > deadline:
                pytest.fail("capture stalled")
            continue
        if f is None:
            return frames
        frames.append(f)
        time.sleep(delay)


def test_files_deliver_every_frame_to_a_slow_consumer(tmp_path):
    cap = Capture(VideoSource(str(write_video(tmp_path / "v.avi", 12))), queue_size=2).start()
    frames = _drain(cap, delay=0.02)
    cap.stop()
    assert [f.index for f in frames] == list(range(12)) and cap.dropped == 0


def test_paced_file_drops_frames_a_slow_consumer_cannot_take(tmp_path):
    src = VideoSource(str(write_video(tmp_path / "v.avi", 30, fps=50)))
    cap = Capture(src, pace=True).start()
    t0 = time.perf_counter()
    frames = _drain(cap, delay=0.06)
    cap.stop()
    idx = [f.index for f in frames]
    assert cap.dropped > 0 and len(frames) + cap.dropped == 30
    assert idx == sorted(set(idx)) and time.perf_counter() - t0 >= 30 / 50 * 0.9  # paced, not flat out


class ListSource(FrameSource):
    """Frames from a list, like a driver that hands over whatever the sensor gave."""

    def __init__(self, frames: list) -> None:
        self.frames, self.name = frames, "list"

    def open(self) -> None:
        pass

    def read(self):
        if self.position >= len(self.frames):
            return None
        self.position += 1
        return self.frames[self.position - 1]


@pytest.mark.parametrize("pace", [False, True], ids=["every-frame", "latest-only"])
def test_odd_frames_are_converted_and_malformed_ones_skipped_not_fatal(pace):

    from pipeline.core.images import prepare

    frames = [
        np.full((40, 60), 7, np.uint8),  # grayscale
        np.zeros((0, 0, 3), np.uint8),  # empty: a glitching driver
        np.full((30, 30, 4), 9, np.uint8),  # BGRA
        np.full((20, 20, 3), 1000, np.uint16),  # 16-bit
    ]
    taken = threading.Event()  # latest-only: the consumer has the last frame (prepared in get)
    taken.set()

    class HandsOver(ListSource):  # paced, and never faster than the consumer: none dropped
        def read(self):
            assert taken.wait(30)
            taken.clear()
            return super().read()

    def prepared(image):
        taken.set()
        return prepare(image, spec=InputSpec(16), bgr=True)

    src = HandsOver(frames) if pace else ListSource(frames)
    src.fps = 20.0
    cap = Capture(src, prepare=prepared, pace=pace).start()
    got = _drain(cap)
    cap.stop()
    assert [f.index for f in got] == [0, 2, 3] and cap.bad_frames == 1 and cap.dropped == 0
    for f in got:
        assert f.image.dtype == np.uint8 and f.image.ndim == 3 and f.image.shape[2] == 3
        assert f.prepared.shape == (16, 16, 3) and f.preprocess_ms > 0


def test_stop_never_closes_a_source_under_a_read_still_going(caplog):
    """A read that hangs past stop()'s wait (an RTSP timeout, a camera that locks up):
    stop() returns with a warning and leaves the source open under the read, which
    could crash in native code if released now; the capture thread closes it once the
    read returns. A source that ends on its own is closed by then too."""
    release, events = threading.Event(), []

    class Hanging(ListSource):
        def read(self):
            if self.position == 1:
                events.append("read")
                release.wait(30)
                events.append("returned")
            return super().read()

        def close(self) -> None:
            events.append("closed")

    cap = Capture(Hanging([np.zeros((8, 8, 3), np.uint8)] * 3)).start()
    assert cap.get(timeout=5).index == 0
    deadline = time.monotonic() + 10
    while "read" not in events and time.monotonic() < deadline:
        time.sleep(0.01)
    with caplog.at_level(logging.WARNING):
        cap.stop(wait_s=0.2)
    assert (
        events == ["read"]
        and "list: still in a read or a reopen after 0.2 s; it is closed when that returns" in caplog.text
    )
    release.set()
    cap._thread.join(10)
    assert events == ["read", "returned", "closed"]
    ended = Capture(Hanging([np.zeros((8, 8, 3), np.uint8)])).start()
    assert ended.get(timeout=5).index == 0 and ended.get(timeout=5) is None
    ended.stop()
    assert events[-1] == "closed" and events.count("closed") == 2


class FailingVideo(VideoSource):
    """A real video file whose reads fail once after ``fail_after`` frames, as when a
    USB capture device resets; the capture thread must reopen it and resume."""

    def __init__(self, path: Path, fail_after: int) -> None:
        super().__init__(str(path))
        self.fail_after, self.failed = fail_after, False

    def read(self):
        if not self.failed and self.position == self.fail_after:
            self.failed = True
            raise OSError("device reset")
        return super().read()


class StallingStream(VideoSource):
    """A "live" stream (a video file read as one) that stops delivering after
    ``stall_after`` frames and then refuses ``refusals`` reopen attempts."""

    def __init__(self, path: Path, stall_after: int, refusals: int) -> None:
        super().__init__(str(path))
        self.live = True
        self.stall_after, self.refusals, self.stalled = stall_after, refusals, False

    def open(self) -> None:
        if self.stalled and self.refusals > 0:
            self.refusals -= 1
            raise SourceError(f"{self.name}: connection refused")
        super().open()

    def read(self):
        if not self.stalled and self.position == self.stall_after:
            self.stalled = True
            return None
        return super().read()


# === Overlays ===


def test_palette_is_deterministic_and_distinct():
    p = palette(20)
    assert p == palette(20) and len(set(p)) == 20
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in p)


def test_draw_boxes_outlines_each_box_in_its_class_colour():
    frame = np.full((120, 160, 3), 90, np.uint8)
    draw_boxes(frame, np.array([[20, 30, 80, 100], [100, 10, 150, 60]]), [0, 2], [0.9, 0.4], CLASSES)
    colors = palette(3)
    assert tuple(frame[70, 20]) == colors[0]  # left edge of box 0
    assert tuple(frame[40, 150]) == colors[2]  # right edge of box 1
    assert tuple(frame[65, 50]) == (90, 90, 90)  # inside stays clear


def test_blend_mask_tints_classes_leaves_background_and_adds_a_legend():
    frame = np.full((120, 160, 3), 90, np.uint8)
    mask = np.zeros((120, 160), np.uint8)
    mask[60:, :80] = 1
    blend_mask(frame, mask, ["background", "road", "car"], alpha=0.5)
    c = np.array(palette(3)[1], np.float32)
    assert np.abs(frame[100, 40].astype(np.float32) - (0.5 * 90 + 0.5 * c)).max() <= 1
    assert tuple(frame[100, 120]) == (90, 90, 90)
    assert has_color(frame, palette(3)[1]) and not has_color(frame, palette(3)[2])  # legend: present classes only
    with pytest.raises(ValueError, match="mask shape"):
        blend_mask(frame, mask[:10], ["a", "b"])


# One entry per task: (task, class names, model outputs for one frame, options,
# class ids whose colour the overlay must show). Detection and segmentation add theirs.
# Detection: boxes in model-input pixels (32×32 here) and per-class scores per anchor point.
_DET_BOXES = np.array([[[2, 2, 12, 12], [16, 16, 30, 30], [3, 3, 12, 12]]], np.float32)
_DET_SCORES = np.array([[[0.9, 0.0, 0.0], [0.0, 0.0, 0.8], [0.85, 0.0, 0.0]]], np.float32)

OVERLAY_CASES = [
    ("classification", CLASSES, [np.array([[0.1, 0.7, 0.2]], np.float32)], {"top_k": 2}, [1, 2]),
    ("detection", CLASSES, [_DET_BOXES, _DET_SCORES], {"score_threshold": 0.5}, [0, 2]),
    # Segmentation: per-class logits at input size; class 0 (background) is left untinted.
    (
        "segmentation",
        CLASSES,
        [np.repeat(np.eye(3, dtype=np.float32)[[0, 0, 2, 2]], 8, 0)[None, :, None, :].repeat(32, 2)],
        {"alpha": 0.6},
        [2],
    ),
]


@pytest.mark.parametrize("task_name, names, outputs, options, shown", OVERLAY_CASES, ids=[c[0] for c in OVERLAY_CASES])
def test_each_task_draws_its_predictions(task_name, names, outputs, options, shown):
    from pipeline.tasks import get_runtime

    task = get_runtime(task_name)
    frame = np.full((240, 320, 3), 90, np.uint8)
    preds = task.postprocess(outputs, names, spec=InputSpec(32), frame_shape=frame.shape[:2], **options)
    json.dumps(task.to_json(preds))  # JSONL-ready
    out = task.draw(frame, preds, names)
    assert out is frame
    colors = palette(len(names))
    for c in shown:
        assert has_color(frame, colors[c]), f"class {c} colour not drawn"
    for c in set(range(len(names))) - set(shown):
        assert not has_color(frame, colors[c])


# === The runner on an exported model ===


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """An untrained tiny int8 classifier, exported by the real export stage."""
    from pipeline.core import config
    from pipeline.core.rundir import RunDir
    from pipeline.stages.export import export
    from pipeline.stages.weights import rebuild, save_weights

    base = tmp_path_factory.mktemp("runner_model")
    cfg = config.load(None, [*TINY, f"export.dir={base}", "export.representative_samples=16"])
    run = RunDir(base / "run")
    run.save_config(cfg)
    save_weights(rebuild(cfg, cfg.data.synthetic_classes), run.weights("float"))
    return Path(export(run, cfg, ["int8"])["int8"])


@pytest.fixture(scope="module")
def channel_model(tmp_path_factory) -> Path:
    """A float model whose class k is the mean of RGB channel k: it tells whether the
    runner hands the model RGB (as training does) rather than OpenCV's BGR."""
    from pipeline._keras import keras
    from pipeline.core.rundir import write_bytes, write_json
    from pipeline.stages.export import _io_details, convert

    x = keras.Input((16, 16, 3))
    y = keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.Identity(20.0))(
        keras.layers.GlobalAveragePooling2D()(x)
    )
    blob = convert(keras.Model(x, y), "float32")
    path = tmp_path_factory.mktemp("channel_model") / "rgb.tflite"
    write_bytes(path, blob)
    io = _io_details(blob)
    side = {
        "task": "classification",
        "class_names": ["red", "green", "blue"],
        "input": {**InputSpec(16).to_dict(), **io["input"]},
    }
    write_json(path.with_suffix(".json"), side)
    return path


def _run(model: Path, source, **kw) -> dict:
    from pipeline.runtime.runner import RunOptions, run

    return run(RunOptions(model=model, source=source, display=False, **kw))


@pytest.mark.slow
def test_video_run_writes_playable_video_jsonl_and_summary(model, tmp_path):
    from pipeline.runtime.runner import LATENCY, STAGES

    video = write_video(tmp_path / "in.avi", 24)
    s = _run(model, str(video), output=tmp_path / "out.mp4", jsonl=tmp_path / "p.jsonl", task_options={"top_k": 2})
    assert s["frames"] == 24 and s["dropped"] == 0 and s["stopped_by"] == "end of source"
    assert set(s["stages_ms"]) == {*STAGES, LATENCY} and s["stages_ms"]["inference"]["p50"] > 0 and s["fps"] > 0
    assert s["stages_ms"][LATENCY]["mean"] >= s["stages_ms"]["inference"]["mean"]
    frames = read_all(tmp_path / "out.mp4")
    assert len(frames) == 24 and frames[0].shape == (120, 160, 3)
    label_area = frames[0][:40, :80]  # the top-2 labels, each on a box in its class colour
    assert sum(has_color(label_area, c, 20, tol=40) for c in palette(3)) == 2
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(24)) and [x["source_frame"] for x in lines] == list(range(24))
    for x in lines:
        assert len(x["predictions"]) == 2 and {p["label"] for p in x["predictions"]} <= set(CLASSES)
        assert 0 <= x["predictions"][1]["score"] <= x["predictions"][0]["score"] <= 1
        assert set(x["timings_ms"]) == {*STAGES, LATENCY}
    assert not list(tmp_path.glob(".*"))  # atomic writes left no temporary files
    s = _run(model, str(video), max_frames=5, jsonl=tmp_path / "p5.jsonl")
    assert s["frames"] == 5 and s["stopped_by"] == "max frames"
    assert len((tmp_path / "p5.jsonl").read_text().splitlines()) == 5


@pytest.mark.slow
def test_the_model_sees_rgb_frames_prepared_as_in_training(channel_model, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for name, bgr in (("1_red", (0, 0, 255)), ("2_green", (0, 255, 0)), ("3_blue", (255, 0, 0))):
        cv2.imwrite(str(d / f"{name}.png"), np.full((48, 64, 3), bgr, np.uint8))
    _run(channel_model, str(d), jsonl=tmp_path / "p.jsonl", task_options={"top_k": 1})
    top = [json.loads(x)["predictions"][0]["label"] for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert top == ["red", "green", "blue"]


@pytest.mark.slow
def test_image_folder_glob_and_single_image_with_odd_frames(model, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "a_gray.png"), np.full((50, 70), 128, np.uint8))
    cv2.imwrite(str(d / "b_bgra.png"), np.full((60, 40, 4), 200, np.uint8))
    cv2.imwrite(str(d / "c_u16.png"), np.full((30, 30, 3), 40000, np.uint16))
    (d / "d_corrupt.png").write_bytes(b"\x89PNG not really")
    (d / "b2_corrupt.png").write_bytes(b"\x89PNG not really")  # before b_bgra ("2" sorts before "_")
    s = _run(model, str(d), output=tmp_path / "o.avi", jsonl=tmp_path / "p.jsonl")
    assert s["frames"] == 3 and s["skipped_images"] == 2
    # each line names its photo (a skipped one leaves a gap in source_frame)
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [(x["source_frame"], Path(x["file"]).name) for x in lines] == [
        (0, "a_gray.png"),
        (2, "b_bgra.png"),
        (3, "c_u16.png"),
    ]
    frames = read_all(tmp_path / "o.avi")
    assert len(frames) == 3 and all(f.shape == (50, 70, 3) for f in frames)  # the first frame's size
    assert _run(model, str(d / "*_b*.png"))["frames"] == 1
    assert _run(model, str(d / "c_u16.png"))["frames"] == 1
    # nothing readable at all is a failure for the script that ran it, not a success
    from pipeline import cli

    assert cli.main(["run", "--model", str(model), "--source", str(d / "*corrupt.png"), "--no-display"]) == 1
    assert cli.main(["run", "--model", str(model), "--source", str(d / "c_u16.png"), "--no-display"]) == 0


@pytest.mark.slow
def test_a_model_predicts_from_python_as_the_runner_does(model, tmp_path):
    """The Python API for one image: the runner's preprocessing and post-processing."""
    import pipeline

    photo = np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "p.png"), photo)
    _run(model, str(tmp_path / "p.png"), jsonl=tmp_path / "p.jsonl", task_options={"top_k": 3})
    m = pipeline.load_model(model)
    preds = m.task.to_json(m.predict(photo, bgr=True, top_k=3))
    assert preds == json.loads((tmp_path / "p.jsonl").read_text())["predictions"]
    rgb = m.predict(photo[..., ::-1].copy(), top_k=3)  # RGB is the default
    assert m.task.to_json(rgb) == preds


@pytest.mark.slow
def test_photos_to_a_folder_keep_their_names_and_sizes(model, tmp_path):
    """A folder of photos of many sizes (a phone's, a camera's) to ``--output DIR``: an
    annotated copy of each, at its own size, under its name; a video would squeeze them
    all to the first one's size. One image to an image file; and the mistakes: a folder
    for a video source, one image file for several photos, the photos' own folder."""
    from pipeline.runtime.runner import RunError

    d = tmp_path / "photos"
    d.mkdir()
    sizes = {"a.jpg": (48, 64), "b.png": (90, 30), "c.jpg": (20, 20)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(d / name), np.full((h, w, 3), 90, np.uint8))
    (d / "broken.jpg").write_bytes(b"not a jpeg")  # skipped, so no copy
    s = _run(model, str(d), output=tmp_path / "annotated")
    assert s["frames"] == 3 and s["skipped_images"] == 1
    out = {p.name: cv2.imread(str(p)).shape[:2] for p in (tmp_path / "annotated").iterdir()}
    assert out == sizes  # nothing else left there: no temporary files
    assert not (cv2.imread(str(tmp_path / "annotated" / "b.png")) == 90).all()  # the predictions drawn on it
    _run(model, str(d), output=tmp_path / "no_hud", hud=False)  # no live FPS panel on photos: as with --no-hud
    for name in sizes:
        assert (tmp_path / "annotated" / name).read_bytes() == (tmp_path / "no_hud" / name).read_bytes()
    # a glob over two folders with a photo of the same name each: the later one gets -1
    (tmp_path / "more").mkdir()
    cv2.imwrite(str(tmp_path / "more" / "a.jpg"), np.full((10, 12, 3), 90, np.uint8))
    _run(model, str(tmp_path / "[mp]*" / "a.jpg"), output=tmp_path / "both")  # more/ and photos/
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["a-1.jpg", "a.jpg"]
    assert cv2.imread(str(tmp_path / "both" / "a-1.jpg")).shape[:2] == (48, 64)  # photos/ sorts after more/
    _run(model, str(d / "b.png"), output=tmp_path / "one.jpg")
    assert cv2.imread(str(tmp_path / "one.jpg")).shape[:2] == (90, 30)
    video = str(write_video(tmp_path / "v.avi", 3))
    for source, output, message in (
        (video, tmp_path / "frames", "a folder takes the annotated photos of an image source"),
        (str(d), tmp_path / "one.png", "one image file, but the source has 4 images: give a folder"),
        (str(d), d, "holds the source's photos"),
        (str(d / "*.png"), d / "b.png", "is the source's photo"),
    ):
        with pytest.raises(RunError, match=message):
            _run(model, source, output=output)
    assert sorted(p.name for p in d.iterdir()) == ["a.jpg", "b.png", "broken.jpg", "c.jpg"]
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="a_file is a file, not a folder"):
        _run(model, str(d), output=tmp_path / "a_file" / "out")
    with pytest.raises(ValueError, match="--output-fps is the frame rate of a video"):
        _run(model, str(d), output=tmp_path / "annotated", output_fps=5.0)


@pytest.mark.slow
def test_bad_sources_are_errors_before_any_frame(model, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "empty").mkdir()
    cases = [
        (str(tmp_path / "missing.mp4"), "no such file"),
        (str(tmp_path / "notes.mp4"), "cannot open video source"),
        (str(tmp_path / "empty"), "no images"),
        ("rtsp://admin:hunter2@127.0.0.1:1/live", "cannot open video source"),
    ]
    for source, message in cases:
        with pytest.raises(SourceError, match=message) as e:
            _run(model, source, output=tmp_path / "o.mp4", jsonl=tmp_path / "p.jsonl")
        assert "hunter2" not in str(e.value)
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "p.jsonl").exists()


@pytest.mark.slow
def test_bad_models_are_errors_before_any_frame(model, channel_model, tmp_path):
    from pipeline.runtime.runner import RunError
    from pipeline.runtime.tflite_model import ModelFileError

    video = str(write_video(tmp_path / "v.avi", 3))
    (tmp_path / "text.tflite").write_text("hello")
    with pytest.raises(ModelFileError, match="not a TFLite model"):
        _run(tmp_path / "text.tflite", video)
    bare = tmp_path / "bare" / "m.tflite"
    bare.parent.mkdir()
    shutil.copy(model, bare)
    # Copied without its sidecar, our model still runs: its TFLite metadata says the task,
    # the labels and the normalization.
    s = _run(bare, video, jsonl=tmp_path / "p.jsonl")
    first = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])["predictions"]
    assert s["frames"] == 3 and first[0]["label"] in json.loads(model.with_suffix(".json").read_text())["class_names"]
    # A model with neither sidecar nor metadata needs both options.
    nometa = tmp_path / "nometa" / "m.tflite"
    nometa.parent.mkdir()
    shutil.copy(channel_model, nometa)
    with pytest.raises(RunError, match=r"m\.json: no sidecar.*--task and --labels"):
        _run(nometa, video)
    s = _run(nometa, video, task="classification", labels="a,b,c", jsonl=tmp_path / "p.jsonl")
    assert s["frames"] == 3 and json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])["predictions"]
    side = json.loads(model.with_suffix(".json").read_text())
    bare.with_suffix(".json").write_text(json.dumps({**side, "task": "pose"}))
    with pytest.raises(RunError, match="cannot run task 'pose'"):
        _run(bare, video)
    bare.with_suffix(".json").write_text(json.dumps({k: v for k, v in side.items() if k != "task"}))
    with pytest.raises(RunError, match="cannot tell the model's task"):
        _run(bare, video)
    no_labels = {k: v for k, v in side.items() if k not in ("class_names", "labels_file")}
    bare.with_suffix(".json").write_text(json.dumps(no_labels))
    with pytest.raises(RunError, match="no labels"):
        _run(bare, video)
    assert _run(bare, video, labels="x,y,z")["frames"] == 3
    with pytest.raises(RunError, match="unsupported video container"):
        _run(model, video, output=tmp_path / "o.gif")
    with pytest.raises(RunError, match="threads must be at least 1"):
        _run(model, video, threads=0)
    # A classifier told it is a detector: named before the first frame, not an IndexError in it.
    with pytest.raises(RunError, match=r"its outputs \(\[1, \d+\]\) do not fit a detection model"):
        _run(model, video, task="detection", jsonl=tmp_path / "wrong.jsonl")
    assert not (tmp_path / "wrong.jsonl").exists()
    # Fewer labels than classes, even where the top 1 would hide it until some frame
    with pytest.raises(
        RunError, match=r"score 3 classes as a classification model, but there are 2 labels \(from a,b\)"
    ):
        _run(model, video, labels="a,b", task_options={"top_k": 1})


@pytest.mark.slow
def test_unwritable_outputs_are_errors_before_any_frame_and_the_summary_is_written(model, tmp_path, monkeypatch):
    """An output that cannot be written is found before the run, not at its end (where
    the run's JSONL or counts would be lost); the summary JSON is written by the run."""
    from pipeline.runtime.runner import RunError

    video = str(write_video(tmp_path / "v.avi", 3))
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [
        ({"jsonl": tmp_path / "folder"}, "--jsonl .*folder: is a folder"),
        ({"summary_json": tmp_path / "folder"}, "--summary-json .*folder: is a folder"),
        ({"summary_json": tmp_path / "afile" / "s.json"}, "--summary-json .*afile is a file, not a folder"),
        ({"jsonl": tmp_path / "afile" / "deeper" / "p.jsonl"}, "--jsonl .*afile is a file, not a folder"),
        ({"output": tmp_path / "afile" / "o.mp4"}, "--output .*afile is a file, not a folder"),
        (
            {"output": tmp_path / "folder" / "o.mp4", "summary_json": Path("/proc/s.json")},
            "--summary-json /proc/s.json: cannot write in /proc",
        ),
        ({"output_segment": 60.0}, "--output-segment cuts the --output video into files: add --output"),
        ({"jsonl": Path("/dev/null")}, "--jsonl /dev/null: is not a regular file"),
        ({"output": tmp_path / "folder" / "o.mp4", "output_segment": 0.5}, "--output-segment must be at least 1"),
        ({"output": tmp_path / "folder" / "o.mp4", "output_segment": float("nan")}, "--output-segment must be"),
    ]
    for kw, message in cases:
        with pytest.raises(RunError, match=message):
            _run(model, video, **kw)
    assert not list((tmp_path / "folder").iterdir())  # nothing written, not even the video
    with monkeypatch.context() as m:  # started with standard output closed (>&-)
        m.setattr(sys, "stdout", None)
        with pytest.raises(RunError, match="--jsonl -: standard output is closed"):
            _run(model, video, jsonl="-")
    s = _run(model, video, summary_json=tmp_path / "new" / "deep" / "s.json")
    assert json.loads((tmp_path / "new" / "deep" / "s.json").read_text())["frames"] == s["frames"] == 3
    s = _run(model, video, summary_json=tmp_path / "new" / "deep" / "again.json")  # its folder exists now
    assert json.loads((tmp_path / "new" / "deep" / "again.json").read_text())["frames"] == 3
    # the checks' probes (a file in an existing folder, a folder where the path's folder is missing) are gone
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []


@pytest.mark.slow
def test_outputs_never_overwrite_inputs_and_links_and_standard_output_are_written_through(
    model, tmp_path, capfd, monkeypatch
):
    """An output on the source video, the model, its sidecar or the labels would
    destroy it; two outputs on one file would lose one. A link is written through (the
    atomic rename would replace the link), and a path that is standard output (a
    service's ``--jsonl /dev/stdout``) is ``-``: lines to the stream, not a file."""
    from pipeline.runtime.runner import RunError

    video = write_video(tmp_path / "v.avi", 3)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    shipped = model.parent / "labels.txt"  # the export's own, named by the sidecar
    kept = {p: p.read_bytes() for p in (video, model, model.with_suffix(".json"), labels, shipped)}
    cases = [
        ({"output": video}, "--output .*v.avi: is the --source file; writing it would destroy it"),
        ({"jsonl": video}, "--jsonl .*v.avi: is the --source file"),
        ({"summary_json": model}, "--summary-json .*: is the --model file"),
        ({"summary_json": model.with_suffix(".json")}, "is the model's sidecar; writing it would destroy it"),
        ({"jsonl": labels, "labels": str(labels)}, "--jsonl .*labels.txt: is the --labels file"),
        ({"summary_json": shipped}, "--summary-json .*labels.txt: is the model's labels file"),
        (
            {"jsonl": tmp_path / "o.json", "summary_json": tmp_path / "o.json"},
            "--jsonl and --summary-json name the same",
        ),
        ({"summary_json": Path("-")}, "--summary-json -: only --jsonl takes -"),
        ({"output": Path("-")}, "--output -: only --jsonl takes -"),
        ({"summary_json": Path("/proc/self/fd/2")}, "--summary-json /proc/self/fd/2: is standard error"),
    ]
    for kw, message in cases:
        with pytest.raises(RunError, match=message):
            _run(model, str(video), **kw)
    assert all(p.read_bytes() == b for p, b in kept.items())
    # through a link: the file it points to is written, the link stays
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    assert _run(model, str(video), summary_json=tmp_path / "link.json")["frames"] == 3
    assert (tmp_path / "link.json").is_symlink() and json.loads((tmp_path / "real.json").read_text())["frames"] == 3
    # standard output by a path, whatever it is (here pytest's capture file): the lines reach it
    capfd.readouterr()
    s = _run(model, str(video), jsonl=Path("/proc/self/fd/1"))
    lines = capfd.readouterr().out.splitlines()
    assert s["jsonl"] == "-" and [json.loads(x)["frame"] for x in lines] == [0, 1, 2]
    monkeypatch.chdir(tmp_path)  # a file named "-" (a Path), not standard output: shown as one
    assert (
        _run(model, str(video), jsonl=Path("-"))["jsonl"] == "./-"
        and len((tmp_path / "-").read_text().splitlines()) == 3
    )


@pytest.mark.slow
def test_numbers_out_of_range_labels_paths_and_windows_are_errors_before_any_frame(
    model, tmp_path, monkeypatch, caplog
):
    from pipeline.runtime.runner import RunError

    video = str(write_video(tmp_path / "v.avi", 3))
    nan = float("nan")
    cases = [
        ({"task_options": {"score_threshold": 5.0}}, "--score-threshold must be between 0 and 1, got 5.0"),
        ({"task_options": {"iou_threshold": nan}}, "--iou-threshold must be between 0 and 1, got nan"),
        ({"task_options": {"alpha": -0.5}}, "--alpha must be between 0 and 1"),
        ({"task_options": {"top_k": 0}}, "--top-k must be a whole number, at least 1, got 0"),
        ({"std": 0.0}, "--std must be a positive number"),
        ({"mean": nan}, "--mean must be a finite number"),
        ({"output": tmp_path / "o.avi", "output_fps": 0.001}, "--output-fps must be between 0.01 and 1000"),
        ({"output": tmp_path / "o.mp4", "output_fps": -5.0}, "--output-fps must be between 0.01 and 1000"),
        ({"labels": str(tmp_path / "nowhere" / "labels.txt")}, "--labels .*labels.txt: no such labels file"),
    ]
    for kw, message in cases:
        with pytest.raises(RunError, match=message):
            _run(model, video, **kw)
    from pipeline.runtime.runner import _class_names

    assert _class_names(model, None, None, "car/truck", "x") == ["car/truck"]  # one label, not a path
    options = {"score_threshold": np.float32(0.35), "top_k": np.int64(2)}  # NumPy's numbers from a caller
    assert _run(model, video, task_options=options)["frames"] == 3
    with pytest.raises(RunError, match=f"{tmp_path}: is a folder; --model takes a .tflite file"):
        _run(tmp_path, video)
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".o.*"))
    # No display to show on (a stale $DISPLAY): OpenCV would abort the process. Asked
    # first: headless with a warning, or with --display an error.
    from pipeline.runtime.runner import RunOptions, run

    monkeypatch.setenv("DISPLAY", ":4711")  # not :99, xvfb-run's own
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with caplog.at_level(logging.WARNING):
        s = run(RunOptions(model=model, source=video, jsonl=tmp_path / "p.jsonl"))
    assert s["frames"] == 3 and "no window: cannot open one (DISPLAY=':4711'" in caplog.text
    with pytest.raises(RunError, match="--display: cannot open a window \\(DISPLAY=':4711'"):
        run(RunOptions(model=model, source=video, display=True, jsonl=tmp_path / "q.jsonl"))
    assert not (tmp_path / "q.jsonl").exists()
    # A probe that never answers (a display server that hangs) says so, with the display
    from pipeline.runtime import runner

    def hangs(*a, **k):
        raise subprocess.TimeoutExpired(a[0], k["timeout"])

    monkeypatch.setattr(runner.subprocess, "run", hangs)
    assert runner._window_problem() == "DISPLAY=':4711': opening a window gave no answer in 30 s"


@pytest.mark.slow
def test_a_file_cut_short_is_warned_about(model, tmp_path, caplog):
    video = write_video(tmp_path / "v.avi", 40)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    with caplog.at_level(logging.WARNING):
        s = _run(model, str(video))
    assert s["frames"] == 40 and "truncated" not in caplog.text
    with caplog.at_level(logging.WARNING):
        s = _run(model, str(cut), loop=True, max_frames=60)
    assert s["frames"] == 60 and caplog.text.count("of the 40 its header gives: a truncated or damaged file?") == 1


def test_points_left_of_or_above_the_frame_need_no_equals_sign():
    from pipeline.cli import _joined_coordinates, parser

    argv = ["run", "--model", "m", "--source", "0", "--track", "--count-line", "-20,240,660,240", "--zone"]
    args = parser().parse_args(_joined_coordinates([*argv, "-5,-5,50,-5,50,50", "--match-iou", "0.2"]))
    assert args.count_line == ["-20,240,660,240"] and args.zone == ["-5,-5,50,-5,50,50"] and args.match_iou == 0.2
    assert _joined_coordinates(["--count-line", "--zone"]) == ["--count-line", "--zone"]  # not a value: as given
    with pytest.raises(SystemExit):  # what argparse alone does with it
        parser().parse_args([*argv[:-1]])


@pytest.mark.slow
def test_a_summary_that_cannot_be_written_at_the_end_still_reaches_the_user(model, tmp_path, monkeypatch):
    """The disk fills during a long run: the error carries the summary, counts and all."""
    from pipeline.runtime import runner

    def full(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "write_json", full)
    with pytest.raises(
        runner.RunError, match=r"(?s)--summary-json .*s.json: No space left on device; the summary was:\n.*frames 3"
    ):
        _run(model, str(write_video(tmp_path / "v.avi", 3)), summary_json=tmp_path / "s.json")


@pytest.mark.slow
def test_the_summary_json_is_rewritten_while_the_run_goes_on(model, tmp_path, monkeypatch, caplog):
    """A camera that runs for days: its counts can be read while it runs, whole at every
    read, and a crash or power cut loses at most the last few seconds of them."""
    import threading

    from pipeline.runtime import runner

    video, path = write_video(tmp_path / "v.avi", 60), tmp_path / "s.json"

    def watched(source, **kw) -> tuple[dict, list[int]]:
        """The run's summary, and the frame counts of the summaries read while it ran."""
        seen, done = [], threading.Event()

        def watch():
            while not done.is_set():
                if path.exists():
                    seen.append(json.loads(path.read_text()))  # a JSONDecodeError here: a half-written file
                time.sleep(0.01)

        path.unlink(missing_ok=True)
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            s = _run(model, source, summary_json=path, **kw)
        finally:
            done.set()
            watcher.join()
        assert json.loads(path.read_text()) == json.loads(json.dumps(s))  # the last word: the final summary
        return s, [x["frames"] for x in seen if x["stopped_by"] is None]

    s, running = watched(SlowCamera(video, 0.03), max_frames=45, summary_every=0.2)  # 1.35 s
    assert s["stopped_by"] == "max frames" and s["frames"] == 45
    # the first at once, before any frame: a crash in the first seconds leaves where the run began
    assert running[0] == 0 and len(set(running)) >= 3 and max(running) < 45 and running == sorted(running)
    # From a file (a batch job) by default it appears once, complete, when the run is done.
    s, running = watched(str(video), pace=True, max_frames=30)  # 1.2 s at 25 fps
    assert s["frames"] == 30 and not running

    # A rewrite that fails (the disk filled for a while) is a warning; the run goes on to the end.
    def full(p, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "write_text", full)
    video = str(video)
    s = _run(model, video, pace=True, max_frames=20, summary_json=path, summary_every=0.1)
    assert s["frames"] == 20 and json.loads(path.read_text())["stopped_by"] == "max frames"
    assert "cannot rewrite it (No space left on device; 1 failed so far); the run goes on" in caplog.text
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(runner.RunError, match="--summary-every must be a number of seconds, at least 0"):
            _run(model, video, summary_json=path, summary_every=bad)
    from pipeline.cli import _run as cli_run
    from pipeline.cli import parser
    from pipeline.core.errors import UsageError

    for flag, *more in (["--summary-every", "5"], ["--resume-counts", "--track"]):
        with pytest.raises(UsageError, match=f"{flag} is about the --summary-json file: add --summary-json"):
            cli_run(parser().parse_args(["run", "--model", str(model), "--source", video, flag, *more]))


def test_the_final_summary_waits_for_a_rewrite_in_flight_and_an_idle_camera_is_not_rewritten(tmp_path, monkeypatch):
    from pipeline.runtime import runner

    writes, synced = [], threading.Event()

    def slow(path, text):
        assert synced.wait(30)  # an SD card's fsync, which ends when the test says
        writes.append(json.loads(text)["frames"])

    monkeypatch.setattr(runner, "write_text", slow)
    frames = iter([1, 2, 2])
    checkpoints = runner._Checkpoints(tmp_path / "s.json", 0.0, lambda: {"frames": next(frames), "reconnects": 0})
    checkpoints.tick()
    checkpoints.tick()  # the first is still writing: not doubled up
    synced.set()
    checkpoints.close()  # the run's end waits for it: no later rewrite can replace the final summary
    assert writes == [1]
    checkpoints.tick()
    checkpoints.close()
    checkpoints.tick()  # no frame since: nothing new to write
    checkpoints.close()
    assert writes == [1, 2]


@pytest.mark.slow
def test_a_run_that_fails_midway_leaves_its_summary_saying_so(model, tmp_path, monkeypatch):
    """Neither a dashboard nor --resume-counts may take a failed run for one still going."""
    from pipeline.runtime import runner

    video, path = str(write_video(tmp_path / "v.avi", 30)), tmp_path / "s.json"
    step = runner._Loop.step

    def failing(self, *args):
        if self.frames == 12:
            raise RuntimeError("the model failed")
        return step(self, *args)

    monkeypatch.setattr(runner._Loop, "step", failing)
    with pytest.raises(RuntimeError, match="the model failed"):
        _run(model, video, summary_json=path)
    s = json.loads(path.read_text())
    assert s["stopped_by"] == "error: RuntimeError: the model failed" and s["frames"] == 12


class SlowCamera(VideoSource):
    """A camera stand-in: a video file read as a live source, a frame every ``delay_s``."""

    def __init__(self, path: Path, delay_s: float) -> None:
        super().__init__(str(path))
        self.live, self.delay_s = True, delay_s

    def read(self):
        time.sleep(self.delay_s)
        return super().read()


@pytest.mark.slow
def test_a_live_sources_jsonl_is_written_as_it_comes(model, tmp_path):
    """A camera has no end to wait for: its JSONL grows while it runs (``tail -f``).
    Without --resume-counts it replaces an earlier run's file."""
    import threading

    path = tmp_path / "live.jsonl"
    path.write_text('{"frame": 0}\n{"frame": 1, "predi')  # an earlier run, cut off mid-line
    video = write_video(tmp_path / "v.avi", 60)
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            seen.append(path.read_text().splitlines())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:  # 50 frames, one every 30 ms: 1.5 s, and lines go out once a second
        s = _run(model, SlowCamera(video, 0.03), jsonl=path, max_frames=50)
    finally:
        done.set()
        watcher.join()
    lines = path.read_text().splitlines()
    assert [json.loads(x)["frame"] for x in lines] == list(range(s["frames"])) and s["frames"] == 50
    assert s["jsonl_offset"] == path.stat().st_size  # where --resume-counts would replay from
    # This run's lines were there while it went on (not the earlier run's two lines)
    assert any(0 < len(x) < 50 and '"predictions"' in x[0] for x in seen)


def test_live_lines_lose_what_a_full_disk_refuses_and_go_on(tmp_path, caplog):
    """A full disk costs lines, never the run, and never a broken or blank line after it;
    the warning comes once, not every second; an appended file's cut line is ended."""
    from pipeline.runtime.sinks import LiveLines

    class Full:
        """The file, on a disk with ``room`` bytes left."""

        def __init__(self, f, room: int) -> None:
            self.f, self.room = f, room

        def write(self, b) -> int:
            if not self.room:
                raise OSError(28, "No space left on device")
            n = min(len(b), self.room)
            self.room -= n
            return self.f.write(b[:n])

        def __getattr__(self, name):  # the rest (tell, fileno...) is the file's
            return getattr(self.f, name)

    path = tmp_path / "l.jsonl"
    path.write_text('{"earlier": 1}\n{"earl')  # a power cut mid-line
    with LiveLines(path, append=True, every_s=3600) as lines:
        lines.write('{"a": 1}\n')  # the first goes out at once, the next wait their second
        lines.write('{"a2": 1}\n')
        # where the file will end: its length, the line that ends the cut one, the waiting line
        assert lines.position == path.stat().st_size + 10 and path.read_text().endswith('{"a": 1}\n')
        lines.flush()
        lines.every_s, lines._due = 0.0, 0.0  # from here each line goes out at once
        assert lines.position == path.stat().st_size
        real = lines._f
        lines._f = Full(real, 5)
        lines.write('{"b": 2}\n')  # 5 bytes go out, then the disk is full
        lines._f = Full(real, 1)
        lines.write('{"c": 3}\n')  # only the newline that ends the cut line goes out
        lines._f = Full(real, 0)
        lines.write('{"d": 4}\n')  # nothing goes out
        lines._f = real  # space again
        lines.write('{"e": 5}\n')
    got = path.read_text().splitlines()
    assert got == ['{"earlier": 1}', '{"earl', '{"a": 1}', '{"a2": 1}', '{"b":', '{"e": 5}']
    assert lines.position == path.stat().st_size
    warnings = [r.getMessage() for r in caplog.records if "l.jsonl" in r.getMessage()]
    assert warnings == [
        f"--jsonl {path}: No space left on device; 1 lines lost so far, the run goes on",
        f"--jsonl {path}: writing again (3 lines lost)",
    ]
    with LiveLines(path) as lines:  # not appending: an earlier run's file is replaced
        lines.write('{"f": 6}\n')
    assert path.read_text() == '{"f": 6}\n'


def test_output_segments_are_finished_and_in_place_as_they_fill(tmp_path):
    """--output-segment: a camera recording for days is cut into files of N seconds of
    video, each finished (playable) and moved into place once full, so a crash loses
    the one being written; they sort in the order they were written."""
    from pipeline.runtime.sinks import VideoSegments

    frames = [np.full((48, 64, 3), 10 * (i % 20), np.uint8) for i in range(130)]
    segments = VideoSegments(tmp_path / "rec.avi", fps=25.0, seconds=2)
    for f in frames[:110]:
        segments.write(f)
    segments.finished()  # the full ones are finished on their own thread
    done = sorted(tmp_path.glob("rec-*.avi"))
    assert [len(read_all(p)) for p in done] == [50, 50] and len(list(tmp_path.glob(".rec-*"))) == 1  # 10 in flight
    assert segments.summary() == {"written": 2, "failed": 0, "lost_frames": 0, "last": str(done[-1])}
    for f in frames[110:]:
        segments.write(f)
    segments.close()
    done = sorted(tmp_path.glob("rec-*.avi"))
    assert [len(read_all(p)) for p in done] == [50, 50, 30] and not list(tmp_path.glob(".*"))
    assert all(re.fullmatch(r"rec-\d{8}-\d{6}Z(_\d{3})?\.avi", p.name) for p in done)
    assert segments.summary()["written"] == 3 and segments.summary()["last"] == str(max(done, key=os.path.getmtime))
    first = read_all(done[0])
    assert abs(int(first[49].mean()) - int(frames[49].mean())) < 8  # frames in order, none lost
    # From a camera, by its clock: one that reports 25 fps and delivers 10 still cuts every 2 s
    ticks = iter(np.arange(0, 100, 0.1))
    segments = VideoSegments(tmp_path / "cam" / "c.avi", fps=25.0, seconds=2, clock=lambda: next(ticks))
    for f in frames[:50]:
        segments.write(f)
    segments.close()
    assert [len(read_all(p)) for p in sorted((tmp_path / "cam").glob("c-*.avi"))] == [20, 20, 10]


def test_an_encoder_failing_on_the_last_frames_is_warned_about_and_the_video_kept(tmp_path, monkeypatch, caplog):
    """The writer thread's error used to surface only at the next frame's write: on the
    last frames there was none, and the failure went unsaid."""
    from pipeline.runtime import sinks

    opened = cv2.VideoWriter

    class GivesUp:  # a real writer whose encoder fails from its sixth frame on
        def __init__(self, *args) -> None:
            self.writer, self.n = opened(*args), 0

        def isOpened(self) -> bool:
            return self.writer.isOpened()

        def write(self, frame) -> None:
            self.n += 1
            if self.n > 5:
                raise RuntimeError("encoder gave up")  # not only OpenCV's own errors
            self.writer.write(frame)

        def release(self) -> None:
            self.writer.release()

    from pipeline.core.rundir import atomic_path

    monkeypatch.setattr(sinks.cv2, "VideoWriter", GivesUp)
    path, frame = tmp_path / "o.avi", np.full((48, 64, 3), 90, np.uint8)
    with atomic_path(path) as tmp:  # as the runner writes --output: the warning names the user's file
        sink = sinks.VideoSink(tmp, fps=10.0, shown=path)
        for _ in range(6):
            sink.write(frame)
        with caplog.at_level(logging.WARNING):
            sink.close()
    said = f"--output {path}: writing failed (encoder gave up); the video is kept as far as it was written"
    assert said in caplog.text
    # Failing mid-run instead, the next write says so, and close() does not say it again
    caplog.clear()
    sink = sinks.VideoSink(tmp_path / "p.avi", fps=10.0)
    for _ in range(6):
        sink.write(frame)
    with pytest.raises(OSError, match="p.avi: writing failed: encoder gave up"):
        for _ in range(1000):  # the writer thread gets to the sixth frame meanwhile
            sink.write(frame)
            time.sleep(0.01)
    with caplog.at_level(logging.WARNING):
        sink.close()
    assert "writing failed" not in caplog.text
    monkeypatch.undo()
    assert len(read_all(path)) == 5


def test_output_segments_outlive_a_slow_disk_and_a_folder_gone_missing(tmp_path, monkeypatch):
    """Many segments in one second while the disk is slow to finish them: each keeps its
    own name (none overwritten). A segment that cannot be opened (its folder replaced by
    a file) is a warning and lost frames, and the next one is written again."""
    from pipeline.core import rundir
    from pipeline.runtime.sinks import VideoSegments

    fsync = rundir.os.fsync

    def slow_fsync(fd):
        time.sleep(0.2)
        fsync(fd)

    monkeypatch.setattr(rundir.os, "fsync", slow_fsync)
    frame = np.full((48, 64, 3), 128, np.uint8)
    segments = VideoSegments(tmp_path / "fast" / "r.avi", fps=5.0, seconds=1)
    for _ in range(40):  # 8 segments of 5 frames, far quicker than a second
        segments.write(frame)
    segments.close()
    names = sorted(p.name for p in (tmp_path / "fast").iterdir())
    assert len(names) == 8 and segments.summary()["written"] == 8 and segments.summary()["last"].endswith(names[-1])
    assert all(len(read_all(tmp_path / "fast" / n)) == 5 for n in names)
    monkeypatch.setattr(rundir.os, "fsync", fsync)

    folder = tmp_path / "gone"
    segments = VideoSegments(folder / "r.avi", fps=5.0, seconds=1)
    for _ in range(5):
        segments.write(frame)
    shutil.rmtree(folder)
    folder.write_text("not a folder")  # the next segment cannot be opened
    for _ in range(5):
        segments.write(frame)
    folder.unlink()
    for _ in range(5):
        segments.write(frame)
    segments.close()
    s = segments.summary()
    # the first segment went with its folder (it cannot be finished), the second could not be opened
    assert (s["written"], s["failed"], s["lost_frames"]) == (1, 2, 5)
    assert [len(read_all(p)) for p in folder.iterdir()] == [5]


def test_a_new_segment_never_takes_the_name_of_one_moved_into_place_meanwhile(tmp_path, monkeypatch):
    """The race CI once lost: a new segment is named in the same second as one still
    being finished on its thread, and that thread moves its file into place and lets go
    of the name between the new segment's two checks (on disk, being finished). Were the
    name given out again, the new segment would later be moved over the finished one
    and a recording lost. Here the thread's move is made to land at the worst moment."""
    from pipeline.runtime import sinks

    monkeypatch.setattr(sinks.time, "gmtime", lambda *a: time.struct_time((2026, 12, 6, 9, 30, 0, 6, 340, 0)))
    segments = sinks.VideoSegments(tmp_path / "rec.avi", fps=25.0, seconds=1)
    finishing = tmp_path / "rec-20261206-093000Z.avi"
    segments._unfinished.add(finishing)  # the first segment, being finished on its thread
    exists = Path.exists

    def moved_just_after_asking(self, *a, **k):
        there = exists(self, *a, **k)
        if self == finishing and not there:  # the finishing thread runs now: move, then let go
            finishing.write_bytes(b"a finished segment")
            with segments._idle:
                segments._unfinished.discard(finishing)
        return there

    monkeypatch.setattr(Path, "exists", moved_just_after_asking)
    assert segments._name() == tmp_path / "rec-20261206-093000Z_002.avi"


def test_jsonl_to_standard_output_streams_and_outlives_its_reader(model, tmp_path, capsys, caplog):
    """--jsonl -: the lines on standard output as they come (a pipe into jq or an MQTT
    bridge); a reader that stalls or goes away costs lines, never the run."""
    import os

    from pipeline.runtime.sinks import StdoutLines

    s = _run(model, str(write_video(tmp_path / "v.avi", 6)), jsonl="-")
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["frame"] for x in lines] == list(range(6)) and s["jsonl"] == "-" and s["jsonl_lost"] == 0

    r, w = os.pipe()
    out = os.fdopen(w, "w")
    lines = StdoutLines(out)
    lines.write('{"a": 1}\n')
    deadline = time.monotonic() + 5
    got = b""
    while not got.endswith(b"\n") and time.monotonic() < deadline:
        got += os.read(r, 100)
    assert got == b'{"a": 1}\n'  # there at once, not when a buffer fills
    os.close(r)  # the reader goes
    lines.write('{"b": 2}\n')
    lines.write('{"c": 3}\n')
    lines.close()
    assert lines.lost == 2 and "--jsonl -: Broken pipe; the lines from here on are lost" in caplog.text
    out.close()

    r, w = os.pipe()  # a reader that never reads: the pipe fills, and the run must not wait for it
    out = os.fdopen(w, "w")
    lines = StdoutLines(out, queue_size=8, close_wait_s=0.2)
    t0 = time.monotonic()
    for k in range(200):
        lines.write(json.dumps({"k": k, "pad": "x" * 1000}) + "\n")
    lines.close()
    assert time.monotonic() - t0 < 2 and 0 < lines.lost < 200
    assert "the reader does not keep up" in caplog.text
    os.set_blocking(r, False)
    data = b""
    while True:
        try:
            chunk = os.read(r, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    ks = [json.loads(x)["k"] for x in data[: data.rfind(b"\n") + 1].splitlines()]
    # those that went out: whole lines, each once, in order; a slow writer thread on a
    # loaded machine may see the queue full (a line dropped) before the pipe fills
    assert ks and ks == sorted(set(ks)) and len(ks) + lines.lost <= 200
    os.close(r)

    # A pipe already full: close gives up on the lines still waiting, and those never go
    # out when the reader wakes: each line is sent or counted lost, never both.
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"#\n" * 2048)  # PIPE_BUF bytes: written whole or not at all
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    out = os.fdopen(w, "w")
    lines = StdoutLines(out, queue_size=64, close_wait_s=0.2)
    for k in range(20):
        lines.write(json.dumps({"k": k}) + "\n")
    lines.close()
    assert lines.lost > 0
    os.set_blocking(r, False)
    data, deadline, settled = b"", time.monotonic() + 30, None

    def sent():
        return [json.loads(x)["k"] for x in data.splitlines() if x != b"#"]

    # Until every line is sent or lost (the writer thread may wake late on a loaded
    # machine), then a while longer: a line sent after that would be one counted twice.
    while time.monotonic() < (settled or deadline):
        try:
            data += os.read(r, 1 << 16)
        except BlockingIOError:
            time.sleep(0.01)
        if settled is None and len(sent()) + lines.lost >= 20:
            settled = time.monotonic() + 0.3
    assert sent() == sorted(set(sent())) and len(sent()) + lines.lost == 20
    os.close(r)


def test_live_lines_survive_log_rotation_either_way(tmp_path):
    """logrotate's ``copytruncate`` empties the file under the run: the next lines go to
    its start, with no hole of zero bytes before them; its default renames the file
    away: the next lines go to a new file at the path. The offset and the fingerprint a
    summary records follow the file written to, pending lines included."""
    import os

    from pipeline.runtime.sinks import LiveLines, ends_as

    path, rotated = tmp_path / "t.jsonl", tmp_path / "t.jsonl.1"

    def summary_fits(lines) -> bool:
        with open(path, "rb") as f:
            return lines.position == path.stat().st_size and ends_as(f, lines.position, lines.tail_crc32)

    with LiveLines(path, every_s=0.0) as lines:
        lines.write('{"a": 1}\n')
        lines.write('{"a": 2}\n')
        assert summary_fits(lines)
        offset, crc = lines.position, lines.tail_crc32
        os.truncate(path, 0)  # copytruncate, after copying
        lines.write('{"b": 1, "longer": "than the lines before"}\n')
        assert path.read_bytes() == b'{"b": 1, "longer": "than the lines before"}\n' and summary_fits(lines)
        with open(path, "rb") as f:  # the file grew past the old offset: its bytes there are others
            assert path.stat().st_size > offset and not ends_as(f, offset, crc)
        os.rename(path, rotated)  # logrotate's default: rename, then a new file appears on the next write
        lines.write('{"c": 1}\n')
        assert path.read_text() == '{"c": 1}\n' and summary_fits(lines) and lines.reopened == 1
        lines.every_s, lines._due = 3600.0, float("inf")  # lines wait for their second
        lines.write('{"d": 1}\n')
        offset, crc = lines.position, lines.tail_crc32  # a summary taken with a line waiting
    assert summary_fits(lines) and (offset, crc) == (lines.position, lines.tail_crc32)
    assert rotated.read_text() == '{"b": 1, "longer": "than the lines before"}\n'
    assert path.read_text() == '{"c": 1}\n{"d": 1}\n'


def test_resume_counts_replays_only_the_jsonl_the_summary_was_taken_with(tmp_path):
    """The events after the summary's offset are counted again only where the file still
    ends there as the summary's fingerprint says: a JSONL rotated and grown past the
    offset since holds other lines, which would count crossings twice or never."""
    from pipeline.runtime.runner import _replay_jsonl
    from pipeline.runtime.sinks import tail_crc32
    from pipeline.runtime.tracking import Tracking, TrackOptions

    before = '{"frame": 0, "predictions": [{"track_id": 1}], "events": []}\n'
    after = (
        '{"frame": 1, "predictions": [{"track_id": 2}], '
        '"events": [{"type": "line", "line": 0, "track_id": 2, "label": "p", "direction": "in"}]}\n'
    )
    jsonl = tmp_path / "t.jsonl"

    def replayed(content: str, crc) -> dict:
        jsonl.write_text(content)
        tracking = Tracking(TrackOptions(lines=("10,0,10,100",)), ["p"])
        _replay_jsonl(tracking, jsonl, len(before), crc)
        return tracking.summary()

    crc = tail_crc32(before.encode())
    t = replayed(before + after, crc)
    assert t["lines"][0]["in"] == {"p": 1} and t["tracks"] == 1 and t["next_track_id"] == 3
    t = replayed(after + before, crc)  # rotated: the same length at least, other bytes before the offset
    assert t["lines"][0]["in"] == {} and t["tracks"] == 0 and t["next_track_id"] == 3  # ids still kept clear
    assert replayed(before + after, None)["lines"][0]["in"] == {"p": 1}  # an older summary: no fingerprint
    assert replayed(before + after, "1234")["lines"][0]["in"] == {}  # a fingerprint edited by hand vouches for nothing
    # ids the crashed run gave before a rotation are in the rotated copy: kept clear of too
    (tmp_path / "t.jsonl.1").write_text('{"frame": 5, "predictions": [{"track_id": 9}], "events": []}\n')
    (tmp_path / "t.jsonl.2.gz").write_bytes(b"\x1f\x8b not read")
    assert replayed(after + before, crc)["next_track_id"] == 10


@pytest.mark.slow
def test_a_file_source_that_fails_mid_stream_is_reopened_and_resumes(model, tmp_path):
    video = write_video(tmp_path / "v.avi", 20)
    src = FailingVideo(video, fail_after=8)
    s = _run(model, src, jsonl=tmp_path / "p.jsonl", reconnect_backoff_s=0.05)
    assert s["frames"] == 20 and s["read_failures"] == 1 and s["reconnects"] == 1 and s["gap_s"] >= 0.05
    idx = [json.loads(x)["source_frame"] for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert idx == list(range(20))  # resumed where it failed: nothing lost, nothing twice


@pytest.mark.slow
def test_a_stalled_live_stream_is_reopened_with_backoff_and_the_gap_counted(model, tmp_path, monkeypatch, capsys):
    src = StallingStream(write_video(tmp_path / "v.avi", 20), stall_after=6, refusals=2)
    s = _run(model, src, max_frames=12, reconnect_backoff_s=0.05)
    # Backoff doubles: 0.05 + 0.1 refused, then 0.2 succeeds.
    # (Live: only the newest frame is kept, so the 20-frame file may end and be
    # reopened again before 12 frames are processed.)
    assert s["frames"] == 12 and s["reconnects"] >= 1 and s["read_failures"] >= 1
    assert s["gap_s"] >= 0.35
    src = StallingStream(write_video(tmp_path / "w.avi", 10), stall_after=4, refusals=99)
    s = _run(model, src, reconnect_attempts=2, reconnect_backoff_s=0.01)
    assert s["reconnects"] == 0 and s["stopped_by"] == "source lost" and 1 <= s["frames"] <= 4
    # A camera lost for good is a failure, not an end: a service manager restarts on the exit status.
    from pipeline import cli
    from pipeline.runtime import runner

    lost = StallingStream(write_video(tmp_path / "x.avi", 10), stall_after=4, refusals=99)
    monkeypatch.setattr(runner, "open_source", lambda spec, loop=False: lost)
    argv = ["run", "--model", str(model), "--source", "rtsp://cam/live", "--no-display", "--reconnect-attempts", "1"]
    assert cli.main(argv) == 1
    said = capsys.readouterr()
    assert "stopped by source lost" in said.out and f"error: {lost.name}: lost, and every reopen failed" in said.err


@pytest.mark.slow
def test_sigterm_mid_run_leaves_a_playable_video_and_flushed_jsonl(model, tmp_path):
    video = write_video(tmp_path / "v.avi", 30)
    out, preds, summary = tmp_path / "out.mp4", tmp_path / "p.jsonl", tmp_path / "s.json"
    args = ["run", "--model", str(model), "--source", str(video), "--loop", "--no-display"]
    args += ["--output", str(out), "--jsonl", str(preds), "--summary-json", str(summary), "--pace"]
    args += ["--summary-every", "0.2"]  # rewrites going on when the signal comes: the final one still wins
    proc = subprocess.Popen(edgepipe_cmd(*args), stderr=subprocess.PIPE, text=True, env=subprocess_env())
    silent = threading.Timer(120, proc.kill)  # a child that says nothing fails the test, never hangs it
    silent.start()
    try:
        for line in proc.stderr:  # wait until frames flow, then stop it mid-run
            if "running " in line:
                break
    finally:
        silent.cancel()
    time.sleep(1.5)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, rest[-2000:]
    s = json.loads(summary.read_text())
    assert s["stopped_by"] == "SIGTERM" and s["frames"] > 10
    assert len(read_all(out)) == s["frames"]
    assert len(preds.read_text().splitlines()) == s["frames"]


def test_run_is_a_subcommand_and_a_module():
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--help"], capture_output=True, text=True, env=subprocess_env()
    )
    assert r.returncode == 0 and "--source" in r.stdout and "--no-display" in r.stdout
    r = subprocess.run(
        edgepipe_cmd("run", "--model", "nope.tflite", "--source", "0"),
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert r.returncode == 2 and "nope.tflite: no such model file" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("dtype, scale, zp", [(np.uint8, 1 / 255, 0), (np.int8, 1 / 255, -128), (np.int8, 0.02, 5)])
@pytest.mark.parametrize("mean, std", [(0.0, 255.0), (127.5, 127.5)])
def test_quantize_table_gives_what_the_formula_gives(dtype, scale, zp, mean, std):
    """The runner's per-frame fast path (a 256-entry table) changes no input value."""
    from pipeline.core.images import normalize
    from pipeline.runtime.tflite_model import quantize_input

    spec = InputSpec(8, mean=mean, std=std)
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    info = np.iinfo(dtype)
    expected = np.clip(np.round(normalize(x, spec) / scale + zp), info.min, info.max).astype(dtype)
    got = quantize_input(x, {"dtype": dtype, "quantization": (scale, zp)}, spec)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_frame_parallel_results_come_in_order_and_an_interpreter_error_ends_the_run(model, tmp_path, monkeypatch):
    """Two single-thread interpreters work on successive frames; the main thread takes
    their results in frame order, and an error in either interpreter's ``invoke``
    reaches the caller after the frames before it (none after), with the summary
    naming it."""
    from pipeline.runtime.tflite_model import TFLiteModel

    video = str(write_video(tmp_path / "v.avi", 40))
    s = _run(model, video, threads=2, jsonl=tmp_path / "ok.jsonl")
    frames = [json.loads(x)["source_frame"] for x in (tmp_path / "ok.jsonl").read_text().splitlines()]
    assert s["frames"] == 40 and frames == list(range(40))

    # Frame 20 fails in whichever interpreter takes it: each worker thread remembers the
    # frame it took last (a count of invoke calls would not tell which frame failed).
    from pipeline.runtime.sources import Capture

    took, get, invoke = threading.local(), Capture.get, TFLiteModel.invoke

    def remembering_get(self, *a, **k):
        f = get(self, *a, **k)
        took.index = None if f is None else f.index
        return f

    def failing_invoke(self, *a, **k):
        if getattr(took, "index", None) == 20:
            raise RuntimeError("boom: the delegate failed")
        return invoke(self, *a, **k)

    monkeypatch.setattr(Capture, "get", remembering_get)
    monkeypatch.setattr(TFLiteModel, "invoke", failing_invoke)
    with pytest.raises(RuntimeError, match="boom"):
        _run(model, video, threads=2, summary_json=tmp_path / "s.json")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["stopped_by"].startswith("error: RuntimeError: boom") and summary["frames"] == 20
