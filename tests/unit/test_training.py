"""Training pieces without Spark: transfer strategies through a real loop step, schedules, class weights,
shard arithmetic, scan keys, checkpoints, train state and RNG state, the plan, the Petastorm transform, the
operating point, figures, weight checks."""
from __future__ import annotations

import io
import logging
import math
import pickle

import numpy as np
import pytest
import torch

from classeg import imaging
from classeg.artifact import save_artifact
from classeg.config import ConfigError, load_config
from classeg.io import files
from classeg.training import checkpoints
from classeg.training.checkpoints import TrainState, state_checksum, upgrade_metric_names
from classeg.training.collectives import LocalCollectives, for_engine
from classeg import transforms as T
from classeg.training.cache import cache_row
from classeg.training.cache import columns as cache_columns
from classeg.training.data import (
    Shards,
    decode_example,
    row_group_count,
    scan_id_from_key,
    scan_key,
    shard_rows,
)
from classeg.training.job import _check_splits, resolve_weights
from classeg.training.loop import build_model, monitor_spec, train_step
from classeg.training.optim import LRSchedule, build_optimizer, class_weights
from classeg.training.outputs import operating_point
from classeg.training.plan import ModelSpec, Recipe, TrainPlan
from classeg.plots import confusion_matrix_png, dice_histogram_png, overlay_gallery_png, training_curves_png

SPEC = {"size": 32, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "zscore": False}


def _spec(task="classify", **train):
    base = {"task": task, "arch": "resnet18", "head": "linear", "strategy": "finetune", "base_filters": 4,
            "label_smoothing": 0.0, "loss": "dice"}
    spec = SPEC if task == "classify" else {**SPEC, "mean": None, "std": None, "zscore": True}
    return ModelSpec.from_train_config({**base, **train}, class_names=["no", "yes"], input_spec=spec)


