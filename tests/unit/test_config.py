import pickle

import pytest

from classeg.config import ConfigError, load_config


def test_defaults_load_without_editing():
    cfg = load_config()
    assert cfg.train.engine == "horovod"
    assert cfg.ingest.split == [0.7, 0.15, 0.15]
    assert cfg["score.tumor_threshold"] is None  # the classifier's operating point
    assert cfg.spark.extra == {}


def test_precedence_file_then_values_then_set(tmp_path):
    conf = tmp_path / "job.yaml"
    conf.write_text("train:\n  epochs: 3\n  lr: 0.01\ningest:\n  image_size: 128\n")
    cfg = load_config([conf], ["train.lr=0.0003", "spark.extra={spark.executor.memory: 2g}"],
                      {"train.epochs": 5, "train.arch": None})
    assert (cfg.train.epochs, cfg.train.lr, cfg.ingest.image_size) == (5, 0.0003, 128)
    assert cfg.train.arch == "resnet18"
    assert cfg.spark.extra == {"spark.executor.memory": "2g"}


@pytest.mark.parametrize("override, message", [
    ("train.engin=torch", "unknown config key 'train.engin': section 'train' accepts"),
    ("trian.engine=torch", "unknown config key 'trian.engine': the top level accepts"),
    ("train.engine=spark", "train.engine must be one of ['horovod', 'torch'], got 'spark'"),
    ("train.epochs=many", "train.epochs expects an integer, got 'many'"),
    ("train.epochs=0", "train.epochs must be at least 1, got 0"),
    ("ingest.split=0.5,0.5,0.5", "ingest.split must be three non-negative fractions summing to 1"),
    ("score.tumor_threshold=1.5", "score.tumor_threshold must be between 0 and 1, got 1.5"),
    ("train.augment=maybe", "train.augment expects true or false, got 'maybe'"),
    ("train", "--set expects section.key=value, got 'train'"),
])
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)


def test_missing_conf_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config([tmp_path / "nope.yaml"])


def test_bad_key_in_conf_file_names_file_and_key(tmp_path):
    conf = tmp_path / "bad.yaml"
    conf.write_text("score:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'score.batchsize'"):
        load_config([conf])


def test_split_list_from_comma_string_and_pickle_roundtrip():
    cfg = load_config(overrides=["ingest.split=0.8,0.1,0.1", "train.run_id=abc"])
    assert cfg.ingest.split == [0.8, 0.1, 0.1]
    assert cfg.train.run_id == "abc"
    clone = pickle.loads(pickle.dumps(cfg))
    assert clone == cfg and clone.train.run_id == "abc"


def test_replace_validates():
    cfg = load_config()
    assert cfg.replace(train__epochs=2).train.epochs == 2
    with pytest.raises(ConfigError, match="train.head must be one of"):
        cfg.replace(train__head="mlp")


# ------------------------------------------------------------------ sections: the dataclasses and the YAML agree

import dataclasses  # noqa: E402
import typing  # noqa: E402

import yaml  # noqa: E402

from classeg import config as config_module  # noqa: E402
from classeg.sections import SECTIONS, ScoreSection, Section, TrainSection  # noqa: E402
from classeg.training import collectives  # noqa: E402


def _yaml_defaults() -> dict:
    with open(config_module.DEFAULT_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _literal_fields():
    """(dotted key, accepted values) for every Literal field, read straight off the dataclasses."""
    for section, cls in SECTIONS.items():
        for name, hint in typing.get_type_hints(cls).items():
            if typing.get_origin(hint) is typing.Literal:
                yield f"{section}.{name}", typing.get_args(hint)


def test_yaml_sections_and_keys_are_exactly_the_dataclass_fields():
    defaults = _yaml_defaults()
    assert list(defaults) == list(SECTIONS) == ["spark", "s3", "ingest", "train", "score", "emr"]
    for section, cls in SECTIONS.items():
        fields = [field.name for field in dataclasses.fields(cls)]
        assert sorted(defaults[section]) == sorted(fields), section
        assert all(field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
                   for field in dataclasses.fields(cls)), f"{cls.__name__}: defaults live in the YAML only"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["score"].update(new_key=1),
     r"section 'score' and classeg.sections.ScoreSection differ: keys without a field \['new_key'\]"),
    (lambda d: d["train"].pop("epochs"), r"fields without a default \['epochs'\]"),
    (lambda d: d.update(extra_section={}), r"must hold the sections"),
    (lambda d: d["train"].update(engine="spark"), r"train.engine must be one of \['horovod', 'torch'\], got 'spark'"),
])
def test_a_default_file_that_disagrees_with_the_dataclasses_is_refused(tmp_path, monkeypatch, edit, message):
    defaults = _yaml_defaults()
    edit(defaults)
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(defaults), encoding="utf-8")
    monkeypatch.setattr(config_module, "DEFAULT_PATH", path)
    with pytest.raises(ConfigError, match=message):
        load_config()


