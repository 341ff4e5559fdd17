"""Ingest: dataset files -> scan rows -> patient-level split -> Parquet scan table.

Extract: a local or S3 dataset is listed on the driver (``list_local``, ``list_s3`` with boto3); any other
filesystem (hdfs://) by Spark's ``binaryFile`` file index, recursively. Transform: each file is classified from
its path (``parse_listing``), duplicate copies are dropped before any decoding, the remaining files are decoded in
executors (``decode_frame``: decode, resize to the canonical size, PNG-encode; the tasks read local and S3
files themselves, binaryFile's ``content`` feeds them for other filesystems), images are paired with their
masks and labelled (``resolve``), and groups are dealt into splits (``split.assign_splits``). Load: the scan
table partitioned by ``split`` (written by the tasks from staged pixels, classeg.scanwrite, or by Spark), an
errors table in ``errors/`` and ``summary.json`` written last, all under the output folder; a table without its
summary is incomplete.

Every listed file ends in exactly one place: a scan row (as its image or its mask) or an errors-table row
(``severity`` 'error' for bad input, 'skipped' for duplicates, metadata and partners of failed files).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from types import ModuleType

import pandas as pd
import pyarrow as pa

from classeg import __version__, scanwrite, split as splitting
from classeg.config import Config
from classeg.datasets import figshare, folders, lgg
from classeg.archive import list_archive
from classeg.errors import FetchError
from classeg.io import files, uri as uris
from classeg.io.files import fetch
from classeg.io.s3 import client as s3_client
from classeg.io.uri import parse_uri
from classeg.datasets.common import is_hidden
from classeg.imaging import DecodeError

log = logging.getLogger(__name__)

LAYOUTS: dict[str, ModuleType] = {"lgg": lgg, "figshare": figshare, "folders": folders}
# The output URI is a folder: scans/ (the scan table, partitioned by split), errors/ (one row per file that did
# not become a scan, with severity and reason), summary.json (written last: its presence marks a complete run)
# and last_failure/ (errors and summary of a run that failed its checks). No leading "_": Spark hides those.
SCANS_DIR = "scans"
ERRORS_DIR = "errors"
SUMMARY_NAME = "summary.json"
FAILURE_DIR = "last_failure"

PARSED_FIELDS = [("path", "string"), ("relpath", "string"), ("kind", "string"), ("key", "string"),
                 ("patient_id", "string"), ("slice_index", "int"), ("label", "int"), ("label_name", "string"),
                 ("sequence", "string"), ("split_hint", "string"), ("reason", "string")]
DECODED_FIELDS = PARSED_FIELDS + [("detail", "string"), ("image", "binary"), ("mask", "binary"),
                                  ("has_tumor", "boolean"), ("orig_height", "int"), ("orig_width", "int"),
                                  ("folds", "array<int>")]
META_FIELDS = [field for field in DECODED_FIELDS if field[0] not in ("image", "mask")]
ERROR_COLUMNS = ["source_uri", "relpath", "severity", "reason", "detail"]
# PNG bytes are unique and already compressed: a dictionary for them is built only to be thrown away.
PARQUET_OPTIONS = {"parquet.enable.dictionary#image": "false", "parquet.enable.dictionary#mask": "false"}
# The scan table's columns: the stored ones (scanwrite.SCAN_SCHEMA, the same whoever writes) and the split.
SCAN_COLUMNS = [*scanwrite.SCAN_SCHEMA.names, "split"]


def _ddl(fields) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in fields)


def layout_module(dataset: str) -> ModuleType:
    try:
        return LAYOUTS[dataset]
    except KeyError:
        raise ValueError(f"dataset must be one of {sorted(LAYOUTS)}, got {dataset!r}") from None


# ---------------------------------------------------------------------------------------------- pure pandas
def relative_path(path: str, root: str) -> str:
    """``path`` relative to the qualified dataset ``root`` (both as Spark reports them), '/'-separated."""
    root = root.rstrip("/")
    if not path.startswith(root + "/"):
        raise ValueError(f"{path!r} is not under the dataset root {root!r}")
    return path[len(root) + 1:]


def parse_listing(listing: pd.DataFrame, *, dataset: str, root: str) -> pd.DataFrame:
    """Classify listed files from their paths alone. ``listing`` has a ``path`` column; returns one row per
    file with the PARSED_FIELDS columns. Hidden files and OS litter are 'meta' (recorded, not scanned)."""
    module = layout_module(dataset)
    rows = []
    for path in listing["path"]:
        rel = relative_path(path, root)
        record = {"kind": "meta"} if is_hidden(rel) else module.parse_path(rel)
        rows.append({**{name: None for name, _ in PARSED_FIELDS}, **record, "path": path, "relpath": rel})
    return pd.DataFrame(rows, columns=[name for name, _ in PARSED_FIELDS])


def decode_frame(files: pd.DataFrame, *, dataset: str, image_size: int, read=None) -> pd.DataFrame:
    """Decode each file with the layout's decoder. The bytes come from the ``content`` column, or from
    ``read(path)`` when given (the task reads the file itself). Returns DECODED_FIELDS rows; a file that fails
    to read or decode keeps its parsed fields and gets ``reason``/``detail`` (DecodeError.reason, message)."""
    module = layout_module(dataset)
    out = []
    for record in files.to_dict("records"):
        content = record.pop("content", None)
        row = {**{name: None for name, _ in DECODED_FIELDS}, **record}
        try:
            if read is not None:
                content = _read_or_raise(read, record["path"])
            decoded = module.decode(record["relpath"], bytes(content or b""), image_size=image_size)
        except DecodeError as err:
            row.update(reason=err.reason, detail=str(err))
        else:
            row.update({k: v for k, v in decoded.items() if v is not None or row.get(k) is None})
        out.append(row)
    frame = pd.DataFrame(out, columns=[name for name, _ in DECODED_FIELDS])
    for name in ("slice_index", "label", "orig_height", "orig_width"):
        frame[name] = frame[name].astype("Int32")
    return frame


def _read_or_raise(read, path: str) -> bytes:
    try:
        return read(path)
    except (OSError, FetchError) as err:
        raise DecodeError("unreadable", f"could not read {path!r}: {err}") from err


# Schemes whose files the decode tasks read themselves (plain file reads; S3 GETs with retries through
# classeg.archive.fetch). Any other Hadoop filesystem (hdfs://, ...) is read by Spark's binaryFile source.
DIRECT_SCHEMES = ("file", "s3", "s3a", "s3n")


def path_scheme(path: str) -> str:
    head, sep, _ = path.partition(":")
    return head.lower() if sep and "/" not in head else "file"


def source_reader(s3_cfg=None):
    """``read(path) -> bytes`` for paths as Spark's listing reports them (``file:/a b``, ``s3://bucket/key``).
    One S3 client per reader (made on first use), so one per task."""
    client = []

    def read(path: str) -> bytes:
        scheme = path_scheme(path)
        if scheme == "file":
            local = path[len("file:"):] if path.startswith("file:") else path
            if local.startswith("//"):  # file:///abs or file://localhost/abs
                local = "/" + local[2:].partition("/")[2]
            with open(local, "rb") as handle:
                return handle.read()
        if scheme in ("s3", "s3a", "s3n"):
            if not client:
                client.append(s3_client(s3_cfg))
            return fetch("s3://" + path.split("://", 1)[1], s3_cfg=s3_cfg, client=client[0])
        raise ValueError(f"tasks cannot read {path!r} themselves (scheme {scheme!r}); use binaryFile")

    return read


def _map_partitions(function, **kwargs):
    def run(batches):
        for batch in batches:
            yield function(batch, **kwargs)
    return run


def plan_files(parsed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one file per (kind, key), the one with the shortest then smallest path (the top-level copy of the
    LGG archive). Returns (to_decode, issues): image/mask/folds files to decode, and issue rows for
    duplicates, metadata files and files rejected from their path alone."""
    parsed = parsed.assign(_len=parsed["path"].str.len()).sort_values(["_len", "path"], kind="mergesort")
    keyed = parsed["key"].notna()
    duplicate = keyed & parsed.duplicated(["kind", "key"], keep="first")
    issues = [_issues(parsed[duplicate], "skipped", "duplicate",
                      "same slice as another copy in the archive (kept the shortest path)"),
              _issues(parsed[~duplicate & (parsed["kind"] == "meta")], "skipped", "metadata",
                      "dataset metadata or hidden file, not a scan"),
              _issues(parsed[parsed["kind"] == "error"], "error", None,
                      "not a file of this dataset layout (judged from its name)")]
    to_decode = parsed[~duplicate & parsed["kind"].isin(["image", "mask", "folds"])].drop(columns="_len")
    return to_decode.sort_values("path").reset_index(drop=True), pd.concat(issues, ignore_index=True)