# ---------------------------------------------------------------------------------------------- strategies
@pytest.mark.parametrize("strategy, trained, frozen", [
    ("frozen", ("head",), ("backbone.conv1", "backbone.layer1", "backbone.layer4")),
    ("partial", ("head", "backbone.layer4"), ("backbone.conv1", "backbone.bn1", "backbone.layer3")),
    ("finetune", ("head", "backbone.conv1", "backbone.layer1", "backbone.layer4"), ()),
])
def test_transfer_strategy_trains_only_what_it_should(strategy, trained, frozen):
    torch.manual_seed(0)
    model = build_model(_spec(strategy=strategy), load_weights=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, task="classify", optimizer="sgd", lr=0.5, weight_decay=0.0, momentum=0.0,
                                backbone_lr_scale=1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    loss_fn = torch.nn.CrossEntropyLoss()
    train_step(model, images, labels, loss_fn=loss_fn, optimizer=optimizer, scaler=scaler, coll=LocalCollectives(),
               use_amp=False, accum_steps=1, last_micro=True)
    after = model.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        if any(key.startswith(prefix + ".") for prefix in frozen):
            # parameters and BatchNorm statistics of frozen stages stay exactly as they were
            assert not changed, f"{strategy}: frozen {key} changed"
        elif key.endswith("weight") and any(key.startswith(prefix + ".") for prefix in trained) \
                and "bn" not in key and "downsample.1" not in key:
            assert changed, f"{strategy}: trainable {key} did not change"


def test_gradient_accumulation_steps_only_on_the_last_micro_batch():
    torch.manual_seed(0)
    model = build_model(_spec(strategy="frozen"), load_weights=False)
    optimizer = build_optimizer(model, task="classify", optimizer="sgd", lr=0.1, weight_decay=0.0, momentum=0.0,
                                backbone_lr_scale=1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    head = model.head.weight.detach().clone()
    kwargs = dict(loss_fn=torch.nn.CrossEntropyLoss(), optimizer=optimizer, scaler=scaler, coll=LocalCollectives(),
                  use_amp=False, accum_steps=2)
    train_step(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), last_micro=False, **kwargs)
    assert torch.equal(model.head.weight, head) and model.head.weight.grad is not None
    train_step(model, torch.randn(2, 3, 32, 32), torch.tensor([1, 0]), last_micro=True, **kwargs)
    assert not torch.equal(model.head.weight, head) and model.head.weight.grad is None


def test_a_one_row_batch_trains_with_batch_norm_running_statistics():
    torch.manual_seed(0)
    model = build_model(_spec(strategy="finetune"), load_weights=False)
    optimizer = build_optimizer(model, task="classify", optimizer="sgd", lr=0.1, weight_decay=0.0, momentum=0.0,
                                backbone_lr_scale=1.0)
    kwargs = dict(loss_fn=torch.nn.CrossEntropyLoss(), optimizer=optimizer,
                  scaler=torch.amp.GradScaler("cuda", enabled=False), coll=LocalCollectives(), use_amp=False,
                  accum_steps=1, last_micro=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(torch.randn(1, 3, 32, 32))  # ResNet's last stage is 1x1 at 32 px: plain BatchNorm cannot train
    running = model.backbone.bn1.running_mean.clone()
    head = model.head.weight.detach().clone()
    loss = train_step(model, torch.randn(1, 3, 32, 32), torch.tensor([1]), **kwargs)
    assert loss > 0 and not torch.equal(model.head.weight, head)
    assert torch.equal(model.backbone.bn1.running_mean, running)  # running statistics used, not updated
    assert model.backbone.bn1.training  # and BatchNorm is back in training mode for the next batch
    train_step(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), **kwargs)
    assert not torch.equal(model.backbone.bn1.running_mean, running)


def test_segmenter_model_and_checksum():
    torch.manual_seed(1)
    first = build_model(_spec("segment"), load_weights=False)
    torch.manual_seed(1)
    second = build_model(_spec("segment"), load_weights=False)
    assert first.describe()["config"] == {"in_channels": 3, "base_filters": 4, "out_channels": 1}
    assert state_checksum(first) == state_checksum(second)
    with torch.no_grad():
        next(second.parameters()).add_(1e-3)
    assert state_checksum(first) != state_checksum(second)


def test_local_collectives_are_identity():
    coll = for_engine("local")
    assert (coll.rank, coll.size, coll.local_rank) == (0, 1, 0)
    np.testing.assert_array_equal(coll.allreduce_sum(np.array([1.5, 2.0])), [1.5, 2.0])
    assert coll.broadcast_object({"a": 1}) == {"a": 1} and coll.allgather_object(3) == [3]
    with pytest.raises(ValueError, match="engine must be one of"):
        for_engine("mpi")


# ---------------------------------------------------------------------------------------------- schedules
def test_warmup_then_cosine():
    schedule = LRSchedule(kind="cosine", warmup_steps=4, total_steps=12)
    assert [schedule.factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule.factor(4) == 1.0
    assert schedule.factor(8) == pytest.approx(0.5)          # half way through the 8 cosine steps
    assert schedule.factor(12) == pytest.approx(0.0)
    # the warmup does not depend on the total: a 1-epoch run and a 2-epoch run agree on epoch 1
    assert [LRSchedule(kind="cosine", warmup_steps=4, total_steps=4).factor(s) for s in range(4)] == \
           [schedule.factor(s) for s in range(4)]


def test_plateau_reduces_after_patience_and_round_trips():
    schedule = LRSchedule(kind="plateau", warmup_steps=0, total_steps=10, higher_is_better=True)
    for metric in (0.5, 0.6, 0.55, 0.58):
        schedule.epoch_end(metric)
    assert schedule.factor(5) == pytest.approx(0.1)
    restored = LRSchedule(kind="plateau", warmup_steps=0, total_steps=10)
    restored.load_state_dict(schedule.state_dict())
    assert restored.factor(5) == pytest.approx(0.1) and restored.plateau_best == 0.6
    assert LRSchedule(kind="constant", warmup_steps=0, total_steps=3).factor(2) == 1.0
    with pytest.raises(ValueError, match="schedule must be one of"):
        LRSchedule(kind="step", warmup_steps=0, total_steps=3)


def test_optimizer_groups_keep_peak_rates():
    model = build_model(_spec(strategy="partial"), load_weights=False)
    optimizer = build_optimizer(model, task="classify", optimizer="adamw", lr=0.01, weight_decay=0.0,
                                momentum=0.9, backbone_lr_scale=0.1)
    assert [(g["name"], g["peak_lr"]) for g in optimizer.param_groups] == [("backbone", 0.001), ("head", 0.01)]
    LRSchedule(kind="constant", warmup_steps=2, total_steps=4).apply(optimizer, 0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0005, 0.005])


def test_class_weights_inverse_frequency():
    assert class_weights({0: 30, 1: 10}, 2) == pytest.approx([40 / 60, 40 / 20])
    assert class_weights({0: 5, 2: 5}, 3) == pytest.approx([10 / 15, 0.0, 10 / 15])
    with pytest.raises(ValueError, match="without training rows"):
        class_weights({}, 2)


def test_monitor_spec():
    assert monitor_spec("classify", "auto") == ("balanced_accuracy", True)
    assert monitor_spec("segment", "auto") == ("dice_tumor", True)
    assert monitor_spec("segment", "loss") == ("loss", False)


# ---------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("rows, processes, groups", [(30, 2, 4), (3, 2, 2), (2, 2, 2), (1000, 2, 8), (5, 4, 4)])
def test_row_group_count(rows, processes, groups):
    assert row_group_count(rows, processes) == groups


def test_row_group_count_needs_a_row_per_process():
    with pytest.raises(ValueError, match="3 rows cannot be sharded over 4"):
        row_group_count(3, 4)


def test_shard_rows_follow_petastorm_assignment():
    # rows 0..9 in 4 groups: sizes 3,3,2,2; shard 0 has groups 0 and 2, shard 1 groups 1 and 3
    assert shard_rows(10, 4, 2) == [5, 5]
    assert shard_rows(11, 4, 2) == [6, 5]
    assert shard_rows(7, 2, 2) == [4, 3]


@pytest.mark.parametrize("scan_id", ["0000000000000000", "7fffffffffffffff", "8000000000000000", "ffffffffffffffff",
                                     "e5155faf0d9dad62"])
def test_scan_key_round_trip(scan_id):
    key = scan_key(scan_id)
    assert -(1 << 63) <= key < (1 << 63)
    assert scan_id_from_key(key) == scan_id


def _png(array):
    return imaging.encode_png(array)


def test_decode_example_augments_deterministically():
    rng = np.random.default_rng(0)
    image = _png(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    mask_array = np.zeros((40, 40), dtype=np.uint8)
    mask_array[10:20, 5:15] = 255
    mask = _png(mask_array)
    spec = {**SPEC, "mean": None, "std": None, "zscore": True}
    args = dict(task="segment", input_spec=spec, augment=True, seed=3, scan_id="00ff00ff00ff00ff")
    first, first_mask = decode_example(image, mask, epoch=1, **args)
    again, again_mask = decode_example(image, mask, epoch=1, **args)
    other, _ = decode_example(image, mask, epoch=2, **args)
    assert first.shape == (3, 32, 32) and first.dtype == np.float32 and first_mask.shape == (1, 32, 32)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first_mask, again_mask)
    assert not np.array_equal(first, other)
    assert set(np.unique(first_mask)) <= {0.0, 1.0} and first_mask.sum() > 0
    plain, plain_mask = decode_example(image, None, task="segment", input_spec=spec, augment=False, seed=3, epoch=1,
                                       scan_id="00ff00ff00ff00ff")
    assert plain_mask.sum() == 0  # no mask stored: an empty target
    assert abs(float(plain.mean())) < 1e-4  # z-scored


def test_cache_row_classify_holds_pixels_at_the_input_size():
    rng = np.random.default_rng(1)
    color = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    gray = rng.integers(0, 255, (48, 48), dtype=np.uint8)
    rows = [{"scan_id": "00000000000000aa", "image": _png(color), "label": 1},
            {"scan_id": "ffffffffffffff00", "image": _png(gray), "label": 0}]
    out = [cache_row(row, task="classify", input_spec=SPEC) for row in rows]
    assert [len(values) for values in out] == [len(cache_columns("classify"))] * 2
    assert cache_columns("classify") == ["scan_id", "scan_key", "image", "label"]
    first = np.frombuffer(out[0][2], np.uint8).reshape(3, 32, 32)
    np.testing.assert_array_equal(first, T.resize(color, size=32).transpose(2, 0, 1))
    second = np.frombuffer(out[1][2], np.uint8).reshape(3, 32, 32)
    assert (second[0] == second[1]).all() and (second[0] == second[2]).all()  # grayscale replicated
    assert [o[3] for o in out] == [1, 0] and [scan_id_from_key(o[1]) for o in out] == [r["scan_id"] for r in rows]


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_rng_state(tmp_path):
    model = build_model(_spec("segment"), load_weights=False)
    uri = str(tmp_path / "ck" / "last.pt")
    torch.manual_seed(5)
    np.random.seed(5)
    state = checkpoints.rng_state()
    expected = (torch.rand(3), np.random.rand(3))
    checkpoints.save(uri, {"task": "segment", "class_names": ["a", "b"], "epoch": 2, "model": model.state_dict(),
                           "rng": [state], "history": [{"epoch": 1, "train_loss": 0.5}]})
    loaded = checkpoints.load(uri)
    assert loaded["epoch"] == 2 and loaded["history"] == [{"epoch": 1, "train_loss": 0.5}]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["model"][key], value)
    checkpoints.set_rng_state(loaded["rng"][0])
    assert torch.equal(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert files.exists(uri) and not files.exists(str(tmp_path / "nothing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        checkpoints.load(str(tmp_path / "junk.pt"))


# ---------------------------------------------------------------------------------------------- state and plan
def test_train_state_tracks_best_and_round_trips_through_last_pt(tmp_path):
    state = TrainState()
    assert state.complete_epoch({"epoch": 1, "val_accuracy": 0.5}, value=0.5, higher_is_better=True)
    assert not state.complete_epoch({"epoch": 2, "val_accuracy": 0.4}, value=0.4, higher_is_better=True)
    assert not state.complete_epoch({"epoch": 3}, value=math.nan, higher_is_better=True)
    assert state.complete_epoch({"epoch": 4, "val_accuracy": 0.6}, value=0.6, higher_is_better=True)
    assert not state.complete_epoch({"epoch": 5, "val_accuracy": 0.6}, value=0.6, higher_is_better=True)
    assert (state.epoch, state.best, state.best_epoch, state.bad_epochs) == (5, 0.6, 4, 1)
    lower = TrainState()
    assert lower.complete_epoch({}, value=0.3, higher_is_better=False)
    assert lower.complete_epoch({}, value=0.2, higher_is_better=False) and lower.best_epoch == 2
    state.step, state.stopped_early = 40, True
    uri = str(tmp_path / "last.pt")
    checkpoints.save(uri, {"task": "classify", "class_names": ["no", "yes"], **state.to_checkpoint()})
    restored = TrainState.from_checkpoint(checkpoints.load(uri))
    assert (restored.epoch, restored.step, restored.best, restored.best_epoch, restored.bad_epochs) == \
        (5, 40, 0.6, 4, 1)
    assert restored.history == state.history and restored.start_epoch == 5
    assert not restored.stopped_early and restored.initial_val is None  # this run's facts are not checkpointed


@pytest.mark.parametrize("entry, expected", [
    ({"epoch": 1, "val_dice_tumour": 0.7, "val_iou_tumour": 0.5},
     {"epoch": 1, "val_dice_tumor": 0.7, "val_iou_tumor": 0.5}),
    ({"dice_tumor": 0.8, "dice_tumour": 0.1}, {"dice_tumor": 0.8}),  # both spellings: the new one wins
    ({"accuracy": 0.9, "loss": 0.2}, {"accuracy": 0.9, "loss": 0.2}),
])
def test_old_metric_names_load_under_the_new_ones(entry, expected, tmp_path):
    assert upgrade_metric_names(entry) == expected
    uri = str(tmp_path / "old.pt")
    checkpoints.save(uri, {"epoch": 1, "step": 3, "best": 0.7, "best_epoch": 1, "bad_epochs": 0, "history": [entry]})
    assert TrainState.from_checkpoint(checkpoints.load(uri)).history == [expected]


def test_recipe_reads_every_key_from_the_default_config_and_the_plan_pickles():
    train = load_config(overrides=["train.epochs=3", "train.lr=0.01", "train.augment=false"]).to_dict()["train"]
    recipe = Recipe.from_train_config(train)
    assert (recipe.epochs, recipe.lr, recipe.augment, recipe.target_sensitivity) == (3, 0.01, False, 0.95)
    assert isinstance(recipe.seed, int) and isinstance(recipe.lr, float)
    shards = Shards(split="train", file_urls=("file:///c/part-0.parquet", "file:///c/part-1.parquet"), rows=11,
                    row_groups=4, shard_rows=tuple(shard_rows(11, 4, 2)))
    assert shards.steps(4) == 2  # the larger shard (6 rows) needs 2 batches of 4
    plan = TrainPlan(model=_spec(), recipe=recipe, splits={"train": shards}, run_id="r1", run_uri="/out/runs/r1",
                     output="/out", resume=False, s3=None, config={"train": train}, fingerprint={"scans": "/t"})
    again = pickle.loads(pickle.dumps(plan))
    assert again == plan and again.class_names == ["no", "yes"] and again.task == "classify"
    assert (plan.last_uri, plan.best_uri, plan.artifact_uri) == (
        "/out/runs/r1/checkpoints/last.pt", "/out/runs/r1/checkpoints/best.pt", "/out/runs/r1/model")
    with pytest.raises(Exception, match="cannot assign"):
        plan.resume = True


@pytest.mark.parametrize("value, ok", [("0.95", True), ("1", True), ("0.5", True), ("0", False), ("1.2", False),
                                       ("-0.1", False)])
def test_target_sensitivity_must_be_in_zero_one(value, ok):
    if ok:
        assert load_config(overrides=[f"train.target_sensitivity={value}"]).train.target_sensitivity == float(value)
    else:
        with pytest.raises(ConfigError, match=r"train.target_sensitivity must be in \(0, 1\]"):
            load_config(overrides=[f"train.target_sensitivity={value}"])


# ---------------------------------------------------------------------------------------------- operating point
@pytest.mark.parametrize("labels, positives, negatives", [([1, 1, 1], 3, 0), ([0, 0], 0, 2)])
def test_no_operating_point_without_both_kinds_of_scan(labels, positives, negatives, caplog):
    probabilities = np.array([[0.3, 0.7]] * len(labels))
    with caplog.at_level(logging.WARNING, logger="classeg.training"):
        point, reason = operating_point(np.array(labels), probabilities, class_names=["no_tumor", "tumor"],
                                        tumor_classes=["tumor"], target_sensitivity=0.95)
    assert point is None
    assert reason.startswith(f"the validation split has {positives} tumour and {negatives} tumour-free scans")
    assert "no operating point" in caplog.text


@pytest.mark.parametrize("target, threshold, sensitivity, specificity", [
    (1.0, 0.7, 1.0, 1.0),      # every tumour scan: the lowest tumour probability, 0.7
    (0.6, 0.85, 2 / 3, 1.0),   # two of three: 0.85
    (0.3, 0.9, 1 / 3, 1.0),
])
def test_operating_point_sums_the_tumour_classes(target, threshold, sensitivity, specificity):
    # classes glioma (tumour), notumor, pituitary (tumour): tumour probability = p[0] + p[2], so the tumour
    # scans score 0.9, 0.7, 0.85 and the tumour-free ones 0.2, 0.4, 0.6
    names = ["glioma", "notumor", "pituitary"]
    labels = np.array([0, 1, 2, 1, 1, 2])
    probabilities = np.array([[0.5, 0.1, 0.4], [0.1, 0.8, 0.1], [0.1, 0.3, 0.6], [0.3, 0.6, 0.1],
                              [0.2, 0.4, 0.4], [0.05, 0.15, 0.8]])
    point, reason = operating_point(labels, probabilities, class_names=names, tumor_classes=["glioma", "pituitary"],
                                    target_sensitivity=target)
    assert reason is None and point["split"] == "val" and (point["positives"], point["negatives"]) == (3, 3)
    assert point["tumor_classes"] == ["glioma", "pituitary"] and point["target_sensitivity"] == target
    assert point["threshold"] == pytest.approx(threshold)
    assert point["sensitivity"] == pytest.approx(sensitivity) and point["specificity"] == pytest.approx(specificity)


def test_operating_point_rejects_bad_input():
    with pytest.raises(ValueError, match="tumor_classes must be a non-empty subset"):
        operating_point(np.array([0, 1]), np.eye(2), class_names=["no", "yes"], tumor_classes=["tumour"],
                        target_sensitivity=0.9)
    with pytest.raises(ValueError, match=r"probabilities must be \(N, 2\)"):
        operating_point(np.array([0, 1]), np.ones((2, 3)) / 3, class_names=["no", "yes"], tumor_classes=["yes"],
                        target_sensitivity=0.9)


# ---------------------------------------------------------------------------------------------- weights
def test_weights_class_names_must_match(tmp_path):
    model = build_model(_spec(), load_weights=False)
    save_artifact(str(tmp_path / "art"), model=model, task="classify", class_names=["no", "yes"], input_spec=SPEC)
    common = dict(task="classify", arch="resnet18", head="linear", base_filters=16)
    assert resolve_weights(str(tmp_path / "art"), class_names=["no", "yes"], **common) == \
        {"kind": "full", "uri": str(tmp_path / "art") + "/weights.pt", "lesion_map": False}
    with pytest.raises(ValueError, match=r"class names \['no', 'yes'\].*\['glioma', 'meningioma'\]"):
        resolve_weights(str(tmp_path / "art"), class_names=["glioma", "meningioma"], **common)
    with pytest.raises(ValueError, match="this run needs"):
        resolve_weights(str(tmp_path / "art"), class_names=["no", "yes"], **{**common, "arch": "resnet50"})
    with pytest.raises(ValueError, match="'classify' model, this run trains task 'segment'"):
        resolve_weights(str(tmp_path / "art"), class_names=["no", "yes"], **{**common, "task": "segment"})
    checkpoints.save(str(tmp_path / "ck.pt"), {"task": "classify", "class_names": ["no", "yes"], "epoch": 1,
                                               "model": model.state_dict()})
    with pytest.raises(ValueError, match=r"class names \['no', 'yes'\]"):
        resolve_weights(str(tmp_path / "ck.pt"), class_names=["a", "b"], **common)
    torch.save(model.backbone.state_dict(), tmp_path / "backbone.pth")
    assert resolve_weights(str(tmp_path / "backbone.pth"), class_names=["a", "b"], **common)["kind"] == "backbone"
    with pytest.raises(FileNotFoundError):
        resolve_weights(str(tmp_path / "missing.pth"), class_names=["a", "b"], **common)
    assert resolve_weights(None, class_names=["a", "b"], **common) == {"kind": "none"}


def _counts(**splits):
    return {s: {"rows": r, "labels": {0: r}, "masks": m, "tumor": t} for s, (r, m, t) in splits.items()}


def test_check_splits_errors():
    good = _counts(train=(10, 10, 4), val=(5, 5, 2), test=(5, 5, 1))
    assert _check_splits(good, task="classify", tumor_only=False, scans="T", num_proc=2) == \
        {"train": 10, "val": 5, "test": 5}
    assert _check_splits(good, task="segment", tumor_only=True, scans="T", num_proc=2) == \
        {"train": 4, "val": 2, "test": 5}
    with pytest.raises(ValueError, match="'val' split of scan table 'T' has no rows"):
        _check_splits(_counts(train=(10, 0, 0), val=(0, 0, 0), test=(5, 0, 0)), task="classify",
                      tumor_only=False, scans="T", num_proc=1)
    with pytest.raises(ValueError, match="has no masks"):
        _check_splits(_counts(train=(10, 0, 0), val=(5, 0, 0), test=(5, 0, 0)), task="segment",
                      tumor_only=True, scans="T", num_proc=1)
    with pytest.raises(ValueError, match="'test' split .* has 1 tumour|'test' split .* 1 slices"):
        _check_splits(_counts(train=(10, 10, 4), val=(5, 5, 2), test=(5, 1, 1)), task="segment",
                      tumor_only=True, scans="T", num_proc=2)


# ---------------------------------------------------------------------------------------------- figures
def test_figures_are_pngs():
    assert confusion_matrix_png([[5, 1], [2, 7]], ["no", "yes"])[:4] == b"\x89PNG"
    history = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6, "val_accuracy": 0.6},
               {"epoch": 2, "train_loss": 0.5, "val_loss": 0.5, "val_accuracy": 0.8}]
    assert training_curves_png(history)[:4] == b"\x89PNG" and training_curves_png([]) is None
    assert dice_histogram_png([0.1, 0.8, math.nan, 0.9])[:4] == b"\x89PNG"
    sample = {"image": np.random.default_rng(0).normal(size=(3, 32, 32)), "mask": np.eye(32),
              "prediction": np.eye(32), "dice": 1.0}
    assert overlay_gallery_png([sample] * 3)[:4] == b"\x89PNG" and overlay_gallery_png([]) is None


def test_checkpoint_is_readable_as_weights_only(tmp_path):
    buffer = io.BytesIO()
    torch.save({"format": checkpoints.FORMAT, "rng": [checkpoints.rng_state()]}, buffer)
    assert torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)["format"] == checkpoints.FORMAT


