"""`classeg evaluate`: any model artifact on any scan table, in one process on the driver.

Rows stream to the driver partition by partition (``toLocalIterator``), are preprocessed exactly as in
training (`classeg.training.data.decode_example`, no augmentation) and scored in batches; the metrics come
from the same meters as training's. Output: ``metrics.json`` and the task's figures (see
`classeg.plots`). Classifiers need the scan table's class names to equal the artifact's; segmenters
are evaluated on every slice of the split that has a mask (Dice on tumour slices is ``dice_tumor``).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "all")


def evaluate_artifact(spark, *, model: str, scans: str, output: str, split: str = "test", batch_size: int = 32,
                      s3_cfg: Any = None) -> dict:
    """Evaluate the artifact at ``model`` on ``split`` (or "all") of the scan table ``scans``; write
    ``metrics.json`` and figures to ``output``; return the metrics document. Driver only."""
    import torch
    from pyspark.sql import functions as F

    from classeg.artifact import load_artifact
    from classeg.ingest.table import read_scan_table
    from classeg.spark import ensure_driver
    from classeg.training.checkpoints import upgrade_metric_names
    from classeg.training.data import decode_example
    from classeg.training.loop import GALLERY_SIZE, build_loss_for, evaluate_batches, make_meter
    from classeg.plots import write_evaluation

    ensure_driver("evaluate_artifact")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    started = time.time()
    artifact = load_artifact(model, s3_cfg=s3_cfg)
    task, class_names = artifact.task, artifact.class_names
    frame, summary = read_scan_table(spark, scans, s3_cfg=s3_cfg)
    if task == "classify" and list(summary.get("class_names") or []) != class_names:
        raise ValueError(f"model {model!r} predicts classes {class_names} but scan table {scans!r} has classes "
                         f"{summary.get('class_names')}")
    rows = frame if split == "all" else frame.filter(F.col("split") == split)
    if task == "segment":
        rows = rows.filter(F.col("mask").isNotNull()).select("scan_id", "image", "mask")
    else:
        rows = rows.select("scan_id", "image", "label")
    count = rows.count()
    if count == 0:
        what = "slices with masks" if task == "segment" else "rows"
        raise ValueError(f"split {split!r} of scan table {scans!r} has no {what} to evaluate {model!r} on")
    spec = artifact.meta["input"]
    meter = make_meter(task, max(2, len(class_names)))
    recorded = artifact.meta.get("training", {}).get("config", {}).get("train", {})
    loss_fn = build_loss_for(task, num_classes=len(class_names), loss=recorded.get("loss", "focal_tversky"),
                             label_smoothing=float(recorded.get("label_smoothing", 0.0)))
    dice: list[float] = []
    samples: list[dict] = []

    def batches():
        images, targets, keys = [], [], []
        for row in rows.toLocalIterator(prefetchPartitions=True):
            features, mask = decode_example(row["image"], row["mask"] if task == "segment" else None, task=task,
                                            input_spec=spec, augment=False, seed=0, epoch=0, scan_id=row["scan_id"])
            images.append(features)
            targets.append(mask if task == "segment" else int(row["label"]))
            keys.append(0)
            if len(images) == batch_size:
                yield _batch(images, targets, keys, task)
                images, targets, keys = [], [], []
        if images:
            yield _batch(images, targets, keys, task)

    evaluate_batches(artifact.model, batches(), task=task, loss_fn=loss_fn, device=torch.device("cpu"),
                     meter=meter, **({"dice": dice, "samples": samples} if task == "segment" else {}))
    metrics = meter.compute()
    if task == "classify":
        report = meter.report(class_names)
        metrics.update(confusion_matrix=report["confusion_matrix"], per_class=report["per_class"])
    document = {"model": model, "model_id": artifact.model_id, "scans": scans, "split": split, "rows": count,
                "seconds": round(time.time() - started, 1)}
    history = [upgrade_metric_names(entry) for entry in artifact.meta.get("history", [])]
    write_evaluation(output, task=task, metrics=metrics, class_names=class_names, history=history, dice=dice,
                     samples=samples[:GALLERY_SIZE], s3_cfg=s3_cfg, extra=document)
    log.info("evaluate %s on %s split %s (%d rows): %s", artifact.model_id, scans, split, count,
             ", ".join(f"{k} {metrics[k]:.4f}" for k in ("accuracy", "roc_auc", "dice_tumor", "dice") if k in metrics))
    return {**document, "task": task, "output": output, "metrics": metrics}


def _batch(images, targets, keys, task: str) -> dict:
    import torch

    batch = {"image": torch.from_numpy(np.stack(images)), "scan_key": torch.tensor(keys, dtype=torch.int64)}
    if task == "segment":
        batch["mask"] = torch.from_numpy(np.stack(targets))
    else:
        batch["label"] = torch.tensor(targets, dtype=torch.int64)
    return batch
