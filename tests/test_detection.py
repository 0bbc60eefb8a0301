"""Detection: readers and their bad-input errors, target assignment and decoding,
NMS, the Keras → LiteRT round trip and a short chain that learns."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_chain

from pipeline.core.errors import DataError
from pipeline.tasks.detection import boxes as B
from pipeline.tasks.detection import metrics as M
from pipeline.tasks.detection import readers as D
from pipeline.tasks.detection import targets as T

# === Readers ===


def _image(path, h=60, w=80):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 127, np.uint8))


def _coco(tmp_path, annotations=None, images=None, categories=None):
    _image(tmp_path / "img" / "a.jpg")
    _image(tmp_path / "img" / "b.jpg")
    doc = {
        "images": images
        if images is not None
        else [{"id": 1, "file_name": "a.jpg", "height": 60, "width": 80}, {"id": 2, "file_name": "b.jpg"}],
        "categories": categories or [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": annotations
        if annotations is not None
        else [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 20, 30, 15]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [70, 50, 30, 30]},  # partly outside: clipped
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10]},  # zero area: dropped
        ],
    }
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(doc))
    return p


def config_with(*settings):
    from conftest import tiny_config

    return tiny_config(*settings, task="detection").data


def test_coco_images_beside_the_annotation_file_need_no_folder_setting(tmp_path, monkeypatch):
    """Exporters (Roboflow, CVAT) put the JSON beside the images: with neither
    data.train_images nor data.path, the file_names are read from the JSON's folder."""
    from conftest import tiny_config

    ann = _coco(tmp_path)
    ann = ann.rename(tmp_path / "img" / "_annotations.coco.json")
    data = D.load(tiny_config("data.format=coco", f"data.train_annotations={ann}", task="detection"))
    assert len(data.train) + len(data.val) == 2
    # the order both tasks read them in: data.{train,val}_images, data.path, the JSON's folder
    roots = D.coco_image_roots(
        config_with("data.format=coco", f"data.train_annotations={ann}", "data.val_annotations=v.json")
    )
    assert roots == [(ann, tmp_path / "img", False), (Path("v.json"), Path("."), False)]
    d = config_with("data.format=coco", f"data.train_annotations={ann}", "data.val_annotations=v.json",
                    "data.train_images=photos", "data.path=root")  # fmt: skip
    assert [r[1:] for r in D.coco_image_roots(d)] == [(Path("photos"), True), (Path("photos"), True)]
    # names relative to the working folder (detection's default before): the error says so
    (tmp_path / "img" / "a.jpg").rename(tmp_path / "a.jpg")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        DataError, match="a.jpg.*not found under .*img; it is in the working folder: set data.train_images=."
    ):
        D.read_coco(ann, tmp_path / "img")


def test_coco_reader_maps_categories_clips_drops_and_keeps_negatives(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        split, names = D.read_coco(_coco(tmp_path), tmp_path / "img")
    assert names == ("cat", "dog")
    assert len(split) == 2  # b.jpg has no objects: kept as a negative
    np.testing.assert_allclose(split.boxes[0], [[10, 20, 40, 35], [70, 50, 80, 60]])
    assert split.classes[0].tolist() == [1, 0]
    assert len(split.classes[1]) == 0
    warnings = [r.getMessage() for r in caplog.records if "a.jpg" in r.getMessage()]
    assert len(warnings) == 1 and "1 box(es) clipped" in warnings[0] and "1 of zero" in warnings[0]
    # a box wholly outside the image (annotated on a larger original) is told apart
    boxes = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [100, 70, 30, 15]}]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        D.read_coco(_coco(tmp_path, annotations=boxes), tmp_path / "img")
    assert "dropped: 1 wholly outside it, 0 of zero or negative area" in caplog.text


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"annotations": [{"id": 9, "image_id": 1, "category_id": 5, "bbox": [0, 0, 5, 5]}]}, "unknown category_id 5"),
        ({"annotations": [{"id": 9, "image_id": 42, "category_id": 3, "bbox": [0, 0, 5, 5]}]}, "image_id 42"),
        ({"images": [{"id": 1, "file_name": "missing.jpg"}], "annotations": []}, "'missing.jpg' (id 1) not found"),
        ({"annotations": [{"id": 9, "image_id": 1, "category_id": 3}]}, "annotation #0 lacks"),
        ({"annotations": [{"id": 9, "image_id": 1, "category_id": 3, "bbox": "2222"}]}, "annotation #0 lacks"),
        ({"categories": [{"id": 3, "name": "cat"}, {"id": 3, "name": "dog"}]}, "categories[1] repeats id 3"),
        ({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}]}, "images[1] repeats id 1"),
        ({"categories": [{"id": 3}]}, "categories[0] has no 'name'"),
        ({"images": [{"file_name": "a.jpg"}]}, "images[0] has no 'id'"),
        ({"images": [{"id": 1, "file_name": "a.jpg", "height": "abc", "width": 80}]}, "non-numeric height"),
        ({"images": [{"id": 1, "file_name": None}], "annotations": []}, "images[0] has file_name None"),
        ({"images": [{"id": 1, "file_name": ["a.jpg"]}], "annotations": []}, "images[0] has file_name ['a.jpg']"),
        (
            {"annotations": [{"id": 9, "image_id": 1, "category_id": 3, "bbox": [1, 2, "nan", 4]}]},
            "annotation #0 lacks",
        ),
        (
            {"annotations": [{"id": 9, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "iscrowd": "no"}]},
            "annotation #0 (id 9) has iscrowd 'no', not 0 or 1",
        ),
    ],
)
def test_coco_reader_errors_name_the_file_and_entry(tmp_path, kw, message):
    path = _coco(tmp_path, **kw)
    with pytest.raises(DataError, match="ann.json") as e:
        D.read_coco(path, tmp_path / "img")
    assert message in str(e.value)