@pytest.mark.parametrize("preset, expected", [(None, "25"), ("3", "3")])
def test_a_horovod_rank_on_the_cpu_negotiates_every_25_ms_unless_told(preset, expected):
    """HorovodCollectives picks the cycle time before hvd.init (a 1-process Horovod, in its own interpreter)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("horovod.torch")
    env = {k: v for k, v in os.environ.items() if k != "HOROVOD_CYCLE_TIME"}
    if preset is not None:
        env["HOROVOD_CYCLE_TIME"] = preset
    code = ("import os\nfrom classeg.training.collectives import HorovodCollectives\n"
            "c = HorovodCollectives()\nprint(os.environ['HOROVOD_CYCLE_TIME'], c.size)\n")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [expected, "1"]


@pytest.mark.parametrize("conf, local, cuda, expected", [
    ({}, True, True, True),                                              # local mode: the driver's CUDA
    ({"spark.task.resource.gpu.amount": "1"}, True, False, False),
    ({"spark.task.resource.gpu.amount": "1"}, False, False, True),        # an EMR driver on a CPU-only master
    ({"spark.task.resource.gpu.amount": "0.25"}, False, False, True),
    ({}, False, True, False),                                             # barrier mode, no GPUs for the tasks
    ({"spark.task.resource.gpu.amount": "0"}, False, True, False),
    ({"spark.task.resource.gpu.amount": "one"}, False, True, False),
])
def test_torchdistributor_asks_for_gpus_where_its_ranks_run(conf, local, cuda, expected):
    from classeg.training.engines import torch_use_gpu

    assert torch_use_gpu(conf.get, local=local, cuda_available=cuda) is expected
