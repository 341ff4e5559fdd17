"""The scan table written by the decode tasks themselves, so pixels never pass through the JVM.

Ingest's default path for local and S3 outputs (``etl.run_ingest``), in two Spark jobs:

1. Each decode task decodes its slice of the plan, writes the pixels (path, image, mask) to one staging
   Parquet file ``<output>/_staging-<run_id>/part-<partition>.parquet`` and returns only the metadata, which
   the driver collects to pair, label and split the scans.
2. Finalize tasks (one per core, each taking several staging files) join each staging file's rows with the
   resolved scans and write ``<output>/scans/split=<split>/part-<partition>.parquet``: the layout Spark's ``partitionBy("split")``
   writes, read back by ``spark.read.parquet``.

The plan is cut only between keys (``chunk_plan``), so an LGG slice and its mask are always in the same
staging file. File names are fixed by the partition number and written whole (local: temp file and rename;
S3: one PUT), so a retried or speculative task replaces its own file instead of adding rows.
"""
from __future__ import annotations

import io
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from classeg import artifact
from classeg.archive import parse_uri

STAGING_PREFIX = "_staging-"
# The scan table's columns as Spark writes them (split is the partition folder, not a column).
SCAN_SCHEMA = pa.schema([
    ("scan_id", pa.string()), ("dataset", pa.string()), ("source_uri", pa.string()),
    ("mask_source_uri", pa.string()), ("patient_id", pa.string()), ("slice_index", pa.int32()),
    ("sequence", pa.string()), ("label", pa.int32()), ("label_name", pa.string()), ("image", pa.binary()),
    ("mask", pa.binary()), ("has_tumor", pa.bool_()), ("orig_height", pa.int32()), ("orig_width", pa.int32()),
    ("fold", pa.int32())])
STAGED_SCHEMA = pa.schema([("path", pa.string()), ("image", pa.binary()), ("mask", pa.binary())])
NO_DICTIONARY = ("image", "mask")  # unique, already-compressed PNG bytes


def writable_base(uri: str) -> str | None:
    """``uri`` as a base the tasks can write to (an absolute local path, or ``s3://bucket/prefix``), or None
    for filesystems only Spark can write (hdfs://, ...)."""
    head, sep, rest = uri.partition("://")
    if sep and head.lower() in ("s3", "s3a", "s3n"):
        return "s3://" + rest.rstrip("/")
    if uri.startswith("file:/") and not uri.startswith("file://"):
        uri = "file://" + uri[len("file:"):]  # Hadoop's file:/abs form
    try:
        location = parse_uri(uri)
    except ValueError:  # another scheme
        return None
    return location.path if location.scheme == "file" else None


def chunk_plan(keys: pd.Series, count: int) -> list[list[int]]:
    """Row positions of ``keys`` (sorted) cut into at most ``count`` contiguous chunks of near-equal size,
    never between two rows with the same key."""
    order = sorted(range(len(keys)), key=lambda i: (keys.iloc[i], i))
    target = max(1, -(-len(order) // max(1, count)))
    chunks: list[list[int]] = [[]]
    for position, index in enumerate(order):
        if len(chunks[-1]) >= target and keys.iloc[index] != keys.iloc[order[position - 1]]:
            chunks.append([])
        chunks[-1].append(index)
    return [chunk for chunk in chunks if chunk]


def part_name(partition: int) -> str:
    return f"part-{partition:05d}.parquet"


def _to_parquet(table: pa.Table, compression: str | None = "snappy") -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=compression,
                   use_dictionary=[name for name in table.column_names if name not in NO_DICTIONARY])
    return sink.getvalue()


def write_staged(decoded: pd.DataFrame, *, staging: str, partition: int, s3_cfg: Any = None) -> None:
    """Write one task's decoded pixels (path, image, mask) as its staging file."""
    frame = decoded[["path", "image", "mask"]]
    frame = frame[frame["image"].notna() | frame["mask"].notna()]
    table = pa.Table.from_pandas(frame, schema=STAGED_SCHEMA, preserve_index=False)
    # Uncompressed: read once, straight away; PNG bytes do not compress anyway.
    artifact.write_bytes(artifact.join(staging, part_name(partition)), _to_parquet(table, None), s3_cfg=s3_cfg)


def finalize_part(name: str, units: pd.DataFrame, *, staging: str, scans: str, dataset: str,
                  s3_cfg: Any = None) -> int:
    """Join one staging file with the resolved scans whose image it holds and write their rows, one file per
    split. ``units``: etl.resolve's scans plus orig_height/orig_width. Pixels stay in Arrow buffers (taken by
    index, never turned into Python objects). Returns the number of rows written."""
    staged = pq.read_table(io.BytesIO(artifact.read_bytes(artifact.join(staging, name), s3_cfg=s3_cfg)))
    row_of = {path: i for i, path in enumerate(staged.column("path").to_pylist())}
    mine = units[units["image_path"].isin(row_of.keys())]
    if mine.empty:
        return 0
    plain = _plain(mine)
    renamed = {"source_uri": "image_path", "mask_source_uri": "mask_path"}
    columns = {field.name: pa.array(plain[renamed.get(field.name, field.name)].tolist(), field.type)
               for field in SCAN_SCHEMA if field.name not in ("dataset", "image", "mask")}
    columns["dataset"] = pa.array([dataset] * len(mine), pa.string())
    columns["image"] = staged.column("image").take(pa.array([row_of[p] for p in mine["image_path"]]))
    columns["mask"] = (staged.column("mask").take(pa.array([row_of[p] for p in mine["mask_path"]]))
                       if dataset != "folders" else pa.nulls(len(mine), pa.binary()))
    table = pa.Table.from_arrays([columns[field.name] for field in SCAN_SCHEMA], schema=SCAN_SCHEMA)
    splits = mine["split"].to_numpy()
    written = 0
    for split in sorted(set(splits)):
        part = table.filter(pa.array(splits == split))
        artifact.write_bytes(artifact.join(scans, f"split={split}/{name}"), _to_parquet(part), s3_cfg=s3_cfg)
        written += part.num_rows
    return written


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns with None for missing values, so Arrow takes nullable ints and bools as they are."""
    return frame.astype(object).where(frame.notna(), None)