def test_boxes_follow_a_resized_copy_and_a_size_that_cannot_fit_skips_the_image(tmp_path):
    # Annotations made on 160x120 originals; the images on disk are 80x60 copies (the
    # same shape): the boxes are scaled to them. A file whose annotations say 10x10 (or a
    # portrait photo annotated as landscape) cannot be placed: a DataError naming the
    # file and both sizes, which training counts and skips.
    images = [
        {"id": 1, "file_name": "a.jpg", "height": 120, "width": 160},
        {"id": 2, "file_name": "b.jpg", "height": 10, "width": 10},
        {"id": 3, "file_name": "c.jpg", "height": 80, "width": 60},
    ]
    _image(tmp_path / "img" / "c.jpg")
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [40, 20, 60, 40]},
        {"id": 2, "image_id": 3, "category_id": 3, "bbox": [10, 10, 20, 20]},
    ]
    split, _ = D.read_coco(_coco(tmp_path, annotations=annotations, images=images), tmp_path / "img")
    np.testing.assert_allclose(split.placed(0, (60, 80)), [[20, 10, 50, 30]])
    np.testing.assert_allclose(split.placed(0, (120, 160)), [[40, 20, 100, 60]])  # the declared size itself
    with pytest.raises(
        DataError, match=r"b\.jpg: its annotations give the image as 10x10 .* but it is 80x60: its"
    ) as e:
        split.placed(1, (60, 80))
    assert "EXIF" not in str(e.value)  # a square declared size is no photo on its side
    # a small resized copy rounds by a pixel: 1000x333 at width 32 is 32x11, not refused
    odd = D.DetSplit()
    odd.add("o.jpg", [[100, 30, 200, 90]], [0], (333, 1000))
    np.testing.assert_allclose(odd.placed(0, (11, 32)), [[3.2, 30 * 11 / 333, 6.4, 90 * 11 / 333]], rtol=1e-5)
    with pytest.raises(DataError, match=r"c\.jpg: .* as 60x80 .* is 80x60 upright \(by its EXIF"):
        split.placed(2, (60, 80))
    # carried by take (the train/val split of one file), and not asked of measured images
    assert split.take([2, 0]).sizes == [(80, 60), (120, 160)]
    plain, _ = D.read_coco(_coco(tmp_path / "p"), tmp_path / "p" / "img")
    assert plain.sizes == [(60, 80), None]
    np.testing.assert_allclose(plain.placed(1, (33, 44)), plain.boxes[1])
    # in the input pipeline: a's boxes in input pixels, b counted and skipped
    from pipeline.core.images import InputSpec, SkipCounter
    from pipeline.tasks.detection.task import _sample_fn

    skipped = SkipCounter()
    load = _sample_fn(split, InputSpec(40), skipped)
    x, boxes, classes, ok = load(0)
    assert ok and classes[0] == 0 and classes[1] == -1
    np.testing.assert_allclose(boxes[0], [10, 20 / 3, 25, 20], rtol=1e-6)  # 80x60 stretched to 40x40
    assert not load(1)[3] and len(skipped) == 1


