"""The whole chain on tiny synthetic data: every stage, every variant, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.images import normalize
from pipeline.core.sidecar import read_sidecar
from pipeline.core.variants import VARIANTS
from pipeline.runtime.tflite_model import ModelFileError, TFLiteModel, open_interpreter
from pipeline.stages.weights import rebuild

pytestmark = pytest.mark.slow

# (max, mean) |LiteRT - Keras| on softmax scores, per preset: float32 is the same
# maths; float16 weights round at ~1e-3; int8 scores come in steps of 1/256 after
# every activation of a tiny, briefly trained model was quantized, so single
# outliers are allowed there and the mean and the top-1 check below are the sharp ones.
TOLERANCE = {"float32": (1e-4, 1e-5), "float16": (2e-2, 2e-3), "dynamic": (5e-2, 1e-2), "int8": (0.35, 0.05)}


def _val_images(run, cfg, n=96):
    from pipeline.tasks import get_task

    task = get_task(cfg.task)
    data = task.load_data(cfg)
    x, y = next(task.eval_batches(data, cfg, cfg.input_spec(), n))
    return x, y, task.class_names(data)


def test_every_stage_wrote_its_outputs_and_the_manifest(chain):
    run, cfg, results = chain
    for model in ("float", "pruned", "qat", "pqat"):
        assert run.weights(model).is_file()
    manifest = json.loads(run.manifest_path.read_text())
    stages = [s["stage"] for s in manifest["stages"]]
    assert stages == ["train", "prune", "qat:qat", "qat:pqat", "export", "evaluate"]
    listed = json.loads((run.path / "exports.json").read_text())["variants"]
    assert all(Path(p).is_absolute() for p in listed.values()), "evaluate must work from any directory"
    for s in manifest["stages"]:
        assert s["status"] == "ok" and s["seconds"] > 0 and s["outputs"]
    assert all(len(h) == 64 for h in manifest["stages"][1]["inputs"].values())
    assert (run.path / "config.yaml").is_file() and (run.path / "train_log.csv").is_file()


def test_pruning_reaches_the_target_sparsity_and_pqat_keeps_it(chain):
    run, cfg, results = chain
    assert results["prune"]["sparsity"] == pytest.approx(cfg.prune.target_sparsity, abs=0.03)
    assert results["qat"]["pqat"]["sparsity"] == pytest.approx(results["prune"]["sparsity"], abs=0.01)
    assert results["qat"]["qat"]["sparsity"] < 0.05


def test_all_variants_exported_with_labels_and_sidecars(chain):
    run, cfg, results = chain
    exported = results["export"]
    assert set(exported) == set(VARIANTS)
    folder = Path(next(iter(exported.values()))).parent
    assert folder.name == run.name
    labels = (folder / "labels.txt").read_text().split()
    assert labels == ["circle", "square", "triangle"]
    for name, path in exported.items():
        side = read_sidecar(path)
        assert side["task"] == "classification" and side["variant"] == name
        assert side["class_names"] == labels
        assert side["input"]["size"] == [32, 32] and side["input"]["layout"] == "NHWC"
        assert side["input"]["normalization"] == {"mean": [0.0] * 3, "std": [255.0] * 3}
        assert side["outputs"][0]["tensor_shape"] == [1, 3]
        assert len(side["sources"]) == 2 and all(len(h) == 64 for h in side["sources"].values())
        if name.endswith("int8"):
            assert side["input"]["dtype"] == "uint8" and side["outputs"][0]["dtype"] == "uint8"
            assert side["input"]["quantization"]["scale"] == pytest.approx(1 / 255, rel=0.05)
        else:
            assert side["input"]["dtype"] == "float32"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_litert_output_matches_keras_within_tolerance(chain, variant):
    """keras-hub's run_litert_export_test idiom: same images through Keras and LiteRT."""
    from pipeline.stages.optimize import build_qat

    run, cfg, results = chain
    v = VARIANTS[variant]
    x, _, names = _val_images(run, cfg)
    w = run.weights(v.source)
    keras_model = (
        build_qat(cfg, len(names), v.source, w) if v.source in ("qat", "pqat") else rebuild(cfg, len(names), w)
    )
    expected = keras_model.predict_on_batch(normalize(x, cfg.input_spec()))
    got = TFLiteModel(results["export"][variant], cfg.input_spec(), threads=1)(x)[0]
    tol, mean_tol = TOLERANCE[v.preset]
    diff = np.abs(got - expected)
    # int8 rounding can swing the probabilities of an image whose top classes are nearly
    # tied (seen in CI: 1 image of 96 at 0.43 with the mean at 0.026): at most 1 in 50
    # images beyond the tolerance, and the mean within its own.
    beyond = (diff.max(-1) > tol).mean()
    assert beyond <= 0.02 and diff.mean() <= mean_tol, (diff.max(), beyond, diff.mean())
    # Where Keras is clear about its top-1 (a margin that a deviation within the tolerance
    # could still overturn: at most 0.2), LiteRT agrees.
    top2 = np.sort(expected, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > min(tol, 0.2)
    assert clear.mean() > 0.3, "the tiny model is too unsure for this check to mean anything"
    assert (got.argmax(-1) == expected.argmax(-1))[clear].mean() >= 0.95


def test_report_json_has_the_documented_shape(chain):
    run, cfg, results = chain
    report = json.loads((run.path / "report.json").read_text())
    assert report["task"] == "classification" and report["metric"] == "accuracy"
    assert isinstance(report["keras_float"], float)
    assert set(report["variants"]) == set(VARIANTS)
    types = {
        "path": str,
        "size_bytes": int,
        "gzip_bytes": int,
        "sparsity": float,
        "metric": float,
        "latency_ms_p50": float,
        "latency_ms_p90": float,
        "agreement": float,
    }
    for name, v in report["variants"].items():
        for key, tp in types.items():
            assert isinstance(v[key], tp), (name, key)
        assert 0 <= v["metric"] <= 1 and 0 <= v["agreement"] <= 1
        assert v["latency_ms_p90"] >= v["latency_ms_p50"] > 0
        assert v["gzip_bytes"] < v["size_bytes"]
    vs = report["variants"]
    # Tiny model: flatbuffer overhead dominates; the 0.3x target is the benchmark's.
    assert vs["int8"]["size_bytes"] < 0.75 * vs["float32"]["size_bytes"]
    assert vs["pruned_int8"]["sparsity"] > 0.3 > vs["int8"]["sparsity"]
    assert vs["float32"]["agreement"] == 1.0
    md = (run.path / "report.md").read_text()
    for name in VARIANTS:
        assert f"| {name} |" in md


def test_the_tiny_model_learned_something(chain):
    run, cfg, results = chain
    report = json.loads((run.path / "report.json").read_text())
    assert report["keras_float"] > 0.6  # three classes: chance is 1/3
    assert report["variants"]["int8"]["metric"] > 0.6


def test_int8_model_runs_on_xnnpack_except_io_and_softmax(chain):
    run, cfg, results = chain
    report = json.loads((run.path / "report.json").read_text())
    allowed = {"QUANTIZE", "SOFTMAX", "DEQUANTIZE"}
    for name in ("int8", "qat_int8"):
        assert set(report["variants"][name]["undelegated_ops"]) <= allowed
    assert report["variants"]["float32"]["undelegated_ops"] == {}


def test_truncated_model_file_is_a_clear_error(chain, tmp_path):
    run, cfg, results = chain
    blob = Path(results["export"]["int8"]).read_bytes()
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ModelFileError, match="cut.tflite"):
        open_interpreter(bad)
    text = tmp_path / "text.tflite"
    text.write_text("not a model at all")
    with pytest.raises(ModelFileError, match="not a TFLite model"):
        open_interpreter(text)


