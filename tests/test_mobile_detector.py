"""The detector's mobile form: the SSD post-processing op in the graph, its metadata, and
the clients that read it (our runner, LiteRT, MediaPipe's ObjectDetector)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import tiny_config
from test_metadata import _run_mediapipe

from pipeline.core.images import InputSpec, geometry, prepare

MIN_SCORE = 0.05  # a small detector trained for a minute: its scores are low
CONFIDENT = 0.2  # the detections compared with MediaPipe's (near MIN_SCORE, NMS order is luck)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small detector trained on the synthetic set, exported raw and mobile (float32, int8)."""
    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import run_stage

    base = tmp_path_factory.mktemp("mobile")
    cfg = tiny_config(
        "model.input_size=96",
        "model.width=0.5",
        "model.depth=1.0",
        "data.synthetic_samples=400",
        "train.epochs=16",
        "export.variants=float32,int8",
        "export.representative_samples=32",
        f"export.dir={base / 'exports'}",
        task="detection",
    )
    run = RunDir(base / "run")
    run_stage("train", run, cfg)
    return run, cfg, run_stage("export", run, cfg)


def _frames(cfg, n: int = 4) -> list[np.ndarray]:
    """Validation images as wide, non-square frames (RGB): each pixel doubled
    horizontally, so stretching a frame back to the input is exact for any bilinear
    resize (MediaPipe's and ours sample it differently by a fraction of a pixel, which a
    small model's scores notice)."""
    from pipeline.tasks import get_task

    task = get_task("detection")
    data = task.load_data(cfg)
    x, _ = next(task.eval_batches(data, cfg, cfg.input_spec(), n))
    return [np.repeat(img, 2, axis=1) for img in x]


def _ours(path, frame: np.ndarray, threshold: float = MIN_SCORE, in_frame: bool = True) -> dict:
    from pipeline.core.sidecar import read_sidecar
    from pipeline.runtime.tflite_model import TFLiteModel
    from pipeline.tasks import get_runtime
    from pipeline.tasks.detection.task import NMS_IOU

    side = read_sidecar(path)
    m = TFLiteModel(path, side.spec, threads=1)
    out = m(prepare(frame, side.spec)[None])
    names = list(side.class_names)
    return get_runtime("detection").postprocess(
        out,
        names,
        spec=side.spec,
        frame_shape=frame.shape[:2] if in_frame else None,  # else input pixels, where NMS ran
        score_threshold=threshold,
        iou_threshold=NMS_IOU,  # the op's: greedy NMS at another IoU keeps other boxes
    )


def _explained(raw: dict, mob: dict, match_iou: float) -> np.ndarray:
    """Per detection of ours: it is in the op's output (same class, IoU ≥ ``match_iou``),
    or the op suppressed it with a box that scores higher (the op's NMS is class-agnostic,
    ours per class). Boxes in input pixels: clipped to a
    letterboxed frame, two boxes that reach into the padding overlap less than the NMS
    saw (measured: 0.587 on the frame where the op suppressed at 0.6)."""
    from pipeline.tasks.detection import boxes as B
    from pipeline.tasks.detection.task import NMS_IOU

    overlap = B.box_iou(raw["boxes"], mob["boxes"])
    if not overlap.size:
        return np.zeros(raw["count"], bool)
    same = overlap * (raw["classes"][:, None] == mob["classes"][None])
    higher = mob["scores"][None] >= raw["scores"][:, None] - 1e-4
    return (same.max(1) >= match_iou) | ((overlap > NMS_IOU) & higher).any(1)