def test_coco_file_without_annotations_is_an_error_not_all_negatives(tmp_path):
    path = _coco(tmp_path)
    doc = json.loads(path.read_text())
    del doc["annotations"]  # an image_info_test file
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="ann.json: no 'annotations' list"):
        D.read_coco(path, tmp_path / "img")


def test_coco_reader_rejects_malformed_json(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"images": [')
    with pytest.raises(DataError, match="bad.json: malformed JSON"):
        D.read_coco(p, tmp_path)


def _voc(tmp_path, xml_body):
    root = tmp_path / "VOC"
    _image(root / "JPEGImages" / "0001.jpg")
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "0001.xml").write_text(xml_body)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("0001\n")
    return root


VOC_XML = """<annotation><filename>0001.jpg</filename><size><width>80</width><height>60</height></size>
<object><name>person</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object>
<object><name>car</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>
</annotation>"""


def test_voc_reader_reads_boxes_and_skips_difficult(tmp_path):
    split, names = D.read_voc(_voc(tmp_path, VOC_XML), "train")
    assert names == ("car", "person")
    np.testing.assert_allclose(split.boxes[0], [[5, 6, 50, 40]])
    assert split.classes[0].tolist() == [1]


def test_voc_class_names_fix_the_ids_and_reject_other_names(tmp_path):
    root = _voc(tmp_path, VOC_XML.replace("<difficult>1</difficult>", "<difficult>0</difficult>"))
    split, names = D.read_voc(root, "train", ("person", "car"))
    assert names == ("person", "car") and split.classes[0].tolist() == [0, 1]
    with pytest.raises(DataError, match="0001.xml: object #1 has class 'car', not among the classes"):
        D.read_voc(root, "train", ("person", "dog"))


def test_class_names_must_match_the_data_class_count(tmp_path):
    from pipeline.core import config

    path = _coco(tmp_path)
    sets = ["data.format=coco", f"data.train_annotations={path}", f"data.train_images={tmp_path / 'img'}"]
    cfg = config.load(None, [*sets, "data.class_names=[cat]"], task="detection")
    with pytest.raises(DataError, match=r"data.class_names has 1 names but the coco data defines 2"):
        D.load(cfg)
    cfg = config.load(None, [*sets, "data.class_names=[Cat, Dog]"], task="detection")
    assert D.load(cfg).class_names == ("Cat", "Dog")


def test_voc_reader_names_malformed_xml(tmp_path):
    with pytest.raises(DataError, match=r"0001.xml: malformed XML"):
        D.read_voc(_voc(tmp_path, "<annotation><object>"), "train")


def _yolo(tmp_path, label_text):
    root = tmp_path / "yolo"
    _image(root / "images" / "train" / "a.png")
    _image(root / "images" / "train" / "b.png")  # no label file: a negative
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(label_text)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [cat, dog]\n")
    return root / "data.yaml"


def test_yolo_reader_denormalizes_boxes(tmp_path):
    _, folders, names = D.read_yolo_yaml(_yolo(tmp_path, "1 0.5 0.5 0.25 0.5\n"))
    split = D.read_yolo(folders["train"], names)
    assert names == ("cat", "dog") and len(split) == 2
    np.testing.assert_allclose(split.boxes[0], [[30, 15, 50, 45]])
    assert split.classes[0].tolist() == [1] and len(split.classes[1]) == 0


@pytest.mark.parametrize(
    "line, message",
    [
        ("1 0.5 0.5 0.25\n", "expected 5 fields"),
        ("2 0.5 0.5 0.2 0.2\n", "class 2 out of range"),
        ("0 16 16 8 8\n", "looks like pixels"),
    ],
)
def test_yolo_reader_errors_name_file_and_line(tmp_path, line, message):
    _, folders, names = D.read_yolo_yaml(_yolo(tmp_path, line))
    with pytest.raises(DataError, match=r"a.txt:1: ") as e:
        D.read_yolo(folders["train"], names)
    assert message in str(e.value)


def test_synthetic_set_is_deterministic_with_exact_boxes():
    a, names = D.synthetic_detection_set(12, 3, 96, seed=4)
    b, _ = D.synthetic_detection_set(12, 3, 96, seed=4)
    assert names == ("circle", "square", "triangle")
    np.testing.assert_array_equal(a.arrays, b.arrays)
    assert a.object_count() > 12
    for boxes in a.boxes:  # inside the image, positive area
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96).all() and (boxes[:, 2:] > boxes[:, :2]).all()


