"""TFLite model metadata: round trip through our reader, and MediaPipe Tasks as the client."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from pipeline.core.images import InputSpec
from pipeline.core.metadata import MetadataError, add_metadata, associated_files, read_metadata, read_model_file

SPEC = InputSpec(size=32)
CLASSES = ["cat", "dog", "bird"]
SEG_CLASSES = ["background", "disc", "square"]
SEG_SIG = [
    {
        "name": "scores",
        "kind": "per_class_scores",
        "shape": [1, 32, 32, 3],
        "meaning": "per-pixel softmax",
        "activation": "none",
    }
]
MP_VENV = ROOT / ".venv-mediapipe"


def _images(n: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def _classifier():
    from pipeline._keras import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(len(CLASSES), activation="softmax")(x))


def _segmenter():
    from pipeline._keras import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    return keras.Model(inp, keras.layers.Conv2D(len(SEG_CLASSES), 1, activation="softmax")(x))


def _detector():
    from pipeline._keras import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp))
    boxes = keras.layers.Reshape((6, 4))(keras.layers.Dense(24, activation="sigmoid")(x))
    scores = keras.layers.Reshape((6, 3))(keras.layers.Dense(18, activation="sigmoid")(x))
    return keras.Model(inp, [boxes, scores])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny classifier, segmenter and detector, float32 and int8, with metadata."""
    from pipeline._keras import keras
    from pipeline.stages.export import convert, representative_dataset
    from pipeline.tasks import get_task

    keras.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("meta")
    rep = representative_dataset(_images(), SPEC)
    cls = get_task("classification")
    det_sig = [
        {"name": "boxes", "kind": "boxes", "shape": [1, 6, 4], "meaning": "x1 y1 x2 y2 in input pixels"},
        {"name": "scores", "shape": [1, 6, 3], "meaning": "per-class score per box"},
    ]
    jobs = {
        "classification": (_classifier(), lambda y: cls.serving(y, None), cls.output_signature(CLASSES), CLASSES),
        "segmentation": (_segmenter(), None, SEG_SIG, SEG_CLASSES),
        "detection": (_detector(), lambda y: {"boxes": y[0], "scores": y[1]}, det_sig, CLASSES),
    }
    paths = {}
    for task, (model, serving, sig, names) in jobs.items():
        for preset in ("float32", "int8") if task != "detection" else ("float32",):
            blob = convert(model, preset, rep, serving=serving)
            blob = add_metadata(
                blob,
                name=f"tiny {task}",
                description=f"a tiny {task} model",
                version="edgepipe test",
                spec=SPEC,
                outputs=sig,
                class_names=names,
            )
            paths[task, preset] = out / f"{task}_{preset}.tflite"
            paths[task, preset].write_bytes(blob)
    return paths


@pytest.mark.slow
def test_classifier_metadata_round_trips_every_field(models):
    for preset, dtype in (("float32", "float32"), ("int8", "uint8")):
        md = read_metadata(models["classification", preset].read_bytes())
        assert (md["name"], md["description"], md["version"]) == (
            "tiny classification",
            "a tiny classification model",
            "edgepipe test",
        )
        (inp,) = md["inputs"]
        assert inp["content"] == "ImageProperties" and inp["color_space"] == "RGB"
        assert inp["normalization"] == {"mean": [0.0] * 3, "std": [255.0] * 3}
        assert inp["stats"]["max"][0] == (1.0 if dtype == "float32" else 255.0)
        (out,) = md["outputs"]
        assert out["name"] == "scores" and out["labels"] == CLASSES
        assert out["associated_files"] == [{"name": "labels.txt", "type": "TENSOR_AXIS_LABELS"}]
        assert md["associated_files"] == ["labels.txt"]


@pytest.mark.slow
def test_segmenter_and_detector_metadata_describe_mask_and_boxes(models):
    seg = read_metadata(models["segmentation", "int8"].read_bytes())
    assert seg["custom"] == {"SEGMENTER_METADATA": {"activation": "NONE"}}
    assert seg["outputs"][0]["color_space"] == "GRAYSCALE" and seg["outputs"][0]["labels"] == SEG_CLASSES
    assert seg["min_parser_version"] == "1.5.0"
    det = read_metadata(models["detection", "float32"].read_bytes())
    by_name = {o["name"]: o for o in det["outputs"]}
    assert by_name["boxes"]["box"] == {"index": [0, 1, 2, 3], "type": "BOUNDARIES", "coordinates": "PIXEL"}
    assert by_name["scores"]["labels"] == CLASSES and "labels" not in by_name["boxes"]


