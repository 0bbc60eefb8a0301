"""Streamed input and ``data.cache``: every task reads its files in parallel and keeps
the prepared samples in memory, on disk or nowhere, with the same samples either way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT, subprocess_env, tiny_config

from pipeline.core.errors import ConfigError

N = 12  # images per split


def _colour(i: int) -> np.ndarray:
    """Image ``i``'s own flat colour, so samples can be told apart after preparation."""
    k = i if i < 100 else N + i - 100
    return np.array([10 * k + 5, (97 * k) % 240 + 5, 240 - 9 * k], np.uint8)


def _write(path: Path, i: int, shape=(40, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.broadcast_to(_colour(i)[::-1], (*shape, 3)).copy())


def _classification(root: Path) -> list[str]:
    for split in ("train", "val"):
        for i in range(N):
            _write(root / split / ("a" if i % 2 else "b") / f"{i}.png", i + (100 if split == "val" else 0))
    return ["data.format=folder", f"data.path={root}"]


def _detection(root: Path) -> list[str]:
    for split in ("train", "val"):
        for i in range(N):
            _write(root / "images" / split / f"{i}.png", i + (100 if split == "val" else 0))
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.4 0.4\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    return ["data.format=yolo", f"data.path={root / 'data.yaml'}"]


def _segmentation(root: Path) -> list[str]:
    for split in ("train", "val"):
        for i in range(N):
            _write(root / "images" / split / f"{i}.png", i + (100 if split == "val" else 0))
            m = np.zeros((40, 48), np.uint8)
            m[10:30, 10 + i : 30 + i] = 1 + i % 2
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "masks" / split / f"{i}.png"), m)
    return ["data.format=masks", f"data.path={root}", "data.num_classes=3"]


WRITERS = {"classification": _classification, "detection": _detection, "segmentation": _segmentation}


