"""The scan table written by the decode tasks themselves, so pixels never pass through the JVM.

Ingest's default path for local and S3 outputs (``etl.run_ingest``), in two Spark jobs:

1. Each decode task decodes its slice of the plan, appends the pixels (path, image, mask) batch by batch to
   one staging file ``<output>/_staging-<run_id>/part-<partition>.arrow`` (Arrow IPC) and returns only the
   metadata, which the driver collects to pair, label and split the scans.
2. Finalize tasks (one per core, each taking several staging files) join each staging file's rows with the
   resolved scans and write ``<output>/scans/split=<split>/part-<partition>.parquet``: the layout Spark's
   ``partitionBy("split")`` writes, read back by ``spark.read.parquet``.

The plan is cut only between keys (``chunk_plan``), so an LGG slice and its mask are always in the same
staging file. File names are fixed by the partition number and written whole (local: temp file and rename;
S3: one PUT), so a retried or speculative task replaces its own file instead of adding rows.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc  # noqa: F401 (pa.ipc)
import pyarrow.parquet as pq

from classeg.io import files, uri as uris
from classeg.io.uri import parse_uri

STAGING_PREFIX = "_staging-"
# The scan table's columns as Spark writes them (split is the partition folder, not a column).
SCAN_SCHEMA = pa.schema([
    ("scan_id", pa.string()), ("dataset", pa.string()), ("source_uri", pa.string()),
    ("mask_source_uri", pa.string()), ("patient_id", pa.string()), ("slice_index", pa.int32()),
    ("sequence", pa.string()), ("label", pa.int32()), ("label_name", pa.string()), ("image", pa.binary()),
    ("mask", pa.binary()), ("has_tumor", pa.bool_()), ("orig_height", pa.int32()), ("orig_width", pa.int32()),
    ("fold", pa.int32())])
STAGED_SCHEMA = pa.schema([("path", pa.string()), ("image", pa.binary()), ("mask", pa.binary())])
NO_DICTIONARY = ("image", "mask")  # unique, already-compressed PNG bytes: stored plain (parquet_options)


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
    """The scan-table file a partition writes in each split folder."""
    return f"part-{partition:05d}.parquet"


def staged_name(partition: int) -> str:
    """The staging file a decode task writes."""
    return f"part-{partition:05d}.arrow"


def parquet_options(column_names) -> dict:
    """``pq.write_table`` options for scan-table files. PNG bytes are unique and already deflate-compressed:
    snappy, dictionaries and min/max statistics on them cost CPU on every write (snappy alone ~0.7 CPU-s per
    300 MB) and buy nothing, so those columns are stored plain; the other columns get snappy as Spark's."""
    names = list(column_names)
    plain = [name for name in names if name not in NO_DICTIONARY]
    return {"compression": {name: "snappy" if name in plain else "none" for name in names},
            "use_dictionary": plain, "write_statistics": plain}


def write_parquet(table: pa.Table, uri: str, *, s3_cfg: Any = None) -> None:
    """Write ``table`` as one Parquet file with :func:`parquet_options`, whole: a local file goes to a temp
    name and is renamed, an S3 object is one PUT, so readers never see half a file."""
    if uris.is_s3(uri):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **parquet_options(table.column_names))
        files.write_bytes(uri, sink.getvalue().to_pybytes(), s3_cfg=s3_cfg)
        return
    with files.atomic_local_file(parse_uri(uri).path) as temporary:
        pq.write_table(table, temporary, **parquet_options(table.column_names))