# === Targets, decoding, NMS ===


def test_assignment_then_decoding_returns_the_boxes():
    points = B.anchor_points(128)
    gt = np.array([[[10, 12, 40, 50], [60, 30, 126, 120], [0, 0, 0, 0]]], np.float32)
    cls = np.array([[0, 1, -1]], np.float32)
    box_t, cls_t = (t.numpy() for t in T.assign_targets(points, gt, cls, 2))
    pos = box_t[0, :, 4] > 0
    assert pos.sum() > 4
    assigned = box_t[0, pos, :4]
    assert {tuple(b) for b in assigned} == {tuple(gt[0, 0]), tuple(gt[0, 1])}
    # every positive point lies inside its box; the class target is one-hot × centre-ness
    c = points.centers[pos]
    assert ((c > assigned[:, :2]) & (c < assigned[:, 2:])).all()
    np.testing.assert_allclose(cls_t[0, pos].max(-1), box_t[0, pos, 4], rtol=1e-6)
    assert (cls_t[0, ~pos] == 0).all()
    # the exact distances decode back to the boxes
    raw = np.concatenate([c - assigned[:, :2], assigned[:, 2:] - c], 1) / points.units[pos, None]
    full = np.zeros((len(points), 4), np.float32)
    full[pos] = raw
    np.testing.assert_allclose(np.asarray(B.decode(full, points))[pos], assigned, atol=1e-4)


def test_positives_sit_near_the_box_centre_and_the_smaller_box_wins_overlaps():
    points = B.anchor_points(320)
    gt = np.array([[[20, 20, 300, 300], [152, 152, 200, 200]]], np.float32)
    box_t, _ = T.assign_targets(points, gt, np.array([[0, 1]], np.float32), 2)
    box_t = box_t.numpy()[0]
    pos = box_t[:, 4] > 0
    small = (box_t[pos, :4] == gt[0, 1]).all(1)
    assert small.any() and (~small).any()
    big_centre = np.abs(points.centers[pos][~small] - 160).max(1)
    assert big_centre.max() < B.CENTER_RADIUS * 8  # centre sampling
    # where both boxes qualify (inside the small one's centre region), the point regresses the smaller one
    inside_small = (np.abs(points.centers[pos] - 176) < B.CENTER_RADIUS * 8).all(1)
    assert small[inside_small].all()


def test_nms_keeps_one_box_per_object_and_class():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60], [2, 2, 4, 4]], np.float32)
    scores = np.array([[0.9, 0], [0.8, 0], [0, 0.7], [0.6, 0.1], [0.1, 0.05]], np.float32)
    out = B.nms(boxes, scores, score_threshold=0.2, iou_threshold=0.5)
    assert out["count"] == 3
    assert out["classes"].tolist() == [0, 1, 0]  # the overlapping class-1 box survives: NMS is per class
    np.testing.assert_allclose(out["scores"], [0.9, 0.7, 0.6])
    np.testing.assert_allclose(out["boxes"][0], [0, 0, 10, 10])
    assert B.nms(boxes, scores, score_threshold=0.95)["count"] == 0


def test_coco_map_is_one_for_perfect_detections_and_drops_for_shifted_boxes():
    truths = [{"boxes": np.array([[10, 10, 50, 50], [60, 60, 90, 100]], np.float32), "classes": np.array([0, 1])}]
    perfect = [{"boxes": truths[0]["boxes"], "scores": np.array([0.9, 0.8]), "classes": np.array([0, 1])}]
    assert M.coco_map(perfect, truths, ["a", "b"])["map50_95"] == pytest.approx(1.0)
    shifted = [{**perfect[0], "boxes": truths[0]["boxes"] + 6}]
    m = M.coco_map(shifted, truths, ["a", "b"])
    assert 0 < m["map50_95"] < 0.8 and m["map50"] == pytest.approx(1.0)


# === The chain on the synthetic set ===

DET_TINY = [
    "data.synthetic_samples=400",
    "data.synthetic_classes=2",
    "model.input_size=96",
    "model.width=0.25",
    "train.epochs=15",
    "train.batch_size=16",
    "train.learning_rate=0.006",
    "prune.epochs=1",
    "qat.epochs=1",
    "export.representative_samples=32",
    "qat.sources=[float]",
    "export.variants=float32,int8,pruned_int8,qat_int8",
    "evaluate.latency_runs=5",
    "evaluate.warmup_runs=1",
    "evaluate.latency_threads=[1]",
    "evaluate.threads=1",
]


