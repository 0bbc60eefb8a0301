"""Two real worker processes train together with MultiWorkerMirroredStrategy.

Two ``edgepipe train`` processes on this machine (TF_CONFIG with two free 127.0.0.1
ports) share one run folder, as on a cluster with a shared file system. Checked: both
finish with identical weights; only the chief writes the run folder; the next stages
run on it in one process, unchanged.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SETS = [
    "model.input_size=32", "model.width=0.35", "data.synthetic_samples=96", "train.epochs=2",
    "train.batch_size=16", "train.early_stopping_patience=0",
]  # fmt: skip


def _free_ports(n: int) -> list[int]:
    """Free ports below the kernel's ephemeral range: the workers bind them seconds
    later, after importing TensorFlow, and a port from that range (what binding port 0
    gives) could meanwhile be taken by any outgoing connection, gRPC's own included."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    ports: list[int] = []
    choices = range(20000, max(low, 21000))  # a system whose range starts low: any of these
    for port in random.Random().sample(choices, min(200, len(choices))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports between 20000 and {low}")


def _h5_arrays(path: Path) -> dict[str, np.ndarray]:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _launch(tmp_path: Path, run: Path, extra: list[str]) -> list[subprocess.Popen]:
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        tmp = tmp_path / f"tmp{i}"
        tmp.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            "TMPDIR": str(tmp),
            "EDGEPIPE_KEEP_WORKER_DIR": "1",
            "CUDA_VISIBLE_DEVICES": "",
        }
        cmd = [sys.executable, "-m", "pipeline.cli", "train", "--task", "classification", "--run-dir", str(run)]
        cmd += [a for s in [*SETS, *extra] for a in ("--set", s)]
        log = open(tmp_path / f"worker{i}.log", "w")
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(procs, tmp_path: Path, timeout: float = 600) -> None:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]


@pytest.mark.slow
def test_two_workers_train_together_and_only_the_chief_writes_the_run(tmp_path):
    run = tmp_path / "run"
    _wait(_launch(tmp_path, run, []), tmp_path)

    # Both trained on the collective strategy, in step.
    chief_log = (tmp_path / "worker0.log").read_text()
    assert "MultiWorkerMirroredStrategy" in chief_log
    worker_dirs = list((tmp_path / "tmp1").glob("edgepipe-worker1-*"))
    assert len(worker_dirs) == 1, "the second worker's temporary run folder"
    mine, theirs = _h5_arrays(run / "models" / "float.h5"), _h5_arrays(worker_dirs[0] / "models" / "float.h5")
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)

    # Only the chief wrote the run folder: one train entry, one log, no worker temp dirs.
    manifest = json.loads((run / "manifest.json").read_text())
    assert [s["stage"] for s in manifest["stages"]] == ["train"]
    assert manifest["stages"][0]["results"]["hardware"]["replicas"] == 2
    lines = (run / "train_log.csv").read_text().splitlines()
    assert lines[0].startswith("epoch") and len(lines) == 3
    assert not [p for p in run.rglob("*") if "workertemp" in p.name]
    assert not (run / "checkpoints" / "backup").exists()
    assert not list((tmp_path / "tmp0").glob("edgepipe-*")), "the chief needs no temporary folder"

    # The next stages run on the chief's folder in one process, unchanged.
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    sets = ["export.variants=[float32,int8,qat_int8]", "evaluate.latency_runs=2", "prune.epochs=1", "qat.epochs=1",
            "qat.sources=[float]"]  # fmt: skip
    for stage in ("prune", "qat", "export", "evaluate"):
        cmd = [sys.executable, "-m", "pipeline.cli", stage, "--run-dir", str(run)]
        cmd += [a for s in sets for a in ("--set", s)]
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert set(report["variants"]) >= {"float32", "int8", "qat_int8"}
    stages = [s["stage"] for s in json.loads((run / "manifest.json").read_text())["stages"]]
    assert stages == ["train", "prune", "qat:qat", "export", "evaluate"], stages


