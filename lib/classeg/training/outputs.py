"""What a finished training run writes (rank 0): the model artifact, its ``metrics.json`` and figures, the
copy under the output's ``model/``, and ``result.json``; and the classifier's operating point.

The operating point: Class-Seg only segments what the classifier calls tumour, so a missed tumour is never
segmented. After training, every validation scan's tumour probability (the softmax summed over the tumour
classes, `classeg.labels.tumor_class_names`) goes to `classeg.metrics.choose_operating_point`, which picks
the threshold reaching ``train.target_sensitivity`` on the validation split (and reports the Youden point and
the ROC it came from). model.json stores it as ``operating_point``; when no threshold can be chosen (the
split lacks tumour or tumour-free scans, or the class names do not say which classes mean tumour) it stores
``operating_point: null`` and the reason as ``operating_point_reason``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from classeg.io.uri import join

if TYPE_CHECKING:
    from classeg.training.checkpoints import TrainState
    from classeg.training.loop import RankContext

log = logging.getLogger("classeg.training")

#: Test metrics named in the final log line, when present.
LOGGED_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "dice_tumor", "dice", "iou_tumor", "loss")


@dataclass
class Evaluation:
    """What the ranks measured after training, gathered for rank 0.

    ``test``: test-split metrics of the best weights (a classifier's with ``confusion_matrix`` and
    ``per_class``); ``dice``: per tumour slice, every rank's (segment); ``samples``: rank 0's gallery
    (segment); ``checksums``: per rank, `classeg.training.checkpoints.state_checksum` of its final model;
    ``shards``: per split, per rank, the scan ids read (``train.record_shards``) or None; ``validation``: a
    classifier's validation labels (N,) and class probabilities (N, K) under the final weights, else None.
    """

    test: dict
    dice: list
    samples: list
    checksums: list
    shards: dict | None
    validation: tuple[np.ndarray, np.ndarray] | None


def operating_point(labels: np.ndarray, probabilities: np.ndarray, *, class_names: Sequence[str],
                    tumor_classes: Sequence[str], target_sensitivity: float) -> tuple[dict | None, str | None]:
    """The classifier's tumour threshold chosen on validation scores: (point, None), or (None, reason) when
    the scans are all tumour or all tumour-free (a warning is logged).

    ``labels``: (N,) class indices into ``class_names``; ``probabilities``: (N, K) softmax outputs. A scan is
    tumour when its label is one of ``tumor_classes``; its tumour probability is the sum of those columns.
    The point is `classeg.metrics.choose_operating_point`'s JSON-ready dict (``threshold``: tumour when
    ``tumor_probability >= threshold``; ``sensitivity``, ``specificity``, ``target_sensitivity``,
    ``positives``, ``negatives``, ``youden``, ``roc``) plus ``split`` ("val") and ``tumor_classes``.
    """
    from classeg.metrics import choose_operating_point

    names = list(class_names)
    unknown = [name for name in tumor_classes if name not in names]
    if unknown or not tumor_classes:
        raise ValueError(f"tumor_classes must be a non-empty subset of {names}, got {list(tumor_classes)}")
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (labels.shape[0], len(names)):
        raise ValueError(f"probabilities must be (N, {len(names)}) for {labels.shape[0]} labels, got shape "
                         f"{probabilities.shape}")
    columns = [names.index(name) for name in tumor_classes]
    is_tumor = np.isin(labels, columns)
    positives, negatives = int(is_tumor.sum()), int((~is_tumor).sum())
    if not positives or not negatives:
        reason = (f"the validation split has {positives} tumour and {negatives} tumour-free scans: choosing a "
                  "threshold needs both")
        log.warning("no operating point for the classifier: %s", reason)
        return None, reason
    chosen = choose_operating_point(is_tumor, probabilities[:, columns].sum(axis=1),
                                    target_sensitivity=target_sensitivity)
    return {**chosen, "split": "val", "tumor_classes": list(tumor_classes)}, None


def _classifier_entries(ctx: RankContext, evaluation: Evaluation) -> tuple[list[str] | None, dict]:
    """(tumour classes for model.json, or None for the artifact's default; model.json's operating point
    entries)."""
    from classeg.labels import TumorClassError, tumor_class_names

    plan = ctx.plan
    try:
        tumor_classes = tumor_class_names(plan.class_names)
    except TumorClassError as err:
        log.warning("no operating point for the classifier: %s", err)
        return None, {"operating_point": None, "operating_point_reason": str(err)}
    labels, probabilities = evaluation.validation
    point, reason = operating_point(labels, probabilities, class_names=plan.class_names,
                                    tumor_classes=tumor_classes, target_sensitivity=plan.recipe.target_sensitivity)
    if point is None:
        return tumor_classes, {"operating_point": None, "operating_point_reason": reason}
    log.info("operating point on %d validation scans: tumour threshold %.4f (sensitivity %.3f, specificity "
             "%.3f; target sensitivity %.3f)", labels.shape[0], point["threshold"], point["sensitivity"],
             point["specificity"], point["target_sensitivity"])
    return tumor_classes, {"operating_point": point}


def write_outputs(ctx: RankContext, state: TrainState, evaluation: Evaluation) -> dict:
    """Rank 0: the model artifact (in the run folder and the output's ``model/``), metrics.json, figures and
    ``result.json``; returns the result dict."""
    import time

    from classeg.artifact import save_artifact
    from classeg.io.files import read_bytes, write_bytes
    from classeg.metrics import as_mapping
    from classeg.plots import write_evaluation

    plan, coll, test = ctx.plan, ctx.coll, evaluation.test
    s3_cfg, artifact_uri = plan.s3, plan.artifact_uri
    tumor_classes, extra = (None, {}) if plan.task == "segment" else _classifier_entries(ctx, evaluation)
    training = {"config": plan.config, "run_id": plan.run_id, "engine": coll.name, "world_size": coll.size,
                "best_epoch": state.best_epoch, "monitor": ctx.monitor, "best_value": state.best,
                "stopped_early": state.stopped_early, "steps_per_epoch": ctx.steps_per_epoch,
                "class_weights": None if plan.model.class_weights is None else list(plan.model.class_weights)}
    meta = save_artifact(artifact_uri, model=ctx.model, task=plan.task, class_names=plan.class_names,
                         input_spec=plan.model.input_spec, training=training, history=state.history,
                         metrics={"split": "test", **test}, data=plan.fingerprint, tumor_classes=tumor_classes,
                         s3_cfg=s3_cfg, extra=extra)
    written = write_evaluation(artifact_uri, task=plan.task, metrics=test, class_names=plan.class_names,
                               history=state.history, dice=evaluation.dice, samples=evaluation.samples,
                               s3_cfg=s3_cfg, extra={"split": "test", "model_id": meta["model_id"],
                                                     "run_id": plan.run_id, "scans": plan.fingerprint["scans"]})
    latest = join(plan.output, "model")
    for name in ["weights.pt", "model.json", *written]:  # the output's model/ is a copy of the latest run's
        write_bytes(join(latest, name), read_bytes(join(artifact_uri, name), s3_cfg=s3_cfg), s3_cfg=s3_cfg)
    result = {"run_id": plan.run_id, "task": plan.task, "artifact": artifact_uri, "latest_artifact": latest,
              "model_id": meta["model_id"], "resumed": plan.resume, "start_epoch": state.start_epoch + 1,
              "start_step": state.start_step,
              "epochs_completed": state.history[-1]["epoch"] if state.history else 0,
              "best_epoch": state.best_epoch, "monitor": ctx.monitor, "best_value": state.best,
              "stopped_early": state.stopped_early, "history": state.history, "test": test,
              "initial_val": state.initial_val, "rank_checksums": evaluation.checksums,
              "steps_per_epoch": ctx.steps_per_epoch, "engine": coll.name, "world_size": coll.size,
              "seconds": round(time.time() - ctx.started, 1), **extra}
    if evaluation.shards is not None:
        result["shards"] = evaluation.shards
    write_bytes(join(plan.run_uri, "result.json"), json.dumps(as_mapping(result), indent=2, default=str).encode(),
                s3_cfg=s3_cfg)
    log.info("test %s: %s; artifact %s", plan.task,
             ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float) and k in LOGGED_METRICS),
             artifact_uri)
    return result