@pytest.fixture(scope="session")
def det_chain(tmp_path_factory):
    run, cfg, _ = run_chain(tmp_path_factory, "det", "detection", DET_TINY)
    return run, cfg


@pytest.mark.slow
def test_short_chain_learns_and_reports_map(det_chain):
    run, _ = det_chain
    report = json.loads((run.path / "report.json").read_text())
    assert report["task"] == "detection" and report["metric"] == "map50_95"
    # Non-trivial for 15 short epochs at 96 px on a CPU: an untrained detector scores 0.000,
    # these runs 0.05–0.10 mAP@.5 (the benchmark measures the real figures).
    assert report["keras_float_details"]["map50"] > 0.02, report["keras_float_details"]
    raw = {"float32", "int8", "pruned_int8", "qat_int8"}  # and each in its mobile form (the SSD op)
    assert set(report["variants"]) == raw | {f"{n}_mobile" for n in raw}
    for name, v in report["variants"].items():
        assert v["details"]["map50"] > 0.01, (name, v["details"])
        assert set(v["details"]["per_class_ap"]) == set(report["keras_float_details"]["per_class_ap"])
    assert report["variants"]["pruned_int8"]["sparsity"] > 0.3
    assert (run.path / "pr_curves.png").is_file()
    assert (run.path / "samples.png").is_file() and cv2.imread(str(run.path / "samples.png")) is not None


@pytest.mark.slow
def test_litert_detections_match_keras(det_chain):
    """Float32 LiteRT boxes match Keras boxes (same class, IoU ≥ 0.9); int8 ones at IoU ≥ 0.5."""
    from pipeline.core.images import normalize
    from pipeline.core.sidecar import read_sidecar
    from pipeline.runtime.tflite_model import TFLiteModel
    from pipeline.stages.evaluate import served_outputs
    from pipeline.stages.weights import rebuild
    from pipeline.tasks import get_task

    run, cfg = det_chain
    task = get_task("detection")
    data = task.load_data(cfg)
    spec = cfg.input_spec()
    x, _ = next(task.eval_batches(data, cfg, spec, 16))
    keras_out = served_outputs(rebuild(cfg, len(data.class_names), run.weights("float")), task, cfg)(normalize(x, spec))
    exports = json.loads((run.path / "exports.json").read_text())["variants"]
    sidecar = read_sidecar(exports["int8"])
    assert [o["name"] for o in sidecar["outputs"]] == ["boxes", "scores"]
    assert sidecar["input"]["dtype"] == "int8" and sidecar["outputs"][1]["dtype"] == "int8"
    assert sidecar["postprocess"]["result"]["count"] == "K"
    for name, min_iou, min_matched in (("float32", 0.9, 0.99), ("int8", 0.5, 0.8)):
        lite = TFLiteModel(exports[name], spec, threads=1)(x)
        matched = total = 0
        for k in range(len(x)):
            a = task.runtime.postprocess([o[k : k + 1] for o in keras_out], data.class_names)
            b = task.runtime.postprocess([o[k : k + 1] for o in lite], data.class_names)
            total += a["count"]
            if a["count"] and b["count"]:
                iou = B.box_iou(a["boxes"], b["boxes"]) * (a["classes"][:, None] == b["classes"][None])
                matched += int((iou.max(1) >= min_iou).sum())
        assert total > 0
        assert matched / total >= min_matched, (name, matched, total)


@pytest.mark.slow
def test_postprocess_maps_boxes_back_to_the_frame(det_chain):
    from pipeline.core.images import geometry
    from pipeline.tasks import get_runtime

    _, cfg = det_chain
    spec = cfg.input_spec()
    assert spec.resize == "letterbox"
    task = get_runtime("detection")
    boxes = np.zeros((1, 4, 4), np.float32)
    boxes[0, 0] = [10, 30, 50, 60]  # input pixels
    scores = np.zeros((1, 4, 2), np.float32)
    scores[0, 0, 1] = 0.9
    out = task.postprocess([boxes, scores], ["a", "b"], spec=spec, frame_shape=(480, 640))
    g = geometry((480, 640), spec)
    np.testing.assert_allclose(out["boxes"][0], g.to_frame(boxes[0, 0]), rtol=1e-5)
    assert out["labels"] == ["b"] and out["count"] == 1
    assert task.to_json(out)[0]["label"] == "b"


