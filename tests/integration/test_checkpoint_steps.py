"""``train.checkpoint_every_steps``: ``last.pt`` is also written within an epoch, and a run whose training
process is SIGKILLed mid-epoch is relaunched (``train.max_restarts``) from that checkpoint and ends with the
weights of an uninterrupted run. Real Horovod ranks (2 processes, Gloo) on local[2] over a tiny synthetic LGG
table (32x32 slices, 8 steps of 2 images per rank and epoch)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from classeg.config import load_config
from classeg.errors import ConfigError
from classeg.training import checkpoints, run_training
from lgg_tables import small_lgg_table
from rank_faults import killing_a_rank

SIZE = 32


@pytest.fixture(scope="module")
def table(tmp_path_factory, spark):
    return small_lgg_table(spark, tmp_path_factory.mktemp("ckpt-data"), patients=8, seed=3, image_size=SIZE,
                           slices_per_patient=(7, 9))


def _cfg(scans, output, *extra):
    return load_config(overrides=[
        "spark.master=local[2]", f"train.scans={scans}", f"train.output={output}", f"train.image_size={SIZE}",
        "train.task=classify", "train.engine=horovod", "train.batch_size=2", "train.epochs=2", "train.num_proc=2",
        "train.threads_per_proc=1", "train.seed=7", "train.lr=0.001", *extra])


def _weights(run_dir: Path) -> dict:
    return checkpoints.load(str(run_dir / "checkpoints" / "last.pt"))["model"]


@pytest.fixture(scope="module")
def uninterrupted(table, spark, tmp_path_factory):
    output = tmp_path_factory.mktemp("ckpt-out")
    return run_training(spark, _cfg(table, output, "train.run_id=full")), output


def test_a_rank_killed_mid_epoch_resumes_there_and_matches_an_uninterrupted_run(uninterrupted, table, spark):
    full, output = uninterrupted
    # once a last.pt is written after 2 or more micro-batches of epoch 1
    within_epoch_1 = lambda checkpoint: checkpoint["epoch"] == 0 and checkpoint.get("micro", 0) >= 2  # noqa: E731
    with killing_a_rank(output / "runs" / "killed" / "checkpoints" / "last.pt", within_epoch_1) as seen:
        restarted = run_training(spark, _cfg(table, output, "train.run_id=killed", "train.checkpoint_every_steps=1",
                                             "train.max_restarts=1"))
    assert seen, "no training process was killed within epoch 1: the test did not exercise a restart"
    steps_per_epoch = full["steps_per_epoch"]
    assert steps_per_epoch >= 4 and restarted["steps_per_epoch"] == steps_per_epoch
    assert restarted["resumed"] and restarted["start_epoch"] == 1, "the relaunch resumed within epoch 1"
    assert 2 <= restarted["start_step"] < steps_per_epoch, (restarted["start_step"], seen)
    assert [h["epoch"] for h in restarted["history"]] == [1, 2]
    for ours, theirs in zip(restarted["history"], full["history"]):  # the resumed epoch's loss counts all its batches
        for metric in ("train_loss", "val_loss", "val_accuracy"):
            assert ours[metric] == pytest.approx(theirs[metric], rel=1e-6), (ours["epoch"], metric)
    again, reference = _weights(output / "runs" / "killed"), _weights(output / "runs" / "full")
    assert again.keys() == reference.keys()
    for key in reference:
        assert torch.allclose(again[key].float(), reference[key].float(), atol=1e-6), key


def test_epoch_end_checkpoints_stay_as_they_were(uninterrupted):
    full, output = uninterrupted
    checkpoint = checkpoints.load(str(output / "runs" / "full" / "checkpoints" / "last.pt"))
    assert checkpoint["epoch"] == 2 and checkpoint["micro"] == 0 and "within_epoch" not in checkpoint
    assert checkpoint["step"] == 2 * full["steps_per_epoch"] and full["start_step"] == 0


def test_a_within_epoch_checkpoint_restores_this_ranks_buffers_and_refuses_other_shards():
    norm = torch.nn.BatchNorm1d(3)
    saved = [checkpoints.rank_progress(norm, loss_sum=1.5, seen=4) for _ in range(2)]
    saved[1]["buffers"]["running_mean"] = torch.tensor([1.0, 2.0, 3.0])
    checkpoint = {"epoch": 0, "micro": 3, "world_size": 2, "micro_steps": 8, "within_epoch": saved,
                  "rng": [{"rank": 0}, {"rank": 1}]}
    resumed = checkpoints.resume_within_epoch(checkpoint, model=norm, rank=1, size=2, micro_steps=8, uri="last.pt")
    assert resumed == {"micro": 3, "rng": {"rank": 1}, "loss_sum": 1.5, "seen": 4}
    assert norm.running_mean.tolist() == [1.0, 2.0, 3.0]
    assert checkpoints.resume_within_epoch({**checkpoint, "micro": 0}, model=norm, rank=1, size=2, micro_steps=8,
                                           uri="last.pt") is None
    with pytest.raises(ValueError, match=r"saved within epoch 1 by 2 processes with 8 micro-batches.*has 1 and 8"):
        checkpoints.resume_within_epoch(checkpoint, model=norm, rank=0, size=1, micro_steps=8, uri="last.pt")


def test_checkpoint_every_steps_is_off_by_default_and_not_negative():
    assert load_config().train.checkpoint_every_steps == 0
    with pytest.raises(ConfigError, match="train.checkpoint_every_steps"):
        load_config(overrides=["train.checkpoint_every_steps=-1"])
