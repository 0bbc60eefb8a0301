"""Segmentation: readers and bad input, joint augmentation, metric, post-processing,
and a tiny train → prune → qat → export → evaluate run through LiteRT."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TINY, run_chain, tiny_config

from pipeline.core.errors import DataError
from pipeline.core.images import InputSpec
from pipeline.core.overlay import palette as bgr_palette
from pipeline.tasks.segmentation import readers
from pipeline.tasks.segmentation.readers import IGNORE, read_mask, segmentation_set


def load(cfg, spec):
    """The segmentation readers take the data section of a config."""
    return readers.load(cfg.data, spec)


def palette(n: int) -> np.ndarray:
    """The overlay palette as an (n, 3) RGB array, to paint test images from masks."""
    return np.array(bgr_palette(n), np.uint8)[:, ::-1]


SEG_TINY = [
    "model.input_size=64",
    "data.synthetic_samples=192",
    "data.synthetic_classes=3",
    "train.epochs=8",
    "train.batch_size=16",
    "train.learning_rate=0.01",
    "export.representative_samples=32",
    "export.variants=float32,float16,int8,qat_int8",
    "qat.sources=[float]",
    "evaluate.batch_size=16",
]


def seg_config(*extra: str):
    return tiny_config(*SEG_TINY, *extra, task="segmentation")


def _blocks(h: int, w: int, k: int, seed: int) -> np.ndarray:
    """A mask of big rectangles of classes 1..k-1 on class 0."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for c in range(1, k):
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        m[y : y + h // 3, x : x + w // 3] = c
    return m


def _write_pair(img_dir: Path, mask_dir: Path, stem: str, mask: np.ndarray, ext: str = ".png") -> None:
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(img_dir / f"{stem}{ext}"), palette(256)[mask][..., ::-1])
    cv2.imwrite(str(mask_dir / f"{stem}.png"), mask)


def _mask_root(tmp_path: Path, n: int = 4, k: int = 3) -> Path:
    for split in ("train", "val"):
        for i in range(n):
            m = _blocks(40, 48, k, i)
            m[0, :] = IGNORE  # an ignored row
            _write_pair(tmp_path / "images" / split, tmp_path / "masks" / split, f"{split}{i}", m)
    return tmp_path


# === Readers ===


def test_synthetic_set_is_deterministic_with_every_class_and_thin_parts():
    a_img, a_mask, names = segmentation_set(24, 5, 64, 3)
    b_img, b_mask, _ = segmentation_set.__wrapped__(24, 5, 64, 3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert names[0] == "background" and len(names) == 5
    assert set(np.unique(a_mask)) == set(range(5))
    # Cross is class 2: its arms are thin, so many of its pixels touch another class.
    cross = (a_mask == 2).astype(np.uint8)
    eroded = cv2.erode(cross, np.ones((5, 5), np.uint8))
    assert eroded.sum() < 0.5 * cross.sum()


def test_mask_folders_read_pairs_by_stem_and_keep_the_ignore_index(tmp_path):
    root = _mask_root(tmp_path)
    cfg = seg_config("data.format=masks", f"data.path={root}", "model.input_size=32")
    data = load(cfg, InputSpec(32))
    assert data.class_names == ("class_0", "class_1", "class_2")
    images, masks = data.train.arrays()
    assert images.shape == (4, 32, 32, 3) and data.val.arrays()[1].shape == (4, 32, 32)
    assert (masks[:, 0] == IGNORE).all()
    assert set(np.unique(masks)) <= {0, 1, 2, IGNORE}
    # The image was painted from its mask: resized together, they still agree.
    colours = palette(8)[masks[0, 1:]]
    assert (np.abs(colours.astype(int) - images[0, 1:]).sum(-1) < 60).mean() > 0.9


def test_mask_folders_from_explicit_dirs_with_another_ignore_index_and_letterbox(tmp_path):
    m = _blocks(40, 80, 3, 0)
    m[:, :4] = 9
    for split in ("a", "b"):
        _write_pair(tmp_path / f"im_{split}", tmp_path / f"m_{split}", "x", m, ext=".jpg")
    cfg = seg_config(
        "data.format=masks",
        f"data.train_images={tmp_path / 'im_a'}",
        f"data.train_masks={tmp_path / 'm_a'}",
        f"data.val_images={tmp_path / 'im_b'}",
        f"data.val_masks={tmp_path / 'm_b'}",
        "data.ignore_index=9",
        "data.class_names=[bg,one,two]",
    )
    data = load(cfg, InputSpec(32, resize="letterbox"))
    mask = data.train.arrays()[1][0]
    assert (mask[:8] == IGNORE).all() and (mask[-8:] == IGNORE).all()  # letterbox bands are ignored
    assert (mask[8:24, 0] == IGNORE).all()  # the file's ignore value 9 became 255
    assert data.class_names == ("bg", "one", "two")


def test_voc_palette_masks_give_class_indices_not_colours(tmp_path):
    from PIL import Image

    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    flat = [int(v) for v in palette(256).reshape(-1)]
    for i in range(3):
        m = _blocks(30, 30, 4, i)
        m[m == 3] = 15  # person
        m[0] = 255  # VOC's boundary/void colour
        im = Image.fromarray(m, mode="P")
        im.putpalette(flat)
        im.save(tmp_path / "SegmentationClass" / f"2007_{i}.png")
        cv2.imwrite(str(tmp_path / "JPEGImages" / f"2007_{i}.jpg"), np.full((30, 30, 3), 90, np.uint8))
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_0\n2007_1\n")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_2\n")
    assert set(np.unique(read_mask(tmp_path / "SegmentationClass" / "2007_0.png"))) <= {0, 1, 2, 15, 255}
    data = load(seg_config("data.format=voc", f"data.path={tmp_path}"), InputSpec(30))
    assert len(data.train) == 2 and len(data.val) == 1 and data.class_names[15] == "person"
    masks = data.train.arrays()[1]
    assert 15 in masks and (masks[:, 0] == IGNORE).all()
    # data.path at the folder holding VOCdevkit/VOC2012: the VOC folder is named
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    voc.mkdir(parents=True)
    (tmp_path / "SegmentationClass").rename(voc / "SegmentationClass")
    with pytest.raises(DataError, match=r"no SegmentationClass folder; did you mean data.path=.*VOCdevkit/VOC2012\?"):
        load(seg_config("data.format=voc", f"data.path={tmp_path}"), InputSpec(30))


