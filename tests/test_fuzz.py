"""Every reader fuzzed with Hypothesis: no input file can crash a stage.

The property, for each file kind the project reads: the reader returns data that is
well formed, or raises one of our errors (:class:`EdgepipeError`) whose message names
the file. Anything else (a traceback from deep inside, a hang, a silent change of the
class count) fails. Examples are derived from a valid file by the mutations real files
suffer (truncation, flipped bytes, missing and extra fields, wrong types, NaN and
negative numbers, duplicate and dangling ids, stray mask values).

The example counts are bounded and the seed fixed (``derandomize``), so CI runs the
same inputs every time; ``EDGEPIPE_FUZZ_EXAMPLES`` raises the count for a deeper run.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pipeline.core.errors import EdgepipeError  # noqa: E402

EXAMPLES = int(os.environ.get("EDGEPIPE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


def _fresh(tmp_path: Path) -> Path:
    """A folder of its own for one Hypothesis example (``tmp_path`` is shared by all)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


def _fails_cleanly(fn, *names: str | Path):
    """Run ``fn``; return its result, or None when it raised one of our errors naming
    one of ``names``. Any other exception propagates and fails the test."""
    try:
        return fn()
    except EdgepipeError as e:
        msg = str(e)
        assert any(str(n) in msg for n in names), f"error does not name the file: {msg}"
        return None


# === Mutations ===

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


def _paths(doc, prefix=()):
    """Every (container path, key) in a JSON document."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


@st.composite
def mutated_json(draw, base: dict, max_edits: int = 3):
    """``base`` with up to ``max_edits`` edits: a value replaced, a key dropped, an entry
    duplicated or an extra key added."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_edits))):
        paths = list(_paths(doc))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        op = draw(st.sampled_from(["replace", "drop", "duplicate", "extra"]))
        if op == "replace":
            parent[key] = draw(JSON_VALUES)
        elif op == "drop":
            del parent[key]
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif op == "extra" and isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(JSON_VALUES)
    return doc


@st.composite
def mutated_bytes(draw, base: bytes):
    """``base`` truncated, with flipped bytes, zeroed, or replaced by noise."""
    op = draw(st.sampled_from(["truncate", "flip", "zero", "noise", "empty"]))
    if op == "truncate":
        return base[: draw(st.integers(0, len(base) - 1))]
    if op == "flip":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if op == "zero":
        return bytes(len(base))
    if op == "noise":
        return draw(st.binary(min_size=1, max_size=256))
    return b""


# === Image files ===


def _image_bytes(kind: str) -> bytes:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 32, 3), np.uint8)
    ext = {"jpeg": ".jpg", "png": ".png", "png16": ".png", "bmp": ".bmp", "gray": ".png"}[kind]
    if kind == "png16":
        img = (img.astype(np.uint16) * 257)[..., 0]
    if kind == "gray":
        img = img[..., 0]
    return cv2.imencode(ext, img)[1].tobytes()


@FUZZ
@given(st.sampled_from(["jpeg", "png", "png16", "bmp", "gray"]), st.data(), st.sampled_from([".jpg", ".png", ".bmp"]))
def test_image_files_read_or_fail_naming_the_file_and_the_runner_agrees(tmp_path, kind, data, ext):
    tmp_path = _fresh(tmp_path)
    from pipeline.core.images import read_image
    from pipeline.runtime.sources import ImageSource

    blob = data.draw(mutated_bytes(_image_bytes(kind)))
    path = tmp_path / f"img{ext}"  # the extension may lie about the format
    path.write_bytes(blob)
    img = _fails_cleanly(lambda: read_image(path), path)
    if img is not None:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.size
    # One definition of a readable image: the runner shows exactly what training reads.
    src = ImageSource([path], str(tmp_path))
    src.position = 0
    frame = src.read()
    assert (frame is None) == (img is None)
    assert src.skipped == (img is None)