def test_boxes_in_the_letterbox_padding_are_dropped_not_returned_empty():
    from pipeline.core.images import InputSpec
    from pipeline.tasks import get_runtime

    spec = InputSpec(size=96, resize="letterbox")  # a 640×320 frame fills rows 24..72
    boxes = np.array([[[10, 2, 40, 20], [10, 30, 40, 60]]], np.float32)  # the first lies in the top padding
    scores = np.array([[[0.9], [0.8]]], np.float32)
    out = get_runtime("detection").postprocess([boxes, scores], ["a"], spec=spec, frame_shape=(320, 640))
    assert out["count"] == 1 and len(out["boxes"]) == 1 and out["scores"].tolist() == [pytest.approx(0.8)]
    assert (out["boxes"][:, 2:] > out["boxes"][:, :2]).all()


def test_yolo_layout_mistakes_are_clear_errors(tmp_path, caplog):
    data_yaml = _yolo(tmp_path, "1 0.5 0.5 0.25 0.5\n")
    _, folders, names = D.read_yolo_yaml(data_yaml.parent)  # the folder: its data.yaml is used
    with caplog.at_level(logging.WARNING):
        D.read_yolo(folders["train"], names)
    assert "1 of 2 images have no label file" in caplog.text
    (data_yaml.parent / "labels").rename(data_yaml.parent / "label")
    with pytest.raises(DataError, match="labels/train: YOLO label folder not found"):
        D.read_yolo(folders["train"], names)
    for names_yaml, message in (("dog", "non-empty list"), ("{0: dog, 5: cat}", "keys must be the class ids")):
        data_yaml.write_text(f"path: .\ntrain: images/train\nnames: {names_yaml}\n")
        with pytest.raises(DataError, match=message):
            D.read_yolo_yaml(data_yaml)
    for names_yaml in ("{1: dog, 0: cat}", "{'1': dog, '0': cat}"):  # Ultralytics writes both
        data_yaml.write_text(f"path: .\ntrain: images/train\nnames: {names_yaml}\n")
        assert D.read_yolo_yaml(data_yaml)[2] == ("cat", "dog")