def test_coco_polygons_and_rle_become_a_semantic_mask(tmp_path):
    from pycocotools import mask as mask_utils

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((40, 60, 3), np.uint8))
    square = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]
    blob = np.zeros((40, 60), np.uint8, order="F")
    blob[5:15, 40:55] = 1
    rle = mask_utils.encode(np.asfortranarray(blob))
    rle["counts"] = rle["counts"].decode()
    crowd = np.zeros((40, 60), np.uint8, order="F")
    crowd[30:38, 40:55] = 1
    crowd_rle = mask_utils.encode(np.asfortranarray(crowd))
    crowd_rle["counts"] = crowd_rle["counts"].decode()
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 60}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "segmentation": [square], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "segmentation": rle, "area": 150, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 3, "segmentation": crowd_rle, "area": 120, "iscrowd": 1},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    cfg = seg_config(
        "data.format=coco",
        f"data.train_annotations={tmp_path / 'ann.json'}",
        f"data.val_annotations={tmp_path / 'ann.json'}",
        f"data.path={tmp_path}",
        "model.input_size=60",
    )
    data = load(cfg, InputSpec(60, resize="letterbox"))
    assert data.class_names == ("background", "dog", "cat")  # categories in id order
    m = data.train.arrays()[1][0]  # letterboxed: the 40 rows sit at rows 10..49
    assert m[10 + 20, 20] == 2 and m[10 + 10, 47] == 1 and m[10 + 34, 47] == IGNORE and m[10 + 2, 2] == 0
    # "area" is optional in practice: null, a word or none at all order by the bbox, else last
    coco["annotations"][0]["area"], coco["annotations"][1]["area"] = None, "big"
    del coco["annotations"][2]["area"]
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    again = load(cfg, InputSpec(60, resize="letterbox")).train.arrays()[1][0]
    np.testing.assert_array_equal(again, m)


# === Bad input ===