def _ids(ds, spec) -> list[int]:
    """Which images a dataset delivered, in order: each image's number, from its colour."""
    from pipeline.core.images import normalize

    ids = [*range(N), *range(100, 100 + N)]
    refs = np.asarray(normalize(np.stack([_colour(i) for i in ids]).astype(np.float32), spec))  # (K, 3)
    centres = np.concatenate([b[0].numpy()[:, spec.size // 2, spec.size // 2] for b in ds])
    return [ids[k] for k in np.abs(centres[:, None] - refs[None]).sum(-1).argmin(1)]


@pytest.mark.parametrize("task", sorted(WRITERS))
def test_every_cache_mode_gives_the_same_samples_and_a_disk_cache_outlives_its_files(tmp_path, task):
    from pipeline.tasks import get_task

    extra = WRITERS[task](tmp_path / "data")
    t = get_task(task)
    got = {}
    for mode in ("off", "memory", "disk"):
        cfg = tiny_config(*extra, "model.input_size=32", "train.batch_size=4", "data.augment=false",
                          f"data.cache={mode}", task=task)  # fmt: skip
        data = t.load_data(cfg)
        spec = cfg.input_spec()
        train, val = t.datasets(data, cfg, spec, tmp_path / f"cache-{mode}")
        got[mode] = (sorted(_ids(train, spec)), _ids(val, spec), sorted(_ids(train, spec)))
        assert got[mode][0] == got[mode][2] == list(range(N)), (mode, got[mode])  # every image once per epoch
        assert sorted(got[mode][1]) == list(range(100, 100 + N))
    assert got["off"] == got["memory"] == got["disk"]
    cached = list((tmp_path / "cache-disk").glob("*.index"))
    assert {p.name.split("-")[0] for p in cached} == {"train", "val"}, cached
    # The disk cache holds the prepared samples: with the files gone, an epoch is whole.
    for p in sorted((tmp_path / "data").rglob("*.png")):
        p.unlink()
    assert sorted(_ids(train, spec)) == list(range(N))


def test_cache_plan_follows_the_budget_and_names_the_data(tmp_path):
    from pipeline.data.stream import plan_cache

    d = tiny_config("data.cache_budget_mb=1").data
    assert plan_cache(d, "train", 100, 10_000, tmp_path, {"a": 1}).mode == "memory"  # 1 MB of 1 MB
    big = plan_cache(d, "train", 1_000, 10_000, tmp_path, {"a": 1})
    assert big.mode == "disk" and big.path.parent == tmp_path and big.path.name.startswith("train-")
    assert plan_cache(d, "train", 1_000, 10_000, tmp_path, {"a": 2}).path != big.path  # other data, other cache
    assert plan_cache(d, "train", 1_000, 10_000, None, {"a": 1}).mode == "off"  # no run folder: read each time
    for mode in ("memory", "off"):
        assert plan_cache(tiny_config(f"data.cache={mode}", "data.cache_budget_mb=0").data, "v", 9, 9, tmp_path,
                          {}).mode == mode  # fmt: skip


def test_the_disk_cache_is_named_by_what_the_samples_are_not_how_they_are_augmented(tmp_path):
    from pipeline.core.images import InputSpec
    from pipeline.data.stream import plan_split

    def path(*extra, size=32):
        cfg = tiny_config("data.cache=disk", *extra, task="segmentation")
        return plan_split(cfg, InputSpec(size), "train", ["a.jpg", "b.jpg"], 100, tmp_path).path

    base = path()
    augmented = ("data.mosaic=0.5", "data.copy_paste=0.5", "data.flip=none", "data.rotation=10", "data.zoom=0.5,2")
    assert path(*augmented) == base
    assert path(size=64) != base and path("data.ignore_index=0") != base


def test_a_file_changed_under_its_name_names_another_disk_cache(tmp_path):
    """Resuming a run (or its prune and QAT) after a photo or the annotations were
    edited in place must not read the prepared samples of the old files."""
    import os

    from pipeline.core.images import InputSpec
    from pipeline.data.stream import plan_split

    photos = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    labels = tmp_path / "train.json"
    for f in (*photos, labels):
        f.write_bytes(b"x" * 10)
    cfg = tiny_config("data.cache=disk", f"data.train_annotations={labels}", task="segmentation")

    def path():
        return plan_split(cfg, InputSpec(32), "train", [str(p) for p in photos], 100, tmp_path).path

    base = path()
    assert path() == base  # the same files: the same cache
    photos[1].write_bytes(b"y" * 11)  # a photo replaced
    assert path() != base
    base = path()
    st = os.stat(labels)
    labels.write_bytes(b"z" * 10)  # the labels edited, same size, a later time
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert path() != base


def test_data_cache_takes_the_old_booleans_and_refuses_other_words():
    assert tiny_config("data.cache=true").data.cache == "auto"
    assert tiny_config("data.cache=off").data.cache == "off"  # YAML 1.1 reads a bare off as false
    with pytest.raises(ConfigError, match=r"data.cache: 'ram' is not one of \['auto', 'memory', 'disk', 'off'\]"):
        tiny_config("data.cache=ram")


def test_a_photo_broken_after_the_check_is_skipped_and_counted_mid_epoch(tmp_path, caplog):
    from pipeline.tasks import get_task

    extra = _segmentation(tmp_path / "data")
    jpg = tmp_path / "data" / "images" / "train" / "3.jpg"
    cv2.imwrite(str(jpg), np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8))
    (tmp_path / "data" / "images" / "train" / "3.png").unlink()
    jpg.write_bytes(jpg.read_bytes()[:-500])  # the header reads, the pixels do not
    cfg = tiny_config(*extra, "model.input_size=32", "train.batch_size=4", "data.augment=false", "data.cache=off",
                      task="segmentation")  # fmt: skip
    t = get_task("segmentation")
    data = t.load_data(cfg)
    assert len(data.train) == N  # the header check passed it
    train, _ = t.datasets(data, cfg, cfg.input_spec())
    with caplog.at_level("WARNING"):
        n = sum(len(b[0]) for b in train)
    assert n == 8  # 11 readable, in full batches of 4
    assert len(data.skipped) == 1 and "3.jpg: truncated JPEG" in caplog.text


def test_a_lock_file_left_by_a_killed_run_does_not_block_the_disk_cache(tmp_path):
    """tf.data's cache refuses a file prefix whose lock file exists; a run killed while
    filling the cache leaves one, and the resumed run must get past it."""
    script = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
from pipeline._keras import tf
from pipeline.data.stream import CachePlan
from pathlib import Path
ds = CachePlan("disk", Path({str(tmp_path / "cache" / "train-x")!r})).apply(tf.data.Dataset.range(100))
it = iter(ds)
next(it); next(it)
os._exit(0)  # killed while the cache was being written
"""
    subprocess.run([sys.executable, "-c", script], check=True, env=subprocess_env(), timeout=300)
    assert list((tmp_path / "cache").glob("*.lockfile*")), "the killed run left no lock file: nothing is tested"
    from pipeline._keras import tf
    from pipeline.data.stream import CachePlan

    plan = CachePlan("disk", tmp_path / "cache" / "train-x")
    assert [int(x) for x in plan.apply(tf.data.Dataset.range(100))] == list(range(100))
    assert [int(x) for x in plan.apply(tf.data.Dataset.range(100))] == list(range(100))  # now from the cache