@pytest.mark.slow
def test_the_op_finds_the_same_on_one_thread_as_on_two(trained):
    """LiteRT's regular (per-class) NMS loses a whole class when the interpreter has more
    than one thread (tensorflow/tensorflow#56058); the mobile form's detections must not
    depend on the thread count, as phones run it on several."""
    from pipeline.core.sidecar import read_sidecar
    from pipeline.runtime.tflite_model import TFLiteModel
    from pipeline.tasks.detection import boxes as B

    _, cfg, exports = trained
    frames = _frames(cfg, 8)
    for variant in ("float32_mobile", "int8_mobile"):
        spec = read_sidecar(exports[variant]).spec
        one, two = (TFLiteModel(exports[variant], spec, threads=t) for t in (1, 2))
        classes = set()
        for frame in frames:
            x = prepare(frame, spec)[None]
            a, b = (B.ssd_detections(m(x), 0, spec.size) for m in (one, two))
            assert a["count"] == b["count"] and np.array_equal(a["classes"], b["classes"]), variant
            np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)
            np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
            classes |= set(a["classes"].tolist())
        # Regular NMS on 2 threads loses class 2 (the one whose index is the thread count).
        assert classes == set(range(len(read_sidecar(exports[variant]).class_names))), classes


def _with_regular_nms(model: bytes) -> bytes:
    """The model file with its SSD op switched to regular (per-class) NMS."""
    import flatbuffers
    from flatbuffers import flexbuffers

    from pipeline.core.tflite import SSD_OP, TFLITE_ID, schema

    m = schema().ModelT.InitFromPackedBuf(bytearray(model), 0)
    for g in m.subgraphs:
        for op in g.operators:
            if bytes(m.operatorCodes[op.opcodeIndex].customCode or b"") == SSD_OP:
                opts = {**flexbuffers.Loads(bytes(op.customOptions)), "use_regular_nms": True}
                op.customOptions = np.frombuffer(flexbuffers.Dumps(opts), np.uint8)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), TFLITE_ID)
    return bytes(b.Output())


@pytest.mark.slow
def test_a_regular_nms_file_on_two_threads_is_warned_about(trained, tmp_path, caplog):
    """Files exported before fast NMS (or other SSD models) still lose a class on several
    threads: opening one so is a warning naming the file, the class and the way out."""
    from pipeline.core.sidecar import read_sidecar
    from pipeline.core.tflite import ssd_op_options
    from pipeline.runtime.tflite_model import TFLiteModel

    _, _, exports = trained
    ours = Path(exports["int8_mobile"]).read_bytes()
    assert ssd_op_options(ours)["use_regular_nms"] in (0, False)  # our exports: fast NMS
    old = tmp_path / "old_mobile.tflite"
    old.write_bytes(_with_regular_nms(ours))
    spec = read_sidecar(exports["int8_mobile"]).spec
    with caplog.at_level("WARNING"):
        TFLiteModel(old, spec, threads=1)
        TFLiteModel(exports["int8_mobile"], spec, threads=2)
    assert "regular" not in caplog.text
    with caplog.at_level("WARNING"):
        TFLiteModel(old, spec, threads=2)
    assert str(old) in caplog.text and "class 2 is never detected" in caplog.text and "56058" in caplog.text