def test_mask_of_another_size_names_the_file(tmp_path):
    root = _mask_root(tmp_path, n=2)
    cv2.imwrite(str(root / "masks" / "train" / "train1.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"train1\.png: mask is 10x10 but its image .*train1\.png is 48x40"):
        load(seg_config("data.format=masks", f"data.path={root}", "data.class_names=[a,b,c]"), InputSpec(32))


def test_mask_values_beyond_the_configured_classes_are_ignored_with_a_warning(tmp_path, caplog):
    root = _mask_root(tmp_path, n=2)
    m = _blocks(40, 48, 3, 0)
    m[5, 5] = 7
    cv2.imwrite(str(root / "masks" / "val" / "val0.png"), m)
    for key in ("data.class_names=[a,b,c]", "data.num_classes=3"):
        with caplog.at_level("WARNING"):
            data = load(seg_config("data.format=masks", f"data.path={root}", key), InputSpec(48, resize="stretch"))
            masks = data.val.arrays()[1]  # the masks are read here, as training would read them
        assert len(data.class_names) == 3
        assert re.search(r"mask file 1 with values beyond the 3 classes, ignored.*val0\.png: \[7\]", caplog.text)
        assert masks.max(initial=0) in (2, IGNORE) and 7 not in masks
        caplog.clear()


def test_a_stray_mask_value_is_never_taken_for_a_class_count(tmp_path):
    """A 200 among 0..2 (a mis-exported edge) would make 198 phantom classes."""
    root = _mask_root(tmp_path, n=2)
    m = _blocks(40, 48, 3, 0)
    m[5, 5:8] = 200
    cv2.imwrite(str(root / "masks" / "val" / "val0.png"), m)
    with pytest.raises(
        DataError,
        match=r"mask values \[200\] would set the class count to 201.*value 200 on 3 pixels in 1 file\(s\), e\.g\. .*val0\.png.*data\.num_classes",
    ):
        load(seg_config("data.format=masks", f"data.path={root}"), InputSpec(32))
    # Without the stray value the count is inferred.
    cv2.imwrite(str(root / "masks" / "val" / "val0.png"), _blocks(40, 48, 3, 0))
    assert len(load(seg_config("data.format=masks", f"data.path={root}"), InputSpec(32)).class_names) == 3


def test_num_classes_and_class_names_must_agree():
    from pipeline.core.config import ConfigError

    with pytest.raises(ConfigError, match="data.num_classes=3 but data.class_names lists 2 names"):
        seg_config("data.num_classes=3", "data.class_names=[a,b]")


def test_binary_0_255_masks_are_an_error_not_a_background_only_model(tmp_path):
    """Every foreground pixel ignored: trained, the model learned background only and
    reported val_miou 1.0 (the one class its validation held)."""
    for split in ("train", "val"):
        for i in range(2):
            m = np.where(_blocks(40, 48, 2, i) > 0, 255, 0).astype(np.uint8)
            _write_pair(tmp_path / "images" / split, tmp_path / "masks" / split, f"{split}{i}", m)
    with pytest.raises(DataError, match=r"no training pixels of class\(es\) \['fg'\]; .*need 255 written as 1"):
        load(seg_config("data.format=masks", f"data.path={tmp_path}", "data.class_names=[bg,fg]"), InputSpec(32))


def _coco_doc(tmp_path, **changes):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((40, 60, 3), np.uint8))
    square = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 60}],
        "categories": [{"id": 7, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": [square], "area": 400}],
    }
    doc.update(changes)
    doc = {k: v for k, v in doc.items() if v is not None}  # None: the key is absent
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    return seg_config("data.format=coco", f"data.train_annotations={tmp_path / 'ann.json'}", f"data.path={tmp_path}")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"annotations": None}, "no 'annotations' list"),
        ({"images": [{"id": 1, "file_name": "a.jpg", "width": 60}]}, "images[0] has no 'height'"),
        ({"annotations": [{"id": 4, "image_id": 99, "category_id": 7, "segmentation": []}]}, "image ids not in"),
        ({"annotations": [{"id": 4, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}]}, "no 'segmentation'"),
        (
            {
                "annotations": [
                    {"id": 4, "image_id": 1, "category_id": 7, "segmentation": {"counts": "x", "size": [9, 9]}}
                ]
            },
            "annotation id 4: unusable segmentation",
        ),
        ({"annotations": [{"id": 4, "image_id": 1, "category_id": 8, "segmentation": []}]}, "unknown category_id 8"),
    ],
)
def test_coco_mask_errors_name_the_file_and_the_annotation(tmp_path, changes, message):
    cfg = _coco_doc(tmp_path, **changes)
    with pytest.raises(DataError, match=r"ann\.json") as e:
        load(cfg, InputSpec(32))
    assert message in str(e.value)