@pytest.mark.slow
def test_a_restarted_counter_carries_on_its_saved_counts(det_chain, tmp_path, monkeypatch):
    """``edgepipe run --track --resume-counts``: the totals in --summary-json go on, the
    track ids start above the earlier run's; a summary of other lines, or not a summary,
    is an error before any frame, and the file is left as it was."""
    from pipeline.core.errors import RunError
    from pipeline.runtime.runner import RunOptions, run
    from pipeline.runtime.tracking import TrackOptions

    run_dir, _ = det_chain
    model = json.loads((run_dir.path / "exports.json").read_text())["variants"]["int8"]
    video = tmp_path / "v.avi"
    out = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (96, 96))
    for i in range(12):
        f = np.full((96, 96, 3), 80, np.uint8)
        cv2.rectangle(f, (10 + 4 * i, 30), (40 + 4 * i, 60), (255, 255, 255), -1)
        out.write(f)
    out.release()
    summary = tmp_path / "counts.json"

    def go(lines=("48,0,48,96",), source=None, **kw) -> dict:
        track = TrackOptions(lines=lines, zones=("0,0,96,0,96,96",))
        source = source or str(video)
        return run(RunOptions(model=model, source=source, display=False, track=track, summary_json=summary, **kw))

    assert go(resume_counts=True)["frames"] == 12  # no file yet: counting from 0
    saved = json.loads(summary.read_text())
    saved["tracking"]["lines"][0]["in"]["earlier"] = 3  # as if the earlier run had counted 3 in
    saved["tracking"]["zones"][0]["entries"]["earlier"] = 5
    saved["tracking"]["next_track_id"] = 1000
    summary.write_text(json.dumps(saved))
    t = go(resume_counts=True)["tracking"]
    assert t["lines"][0]["in"]["earlier"] == 3 and t["zones"][0]["entries"]["earlier"] == 5
    assert t["next_track_id"] >= 1000 and t["tracks"] >= saved["tracking"]["tracks"]
    assert json.loads(summary.read_text())["tracking"] == t
    kept = summary.read_text()
    with pytest.raises(RunError, match=r"--resume-counts .*counts.json: its --count-line .* differ from this run's"):
        go(lines=("10,0,10,96",), resume_counts=True)
    assert summary.read_text() == kept
    assert "earlier" not in go()["tracking"]["lines"][0]["in"]  # without --resume-counts: from 0
    summary.write_text("{not json")
    with pytest.raises(RunError, match="counts.json: cannot read a summary from it"):
        go(resume_counts=True)
    with pytest.raises(RunError, match="--resume-counts carries on the counts in --summary-json: it needs --track"):
        run(RunOptions(model=model, source=str(video), display=False, resume_counts=True, summary_json=summary))

    # As a service on a camera: the JSONL goes on across restarts, the ids never repeat in it.
    from pipeline.runtime.sources import VideoSource
    from pipeline.tasks.detection.runtime import DetectionRuntime

    walk = iter(range(10**6))
    taken = threading.Event()  # the model has the last frame: the camera may give the next

    def one_walker(self, *args, **kwargs):  # the tiny detector's boxes: one object walking right, over the line
        taken.set()
        x = 5 + 6 * (next(walk) % 8)
        boxes = np.array([[x, 30, x + 30, 60]], np.float32)
        return {"boxes": boxes, "scores": np.array([0.9], np.float32), "classes": np.array([0]), "count": 1}

    monkeypatch.setattr(DetectionRuntime, "postprocess", one_walker)

    class Camera(VideoSource):
        """The video read as a camera (its JSONL goes out as it comes), a frame once the
        model has taken the last: never faster than the model, however loaded the
        machine (a frame every 50 ms once lost one to a stall). A camera's frames that the
        model cannot keep up with are dropped, and a drop would move the tracks by its
        gap while the stand-in detections move one step a frame."""

        def __init__(self) -> None:
            super().__init__(str(video))
            self.live = True

        def read(self):
            if self.position:  # the first at once; the next after the last was taken
                # Past the run's 8 frames nothing takes one, so a short wait there
                taken.wait(30 if self.position <= 8 else 1.0)
            taken.clear()
            return super().read()

    summary.unlink()
    jsonl = tmp_path / "tracks.jsonl"
    after = []  # the summary after each run
    for crashed in (False, False, True):
        if crashed:  # the second run died before its first rewrite: the first run's summary is all there is
            summary.write_text(after[0])
        assert go(source=Camera(), jsonl=jsonl, resume_counts=True, max_frames=8)["dropped"] == 0
        after.append(summary.read_text())
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in rows] == [*range(8)] * 3
    ids = [{p["track_id"] for r in rows[k : k + 8] for p in r["predictions"]} for k in (0, 8, 16)]
    assert all(ids) and not ids[0] & ids[1] and not (ids[0] | ids[1]) & ids[2]  # no id twice
    # and the counts the lost summary had are back, from the JSONL's events after the one kept
    events = [e for r in rows for e in r["events"] if e["type"] == "line"]
    line = json.loads(summary.read_text())["tracking"]["lines"][0]
    assert len(events) == 3 and sum(line["in"].values()) + sum(line["out"].values()) == 3


