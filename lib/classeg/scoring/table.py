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

    <output>/_manifest/*.parquet      the manifest (columns MANIFEST_SCHEMA_DDL): files only ever added by a
                                      run's record, and rewritten into a few by Manifest.compact
    <output>/_runs/<run_id>.json      written by mark_run_complete: the run's summary
    <output>/_plans/<run_id>.json     written by a plan-only run (ScoreJob with score.plan_only): its plan

A run's manifest files are written by Spark's committer (or whole, through :mod:`classeg.io.files`, by the
in-memory :meth:`Manifest.record`), after its scores and before its marker, so a run that crashes before
recording leaves the manifest as it was. Error rows carry an ``error`` text ``"<kind>: <detail>"``
(:mod:`classeg.errors`); a row whose kind is retryable (``fetch_failed``) is retried by the next run, every
other error is permanent for that object version and is recorded as done, like an ``ok`` row.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
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

__all__ = ["FAILED_RUNS_DIR", "IDENTITY_COLUMNS", "MANIFEST_DIR", "MANIFEST_MAX_FILES", "MANIFEST_SCHEMA_DDL", "Manifest",
           "OBJECT_KEY_COLUMNS", "PLANS_DIR", "RUNS_DIR", "SCORE_COLUMNS", "SCORES_SCHEMA_DDL", "SCORES_TABLE_DDL",
           "completed_runs", "mark_run_complete", "read_scores", "run_path"]

MANIFEST_DIR = "_manifest"
RUNS_DIR = "_runs"
PLANS_DIR = "_plans"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")
_MANIFEST_READ_THREADS = 8
MANIFEST_SCHEMA_DDL = "uri string, version string, status string, run_id string, recorded_at timestamp"
# Compaction starts above this many files: each file is one more footer to read and task to start per plan.
MANIFEST_MAX_FILES = 64
# Rows per manifest file written by Spark: large enough that a 10^8-object manifest is a few dozen files,
# small enough that one file is one modest read task.
_MANIFEST_ROWS_PER_FILE = 2_000_000
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
    """One string per (uri, version) pair, for the in-memory lookups. NUL cannot occur in S3 keys or file names.
    Large strings (64-bit offsets): a plain string array of every pair overflows at a few GiB of text."""
    return _as_array(pc.binary_join_element_wise(_large_strings(uris), _large_strings(versions),
                                                     pa.scalar("\x00", pa.large_string())))


def _large_strings(values: Any) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return _as_array(values).cast(pa.large_string())
    return pa.array(values, type=pa.large_string(), from_pandas=True)


class Manifest:
    """The (uri, version) pairs already scored into an output, for incremental runs.

    Stored as Parquet files directly under ``<output>/_manifest/`` (columns :data:`MANIFEST_SCHEMA_DDL`); a
    record call only adds files, and :meth:`compact` rewrites many files into a few. Duplicate pairs (an object
    recorded twice, a compaction seen half-way) change nothing: every question asked of the manifest is a set
    question. Completed runs are ``<output>/_runs/<run_id>.json``. What counts as done: ``ok`` and ``skipped``
    rows and error rows with a permanent kind; errors of a kind in :data:`RETRYABLE_ERROR_KINDS`
    (``fetch_failed``) and error rows without a reason are not recorded, so the next run retries them.

    Two ways in. The scoring job uses the Spark methods (:meth:`frame`, :meth:`pending_frame`,
    :meth:`changed_frame`, :meth:`record_frame`, :meth:`compact`): Spark reads the files, the driver holds only
    their names. :meth:`load`, :meth:`pending` and :meth:`record` read and write the pairs in the driver's
    memory, for small outputs and tests. Build with :meth:`open` (lists the files, reads none) or :meth:`load`.
    """

    def __init__(self, output_uri: str, manifest_files: list[Location], settings: S3Settings):
        self._output = parse_uri(output_uri)
        self._files = list(manifest_files)
        self._settings = settings
        self._parts: list[pa.Array] | None = None  # the in-memory path's pairs, one array per file, read once
        self._done: pa.Array | None = None

    @classmethod
    def open(cls, output_uri: str | os.PathLike, *, s3_cfg: Any = None) -> "Manifest":
        """The manifest of ``output_uri`` (a local path or ``s3://``), its files listed but not read (empty if
        nothing was recorded yet). Raises :class:`ArchiveError` if the output's bucket is missing or unreadable."""
        output = parse_uri(output_uri)
        settings = S3Settings.of(s3_cfg)
        return cls(output.uri, _manifest_files(output, settings), settings)

    @classmethod
    def load(cls, output_uri: str | os.PathLike, *, s3_cfg: Any = None) -> "Manifest":
        """:meth:`open`, then read every pair into the driver's memory (for small outputs and tests).

        Raises :class:`ArchiveError` if the output's bucket is missing or unreadable, or a manifest file cannot
        be read (the message names it; deleting that file only makes its objects be scored again).
        """
        manifest = cls.open(output_uri, s3_cfg=s3_cfg)
        logger.info("manifest of %s: %d scored (uri, version) pairs in %d files", manifest._output.uri,
                    len(manifest), len(manifest._files))
        return manifest

    @property
    def uri(self) -> str:
        return self._output.uri

    @property
    def files(self) -> list[str]:
        """The URIs of the manifest's files (as listed by :meth:`open` plus those this object wrote since)."""
        return [location.uri for location in self._files]

    def __len__(self) -> int:
        """The number of distinct recorded pairs (reads the files into memory on first use)."""
        return len(self._pairs())

    def __repr__(self) -> str:
        pairs = "" if self._done is None else f"pairs={len(self._done)}, "
        return f"Manifest({self._output.uri!r}, {pairs}files={len(self._files)})"

    # ------------------------------------------------------------------------------ in the driver's memory
    def _pairs(self) -> pa.Array:
        if self._parts is None:
            with ThreadPoolExecutor(max_workers=_MANIFEST_READ_THREADS) as pool:
                self._parts = list(pool.map(self._read_pairs, self._files))
        if self._done is None:
            parts = [part for part in self._parts if len(part)]
            self._done = pc.unique(pa.concat_arrays(parts)) if parts else pa.array([], type=pa.large_string())
        return self._done

    def _read_pairs(self, location: Location) -> pa.Array:
        data = _read(location, self._settings)
        try:
            table = pq.read_table(pa.BufferReader(data), columns=["uri", "version"])
        except (pa.ArrowException, OSError) as err:
            raise ArchiveError(f"cannot read manifest file {location.uri}: {err}") from err
        return _pair_keys(table.column("uri").combine_chunks(), table.column("version").combine_chunks())

    def pending(self, objects: Iterable[ObjectInfo] | pd.DataFrame) -> list[ObjectInfo] | pd.DataFrame:
        """The objects whose (uri, version) pair is not recorded yet, in their order: a list of
        :class:`ObjectInfo` for an iterable of them, a DataFrame (index reset) for a DataFrame with ``uri`` and
        ``version`` columns. A changed object has a new version, so it is pending again. In memory: the
        scoring job uses :meth:`pending_frame`."""
        if isinstance(objects, pd.DataFrame):
            missing = [column for column in ("uri", "version") if column not in objects.columns]
            if missing:
                raise ValueError(f"objects DataFrame lacks columns {missing}; has {list(objects.columns)}")
            keys = _pair_keys(objects["uri"], objects["version"])
            done = pc.is_in(keys, value_set=self._pairs()).to_numpy(zero_copy_only=False)
            return objects.loc[~done].reset_index(drop=True)
        items = list(objects)
        bad = [item for item in items[:1] if not isinstance(item, ObjectInfo)]
        if bad:
            raise ValueError(f"pending expects ObjectInfo items or a DataFrame, got {type(bad[0]).__name__}")
        if not items:
            return []
        keys = _pair_keys([item.uri for item in items], [item.version for item in items])
        done = pc.is_in(keys, value_set=self._pairs()).to_numpy(zero_copy_only=False)
        return [item for item, is_done in zip(items, done) if not is_done]

    def record(self, run_id: str, scored: pd.DataFrame) -> str | None:
        """Append the finished objects of a pandas ``scored`` as one new manifest file; returns its URI (None
        when no row counts as done). In memory, for small callers: the scoring job uses :meth:`record_frame`.

        ``scored`` has columns ``uri``, ``version``, ``status`` (:data:`classeg.errors.STATUSES`: ``ok`` |
        ``error`` | ``skipped``) and, when there are error rows, ``error`` (``"<kind>: <detail>"``). Rows with
        status ``ok`` or ``skipped`` and errors of a permanent kind are recorded; ``fetch_failed`` errors and
        error rows without a reason are not (they are retried next run). An object with several rows (one per
        frame or slice) is recorded once. The other manifest files are neither read nor rewritten.
        Call it only after the scores themselves are written: what is recorded is never scored again.
        """
        _check_run_id(run_id)
        rows, retried = _done_rows(scored)
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
        self._files.append(target)
        if self._parts is not None:  # the new pairs join the ones in memory; the set is rebuilt when next asked
            self._parts.append(_pair_keys(table.column("uri"), table.column("version")))
            self._done = None
        logger.info("run %s: recorded %d objects in %s (%d error rows left to retry)", run_id, len(rows),
                    target.uri, retried)
        return target.uri

    # ------------------------------------------------------------------------------------------- in Spark
    def frame(self, spark):
        """The manifest's rows as a Spark DataFrame (:data:`MANIFEST_SCHEMA_DDL`), read from its files when an
        action runs (wrap actions in :meth:`reading` for errors that name a bad file)."""
        if not self._files:
            return spark.createDataFrame([], MANIFEST_SCHEMA_DDL)
        return spark.read.schema(MANIFEST_SCHEMA_DDL).parquet(*[location.spark_uri for location in self._files])

    def pending_frame(self, spark, objects):
        """The rows of the Spark DataFrame ``objects`` (with ``uri`` and ``version`` columns) whose (uri,
        version) pair is not recorded: a left anti-join with the manifest, distributed like any join. A changed
        object has a new version, so it is pending again."""
        done = self.frame(spark).select("uri", "version")
        return objects.join(done, on=["uri", "version"], how="left_anti").select(*objects.columns)

    def changed_frame(self, spark, pending):
        """The rows of ``pending`` (from :meth:`pending_frame`) whose uri was recorded at another version."""
        return pending.join(self.frame(spark).select("uri"), on="uri", how="left_semi").select(*pending.columns)

    def record_frame(self, run_id: str, scored, *, rows: int) -> list[str]:
        """Append the finished objects of the Spark DataFrame ``scored`` (columns ``uri``, ``version``,
        ``status``, ``error``; the done rule of :meth:`record`) as new manifest files, written by Spark; returns
        their URIs. ``rows``: about how many rows ``scored`` has, to size the files. Nothing else under
        ``_manifest/`` is read or rewritten, so recording costs what the run's own rows cost.
        Call it only after the scores themselves are written: what is recorded is never scored again."""
        from pyspark.sql import functions as F

        _check_run_id(run_id)
        status, kind = F.col("status"), F.trim(F.substring_index(F.col("error"), ":", 1))
        permanent_error = (status == "error") & F.col("error").isNotNull() & ~kind.isin(*RETRYABLE_ERROR_KINDS)
        done = scored.where(status.isin("ok", "skipped") | permanent_error).select(
            "uri", F.col("version").cast("string").alias("version"), "status",
            F.lit(run_id).alias("run_id"), F.current_timestamp().alias("recorded_at"))
        count = max(1, -(-int(rows) // _MANIFEST_ROWS_PER_FILE))
        before = {location.uri for location in self._files}
        # Hash-partitioned on the pair, so dropping an object's other frames needs no second shuffle.
        done.repartition(count, "uri", "version").dropDuplicates(["uri", "version"]) \
            .write.mode("append").parquet(self._output.child(MANIFEST_DIR).spark_uri)
        self._files = _manifest_files(self._output, self._settings)
        self._parts = self._done = None
        written = [location.uri for location in self._files if location.uri not in before]
        logger.info("run %s: recorded its done objects in %d new manifest files", run_id, len(written))
        return written

    def compact(self, spark, *, max_files: int = MANIFEST_MAX_FILES) -> int:
        """When the manifest has more than ``max_files`` files, rewrite its distinct pairs into a few files
        (about :data:`_MANIFEST_ROWS_PER_FILE` rows each), then delete the old files; returns how many were
        deleted (0: nothing to do). Safe to interrupt: until the old files are gone a reader sees every pair
        twice, which changes no answer. Run it before planning a run, never while a plan still reads the files."""
        if max_files < 1:
            raise ValueError(f"max_files must be >= 1, got {max_files!r}")
        if len(self._files) <= max_files:
            return 0
        old, rows = list(self._files), self.frame(spark)
        with self.reading():
            count = max(1, -(-rows.count() // _MANIFEST_ROWS_PER_FILE))
            rows.repartition(count, "uri", "version").dropDuplicates(["uri", "version"]) \
                .write.mode("append").parquet(self._output.child(MANIFEST_DIR).spark_uri)
        for location in old:
            files.delete(location, s3_cfg=self._settings)
            if location.scheme == "file":  # the checksum file Hadoop's local filesystem wrote beside it
                files.delete(os.path.join(os.path.dirname(location.path), f".{os.path.basename(location.path)}.crc"))
        self._files = _manifest_files(self._output, self._settings)
        self._parts = self._done = None
        logger.info("manifest of %s compacted: %d files into %d", self._output.uri, len(old), len(self._files))
        return len(old)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Run Spark actions that read the manifest inside this: a file Spark cannot read becomes an
        :class:`ArchiveError` naming it (deleting that file only makes its objects be scored again)."""
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException

        try:
            yield
        except (Py4JJavaError, PySparkException) as err:
            lines = str(err).splitlines()
            for location in self._files:
                path = _spark_path(location)
                line = next((line.strip() for line in lines if path in line), None)
                if line is not None:
                    cut = line.rfind("Exception: ", 0, line.find(path))  # the reason, not the stage's story
                    detail = line[cut + len("Exception: "):] if cut >= 0 else line
                    raise ArchiveError(f"cannot read manifest file {location.uri}: {detail[:300]}") from err
            raise

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


def _manifest_files(output: Location, settings: S3Settings) -> list[Location]:
    """The manifest's Parquet files: directly under ``_manifest/``, as Spark's reader would take them (not
    ``_temporary/`` left by an interrupted Spark write, not hidden names)."""
    folder = output.child(MANIFEST_DIR)
    prefix = folder.uri.rstrip("/") + "/"
    found = files.list_files(folder, suffix=".parquet", s3_cfg=settings)
    return [location for location in found
            if "/" not in location.uri[len(prefix):] and not location.uri[len(prefix):].startswith("_")]


def _spark_path(location: Location) -> str:
    """How a file's path appears in Spark's messages whatever the scheme spelling (file:/, file:///, s3a://)."""
    return location.path if location.scheme == "file" else f"{location.bucket}/{location.prefix}"


def _done_rows(scored: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The distinct (uri, version, status) rows of ``scored`` that count as done, and how many error rows are
    left to retry; ValueError naming what is wrong with ``scored``."""
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
    return rows, int(is_error.sum() - (done & is_error).sum())


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
    return Manifest.open(output_uri, s3_cfg=s3_cfg).completed_runs()


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