def test_degenerate_coco_polygons_are_dropped_and_counted(tmp_path, caplog):
    square = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "segmentation": [square, [5.0, 5.0]], "area": 400},
        {"id": 2, "image_id": 1, "category_id": 7, "segmentation": [[1.0, 2.0]], "area": 1},
        {"id": 3, "image_id": 1, "category_id": 7, "segmentation": [], "area": 0},
    ]
    from pipeline.tasks.segmentation.readers import _coco_split

    _coco_doc(tmp_path, annotations=anns)
    with caplog.at_level("WARNING"):
        pairs, _ = _coco_split(tmp_path / "ann.json", tmp_path, IGNORE)
    rasterize, height, width = pairs[0][1]
    assert (height, width) == (40, 60) and (
        rasterize() == 1
    ).sum() == 400  # the square, rasterized; the 2-point polygon beside it ignored
    assert "2 annotation(s) without a polygon of 3+ points dropped (ids [2, 3])" in caplog.text


def test_voc_split_list_typo_is_an_error_and_a_missing_val_list_a_ratio_split(tmp_path, caplog):
    (tmp_path / "SegmentationClass").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "SegmentationClass" / f"{i}.png"), _blocks(30, 30, 3, i))
        cv2.imwrite(str(tmp_path / "JPEGImages" / f"{i}.jpg"), np.full((30, 30, 3), 90, np.uint8))
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "default.txt").write_text("0\n1\n2\n")
    with pytest.raises(DataError, match=r"Segmentation/train\.txt: VOC split list not found; found \['default.txt'\]"):
        load(seg_config("data.format=voc", f"data.path={tmp_path}"), InputSpec(32))
    with caplog.at_level("WARNING"):
        data = load(seg_config("data.format=voc", f"data.path={tmp_path}", "data.splits=[default,val]"), InputSpec(32))
    assert len(data.train) + len(data.val) == 3 and "no val.txt; splitting default.txt" in caplog.text


def test_a_jpeg_mask_is_an_error_not_labels_changed_along_every_edge(tmp_path):
    root = _mask_root(tmp_path, n=2)
    mask = root / "masks" / "train" / "train0.png"
    cv2.imwrite(str(mask.with_suffix(".jpg")), cv2.imread(str(mask), cv2.IMREAD_UNCHANGED))
    mask.unlink()
    with pytest.raises(DataError, match=r"train0\.jpg: a JPEG mask; .*Save masks as PNG"):
        load(seg_config("data.format=masks", f"data.path={root}"), InputSpec(32))


def test_a_mask_without_an_image_is_a_counted_warning(tmp_path, caplog):
    root = _mask_root(tmp_path, n=2)
    (root / "masks" / "train" / "orphan.png").write_bytes((root / "masks" / "train" / "train0.png").read_bytes())
    with caplog.at_level("WARNING"):
        load(seg_config("data.format=masks", f"data.path={root}"), InputSpec(32))
    assert "1 mask(s) without an image in" in caplog.text and "not used: orphan.png" in caplog.text


def test_image_without_a_mask_names_the_image(tmp_path):
    root = _mask_root(tmp_path, n=2)
    (root / "masks" / "train" / "train0.png").unlink()
    with pytest.raises(DataError, match=r"train0\.png: image has no mask; expected .*masks/train/train0\.png"):
        load(seg_config("data.format=masks", f"data.path={root}"), InputSpec(32))


def test_rgb_colour_mask_says_how_to_convert_it(tmp_path):
    root = _mask_root(tmp_path, n=2)
    cv2.imwrite(str(root / "masks" / "train" / "train0.png"), palette(8)[_blocks(40, 48, 3, 0)])
    with pytest.raises(DataError, match=r"train0\.png: an RGB colour mask .*single-channel PNG.*palette PNG"):
        load(seg_config("data.format=masks", f"data.path={root}"), InputSpec(32))
    # A gray mask saved as RGB is fine: its three channels agree.
    cv2.imwrite(str(root / "masks" / "train" / "train0.png"), np.repeat(_blocks(40, 48, 3, 0)[..., None], 3, -1))
    assert read_mask(root / "masks" / "train" / "train0.png").max() == 2


def test_masks_format_needs_a_path_or_folders():
    from pipeline.core.config import ConfigError

    with pytest.raises(ConfigError, match="data.path: required"):
        seg_config("data.format=masks")


# === Augmentation ===


