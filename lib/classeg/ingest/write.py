"""Load: the scan table, the errors table and the summary.

Where the output is local or S3 (:func:`writable_base`), the decode tasks write the table themselves, so pixels
never pass through the JVM, in two Spark jobs:

1. Each decode task decodes its slice of the plan, appends the pixels (path, image, mask) batch by batch to
   one staging file ``<output>/_staging-<run_id>/part-<partition>.arrow`` (Arrow IPC, :class:`StagingWriter`)
   and returns only the metadata, which the driver collects to pair, label and split the scans.
2. Finalize tasks (one per core, each taking several staging files, :func:`finalize_scans`) join each staging
   file's rows with the resolved scans and write ``<output>/scans/split=<split>/part-<partition>.parquet``
   (:func:`finalize_part`): the layout Spark's ``partitionBy("split")`` writes.

The plan is cut only between keys, so an LGG slice and its mask are always in the same staging file. File
names are fixed by the partition number and written whole (classeg.io: local temp file, fsync and rename; S3
one PUT), so a retried or speculative task replaces its own file instead of adding rows. Elsewhere (hdfs://)
Spark joins the decoded rows with the scans and writes the table (:func:`build_scans`).
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc  # noqa: F401 (pa.ipc)
import pyarrow.parquet as pq

from classeg import __version__, split as splitting
from classeg.datasets.common import ERROR_COLUMNS
from classeg.ingest import storage
from classeg.ingest.fields import UNIT_FIELDS, ddl
from classeg.ingest.table import ERRORS_SCHEMA, SCAN_COLUMNS, SCAN_SCHEMA
from classeg.io import files, uri as uris
from classeg.io.uri import parse_uri

STAGING_PREFIX = "_staging-"
# ``path``: the decoded row's ``slice_uri`` (the file's path; ``<path>#<n>`` for a slice of a multi-image file).
STAGED_SCHEMA = pa.schema([("path", pa.string()), ("image", pa.binary()), ("mask", pa.binary())])
NO_DICTIONARY = ("image", "mask")  # unique, already-compressed PNG bytes: stored plain (parquet_options)
# Spark's Parquet options for the same reason, where Spark writes the table.
SPARK_PARQUET_OPTIONS = {"parquet.enable.dictionary#image": "false", "parquet.enable.dictionary#mask": "false"}
# Up to this many scans, Spark's path broadcasts the (small PNG) masks to the join.
MASK_BROADCAST_LIMIT = 200_000


def writable_base(uri: str) -> str | None:
    """``uri`` as a base the tasks can write to (an absolute local path, or ``s3://bucket/prefix``), or None
    for filesystems only Spark can write (hdfs://, ...)."""
    if uris.is_s3(uri):
        return uris.as_s3(uri).rstrip("/")
    try:
        location = parse_uri(uri)
    except ValueError:  # another scheme
        return None
    return location.path


def part_name(partition: int) -> str:
    """The scan-table file a partition writes in each split folder."""
    return f"part-{partition:05d}.parquet"


def staged_name(partition: int) -> str:
    """The staging file a decode task writes."""
    return f"part-{partition:05d}.arrow"


def parquet_options(column_names) -> dict:
    """``pq.write_table`` options for scan-table files. PNG bytes are unique and already deflate-compressed:
    snappy, dictionaries and min/max statistics on them cost CPU on every write and buy nothing, so those
    columns are stored plain; the other columns get snappy as Spark's."""
    column_names = list(column_names)
    plain = [name for name in column_names if name not in NO_DICTIONARY]
    return {"compression": {name: "snappy" if name in plain else "none" for name in column_names},
            "use_dictionary": plain, "write_statistics": plain}


def write_parquet(table: pa.Table, uri: str, *, s3_cfg: Any = None) -> None:
    """Write ``table`` as one Parquet file with :func:`parquet_options`, whole (classeg.io's atomic write),
    so readers never see half a file."""
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
    file whole (local: classeg.io's atomic_local_file; S3: one PUT), replacing what an earlier attempt of the
    same task wrote; ``abort()`` (also on leaving a ``with`` block by an exception) leaves nothing behind. Arrow
    IPC, not Parquet: the file is read once, straight away, by :func:`finalize_part`, memory-mapped, and
    encoding it as Parquet would cost more CPU than the whole finalize step."""

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
        """Append the rows of ``decoded`` (decode.decode_frame output) that carry pixels: those with an image
        first, then mask-only rows (LGG's ``_mask.tif``), so images lie in runs that finalize_part can hand to
        the Parquet writer as zero-copy slices. Rows are named by their ``slice_uri`` (by ``path`` in a frame
        without one: one image per file)."""
        frame = decoded[["slice_uri" if "slice_uri" in decoded else "path", "image", "mask"]].set_axis(
            ["path", "image", "mask"], axis=1)
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
    """A staging file as an Arrow table: memory-mapped when local (no copy, which is why this is not
    files.read_bytes), read whole from S3."""
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
    """Join one staging file with the resolved scans whose image it holds (by ``slice_uri``) and write their
    rows, one file per split (``<scans>/split=<split>/part-<partition>.parquet``). ``units``: resolve's scans
    plus orig_height/orig_width. Returns the number of rows written.

    The image bytes are never copied on the way: each split's rows are written in staging-file order, as
    zero-copy slices of the memory-mapped file (runs of consecutive rows); gathering them into a new buffer
    instead (``take``) costs first touches of fresh memory that dwarf the Parquet write. Masks (small PNGs)
    are gathered by index: from the mask's own row (LGG), the image's row (figshare), or null (no mask_path)."""
    staged = read_staged(staging, partition, s3_cfg=s3_cfg)
    row_of = {slice_uri: i for i, slice_uri in enumerate(staged.column("path").to_pylist())}
    mine = units[units["slice_uri"].isin(row_of.keys())]
    if mine.empty:
        return 0
    mine = mine.assign(_row=mine["slice_uri"].map(row_of)).sort_values("_row", kind="mergesort")
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
        mask_rows = pa.array([None if path is None else row_of[path] for path in rows["mask_path"]], pa.int64())
        columns["mask"] = masks.take(mask_rows)
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
    """Object columns with None for missing values, so Arrow and Spark take nullable ints and bools as they are."""
    return frame.astype(object).where(frame.notna(), None)


def finalize_scans(spark, units: pd.DataFrame, meta: pd.DataFrame, *, parts: int, staging: str, scans: str,
                   dataset: str, s3_cfg=None) -> int:
    """The task-written table: one task per core runs :func:`finalize_part` over several staging files;
    returns how many rows were written."""
    sizes = meta.loc[meta["kind"] == "image", ["slice_uri", "orig_height", "orig_width"]]
    shared = spark.sparkContext.broadcast(units.merge(sizes, on="slice_uri", how="left"))

    def run(batches):  # a pandas UDF like the decode: the same (warm) Python workers run it
        for batch in batches:
            yield pd.DataFrame({"written": [
                finalize_part(int(part), shared.value, staging=staging, scans=scans, dataset=dataset,
                              s3_cfg=s3_cfg) for part in batch["id"]]}, dtype="int64")

    try:
        # One task per core (each takes several parts): finalizing a part is short next to a task's start-up.
        ids = spark.range(parts, numPartitions=max(1, min(parts, spark.sparkContext.defaultParallelism)))
        return int(ids.mapInPandas(run, schema="written long").toPandas()["written"].sum())
    finally:
        shared.destroy()


def build_scans(spark, decoded, units: pd.DataFrame, *, dataset: str):
    """Spark's path: decoded rows (DECODED_FIELDS) + resolved units, joined by ``slice_uri`` -> scan rows
    (SCAN_COLUMNS). Each scan's mask comes from the decoded row its ``mask_path`` names (the mask file, or the
    image file itself); no ``mask_path``, no mask. Only image bytes move through the join; masks are small PNGs
    and are broadcast unless there are very many."""
    from pyspark.sql import functions as F

    unit_frame = spark.createDataFrame(_plain(units), schema=ddl(UNIT_FIELDS))
    decoded_ok = F.col("reason").isNull()
    images = decoded.where((F.col("kind") == "image") & decoded_ok).select(
        "slice_uri", "image", "orig_height", "orig_width")
    masks = decoded.where(F.col("mask").isNotNull() & decoded_ok).select(F.col("slice_uri").alias("mask_path"),
                                                                         "mask")
    scans = images.join(F.broadcast(unit_frame), "slice_uri")
    scans = scans.join(F.broadcast(masks) if len(units) <= MASK_BROADCAST_LIMIT else masks, "mask_path", "left")
    named = {"source_uri": F.col("image_path"), "mask_source_uri": F.col("mask_path"), "dataset": F.lit(dataset)}
    return scans.select(*[named[c].alias(c) if c in named else F.col(c) for c in SCAN_COLUMNS])


def write_issues(spark, issues: pd.DataFrame, *, output: str, folder: str, base: str | None, s3_cfg=None) -> None:
    """The errors table (ERROR_COLUMNS) as ``<output>/<folder>``, replacing it. Where the tasks write the scan
    table (``base``: the output as :func:`writable_base` gives it) the driver writes one Parquet file with
    pyarrow, with no Spark job for a few hundred rows; elsewhere Spark writes it."""
    plain = _plain(issues[ERROR_COLUMNS])
    if base is None:
        (spark.createDataFrame(plain, schema=ddl([(name, "string") for name in ERROR_COLUMNS]))
         .coalesce(1).write.mode("overwrite").parquet(storage.spark_uri(uris.join(output, folder))))
        return
    storage.delete(spark, uris.join(output, folder), s3_cfg=s3_cfg)
    table = pa.Table.from_pandas(plain, schema=ERRORS_SCHEMA, preserve_index=False)
    write_parquet(table, uris.join(base, folder, part_name(0)), s3_cfg=s3_cfg)


def failure_reason(summary: dict, max_error_rate: float) -> str | None:
    """Why the run fails its checks (no usable scans, or an error rate above ``max_error_rate``), or None."""
    if summary["scans"] == 0:
        return (f"no usable scans found under {summary['input']} for layout {summary['dataset']!r} "
                f"({summary['files']['listed']} files listed; errors by reason: {summary['errors_by_reason']})")
    if summary["error_rate"] > max_error_rate:
        return (f"error rate {summary['error_rate']:.4f} is above --max-error-rate {max_error_rate} "
                f"({summary['files']['errors']} bad files; reasons: {summary['errors_by_reason']})")
    return None


def summarise(units: pd.DataFrame, issues: pd.DataFrame, *, listed: int, dataset: str, class_names, job,
              root: str, run_id: str, tumor_note: str | None = None) -> dict:
    """The JSON summary: counts per split, class and patient; every error and skipped file with its reason.
    ``job``: the config's ingest section. Raises RuntimeError if a listed file is not accounted for.
    ``files.scan_files`` counts the files that became scans: a multi-frame DICOM or NIfTI volume is one file
    and as many scans as slices."""
    errors = issues[issues["severity"] == "error"]
    skipped = issues[issues["severity"] == "skipped"]
    masks = int((units["mask_path"].notna() & (units["mask_path"] != units["slice_uri"])).sum())
    scan_files = int(units["image_path"].nunique())
    accounted = scan_files + masks + len(issues)
    if accounted != listed:  # every listed file must be (the slices of) scans, a mask or an issue row
        raise RuntimeError(f"ingest accounting bug: {listed} files listed but {accounted} accounted for")
    candidates = listed - len(skipped)
    return {
        "dataset": dataset, "input": root, "output": job.output, "run_id": run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "classeg_version": __version__,
        "image_size": job.image_size, "seed": job.seed, "split_fractions": job.split,
        "class_names": list(class_names), "scans": len(units),
        "per_split": {s: int((units["split"] == s).sum()) for s in splitting.SPLITS},
        "per_class": {name: {s: int(((units["label_name"] == name) & (units["split"] == s)).sum())
                             for s in splitting.SPLITS} for name in class_names},
        "tumor_scans": int((units["has_tumor"] == True).sum()),  # noqa: E712 (object column with None)
        "has_tumor_note": tumor_note,
        **_patients(units),
        "folds": ({str(k): int(v) for k, v in units["fold"].value_counts().sort_index().items()}
                  if units["fold"].notna().any() else None),
        "files": {"listed": listed, "scans": len(units), "scan_files": scan_files, "masks": masks,
                  "errors": len(errors), "skipped": len(skipped)},
        "error_rate": round(len(errors) / candidates, 6) if candidates else 0.0,
        "errors_by_reason": {str(k): int(v) for k, v in errors["reason"].value_counts().items()},
        "skipped_by_reason": {str(k): int(v) for k, v in skipped["reason"].value_counts().items()},
        "errors": errors.head(1000).to_dict("records"), "skipped": skipped.head(1000).to_dict("records"),
    }


def _patients(units: pd.DataFrame) -> dict:
    """The summary's patient fields: counts and ids per split, slices per patient, and the split's note."""
    with_patient = units[units["patient_id"].notna()]
    patients = {s: sorted(with_patient.loc[with_patient["split"] == s, "patient_id"].unique())
                for s in splitting.SPLITS}
    per_patient = with_patient.groupby("patient_id").agg(slices=("scan_id", "size"),
                                                         tumor_slices=("has_tumor", "sum"))
    has_patients = len(with_patient) > 0
    return {
        "patients": {"count": int(with_patient["patient_id"].nunique()),
                     "per_split": {s: len(v) for s, v in patients.items()}, "ids": patients,
                     "slices": {pid: {"slices": int(r.slices), "tumor_slices": int(r.tumor_slices)}
                                for pid, r in per_patient.iterrows()}},
        "patient_level_split": has_patients,
        "split_note": ("split by patient: no patient appears in two splits" if has_patients else
                       "no patient ids in this layout: a patient-level split is impossible, scans were split "
                       "individually (stratified by label; the slices of one volume or multi-frame file "
                       "together); slices of one patient may be in different splits"),
    }
