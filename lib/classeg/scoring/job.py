"""The scoring job: list an archive, score what is new with Class-Seg in ``mapInPandas`` tasks, write the
scores table, record the manifest, mark the run complete.

Order of work (:class:`ScoreJob`), planned on the driver:

1. check the config, resolve ``--classifier``/``--segmenter`` to absolute artifact folders (a training output
   folder to its newest completed run's model: :func:`classeg.artifact.resolve_artifact`) and load both
   artifacts once (wrong or missing artifacts, a classifier whose classes have no tumour meaning: errors
   before any work);
2. prepare the listing (:func:`classeg.scoring.listing.archive_listing`: ``score.inventory``'s manifest read, or
   the prefix's or folder's parts discovered, on the driver; an unreadable archive or report fails here): a
   Spark DataFrame listed in tasks, never held by the driver;
3. compact the manifest beside the output when it has more than ``MANIFEST_MAX_FILES`` files
   (:meth:`~classeg.scoring.table.Manifest.compact`), then plan (:func:`plan_pending`): the listing is listed
   and cached, the objects not scored yet are a left anti-join of it with the manifest on (uri, version)
   in Spark (``--full``: all of them), counted, and spread over ``ceil(pending / score.objects_per_task)``
   tasks (at least ``defaultParallelism`` when there are that many objects; ``score.partitions`` > 0 wins).
   With ``score.plan_only`` the run stops here: it writes the plan (listed, new, changed, already scored,
   pending, tasks) to ``<output>/_plans/<run_id>.json`` and returns it, scoring and marking nothing;
4. ``mapInPandas(classeg.scoring.udf.score_partition)`` over those tasks and write
   ``<output>/run_date=D/run_id=R/`` (Parquet, mode overwrite: re-running a failed run id replaces its rows);
   the tasks' seconds per stage come back through an accumulator, summed, as the summary's ``stage_seconds``
   (:mod:`classeg.scoring.stages`), with ``model_batches``, ``largest_batch`` and ``host_ms_per_image``;
5. read the run back: every pending object must be there exactly once (its images' ok rows, or one error or
   skipped row); count objects, rows, statuses, error kinds and skip reasons; the error rate is error objects
   over objects scored (skipped objects are not errors);
6. fail with :class:`classeg.errors.JobFailed` if the error rate passes ``score.max_error_rate`` (the run's
   summary goes to ``<output>/_failed_runs/<run_id>.json``; nothing is recorded, so a re-run scores it all
   again); otherwise record the run's done objects in the manifest, written by Spark from the rows read back
   (:meth:`~classeg.scoring.table.Manifest.record_frame`: new files only), write the run's series table
   (:mod:`classeg.scoring.series`, ``<output>/series/run_date=D/run_id=R/``) and then mark the run complete
   (``<output>/_runs/<run_id>.json`` with the summary).

The listing of 2 and step 4 run in Spark tasks, the joins and counts of 3, 5 and 6 as Spark jobs; the driver
holds counts, never the listing or the manifest.

Table layout and readers
------------------------
``<output>/run_date=YYYY-MM-DD/run_id=R/part-*.parquet`` holds the rows of run R (columns
:data:`classeg.scoring.table.SCORES_SCHEMA_DDL`; ``run_date`` and ``run_id`` come from the folder names). A run that
crashed, or failed its error-rate check, leaves a folder without a ``_runs/R.json`` marker. Its objects were
not recorded in the manifest, so the next run scores them again: a reader that took every folder would count
those objects twice. :func:`read_scores` therefore reads only completed runs (and, with ``latest=True``, only
the newest row per object, for archives rescored with ``--full`` or new models). Readers that list the files
themselves (pyarrow, Athena) should filter ``run_id`` to the runs listed under ``_runs/``.

Concurrent runs on the same output are not supported (each would score the same new objects).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pandas as pd

from classeg import redact
from classeg.archive import OBJECTS_SCHEMA_DDL
from classeg.artifact import resolve_artifact
from classeg.config import Config
from classeg.dicom import load_patient_key_secret
from classeg.errors import ERROR_KINDS
from classeg.io import files
from classeg.io.uri import absolute, parse_uri
from classeg.io.s3 import S3Settings
from classeg.scoring.listing import archive_listing, listing_errors
from classeg.scoring.predictor import ClassSegPredictor, ScoreSettings, tumor_threshold
from classeg.scoring.table import (FAILED_RUNS_DIR, PLANS_DIR, SCORES_SCHEMA_DDL, Manifest, _check_run_id,
                                   mark_run_complete, run_path)
from classeg.scoring.series import write_series
from classeg.scoring.stages import stage_accumulator, stage_summary
from classeg.scoring.udf import score_partition

log = logging.getLogger(__name__)

__all__ = ["ScoreJob", "ScorePlan", "listing_frame", "plan_pending", "run_score", "task_count"]

# Runs of up to this many objects are read back with one collect of a few columns (one Spark job instead of
# several aggregations).
_COLLECT_MAX_ROWS = 200_000
# Rows per partition of the listing as it enters Spark: the planning joins' input, not the scoring tasks.
_LISTING_ROWS_PER_SLICE = 100_000
_ARROW_BATCH_KEY = "spark.sql.execution.arrow.maxRecordsPerBatch"


def _default_run_id(now: dt.datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def _run_date_and_id(score, now: dt.datetime) -> tuple[str, str]:
    """``score.run_date`` (YYYY-MM-DD, default today in UTC) and ``score.run_id`` (default a timestamp plus a
    random suffix), checked."""
    run_date = score.run_date or now.date().isoformat()
    try:
        if dt.date.fromisoformat(str(run_date)).isoformat() != str(run_date):
            raise ValueError(run_date)
    except ValueError:
        raise ValueError(f"score.run_date must be YYYY-MM-DD, got {run_date!r}") from None
    run_id = score.run_id or _default_run_id(now)
    _check_run_id(run_id)
    return str(run_date), run_id


def task_count(spark, pending: int, *, objects_per_task: int, partitions: int = 0) -> int:
    """Scoring tasks for ``pending`` objects: ``ceil(pending / objects_per_task)``, at least one per core of
    ``defaultParallelism`` when there are that many objects; ``partitions`` > 0 wins; 0 when nothing is
    pending. Each task pays a start (its first batch loads before the model runs, its last runs alone), so
    tasks are as large as a retried task may be; more of them only when the cores would idle."""
    if pending <= 0:
        return 0
    if partitions > 0:
        return min(partitions, pending)
    by_size = -(-pending // objects_per_task)
    return max(1, min(max(by_size, spark.sparkContext.defaultParallelism), pending))


def listing_frame(spark, objects: pd.DataFrame):
    """The listing ``objects`` (an :func:`~classeg.archive.objects_frame`) as a Spark DataFrame
    (:data:`~classeg.archive.OBJECTS_SCHEMA_DDL`) in ``ceil(len / 100k)`` partitions, at least
    ``defaultParallelism`` (at most one per object). Driver only."""
    count = len(objects)
    slices = max(1, min(count, max(spark.sparkContext.defaultParallelism, -(-count // _LISTING_ROWS_PER_SLICE))))
    previous = spark.conf.get(_ARROW_BATCH_KEY, None)
    # createDataFrame makes one partition per Arrow batch: sized by rows here, not by the scoring batch size.
    spark.conf.set(_ARROW_BATCH_KEY, str(max(1, -(-count // slices))))
    try:
        return spark.createDataFrame(objects, schema=OBJECTS_SCHEMA_DDL)
    finally:
        if previous is None:
            spark.conf.unset(_ARROW_BATCH_KEY)
        else:
            spark.conf.set(_ARROW_BATCH_KEY, previous)


@dataclass
class ScorePlan:
    """What a run scores. ``frame``: the pending objects (:data:`~classeg.archive.OBJECTS_SCHEMA_DDL`) spread
    over ``tasks`` partitions, None when nothing is pending. ``already_scored``: listed objects whose (uri,
    version) is recorded (None when a ``--full`` plan did not look); ``changed``: objects not scored yet whose
    uri was recorded at another version (None unless counted); ``new`` = not scored yet - ``changed``.
    Call :meth:`release` when done with ``frame``."""

    listed: int
    pending: int
    tasks: int
    frame: Any
    already_scored: int | None
    changed: int | None
    seconds: float
    cached: Any = None
    listing: Any = None

    @property
    def new(self) -> int | None:
        if self.already_scored is None or self.changed is None:
            return None
        return self.listed - self.already_scored - self.changed

    def release(self) -> None:
        """Drop the cached pending objects (the anti-join's result, kept between its count and the scoring) and
        the cached listing."""
        for frame in (self.cached, self.listing):
            if frame is not None:
                frame.unpersist()
        self.cached = self.listing = None


def plan_pending(spark, objects, manifest: Manifest, *, full: bool = False, objects_per_task: int = 2000,
                 partitions: int = 0, count_changed: bool = False) -> ScorePlan:
    """Plan a run on the driver, its listing, joins and counts in Spark. ``objects``: the listing, a Spark
    DataFrame of :data:`~classeg.archive.OBJECTS_SCHEMA_DDL` (:func:`classeg.scoring.listing.archive_listing`'s,
    listed in tasks; cached here for the plan, so it is listed once) or a pandas
    :func:`~classeg.archive.objects_frame` (small listings and tests: :func:`listing_frame`). Then the objects not
    scored yet (:meth:`Manifest.pending_frame`, cached between its count and the scoring; ``full``: every listed
    object, and the manifest is read only for ``count_changed``) and their tasks (:func:`task_count`).
    ``count_changed`` also counts the changed objects (one more join). A manifest file Spark cannot read, or a
    listing task that fails, is an ArchiveError naming the file or the prefix."""
    from pyspark import StorageLevel

    started = time.perf_counter()
    cached_listing = None
    if isinstance(objects, pd.DataFrame):
        listing, listed = listing_frame(spark, objects), len(objects)
    else:
        # On disk, not in memory: a listing task yields a whole inventory data file or listing part (millions of
        # rows), and unrolling that into the block manager's memory runs a 1 GB driver heap out of memory
        # (measured at 10^7 objects with 1M-row data files); written to local disk it streams.
        listing = cached_listing = objects.persist(StorageLevel.DISK_ONLY)
        with listing_errors():
            listed = listing.count()
    unscored, already_scored, changed = None, None, None
    if listed and (not full or count_changed):
        unscored = manifest.pending_frame(spark, listing).persist(StorageLevel.MEMORY_AND_DISK)
        with manifest.reading(), listing_errors():
            already_scored = listed - unscored.count()
            changed = manifest.changed_frame(spark, unscored).count() if count_changed else None
    elif not listed:
        already_scored, changed = 0, 0
    pending_frame, pending = (listing, listed) if full else (unscored, listed - (already_scored or 0))
    if full and unscored is not None:
        unscored.unpersist()
        unscored = None
    tasks = task_count(spark, pending, objects_per_task=objects_per_task, partitions=partitions)
    frame = pending_frame.repartition(tasks) if pending else None
    plan = ScorePlan(listed=listed, pending=pending, tasks=tasks, frame=frame, already_scored=already_scored,
                     changed=changed, seconds=round(time.perf_counter() - started, 3), cached=unscored,
                     listing=cached_listing)
    log.info("score plan: %d objects listed, %s already scored, %d to score (%s changed) in %d tasks, %.1f s",
             plan.listed, already_scored, pending, changed, tasks, plan.seconds)
    return plan


@dataclass
class ScoreJob:
    """One scoring run, planned and checked on the driver. Build with :meth:`from_config`, run with :meth:`run`."""

    archive: str
    output: str
    settings: ScoreSettings
    classifier_id: str
    segmenter_id: str | None
    run_id: str
    run_date: str
    run_id_given: bool
    full: bool
    max_error_rate: float
    partitions: int
    arrow_batch_size: int
    s3: dict
    inventory: str = ""  # score.inventory: an S3 Inventory manifest.json or configuration folder; "": list
    tumor_threshold_source: str = "score.tumor_threshold"
    objects_per_task: int = 2000
    plan_only: bool = False
    redaction: redact.KeyRedaction = field(default_factory=redact.KeyRedaction)

    @classmethod
    def from_config(cls, cfg: Config, *, now: dt.datetime | None = None) -> "ScoreJob":
        """Check ``cfg.score`` and load the model artifacts once on the driver, so that a missing or wrong
        artifact, or a classifier without tumour meaning, fails before any work. Raises ValueError (incl.
        TumorClassError) or FileNotFoundError naming the problem."""
        from classeg.spark import ensure_driver

        ensure_driver("ScoreJob.from_config")
        score = cfg.score
        redaction = redact.from_config(cfg)
        redact.activate(redaction)
        missing = [flag for flag, value in (("--archive", score.archive), ("--classifier", score.classifier),
                                            ("--output", score.output)) if not value]
        if missing:
            raise ValueError(f"score needs {', '.join(missing)} (see classeg score --help)")
        if score.partitions < 0:
            raise ValueError(f"score.partitions must be >= 0 (0: score.objects_per_task objects a task), "
                             f"got {score.partitions!r}")
        if score.objects_per_task < 1:
            raise ValueError(f"score.objects_per_task must be >= 1, got {score.objects_per_task!r}")
        if score.arrow_batch_size < 0:
            raise ValueError(f"score.arrow_batch_size must be >= 0 (0: spark.arrow_batch_size), "
                             f"got {score.arrow_batch_size!r}")
        tumor_classes = score.tumor_classes
        if not isinstance(tumor_classes, list) or not all(isinstance(name, str) for name in tumor_classes):
            raise ValueError(f"score.tumor_classes must be a list of class names, got {tumor_classes!r}")
        parse_uri(score.archive), parse_uri(score.output)  # ValueError naming a bad URI
        if score.inventory and not parse_uri(score.archive).is_s3:
            raise ValueError(f"score.inventory lists an S3 bucket: the archive must be s3://..., got "
                             f"{score.archive!r}")
        run_date, run_id = _run_date_and_id(score, now or dt.datetime.now(dt.timezone.utc))
        s3 = S3Settings.of(cfg)
        # The tasks get absolute artifact folders (their working directory is not the driver's), and a
        # training output folder becomes its newest run's model here, once, so every task loads the same one.
        classifier = resolve_artifact(str(score.classifier), task="classify", s3_cfg=s3)
        segmenter = resolve_artifact(str(score.segmenter), task="segment", s3_cfg=s3) if score.segmenter else None
        # Load on the driver once: checks tasks, weights checksums, architectures and the tumour mapping.
        predictor = ClassSegPredictor.load(classifier, segmenter, s3_cfg=s3, device="cpu",
                                           tumor_classes=tuple(tumor_classes))
        threshold, threshold_source = tumor_threshold(predictor.classifier.meta, score.tumor_threshold)
        settings = ScoreSettings(
            classifier=classifier, segmenter=segmenter,
            tumor_classes=tuple(tumor_classes), tumor_threshold=threshold,
            mask_threshold=score.mask_threshold, batch_size=score.batch_size,
            max_bytes=score.max_object_mb * 2**20, s3=s3, fetch_threads=score.fetch_threads,
            torch_threads=score.torch_threads, device=score.device, amp=score.amp, channels_last=score.channels_last,
            modalities=tuple(score.modalities),
            patient_key_secret=load_patient_key_secret(score.patient_key_secret, s3_cfg=s3))
        job = cls(archive=absolute(str(score.archive)), output=absolute(str(score.output)), settings=settings,
                  classifier_id=predictor.classifier_id, segmenter_id=predictor.segmenter_id, run_id=run_id,
                  run_date=run_date, run_id_given=bool(score.run_id), full=bool(score.full),
                  max_error_rate=float(score.max_error_rate), partitions=int(score.partitions),
                  arrow_batch_size=int(score.arrow_batch_size or cfg.spark.arrow_batch_size),
                  s3=cfg.s3.to_dict(), inventory=absolute(str(score.inventory)) if score.inventory else "",
                  tumor_threshold_source=threshold_source,
                  objects_per_task=int(score.objects_per_task), plan_only=bool(score.plan_only),
                  redaction=redaction)
        log.info("score: tumour threshold %.4f (%s)", threshold, threshold_source)
        tumour = [predictor.class_names[i] for i in predictor.tumor_indices]
        log.info("score: classifier %s (tumour classes %s) from %s, segmenter %s from %s; run %s (%s)",
                 job.classifier_id, tumour, classifier, job.segmenter_id or "none", segmenter or "-", run_id, run_date)
        return job

    # ------------------------------------------------------------------------------------------ running
    _SESSION_SETTINGS = ("spark.sql.execution.arrow.maxRecordsPerBatch", "spark.sql.execution.arrow.pyspark.enabled")

    def _configure(self, spark) -> dict:
        """Set the job's session settings; returns the previous values (restored after the run, so a shared
        session, e.g. a notebook's, is left as it was)."""
        conf = spark.sparkContext.getConf()
        if conf.get("spark.python.worker.reuse", "true").lower() != "true":
            log.warning("spark.python.worker.reuse is off: every task starts a Python worker and loads the "
                        "models again (set spark.python_worker_reuse: true)")
        previous = {key: spark.conf.get(key, None) for key in self._SESSION_SETTINGS}
        # Objects per Arrow batch into each task (the task re-cuts them into batches of score.batch_size).
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(self.arrow_batch_size))
        spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
        return previous

    @staticmethod
    def _restore(spark, previous: dict) -> None:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)

    def run(self, spark) -> dict:
        """Run the job on ``spark``; returns the run summary (also logged and written with the run marker), or
        with ``plan_only`` the plan (also written to ``<output>/_plans/<run_id>.json``).
        Raises :class:`classeg.archive.ArchiveError` for an unusable archive or output and
        :class:`classeg.errors.JobFailed` when the error rate passes ``score.max_error_rate``."""
        from classeg.spark import ensure_driver

        ensure_driver("ScoreJob.run")
        redact.activate(self.redaction)
        previous = self._configure(spark)
        try:
            return self._run(spark)
        finally:
            self._restore(spark, previous)

    def _run(self, spark) -> dict:
        started = time.perf_counter()
        listing = archive_listing(spark, self.archive, s3_cfg=self.s3, inventory=self.inventory or None,
                                  redaction=self.redaction)
        listed_seconds = listing.seconds  # discovery on the driver; the tasks list inside the plan's count
        log.info("score: listing %s from %s in %d tasks", redact.label(self.archive), listing.source, listing.tasks)
        manifest = Manifest.open(self.output, s3_cfg=self.s3)
        if self.run_id_given and self.run_id in manifest.completed_runs():
            raise ValueError(f"run {self.run_id!r} is already complete in {self.output}; choose a new score.run_id")
        # Before planning, so that no plan still reads the files it replaces; a plan-only run writes nothing.
        compacted = 0 if self.plan_only else manifest.compact(spark)
        plan = plan_pending(spark, listing.frame, manifest, full=self.full, objects_per_task=self.objects_per_task,
                            partitions=self.partitions, count_changed=self.plan_only)
        try:
            if self.plan_only:
                summary = self._write_plan(plan, manifest, listed_seconds, started, listing.describe())
            else:
                summary = self._score_and_record(spark, plan, manifest, compacted=compacted, started=started,
                                                 listed_seconds=listed_seconds, listing=listing.describe())
            return summary
        finally:
            plan.release()

    def _write_plan(self, plan: ScorePlan, manifest: Manifest, listed_seconds: float, started: float,
                    listing: dict) -> dict:
        summary = {"run_id": self.run_id, "run_date": self.run_date, "archive": self.archive, "output": self.output,
                   "plan_only": True, "full": self.full, "listed": plan.listed, "new": plan.new,
                   "changed": plan.changed, "already_scored": plan.already_scored, "pending": plan.pending,
                   "tasks": plan.tasks, "objects_per_task": self.objects_per_task,
                   "manifest_files": len(manifest.files), "listing_seconds": listed_seconds,
                   "planning_seconds": plan.seconds, "listing": listing,
                   "seconds": round(time.perf_counter() - started, 3)}
        target = parse_uri(self.output).child(f"{PLANS_DIR}/{self.run_id}.json")
        summary["plan"] = target.uri
        files.write_bytes(target, json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"), s3_cfg=self.s3)
        log.info("score plan %s: %d listed, %s new, %s changed, %s already scored: %d to score in %d tasks "
                 "(nothing scored; plan in %s)", self.run_id, plan.listed, plan.new, plan.changed,
                 plan.already_scored, plan.pending, plan.tasks, target.uri)
        return summary

    def _score_and_record(self, spark, plan: ScorePlan, manifest: Manifest, *, compacted: int, started: float,
                          listed_seconds: float, listing: dict) -> dict:
        from classeg.errors import JobFailed

        summary: dict[str, Any] = {
            "run_id": self.run_id, "run_date": self.run_date, "archive": self.archive, "output": self.output,
            "classifier_id": self.classifier_id, "segmenter_id": self.segmenter_id, "full": self.full,
            "listed": plan.listed, "pending": plan.pending, "already_scored": plan.listed - plan.pending,
            "scored": 0, "ok": 0, "errors": 0, "skipped": 0, "skipped_by_reason": {}, "errors_by_reason": {},
            "error_rate": 0.0, "rows": 0, "ok_rows": 0, "tumor": 0,
            "rows_written": 0, "partitions": 0, "listing": listing, "listing_seconds": listed_seconds,
            "planning_seconds": plan.seconds,
            "manifest_files_compacted": compacted, "scoring_seconds": 0.0, "images_per_s": 0.0, "seconds": 0.0,
            "tumor_threshold": self.settings.tumor_threshold, "tumor_threshold_source": self.tumor_threshold_source,
            "batch_size": self.settings.batch_size, **stage_summary({}),
        }
        if plan.pending:
            summary.update(self._score(spark, plan))
        summary["seconds"] = round(time.perf_counter() - started, 3)
        if summary["error_rate"] > self.max_error_rate:
            failed_marker = self._write_failed(summary)
            raise JobFailed(
                f"score run {self.run_id}: error rate {summary['error_rate']:.3f} ({summary['errors']} of "
                f"{summary['scored']} objects; by reason {summary['errors_by_reason']}) is above "
                f"score.max_error_rate={self.max_error_rate}; nothing recorded, the run is not complete (summary "
                f"in {failed_marker})")
        if summary["rows_written"]:
            self._record(spark, manifest, summary)
            summary["series"] = write_series(spark, summary["path"], self.output, self.run_date, self.run_id,
                                             schema=SCORES_SCHEMA_DDL)
        summary["marker"] = mark_run_complete(self.output, run_date=self.run_date, run_id=self.run_id,
                                              summary=summary, s3_cfg=self.s3)
        log.info("score run %s complete: %d listed, %d already scored, %d scored (%d ok, %d errors %s, %d skipped "
                 "%s), %d images, %d tumour, %.1f images/s, %.1f s", self.run_id, summary["listed"],
                 summary["already_scored"], summary["scored"], summary["ok"], summary["errors"],
                 summary["errors_by_reason"], summary["skipped"], summary["skipped_by_reason"], summary["ok_rows"],
                 summary["tumor"], summary["images_per_s"], summary["seconds"])
        return summary

    def _score(self, spark, plan: ScorePlan) -> dict:
        """Score the plan's objects and check the written rows; returns the summary counts."""
        from pyspark.sql import functions as F

        from classeg.errors import JobFailed

        target = run_path(self.output, self.run_date, self.run_id)
        started = time.perf_counter()
        stages = stage_accumulator(spark)
        scored = plan.frame.mapInPandas(partial(score_partition, settings=self.settings, stages=stages,
                                                 redaction=self.redaction), schema=SCORES_SCHEMA_DDL)
        spark.sparkContext.setJobDescription(f"classeg score {self.run_id}: {plan.pending} objects")
        try:
            scored.write.mode("overwrite").parquet(target)
        finally:
            spark.sparkContext.setJobDescription(None)
        scoring_seconds = time.perf_counter() - started
        written = spark.read.schema(SCORES_SCHEMA_DDL).parquet(target)
        if plan.pending <= _COLLECT_MAX_ROWS:
            # Small enough for one Arrow collect of the few columns needed: the invariant and the counts come
            # from this one read (one Spark job instead of several).
            totals = _totals(written.select(F.col("source_uri").alias("uri"), "version", "status", "error",
                                            "tumor").toPandas())
        else:
            totals = _spark_totals(written)
        objects = totals["distinct"]
        accounted = totals["ok_objects"] + totals["error_rows"] + totals["skipped_rows"]
        if objects != plan.pending or accounted != plan.pending:
            raise JobFailed(f"score run {self.run_id}: wrote {totals['rows']} rows for {objects} distinct objects "
                            f"({totals['ok_objects']} ok, {totals['error_rows']} error rows, "
                            f"{totals['skipped_rows']} skipped rows), expected each of {plan.pending} objects "
                            f"exactly once: its images' ok rows, or one error or skipped row (in {target})")
        by_reason = {name: totals[f"kind_{name}"] for name in (*ERROR_KINDS, "other") if totals[f"kind_{name}"]}
        errors = totals["error_rows"]
        if errors > sum(by_reason.values()):  # error rows without a "<kind>: ..." text (never written by this job)
            by_reason["unknown"] = errors - sum(by_reason.values())
        rows = totals["rows"]
        return {"scored": objects, "ok": totals["ok_objects"], "errors": errors, "skipped": totals["skipped_rows"],
                "skipped_by_reason": totals["skipped_by_reason"], "errors_by_reason": dict(sorted(by_reason.items())),
                "error_rate": round(errors / objects, 6) if objects else 0.0, "rows": rows,
                "ok_rows": totals["ok_rows"], "tumor": totals["tumor"] or 0, "rows_written": rows,
                "partitions": plan.tasks, "scoring_seconds": round(scoring_seconds, 3),
                "images_per_s": round(totals["ok_rows"] / scoring_seconds, 3) if scoring_seconds > 0 else 0.0,
                "path": target, **stage_summary(stages.value)}

    def _record(self, spark, manifest: Manifest, summary: dict) -> None:
        """Add the run's done objects to the manifest: a Spark write of the rows read back, new files only."""
        from pyspark.sql import functions as F

        recordable = summary["scored"] - summary["errors_by_reason"].get("fetch_failed", 0)
        if recordable <= 0:
            log.info("run %s: nothing to record in the manifest (every object is retried next run)", self.run_id)
            return
        written = spark.read.schema(SCORES_SCHEMA_DDL).parquet(summary["path"])
        done = written.select(F.col("source_uri").alias("uri"), "version", "status", "error")
        spark.sparkContext.setJobDescription(f"classeg score {self.run_id}: manifest")
        try:
            manifest.record_frame(self.run_id, done, rows=recordable)
        finally:
            spark.sparkContext.setJobDescription(None)

    def _write_failed(self, summary: dict) -> str:
        from classeg.artifact import write_bytes

        location = parse_uri(self.output).child(f"{FAILED_RUNS_DIR}/{self.run_id}.json")
        marker = {"run_id": self.run_id, "run_date": self.run_date, "status": "failed",
                  "failed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "summary": summary}
        target = location.uri if location.scheme == "s3" else location.path
        write_bytes(target, json.dumps(marker, indent=2, sort_keys=True, default=str).encode("utf-8"), s3_cfg=self.s3)
        return location.uri


_SKIP_REASONS_SHOWN = 20


def _totals(done: pd.DataFrame) -> dict:
    """The read-back counts (as :func:`_spark_totals`) from the collected (uri, version, status, error,
    tumor) rows; a skipped row's ``error`` is its reason."""
    ok = done["status"] == "ok"
    kind = done["error"].fillna("").str.split(":", n=1).str[0]
    error = done["status"] == "error"
    skipped = done["status"] == "skipped"
    totals = {"rows": len(done), "distinct": len(done.drop_duplicates(["uri", "version"])),
              "ok_objects": len(done[ok].drop_duplicates(["uri", "version"])), "ok_rows": int(ok.sum()),
              "error_rows": int(error.sum()), "skipped_rows": int(skipped.sum()),
              "tumor": int((ok & done["tumor"].astype("boolean").fillna(False).astype(bool)).sum())}
    totals.update({f"kind_{name}": int((error & (kind == name)).sum()) for name in ERROR_KINDS})
    totals["kind_other"] = int((error & ~kind.isin(ERROR_KINDS)).sum())
    reasons = done.loc[skipped, "error"].fillna("(no reason)").value_counts().head(_SKIP_REASONS_SHOWN)
    totals["skipped_by_reason"] = {str(reason): int(count) for reason, count in sorted(reasons.items())}
    return totals


def _spark_totals(written) -> dict:
    """The read-back counts in Spark aggregations: rows, distinct (source_uri, version), ok objects and rows,
    error and skipped rows, tumour rows, error rows by kind (the text before ':' in ``error``) and the most
    common skip reasons."""
    from pyspark.sql import functions as F

    kind = F.substring_index("error", ":", 1)
    is_ok = F.col("status") == "ok"
    totals = written.agg(
        F.count(F.lit(1)).alias("rows"), F.countDistinct("source_uri", "version").alias("distinct"),
        F.countDistinct(F.when(is_ok, F.col("source_uri")), F.when(is_ok, F.col("version"))).alias("ok_objects"),
        F.sum(F.when(is_ok, 1).otherwise(0)).alias("ok_rows"),
        F.sum(F.when(F.col("status") == "error", 1).otherwise(0)).alias("error_rows"),
        F.sum(F.when(F.col("status") == "skipped", 1).otherwise(0)).alias("skipped_rows"),
        F.sum(F.when(is_ok & F.col("tumor"), 1).otherwise(0)).alias("tumor"),
        *[F.sum(F.when((F.col("status") == "error") & (kind == name), 1).otherwise(0)).alias(f"kind_{name}")
          for name in ERROR_KINDS],
        F.sum(F.when((F.col("status") == "error") & ~kind.isin(*ERROR_KINDS), 1).otherwise(0)).alias("kind_other"),
    ).first().asDict()
    reasons = (written.where(F.col("status") == "skipped").groupBy(F.coalesce("error", F.lit("(no reason)")))
               .count().orderBy(F.col("count").desc()).limit(_SKIP_REASONS_SHOWN).collect())
    totals["skipped_by_reason"] = {str(row[0]): int(row[1]) for row in sorted(reasons)}
    return {key: (value or 0) if key != "skipped_by_reason" else value for key, value in totals.items()}


def run_score(spark, cfg: Config) -> dict:
    """Plan (:meth:`ScoreJob.from_config`) and run the scoring job described by ``cfg.score``; the summary."""
    return ScoreJob.from_config(cfg).run(spark)