def test_joint_augmentation_keeps_masks_on_their_pixels_eagerly_and_in_tf_data():
    from pipeline._keras import tf
    from pipeline.tasks.segmentation.pipeline import augment_pair, training_dataset
    from pipeline.tasks.segmentation.readers import SegSplit

    masks = np.stack([_blocks(64, 64, 4, i) for i in range(8)])
    # Encode the class in the red channel; bilinear blends it only at class borders.
    images = np.zeros((8, 64, 64, 3), np.uint8)
    images[..., 0] = masks * 60
    x, y = augment_pair(tf.constant(images, tf.float32), tf.constant(masks), photometric=False)
    x, y = x.numpy(), y.numpy()
    assert not np.array_equal(y, masks), "the augmentation changed nothing, so this test proves nothing"
    assert set(np.unique(y)) <= set(range(4))  # nearest: no blended class ids
    assert (np.round(x[..., 0] / 60) == y).mean() > 0.97
    # Inside tf.data (with photometric jitter, which leaves the mask alone).
    split = SegSplit(images, masks)
    spec = InputSpec(64)
    batch_x, batch_y = next(iter(training_dataset(split, spec, 8, training=True, seed=1)))
    bx, by = batch_x.numpy() * 255.0, batch_y.numpy()
    red = bx[..., 0] - bx[..., 1]  # the jitter scales and shifts every channel alike
    agree = [((red[i] > 30) == (by[i] > 0)).mean() for i in range(8)]
    assert np.mean(agree) > 0.95


# === Metric and post-processing ===