def test_every_literal_default_is_one_of_its_choices():
    defaults = _yaml_defaults()
    literals = dict(_literal_fields())
    assert len(literals) == 14
    for dotted, choices in literals.items():
        section, name = dotted.split(".")
        assert defaults[section][name] in choices, dotted


def test_choices_are_what_the_annotations_say():
    assert config_module.CHOICES == dict(_literal_fields())
    # The closed sets the pipeline is built around, written here by hand as the reference.
    assert config_module.CHOICES["train.engine"] == ("horovod", "torch")
    assert config_module.CHOICES["ingest.dataset"] == ("lgg", "figshare", "folders")
    assert config_module.CHOICES["train.loss"] == ("focal_tversky", "dice", "bce_dice")
    # the engines' allreduce dtypes (Horovod reduces no bf16)
    assert config_module.CHOICES["train.grad_compression"] == collectives.GRAD_COMPRESSION == ("none", "fp16")
    assert sorted(config_module.CHOICES) == [
        "ingest.dataset", "ingest.read", "s3.sse", "train.arch", "train.class_weights", "train.engine",
        "train.grad_compression", "train.head", "train.loss", "train.optimizer", "train.schedule",
        "train.segment_slices", "train.strategy", "train.task"]


def test_annotations_of_keys_with_null_or_open_defaults():
    hints = {name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()}
    assert hints["score"]["tumor_threshold"] == float | None
    assert hints["score"]["patient_key_secret"] == str | None
    assert hints["score"]["modalities"] == list[str] and hints["score"]["tumor_classes"] == list[str]
    assert hints["ingest"]["split"] == list[float]
    assert hints["spark"]["extra"] == hints["emr"]["tags"] == dict[str, typing.Any]
    assert hints["emr"]["bid_price"] == str | None and hints["train"]["run_id"] == str | None
    defaults = _yaml_defaults()
    for section, fields in hints.items():
        for name, hint in fields.items():
            if defaults[section][name] is None:
                assert type(None) in typing.get_args(hint), f"{section}.{name} defaults to null"


def test_loaded_values_have_their_annotated_types():
    cfg = load_config()
    assert cfg.score.modalities == ["MR"] and cfg.score.patient_key_secret is None
    scalar = {bool: bool, int: int, float: float, str: str}
    for section, cls in SECTIONS.items():
        for name, hint in typing.get_type_hints(cls).items():
            value = getattr(getattr(cfg, section), name)
            if typing.get_origin(hint) is typing.Literal:
                assert value in typing.get_args(hint)
            elif hint in scalar:
                assert type(value) is scalar[hint], f"{section}.{name}: {value!r}"
            elif typing.get_origin(hint) is list:
                assert isinstance(value, list) and all(isinstance(v, typing.get_args(hint)[0]) for v in value)
            elif typing.get_origin(hint) is dict:
                assert isinstance(value, dict)
            else:
                assert value is None or isinstance(value, typing.get_args(hint)[0]), f"{section}.{name}"


def test_sections_are_frozen_dataclasses():
    cfg = load_config()
    assert isinstance(cfg.train, TrainSection) and isinstance(cfg.score, ScoreSection)
    assert all(isinstance(getattr(cfg, name), Section) for name in SECTIONS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.engine = "torch"
    with pytest.raises(AttributeError, match="read-only"):
        cfg.train = cfg.score
    with pytest.raises(AttributeError, match="no config section 'trian'"):
        cfg.trian
    assert cfg.train.engine == "horovod"


@pytest.mark.parametrize("override, message", [
    ("ingest.read=sometimes", "ingest.read must be one of ['auto', 'tasks', 'binaryfile'], got 'sometimes'"),
    ("score.tumor_threshold=abc", "score.tumor_threshold expects a number or null, got 'abc'"),
    ("train.run_id=[1, 2]", "train.run_id expects a string or null, got [1, 2]"),
    ("train.monitor={a: 1}", "train.monitor expects a string, got {'a': 1}"),
    ("s3.max_attempts=2.5", "s3.max_attempts expects an integer, got 2.5"),
    ("train.lr=true", "train.lr expects a number, got True"),
    ("ingest.split=a,0.5,0.5", "ingest.split[0] expects a number, got 'a'"),
    ("score.modalities={MR: 1}", "score.modalities expects a list (YAML list or comma-separated), got {'MR': 1}"),
    ("spark.extra=5", "spark.extra expects a mapping, got 5"),
    ("train.engine.x=1", "unknown config key 'train.engine.x': train.engine is a single value, not a map"),
    ("score.patient_key_secrets=x", "unknown config key 'score.patient_key_secrets': section 'score' accepts"),
    ("train=5", "train is a section; expected a mapping, got 5"),
])
def test_wrong_types_choices_and_keys_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)


