"""Ingest: dataset files -> scan rows -> patient-level split -> Parquet scan table.

Extract: Spark's ``binaryFile`` source lists the dataset recursively (any Hadoop filesystem: local, file://,
s3://). Transform: each file is classified from its path (``parse_listing``), duplicate copies are dropped
before any decoding, the remaining files are decoded in executors (``decode_frame``: decode, resize to the
canonical size, PNG-encode), images are paired with their masks and labelled (``assemble``), and groups are
dealt into splits (``split.assign_splits``). Load: the scan table partitioned by ``split``, an errors table in
``_errors/`` and ``_summary.json`` written last; a table without its summary is incomplete.

Every listed file ends in exactly one place: a scan row (as its image or its mask) or an errors-table row
(``severity`` 'error' for bad input, 'skipped' for duplicates, metadata and partners of failed files).
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timezone
from functools import partial
from types import ModuleType

import pandas as pd

from classeg import __version__, split as splitting
from classeg.config import Config
from classeg.datasets import figshare, folders, lgg
from classeg.datasets.common import is_hidden
from classeg.imaging import DecodeError

log = logging.getLogger(__name__)

LAYOUTS: dict[str, ModuleType] = {"lgg": lgg, "figshare": figshare, "folders": folders}
SUMMARY_NAME = "_summary.json"
ERRORS_DIR = "_errors"
FAILURE_DIR = "_last_failure"

PARSED_FIELDS = [("path", "string"), ("relpath", "string"), ("kind", "string"), ("key", "string"),
                 ("patient_id", "string"), ("slice_index", "int"), ("label", "int"), ("label_name", "string"),
                 ("sequence", "string"), ("split_hint", "string"), ("reason", "string")]
DECODED_FIELDS = PARSED_FIELDS + [("detail", "string"), ("image", "binary"), ("mask", "binary"),
                                  ("has_tumor", "boolean"), ("orig_height", "int"), ("orig_width", "int"),
                                  ("folds", "array<int>")]
ERROR_COLUMNS = ["source_uri", "relpath", "severity", "reason", "detail"]


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


def decode_frame(files: pd.DataFrame, *, dataset: str, image_size: int) -> pd.DataFrame:
    """Decode each file's ``content`` with the layout's decoder. Returns DECODED_FIELDS rows; a file that
    fails to decode keeps its parsed fields and gets ``reason``/``detail`` (DecodeError.reason, message)."""
    module = layout_module(dataset)
    out = []
    for record in files.to_dict("records"):
        content = record.pop("content")
        row = {**{name: None for name, _ in DECODED_FIELDS}, **record}
        try:
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


def _map_partitions(function, **kwargs):
    def run(batches):
        for batch in batches:
            yield function(batch, **kwargs)
    return run


# ---------------------------------------------------------------------------------------------- Spark stages
def list_files(spark, input_uri: str):
    """Extract: (qualified root, DataFrame of path, length, modificationTime, content) for every file under
    ``input_uri``. ``content`` is only read by stages that select it."""
    jvm = spark._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(input_uri)
    fs = hadoop_path.getFileSystem(spark._jsc.hadoopConfiguration())
    if not fs.exists(hadoop_path):
        raise FileNotFoundError(f"dataset input {input_uri!r} does not exist")
    root = fs.makeQualified(hadoop_path).toString()
    raw = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(input_uri)
    return root, raw


def classify_files(listing, *, dataset: str, root: str):
    """Transform: listing (path, ...) -> PARSED_FIELDS rows."""
    return listing.select("path").mapInPandas(_map_partitions(parse_listing, dataset=dataset, root=root),
                                              schema=_ddl(PARSED_FIELDS))


def drop_duplicates(parsed):
    """Transform: keep one file per (kind, key), the one with the shortest then smallest path (the top-level
    copy of the LGG archive); return (unique, duplicates). Rows without a key are all unique."""
    from pyspark.sql import Window, functions as F

    rank = F.row_number().over(Window.partitionBy("kind", "key").orderBy(F.length("path"), "path"))
    ranked = parsed.withColumn("_rank", F.when(F.col("key").isNull(), F.lit(1)).otherwise(rank))
    return (ranked.where("_rank = 1").drop("_rank"), ranked.where("_rank > 1").drop("_rank"))


def decode_files(raw, unique, *, dataset: str, image_size: int):
    """Transform: decode the files of ``unique`` whose kind needs it (reading content only for those)."""
    from pyspark.sql import functions as F

    wanted = unique.where(F.col("kind").isin("image", "mask", "folds"))
    with_content = raw.select("path", "content").join(F.broadcast(wanted), "path")
    decoded = with_content.mapInPandas(
        _map_partitions(decode_frame, dataset=dataset, image_size=image_size), schema=_ddl(DECODED_FIELDS))
    others = unique.where(~F.col("kind").isin("image", "mask", "folds"))
    for name, kind in DECODED_FIELDS:
        if name not in others.columns:
            others = others.withColumn(name, F.lit(None).cast(kind))
    return decoded.unionByName(others)


def _error_rows(frame, severity: str, reason=None, detail=None):
    from pyspark.sql import functions as F

    return frame.select(F.col("path").alias("source_uri"), "relpath", F.lit(severity).alias("severity"),
                        (F.lit(reason) if reason else F.col("reason")).alias("reason"),
                        (F.lit(detail) if detail else F.col("detail")).alias("detail"))


def assemble(decoded, duplicates, *, dataset: str):
    """Transform: decoded files -> (scans without split, errors). Pairs LGG images with masks, joins
    figshare folds, and accounts for every file exactly once."""
    from pyspark.sql import functions as F

    ok = F.col("reason").isNull()
    failed = decoded.where((F.col("kind") != "meta") & ~ok)
    errors = [_error_rows(failed, "error"),
              _error_rows(decoded.where(F.col("kind") == "meta"), "skipped", "metadata",
                          "dataset metadata or hidden file, not a scan"),
              _error_rows(duplicates.withColumn("detail", F.lit(None).cast("string")), "skipped", "duplicate",
                          "same slice as another copy in the archive (kept the shortest path)")]
    images = decoded.where((F.col("kind") == "image") & ok)
    if dataset == "lgg":
        masks = decoded.where(F.col("kind") == "mask")
        all_images = decoded.where(F.col("kind") == "image")
        ok_masks = masks.where(ok)
        paired = images.alias("i").join(ok_masks.alias("m"), "key")
        scans = paired.select(
            "key", F.col("i.path").alias("source_uri"), F.col("m.path").alias("mask_source_uri"),
            F.col("i.patient_id"), F.col("i.slice_index"), F.col("i.sequence"),
            F.col("m.has_tumor").cast("int").alias("label"),
            F.when(F.col("m.has_tumor"), F.lit(lgg.LABEL_NAMES[1])).otherwise(F.lit(lgg.LABEL_NAMES[0]))
             .alias("label_name"),
            F.col("i.image"), F.col("m.mask"), F.col("m.has_tumor"), F.col("i.orig_height"),
            F.col("i.orig_width"), F.lit(None).cast("string").alias("split_hint"),
            F.lit(None).cast("int").alias("fold"))
        failed_masks = masks.where(~ok)
        errors += [
            _error_rows(images.join(masks, "key", "left_anti"), "error", "image_without_mask",
                        "no <name>_mask.tif beside this slice"),
            _error_rows(ok_masks.join(all_images, "key", "left_anti"), "error", "mask_without_image",
                        "no slice image for this mask"),
            _error_rows(images.join(failed_masks.select("key"), "key", "left_semi"), "skipped", "partner_failed",
                        "its mask could not be decoded (see the mask's error row)"),
            _error_rows(ok_masks.join(all_images.where(~ok).select("key"), "key", "left_semi"), "skipped",
                        "partner_failed", "its image could not be decoded (see the image's error row)")]
        return scans, _union(errors)
    if dataset == "figshare":
        folds_files = decoded.where((F.col("kind") == "folds") & ok).orderBy(F.length("path"), "path")
        fold_rows = folds_files.limit(1).select(F.posexplode("folds").alias("position", "fold")).select(
            (F.col("position") + 1).cast("string").alias("key"), "fold")
        used = folds_files.limit(1).select("path")
        errors += [_error_rows(folds_files.join(used, "path", "left_anti"), "skipped", "duplicate",
                               "another cvind.mat was used"),
                   _error_rows(folds_files.join(used, "path", "left_semi"), "skipped", "folds",
                               "official patient-wise folds, used for the fold column")]
        scans = images.join(fold_rows, "key", "left").select(
            "key", F.col("path").alias("source_uri"), F.col("path").alias("mask_source_uri"), "patient_id",
            "slice_index", "sequence", "label", "label_name", "image", "mask", "has_tumor", "orig_height",
            "orig_width", F.lit(None).cast("string").alias("split_hint"), "fold")
        return scans, _union(errors)
    scans = images.select(
        "key", F.col("path").alias("source_uri"), F.lit(None).cast("string").alias("mask_source_uri"),
        "patient_id", "slice_index", "sequence", "label", "label_name", "image", "mask",
        F.lit(None).cast("boolean").alias("has_tumor"), "orig_height", "orig_width", "split_hint",
        F.lit(None).cast("int").alias("fold"))
    return scans, _union(errors)


def _union(frames):
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


NO_TUMOR_CLASS_NAMES = ("no", "notumor", "no_tumor", "no tumor", "normal", "healthy")


def label_folders(spark, scans):
    """Transform (folders layout): label = index of the class name in sorted order of the classes present.
    Returns (scans, class names). Collects only the distinct class names."""
    from pyspark.sql import functions as F

    names = sorted(r.label_name for r in scans.select("label_name").distinct().collect())
    lookup = spark.createDataFrame([(n, i) for i, n in enumerate(names)], "label_name string, label_idx int")
    labelled = scans.join(F.broadcast(lookup), "label_name").withColumn("label", F.col("label_idx")).drop(
        "label_idx")
    no_tumor = {n for n in names if n.lower().strip("_ ").startswith("normal") or
                n.lower() in NO_TUMOR_CLASS_NAMES}
    labelled = labelled.withColumn("has_tumor", ~F.col("label_name").isin(list(no_tumor)) if no_tumor
                                   else F.lit(None).cast("boolean"))
    return labelled, names


def add_splits(scans, *, dataset: str, fractions, seed: int):
    """Transform: add ``scan_id``, ``dataset`` and ``split``. Groups are patients where known, else scans;
    a group's stratum is its majority label; groups are dealt by ``split.assign_splits`` in one task."""
    from pyspark.sql import functions as F

    scans = scans.withColumn("scan_id", F.substring(F.sha1(F.concat_ws(":", F.lit(dataset), "key")), 1, 16))
    scans = scans.withColumn("group_id", F.coalesce(F.col("patient_id"), F.concat(F.lit("scan:"), "scan_id")))
    per_label = scans.groupBy("group_id", "label").agg(F.count("*").alias("n"),
                                                       F.first("split_hint", ignorenulls=True).alias("hint"))
    majority = F.max(F.struct("n", (-F.col("label")).alias("neg"))).alias("best")
    groups = per_label.groupBy("group_id").agg(majority, F.first("hint", ignorenulls=True).alias("split_hint"))
    groups = groups.select("group_id", (-F.col("best.neg")).alias("stratum"), "split_hint")

    def deal_all(frame: pd.DataFrame) -> pd.DataFrame:
        return splitting.assign_splits(frame, fractions=fractions, seed=seed)

    assigned = groups.withColumn("_one", F.lit(0)).groupBy("_one").applyInPandas(
        lambda frame: deal_all(frame.drop(columns=["_one"])), schema="group_id string, split string")
    return scans.join(assigned, "group_id").drop("group_id", "split_hint")