def test_a_truncated_jpeg_is_unreadable_everywhere(tmp_path):
    """OpenCV decodes the top of a cut JPEG over gray; training and the runner both refuse it."""
    from pipeline.core.errors import ImageError
    from pipeline.core.images import read_image

    blob = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8))[1].tobytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(blob[: len(blob) * 2 // 3])
    assert cv2.imread(str(path)) is not None  # what the runner used to show
    with pytest.raises(ImageError, match=r"cut\.jpg: truncated JPEG"):
        read_image(path)
    path.write_bytes(blob)
    assert read_image(path).shape == (64, 64, 3)


# === Video files for the runner ===


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(12):
        out.write(np.full((48, 64, 3), 20 * i, np.uint8))
    out.release()
    return path.read_bytes()


@settings(FUZZ, max_examples=max(10, EXAMPLES // 2))
@given(st.data(), st.sampled_from([".avi", ".mp4", ".mkv"]))
def test_damaged_videos_open_and_read_or_fail_naming_the_file(tmp_path, tiny_video, data, ext):
    from pipeline.runtime.sources import open_source

    tmp_path = _fresh(tmp_path)
    path = tmp_path / f"clip{ext}"
    path.write_bytes(data.draw(mutated_bytes(tiny_video)))
    src = open_source(str(path))
    if _fails_cleanly(lambda: src.open() or True, path) is None:
        return
    try:
        for _ in range(20):  # whatever decodes comes out as frames, then the source ends
            frame = src.read()
            if frame is None:
                break
            assert frame.ndim == 3 and frame.dtype == np.uint8
    finally:
        src.close()


# === COCO JSON ===


def _coco_base(root: Path) -> dict:
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(root / name), np.zeros((40, 60, 3), np.uint8))
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 60, "height": 40},
            {"id": 2, "file_name": "b.jpg", "width": 60, "height": 40},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 10, 10, 20], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [1, 1, 50, 30], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def _check_split(split, num_classes: int) -> None:
    for b, c, (h, w) in zip(split.boxes, split.classes, [(40, 60)] * len(split.boxes)):
        assert np.isfinite(b).all() and (b[:, 2:] > b[:, :2]).all()
        assert (b >= 0).all() and (b[:, [0, 2]] <= w).all() and (b[:, [1, 3]] <= h).all()
        assert ((c >= 0) & (c < num_classes)).all()


@FUZZ
@given(st.data())
def test_coco_json_reads_or_fails_naming_the_file(tmp_path, data):
    tmp_path = _fresh(tmp_path)
    from pipeline.tasks.detection.readers import read_coco

    base = _coco_base(tmp_path)
    doc = data.draw(mutated_json(base))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))  # NaN and Infinity as Python's json writes them
    out = _fails_cleanly(lambda: read_coco(ann, tmp_path), ann)
    if out is not None:
        split, names = out
        cats = [c for c in doc["categories"]]
        assert len(names) == len(cats)  # the class count is the categories', never inferred
        _check_split(split, len(names))


# === VOC XML ===

VOC_XML = """<annotation><filename>{stem}.jpg</filename>
<size><width>60</width><height>40</height><depth>3</depth></size>
<object><name>{name}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>
</annotation>"""

XML_FIELD = st.one_of(
    st.integers(-100, 200).map(str), st.floats(allow_nan=True).map(str), st.text(max_size=5), st.just("")
)


@FUZZ
@given(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["cat", "dog", "", "cat dog"]),
            "difficult": XML_FIELD,
            "x1": XML_FIELD,
            "y1": XML_FIELD,
            "x2": XML_FIELD,
            "y2": XML_FIELD,
        }
    ),  # fmt: skip
    st.data(),
)
def test_voc_xml_reads_or_fails_naming_the_file(tmp_path, fields, data):
    tmp_path = _fresh(tmp_path)
    from pipeline.tasks.detection.readers import read_voc

    root = tmp_path / "voc"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "JPEGImages" / "x.jpg"), np.zeros((40, 60, 3), np.uint8))
    (root / "ImageSets" / "Main" / "train.txt").write_text("x\n")
    xml = VOC_XML.format(stem="x", **fields).encode()
    if data.draw(st.booleans()):
        xml = data.draw(mutated_bytes(xml))
    path = root / "Annotations" / "x.xml"
    path.write_bytes(xml)
    out = _fails_cleanly(lambda: read_voc(root, "train"), path, root)
    if out is not None:
        split, names = out
        _check_split(split, len(names))


# === YOLO txt and data.yaml ===

YOLO_LINE = st.lists(
    st.one_of(st.integers(-2, 5).map(str), st.floats(-1, 2).map(str), st.just("nan"), st.text(max_size=4)),
    max_size=7,
).map(" ".join)