@pytest.mark.slow
def test_the_op_decodes_our_boxes_as_our_own_post_processing_does(trained):
    """float32: every box the op returns is one of our decoded boxes (within 0.1 px) with
    that class's score; our post-processing's detections are among the op's, or the op's
    class-agnostic NMS suppressed them with a higher box. int8: the same detections in
    the main."""
    from pipeline.core.sidecar import read_sidecar
    from pipeline.runtime.tflite_model import TFLiteModel
    from pipeline.tasks.detection import boxes as B

    _, cfg, exports = trained
    assert {"float32_mobile", "int8_mobile"} <= set(exports)
    spec = read_sidecar(exports["float32"]).spec
    raw_model = TFLiteModel(exports["float32"], spec, threads=1)
    checked = 0
    for frame in _frames(cfg):
        x = prepare(frame, spec)[None]
        decoded, scores = (o[0] for o in raw_model(x))
        decoded = np.clip(decoded, 0, spec.size)  # the mobile form clips boxes to the input
        op = B.ssd_detections(TFLiteModel(exports["float32_mobile"], spec, threads=1)(x), 0, spec.size, MIN_SCORE)
        for box, cls, score in zip(op["boxes"], op["classes"], op["scores"]):
            d = np.abs(decoded - box).max(1)
            k = int(d.argmin())
            assert d[k] < 0.1 and abs(scores[k, cls] - score) < 1e-4, (box, decoded[k], scores[k, cls], score)
            checked += 1
        # Near MIN_SCORE the two NMS orders differ by luck; the confident detections agree.
        raw, mob = (
            _ours(exports[k], frame, t, in_frame=False)
            for k, t in (("float32", CONFIDENT), ("float32_mobile", MIN_SCORE))
        )
        if raw["count"]:
            assert _explained(raw, mob, 0.9).all()
        a, b = (
            _ours(exports[k], frame, t, in_frame=False) for k, t in (("int8", CONFIDENT), ("int8_mobile", MIN_SCORE))
        )
        if a["count"]:  # int8 rounds the two forms' scores apart: NMS order can flip
            assert _explained(a, b, 0.8).mean() >= 0.75
    assert checked, "the trained detector found nothing to compare"