def test_miou_ignores_ignored_pixels_and_absent_classes():
    from pipeline.tasks import get_task

    task = get_task("segmentation")
    target = np.array([[[0, 0, 1, 1], [0, 0, 1, IGNORE]]], np.uint8)
    logits = np.zeros((1, 2, 4, 3), np.float32)
    pred = np.array([[[0, 0, 1, 0], [0, 0, 1, 2]]])
    np.put_along_axis(logits, pred[..., None], 1.0, -1)
    s = task.score([logits], [target], ("bg", "a", "b"))
    assert s["per_class_iou"] == {"bg": 4 / 5, "a": 2 / 3, "b": None}
    assert s["miou"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert s["pixel_accuracy"] == pytest.approx(6 / 7)


def test_postprocess_undoes_the_letterbox_and_draw_colours_the_frame():
    from pipeline.tasks import get_runtime

    task = get_runtime("segmentation")
    spec = InputSpec(64, resize="letterbox")
    logits = np.zeros((1, 64, 64, 3), np.float32)
    logits[0, 16:48, :32, 1] = 5.0  # a 100x200 frame fills rows 16..47; left half class 1
    logits[0, :16, :, 2] = 5.0  # padding rows: must not appear in the frame
    preds = task.postprocess([logits], ["bg", "a", "b"], spec=spec, frame_shape=(100, 200))
    mask = preds["mask"]
    assert mask.shape == (100, 200) and mask.dtype == np.uint8
    assert (mask[:, :100] == 1).mean() > 0.97 and (mask[:, 100:] == 0).mean() > 0.97
    js = task.to_json(preds)
    assert json.dumps(js) and {c["label"] for c in js["classes"]} == {"bg", "a"}
    assert sum(c["fraction"] for c in js["classes"]) == pytest.approx(1.0, abs=1e-3)
    frame = np.full((100, 200, 3), 200, np.uint8)
    out = task.draw(frame, preds, ["bg", "a", "b"])
    assert (out[60:, 120:] == 200).all() and not (out[60:, 20:90] == 200).all()


# === The whole chain on tiny data ===


@pytest.fixture(scope="session")
def seg_chain(tmp_path_factory):
    return run_chain(tmp_path_factory, "seg_chain", "segmentation", [*TINY, *SEG_TINY])


@pytest.mark.slow
def test_tiny_chain_reaches_a_non_trivial_miou_on_the_tflite_models(seg_chain):
    run, cfg, results = seg_chain
    report = json.loads((run.path / "report.json").read_text())
    assert report["task"] == "segmentation" and report["metric"] == "miou"
    # Background everywhere scores about 0.3 here (one class of three with IoU ~0.85).
    assert report["keras_float"] > 0.5, report["keras_float_details"]
    for name in ("float32", "int8", "qat_int8"):
        v = report["variants"][name]
        assert v["metric"] > 0.45, (name, v["details"])
        assert set(v["details"]) >= {"pixel_accuracy", "per_class_iou"}
        assert all(iou is not None for iou in v["details"]["per_class_iou"].values())
    md = (run.path / "report.md").read_text()
    assert "| qat_int8 |" in md and "miou" in md
    grid = cv2.imread(str(run.path / "samples.png"))
    assert grid.shape[1] == 3 * 64 and grid.shape[0] >= 64


@pytest.mark.slow
def test_float_tflite_agrees_with_keras_on_99_percent_of_pixels(seg_chain):
    from pipeline.core.images import normalize
    from pipeline.runtime.tflite_model import TFLiteModel
    from pipeline.stages.weights import rebuild
    from pipeline.tasks import get_task

    run, cfg, results = seg_chain
    task = get_task("segmentation")
    data = task.load_data(cfg)
    x, _ = next(task.eval_batches(data, cfg, cfg.input_spec(), 16))
    keras_model = rebuild(cfg, len(data.class_names), run.weights("float"))
    expected = keras_model.predict_on_batch(normalize(x, cfg.input_spec()))
    for name in ("float32", "float16"):
        got = TFLiteModel(results["export"][name], cfg.input_spec(), threads=1)(x)[0]
        assert got.shape == expected.shape == (16, 64, 64, 3)
        assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.99, name
    report = json.loads((run.path / "report.json").read_text())
    assert report["variants"]["float32"]["agreement"] >= 0.99


@pytest.mark.slow
def test_sidecar_says_logits_and_int8_runs_on_xnnpack(seg_chain):
    from pipeline.core.sidecar import read_sidecar

    run, cfg, results = seg_chain
    side = read_sidecar(results["export"]["int8"])
    (out,) = side["outputs"]
    assert out["name"] == "logits" and out["kind"] == "per_class_scores"
    assert out["tensor_shape"] == [1, 64, 64, 3] and out["dtype"] == "uint8"
    report = json.loads((run.path / "report.json").read_text())
    for name in ("int8", "qat_int8"):
        assert set(report["variants"][name]["undelegated_ops"]) <= {"QUANTIZE"}  # only the uint8 edges
    assert report["variants"]["float32"]["undelegated_ops"] == {}


def test_a_rare_class_that_cannot_raise_the_count_is_inferred(tmp_path):
    """Binary defect masks (a few pixels of 1) and a rare id below common ones need no setting."""
    from pipeline.tasks.segmentation.readers import infer_class_count

    paths = []
    for i, (rare, common) in enumerate(((1, None), (1, 2))):
        m = np.zeros((200, 200), np.uint8)
        m[0, 0] = rare
        if common is not None:
            m[50:150, 50:150] = common
        cv2.imwrite(str(tmp_path / f"{i}.png"), m)
        paths.append(tmp_path / f"{i}.png")
    assert infer_class_count(paths[:1], 255) == 2
    assert infer_class_count(paths, 255) == 3
    with pytest.raises(DataError, match=r"data.ignore_index=1 lies among the mask ids \(up to 2"):
        infer_class_count(paths, 1)


def test_class_balance_weighs_the_rare_class_up_and_zero_is_plain_cross_entropy():
    from pipeline._keras import tf
    from pipeline.tasks.segmentation import IGNORE
    from pipeline.tasks.segmentation.task import segmentation_loss

    y = np.zeros((1, 8, 8), np.int32)
    y[0, :2, :2] = 1  # the object: 4 of 64 pixels
    y[0, 7, 7] = IGNORE
    logits = np.zeros((1, 8, 8, 2), np.float32)
    logits[..., 0] = 2.0  # predicts background everywhere
    plain, balanced = (float(segmentation_loss(2, IGNORE, b)(tf.constant(y), tf.constant(logits))) for b in (0.0, 1.0))
    ce = np.log1p(np.exp(-2.0)), np.log1p(np.exp(2.0))  # background pixels right, object pixels wrong
    dice_probs = 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(2.0))
    inter = (59 * dice_probs[0], 4 * dice_probs[1])
    denom = (63 * dice_probs[0] + 59, 63 * dice_probs[1] + 4)
    dice = 1 - np.mean([(2 * i + 1) / (d + 1) for i, d in zip(inter, denom)])
    assert plain == pytest.approx((59 * ce[0] + 4 * ce[1]) / 63 + dice, rel=1e-5)
    assert balanced == pytest.approx((ce[0] + ce[1]) / 2 + dice, rel=1e-5)  # each class the same total weight
    assert balanced > plain
