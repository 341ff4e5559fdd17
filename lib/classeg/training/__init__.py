"""Distributed training: the driver checks the request and builds a `plan.TrainPlan` (`job`); one per-rank
loop (`loop.train_rank`) launched by Horovod-on-Spark or Spark's TorchDistributor (`engines`), talking through
`collectives`, reading its shard of the decoded cache (`data`, `cache`), resumable through `checkpoints` (`TrainState`);
rank 0 writes the artifact, metrics and the classifier's operating point (`outputs`); `evaluate` re-scores an
artifact on any scan table.

Entry points: `run_training(spark, cfg)` (``classeg train``) and `evaluate_artifact(...)`
(``classeg evaluate``). Importing this package imports neither torch nor Horovod.
"""
from __future__ import annotations


def run_training(spark, cfg):
    """See `classeg.training.job.run_training`."""
    from classeg.training.job import run_training as run

    return run(spark, cfg)


def evaluate_artifact(spark, **kwargs):
    """See `classeg.training.evaluate.evaluate_artifact`."""
    from classeg.training.evaluate import evaluate_artifact as evaluate

    return evaluate(spark, **kwargs)


__all__ = ["evaluate_artifact", "run_training"]