@pytest.mark.slow
def test_mobile_exports_carry_the_ssd_metadata_and_the_runner_needs_no_sidecar(trained, tmp_path):
    from pipeline.core.metadata import read_metadata
    from pipeline.runtime.runner import RunOptions, run

    _, cfg, exports = trained
    md = read_metadata(open(exports["int8_mobile"], "rb").read())
    by_name = {o["name"]: o for o in md["outputs"]}
    assert set(by_name) == {"location", "category", "score", "number of detections"}
    assert by_name["location"]["box"] == {"index": [1, 0, 3, 2], "type": "BOUNDARIES", "coordinates": "RATIO"}
    assert (
        by_name["category"]["labels"]
        == json.loads(open(exports["int8"].replace(".tflite", ".json")).read())["class_names"]
    )
    side = json.loads(open(exports["int8_mobile"].replace(".tflite", ".json")).read())
    assert side["input"]["dtype"] == "uint8" and side["form"] == "mobile"  # MediaPipe takes no int8 input
    # Copied without its sidecar, as an app developer's third-party SSD model would come:
    bare = tmp_path / "ssd" / "detect.tflite"
    bare.parent.mkdir()
    shutil.copy(exports["int8_mobile"], bare)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(_frames(cfg)):
        cv2.imwrite(str(frames / f"{i}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    jsonl = tmp_path / "p.jsonl"
    # Any box the op keeps (its floor is 0.05): the detector trained above varies from run
    # to run (detection reads its training files in parallel, out of order), and this test
    # is about reading the model without a sidecar, not about how confident it is.
    s = run(
        RunOptions(model=bare, source=str(frames), display=False, jsonl=jsonl, task_options={"score_threshold": 0.05})
    )
    assert s["task"] == "detection" and s["frames"] == 4
    preds = [p for line in jsonl.read_text().splitlines() for p in json.loads(line)["predictions"]]
    assert preds and {p["label"] for p in preds} <= set(side["class_names"])


def _whole_pixels(boxes: np.ndarray) -> np.ndarray:
    """Boxes as MediaPipe reports them: origin and size truncated to whole pixels."""
    o, size = np.trunc(boxes[:, :2]), np.trunc(boxes[:, 2:] - boxes[:, :2])
    return np.concatenate([o, o + size], 1)


def _mp_boxes(res: dict, min_score: float) -> tuple[np.ndarray, list[str], np.ndarray]:
    dets = [d for d in res["detections"] if d["score"] >= min_score]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["box"] for d in dets)], np.float32).reshape(-1, 4)
    return boxes, [d["label"] for d in dets], np.array([d["score"] for d in dets], np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_mediapipe_object_detector_finds_what_we_find(trained, tmp_path, resize):
    """MediaPipe stretches the frame to the model's input; a letterbox model gets the frame
    letterboxed by the app first. Either way each detection MediaPipe reports is one of
    ours (box, label, score), and each confident box of ours is one MediaPipe reports
    (MediaPipe and the op give a box once, with its best class)."""
    from pipeline.core.sidecar import read_sidecar
    from pipeline.tasks.detection import boxes as B

    _, cfg, exports = trained
    jobs, frames, feeds = [], _frames(cfg), []
    spec = InputSpec(96, resize=resize)
    for variant in ("float32_mobile", "int8_mobile"):
        for k, frame in enumerate(frames):
            feed = frame if resize == "stretch" else prepare(frame, spec)  # the app letterboxes (pad 114)
            np.save(tmp_path / f"{variant}_{k}.npy", np.ascontiguousarray(feed))
            jobs.append({"model": exports[variant], "kind": "detector", "image": str(tmp_path / f"{variant}_{k}.npy")})
            feeds.append((variant, frame))
    results = _run_mediapipe(jobs, tmp_path)
    found = reported = confident = seen = 0
    for (variant, frame), res in zip(feeds, results):
        side = read_sidecar(exports[variant])
        path = tmp_path / f"{variant}_{resize}.tflite"
        shutil.copy(exports[variant], path)
        (tmp_path / f"{variant}_{resize}.json").write_text(
            json.dumps({**side.to_dict(), "input": {**side.input, "resize": resize}})
        )
        ours = _ours(path, frame, MIN_SCORE)
        boxes, labels, scores = _mp_boxes(res, CONFIDENT)
        # Compare where MediaPipe measured, in whole pixels: the frame, or the app's square.
        if resize == "stretch":
            mine = _whole_pixels(ours["boxes"])
        else:  # MediaPipe clipped to the square, we to the frame: clip its boxes to the frame's part
            g = geometry(frame.shape[:2], spec)
            mine = _whole_pixels(g.to_input(ours["boxes"]))
            inside = g.to_input(np.array([[0, 0, frame.shape[1], frame.shape[0]]], np.float32))[0]
            boxes = np.clip(boxes, inside[[0, 1, 0, 1]], inside[[2, 3, 2, 3]])
        iou = B.box_iou(boxes, mine) if len(boxes) and ours["count"] else np.zeros((len(boxes), ours["count"]))
        same = np.array(labels)[:, None] == np.array(ours["labels"])[None]
        for j in range(len(boxes)):  # MediaPipe's → ours
            reported += 1
            k = np.flatnonzero((iou[j] >= 0.9) & same[j])
            found += bool(k.size) and bool(np.abs(ours["scores"][k] - scores[j]).min() <= 0.02)
        for i in np.flatnonzero(ours["scores"] >= CONFIDENT + 0.05):  # ours → MediaPipe's, off the cut
            confident += 1
            seen += bool(iou.shape[0]) and bool(iou[:, i].max() >= 0.9)
    assert reported and found >= 0.9 * reported, (found, reported, resize)
    assert confident and seen >= 0.9 * confident, (seen, confident)


def test_without_metadata_the_ops_own_ports_order_the_outputs(trained, monkeypatch):
    """A mobile model whose metadata does not name its outputs (stripped, or a
    third-party file) is read in the op's port order: the same outputs as with names."""
    import pipeline.runtime.tflite_model as tm

    _, cfg, exports = trained
    spec = cfg.input_spec()
    x = np.stack([prepare(f, spec) for f in _frames(cfg)])
    named = tm.TFLiteModel(exports["int8_mobile"], spec, threads=1)
    monkeypatch.setattr(tm, "ssd_output_order", lambda model: None)
    ported = tm.TFLiteModel(exports["int8_mobile"], spec, threads=1)
    assert [d["index"] for d in named.outputs] == [d["index"] for d in ported.outputs]
    for a, b in zip(named(x), ported(x)):
        np.testing.assert_array_equal(a, b)
    assert ported(x)[0].shape[-1] == 4 and ported(x)[3].size == len(x)
