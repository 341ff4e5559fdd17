"""`classeg evaluate --classifier URI --segmenter URI --scans URI --output URI`: the combined Class-Seg pipeline
on one split of a scan table whose truth is known (Phase 3 of the paper).

Order of work, on the driver except step 4:

1. :meth:`ClassSegEvaluation.plan`, before the SparkSession starts: resolve ``--classifier``/``--segmenter``
   (absolute; a training output folder to its newest completed run's model:
   :func:`classeg.artifact.resolve_artifact`), load both artifacts once
   (:meth:`classeg.scoring.predictor.ClassSegPredictor.load`: a missing or wrong artifact, or a classifier whose
   classes have no tumour meaning, fails here) and choose the tumour threshold (:func:`tumor_threshold`:
   ``--tumor-threshold``, else the classifier's validated ``operating_point.threshold`` from model.json,
   else 0.5). :meth:`ClassSegEvaluation.run` does the rest;
2. read the scan table (:func:`classeg.ingest.table.read_scan_table`) and keep the split (``all``: every row);
3. check it in one aggregation: the split is not empty and every slice the table calls tumour has a mask
   (the truth is the mask: folder datasets, which have none, cannot be evaluated);
4. ``mapInPandas(classeg.evaluation.slices.evaluate_partition)``: each task decodes its slices, runs the
   classifier on all of them and the segmenter on the true tumour slices and on those classified tumour,
   and returns one small row of pixel counts per slice. A ``mapInPandas`` over the split rather than the
   driver, because a test split of a real archive is thousands of slices and the models should load once
   per task, as in scoring; only the counts, never the pixels, come back;
5. collect those rows (a few numbers per slice; the driver needs them all for the metrics), compute
   :func:`classeg.metrics.classseg_metrics` and write ``<output>/classseg_slices/part-00000.parquet`` and then
   ``<output>/classseg_metrics.json`` (an earlier evaluation's are deleted first, and the metrics document
   is written last: its presence marks a complete evaluation).

``classseg_metrics.json``: the metrics dict (``slices``, ``tumor_slices``, ``detection``,
``segmenter_dice_tumor``, ``pipeline_dice_tumor``, ``pipeline_dice_mean``, ``pipeline_dice_global``,
``false_alarm_masks``, ``false_alarm_mask_rate``, ``per_patient``; see `classseg_metrics`) plus
``classifier``/``segmenter`` (URI and ``model_id`` each), ``split``, ``threshold`` and ``threshold_source``,
``mask_threshold``, ``scans`` (the scan table's fingerprint: URI, ingest run id, dataset, image size, rows
per split, the split's rows) and ``has_tumor_disagreements`` (slices whose table ``has_tumor``, taken on the
source mask, differs from the canonical mask's; the metrics follow the canonical mask). NaN marks undefined
values, as in training's ``metrics.json``. ``per_patient`` is null when any slice lacks a ``patient_id``
(folder datasets).
"""
from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from classeg.scoring.predictor import tumor_threshold
from classeg.evaluation.slices import (INPUT_COLUMNS, SLICE_COLUMNS, SLICES_ARROW_SCHEMA, SLICES_SCHEMA_DDL,
                                      evaluate_partition)

log = logging.getLogger(__name__)

__all__ = ["METRICS_NAME", "SLICES_DIR", "SPLITS", "ClassSegEvaluation", "evaluate_classseg", "tumor_threshold"]

METRICS_NAME = "classseg_metrics.json"
SLICES_DIR = "classseg_slices"
SPLITS = ("train", "val", "test", "all")


def _check_split(rows, *, split: str, scans: str) -> int:
    """The number of rows of the split, after checking there are some and that every tumour slice has a mask."""
    from pyspark.sql import functions as F

    counts = rows.agg(F.count(F.lit(1)).alias("rows"), F.sum(F.when(
        F.col("has_tumor") & F.col("mask").isNull(), 1).otherwise(0)).alias("unmasked")).first()
    if not counts["rows"]:
        raise ValueError(f"split {split!r} of scan table {scans!r} has no slices to evaluate")
    if counts["unmasked"]:
        raise ValueError(f"split {split!r} of scan table {scans!r} has {counts['unmasked']} tumour slices without "
                         "a mask: the Class-Seg evaluation takes its truth from the masks (folder datasets have "
                         "none; use `classeg evaluate --model` for a classifier alone)")
    return int(counts["rows"])