@pytest.mark.slow
def test_two_workers_read_their_own_shares_of_an_image_folder(tmp_path):
    """Each worker reads only its share of the training files: the unreadable ones
    each worker reports are disjoint, and together they are all of them."""
    import cv2

    folder = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("dark", "light")):
        (folder / name).mkdir(parents=True)
        for i in range(40):
            img = np.clip(rng.normal(60 + 120 * c, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / name / f"{i:02d}.png"), img)
    broken = sorted(folder.glob("*/0[0-5].png"))
    for p in broken:
        p.write_bytes(b"not a png")
    run = tmp_path / "run"
    extra = ["data.format=folder", f"data.path={folder}", "data.val_split=0.2", "train.batch_size=8"]
    _wait(_launch(tmp_path, run, extra), tmp_path)
    from pipeline.tasks.classification.readers import read_folder

    split = read_folder(folder, 0.2, 0)  # the split both workers made
    n = len(split.train)
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert all(f"reads {n // 2} of the {n} training samples" in log for log in logs), logs[0][-2000:]
    seen = [set(re.findall(r"skipped unreadable image \d+: (\S+?): ", log)) for log in logs]
    broken_val = {str(p) for p in broken} & set(split.val.paths)
    # Every worker reads the whole validation split, and only its own share of training.
    assert seen[0] & seen[1] == broken_val and seen[0] | seen[1] == {str(p) for p in broken}, seen
    assert seen[0] - seen[1] and seen[1] - seen[0], "each worker met unreadable files of its own share only"
    worker_dirs = list((tmp_path / "tmp1").glob("edgepipe-worker1-*"))
    mine, theirs = _h5_arrays(run / "models" / "float.h5"), _h5_arrays(worker_dirs[0] / "models" / "float.h5")
    assert all(np.array_equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.slow
def test_a_worker_whose_peer_never_comes_stops_naming_tf_config_and_the_address(tmp_path):
    import time

    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}),
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--task", "classification", "--run-dir", str(tmp_path / "r")]
    cmd += [a for s in [*SETS, "train.worker_timeout_s=10"] for a in ("--set", s)]
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0, r.stderr[-3000:]
    assert time.monotonic() - t0 < 120
    assert re.search(rf"TF_CONFIG: worker 0 waited 10 s .* cannot reach 127\.0\.0\.1:{ports[1]} \(", r.stderr), (
        r.stderr[-2000:]
    )


@pytest.mark.slow
def test_a_killed_worker_and_a_restart_of_both_resume_from_the_last_backup(tmp_path):
    """Kill worker 1 after the first epoch's backup; the chief must not wait forever;
    restarting both resumes from the backup and finishes the remaining epochs."""
    import time

    run = tmp_path / "run"
    extra = ["train.epochs=4", "data.synthetic_samples=320"]
    procs = _launch(tmp_path, run, extra)
    backup = run / "checkpoints" / "backup"
    deadline = time.monotonic() + 300
    log_csv = run / "train_log.csv"

    def backed_up() -> bool:  # the first epoch ended: logged and its state saved
        return log_csv.is_file() and len(log_csv.read_text().splitlines()) >= 2 and any(backup.rglob("checkpoint"))

    while not backed_up() and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    assert backed_up(), (tmp_path / "worker0.log").read_text()[-3000:]
    procs[1].kill()
    try:
        procs[0].wait(timeout=180)  # the chief notices its peer is gone and stops
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("the chief waited more than 3 minutes for a dead worker")
    assert procs[0].returncode != 0
    assert backup.is_dir(), "the backup survives the failure"
    before = (tmp_path / "worker0.log").read_text()

    _wait(_launch(tmp_path, run, extra), tmp_path)
    after = (tmp_path / "worker0.log").read_text()
    assert "resuming a killed run" in after, after[-3000:]
    assert "Epoch 1/4" not in after, "it started over instead of resuming"
    rows = [line.split(",")[0] for line in (run / "train_log.csv").read_text().splitlines()[1:]]
    assert rows[-1] == "3" and len(set(rows)) == len(rows), rows
    assert (run / "models" / "float.h5").is_file() and not backup.exists()
    assert before != after


@pytest.mark.slow
def test_two_workers_through_a_frozen_backbone_phase(tmp_path):
    """The frozen phase's weights are saved by every worker (reading BatchNorm's
    statistics is a collective): the run must not hang between the phases."""
    run = tmp_path / "run"
    _wait(_launch(tmp_path, run, ["train.freeze_backbone_epochs=1"]), tmp_path, timeout=400)
    worker_dirs = list((tmp_path / "tmp1").glob("edgepipe-worker1-*"))
    mine, theirs = _h5_arrays(run / "models" / "float.h5"), _h5_arrays(worker_dirs[0] / "models" / "float.h5")
    assert all(np.array_equal(mine[k], theirs[k]) for k in mine)
    assert "training phase 'frozen'" in (tmp_path / "worker0.log").read_text()
    assert not (run / "checkpoints" / "frozen_phase.h5").exists()
