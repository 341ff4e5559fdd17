"""The series table: one row per DICOM series (or NIfTI volume) of a completed scoring run, beside the scores.

Layout: ``<output>/series/run_date=D/run_id=R/part-*.parquet`` (columns :data:`SERIES_SCHEMA_DDL`), written by
the scoring job from the run's own ok rows after they are checked, before the run is marked complete. The
scores readers only read ``run_date=*`` folders, so this folder never mixes into the scores table; readers of
the series table apply the same rule as for the scores (completed runs only, :func:`read_series`).

Per series (``series_uid``; a file without one, a NIfTI volume or a lone image, is its own series, keyed by its
``source_uri``): ``objects`` (files), ``slices_scored`` (ok rows: frames, slices or single-frame files),
``tumor_slices``, ``max_tumor_probability`` and ``mean_tumor_probability`` over the scored slices, the tumour
slice range ``tumor_first_slice``/``tumor_last_slice`` (slice position: the frame of a multi-frame file or
volume, else the DICOM Instance Number) and ``tumor_volume_mm3``, the estimated tumour volume: the sum over
tumour slices of mask area (pixels) x pixel spacing (row x column, mm) x slice thickness (mm), null when the
series has no predicted mask or lacks the spacing or thickness. The estimate assumes contiguous slices, one
thickness apart; overlapping or gapped acquisitions over- or under-count by the ratio of spacing to thickness.

A run scores only the objects that are new, so a series whose slices arrive over several runs has one row per
run, each over that run's slices.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from classeg.io.uri import parse_uri

log = logging.getLogger(__name__)

__all__ = ["SERIES_COLUMNS", "SERIES_DIR", "SERIES_SCHEMA_DDL", "read_series", "series_frame", "series_path",
           "write_series"]

SERIES_DIR = "series"
SERIES_SCHEMA_DDL = (
    "series_key string, series_uid string, study_uid string, modality string, series_description string, "
    "patient_key string, objects long, slices_scored long, tumor_slices long, max_tumor_probability double, "
    "mean_tumor_probability double, tumor_first_slice int, tumor_last_slice int, tumor_volume_mm3 double, "
    "pixel_spacing_mm array<double>, slice_thickness_mm double")
SERIES_COLUMNS = tuple(part.strip().split(" ")[0] for part in SERIES_SCHEMA_DDL.split(","))


def series_path(output: str, run_date: str, run_id: str) -> str:
    """Where run ``run_id`` of ``run_date`` writes its series rows, as a URI Spark can write to."""
    return parse_uri(output).child(f"{SERIES_DIR}/run_date={run_date}/run_id={run_id}").spark_uri


def series_frame(rows):
    """The series rows (:data:`SERIES_SCHEMA_DDL`) of a Spark DataFrame of scores rows (its ok rows count)."""
    from pyspark.sql import functions as F

    ok = rows.where(F.col("status") == "ok")
    position = F.coalesce(F.col("frame"), F.col("instance_number"))
    tumor = F.col("tumor") == F.lit(True)
    area_mm2 = F.col("mask_area_px") * F.col("pixel_spacing_mm")[0] * F.col("pixel_spacing_mm")[1]
    grouped = ok.withColumn("series_key", F.coalesce("series_uid", "source_uri")).groupBy("series_key").agg(
        F.first("series_uid", ignorenulls=True).alias("series_uid"),
        F.first("study_uid", ignorenulls=True).alias("study_uid"),
        F.first("modality", ignorenulls=True).alias("modality"),
        F.first("series_description", ignorenulls=True).alias("series_description"),
        F.first("patient_key", ignorenulls=True).alias("patient_key"),
        F.countDistinct("source_uri").cast("long").alias("objects"),
        F.count(F.lit(1)).cast("long").alias("slices_scored"),
        F.sum(F.when(tumor, 1).otherwise(0)).cast("long").alias("tumor_slices"),
        F.max("tumor_probability").alias("max_tumor_probability"),
        F.avg("tumor_probability").alias("mean_tumor_probability"),
        F.min(F.when(tumor, position)).cast("int").alias("tumor_first_slice"),
        F.max(F.when(tumor, position)).cast("int").alias("tumor_last_slice"),
        F.sum(F.when(tumor, area_mm2 * F.col("slice_thickness_mm"))).alias("tumor_volume_mm3"),
        F.first("pixel_spacing_mm", ignorenulls=True).alias("pixel_spacing_mm"),
        F.first("slice_thickness_mm", ignorenulls=True).alias("slice_thickness_mm"),
    )
    return grouped.select(*SERIES_COLUMNS)


def write_series(spark, scores_uri: str, output: str, run_date: str, run_id: str, *, schema: str) -> int:
    """Summarise the scores rows written at ``scores_uri`` (Spark ``schema``) into the run's series folder;
    returns the number of series."""
    rows = spark.read.schema(schema).parquet(scores_uri)
    frame = series_frame(rows).cache()
    try:
        count = frame.count()
        frame.coalesce(1).write.mode("overwrite").parquet(series_path(output, run_date, run_id))
    finally:
        frame.unpersist()
    log.info("run %s: %d series summarised in %s", run_id, count, series_path(output, run_date, run_id))
    return count


def read_series(output: str | Path, *, s3_cfg: Any = None) -> pd.DataFrame:
    """The series rows of the completed runs of a local scores output (with ``run_id``), newest run first;
    empty when there are none. Read with pyarrow (no Spark), as the report does."""
    import pyarrow.dataset as ds

    from classeg.scoring.table import completed_runs

    root = Path(parse_uri(str(output)).path) / SERIES_DIR
    if not root.is_dir():
        return pd.DataFrame(columns=[*SERIES_COLUMNS, "run_id"])
    runs = completed_runs(str(output), s3_cfg=s3_cfg)
    parts = []
    for run_id, marker in reversed(list(runs.items())):
        folder = root / f"run_date={marker['run_date']}" / f"run_id={run_id}"
        if folder.is_dir():
            table = ds.dataset(str(folder), format="parquet").to_table()
            parts.append(table.to_pandas().assign(run_id=run_id))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*SERIES_COLUMNS, "run_id"])