def _issues(frame: pd.DataFrame, severity: str, reason: str | None, detail: str | None) -> pd.DataFrame:
    """Issue rows for the files of ``frame``; ``reason``/``detail`` None take the frame's own columns."""
    own_detail = frame["detail"].to_numpy() if "detail" in frame else None
    return pd.DataFrame({"source_uri": frame["path"].to_numpy(), "relpath": frame["relpath"].to_numpy(),
                         "severity": severity,
                         "reason": reason if reason is not None else frame["reason"].to_numpy(),
                         "detail": detail if detail is not None else own_detail}, columns=ERROR_COLUMNS)


def resolve(meta: pd.DataFrame, *, dataset: str, fractions, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """Turn decoded-file metadata into scans. ``meta`` has DECODED_FIELDS minus image/mask (one row per decoded
    file, ``reason`` set where decoding failed). Returns (units, issues, class_names): one unit per scan with
    ``scan_id``, ``image_path``, ``mask_path``, patient, label, split and fold; issue rows for failed, orphaned
    and partner-failed files. Pure pandas: no pixels pass through here."""
    ok = meta["reason"].isna()
    issues = [_issues(meta[~ok], "error", None, None)]
    images = meta[(meta["kind"] == "image") & ok].copy()
    if dataset == "lgg":
        masks = meta[meta["kind"] == "mask"]
        all_images = meta[meta["kind"] == "image"]
        ok_masks = masks[masks["reason"].isna()]
        units = images.merge(ok_masks[["key", "path", "has_tumor"]].rename(
            columns={"path": "mask_path", "has_tumor": "mask_has_tumor"}), on="key")
        units["has_tumor"] = units["mask_has_tumor"].astype(bool)
        units["label"] = units["has_tumor"].astype(int)
        units["label_name"] = units["label"].map(dict(enumerate(lgg.LABEL_NAMES)))
        failed_mask_keys = set(masks.loc[masks["reason"].notna(), "key"])
        failed_image_keys = set(all_images.loc[all_images["reason"].notna(), "key"])
        issues += [
            _issues(images[~images["key"].isin(masks["key"])], "error", "image_without_mask",
                    "no <name>_mask.tif beside this slice"),
            _issues(ok_masks[~ok_masks["key"].isin(all_images["key"])], "error", "mask_without_image",
                    "no slice image for this mask"),
            _issues(images[images["key"].isin(failed_mask_keys)], "skipped", "partner_failed",
                    "its mask could not be decoded (see the mask's error row)"),
            _issues(ok_masks[ok_masks["key"].isin(failed_image_keys)], "skipped", "partner_failed",
                    "its image could not be decoded (see the image's error row)")]
        units["fold"] = None
        class_names = list(lgg.LABEL_NAMES)
    elif dataset == "figshare":
        folds = meta[(meta["kind"] == "folds") & ok].sort_values("path")
        fold_of: dict[str, int] = {}
        if len(folds):
            fold_of = {str(i + 1): int(f) for i, f in enumerate(folds.iloc[0]["folds"])}
            issues += [_issues(folds.iloc[:1], "skipped", "folds", "official patient-wise folds (the fold column)"),
                       _issues(folds.iloc[1:], "skipped", "duplicate", "another cvind.mat was used")]
        units = images.assign(mask_path=images["path"])
        units["fold"] = units["key"].map(fold_of)
        class_names = list(figshare.LABEL_NAMES)
    else:
        class_names = sorted(images["label_name"].unique())
        units = images.assign(mask_path=None)
        units["label"] = units["label_name"].map({n: i for i, n in enumerate(class_names)})
        no_tumor = {n for n in class_names
                    if n.lower().strip("_ ").startswith("normal") or n.lower() in NO_TUMOR_CLASS_NAMES}
        units["has_tumor"] = (~units["label_name"].isin(no_tumor)) if no_tumor else None
        units["fold"] = None
    units = units.rename(columns={"path": "image_path"})
    columns = ["scan_id", "key", "image_path", "mask_path", "patient_id", "slice_index", "sequence", "label",
               "label_name", "has_tumor", "split", "fold"]
    if units.empty:
        return pd.DataFrame(columns=columns), pd.concat(issues, ignore_index=True), class_names
    units["scan_id"] = [hashlib.sha1(f"{dataset}:{key}".encode()).hexdigest()[:16] for key in units["key"]]
    units["group_id"] = units["patient_id"].where(units["patient_id"].notna(), "scan:" + units["scan_id"])
    units = units.merge(_assign_groups(units, fractions=fractions, seed=seed), on="group_id")
    return units[columns].reset_index(drop=True), pd.concat(issues, ignore_index=True), class_names


def _assign_groups(units: pd.DataFrame, *, fractions, seed: int) -> pd.DataFrame:
    """Split groups (patients, or single scans); a group's stratum is its majority label (ties: lower)."""
    counts = units.groupby(["group_id", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["group_id", "n", "label"], ascending=[True, False, True])
    groups = counts.drop_duplicates("group_id")[["group_id", "label"]].rename(columns={"label": "stratum"})
    hints = units.groupby("group_id")["split_hint"].first().rename("split_hint").reset_index()
    groups = groups.merge(hints, on="group_id")
    return splitting.assign_splits(groups, fractions=fractions, seed=seed)


NO_TUMOR_CLASS_NAMES = ("no", "notumor", "no_tumor", "no tumor", "normal", "healthy")


# ---------------------------------------------------------------------------------------------- Spark stages
_GLOB_CHARS = "\\{}[]*?"


def glob_escape(path: str) -> str:
    """Escape Hadoop glob characters so a literal path is not read as a pattern."""
    return "".join("\\" + ch if ch in _GLOB_CHARS else ch for ch in path)


def _underscore_entries(fs, jvm, base: str, max_depth: int) -> list[str]:
    """Paths under ``base`` whose name starts with ``_`` (without ``=``): Spark's file index hides them as
    "metadata", but datasets use such names (44c's ``_NORMAL T1``). One glob per depth level."""
    found: list[str] = []
    for depth in range(max_depth):
        pattern = glob_escape(base) + "/*" * depth + "/_*"
        for status in fs.globStatus(jvm.org.apache.hadoop.fs.Path(pattern)) or []:
            if "=" in status.getPath().getName():
                continue
            path = status.getPath().toString()
            found.append(path)
            if status.isDirectory():  # Spark lists it when named explicitly, but hides its own _ children
                found += _underscore_entries(fs, jvm, path, max_depth)
    return found


def spark_path(uri: str) -> str:
    """The file index's URI (``file:///a%20b``) in the form binaryFile's ``path`` column uses (``file:/a b``).
    Listing through ``inputFiles()`` costs no Spark job; a path that still did not match would surface as a
    ``not_read`` error row, never silently."""
    from urllib.parse import unquote

    if uri.startswith("file:///"):
        uri = "file:/" + uri[len("file:///"):]
    return unquote(uri)


def list_files(spark, input_uri: str):
    """Extract: (qualified root, binaryFile DataFrame of path, length, modificationTime, content) for every
    file under ``input_uri``. ``content`` is only read by stages that select it. Names starting with ``_`` are
    added explicitly (Spark's listing hides them); names starting with ``.`` (OS litter) are not read."""
    jvm = spark._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(input_uri)
    fs = hadoop_path.getFileSystem(spark._jsc.hadoopConfiguration())
    if not fs.exists(hadoop_path):
        raise FileNotFoundError(f"dataset input {input_uri!r} does not exist")
    root = fs.makeQualified(hadoop_path).toString()
    reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
    if not fs.getFileStatus(hadoop_path).isDirectory():
        return root.rsplit("/", 1)[0], reader.load(glob_escape(root))
    hidden = _underscore_entries(fs, jvm, root, max_depth=6)
    return root, reader.load([glob_escape(root)] + [glob_escape(p) for p in hidden])


def list_local(input_uri: str) -> tuple[str, list[str]] | None:
    """Driver-side listing of a local dataset (plain path or ``file:`` URI): (root, paths) in the form Spark
    reports them (``file:/a b``), every file including ``_`` and ``.`` names (the latter become 'metadata'
    rows). None for any other filesystem. No Spark job: Spark's file index lists 30+ folders with one."""
    import os

    if path_scheme(input_uri) != "file":
        return None
    local = parse_uri(input_uri).path
    if not os.path.exists(local):
        raise FileNotFoundError(f"dataset input {input_uri!r} does not exist")
    if not os.path.isdir(local):
        return "file:" + os.path.dirname(local), ["file:" + local]
    paths = []
    for folder, dirs, names in os.walk(local):
        dirs.sort()
        paths += ["file:" + os.path.join(folder, name) for name in names]
    root = "file:" + local.rstrip("/") if local != "/" else "file:/"
    return root, sorted(paths)


def list_s3(input_uri: str, *, s3_cfg=None) -> tuple[str, list[str]] | None:
    """Driver-side listing of an S3 dataset with boto3 (classeg.archive.list_archive: paginated, each page
    retried): (root, ``s3://bucket/key`` paths), or None for any other scheme. Needs no Hadoop S3 filesystem,
    so local Spark can ingest from S3 too. Like Spark's file index, it does not list names starting with
    ``.``; names starting with ``_`` are listed. A prefix without objects raises ArchiveError naming it."""
    if not uris.is_s3(input_uri):
        return None
    objects = list(list_archive(uris.as_s3(input_uri), s3_cfg=s3_cfg))
    first = objects[0]  # list_archive raises for a prefix with nothing under it
    root = first.uri[:len(first.uri) - len(first.key) - 1]
    return root, sorted(info.uri for info in objects)


def read_mode(paths, requested: str = "auto") -> str:
    """'tasks' (decode tasks read their files) or 'binaryfile' (Spark's binaryFile source reads them)."""
    other = sorted({path_scheme(p) for p in paths} - set(DIRECT_SCHEMES))
    if requested == "tasks" and other:
        raise ValueError(f"ingest.read=tasks reads only {', '.join(DIRECT_SCHEMES)} paths; the input has "
                         f"{', '.join(other)}: use ingest.read=binaryfile or auto")
    if requested != "auto":
        return requested
    return "binaryfile" if other else "tasks"


def decode_partitions(spark, files: int, requested: int = 0) -> int:
    """How many decode tasks: ``requested`` if set, else a multiple of the cores with at most ~1000 files each
    (at least 2 per core, so a slow task does not leave a core idle at the end). A task holds its decoded
    pixels until it writes them: ~1000 canonical slices are ~150 MB."""
    if requested:
        return requested
    cores = spark.sparkContext.defaultParallelism
    waves = max(2, -(-files // (FILES_PER_TASK * cores)))
    return max(1, min(files, waves * cores))


FILES_PER_TASK = 1000


def decode_files(spark, raw, to_decode: pd.DataFrame, *, dataset: str, image_size: int, mode: str = "tasks",
                 partitions: int = 0, s3_cfg=None, staging: str | None = None, fetch_threads: int = 1):
    """Transform: decode the planned files in executors.

    mode 'tasks': the plan (paths only) is cut into ``decode_partitions`` slices and each task reads its own
    files (local reads, or S3 GETs with retries, ``fetch_threads`` at a time one batch ahead of the decoder).
    The bytes never pass through the JVM, which on a 2-core machine took longer than decoding them. mode
    'binaryfile': binaryFile's ``content`` column, joined with the plan, feeds the decoder (any Hadoop filesystem).

    ``staging`` (mode 'tasks' only): each task also writes its pixels to ``<staging>/part-<partition>.arrow``
    (see classeg.scanwrite) and returns META_FIELDS rows only. The plan is cut between keys, so an LGG slice and
    its mask are decoded by the same task. Returns (DataFrame, number of tasks, the plan's broadcast to
    destroy once the DataFrame is no longer needed; None for binaryfile)."""
    from pyspark.sql import functions as F

    if mode == "binaryfile":
        wanted = spark.createDataFrame(to_decode, schema=_ddl(PARSED_FIELDS))
        with_content = raw.select("path", "content").join(F.broadcast(wanted), "path")
        decoded = with_content.mapInPandas(_map_partitions(decode_frame, dataset=dataset, image_size=image_size),
                                           schema=_ddl(DECODED_FIELDS))
        decoded = decoded.repartition(partitions) if partitions else decoded
        return decoded, None, None
    if mode != "tasks":
        raise ValueError(f"decode mode must be 'tasks' or 'binaryfile', got {mode!r}")
    keys = to_decode["key"].where(to_decode["key"].notna(), to_decode["path"])
    chunks = scanwrite.chunk_plan(keys, decode_partitions(spark, len(to_decode), partitions))
    # One row (the chunk number) per partition; the chunks travel as a broadcast. No Python RDD, so every
    # Python step of the job runs in the same (warm) pandas-UDF workers.
    shared = spark.sparkContext.broadcast([to_decode.iloc[chunk].reset_index(drop=True) for chunk in chunks])
    fields = DECODED_FIELDS if staging is None else META_FIELDS

    # S3 GETs wait on the network, not the CPU: a task reads them a batch ahead, in threads. Local reads do not.
    threads = fetch_threads if any(path_scheme(path) != "file" for path in to_decode["path"]) else 1

    def run(batches):
        with ReadAhead(source_reader(s3_cfg), threads=threads) as reader:
            for batch in batches:
                for chunk in batch["id"]:
                    yield from _decode_chunk(shared.value[chunk], int(chunk), reader, dataset=dataset,
                                             image_size=image_size, staging=staging, s3_cfg=s3_cfg)

    ids = spark.range(len(chunks), numPartitions=max(1, len(chunks)))
    return ids.mapInPandas(run, schema=_ddl(fields)), len(chunks), shared


DECODE_BATCH = 64  # files per output batch of a decode task


def _decode_chunk(plan: pd.DataFrame, chunk: int, reader: "ReadAhead", *, dataset: str, image_size: int,
                  staging: str | None, s3_cfg=None):
    """One chunk of a decode task: DECODE_BATCH files at a time, the next batch's reads submitted before this
    batch decodes. With ``staging``, pixels go to the chunk's staging file and only metadata is yielded."""
    stage = scanwrite.StagingWriter(staging, chunk, s3_cfg=s3_cfg) if staging else None
    try:
        reader.submit(plan["path"].iloc[:DECODE_BATCH])
        for start in range(0, len(plan), DECODE_BATCH):
            reader.submit(plan["path"].iloc[start + DECODE_BATCH:start + 2 * DECODE_BATCH])
            frame = decode_frame(plan.iloc[start:start + DECODE_BATCH], dataset=dataset, image_size=image_size,
                                 read=reader.read)
            if stage is not None:
                stage.write(frame)  # pixels go to the staging file, metadata to the driver
                frame = frame.drop(columns=["image", "mask"])
            yield frame
        if stage is not None:
            stage.close()
    finally:
        if stage is not None:
            stage.abort()  # a no-op once closed; a failed attempt leaves no temp file


class ReadAhead:
    """``read(path)`` with reads submitted ahead of time to ``threads`` threads (1: no threads, every read
    happens when asked). A submitted read's failure is raised by :meth:`read`, as the plain read would raise it.
    Closing it (leaving the ``with`` block) waits for reads in flight and drops their results."""

    def __init__(self, read, *, threads: int = 1):
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads!r}")
        self._read = read
        self._pool = (ThreadPoolExecutor(max_workers=threads, thread_name_prefix="classeg-read")
                      if threads > 1 else None)
        self._pending: dict[str, Future] = {}

    def submit(self, paths) -> None:
        if self._pool is None:
            return
        for path in paths:
            if path not in self._pending:
                self._pending[path] = self._pool.submit(self._read, path)

    def read(self, path: str) -> bytes:
        future = self._pending.pop(path, None)
        return future.result() if future is not None else self._read(path)

    def close(self) -> None:
        if self._pool is not None:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_scans(spark, decoded, units: pd.DataFrame, *, dataset: str):
    """Transform: decoded pixels + resolved units -> scan rows (SCAN_COLUMNS). Only image bytes move through
    here; LGG masks are small PNGs and are broadcast unless there are very many."""
    from pyspark.sql import functions as F

    unit_schema = ("scan_id string, key string, image_path string, mask_path string, patient_id string, "
                   "slice_index int, sequence string, label int, label_name string, has_tumor boolean, "
                   "split string, fold int")
    unit_frame = spark.createDataFrame(units.astype(object).where(units.notna(), None), schema=unit_schema)
    images = decoded.where((F.col("kind") == "image") & F.col("reason").isNull()).select(
        F.col("path").alias("image_path"), "image", "orig_height", "orig_width",
        *([F.col("mask")] if dataset == "figshare" else []))
    scans = images.join(F.broadcast(unit_frame), "image_path")
    if dataset == "lgg":
        masks = decoded.where((F.col("kind") == "mask") & F.col("reason").isNull()).select(
            F.col("path").alias("mask_path"), "mask")
        scans = scans.join(F.broadcast(masks) if len(units) <= 200_000 else masks, "mask_path")
    elif dataset == "folders":
        scans = scans.withColumn("mask", F.lit(None).cast("binary"))
    named = {"source_uri": F.col("image_path"), "mask_source_uri": F.col("mask_path"), "dataset": F.lit(dataset)}
    return scans.select(*[named[c].alias(c) if c in named else F.col(c) for c in SCAN_COLUMNS])


# ---------------------------------------------------------------------------------------------- load helpers
def _hadoop_fs(spark, uri: str):
    path = spark._jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark._jsc.hadoopConfiguration())


def write_text(spark, uri: str, text: str, *, s3_cfg=None) -> None:
    """Write a small text file: S3 through boto3 (as the tasks write the table there), any other filesystem
    (local, HDFS) through Spark's filesystem layer."""
    if uris.is_s3(uri):
        files.write_text(uri, text, s3_cfg=s3_cfg)
        return
    path, fs = _hadoop_fs(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def delete_path(spark, uri: str, *, s3_cfg=None) -> None:
    """Delete a file or folder (recursively) if it exists: S3 through boto3, others through Spark's layer."""
    if uris.is_s3(uri):
        files.delete(uri, s3_cfg=s3_cfg)
        return
    path, fs = _hadoop_fs(spark, uri)
    if fs.exists(path):
        fs.delete(path, True)


def read_text(spark, uri: str) -> str:
    path, fs = _hadoop_fs(spark, uri)
    if not fs.exists(path):
        raise FileNotFoundError(uri)
    stream = fs.open(path)  # not textFile: Hadoop input formats hide files whose names start with "_"
    try:
        return spark._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


ERRORS_SCHEMA = pa.schema([(name, pa.string()) for name in ERROR_COLUMNS])


def write_issues(spark, issues: pd.DataFrame, *, output: str, folder: str, base: str | None, s3_cfg=None) -> None:
    """Load: the errors table (ERROR_COLUMNS) as ``<output>/<folder>``, replacing it. Where the tasks write
    the scan table (``base``: the output as scanwrite.writable_base gives it) the driver writes one Parquet file
    with pyarrow, with no Spark job for a few hundred rows; elsewhere Spark writes it."""
    frame = issues[ERROR_COLUMNS]
    plain = frame.astype(object).where(frame.notna(), None)
    if base is None:
        (spark.createDataFrame(plain, schema=_ddl([(name, "string") for name in ERROR_COLUMNS]))
         .coalesce(1).write.mode("overwrite").parquet(f"{output}/{folder}"))
        return
    delete_path(spark, f"{output}/{folder}", s3_cfg=s3_cfg)
    table = pa.Table.from_pandas(plain, schema=ERRORS_SCHEMA, preserve_index=False)
    scanwrite.write_parquet(table, uris.join(base, f"{folder}/{scanwrite.part_name(0)}"), s3_cfg=s3_cfg)


def read_scan_table(spark, uri: str):
    """Load a complete scan table: (DataFrame, summary dict). Raises ValueError if the table was never
    finished (no ``_summary.json``: a failed or interrupted ingest) and FileNotFoundError if absent."""
    path, fs = _hadoop_fs(spark, uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"scan table {uri!r} does not exist")
    summary_uri = uri.rstrip("/") + "/" + SUMMARY_NAME
    try:
        summary = json.loads(read_text(spark, summary_uri))
    except FileNotFoundError:
        raise ValueError(f"scan table {uri!r} is incomplete (no {SUMMARY_NAME}): its ingest failed or was "
                         f"interrupted; run ingest again") from None
    return spark.read.parquet(f"{uri.rstrip('/')}/{SCANS_DIR}"), summary


def read_errors(spark, uri: str):
    """The errors table of a scan table folder."""
    return spark.read.parquet(f"{uri.rstrip('/')}/{ERRORS_DIR}")


# ---------------------------------------------------------------------------------------------- the job
def run_ingest(spark, cfg: Config) -> dict:
    """Run the ingest job described by ``cfg.ingest``; return the summary. Raises JobFailed (from
    classeg.cli) when nothing usable was found or the error rate passes ``max_error_rate``.

    Spark jobs: one that decodes every planned file and collects their metadata (no pixels), one that writes
    the scan table from the decoded rows kept on the executors, one that writes the (small) errors table.
    The listing is planned on the driver, which holds every file's status for binaryFile anyway.
    """
    from pyspark import StorageLevel

    from classeg.errors import JobFailed

    job = cfg.ingest
    if not job.input or not job.output:
        raise ValueError(f"ingest needs --input and --output (got input={job.input!r}, output={job.output!r})")
    layout_module(job.dataset)
    started = time.time()
    phases: dict[str, float] = {}
    lap = _stopwatch(phases)
    run_id = uuid.uuid4().hex[:12]
    output = job.output.rstrip("/")
    listed = (list_local(job.input) or list_s3(job.input, s3_cfg=cfg)) if job.read != "binaryfile" else None
    if listed is not None:
        (root, paths), raw = listed, None
    else:
        root, raw = list_files(spark, job.input)
        paths = sorted({spark_path(uri) for uri in raw.inputFiles()})
    listing = pd.DataFrame({"path": paths})
    log.info("ingest %s: %d files under %s", job.dataset, len(listing), root)
    parsed = parse_listing(listing, dataset=job.dataset, root=root)
    to_decode, path_issues = plan_files(parsed)
    lap("list")
    mode = read_mode(to_decode["path"], job.read)
    base = scanwrite.writable_base(output) if mode == "tasks" else None
    staging = uris.join(base, f"{scanwrite.STAGING_PREFIX}{run_id}") if base else None
    decoded, parts, plan_broadcast = decode_files(spark, raw, to_decode, dataset=job.dataset,
                                                  image_size=job.image_size, mode=mode, partitions=job.partitions,
                                                  s3_cfg=cfg, staging=staging, fetch_threads=job.fetch_threads)
    if staging is None:
        decoded = decoded.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        log.info("ingest %s: decoding %d files (read by %s, written by %s)", job.dataset, len(to_decode), mode,
                 "the tasks" if staging else "Spark")
        meta = (decoded if staging else decoded.drop("image", "mask")).toPandas()
        lap("decode")
        units, decode_issues, class_names = resolve(meta, dataset=job.dataset, fractions=job.split, seed=job.seed)
        unread = _issues(to_decode[~to_decode["path"].isin(meta["path"])], "error", "not_read",
                         "listed but its content could not be read")
        issues = pd.concat([path_issues, decode_issues, unread], ignore_index=True).sort_values("relpath")
        summary = summarise(units, issues, listed=len(listing), dataset=job.dataset, class_names=class_names,
                            cfg=cfg, root=root, run_id=run_id)
        failure = _failure(summary, job.max_error_rate)
        if failure:
            summary.update(status="failed", failure=failure)
            write_issues(spark, issues, output=output, folder=f"{FAILURE_DIR}/{ERRORS_DIR}", base=base,
                         s3_cfg=cfg)
            write_text(spark, f"{output}/{FAILURE_DIR}/{SUMMARY_NAME}", json.dumps(summary, indent=2), s3_cfg=cfg)
            raise JobFailed(f"{failure}; the scan table was not written (errors and summary in "
                            f"{output}/{FAILURE_DIR}/)")
        log.info("ingest %s: writing %d scans to %s", job.dataset, summary["scans"], output)
        lap("resolve")
        delete_path(spark, f"{output}/{SUMMARY_NAME}", s3_cfg=cfg)  # from here until the new summary: incomplete
        if staging:
            delete_path(spark, f"{output}/{SCANS_DIR}", s3_cfg=cfg)
            written = finalize_scans(spark, units, meta, parts=parts, staging=staging,
                                     scans=uris.join(base, SCANS_DIR), dataset=job.dataset, s3_cfg=cfg)
            if written != len(units):  # every resolved scan must be in exactly one staging file
                raise RuntimeError(f"ingest bug: {len(units)} scans resolved but {written} written")
        else:
            (build_scans(spark, decoded, units, dataset=job.dataset).write.mode("overwrite").partitionBy("split")
             .options(**PARQUET_OPTIONS).parquet(f"{output}/{SCANS_DIR}"))
        lap("write_scans")
        write_issues(spark, issues, output=output, folder=ERRORS_DIR, base=base, s3_cfg=cfg)
        delete_path(spark, f"{output}/{FAILURE_DIR}", s3_cfg=cfg)
        lap("write_errors")
        summary["status"] = "complete"
        summary["seconds"] = round(time.time() - started, 2)
        summary["phase_seconds"] = phases
        write_text(spark, f"{output}/{SUMMARY_NAME}", json.dumps(summary, indent=2), s3_cfg=cfg)  # last: complete
        log.info("ingest %s: %d scans %s, %d errors, %d skipped, %.1fs", job.dataset, summary["scans"],
                 summary["per_split"], summary["files"]["errors"], summary["files"]["skipped"], summary["seconds"])
        return summary
    finally:
        if staging:
            try:
                delete_path(spark, staging, s3_cfg=cfg)
            except Exception as err:  # noqa: BLE001 (cleanup must not hide the job's own outcome)
                log.warning("ingest: could not delete the staging folder %s: %s", staging, err)
        else:
            decoded.unpersist()
        if plan_broadcast is not None:
            plan_broadcast.destroy()


def finalize_scans(spark, units: pd.DataFrame, meta: pd.DataFrame, *, parts: int, staging: str, scans: str,
                   dataset: str, s3_cfg=None) -> int:
    """Load (task-written path): one task per staging file writes its scans' rows; returns how many."""
    sizes = meta.loc[meta["kind"] == "image", ["path", "orig_height", "orig_width"]].rename(
        columns={"path": "image_path"})
    shared = spark.sparkContext.broadcast(units.merge(sizes, on="image_path", how="left"))

    def run(batches):  # a pandas UDF like the decode: the same (warm) Python workers run it
        for batch in batches:
            yield pd.DataFrame({"written": [
                scanwrite.finalize_part(int(part), shared.value, staging=staging, scans=scans, dataset=dataset,
                                        s3_cfg=s3_cfg) for part in batch["id"]]}, dtype="int64")

    try:
        # One task per core (each takes several parts): finalizing a part is short next to a task's start-up.
        ids = spark.range(parts, numPartitions=max(1, min(parts, spark.sparkContext.defaultParallelism)))
        return int(ids.mapInPandas(run, schema="written long").toPandas()["written"].sum())
    finally:
        shared.destroy()


def _stopwatch(phases: dict[str, float]):
    """``lap(name)`` records the seconds since the previous lap (or since creation) under ``name``."""
    last = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(phases.get(name, 0.0) + now - last[0], 3)
        last[0] = now

    return lap


def _failure(summary: dict, max_error_rate: float) -> str | None:
    if summary["scans"] == 0:
        return (f"no usable scans found under {summary['input']} for layout {summary['dataset']!r} "
                f"({summary['files']['listed']} files listed; errors by reason: {summary['errors_by_reason']})")
    if summary["error_rate"] > max_error_rate:
        return (f"error rate {summary['error_rate']:.4f} is above --max-error-rate {max_error_rate} "
                f"({summary['files']['errors']} bad files; reasons: {summary['errors_by_reason']})")
    return None


def summarise(units: pd.DataFrame, issues: pd.DataFrame, *, listed: int, dataset: str, class_names, cfg: Config,
              root: str, run_id: str) -> dict:
    """The JSON summary: counts per split, class and patient; every error and skipped file with its reason."""
    errors = issues[issues["severity"] == "error"]
    skipped = issues[issues["severity"] == "skipped"]
    masks = int((units["mask_path"].notna() & (units["mask_path"] != units["image_path"])).sum())
    accounted = len(units) + masks + len(issues)
    if accounted != listed:  # every listed file must be a scan, a mask or an issue row
        raise RuntimeError(f"ingest accounting bug: {listed} files listed but {accounted} accounted for")
    per_split = {s: int((units["split"] == s).sum()) for s in splitting.SPLITS}
    per_class = {name: {s: int(((units["label_name"] == name) & (units["split"] == s)).sum())
                        for s in splitting.SPLITS} for name in class_names}
    with_patient = units[units["patient_id"].notna()]
    patients = {s: sorted(with_patient.loc[with_patient["split"] == s, "patient_id"].unique())
                for s in splitting.SPLITS}
    per_patient = with_patient.groupby("patient_id").agg(slices=("scan_id", "size"),
                                                         tumor_slices=("has_tumor", "sum"))
    has_patients = len(with_patient) > 0
    candidates = listed - len(skipped)
    return {
        "dataset": dataset, "input": root, "output": cfg.ingest.output, "run_id": run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "classeg_version": __version__,
        "image_size": cfg.ingest.image_size, "seed": cfg.ingest.seed, "split_fractions": cfg.ingest.split,
        "class_names": list(class_names), "scans": len(units), "per_split": per_split, "per_class": per_class,
        "tumor_scans": int((units["has_tumor"] == True).sum()),  # noqa: E712 (object column with None)
        "patients": {"count": int(with_patient["patient_id"].nunique()),
                     "per_split": {s: len(v) for s, v in patients.items()}, "ids": patients,
                     "slices": {pid: {"slices": int(r.slices), "tumor_slices": int(r.tumor_slices)}
                                for pid, r in per_patient.iterrows()}},
        "patient_level_split": has_patients,
        "split_note": ("split by patient: no patient appears in two splits" if has_patients else
                       "no patient ids in this layout: a patient-level split is impossible, scans were split "
                       "individually (stratified by label); slices of one patient may be in different splits"),
        "folds": ({str(k): int(v) for k, v in units["fold"].value_counts().sort_index().items()}
                  if units["fold"].notna().any() else None),
        "files": {"listed": listed, "scans": len(units), "masks": masks, "errors": len(errors),
                  "skipped": len(skipped)},
        "error_rate": round(len(errors) / candidates, 6) if candidates else 0.0,
        "errors_by_reason": {str(k): int(v) for k, v in errors["reason"].value_counts().items()},
        "skipped_by_reason": {str(k): int(v) for k, v in skipped["reason"].value_counts().items()},
        "errors": errors.head(1000).to_dict("records"), "skipped": skipped.head(1000).to_dict("records"),
    }