@pytest.mark.parametrize("values, message", [
    ({"train.arch": 5}, "train.arch must be one of ['resnet18', 'resnet50'], got 5"),
    ({"ingest.split": "x"}, "ingest.split[0] expects a number, got 'x'"),
    ({"score.full": "maybe"}, "score.full expects true or false, got 'maybe'"),
    ({"emr.tags": ["a"]}, "emr.tags expects a mapping, got ['a']"),
])
def test_typed_values_are_checked_by_annotation(values, message):
    with pytest.raises(ConfigError) as err:
        load_config(values=values)
    assert message in str(err.value)


def test_conf_file_values_are_checked_by_annotation(tmp_path):
    conf = tmp_path / "bad.yaml"
    conf.write_text("train:\n  strategy: all\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.strategy must be one of \['frozen', 'partial', "
                                          r"'finetune'\], got 'all'"):
        load_config([conf])


def test_dates_and_string_fields_keep_their_text(tmp_path):
    conf = tmp_path / "job.yaml"
    conf.write_text("score:\n  run_date: 2026-01-31\n  tumor_classes: [glioma, meningioma]\n")
    cfg = load_config([conf], ["train.run_id=0042", "emr.bid_price=0.6", "score.modalities=MR,CT",
                               "ingest.split=1,0,0", "train.weights=null", "score.tumor_threshold=1",
                               "score.run_id=2026-02-01"])
    assert cfg.score.run_date == "2026-01-31"
    assert cfg.score.tumor_classes == ["glioma", "meningioma"]
    assert cfg.train.run_id == "0042" and cfg.emr.bid_price == "0.6" and cfg.score.run_id == "2026-02-01"
    assert cfg.score.modalities == ["MR", "CT"]
    assert cfg.ingest.split == [1.0, 0.0, 0.0] and all(type(f) is float for f in cfg.ingest.split)
    assert cfg.train.weights is None
    assert cfg.score.tumor_threshold == 1.0 and type(cfg.score.tumor_threshold) is float
    assert load_config(overrides=["score.run_date=2026-01-31"]).score.run_date == "2026-01-31"
    assert load_config(overrides=["score.tumor_classes=no,yes"]).score.tumor_classes == ["no", "yes"]
    assert load_config(overrides=["score.modalities=[]"]).score.modalities == []


def test_map_entries_and_dotted_lookup():
    cfg = load_config(overrides=["spark.extra.spark.executor.memory=2g", "emr.tags={team: imaging}"])
    assert cfg.spark.extra == {"spark.executor.memory": "2g"}
    assert cfg["spark.extra.spark.executor.memory"] == "2g"
    assert cfg["emr.tags"] == {"team": "imaging"} and cfg["train.engine"] == "horovod"
    assert cfg["train"] is cfg.train
    for missing in ("train.nope", "nope", "train.engine.x", "spark.extra.nope"):
        with pytest.raises(KeyError):
            cfg[missing]


def test_to_dict_is_a_deep_copy_and_replace_checks_ranges():
    cfg = load_config()
    data = cfg.to_dict()
    assert data["score"]["modalities"] == ["MR"] and data["train"]["engine"] == "horovod"
    data["ingest"]["split"].append(0.0)
    section = cfg.s3.to_dict()
    section["region"] = "eu-west-1"
    assert cfg.ingest.split == [0.7, 0.15, 0.15] and cfg.s3.region == "us-east-1"
    assert cfg == load_config() and cfg != cfg.replace(train__epochs=2)
    with pytest.raises(ConfigError, match="train.epochs must be at least 1, got 0"):
        cfg.replace(train__epochs=0)
    with pytest.raises(ConfigError, match="score.full expects true or false, got 'maybe'"):
        cfg.replace(score__full="maybe")


def test_pickled_config_keeps_frozen_sections():
    cfg = load_config(overrides=["score.modalities=CT", "spark.extra={a: b}"])
    clone = pickle.loads(pickle.dumps(cfg))
    assert clone == cfg and clone.score == cfg.score and clone.score.modalities == ["CT"]
    assert clone.spark.extra == {"a": "b"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        clone.score.full = True


def test_cli_flags_take_their_choices_from_the_annotations():
    import argparse

    from classeg.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    seen = {}
    for command in ("ingest", "train", "score"):
        for action in commands[command]._actions:
            if action.dest.startswith("cfg:"):
                seen[action.dest[4:]] = action.choices
    assert {key for key, choices in seen.items() if choices} == {
        "ingest.dataset", "train.task", "train.engine", "train.arch", "train.head", "train.strategy"}
    for key, choices in seen.items():
        assert choices == config_module.CHOICES.get(key), key
    args = parser.parse_args(["train", "--engine", "torch", "--arch", "resnet50"])
    assert (vars(args)["cfg:train.engine"], vars(args)["cfg:train.arch"]) == ("torch", "resnet50")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--engine", "spark"])