def test_corrupt_run_folder_files_are_clear_errors_before_the_work(chain, tmp_path):
    """A truncated weights file, a garbage manifest or exports list: the file and the fix are named."""
    import shutil

    from pipeline.core import config
    from pipeline.core.errors import DataError
    from pipeline.core.rundir import RunDir, StageInputError
    from pipeline.stages.chain import run_stage

    shared, cfg, results = chain
    run = RunDir(tmp_path / shared.name)
    shutil.copytree(shared.path, run.path)
    cfg = run.load_config([f"export.dir={tmp_path / 'exports'}", "export.variants=float32"])

    run.manifest_path.write_text("garbage{{{")
    with pytest.raises(StageInputError, match=r"manifest\.json: not valid JSON"):
        run_stage("export", run, cfg)
    assert not (tmp_path / "exports").exists(), "the stage ran before the manifest was checked"
    run.manifest_path.write_text('{"run": "x", "stages": []}')

    (run.path / "exports.json").write_text("nope")
    with pytest.raises(StageInputError, match=r"exports\.json: not valid JSON.*edgepipe export"):
        run_stage("evaluate", run, cfg)

    # A retrain that fails keeps the config the trained models were built with.
    before = run.config_path.read_text()
    bad = config.load(None, ["data.format=folder", f"data.path={tmp_path / 'nowhere'}", "model.width=0.5"])
    with pytest.raises(DataError, match="nowhere"):
        run_stage("train", run, bad)
    assert run.config_path.read_text() == before

    blob = run.weights("float").read_bytes()
    run.weights("float").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(StageInputError, match=r"float\.h5: cannot load weights.*edgepipe train"):
        run_stage("prune", run, cfg)


