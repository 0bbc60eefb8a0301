"""The console script: stage order errors, config errors before work, resume after a kill."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, edgepipe_cmd, subprocess_env


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(edgepipe_cmd(*args), capture_output=True, text=True, env=subprocess_env(), timeout=timeout)


def test_each_stage_is_a_subcommand_and_a_module():
    out = _run("--help")
    choices = set(out.stdout.split("{", 1)[1].split("}", 1)[0].split(","))
    assert {"train", "prune", "qat", "export", "evaluate", "all", "demo", "config"} <= choices
    assert {"inspect", "benchmark", "compare", "run"} <= choices
    for module in (
        "pipeline.train",
        "pipeline.prune",
        "pipeline.qat",
        "pipeline.export",
        "pipeline.evaluate",
        "pipeline.all",
    ):
        r = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=subprocess_env()
        )
        assert r.returncode == 0 and "--run-dir" in r.stdout, module


@pytest.mark.parametrize(
    "stage, first", [("prune", "train"), ("qat", "train"), ("export", "train"), ("evaluate", "export")]
)
def test_a_stage_without_its_inputs_says_which_stage_to_run_first(tmp_path, stage, first):
    from pipeline.core import config

    r = _run(stage, "--run-dir", str(tmp_path / "empty"))
    assert r.returncode == 2 and "edgepipe train" in r.stderr and "Traceback" not in r.stderr
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config.dump(config.load(None, TINY)))
    r = _run(stage, "--run-dir", str(run))
    assert r.returncode == 2
    assert f"run `edgepipe {first}" in r.stderr and "Traceback" not in r.stderr


def test_later_stages_refuse_to_change_the_model_shape(tmp_path):
    from pipeline.core import config
    from pipeline.core.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.save_config(config.load(None, TINY))
    with pytest.raises(config.ConfigError, match="model.width"):
        run.load_config(["model.width=2.0"])
    # the trained value itself (all's --set list reused for one stage) is no change
    width = config.load(None, TINY).model.width
    assert run.load_config([f"model.width={width}", "task=classification"]).model.width == width
    assert run.load_config(["prune.target_sparsity=0.7"]).prune.target_sparsity == 0.7
    assert "target_sparsity: 0.7" in run.config_path.read_text()


def test_a_failed_stage_puts_back_the_config_its_set_changed(tmp_path):
    from pipeline.core import config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config.dump(config.load(None, TINY)))
    before = (run / "config.yaml").read_text()
    (tmp_path / "afile").write_text("")
    # no model yet: the export fails, and its --set must not stay behind to fail the next command
    r = _run("export", "--run-dir", str(run), "--set", f"export.dir={tmp_path / 'afile'}")
    assert r.returncode == 2 and "edgepipe train" in r.stderr
    assert (run / "config.yaml").read_text() == before


def _exported(run, out, name="int8"):
    """A run folder with a config, and a model in ``out`` whose sidecar names that run."""
    from pipeline.core import config
    from pipeline.core.images import InputSpec
    from pipeline.core.rundir import RunDir, sha256
    from pipeline.core.sidecar import Sidecar, write_sidecar

    r = RunDir(run)
    r.save_config(config.load(None, TINY))
    r.weights("float").parent.mkdir(parents=True)
    r.weights("float").write_bytes(str(run).encode())  # weights of its own
    (out / f"{name}.tflite").parent.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.tflite").write_bytes(b"TFL3")
    sources = {str(r.config_path.resolve()): "0", str(r.weights("float").resolve()): sha256(r.weights("float"))}
    write_sidecar(out / f"{name}.tflite", Sidecar(input=InputSpec(32).to_dict(), sources=sources))
    return r


def test_an_export_never_replaces_another_runs_models_and_evaluate_measures_only_its_own(tmp_path):
    from pipeline.core.rundir import RunDir, StageInputError
    from pipeline.stages.evaluate import _check_exported_here
    from pipeline.stages.export import check_export_folder

    out = tmp_path / "exports" / "r1"  # export.dir/<run name>: where exp1/r1 and exp2/r1 both export
    first = _exported(tmp_path / "exp1" / "r1", out)
    second = RunDir(tmp_path / "exp2" / "r1")
    check_export_folder(out, first)  # its own folder: exported again
    with pytest.raises(StageInputError, match=r"exports/r1: holds the models of another run, .*exp1/r1 \(int8"):
        check_export_folder(out, second)
    listed = {"int8": str(out / "int8.tflite")}
    _check_exported_here(first, listed, "redo")
    with pytest.raises(StageInputError, match=r"int8.tflite: exported by another run, .*exp1/r1, not by .*exp2/r1"):
        _check_exported_here(second, listed, "redo")
    # the same run in a folder moved or mounted elsewhere (its weights the same) is still that run
    import shutil

    moved = RunDir(tmp_path / "moved" / "r1")
    shutil.copytree(first.path, moved.path)
    check_export_folder(out, moved)
    _check_exported_here(moved, listed, "redo")
    # a folder left by a run folder that is gone is free; a file or an uncreatable path is an error
    first.config_path.unlink()
    check_export_folder(out, second)
    (tmp_path / "afile").write_text("")
    with pytest.raises(StageInputError, match="afile: is a file, not a folder"):
        check_export_folder(tmp_path / "afile", second)
    with pytest.raises(StageInputError, match="cannot create it"):
        check_export_folder(tmp_path / "afile" / "r1", second)


def test_an_export_holds_its_folder_so_a_second_one_at_the_same_moment_is_refused(tmp_path):
    """Two runs named alike exporting at the same moment both passed the folder check
    made before any work, then wrote into one folder: the export holds the folder's
    lock to its end and checks again under it. (A second export here is simulated by
    holding that lock, as another process's export would.)"""
    from pipeline.core import config
    from pipeline.core.rundir import RunDir, StageInputError, folder_lock
    from pipeline.stages.export import export
    from pipeline.stages.weights import rebuild, save_weights

    cfg = config.load(None, [*TINY, f"export.dir={tmp_path / 'exports'}", "export.representative_samples=8"])
    run = RunDir(tmp_path / "exp2" / "r1")
    run.save_config(cfg)
    save_weights(rebuild(cfg, cfg.data.synthetic_classes), run.weights("float"))
    out = tmp_path / "exports" / "r1"
    out.mkdir(parents=True)
    with folder_lock(out, "export", "export folder", "export elsewhere", tmp_path / "exports" / ".r1.export.lock"):
        with pytest.raises(
            StageInputError, match=r"exports/r1: in use by edgepipe export \(pid \d+ .*export elsewhere"
        ):
            export(run, cfg, ["float32"])
        assert not any(out.iterdir())  # nothing written
    assert Path(export(run, cfg, ["float32"])["float32"]).is_file()  # free once the other ends
    assert not (out / ".lock").exists()  # nothing but the models in what goes to a device
    # into the run folder itself, under the command's own lock of it (export --out RUN)
    with run.lock("export"):
        assert Path(export(run, cfg, ["float32"], out_dir=run.path)["float32"]).parent == run.path


def test_missing_stage_outputs_name_the_producing_stage(tmp_path):
    from pipeline.core import config
    from pipeline.core.rundir import RunDir, StageInputError

    run = RunDir(tmp_path / "run")
    run.save_config(config.load(None))
    with pytest.raises(StageInputError, match="edgepipe train"):
        run.require("float")
    with pytest.raises(StageInputError, match="edgepipe prune"):
        run.require("pruned")
    from pipeline.stages.export import resolve_variants

    run.weights("float").parent.mkdir(parents=True)
    run.weights("float").write_bytes(b"")
    with pytest.raises(StageInputError, match="qat_int8.*edgepipe qat"):
        resolve_variants(["float32", "qat_int8"], run)
    assert "pruned_int8" not in resolve_variants(["auto"], run)


def test_config_errors_are_reported_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: -3\n")
    t0 = time.monotonic()
    r = _run("train", "--task", "classification", "--config", str(bad), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "train.epochs" in r.stderr and "-3" in r.stderr
    assert not (tmp_path / "run").exists()
    r = _run("all", "--task", "classification", "--set", "model.widht=2", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "model.widht" in r.stderr
    assert time.monotonic() - t0 < 120


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--task", "classification", "--run-dir", str(run)]
    sets = [*TINY, "train.epochs=4", "data.synthetic_samples=600", "model.input_size=48"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(
        edgepipe_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env()
    )
    log = run / "train_log.csv"
    deadline = time.monotonic() + 240
    # Kill as soon as the first epoch is logged and backed up: mid-run, for real.
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2 and (run / "checkpoints" / "backup").is_dir():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed"
    assert not (run / "models" / "float.h5").exists()
    epochs_before = [int(r["epoch"]) for r in csv.DictReader(log.open())]
    assert epochs_before and epochs_before[-1] < 3
    # its checkpoint is not resumed under other settings (more epochs, other data...)
    config_then = (run / "config.yaml").read_text()
    other = subprocess.run(
        edgepipe_cmd(*args, "--set", "train.epochs=6"),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert other.returncode == 2 and "holds a killed training of another config or data" in other.stderr
    assert (run / "config.yaml").read_text() == config_then and (run / "checkpoints" / "backup").is_dir()

    r = subprocess.run(edgepipe_cmd(*args), capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming a killed run from" in r.stderr
    epochs = [int(r["epoch"]) for r in csv.DictReader(log.open())]
    resumed = epochs[len(epochs_before) :]
    assert resumed and resumed[0] == epochs_before[-1] + 1, (epochs_before, resumed)
    assert epochs[-1] == 3
    assert (run / "models" / "float.h5").is_file()
    assert not (run / "checkpoints" / "backup").exists()


def test_atomic_writes_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    """Exported models are handed to apps and other users: 0600 would lock them out."""
    import os
    import stat

    from pipeline.core import rundir

    old = os.umask(0o022)
    try:
        rundir._UMASK = 0o022
        rundir.write_bytes(tmp_path / "m.tflite", b"x")
    finally:
        os.umask(old)
        rundir._UMASK = old
    assert stat.S_IMODE((tmp_path / "m.tflite").stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".*"))


def test_atomic_writes_go_through_a_link_and_leave_it(tmp_path):
    """As ``open`` would: the file a link names is replaced, the link stays (the rename
    once replaced /dev/stdout itself); a link to a file not there yet makes it there."""
    from pipeline.core import rundir

    (tmp_path / "real").mkdir()
    (tmp_path / "latest.json").symlink_to(tmp_path / "real" / "v3.json")
    for text in ("one", "two"):
        rundir.write_text(tmp_path / "latest.json", text)
        assert (tmp_path / "latest.json").is_symlink() and (tmp_path / "real" / "v3.json").read_text() == text
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["latest.json", "real", "v3.json"]  # no temporaries


def test_a_file_runs_lines_that_cannot_be_added_stay_named(tmp_path):
    """``--resume-counts`` from a file: the run's lines go to a temporary file and are
    added to the JSONL at the end; where that fails, they stay, and the error says where."""
    from pipeline.core.errors import RunError
    from pipeline.runtime.sinks import BatchLines

    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"frame": 0}\n')
    with BatchLines(jsonl) as lines:
        lines.write('{"frame": 1}\n')
    assert jsonl.read_text() == '{"frame": 0}\n{"frame": 1}\n' and lines.position == len(jsonl.read_bytes())
    with pytest.raises(RunError, match=r"--jsonl .*t.jsonl: cannot add this run's lines to it .*; they are in "):
        with BatchLines(jsonl) as lines:
            lines.write('{"frame": 2}\n')
            jsonl.unlink()
            jsonl.mkdir()  # the path is a folder by the end of the run
    (kept,) = tmp_path.glob(".t.*.jsonl")
    assert kept.read_text() == '{"frame": 2}\n'
    with pytest.raises(ValueError, match="ended early"), BatchLines(tmp_path / "u.jsonl") as lines:
        lines.write('{"frame": 0}\n')
        raise ValueError("ended early")  # a run that fails adds nothing, and leaves nothing behind
    assert (tmp_path / "u.jsonl").read_text() == "" and not list(tmp_path.glob(".u.*"))


@pytest.mark.slow
def test_unreadable_files_that_leave_no_full_batch_are_a_data_error(tmp_path):
    """11 files, batch 11, 3 unreadable: Keras would crash with 'Empty logs'."""
    import cv2
    import numpy as np

    from pipeline.core import config
    from pipeline.core.errors import DataError
    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import run_stage

    data = tmp_path / "data"
    for split, n in (("train", 4), ("val", 2)):
        for c in ("cat", "dog"):
            (data / split / c).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(data / split / c / f"{i}.png"), np.full((16, 16, 3), 60 * i, np.uint8))
    for i in range(3):
        (data / "train" / "dog" / f"bad{i}.jpg").write_bytes(b"garbage")
    sets = [*TINY, "data.format=folder", f"data.path={data}", "train.batch_size=11", "train.epochs=1"]
    cfg = config.load(None, sets, task="classification")
    with pytest.raises(
        DataError, match=r"not one full batch of train.batch_size=11 .*11 files, \d+ of them unreadable"
    ):
        run_stage("train", RunDir(tmp_path / "run"), cfg)


def test_fewer_images_than_a_batch_shrink_the_batch_with_a_warning(tmp_path, caplog):
    """6 training images and train.batch_size=16: training runs on batches of 6."""
    import csv

    import cv2
    import numpy as np

    from pipeline.core import config
    from pipeline.core.rundir import RunDir
    from pipeline.stages.chain import run_stage

    data = tmp_path / "data"
    for split, n in (("train", 3), ("val", 1)):
        for c in ("cat", "dog"):
            (data / split / c).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(
                    str(data / split / c / f"{i}.png"), np.full((16, 16, 3), 60 * i + 80 * (c == "dog"), np.uint8)
                )
    sets = [*TINY, "data.format=folder", f"data.path={data}", "train.batch_size=16", "train.epochs=2"]
    cfg = config.load(None, sets, task="classification")
    run = RunDir(tmp_path / "run")
    with caplog.at_level("WARNING"):
        run_stage("train", run, cfg)
    assert "6 training images, fewer than train.batch_size=16; training with batches of 6" in caplog.text
    assert run.has("float")
    assert len(list(csv.DictReader((run.path / "train_log.csv").open()))) == 2


def test_train_rerun_overrides_wait_for_train_to_save_them(tmp_path):
    """`edgepipe train --run-dir D --set ...` on a trained run: config.yaml changes only in train()."""
    from pipeline.cli import _resolve_for_train, parser
    from pipeline.core import config
    from pipeline.core.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.save_config(config.load(None))
    before = run.config_path.read_text()
    _, cfg = _resolve_for_train(parser().parse_args(["train", "--run-dir", str(run.path), "--set", "train.epochs=3"]))
    assert cfg.train.epochs == 3
    assert run.config_path.read_text() == before


def test_resume_ignores_epochs_logged_without_the_metric(tmp_path):
    from pipeline.core.rundir import RunDir
    from pipeline.stages.fit import best_so_far
    from pipeline.tasks import get_task

    run = RunDir(tmp_path)
    (tmp_path / "train_log.csv").write_text("epoch,loss,val_accuracy\n0,1.0,NA\n1,0.8,0.6\n2,0.7,0.55\n")
    spec = get_task("classification").spec
    assert best_so_far(run.path / "train_log.csv", spec.monitor, spec.monitor_mode) == 0.6


def test_an_int8_input_that_mediapipe_refuses_is_warned_about_at_export(tmp_path, caplog):
    """Classification's default int8 input is uint8 (what MediaPipe Tasks hands over);
    int8 runs on LiteRT but MediaPipe refuses the file, so the export says so."""
    import logging
    import shutil

    from pipeline.core import config
    from pipeline.core.rundir import RunDir
    from pipeline.runtime.tflite_model import open_interpreter
    from pipeline.stages.chain import run_stage
    from pipeline.stages.export import export
    from pipeline.stages.weights import rebuild, save_weights

    cfg = config.load(None, [*TINY, f"export.dir={tmp_path}", "export.representative_samples=8"])
    run = RunDir(tmp_path / "run")
    run.save_config(cfg)
    save_weights(rebuild(cfg, cfg.data.synthetic_classes), run.weights("float"))
    for io, warned in (("uint8", False), ("int8", True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            path = export(run, config.load(None, [f"export.int8_io={io}"], base=cfg.to_dict()), ["int8"])["int8"]
        assert open_interpreter(model_path=path).get_input_details()[0]["dtype"].__name__ == io
        assert (
            any("MediaPipe Tasks and the TFLite Task Library refuse" in r.getMessage() for r in caplog.records)
            is warned
        )
    # a re-export keeps this run's other variants while their model is the same, and
    # removes those a retrain has made stale (they would ship beside labels not theirs)
    export(run, cfg, ["float32", "int8"])
    export(run, cfg, ["int8"])
    assert (tmp_path / "run" / "float32.tflite").is_file()
    for suffix in (".tflite", ".json"):
        shutil.copy(tmp_path / "run" / f"int8{suffix}", tmp_path / "run" / f"int8_v1{suffix}")
    save_weights(rebuild(cfg, cfg.data.synthetic_classes), run.weights("float"))  # a retrain, in effect
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        export(run, cfg, ["int8"])
    assert not (tmp_path / "run" / "float32.tflite").exists() and not (tmp_path / "run" / "float32.json").exists()
    assert any("removed float32.tflite" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "run" / "int8_v1.tflite").is_file()  # a copy the user kept under its own name stays
    assert (tmp_path / "run" / "int8.tflite").is_file()
    # evaluate: a listed model of another input size (another run's) is named, not an error from set_tensor
    from pipeline.core.images import InputSpec
    from pipeline.core.rundir import StageInputError
    from pipeline.stages.evaluate import _measure

    with pytest.raises(
        StageInputError, match=r"int8.tflite: it takes \(32, 32, 3\) input, this run's models take \(64"
    ):
        _measure(Path(path), InputSpec(64), None, [], [], [], None, cfg.evaluate)
    # and an exports.json that lists nothing, or not paths
    for listed, message in (({}, "lists no models"), ({"x": 5}, "variant 'x' has path 5, not a file path")):
        (run.path / "exports.json").write_text(json.dumps({"variants": listed}))
        with pytest.raises(StageInputError, match=message):
            run_stage("evaluate", run, cfg)


def test_a_stage_key_follows_the_config_it_reads_and_the_training_files(tmp_path):
    """What lets ``edgepipe all`` skip a stage: its key changes with the config sections
    it reads, and training's with the data files (added, removed, edited in place)."""
    import os
    import shutil

    from conftest import tiny_config

    from pipeline.stages.resume import stage_key

    photos = tmp_path / "photos"
    for name in ("cat/1.jpg", "dog/1.jpg"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(b"x")
    cfg = tiny_config("data.format=folder", f"data.path={photos}")
    keys = {s: stage_key(cfg, s) for s in ("train", "prune", "evaluate")}
    assert stage_key(tiny_config("data.format=folder", f"data.path={photos}"), "train") == keys["train"]
    later = tiny_config("data.format=folder", f"data.path={photos}", "evaluate.latency_runs=9")
    assert stage_key(later, "train") == keys["train"] and stage_key(later, "prune") == keys["prune"]
    assert stage_key(later, "evaluate") != keys["evaluate"]
    assert stage_key(cfg, "qat:pqat") == stage_key(cfg, "qat")
    # a prune setting: the prune-preserving fine-tune reads it, the one from the float model not
    pruned = tiny_config("data.format=folder", f"data.path={photos}", "prune.epochs=9")
    assert stage_key(pruned, "qat:pqat") != stage_key(cfg, "qat:pqat")
    assert stage_key(pruned, "qat:qat") == stage_key(cfg, "qat:qat") != stage_key(cfg, "qat")
    (photos / "dog" / "2.jpg").write_bytes(b"y")  # a photo added
    added = stage_key(cfg, "train")
    assert added != keys["train"] and stage_key(cfg, "prune") == keys["prune"]  # later stages: by their inputs
    (photos / "cat" / "1.jpg").write_bytes(b"xx")  # a photo replaced
    replaced = stage_key(cfg, "train")
    assert replaced not in (added, keys["train"])
    # another host's copy of the data, at the same data.path, has other file times: the same data
    st = os.stat(photos / "cat" / "1.jpg")
    os.utime(photos / "cat" / "1.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert stage_key(cfg, "train") == replaced
    # a class folder that is a link is read through
    shutil.move(photos / "dog", tmp_path / "dog_elsewhere")
    (photos / "dog").symlink_to(tmp_path / "dog_elsewhere")
    assert stage_key(cfg, "train") == replaced
    # settings of how, not what: a resume with the disk cache or without XLA is the same training
    how = tiny_config("data.format=folder", f"data.path={photos}", "data.cache=disk", "train.xla=off")
    assert stage_key(how, "train") == replaced
    # an annotation file by its content: a label fixed in place, same size, counts
    ann = tmp_path / "ann.json"
    ann.write_text('{"a": 12}')
    coco = ("data.format=coco", f"data.train_annotations={ann}", f"data.path={photos}")
    before = stage_key(tiny_config(*coco, task="detection"), "train")
    ann.write_text('{"a": 13}')
    assert stage_key(tiny_config(*coco, task="detection"), "train") != before


def test_the_data_key_covers_the_folders_a_dataset_file_names_and_labels_by_content(tmp_path):
    """A label fixed in place must train again, wherever the reader finds it: YOLO's
    label files (which only its data.yaml names), VOC's XML under data.path (the same
    size: a class id or a coordinate changed), and images beside a COCO file that no
    data.* setting names."""
    from conftest import tiny_config
    from test_detection import _coco, _voc, _yolo

    from pipeline.stages.resume import stage_key

    def key(*settings):
        return stage_key(tiny_config(*settings, task="detection"), "train")

    yolo = ("data.format=yolo", f"data.path={_yolo(tmp_path, '1 0.5 0.5 0.25 0.5')}")
    before = key(*yolo)
    (tmp_path / "yolo" / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.25 0.5")  # the same size
    assert key(*yolo) != before
    voc = ("data.format=voc", f"data.path={_voc(tmp_path, '<annotation><name>cat</name></annotation>')}")
    before = key(*voc)
    xml = tmp_path / "VOC" / "Annotations" / "0001.xml"
    xml.write_text(xml.read_text().replace("cat", "dog"))
    assert key(*voc) != before
    ann = _coco(tmp_path / "coco")  # the images beside it, in img/: moved up beside the JSON
    for image in (tmp_path / "coco" / "img").iterdir():
        image.rename(tmp_path / "coco" / image.name)
    coco = ("data.format=coco", f"data.train_annotations={ann}")
    before = key(*coco)
    (tmp_path / "coco" / "b.jpg").write_bytes((tmp_path / "coco" / "b.jpg").read_bytes() + b"more")  # replaced
    assert key(*coco) != before
    # ... only the images it lists: that folder may be the working folder, with the run in it
    before = key(*coco)
    (tmp_path / "coco" / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "coco" / "runs" / "r1" / "manifest.json").write_text('{"stages": []}')
    (tmp_path / "coco" / "notes.txt").write_text("not data")
    assert key(*coco) == before
    # YOLO: the splits trained on, not a test split the data.yaml names too
    yaml_path = tmp_path / "yolo" / "data.yaml"
    yaml_path.write_text(yaml_path.read_text() + "test: images/test\n")
    (tmp_path / "yolo" / "images" / "test").mkdir()
    (tmp_path / "yolo" / "labels" / "test").mkdir()
    before = key(*yolo)
    (tmp_path / "yolo" / "labels" / "test" / "t.txt").write_text("0 0.5 0.5 0.25 0.5")
    assert key(*yolo) == before
    # a segmentation mask relabelled in place, the same size (an uncompressed PNG): by content
    seg = tmp_path / "seg"
    for sub in ("images/train", "masks/train"):
        (seg / sub).mkdir(parents=True)
    (seg / "images" / "train" / "a.jpg").write_bytes(b"jpeg")
    (seg / "masks" / "train" / "a.png").write_bytes(bytes([1, 1, 0]))
    masks = ("data.format=masks", f"data.path={seg}")
    before = stage_key(tiny_config(*masks, task="segmentation"), "train")
    (seg / "masks" / "train" / "a.png").write_bytes(bytes([2, 1, 0]))
    assert stage_key(tiny_config(*masks, task="segmentation"), "train") != before
    # what no reader reads, and the desktop rewrites on a glance at the folder, is not in it
    photos = tmp_path / "photos"
    (photos / "cat").mkdir(parents=True)
    (photos / "cat" / "1.jpg").write_bytes(b"x")
    folder = ("data.format=folder", f"data.path={photos}")
    before = stage_key(tiny_config(*folder), "train")
    (photos / ".DS_Store").write_bytes(b"finder")
    (photos / "cat" / "Thumbs.db").write_bytes(b"windows")
    (photos / ".ipynb_checkpoints").mkdir()
    (photos / ".ipynb_checkpoints" / "x.jpg").write_bytes(b"x")
    assert stage_key(tiny_config(*folder), "train") == before
    # QAT calibrates its ranges on export.representative_samples images
    qat = tiny_config("export.representative_samples=9")
    assert stage_key(qat, "qat:qat") != stage_key(tiny_config(), "qat:qat")
    assert stage_key(qat, "qat:pqat") != stage_key(tiny_config(), "qat:pqat")


def test_a_run_folder_in_use_is_an_error_and_a_killed_holder_leaves_no_lock(tmp_path):
    """Two processes in one run folder (a second train started by mistake) would resume
    the first one's live checkpoints or interleave its logs: the second is refused,
    naming the first; a holder killed outright frees the folder (flock)."""
    from pipeline.core import config
    from pipeline.core.rundir import RunDir, StageInputError

    run = RunDir(tmp_path / "run")
    run.save_config(config.load(None, TINY))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipeline.core.rundir import RunDir\n"
         f"with RunDir({str(run.path)!r}).lock('train'):\n    print('held', flush=True); time.sleep(3600)"],
        stdout=subprocess.PIPE, text=True, env=subprocess_env(),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StageInputError, match=rf"run: in use by edgepipe train \(pid {holder.pid} on .*since"):
            with run.lock("prune"):
                pass
        r = _run("prune", "--run-dir", str(run.path))
        assert r.returncode == 2 and f"in use by edgepipe train (pid {holder.pid}" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        holder.kill()
        holder.wait()
    with run.lock("prune"):  # the killed holder's lock went with it
        assert "edgepipe prune" in (run.path / ".lock").read_text()


def test_a_file_system_without_locks_runs_unguarded_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl
    import logging

    from pipeline.core.rundir import RunDir

    def no_flock(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with caplog.at_level(logging.WARNING), RunDir(tmp_path / "run").lock("train"):
        pass
    assert "cannot lock the run folder (No locks available); going on unguarded" in caplog.text


def test_empty_lists_and_out_of_range_benchmark_numbers_are_errors_before_any_work(tmp_path):
    from pipeline.core import config

    for key in ("export.detection_postprocess", "export.variants", "evaluate.latency_threads"):
        with pytest.raises(config.ConfigError, match=f"{key}: empty"):
            config.load(None, [f"{key}=[]"], task="detection")
    model = tmp_path / "m.tflite"  # never opened: the numbers are checked first
    for args, message in (
        (["--threads", "0"], "--threads: must be at least 1, got 0"),
        (["--threads", "1,-2"], "--threads: must be at least 1, got -2"),
        (["--runs", "0"], "--runs: must be at least 1"),
        (["--warmup", "-3"], "--warmup: must be at least 0, got -3"),
    ):
        r = _run("benchmark", str(model), *args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    # a config file's task when --task is not given
    (tmp_path / "det.yaml").write_text("task: detection\n")
    r = _run("config", "--config", str(tmp_path / "det.yaml"))
    assert r.returncode == 0 and "task: detection" in r.stdout