@FUZZ
@given(st.lists(YOLO_LINE, max_size=5), st.data())
def test_yolo_labels_read_or_fail_naming_the_file_and_line(tmp_path, lines, data):
    tmp_path = _fresh(tmp_path)
    from pipeline.tasks.detection.readers import read_yolo, read_yolo_yaml

    images, labels = tmp_path / "images" / "train", tmp_path / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    cv2.imwrite(str(images / "x.jpg"), np.zeros((40, 60, 3), np.uint8))
    txt = labels / "x.txt"
    txt.write_text("\n".join(["0 0.5 0.5 0.2 0.2", *lines]))
    split = _fails_cleanly(lambda: read_yolo(images, ("a", "b", "c")), txt)
    if split is not None:
        _check_split(split, 3)
    yaml_doc = {"path": str(tmp_path), "train": "images/train", "val": "images/train", "names": ["a", "b", "c"]}
    yaml_doc = data.draw(mutated_json(yaml_doc, 2))
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(json.dumps(yaml_doc))  # JSON is YAML
    out = _fails_cleanly(lambda: read_yolo_yaml(data_yaml), data_yaml)
    if out is not None:
        assert all(isinstance(n, str) for n in out[2])


# === Mask PNGs ===


@FUZZ
@given(
    st.lists(st.integers(0, 255), min_size=1, max_size=3),
    st.integers(0, 60),
    st.sampled_from(["L", "P", "RGB", "size"]),
    st.booleans(),
)
def test_mask_pngs_never_make_phantom_classes(tmp_path, stray, stray_pixels, mode, settle):
    """Masks of classes 0..2 with stray values on a few pixels, saved as gray, palette or
    RGB PNGs or at the wrong size: an error naming the file, or exactly 3 classes."""
    tmp_path = _fresh(tmp_path)
    from PIL import Image

    from pipeline.core import config
    from pipeline.core.images import InputSpec
    from pipeline.tasks.segmentation.readers import RARE_SHARE, load

    for split in ("train", "val"):
        for i in range(2):
            (tmp_path / "images" / split).mkdir(parents=True, exist_ok=True)
            (tmp_path / "masks" / split).mkdir(parents=True, exist_ok=True)
            m = np.zeros((40, 48), np.uint8)
            m[5:20, 5:20], m[22:35, 25:45] = 1, 2
            cv2.imwrite(str(tmp_path / "images" / split / f"{i}.png"), np.full((40, 48, 3), 90, np.uint8))
            cv2.imwrite(str(tmp_path / "masks" / split / f"{i}.png"), m)
    bad = tmp_path / "masks" / "train" / "1.png"
    m = np.zeros((40, 48), np.uint8)
    m[5:20, 5:20], m[22:35, 25:45] = 1, 2
    flat = m.reshape(-1)
    flat[:stray_pixels] = np.resize(np.array(stray, np.uint8), stray_pixels)
    if mode == "L":
        Image.fromarray(m, "L").save(bad)
    elif mode == "P":
        im = Image.fromarray(m, "P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        im.save(bad)
    elif mode == "RGB":
        Image.fromarray(np.stack([m, m, (m.astype(np.uint16) * 3 % 256).astype(np.uint8)], -1), "RGB").save(bad)
    else:
        Image.fromarray(m[:30], "L").save(bad)
    sets = ["data.format=masks", f"data.path={tmp_path}", "model.input_size=32"]
    if settle:
        sets.append("data.num_classes=3")
    cfg = config.load(None, sets, task="segmentation")
    data = _fails_cleanly(lambda: load(cfg.data, InputSpec(32)), bad)
    if data is None:
        return
    written = flat[:stray_pixels]
    extra = sorted(set(written[(written > 2) & (written != 255)].tolist()))  # 255: data.ignore_index
    if settle or not extra:  # settled by the config, or the stray values were ids 0..2
        assert len(data.class_names) == 3, (stray, stray_pixels, mode, data.class_names)
        return
    # Inferred: only from values with no gap below them and a fair share of the pixels.
    labelled = 4 * 40 * 48
    assert len(data.class_names) == extra[-1] + 1 and extra == list(range(3, extra[-1] + 1))
    assert all((written == v).sum() >= RARE_SHARE * labelled for v in extra)


# === Config YAML and --set values ===

CONFIG_KEYS = [
    "task", "data.format", "data.val_split", "data.class_names", "data.num_classes", "model.input_size",
    "model.width", "model.backbone", "model.weights", "train.epochs", "train.batch_size", "train.learning_rate",
    "prune.target_sparsity", "export.variants", "export.detection_postprocess", "evaluate.threads", "nonsense.key",
]  # fmt: skip
SET_VALUES = st.one_of(
    st.text(max_size=10),
    st.integers(-5, 10**6).map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(["[]", "[a,b]", "[float32,int8]", "null", "true", "{a: 1}", "[", "'", "nan", "-1"]),
)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(CONFIG_KEYS), SET_VALUES), max_size=3), st.binary(max_size=64))
def test_config_values_and_files_load_or_fail_with_a_config_error(tmp_path, sets, yaml_tail):
    tmp_path = _fresh(tmp_path)
    from pipeline.core import config
    from pipeline.core.errors import ConfigError

    overrides = [f"{k}={v}" for k, v in sets]
    try:
        cfg = config.load(None, overrides)
    except ConfigError as e:
        assert str(e)
    else:
        assert cfg.train.batch_size >= 1 and 0 < cfg.data.val_split < 1
    path = tmp_path / "config.yaml"
    path.write_bytes(b"train:\n  epochs: 2\n" + yaml_tail)
    _fails_cleanly(lambda: config.load(path), path)