def test_a_stage_rerun_alone_with_overrides(chain, tmp_path):
    """Any stage runs alone from the run folder; --set updates the saved config."""
    import shutil

    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import run_stage

    shared, cfg, results = chain
    run = RunDir(tmp_path / shared.name)  # a copy: the shared run stays as the other tests saw it
    shutil.copytree(shared.path, run.path)
    cfg2 = run.load_config(["export.variants=float32,int8", f"export.dir={tmp_path / 'exports'}"])
    out = run_stage("export", run, cfg2)
    assert sorted(out) == ["float32", "int8"]
    assert "float32" in run.config_path.read_text()
    assert all(Path(p).parent == tmp_path / "exports" / run.name for p in out.values())
    assert "float32" not in shared.config_path.read_text()


def test_structured_2_4_pruning_leaves_two_zeros_in_every_group_of_four(chain, tmp_path):
    import shutil

    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import run_stage

    shared, cfg, results = chain
    run = RunDir(tmp_path / "run")
    shutil.copytree(shared.path, run.path)
    out = run_stage("prune", run, run.load_config(["prune.structured_2_4=true"]))
    model = rebuild(cfg, 3, run.weights("pruned"))
    checked = 0
    for v in model.weights:
        if v.name.endswith("/kernel:0") and "_dw" not in v.name and v.shape[-2] % 4 == 0:
            k = v.numpy()
            groups = np.moveaxis(k, -2, -1).reshape(-1, 4)  # runs of 4 along the input channels
            if (groups == 0).mean() > 0.4:  # a layer TFMOT pruned
                assert ((groups == 0).sum(-1) >= 2).all(), v.name
                checked += 1
    assert checked >= 5 and 0.3 < out["sparsity"] <= 0.5


@pytest.mark.slow
def test_a_qat_fine_tune_that_hurts_keeps_the_calibrated_start(chain, tmp_path):
    """On little data QAT can lose what calibration gave: the best validation epoch,
    epoch 0 included, is what the stage keeps."""
    import shutil

    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import run_stage

    run, cfg, results = chain
    copy = RunDir(tmp_path / "run")
    shutil.copytree(run.path / "models", copy.path / "models")
    copy.save_config(cfg)
    # A learning rate this large wrecks the weights in one epoch.
    out = run_stage("qat", copy, copy.load_config(["qat.learning_rate=5.0", "qat.sources=[float]"]))
    assert out["qat"]["accuracy"] >= results["train"]["accuracy"] - 0.1, (out, results["train"])
    assert not (copy.path / "checkpoints" / "qat_best.h5").exists()