class StagingWriter:
    """One decode task's staging file: Arrow IPC record batches of (path, image, mask), appended batch by
    batch as the task decodes, so a task never holds more than one batch of pixels. ``close()`` publishes the
    file whole (local: temp file and rename; S3: one PUT), replacing what an earlier attempt of the same task
    wrote; ``abort()`` (also on leaving a ``with`` block by an exception) leaves nothing behind. Arrow IPC,
    not Parquet: the file is read once, straight away, by :func:`finalize_part`, memory-mapped, and encoding
    it as Parquet cost more CPU than the whole finalize step."""

    def __init__(self, staging: str, partition: int, *, s3_cfg: Any = None):
        self.uri = uris.join(staging, staged_name(partition))
        self._s3_cfg = s3_cfg
        if uris.is_s3(self.uri):
            self._local, self._sink = None, pa.BufferOutputStream()
        else:
            self._local = files.atomic_local_file(parse_uri(self.uri).path)
            self._sink = pa.OSFile(self._local.__enter__(), "wb")
        self._writer = pa.ipc.new_file(self._sink, STAGED_SCHEMA)
        self._open = True

    def write(self, decoded: pd.DataFrame) -> None:
        """Append the rows of ``decoded`` (etl.decode_frame output) that carry pixels: those with an image
        first, then mask-only rows (LGG's ``_mask.tif``), so images lie in runs that finalize_part can hand to
        the Parquet writer as zero-copy slices."""
        frame = decoded[["path", "image", "mask"]]
        has_image = frame["image"].notna()
        frame = pd.concat([frame[has_image], frame[~has_image & frame["mask"].notna()]])
        if len(frame):
            self._writer.write_table(pa.Table.from_pandas(frame, schema=STAGED_SCHEMA, preserve_index=False))

    def close(self) -> None:
        self._writer.close()
        self._open = False
        if self._local is None:
            files.write_bytes(self.uri, self._sink.getvalue().to_pybytes(), s3_cfg=self._s3_cfg)
            return
        self._sink.close()
        self._local.__exit__(None, None, None)  # fsync, then rename into place

    def abort(self) -> None:
        if not self._open:
            return
        self._open = False
        self._sink.close()
        if self._local is not None:
            aborted = RuntimeError(f"staging file {self.uri} aborted")
            self._local.__exit__(RuntimeError, aborted, None)  # removes the temporary file

    def __enter__(self) -> "StagingWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_staged(decoded: pd.DataFrame, *, staging: str, partition: int, s3_cfg: Any = None) -> None:
    """Write one task's decoded pixels (path, image, mask) as its staging file in one go."""
    with StagingWriter(staging, partition, s3_cfg=s3_cfg) as writer:
        writer.write(decoded)


def read_staged(staging: str, partition: int, *, s3_cfg: Any = None) -> pa.Table:
    """A staging file as an Arrow table: memory-mapped when local (no copy), read whole from S3."""
    uri = uris.join(staging, staged_name(partition))
    if uris.is_s3(uri):
        source = pa.py_buffer(files.read_bytes(uri, s3_cfg=s3_cfg))
    else:
        path = parse_uri(uri).path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{uri} does not exist")
        source = pa.memory_map(path)
    return pa.ipc.open_file(source).read_all()


def finalize_part(partition: int, units: pd.DataFrame, *, staging: str, scans: str, dataset: str,
                  s3_cfg: Any = None) -> int:
    """Join one staging file with the resolved scans whose image it holds and write their rows, one file per
    split (``<scans>/split=<split>/part-<partition>.parquet``). ``units``: etl.resolve's scans plus
    orig_height/orig_width. Returns the number of rows written.

    The image bytes are never copied on the way: each split's rows are written in staging-file order, as
    zero-copy slices of the memory-mapped file (runs of consecutive rows). Gathering them into a new buffer
    instead (``take``) cost 6x the whole Parquet write, nearly all of it first touches of fresh memory. Masks
    (small PNGs) are gathered by index."""
    staged = read_staged(staging, partition, s3_cfg=s3_cfg)
    row_of = {path: i for i, path in enumerate(staged.column("path").to_pylist())}
    mine = units[units["image_path"].isin(row_of.keys())]
    if mine.empty:
        return 0
    mine = mine.assign(_row=mine["image_path"].map(row_of)).sort_values("_row", kind="mergesort")
    images, masks = staged.column("image"), staged.column("mask")
    renamed = {"source_uri": "image_path", "mask_source_uri": "mask_path"}
    written = 0
    for split in sorted(set(mine["split"])):
        rows = _plain(mine[mine["split"] == split])
        positions = rows["_row"].to_numpy(dtype="int64")
        columns = {field.name: pa.chunked_array([pa.array(rows[renamed.get(field.name, field.name)].tolist(),
                                                          field.type)])
                   for field in SCAN_SCHEMA if field.name not in ("dataset", "image", "mask")}
        columns["dataset"] = pa.chunked_array([pa.array([dataset] * len(rows), pa.string())])
        columns["image"] = pa.chunked_array([images.slice(start, length) for start, length in _runs(positions)],
                                            pa.binary())
        columns["mask"] = pa.chunked_array([masks.take(pa.array([row_of[p] for p in rows["mask_path"]]))
                                            if dataset != "folders" else pa.nulls(len(rows), pa.binary())])
        table = pa.Table.from_arrays([columns[field.name] for field in SCAN_SCHEMA], schema=SCAN_SCHEMA)
        write_parquet(table, uris.join(scans, f"split={split}/{part_name(partition)}"), s3_cfg=s3_cfg)
        written += table.num_rows
    return written


def _runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive integers in the ascending ``positions``."""
    if not len(positions):
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(positions)]])
    return [(int(positions[a]), int(b - a)) for a, b in zip(starts, ends)]


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns with None for missing values, so Arrow takes nullable ints and bools as they are."""
    return frame.astype(object).where(frame.notna(), None)