def _collect(spark, rows, settings) -> pd.DataFrame:
    """Run the per-slice tasks and collect their rows, sorted by scan id."""
    cores = spark.sparkContext.defaultParallelism
    if rows.rdd.getNumPartitions() < cores:  # a small table in few files would otherwise use one core
        rows = rows.repartition(cores)
    slices = rows.mapInPandas(partial(evaluate_partition, settings=settings), schema=SLICES_SCHEMA_DDL)
    spark.sparkContext.setJobDescription("classeg evaluate: Class-Seg per slice")
    try:
        frame = slices.toPandas()
    finally:
        spark.sparkContext.setJobDescription(None)
    return frame.sort_values("scan_id", kind="stable").reset_index(drop=True)[list(SLICE_COLUMNS)]


def _metrics(frame: pd.DataFrame, threshold: float) -> dict:
    from classeg.metrics import as_mapping, classseg_metrics

    segmented = frame["segmented"].to_numpy(dtype=bool)
    patients = frame["patient_id"]
    per_patient = patients.notna().all()
    if not per_patient and patients.notna().any():
        log.warning("evaluate: %d of %d slices have no patient_id; no per-patient aggregates",
                    int(patients.isna().sum()), len(frame))
    return as_mapping(classseg_metrics(
        has_tumor_true=frame["has_tumor_true"].to_numpy(dtype=bool),
        tumor_probability=frame["tumor_probability"].to_numpy(dtype=np.float64),
        threshold=threshold,
        true_area_px=frame["true_area_px"].to_numpy(dtype=np.float64),
        segmenter_tp=np.where(segmented, frame["segmenter_tp"].to_numpy(dtype=np.float64, na_value=np.nan), np.nan),
        segmenter_fp=np.where(segmented, frame["segmenter_fp"].to_numpy(dtype=np.float64, na_value=np.nan), np.nan),
        patient_id=patients.to_numpy(dtype=str) if per_patient else None))


def _fingerprint(scans: str, summary: dict, split: str, rows: int) -> dict:
    return {"uri": scans, "run_id": summary.get("run_id"), "dataset": summary.get("dataset"),
            "image_size": summary.get("image_size"), "per_split": summary.get("per_split"), "split": split,
            "split_rows": rows}