def test_all_rerun_skips_the_stages_done_and_redoes_what_changed(chain, tmp_path):
    """``edgepipe all`` again on a run folder resumes: a stage already done with the
    same config, data and models is skipped (an ``all`` interrupted in its export must
    not retrain); what a changed setting or a changed model touches runs again."""
    import hashlib
    import shutil
    import subprocess

    from conftest import edgepipe_cmd, subprocess_env

    from pipeline.core import config
    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import CHAIN, done

    shared, cfg, _ = chain
    assert [s for s in CHAIN if done(shared, cfg, s)] == list(CHAIN)
    later = config.load(None, ["evaluate.latency_runs=7"], base=cfg.to_dict())  # one evaluate setting
    assert [s for s in CHAIN if done(shared, later, s)] == ["train", "prune", "qat", "export"]
    longer = config.load(None, [f"train.epochs={cfg.train.epochs + 1}"], base=cfg.to_dict())
    assert not any(done(shared, longer, s) for s in CHAIN)

    # a copy of the run elsewhere (as a run folder moved: its manifest names the old
    # place), exported to a folder of its own
    run = RunDir(tmp_path / "copied")
    shutil.copytree(shared.path, run.path)
    float_sha = hashlib.sha256(run.weights("float").read_bytes()).hexdigest()

    def all_(*sets: str) -> tuple[list[str], list[str]]:
        cmd = edgepipe_cmd("all", "--run-dir", str(run.path), *[a for s in sets for a in ("--set", s)])
        r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "| variant" in r.stdout or "variant" in r.stdout  # the report
        skipped = [s for s in CHAIN if f"=== {s}: done before" in r.stderr]
        ran = [s for s in CHAIN if f"=== {s} ===" in r.stderr]
        return skipped, ran

    assert all_(f"export.dir={tmp_path / 'exports'}") == (["train", "prune", "qat"], ["export", "evaluate"])
    assert all_() == (list(CHAIN), [])  # the same command again: nothing to do
    assert all_("evaluate.latency_runs=3") == (["train", "prune", "qat", "export"], ["evaluate"])
    # a model lost: its fine-tune runs again, and what reads it (a new QAT model drops the
    # export list, even when a seeded CPU run makes it the same to the byte)
    run.weights("pqat").unlink()
    assert all_() == (["train", "prune"], ["qat", "export", "evaluate"])
    assert (run.path / "exports.json").is_file()
    assert hashlib.sha256(run.weights("float").read_bytes()).hexdigest() == float_sha
    stages = [s["stage"] for s in json.loads(run.manifest_path.read_text())["stages"]]
    assert stages.count("train") == 1 and "latency_runs: 3" in run.config_path.read_text()
    # only that fine-tune: the QAT of the float model, still there and current, is not redone
    assert stages.count("qat:qat") == 1 and stages.count("qat:pqat") == 2


def test_a_replaced_model_takes_what_was_made_from_it_along(chain, tmp_path):
    """Pruning again replaces the pruned model: the prune-preserving QAT model made from
    the old one, and the last export, go with it (export shipped a pqat_int8 of the old
    pruned model); the QAT model of the float one stays."""
    import shutil

    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import run_stage

    shared, cfg, _ = chain
    run = RunDir(tmp_path / "again")
    shutil.copytree(shared.path, run.path)
    run_stage("prune", run, cfg)
    assert run.weights("pruned").is_file() and run.weights("qat").is_file()
    assert not run.weights("pqat").exists() and not (run.path / "pqat_log.csv").exists()
    assert (run.path / "qat_log.csv").is_file() and not (run.path / "exports.json").exists()
