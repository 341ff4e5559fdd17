"""The scan table folder: what ingest writes under its output URI, and how training, evaluation and the report
read it back.

``<output>/scans/split=<split>/`` is the scan table (SCAN_SCHEMA, partitioned by split: the layout Spark's
``partitionBy("split")`` writes), ``errors/`` the errors table (one row per file that did not become a scan,
ERROR_COLUMNS), ``summary.json`` is written last (its presence marks a complete run) and ``last_failure/``
holds the errors and summary of a run that failed its checks. No leading "_": Spark hides such names.
"""
from __future__ import annotations

import json

import pyarrow as pa

from classeg.datasets.common import ERROR_COLUMNS
from classeg.ingest import storage
from classeg.io.uri import join

SCANS_DIR = "scans"
ERRORS_DIR = "errors"
SUMMARY_NAME = "summary.json"
FAILURE_DIR = "last_failure"

# The stored columns, the same whoever writes them (the tasks or Spark); split is the partition folder.
# image: uint8 PNG, (size, size) or (size, size, 3) at ingest.image_size; mask: (size, size) {0, 255} PNG, null
# for folder datasets (they have no masks).
SCAN_SCHEMA = pa.schema([
    ("scan_id", pa.string()), ("dataset", pa.string()), ("source_uri", pa.string()),
    ("mask_source_uri", pa.string()), ("patient_id", pa.string()), ("slice_index", pa.int32()),
    ("sequence", pa.string()), ("label", pa.int32()), ("label_name", pa.string()), ("image", pa.binary()),
    ("mask", pa.binary()), ("has_tumor", pa.bool_()), ("orig_height", pa.int32()), ("orig_width", pa.int32()),
    ("fold", pa.int32())])
# The columns as read back: the stored ones and the split.
SCAN_COLUMNS = [*SCAN_SCHEMA.names, "split"]
ERRORS_SCHEMA = pa.schema([(name, pa.string()) for name in ERROR_COLUMNS])


def read_scan_table(spark, uri: str, *, s3_cfg=None):
    """Load a complete scan table: (DataFrame with SCAN_COLUMNS, summary dict). Raises ValueError if the
    table was never finished (no ``summary.json``: a failed or interrupted ingest) and FileNotFoundError if
    absent. ``s3_cfg``: the S3 settings the summary of an ``s3://`` table is read with."""
    try:
        summary = json.loads(storage.read_text(spark, join(uri, SUMMARY_NAME), s3_cfg=s3_cfg))
    except FileNotFoundError:
        if not storage.folder_exists(spark, uri, s3_cfg=s3_cfg):
            raise FileNotFoundError(f"scan table {uri!r} does not exist") from None
        raise ValueError(f"scan table {uri!r} is incomplete (no {SUMMARY_NAME}): its ingest failed or was "
                         f"interrupted; run ingest again") from None
    return spark.read.parquet(join(storage.spark_uri(uri), SCANS_DIR)), summary


def read_errors(spark, uri: str):
    """The errors table (ERROR_COLUMNS) of a scan table folder."""
    return spark.read.parquet(join(storage.spark_uri(uri), ERRORS_DIR))