# === Run-folder files: JSON, CSV logs, .h5 weights ===


@FUZZ
@given(st.data())
def test_run_folder_files_read_or_fail_naming_the_file(tmp_path, data):
    tmp_path = _fresh(tmp_path)
    from pipeline.core.rundir import read_csv_log, read_json

    csv_base = b"epoch,accuracy,loss,val_accuracy,val_loss\n0,0.5,1.2,0.55,1.1\n1,0.6,1.0,0.6,1.0\n"
    path = tmp_path / "train_log.csv"
    path.write_bytes(data.draw(mutated_bytes(csv_base)))
    rows = _fails_cleanly(lambda: read_csv_log(path, "rerun"), path)
    if rows is not None:
        assert all(isinstance(v, float) for r in rows for v in r.values())
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(data.draw(mutated_bytes(b'{"stages": {"train": {"status": "done"}}}')))
    _fails_cleanly(lambda: read_json(manifest, "rerun"), manifest)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from pipeline.core import config
    from pipeline.stages.weights import save_weights
    from pipeline.tasks import get_task

    cfg = config.load(None, ["model.input_size=32", "model.width=0.35"], task="classification")
    model = get_task("classification").build_model(cfg, 3)
    path = tmp_path_factory.mktemp("w") / "float.h5"
    save_weights(model, path)
    return cfg, path.read_bytes()


@settings(FUZZ, max_examples=max(8, EXAMPLES // 4))
@given(st.data())
def test_truncated_or_flipped_weights_fail_naming_the_file(tmp_path, tiny_weights, data):
    tmp_path = _fresh(tmp_path)
    from pipeline.stages.weights import load_weights
    from pipeline.tasks import get_task

    cfg, blob = tiny_weights
    path = tmp_path / "float.h5"
    path.write_bytes(data.draw(mutated_bytes(blob)))
    model = get_task("classification").build_model(cfg, 3)
    _fails_cleanly(lambda: load_weights(model, path), path)


# === Exported models: .tflite and sidecar ===


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from pipeline.core import config
    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import run_stage

    root = tmp_path_factory.mktemp("export")
    sets = ["model.input_size=32", "model.width=0.35", "data.synthetic_samples=32", "train.epochs=1"]
    sets += ["train.batch_size=8", "export.variants=[float32,int8]", f"export.dir={root / 'exports'}"]
    run = RunDir(root / "run")
    cfg = config.load(None, sets, task="classification")
    run_stage("train", run, cfg)
    paths = run_stage("export", run, run.load_config())
    return {k: Path(v) for k, v in paths.items()}


@settings(FUZZ, max_examples=max(10, EXAMPLES // 2))
@given(st.sampled_from(["float32", "int8"]), st.data())
def test_damaged_tflite_and_sidecars_fail_naming_the_file(tmp_path, tiny_export, variant, data):
    tmp_path = _fresh(tmp_path)
    from pipeline.runtime.inspect_model import describe
    from pipeline.runtime.runner import RunOptions, load_model

    src = tiny_export[variant]
    model = tmp_path / f"{variant}.tflite"
    side = model.with_suffix(".json")
    what = data.draw(st.sampled_from(["model", "sidecar", "other_sidecar"]))
    model.write_bytes(data.draw(mutated_bytes(src.read_bytes())) if what == "model" else src.read_bytes())
    side_doc = json.loads(src.with_suffix(".json").read_text())
    if what == "sidecar":
        side.write_text(json.dumps(data.draw(mutated_json(side_doc))))
    elif what == "other_sidecar":  # another model's sidecar: the other variant's input type
        other = tiny_export["int8" if variant == "float32" else "float32"]
        side.write_text(other.with_suffix(".json").read_text())
    else:
        side.write_text(json.dumps(side_doc))
    m = _fails_cleanly(lambda: load_model(RunOptions(model=model, source="0", display=False)), model, side)
    if m is not None and what == "model":
        # A flipped byte the interpreter accepts still runs, or fails naming the file.
        _fails_cleanly(lambda: describe(model), model)