@pytest.mark.slow
def test_detector_output_metadata_follows_the_file_order(models):
    """Metadata pairs with output tensors by position in the file, not by name."""
    from ai_edge_litert.interpreter import Interpreter

    blob = models["detection", "float32"].read_bytes()
    it = Interpreter(model_content=blob)
    shapes = [tuple(d["shape"]) for d in it.get_output_details()]
    names = [o["name"] for o in read_metadata(blob)["outputs"]]
    assert [{(1, 6, 4): "boxes", (1, 6, 3): "scores"}[s] for s in shapes] == names


@pytest.mark.slow
def test_metadata_leaves_the_model_runnable_and_rewrites_cleanly(models, tmp_path):
    from pipeline.runtime.tflite_model import TFLiteModel

    path = models["classification", "float32"]
    before = TFLiteModel(path, SPEC, threads=1)(np.stack(_images(2)))[0]
    again = add_metadata(
        path.read_bytes(),
        name="renamed",
        description="d",
        version="2",
        spec=SPEC,
        outputs=[{"name": "scores", "shape": [1, 3]}],
        class_names=["a", "b", "c"],
    )
    with pytest.raises(ValueError, match="1 output tensors but the output signature lists 2"):
        add_metadata(
            path.read_bytes(),
            name="n",
            description="d",
            version="1",
            spec=SPEC,
            outputs=[{"name": "a"}, {"name": "b"}],
            class_names=CLASSES,
        )
    p2 = tmp_path / "again.tflite"
    p2.write_bytes(again)
    md = read_metadata(again)
    assert md["name"] == "renamed" and md["outputs"][0]["labels"] == ["a", "b", "c"]
    assert list(associated_files(again)) == ["labels.txt"]  # replaced, not appended twice
    np.testing.assert_allclose(TFLiteModel(p2, SPEC, threads=1)(np.stack(_images(2)))[0], before, atol=1e-6)


def test_model_without_metadata_reads_as_none_and_foreign_files_fail(tmp_path):
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT()
    m.version = 3
    b = flatbuffers.Builder(0)
    b.Finish(m.Pack(b), b"TFL3")
    assert read_metadata(bytes(b.Output())) is None
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(MetadataError, match="x.tflite: not a TFLite model"):
        read_model_file(bad)
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        read_model_file(tmp_path / "missing.tflite")


# === MediaPipe Tasks as the client ===


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _mediapipe_python() -> Path:
    """The MediaPipe venv's Python (``make mediapipe-venv``), created here if missing."""
    py = Path(os.environ.get("EDGEPIPE_MEDIAPIPE_PYTHON", MP_VENV / "bin" / "python"))
    probe = [str(py), "-c", "import mediapipe.tasks.python.vision"]
    if py.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    # mediapipe needs opencv-contrib-python, which clashes with opencv-python: own venv.
    for cmd in (
        ["python3", "-m", "venv", str(MP_VENV)],
        [str(MP_VENV / "bin" / "pip"), "install", "--quiet", "mediapipe==1.2.2"],
    ):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            pytest.skip(f"cannot create the MediaPipe venv ({' '.join(cmd)}): {r.stderr[-500:]}")
    return MP_VENV / "bin" / "python"


