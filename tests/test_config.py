import dataclasses
from pathlib import Path

import pytest

from pipeline.core import config
from pipeline.core.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "pipeline" / "configs"


def test_no_config_gives_task_defaults():
    cfg = config.load(None, task="classification")
    assert cfg.task == "classification"
    assert cfg.data.format == "synthetic"
    assert cfg.export.variants == ("auto",)


def test_empty_file_is_the_defaults(tmp_path: Path):
    f = tmp_path / "empty.yaml"
    f.write_text("")
    assert config.load(f) == config.load(None)


def test_yaml_and_overrides_apply_in_order(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\n  batch_size: 8\nmodel:\n  input_size: 96\n")
    cfg = config.load(f, ["train.epochs=3", "export.variants=float32,int8", "evaluate.latency_threads=[1,4]"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.input_size) == (3, 8, 96)
    assert cfg.export.variants == ("float32", "int8")
    assert cfg.evaluate.latency_threads == (1, 4)


def test_scientific_notation_is_a_number(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  learning_rate: 1e-3\n")
    assert config.load(f, ["prune.learning_rate=5e-4"]).train.learning_rate == 1e-3


def test_config_is_frozen():
    cfg = config.load(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, words",
    [
        (["train.epochz=3"], ["train.epochz", "3"]),
        (["nope.x=1"], ["nope"]),
        (["train.epochs=three"], ["train.epochs", "three"]),
        (["train.epochs=2.5"], ["train.epochs", "2.5"]),
        (["train.epochs=0"], ["train.epochs", "0"]),
        (["data.val_split=1.5"], ["data.val_split", "1.5"]),
        (["model.width=-1"], ["model.width", "-1"]),
        (["model.channels=2"], ["model.channels", "2"]),
        (["train.mixed_precision=maybe"], ["train.mixed_precision", "maybe"]),
        (["data.augment=yes please"], ["data.augment", "yes please"]),
        (["data.format=coco"], ["data.format", "coco"]),
        (["data.format=folder"], ["data.path"]),
        (["export.variants=float32,int4"], ["export.variants", "int4"]),
        (["train.learning_rate=0"], ["train.learning_rate", "0"]),
        (["train"], ["train", "key=value"]),
        (["data.val_split=0"], ["data.val_split", "0"]),
        (["export.variants=auto,int8"], ["export.variants", "auto"]),
        (["evaluate.latency_threads=[0,-3]"], ["evaluate.latency_threads[0]", "0"]),
        (["train.seed=-1"], ["train.seed", "-1"]),
        (["data.seed=-1"], ["data.seed", "-1"]),
        (["model.dropout=nan"], ["model.dropout", "nan"]),
        (["train.learning_rate=.nan"], ["train.learning_rate", "nan"]),
        (["data.path=2024"], ["data.path", "2024", "quote"]),
    ],
)
def test_bad_values_name_the_key_and_value(override, words):
    with pytest.raises(ConfigError) as e:
        config.load(None, override)
    for w in words:
        assert w in str(e.value)


def test_bad_yaml_names_the_file(tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        config.load(f)
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(f)
    with pytest.raises(ConfigError, match="missing.yaml"):
        config.load(tmp_path / "missing.yaml")


def test_task_mismatch_between_file_and_flag(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("task: segmentation\n")
    with pytest.raises(ConfigError, match="task"):
        config.load(f, task="classification")


def test_resolved_config_round_trips_through_yaml(tmp_path: Path):
    cfg = config.load(None, ["train.epochs=4", "data.class_names=[a, b]"])
    f = tmp_path / "resolved.yaml"
    f.write_text(config.dump(cfg))
    assert config.load(f) == cfg


def test_reference_lists_every_key_users_rely_on():
    ref = config.reference()
    for key in [
        "data.format",
        "data.path",
        "data.val_split",
        "model.input_size",
        "model.width",
        "train.epochs",
        "train.batch_size",
        "train.learning_rate",
        "prune.target_sparsity",
        "prune.epochs",
        "qat.epochs",
        "export.variants",
        "evaluate.threads",
    ]:
        assert f"`{key}`" in ref


def test_example_configs_ship_and_load():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert files
    for f in files:
        config.load(f)


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_the_task_yaml_spells_out_the_task_defaults(task):
    """`configs/<task>.yaml` documents the defaults; the task's ``default_config`` is what
    runs without ``--config``. A default changed in one place only would make the two
    disagree silently (it did: a width changed in the YAML alone)."""
    import dataclasses

    shipped = dataclasses.asdict(config.load(CONFIGS / f"{task}.yaml", task=task))
    default = dataclasses.asdict(config.load(None, task=task))
    # export.variants is spelt out in the YAML so users see the list that `auto` picks from.
    for d in (shipped, default):
        d["export"].pop("variants")
    assert shipped == default


def test_an_unknown_task_is_a_config_error():
    with pytest.raises(ConfigError, match="task"):
        config.load(None, task="pose")


def test_list_overrides_read_numbers_as_numbers_and_names_as_text():
    assert config.load(None, ["evaluate.latency_threads=1,4"]).evaluate.latency_threads == (1, 4)
    assert config.load(None, ["evaluate.latency_threads=2"]).evaluate.latency_threads == (2,)
    assert config.load(None, ["data.class_names=0,1,2"]).data.class_names == ("0", "1", "2")


def test_a_home_relative_data_path_and_an_open_lower_bound_read_as_a_user_means(monkeypatch):
    monkeypatch.setenv("HOME", "/home/ann")
    cfg = config.load(None, ["data.format=folder", "data.path=~/photos", "export.dir=~/models"])
    assert cfg.data.path == str(Path("/home/ann/photos")) and cfg.export.dir == "/home/ann/models"
    with pytest.raises(config.ConfigError, match=r"data.val_split: 0.0 must be greater than 0.0"):
        config.load(None, ["data.val_split=0"])
