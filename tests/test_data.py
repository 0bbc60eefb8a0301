"""Readers, preprocessing and the bad-input cases of the classification data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.core.errors import DataError
from pipeline.core.images import ImageError, InputSpec, normalize, prepare, read_image
from pipeline.data.synthetic import classification_set
from pipeline.tasks.classification import readers as cd


def _img(path: Path, value: int = 128, channels: int = 3, size=(20, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((*size, channels), value, np.uint8) if channels > 1 else np.full(size, value, np.uint8)
    assert cv2.imwrite(str(path), arr)
    return path


def _tree(root: Path, classes=("cat", "dog"), n=4, split: str | None = None) -> Path:
    base = root / split if split else root
    for c in classes:
        for i in range(n):
            _img(base / c / f"{i}.png", value=(40 * i) % 256)
    return root


# === Folder reader ===


def test_folder_without_splits_is_split_by_ratio_and_seed(tmp_path):
    _tree(tmp_path, n=10)
    a = cd.read_folder(tmp_path, val_split=0.2, seed=1)
    b = cd.read_folder(tmp_path, val_split=0.2, seed=1)
    assert a.class_names == ("cat", "dog")
    assert (len(a.train), len(a.val)) == (16, 4)
    assert a.val.paths == b.val.paths
    assert set(a.val.labels) == {0, 1}  # stratified
    assert not set(a.train.paths) & set(a.val.paths)


def test_folder_with_split_folders(tmp_path):
    _tree(tmp_path, split="train")
    _tree(tmp_path, n=2, split="val")
    data = cd.read_folder(tmp_path, val_split=0.5, seed=0)
    assert (len(data.train), len(data.val)) == (8, 4)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda r: _tree(r, classes=("only",)), "only one class"),
        (lambda r: (_tree(r), (r / "empty").mkdir()), "empty class folder"),
        (lambda r: _tree(r, split="train"), "no validation split"),
        (lambda r: _img(r / "loose.png"), "no class folders"),
        (lambda r: None, "no class folders"),
    ],
    ids=["single-class", "empty-class", "missing-split", "images-without-classes", "no-images"],
)
def test_folder_errors_name_the_folder(tmp_path, make, match):
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    with pytest.raises(DataError, match=match) as e:
        cd.read_folder(root, 0.2, 0)
    assert str(root) in str(e.value)


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        cd.read_folder(tmp_path / "nope", 0.2, 0)


def test_val_split_with_other_classes_is_an_error(tmp_path):
    _tree(tmp_path, split="train")
    _tree(tmp_path, classes=("cat", "cow"), split="val")
    with pytest.raises(DataError, match="classes differ"):
        cd.read_folder(tmp_path, 0.2, 0)


# === Images and preprocessing ===


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_gray_rgb_and_rgba_files_all_prepare_to_the_model_shape(tmp_path, channels):
    p = tmp_path / f"x{channels}.png"
    arr = np.random.default_rng(0).integers(0, 255, (30, 40, channels) if channels > 1 else (30, 40), dtype=np.uint8)
    cv2.imwrite(str(p), arr)
    img = read_image(p)
    assert img.shape == (30, 40, 3) and img.dtype == np.uint8
    for spec in (InputSpec(16, 3), InputSpec(16, 1), InputSpec(16, 3, resize="letterbox")):
        out = prepare(img, spec)
        assert out.shape == (16, 16, spec.channels) and out.dtype == np.uint8


def test_read_image_converts_bgr_to_rgb(tmp_path):
    p = tmp_path / "red.png"
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR
    cv2.imwrite(str(p), bgr)
    assert read_image(p)[0, 0].tolist() == [255, 0, 0]


def test_letterbox_keeps_aspect_ratio():
    img = np.full((10, 40, 3), 200, np.uint8)
    out = prepare(img, InputSpec(40, 3, resize="letterbox"))
    assert (out[:10] == 114).all() and (out[-10:] == 114).all() and (out[20, :, 0] == 200).all()


@pytest.mark.parametrize("size", [(192, 144), (320, 240), (100, 75), (97, 31), (7, 7), (800, 600)])
def test_resize_matches_inter_area_and_does_not_alias(size):
    from pipeline.core.images import resize

    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), np.uint8), (0, 0), 3)
    out = resize(smooth, *size)
    assert out.shape == (size[1], size[0], 3) and out.dtype == np.uint8
    ref = cv2.resize(smooth, size, interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - ref).mean() < 2.0
    # A one-pixel checkerboard is pure aliasing bait: a shrink that filters gives flat
    # grey, one that samples (INTER_LINEAR / NEAREST straight from 640) gives stripes.
    board = (np.indices((480, 640)).sum(0) % 2 * 255).astype(np.uint8)
    if size[0] < 320:
        assert resize(board, *size).std() < 20
        assert cv2.resize(board, size, interpolation=cv2.INTER_NEAREST).std() > 100


def test_quantize_input_table_equals_the_formula():
    from pipeline.runtime.tflite_model import quantize_input

    x = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), np.uint8)
    spec = InputSpec(8, 3, mean=10.0, std=50.0)
    for dtype, scale, zp in [(np.int8, 1 / 255, -128), (np.int8, 0.03, 7), (np.uint8, 0.01, 5), (np.int16, 1e-3, 0)]:
        info = np.iinfo(dtype)
        for xx in (x, x[0], x[0, 0, 0]):
            ref = np.clip(np.round(normalize(xx, spec) / scale + zp), info.min, info.max).astype(dtype)
            got = quantize_input(xx, {"dtype": dtype, "quantization": (scale, zp)}, spec)
            assert got.dtype == dtype and got.shape == xx.shape and np.array_equal(got, ref)


def test_corrupt_and_empty_files_raise_image_error_with_the_path(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for p in (bad, empty, tmp_path / "missing.png"):
        with pytest.raises(ImageError, match=p.name):
            read_image(p)


def test_normalize_is_the_same_in_numpy_and_tensorflow():
    from pipeline._keras import tf

    x = np.arange(0, 256, dtype=np.uint8).reshape(16, 16, 1)
    spec = InputSpec(16, 1)
    eager = normalize(x, spec)
    graph = tf.data.Dataset.from_tensors(x).map(lambda t: normalize(t, spec)).get_single_element().numpy()
    np.testing.assert_allclose(eager, graph, rtol=0, atol=1e-7)
    assert eager.min() == 0.0 and eager.max() == 1.0


def test_decoding_in_tf_data_equals_decoding_eagerly(tmp_path):
    from pipeline.tasks.classification.pipeline import raw_dataset

    _tree(tmp_path, n=3)
    data = cd.read_folder(tmp_path, 0.0, 0)
    spec = InputSpec(12, 3)
    in_graph = [x for x, _ in raw_dataset(data.train, spec, data.skipped).as_numpy_iterator()]
    eager = [prepare(read_image(p), spec) for p in data.train.paths]
    assert len(in_graph) == len(eager) == 6
    for a, b in zip(in_graph, eager):
        np.testing.assert_array_equal(a, b)


def test_corrupt_image_is_skipped_and_counted_not_fatal(tmp_path, caplog):
    from pipeline.tasks.classification.pipeline import raw_dataset

    _tree(tmp_path, n=3)
    bad = tmp_path / "dog" / "broken.jpg"
    bad.write_bytes(b"garbage")
    data = cd.read_folder(tmp_path, 0.0, 0)
    before = len(data.skipped)
    with caplog.at_level("WARNING"):
        items = list(raw_dataset(data.train, InputSpec(12, 3), data.skipped).as_numpy_iterator())
    assert len(items) == 6  # 7 files, 1 skipped
    assert len(data.skipped) == before + 1
    assert str(bad) in caplog.text


def test_training_stops_when_validation_gives_no_metric():
    """Every validation image unreadable: Keras only warns; we stop after the epoch."""
    from pipeline.core.images import SkipCounter
    from pipeline.stages.fit import RequireValidation

    cb = RequireValidation("val_accuracy", "/data/flowers", SkipCounter())
    cb.on_epoch_end(0, {"loss": 1.0, "val_accuracy": 0.5})
    with pytest.raises(DataError, match="/data/flowers: the validation split gave no readable images"):
        cb.on_epoch_end(0, {"loss": 1.0})


# === IDX ===


def _write_idx(path: Path, arr: np.ndarray, gz: bool, truncate: int = 0) -> None:
    raw = b"\0\0\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    raw = raw[: len(raw) - truncate]
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_reads_mnist_layout(tmp_path, gz):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{sfx}", rng.integers(0, 255, (n, 28, 28)), gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{sfx}", np.arange(n) % 3, gz)
    data = cd.read_idx(tmp_path)
    assert data.train.images.shape == (12, 28, 28, 1) and len(data.val) == 5
    assert data.class_names == ("0", "1", "2")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    assert cd.read_idx(tmp_path).class_names == ("a", "b", "c")


def test_idx_with_one_class_in_its_labels_is_an_error(tmp_path):
    for prefix, n in (("train", 8), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.zeros((n, 28, 28)), False)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.zeros(n), False)
    with pytest.raises(DataError, match="every training label is 0"):
        cd.read_idx(tmp_path, class_names=("a", "b"))


def test_idx_truncated_or_missing_files_are_clear_errors(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28)), False, truncate=100)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4), False)
    with pytest.raises(DataError, match="truncated"):
        cd.read_idx(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"hello world!")
    with pytest.raises(DataError, match="magic"):
        cd.read_idx(tmp_path)
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28)), False)
    with pytest.raises(DataError, match="t10k-images"):
        cd.read_idx(tmp_path)


# === Synthetic ===


def test_synthetic_set_is_deterministic_and_balanced():
    a = classification_set(40, 4, size=32, seed=3)
    b = classification_set(40, 4, size=32, seed=3)
    c = classification_set(40, 4, size=32, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    assert np.bincount(a[1]).tolist() == [10, 10, 10, 10]
    assert a[2] == ["circle", "square", "triangle", "cross"]


def test_skip_counter_attempt_counts_each_bad_file_once_and_names_it(caplog):
    from pipeline.core.errors import ImageError
    from pipeline.core.images import SkipCounter

    skipped = SkipCounter()

    def bad_decoder():
        raise ValueError("cannot identify image")  # a decoder's own error, without the path

    def bad_image():
        raise ImageError("a.jpg: truncated JPEG")

    assert skipped.attempt("ok.jpg", lambda: 7) == 7
    with caplog.at_level("WARNING"):
        assert skipped.attempt("x.png", bad_decoder) is None
        assert skipped.attempt("x.png", bad_decoder) is None  # the same file again: counted once
        assert skipped.attempt("a.jpg", bad_image) is None
    assert len(skipped) == 2
    assert (
        "x.png: cannot identify image" in caplog.text and "skipped unreadable image 2: a.jpg: truncated" in caplog.text
    )


def _sideways_jpeg(path, orientation: int = 6):
    """A 60×40 landscape JPEG stored with an EXIF orientation (as a phone stores a
    portrait photo): white block in its stored top-left corner."""
    from PIL import Image

    img = np.zeros((40, 60, 3), np.uint8)
    img[:10, :20] = 255
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_jpeg_is_decoded_upright_by_its_exif_orientation_everywhere(tmp_path, orientation):
    from PIL import Image, ImageOps

    from pipeline.core.images import read_image
    from pipeline.tasks.detection.readers import _image_size
    from pipeline.tasks.segmentation.readers import header_size

    path = _sideways_jpeg(tmp_path / "phone.jpg", orientation)
    want = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))  # what a labelling tool shows
    got = read_image(path)
    assert got.shape == want.shape == ((40, 60, 3) if orientation == 3 else (60, 40, 3))
    assert np.abs(got.astype(int) - want).max() <= 2
    assert _image_size(path) == header_size(path) == got.shape[:2]  # sizes from annotations' view too


def test_a_class_whose_every_training_image_is_unreadable_is_named(tmp_path):
    """After the pipeline has read every file once, a class whose images were all
    skipped is one the model never saw, though it ships in labels.txt: named."""
    from pipeline.tasks import get_task
    from pipeline.tasks.classification.pipeline import raw_dataset

    _tree(tmp_path, n=3)
    (tmp_path / "zebra").mkdir()
    for k in range(3):
        (tmp_path / "zebra" / f"z{k}.jpg").write_bytes(b"garbage")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"garbage")  # one bad file in a class is not that
    data = cd.read_folder(tmp_path, 0.0, 0)
    task = get_task("classification")
    assert task.unseen_classes(data) == []  # nothing read yet
    list(raw_dataset(data.train, InputSpec(12, 3), data.skipped).as_numpy_iterator())
    assert task.unseen_classes(data) == ["zebra"]