def _run_mediapipe(jobs: list[dict], tmp_path: Path) -> list[dict]:
    job_file, out_file = tmp_path / "job.json", tmp_path / "out.json"
    job_file.write_text(json.dumps(jobs))
    r = subprocess.run(
        [str(_mediapipe_python()), str(ROOT / "tests" / "mediapipe_client.py"), str(job_file), str(out_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out_file.read_text())


@pytest.mark.slow
def test_mediapipe_tasks_reproduce_our_predictions_and_labels(models, tmp_path):
    from pipeline.runtime.tflite_model import TFLiteModel

    image = _images(3)[2]
    np.save(tmp_path / "img.npy", image)
    keys = [
        ("classification", "float32"),
        ("classification", "int8"),
        ("segmentation", "float32"),
        ("segmentation", "int8"),
    ]
    kinds = {"classification": "classifier", "segmentation": "segmenter"}
    jobs = [{"model": str(models[k]), "kind": kinds[k[0]], "image": str(tmp_path / "img.npy")} for k in keys]
    results = _run_mediapipe(jobs, tmp_path)
    for key, res in zip(keys, results):
        ours = TFLiteModel(models[key], SPEC, threads=1)(image[None])[0][0]
        tol = 1e-4 if key[1] == "float32" else 1.0 / 255 + 1e-6  # one uint8 step
        if key[0] == "classification":
            got = {c["index"]: c for c in res["categories"]}
            assert [got[i]["label"] for i in range(len(CLASSES))] == CLASSES
            np.testing.assert_allclose([got[i]["score"] for i in range(len(CLASSES))], ours, atol=tol)
            assert res["categories"][0]["index"] == int(ours.argmax())
        else:
            assert res["labels"] == SEG_CLASSES
            conf = np.stack([np.asarray(m, np.float32).reshape(32, 32) for m in res["confidence_masks"]], -1)
            np.testing.assert_allclose(conf, ours, atol=tol)  # a softmax in the model: activation NONE
            mask = np.asarray(res["category_mask"]).reshape(32, 32)
            assert (mask == ours.argmax(-1)).mean() >= 0.99  # ties between equal uint8 scores may differ


@pytest.fixture(scope="module")
def backbone_models(tmp_path_factory):
    """Task models on keras.applications backbones ((p - 128) / 128 input), float32 and
    int8, exported the way the export stage does it."""
    from conftest import tiny_config

    from pipeline._keras import keras
    from pipeline.stages.export import convert, representative_dataset
    from pipeline.tasks import get_task

    keras.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("meta_backbones")
    paths = {}
    for backbone, task_name in (
        ("mobilenet_v2", "classification"),
        ("mobilenet_v3_small_minimalistic", "segmentation"),
    ):
        cfg = tiny_config(f"model.backbone={backbone}", "model.depth=1.0", "model.input_size=32", task=task_name)
        spec = cfg.input_spec()
        task = get_task(task_name)
        names = CLASSES if task_name == "classification" else SEG_CLASSES
        model = task.build_model(cfg, len(names))
        rep = representative_dataset(_images(), spec)
        for preset in ("float32", "int8"):
            blob = convert(model, preset, rep, serving=lambda y, t=task, c=cfg: t.serving(y, c))
            blob = add_metadata(
                blob,
                name=backbone,
                description=backbone,
                version="edgepipe test",
                spec=spec,
                outputs=task.output_signature(names),
                class_names=names,
            )
            paths[backbone, preset] = (out / f"{backbone}_{preset}.tflite", spec, task_name)
            paths[backbone, preset][0].write_bytes(blob)
    return paths


@pytest.mark.slow
def test_mediapipe_matches_us_on_keras_applications_backbones(backbone_models, tmp_path):
    """Their [-1, 1] input: MediaPipe feeds raw pixels to the uint8 model, so its input
    quantization must be (p - 128) / 128 exactly, or MediaPipe's scores drift from ours."""
    from pipeline.runtime.tflite_model import TFLiteModel

    image = _images(3)[1]
    np.save(tmp_path / "img.npy", image)
    keys = sorted(backbone_models)
    kinds = {"classification": "classifier", "segmentation": "segmenter"}
    jobs = [
        {"model": str(backbone_models[k][0]), "kind": kinds[backbone_models[k][2]], "image": str(tmp_path / "img.npy")}
        for k in keys
    ]
    for key, res in zip(keys, _run_mediapipe(jobs, tmp_path)):
        path, spec, task_name = backbone_models[key]
        md = read_metadata(path.read_bytes())
        assert md["inputs"][0]["normalization"] == {"mean": [128.0] * 3, "std": [128.0] * 3}
        m = TFLiteModel(path, spec, threads=1)
        if key[1] == "int8":
            assert m.input["quantization"] == (pytest.approx(1 / 128), 128)
        ours = m(image[None])[0][0]
        tol = 1e-4 if key[1] == "float32" else 1.0 / 255 + 1e-6
        if task_name == "classification":
            got = {c["index"]: c["score"] for c in res["categories"]}
            np.testing.assert_allclose([got[i] for i in range(len(CLASSES))], ours, atol=tol)
        else:
            conf = np.stack([np.asarray(c, np.float32).reshape(32, 32) for c in res["confidence_masks"]], -1)
            # our segmenters give logits, and their metadata's SOFTMAX has MediaPipe turn
            # them into probabilities (confidence masks that sum to 1, as apps expect)
            np.testing.assert_allclose(conf, _softmax(ours), atol=tol)
            np.testing.assert_allclose(conf.sum(-1), 1.0, atol=1e-3)