@pytest.mark.slow
def test_tracked_boxes_stay_in_the_frame_and_a_file_counted_on_keeps_the_jsonl(det_chain, tmp_path, monkeypatch):
    """The Kalman filter's box of an object leaving the frame reaches past its edge: it
    goes out clipped, as detections do. From a file, ``--resume-counts`` keeps the
    earlier runs' JSON lines (a day's videos counted one after the other); without it
    the file is replaced. Fewer labels than the detector scores is an error."""
    from pipeline.core.errors import RunError
    from pipeline.runtime.runner import RunOptions, run
    from pipeline.runtime.tracking import TrackOptions
    from pipeline.tasks.detection.runtime import DetectionRuntime

    run_dir, _ = det_chain
    model = json.loads((run_dir.path / "exports.json").read_text())["variants"]["int8"]
    video = tmp_path / "v.avi"
    out = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (96, 96))
    for _ in range(10):
        out.write(np.full((96, 96, 3), 80, np.uint8))
    out.release()
    walk = iter(range(10**6))

    def off_the_edge(self, *args, **kwargs):  # one object running out to the right, and one to the top
        k = next(walk) % 10
        boxes = np.array([[60 + 6 * k, 30, 90 + 6 * k, 60], [30, 20 - 5 * k, 60, 50 - 5 * k]], np.float32)
        return {"boxes": boxes, "scores": np.full(2, 0.9, np.float32), "classes": np.zeros(2, int), "count": 2}

    monkeypatch.setattr(DetectionRuntime, "postprocess", off_the_edge)
    jsonl, summary = tmp_path / "t.jsonl", tmp_path / "s.json"

    def go(**kw) -> list[dict]:
        opts = RunOptions(model=model, source=str(video), display=False, track=TrackOptions(), jsonl=jsonl, **kw)
        run(opts)
        return [json.loads(x) for x in jsonl.read_text().splitlines() if x.endswith("}")]

    rows = go()
    boxes = np.array([p["box"] for r in rows for p in r["predictions"]])
    assert len(boxes) >= 15 and boxes.min() >= 0 and boxes.max() <= 96
    assert boxes[:, 2].max() == 96 and boxes[:, 1].min() == 0  # both reached the edge, and stopped there
    assert len(go(summary_json=summary, resume_counts=True)) == 20  # the first run's lines, then this one's
    jsonl.write_bytes(jsonl.read_bytes()[:-30])  # a line cut short (a camera run's power cut): ended, not joined
    assert len(go(summary_json=summary, resume_counts=True)) == 29 and len(jsonl.read_text().splitlines()) == 30
    # A run that fails midway adds no lines and no counts: the file counted again counts once.
    kept, tracks = jsonl.read_bytes(), json.loads(summary.read_text())["tracking"]["tracks"]

    seen = iter(range(100))

    def fails(self, *args, **kwargs):
        if next(seen) == 6:
            raise RuntimeError("the model broke")
        return off_the_edge(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(DetectionRuntime, "postprocess", fails)
        with pytest.raises(RuntimeError, match="the model broke"):
            go(summary_json=summary, resume_counts=True)
    after = json.loads(summary.read_text())
    assert jsonl.read_bytes() == kept and after["stopped_by"].startswith("error: RuntimeError")
    assert after["tracking"]["tracks"] == tracks and after["jsonl_offset"] == len(kept)
    # One that died while adding its lines left them past the summary's offset: cut off, then added once.
    jsonl.write_bytes(kept + b'{"frame": 0, "predictions": []}\n{"frame": 1, "pred')
    assert len(go(summary_json=summary, resume_counts=True)) == 39 and jsonl.read_bytes().startswith(kept)
    assert json.loads(summary.read_text())["tracking"]["tracks"] > tracks
    assert len(go()) == 10  # without --resume-counts the file is this run's alone
    with pytest.raises(RunError, match=r"score \d+ classes as a detection model, but there are 1 labels"):
        run(RunOptions(model=model, source=str(video), display=False, labels="only"))
    # copied without its sidecar, the detector still runs: the labels are in its metadata, on the scores
    bare = tmp_path / "bare" / "det.tflite"
    bare.parent.mkdir()
    bare.write_bytes(Path(model).read_bytes())
    names = json.loads(Path(model).with_suffix(".json").read_text())["class_names"]
    opts = RunOptions(model=bare, source=str(video), display=False, track=TrackOptions(), jsonl=jsonl)
    assert run(opts)["frames"] == 10  # (tracked: the stand-in detections carry no labels of their own)
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert rows[0]["predictions"] and {p["label"] for r in rows for p in r["predictions"]} == {names[0]}


def test_the_report_grid_draws_either_export_form():
    """evaluate draws its sample grid from whichever form was exported: the mobile form
    alone (``export.detection_postprocess=[mobile]``) gives boxes as ratios of the
    input, which need the input size (it raised before, losing the measured report)."""
    from pipeline.tasks.detection.task import TASK

    images = np.zeros((2, 64, 64, 3), np.uint8)
    targets = [{"boxes": np.array([[8, 8, 40, 40]], np.float32)}] * 2
    # the same box, [16, 8, 48, 40] in input pixels, in each form
    mobile = [
        np.tile(np.array([[[8, 16, 40, 48]]], np.float32) / 64, (2, 1, 1)),
        np.zeros((2, 1), np.float32),
        np.full((2, 1), 0.9, np.float32),
        np.ones(2, np.float32),
    ]
    raw = [np.tile(np.array([[[16, 8, 48, 40]]], np.float32), (2, 1, 1)), np.tile([[[0.9, 0.0]]], (2, 1, 1))]
    grids = [TASK.sample_grid(images, outputs, targets, ["a", "b"]) for outputs in (mobile, raw)]
    assert grids[0].shape == grids[1].shape and grids[0].any()
    np.testing.assert_array_equal(grids[0], grids[1])  # the same box drawn the same way
