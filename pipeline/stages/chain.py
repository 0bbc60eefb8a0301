"""The stages in order, and the demo: what ``edgepipe all`` and ``edgepipe demo`` run."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pipeline.core import config
from pipeline.core.cluster import worker_role
from pipeline.core.errors import EdgepipeError
from pipeline.core.registry import get_spec, task_names
from pipeline.core.rundir import RunDir
from pipeline.stages.resume import completed, stage_key

log = logging.getLogger(__name__)

CHAIN = ("train", "prune", "qat", "export", "evaluate")
DEMO_RUN = "runs/demo"


def run_stage(
    name: str, run: RunDir, cfg: config.Config, variants: list[str] | None = None, out_dir=None, resume: bool = False
):
    """Call one stage's library function (each imports TensorFlow only when called);
    ``resume``: QAT skips a fine-tune already done (``edgepipe all``)."""
    if name == "train":
        from pipeline.stages.train import train

        return train(run, cfg)
    if name in ("prune", "qat"):
        from pipeline.stages import optimize

        return optimize.prune(run, cfg) if name == "prune" else optimize.qat(run, cfg, skip_done=resume)
    if name == "export":
        from pipeline.stages.export import export

        return export(run, cfg, variants, out_dir)
    if name == "evaluate":
        from pipeline.stages.evaluate import evaluate

        return evaluate(run, cfg)
    raise ValueError(f"Unknown stage {name!r}. Expected one of {list(CHAIN)}.")


def run_chain(run: RunDir, cfg: config.Config, stages=CHAIN, resume: bool = False) -> dict:
    """``stages`` in order on one run folder; each stage's result by name. With
    ``resume`` (``edgepipe all``), a stage already done with this config, this data and
    these models is skipped (:func:`done`): an ``all`` interrupted in its export picks
    up at the export, not at a retrain."""
    results, reached = {}, set()
    role = worker_role()
    if resume and "export" in stages and role.chief:
        # before any work: an export folder that is another run's would stop this chain
        # only after its training (pipeline.stages.export.check_export_folder)
        from pipeline.stages.export import check_export_folder

        check_export_folder(Path(cfg.export.dir) / run.name, run)
    for name in stages:
        if name != "train" and not role.chief:
            # Training is the only stage that runs on every worker; the chief goes on alone
            # (two processes writing one run folder is what must never happen).
            log.info("%s %d: the chief runs %s and the stages after it", role.task_type, role.index, name)
            break
        reached.add(name)
        if resume and done(run, cfg, name):
            log.info("=== %s: done before with this config, data and models: skipped (`edgepipe %s` redoes it) ===",
                     name, name)  # fmt: skip
            saved = run.config_path.read_text() if run.config_path.is_file() else None
            if name == "train" and role.chief and saved != config.dump(cfg):
                run.save_config(cfg)  # what a later stage's --set changed: as train would have saved it
            continue
        log.info("=== %s ===", name)
        results[name] = run_stage(name, run, cfg, resume=resume)
    if "export" in reached and run.cache.is_dir():
        # The fine-tunes that read the disk cache are done; it can be as large as the dataset.
        size = sum(f.stat().st_size for f in run.cache.rglob("*") if f.is_file())
        shutil.rmtree(run.cache, ignore_errors=True)
        log.info("removed the input cache %s (%.0f MB): the stages that read it are done", run.cache, size / 2**20)
    return results


def done(run: RunDir, cfg: config.Config, name: str) -> bool:
    """Whether stage ``name`` is done in ``run`` for ``cfg`` (:func:`completed`): QAT
    when each of its fine-tunes is, export for the variants and folder it would write."""
    if name == "qat":
        jobs = ["qat:qat"] if "float" in cfg.qat.sources else []
        jobs += ["qat:pqat"] if "pruned" in cfg.qat.sources and run.has("pruned") else []
        return bool(jobs) and all(completed(run, j, stage_key(cfg, j)) for j in jobs)
    extra = None
    if name == "export":
        from pipeline.stages.export import export_extra, resolve_variants

        try:
            extra = export_extra(resolve_variants(cfg.export.variants, run), Path(cfg.export.dir) / run.name)
        except EdgepipeError:
            return False
    return completed(run, name, stage_key(cfg, name, extra))


def demo(task: str = "all", run_dir: Path | None = None, overrides=()) -> list[RunDir]:
    """The whole chain on the built-in synthetic set at each task's demo settings
    (``TaskSpec.demo_settings``: minutes on 2 CPU cores); the run folders."""
    tasks = list(task_names()) if task == "all" else [task]
    for t in tasks:
        if t not in task_names():
            raise config.ConfigError(f"demo: unknown task {t!r}; expected one of {[*task_names(), 'all']}")
    runs = []
    for t in tasks:
        run = RunDir(run_dir if run_dir and len(tasks) == 1 else Path(f"{DEMO_RUN}-{t}"))
        cfg = config.load(None, [*get_spec(t).demo_settings, *overrides], task=t)
        log.info("=== demo: %s ===", t)
        run_chain(run, cfg)
        runs.append(run)
    return runs