SCAN_COLUMNS = ["scan_id", "dataset", "source_uri", "mask_source_uri", "patient_id", "slice_index", "sequence",
                "label", "label_name", "image", "mask", "has_tumor", "orig_height", "orig_width", "split", "fold"]


# ---------------------------------------------------------------------------------------------- load helpers
def _hadoop_fs(spark, uri: str):
    path = spark._jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark._jsc.hadoopConfiguration())


def write_text(spark, uri: str, text: str) -> None:
    """Write a small text file through Spark's filesystem layer (local, HDFS, s3://)."""
    path, fs = _hadoop_fs(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def read_text(spark, uri: str) -> str:
    path, fs = _hadoop_fs(spark, uri)
    if not fs.exists(path):
        raise FileNotFoundError(uri)
    return "\n".join(spark.sparkContext.textFile(uri, 1).collect())


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
    return spark.read.parquet(uri), summary


# ---------------------------------------------------------------------------------------------- the job
def run_ingest(spark, cfg: Config) -> dict:
    """Run the ingest job described by ``cfg.ingest``; return the summary. Raises JobFailed (from
    classeg.cli) when nothing usable was found or the error rate passes ``max_error_rate``."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from classeg.cli import JobFailed

    job = cfg.ingest
    if not job.input or not job.output:
        raise ValueError(f"ingest needs --input and --output (got input={job.input!r}, output={job.output!r})")
    layout_module(job.dataset)
    started = time.time()
    run_id = uuid.uuid4().hex[:12]
    output = job.output.rstrip("/")
    root, raw = list_files(spark, job.input)
    log.info("ingest %s: listing %s", job.dataset, root)
    parsed = classify_files(raw, dataset=job.dataset, root=root)
    if job.partitions:
        parsed = parsed.repartition(job.partitions)
    unique, duplicates = drop_duplicates(parsed)
    decoded = decode_files(raw, unique, dataset=job.dataset, image_size=job.image_size)
    decoded = decoded.persist(StorageLevel.MEMORY_AND_DISK)
    duplicates = duplicates.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        scans, errors = assemble(decoded, duplicates, dataset=job.dataset)
        class_names = list(LAYOUTS[job.dataset].LABEL_NAMES) if job.dataset != "folders" else None
        if job.dataset == "folders":
            scans, class_names = label_folders(spark, scans)
        scans = add_splits(scans, dataset=job.dataset, fractions=job.split, seed=job.seed)
        scans = scans.withColumn("dataset", F.lit(job.dataset)).select(*SCAN_COLUMNS)
        scans = scans.persist(StorageLevel.MEMORY_AND_DISK)
        errors = errors.persist(StorageLevel.MEMORY_AND_DISK)
        summary = _summarise(scans, errors, decoded, duplicates, dataset=job.dataset, class_names=class_names,
                             cfg=cfg, root=root, run_id=run_id)
        failure = _failure(summary, job.max_error_rate)
        if failure:
            summary["status"] = "failed"
            summary["failure"] = failure
            errors.coalesce(1).write.mode("overwrite").parquet(f"{output}/{FAILURE_DIR}/{ERRORS_DIR}")
            write_text(spark, f"{output}/{FAILURE_DIR}/{SUMMARY_NAME}", json.dumps(summary, indent=2))
            raise JobFailed(f"{failure}; nothing was written to the scan table (errors and summary in "
                            f"{output}/{FAILURE_DIR}/)")
        log.info("ingest %s: writing %d scans to %s", job.dataset, summary["scans"], output)
        scans.write.mode("overwrite").partitionBy("split").parquet(output)
        errors.coalesce(1).write.mode("overwrite").parquet(f"{output}/{ERRORS_DIR}")
        summary["status"] = "complete"
        summary["seconds"] = round(time.time() - started, 2)
        write_text(spark, f"{output}/{SUMMARY_NAME}", json.dumps(summary, indent=2))  # last: marks completion
        log.info("ingest %s: %d scans (%s), %d errors, %d skipped in %.1fs", job.dataset, summary["scans"],
                 summary["per_split"], summary["files"]["errors"], summary["files"]["skipped"],
                 summary["seconds"])
        return summary
    finally:
        for frame in (decoded, duplicates):
            frame.unpersist()


def _failure(summary: dict, max_error_rate: float) -> str | None:
    if summary["scans"] == 0:
        return (f"no usable scans found under {summary['input']} for layout {summary['dataset']!r} "
                f"({summary['files']['listed']} files listed; reasons: {summary['errors_by_reason']})")
    if summary["error_rate"] > max_error_rate:
        return (f"error rate {summary['error_rate']:.4f} is above --max-error-rate {max_error_rate} "
                f"({summary['files']['errors']} bad files; reasons: {summary['errors_by_reason']})")
    return None


def _summarise(scans, errors, decoded, duplicates, *, dataset, class_names, cfg, root, run_id) -> dict:
    from pyspark.sql import functions as F

    per_split_class = scans.groupBy("split", "label_name").count().collect()
    per_patient = scans.where(F.col("patient_id").isNotNull()).groupBy("patient_id", "split").agg(
        F.count("*").alias("slices"), F.sum(F.col("has_tumor").cast("int")).alias("tumor_slices")).collect()
    by_reason = errors.groupBy("severity", "reason").count().collect()
    listed = decoded.count() + duplicates.count()
    masks_used = scans.where(F.col("mask_source_uri").isNotNull() &
                             (F.col("mask_source_uri") != F.col("source_uri"))).count()
    n_scans = sum(r["count"] for r in per_split_class)
    n_errors = sum(r["count"] for r in by_reason if r["severity"] == "error")
    n_skipped = sum(r["count"] for r in by_reason if r["severity"] == "skipped")
    candidates = listed - n_skipped
    error_list = [r.asDict() for r in errors.where("severity = 'error'").orderBy("relpath").limit(1000).collect()]
    skipped_list = [r.asDict() for r in errors.where("severity = 'skipped'").orderBy("relpath").limit(1000).collect()]
    per_split: dict[str, int] = {s: 0 for s in splitting.SPLITS}
    per_class: dict[str, dict[str, int]] = {}
    for row in per_split_class:
        per_split[row["split"]] += row["count"]
        per_class.setdefault(row["label_name"], {s: 0 for s in splitting.SPLITS})[row["split"]] = row["count"]
    patients = {s: sorted(r["patient_id"] for r in per_patient if r["split"] == s) for s in splitting.SPLITS}
    has_patients = bool(per_patient)
    return {
        "dataset": dataset, "input": root, "output": cfg.ingest.output, "run_id": run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "classeg_version": __version__,
        "image_size": cfg.ingest.image_size, "seed": cfg.ingest.seed, "split_fractions": cfg.ingest.split,
        "class_names": class_names, "scans": n_scans, "per_split": per_split, "per_class": per_class,
        "patients": {"count": len({r['patient_id'] for r in per_patient}),
                     "per_split": {s: len(v) for s, v in patients.items()}, "ids": patients,
                     "slices": {r["patient_id"]: {"slices": r["slices"], "tumor_slices": r["tumor_slices"]}
                                for r in per_patient}},
        "patient_level_split": has_patients,
        "split_note": ("split by patient: no patient appears in two splits" if has_patients else
                       "no patient ids in this layout: a patient-level split is impossible, scans were split "
                       "individually (stratified by label); slices of one patient may be in different splits"),
        "files": {"listed": listed, "scans": n_scans, "masks": masks_used, "errors": n_errors,
                  "skipped": n_skipped},
        "error_rate": round(n_errors / candidates, 6) if candidates else 0.0,
        "errors_by_reason": {r["reason"]: r["count"] for r in by_reason if r["severity"] == "error"},
        "skipped_by_reason": {r["reason"]: r["count"] for r in by_reason if r["severity"] == "skipped"},
        "errors": error_list, "skipped": skipped_list,
    }