def _write(output: str, frame: pd.DataFrame, document: dict, *, s3_cfg: Any) -> None:
    """Replace an earlier evaluation's outputs: its metrics document goes first and the new one comes last,
    so that a metrics document always describes the per-slice table beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from classeg.io.files import delete, write_bytes
    from classeg.io.uri import join

    delete(join(output, METRICS_NAME), s3_cfg=s3_cfg)
    delete(join(output, SLICES_DIR), s3_cfg=s3_cfg)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, schema=SLICES_ARROW_SCHEMA, preserve_index=False), buffer)
    write_bytes(join(output, SLICES_DIR, "part-00000.parquet"), buffer.getvalue(), s3_cfg=s3_cfg)
    write_bytes(join(output, METRICS_NAME), json.dumps(document, indent=2, default=str).encode(), s3_cfg=s3_cfg)


@dataclass(frozen=True)
class ClassSegEvaluation:
    """One evaluation, planned and checked on the driver before any Spark work. Build with :meth:`plan`, run
    with :meth:`run`; :func:`evaluate_classseg` does both."""

    classifier: str
    segmenter: str
    scans: str
    output: str
    split: str
    threshold: float
    threshold_source: str
    settings: Any  # classeg.scoring.predictor.ScoreSettings: what the tasks need
    model_ids: tuple[str, str]
    trained_on: tuple[str | None, ...]  # scan-table run ids the models were trained on
    s3_cfg: Any = None

    @classmethod
    def plan(cls, *, classifier: str, segmenter: str, scans: str, output: str, split: str = "test",
             tumor_threshold_override: float | None = None, settings: dict | None = None,
             s3_cfg: Any = None) -> "ClassSegEvaluation":
        """Check the arguments and load both artifacts once (their tasks, checksums and the classifier's tumour
        classes); choose the threshold (:func:`tumor_threshold`). ``settings``: :class:`~classeg.scoring.predictor.
        ScoreSettings` fields for the tasks (``mask_threshold``, ``batch_size``, ``device``, ``amp``,
        ``channels_last``, ``torch_threads``, ``tumor_classes``), as ``classeg score`` takes them from the
        ``score`` config section. Raises ValueError or FileNotFoundError naming the problem."""
        from classeg.artifact import resolve_artifact
        from classeg.scoring.predictor import ClassSegPredictor, ScoreSettings
        from classeg.io.s3 import S3Settings
        from classeg.io.uri import absolute, parse_uri

        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not classifier or not segmenter:
            raise ValueError(f"the Class-Seg evaluation needs both --classifier and --segmenter, got classifier="
                             f"{classifier!r}, segmenter={segmenter!r}")
        parse_uri(output)  # ValueError naming a bad URI
        # The tasks get absolute artifact folders (their working directory is not the driver's); a training
        # output folder becomes its newest completed run's model, chosen once here.
        classifier = resolve_artifact(classifier, task="classify", s3_cfg=s3_cfg)
        segmenter = resolve_artifact(segmenter, task="segment", s3_cfg=s3_cfg)
        scans, output = absolute(scans), absolute(output)
        log.info("evaluate: classifier %s, segmenter %s", classifier, segmenter)
        options = dict(settings or {})
        predictor = ClassSegPredictor.load(classifier, segmenter, s3_cfg=s3_cfg, device="cpu",
                                           tumor_classes=tuple(options.get("tumor_classes", ())))
        threshold, source = tumor_threshold(predictor.classifier.meta, tumor_threshold_override)
        task_settings = ScoreSettings(classifier=classifier, segmenter=segmenter, tumor_threshold=threshold,
                                      s3=S3Settings.of(s3_cfg).to_dict(), **options)
        trained_on = tuple((artifact.meta.get("data") or {}).get("scan_table_run_id")
                           for artifact in (predictor.classifier, predictor.segmenter))
        return cls(classifier=classifier, segmenter=segmenter, scans=scans, output=output, split=split,
                   threshold=threshold, threshold_source=source, settings=task_settings,
                   model_ids=(predictor.classifier_id, predictor.segmenter_id), trained_on=trained_on,
                   s3_cfg=s3_cfg)

    def run(self, spark) -> dict:
        """Evaluate (see the module docstring); returns the metrics document with ``output``. Driver only.
        Raises ValueError for a split without slices, or with tumour slices that have no mask."""
        from pyspark.sql import functions as F

        from classeg.ingest.table import read_scan_table
        from classeg.spark import ensure_driver

        ensure_driver("ClassSegEvaluation.run")
        started = time.time()
        frame, summary = read_scan_table(spark, self.scans, s3_cfg=self.s3_cfg)
        if self.split in ("train", "val", "all") and summary.get("run_id") in self.trained_on:
            log.warning("evaluate: a model was trained on this scan table; its %r split is not held out", self.split)
        rows = (frame if self.split == "all" else frame.filter(F.col("split") == self.split)).select(*INPUT_COLUMNS)
        count = _check_split(rows, split=self.split, scans=self.scans)
        log.info("evaluate: Class-Seg of %s + %s on %d slices of split %s of %s; tumour threshold %.4f (%s)",
                 *self.model_ids, count, self.split, self.scans, self.threshold, self.threshold_source)
        slices = _collect(spark, rows, self.settings)
        source_known = slices["has_tumor_source"].notna()
        disagreements = int((slices.loc[source_known, "has_tumor_source"].astype(bool)
                             != slices.loc[source_known, "has_tumor_true"]).sum())
        document = {
            **_metrics(slices, self.threshold),
            "classifier": {"uri": self.classifier, "model_id": self.model_ids[0]},
            "segmenter": {"uri": self.segmenter, "model_id": self.model_ids[1]},
            "split": self.split, "threshold": self.threshold, "threshold_source": self.threshold_source,
            "mask_threshold": self.settings.mask_threshold,
            "scans": _fingerprint(self.scans, summary, self.split, count),
            "has_tumor_disagreements": disagreements, "seconds": round(time.time() - started, 1),
        }
        _write(self.output, slices, document, s3_cfg=self.s3_cfg)
        detection = document["detection"]
        log.info("evaluate: sensitivity %s, specificity %s; segmenter Dice %s, pipeline Dice %s (tumour slices); "
                 "%d false-alarm masks; written to %s", *(_text(v) for v in (
                     detection["sensitivity"], detection["specificity"], document["segmenter_dice_tumor"],
                     document["pipeline_dice_tumor"])), document["false_alarm_masks"], self.output)
        return {**document, "output": self.output}


def evaluate_classseg(spark, **arguments) -> dict:
    """:meth:`ClassSegEvaluation.plan` with ``arguments``, then :meth:`~ClassSegEvaluation.run` on ``spark``."""
    return ClassSegEvaluation.plan(**arguments).run(spark)


def _text(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"
