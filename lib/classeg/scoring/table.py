"""The scores table: its schema, where each run writes, which runs count, the manifest of finished work
and the run markers that make scheduled re-runs score only what is new.

Table layout
------------
``<output>/run_date=YYYY-MM-DD/run_id=R/part-*.parquet`` holds the rows of run R (columns
:data:`SCORES_SCHEMA_DDL`; ``run_date`` and ``run_id`` come from the folder names). A run that crashed, or failed
its error-rate check, leaves a folder without a ``_runs/R.json`` marker. Its objects were not recorded in the
manifest, so the next run scores them again: a reader that took every folder would count those objects twice.
The one rule for which runs count is :func:`completed_runs` (runs with a marker); :func:`read_scores` (Spark)
and the report's pyarrow reader both use it. Readers that list the files themselves (Athena) should filter
``run_id`` to the runs listed under ``_runs/``.

Output layout (beside the scores table, under names Spark's Parquet reader ignores)::

    <output>/_manifest/<run_id>-<uuid>.parquet   one file per Manifest.record call, never rewritten
    <output>/_runs/<run_id>.json                 written by mark_run_complete: the run's summary

Both are written whole through :mod:`classeg.io.files` (one PUT on S3, fsync and rename locally), so a run
that crashes leaves the manifest as it was. Error rows carry an ``error`` text ``"<kind>: <detail>"``
(:mod:`classeg.errors`); a row whose kind is retryable (``fetch_failed``) is retried by the next run, every
other error is permanent for that object version and is recorded as done, like an ``ok`` row.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from classeg.archive import ObjectInfo
from classeg.dicom import IDENTITY_COLUMNS
from classeg.errors import RETRYABLE_ERROR_KINDS, STATUSES, ArchiveError, error_kind
from classeg.io import files
from classeg.io.s3 import S3Settings
from classeg.io.uri import Location, parse_uri

logger = logging.getLogger(__name__)

__all__ = ["FAILED_RUNS_DIR", "IDENTITY_COLUMNS", "MANIFEST_DIR", "Manifest", "OBJECT_KEY_COLUMNS", "RUNS_DIR",
           "SCORE_COLUMNS", "SCORES_SCHEMA_DDL", "SCORES_TABLE_DDL", "completed_runs", "mark_run_complete", "read_scores", "run_path"]

MANIFEST_DIR = "_manifest"
RUNS_DIR = "_runs"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")
_MANIFEST_READ_THREADS = 8
FAILED_RUNS_DIR = "_failed_runs"

# One row per scored image: an object is one row (status ok / error / skipped), or one row per frame of a
# multi-frame DICOM or per axial slice of a NIfTI volume (``frame`` 0-based; null for single-image files).
OBJECT_KEY_COLUMNS = ("source_uri", "key", "etag", "size", "mtime", "version")
SCORE_COLUMNS = (*OBJECT_KEY_COLUMNS, "frame", "status", "error", "label", "label_name",
                 "probabilities", "tumor_probability", "tumor", "mask", "mask_area_px", "mask_fraction", "bbox",
                 "height", "width", "window_source", "window_low", "window_high", *IDENTITY_COLUMNS,
                 "classifier_id", "segmenter_id", "scored_at")
# Spark schema of the rows score_frame / score_partition return (the table adds run_date and run_id).
SCORES_SCHEMA_DDL = (
    "source_uri string, key string, etag string, size long, mtime timestamp, version string, frame int, "
    "status string, error string, label int, label_name string, probabilities array<float>, "
    "tumor_probability double, tumor boolean, mask binary, mask_area_px long, mask_fraction double, "
    "bbox array<int>, height int, width int, window_source string, window_low double, window_high double, "
    "study_uid string, series_uid string, sop_uid string, instance_number int, modality string, "
    "series_description string, pixel_spacing_mm array<double>, slice_thickness_mm double, patient_key string, "
    "classifier_id string, segmenter_id string, scored_at timestamp")

# The table as read back: the row schema plus the two partition folders.
SCORES_TABLE_DDL = SCORES_SCHEMA_DDL + ", run_date date, run_id string"


def _check_run_id(run_id: str) -> None:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError(f"run_id must be 1-200 characters from A-Z a-z 0-9 . _ = - (not starting with . _ = -), "
                         f"got {run_id!r}")


def _pair_keys(uris: Any, versions: Any) -> pa.Array:
    """One string per (uri, version) pair, for set lookups. NUL cannot occur in S3 keys or file names."""
    uri_array = pa.array(uris, type=pa.string(), from_pandas=True)
    version_array = pa.array(versions, type=pa.string(), from_pandas=True)
    return pc.binary_join_element_wise(uri_array, version_array, "\x00")


class Manifest:
    """The (uri, version) pairs already scored into an output, for incremental runs.

    Stored as Parquet files under ``<output>/_manifest/``, one per :meth:`record` call (columns uri, version,
    status, run_id, recorded_at), never rewritten; completed runs as ``<output>/_runs/<run_id>.json``.
    Build with :meth:`load`. What counts as done: ``ok`` rows and error rows with a permanent kind; errors of
    a kind in :data:`RETRYABLE_ERROR_KINDS` (``fetch_failed``) are not recorded, so the next run retries them.
    """

    def __init__(self, output_uri: str, done_keys: pa.Array, file_count: int, settings: S3Settings):
        self._output = parse_uri(output_uri)
        self._done = done_keys
        self._file_count = file_count
        self._settings = settings

    @classmethod
    def load(cls, output_uri: str | os.PathLike, *, s3_cfg: Any = None) -> "Manifest":
        """The manifest of ``output_uri`` (a local path or ``s3://``); empty if nothing was recorded yet.

        Raises :class:`ArchiveError` if the output's bucket is missing or unreadable, or a manifest file cannot
        be read (the message names it; deleting that file only makes its objects be scored again).
        """
        output = parse_uri(output_uri)
        settings = S3Settings.of(s3_cfg)
        found = files.list_files(output.child(MANIFEST_DIR), suffix=".parquet", s3_cfg=settings)

        def read(location: Location) -> pa.Array:
            data = _read(location, settings)
            try:
                table = pq.read_table(pa.BufferReader(data), columns=["uri", "version"])
            except (pa.ArrowException, OSError) as err:
                raise ArchiveError(f"cannot read manifest file {location.uri}: {err}") from err
            return _pair_keys(table.column("uri"), table.column("version"))

        with ThreadPoolExecutor(max_workers=_MANIFEST_READ_THREADS) as pool:
            parts = list(pool.map(read, found))
        done = pa.concat_arrays([_as_array(part) for part in parts]) if parts else pa.array([], type=pa.string())
        manifest = cls(output.uri, pc.unique(done), len(found), settings)
        logger.info("manifest of %s: %d scored (uri, version) pairs in %d files", output.uri, len(manifest),
                    len(found))
        return manifest

    def __len__(self) -> int:
        return len(self._done)

    def __repr__(self) -> str:
        return f"Manifest({self._output.uri!r}, pairs={len(self)}, files={self._file_count})"

    def pending(self, objects: Iterable[ObjectInfo] | pd.DataFrame) -> list[ObjectInfo] | pd.DataFrame:
        """The objects whose (uri, version) pair is not recorded yet, in their order: a list of
        :class:`ObjectInfo` for an iterable of them, a DataFrame (index reset) for a DataFrame with ``uri`` and
        ``version`` columns. A changed object has a new version, so it is pending again."""
        if isinstance(objects, pd.DataFrame):
            missing = [column for column in ("uri", "version") if column not in objects.columns]
            if missing:
                raise ValueError(f"objects DataFrame lacks columns {missing}; has {list(objects.columns)}")
            keys = _pair_keys(objects["uri"], objects["version"])
            done = pc.is_in(keys, value_set=self._done).to_numpy(zero_copy_only=False)
            return objects.loc[~done].reset_index(drop=True)
        items = list(objects)
        bad = [item for item in items[:1] if not isinstance(item, ObjectInfo)]
        if bad:
            raise ValueError(f"pending expects ObjectInfo items or a DataFrame, got {type(bad[0]).__name__}")
        if not items:
            return []
        keys = _pair_keys([item.uri for item in items], [item.version for item in items])
        done = pc.is_in(keys, value_set=self._done).to_numpy(zero_copy_only=False)
        return [item for item, is_done in zip(items, done) if not is_done]

    def record(self, run_id: str, scored: pd.DataFrame) -> str | None:
        """Append the finished objects of ``scored`` as one new manifest file; returns its URI (None when no row
        counts as done).

        ``scored`` has columns ``uri``, ``version``, ``status`` (:data:`classeg.errors.STATUSES`: ``ok`` |
        ``error`` | ``skipped``) and, when there are error rows, ``error`` (``"<kind>: <detail>"``). Rows with
        status ``ok`` or ``skipped`` and errors of a permanent kind are recorded; ``fetch_failed`` errors and
        error rows without a reason are not (they are retried next run). An object with several rows (one per
        frame or slice) is recorded once.
        Call it only after the scores themselves are written: what is recorded is never scored again.
        """
        _check_run_id(run_id)
        if not isinstance(scored, pd.DataFrame):
            raise ValueError(f"scored must be a pandas DataFrame, got {type(scored).__name__}")
        missing = [column for column in ("uri", "version", "status") if column not in scored.columns]
        if missing:
            raise ValueError(f"scored lacks columns {missing}; has {list(scored.columns)}")
        statuses = set(scored["status"].unique()) - set(STATUSES)
        if statuses:
            raise ValueError(f"scored.status must be one of {list(STATUSES)}, got {sorted(map(repr, statuses))}")
        is_error = (scored["status"] == "error").to_numpy()
        if is_error.any() and "error" not in scored.columns:
            raise ValueError("scored has error rows but no 'error' column: it is needed to tell fetch_failed "
                             "errors (retried next run) from permanent ones")
        if scored["uri"].isna().any() or scored["version"].isna().any():
            raise ValueError("scored has rows with a null uri or version")
        done = ~is_error
        if is_error.any():
            kinds = scored["error"].map(error_kind)
            unexplained = is_error & kinds.isna().to_numpy()
            if unexplained.any():
                logger.warning("%d error rows have no error text; they are not recorded and will be retried",
                               int(unexplained.sum()))
            done |= is_error & kinds.notna().to_numpy() & ~kinds.isin(RETRYABLE_ERROR_KINDS).to_numpy()
        rows = scored.loc[done, ["uri", "version", "status"]].drop_duplicates(["uri", "version"])
        retried = int(is_error.sum() - (done & is_error).sum())
        if rows.empty:
            logger.info("run %s: nothing to record in the manifest (%d rows to retry)", run_id, retried)
            return None
        table = pa.table({
            "uri": pa.array(rows["uri"], type=pa.string()),
            "version": pa.array(rows["version"].astype(str), type=pa.string()),
            "status": pa.array(rows["status"], type=pa.string()),
            "run_id": pa.repeat(pa.scalar(run_id, pa.string()), len(rows)),
            "recorded_at": pa.repeat(pa.scalar(dt.datetime.now(dt.timezone.utc), pa.timestamp("us", "UTC")),
                                     len(rows)),
        })
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        target = self._output.child(f"{MANIFEST_DIR}/{run_id}-{uuid.uuid4().hex[:12]}.parquet")
        files.write_bytes(target, sink.getvalue().to_pybytes(), s3_cfg=self._settings)
        new_keys = _as_array(_pair_keys(table.column("uri"), table.column("version")))
        self._done = pc.unique(pa.concat_arrays([self._done, new_keys]))
        self._file_count += 1
        logger.info("run %s: recorded %d objects in %s (%d error rows left to retry)", run_id, len(rows),
                    target.uri, retried)
        return target.uri

    def completed_runs(self) -> dict[str, dict]:
        """The runs marked complete by :func:`mark_run_complete`: run_id -> its marker (run_id, run_date,
        completed_at, summary), oldest first. Read when called."""
        folder = self._output.child(RUNS_DIR)
        markers = []
        for location in files.list_files(folder, suffix=".json", s3_cfg=self._settings):
            data = _read(location, self._settings)
            try:
                markers.append(json.loads(data))
            except ValueError as err:
                raise ArchiveError(f"cannot read run marker {location.uri}: {err}") from err
        markers.sort(key=lambda marker: (str(marker.get("completed_at")), str(marker.get("run_id"))))
        return {marker["run_id"]: marker for marker in markers}


def _as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _read(location: Location, settings: S3Settings) -> bytes:
    try:
        return files.read_bytes(location, s3_cfg=settings)
    except FileNotFoundError as err:
        raise ArchiveError(f"cannot read {location.uri}: {err}") from err


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays
        return value.tolist()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def mark_run_complete(output_uri: str | os.PathLike, *, run_date: str | dt.date, run_id: str,
                      summary: Mapping[str, Any], s3_cfg: Any = None) -> str:
    """Mark run ``run_id`` complete: write ``<output>/_runs/<run_id>.json`` holding run_id, run_date
    (``YYYY-MM-DD``), completed_at (UTC ISO 8601) and ``summary`` (JSON-serialisable; numpy scalars allowed).
    Returns the marker's URI. Its presence means the run finished; see :meth:`Manifest.completed_runs`."""
    _check_run_id(run_id)
    if isinstance(run_date, dt.datetime):
        run_date = run_date.date()
    if isinstance(run_date, dt.date):
        run_date = run_date.isoformat()
    try:
        dt.date.fromisoformat(run_date)
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", run_date):
            raise ValueError(run_date)
    except (TypeError, ValueError):
        raise ValueError(f"run_date must be a date or 'YYYY-MM-DD', got {run_date!r}") from None
    if not isinstance(summary, Mapping):
        raise ValueError(f"summary must be a mapping, got {type(summary).__name__}")
    marker = {"run_id": run_id, "run_date": run_date,
              "completed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "summary": dict(summary)}
    try:
        data = json.dumps(marker, indent=2, sort_keys=True, default=_json_default).encode("utf-8")
    except TypeError as err:
        raise ValueError(f"summary must be JSON-serialisable: {err}") from err
    target = parse_uri(output_uri).child(f"{RUNS_DIR}/{run_id}.json")
    files.write_bytes(target, data, s3_cfg=S3Settings.of(s3_cfg))
    logger.info("run %s complete: %s", run_id, target.uri)
    return target.uri


def run_path(output: str, run_date: str, run_id: str) -> str:
    """Where run ``run_id`` of ``run_date`` writes its rows, as a URI Spark can write to."""
    location = parse_uri(output)
    return location.child(f"run_date={run_date}/run_id={run_id}").spark_uri

def completed_runs(output_uri: str | os.PathLike, *, s3_cfg: Any = None) -> dict[str, dict]:
    """The runs of ``output_uri`` that count: those marked complete by :func:`mark_run_complete`, as run_id ->
    marker (run_id, run_date, completed_at, summary), oldest first. The one rule every reader of the scores
    table applies."""
    return Manifest.load(output_uri, s3_cfg=s3_cfg).completed_runs()


def read_scores(spark, output: str | os.PathLike, *, latest: bool = False, include_incomplete: bool = False,
                s3_cfg: Any = None):
    """The scores table at ``output`` as a Spark DataFrame (:data:`SCORES_TABLE_DDL`: the rows plus
    ``run_date`` and ``run_id``).

    Only runs marked complete (``_runs/<run_id>.json``) are read, so rows of a crashed or failed run, whose
    objects the next run scores again, are never counted twice. ``include_incomplete=True`` reads every run
    folder (for debugging). ``latest=True`` keeps one row per object URI: the newest by ``scored_at`` (an
    object rescored with ``--full`` or after it changed has one row per run that scored it; objects with several
    frames keep their newest row per frame).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    location = parse_uri(output)
    base = location.spark_uri
    reader = spark.read.schema(SCORES_TABLE_DDL).option("basePath", base)
    if include_incomplete:
        # Only the run folders: the series table (``series/``) lives under the same output.
        paths = [location.child("run_date=*").spark_uri] if _has_runs(location, s3_cfg) else []
    else:
        paths = [run_path(output, marker["run_date"], run_id)
                 for run_id, marker in completed_runs(output, s3_cfg=s3_cfg).items()
                 if marker.get("summary", {}).get("rows_written")]
    frame = reader.parquet(*paths) if paths else spark.createDataFrame([], SCORES_TABLE_DDL)
    if latest:
        newest = Window.partitionBy("source_uri", "frame").orderBy(F.col("scored_at").desc(), F.col("run_id").desc())
        frame = frame.withColumn("_rank", F.row_number().over(newest)).where("_rank = 1").drop("_rank")
    return frame


def _has_runs(location: Location, s3_cfg: Any) -> bool:
    if location.scheme == "file":
        return os.path.isdir(location.path) and any(name.startswith("run_date=") for name in os.listdir(location.path))
    return True
