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
