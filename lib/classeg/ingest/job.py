"""The ingest job: list, plan, decode, resolve, check, write (see :mod:`classeg.ingest`).

Spark jobs: one that decodes every planned file and collects their metadata (no pixels), one that writes the
scan table from the decoded rows kept on the executors, and (where Spark writes the table) one for the small
errors table. The listing is planned on the driver, which holds every file's status for binaryFile anyway.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from classeg import redact
from classeg.config import Config
from classeg.datasets.common import issue_rows
from classeg.datasets.registry import get_layout
from classeg.errors import JobFailed
from classeg.ingest import storage
from classeg.spark import check_shared_folder, job_stage
from classeg.ingest.decode import decode_in_tasks, decode_with_spark, read_mode
from classeg.ingest.listing import Listing, list_input, parse_listing, plan_files
from classeg.ingest.resolve import resolve
from classeg.ingest.table import ERRORS_DIR, FAILURE_DIR, SCANS_DIR, SUMMARY_NAME
from classeg.ingest.write import (SPARK_PARQUET_OPTIONS, STAGING_PREFIX, build_scans, failure_reason,
                                  finalize_scans, summarise, writable_base, write_issues)
from classeg.io.s3 import S3Settings
from classeg.io.uri import join

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """One run's identity, settings and clock: ``phases`` gets the seconds of each named step."""

    job: Any  # the config's ingest section
    s3: S3Settings
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: float = field(default_factory=time.time)
    phases: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)

    @property
    def output(self) -> str:
        return self.job.output.rstrip("/")

    def lap(self, name: str) -> None:
        """Record the seconds since the previous lap (or since the start) under ``name``."""
        now = time.perf_counter()
        self.phases[name] = round(self.phases.get(name, 0.0) + now - self._last, 3)
        self._last = now


@dataclass
class _Decoding:
    """The decoded files, kept on the executors until the table is written. ``staging``: where the tasks put
    the pixels (None: the DataFrame holds them, persisted); ``base``: the output as the tasks write to it."""

    frame: Any
    parts: int | None
    plan: Any  # the plan's broadcast (task reads), destroyed on release
    staging: str | None
    base: str | None

    def metadata(self) -> pd.DataFrame:
        """Every decoded file's META_FIELDS on the driver (runs the decode)."""
        return (self.frame if self.staging else self.frame.drop("image", "mask")).toPandas()

    def release(self, spark, s3: S3Settings) -> None:
        if self.staging:
            try:
                storage.delete(spark, self.staging, s3_cfg=s3)
            except Exception as err:  # noqa: BLE001 (cleanup must not hide the job's own outcome)
                log.warning("ingest: could not delete the staging folder %s: %s", self.staging, err)
        else:
            self.frame.unpersist()
        if self.plan is not None:
            self.plan.destroy()


def run_ingest(spark, cfg: Config) -> dict:
    """Run the ingest job described by ``cfg.ingest``; return the summary (also written as summary.json).
    Raises JobFailed when nothing usable was found or the error rate passes ``max_error_rate`` (the table is
    then left as it was; errors and summary go to ``last_failure/``), FileNotFoundError for a missing input."""
    job = cfg.ingest
    if not job.input or not job.output:
        raise ValueError(f"ingest needs --input and --output (got input={job.input!r}, output={job.output!r})")
    get_layout(job.dataset)
    redact.activate(redact.from_config(cfg))  # what the logs and the tasks' messages show of the file keys
    run = _Run(job=job, s3=S3Settings.of(cfg))
    # The tasks write the staging files and the table under a local output: on a cluster, every node must see it.
    check_shared_folder(spark, run.output, what="ingest.output")
    with job_stage(spark, "ingest-list", f"ingest {job.dataset}: list {job.input}"):
        listing = list_input(spark, job.input, read=job.read, s3_cfg=run.s3)
    log.info("ingest %s: %d files under %s", job.dataset, len(listing.paths), listing.root)
    parsed = parse_listing(pd.DataFrame({"path": listing.paths}), dataset=job.dataset, root=listing.root)
    to_decode, path_issues = plan_files(parsed)
    run.lap("list")
    decoding = _start_decode(spark, listing, to_decode, run)
    try:
        with job_stage(spark, "ingest-decode", f"ingest {job.dataset}: decode {len(to_decode)} files"):
            meta = decoding.metadata()
        run.lap("decode")
        units, issues, summary = _resolve(meta, to_decode, path_issues, listing, run)
        _fail_if_bad(spark, summary, issues, run, base=decoding.base)
        run.lap("resolve")
        with job_stage(spark, "ingest-write", f"ingest {job.dataset}: write {len(units)} scans to {run.output}"):
            _write_scans(spark, decoding, units, meta, run)
        run.lap("write_scans")
        with job_stage(spark, "ingest-errors", f"ingest {job.dataset}: write the errors table"):
            write_issues(spark, issues, output=run.output, folder=ERRORS_DIR, base=decoding.base, s3_cfg=run.s3)
        storage.delete(spark, join(run.output, FAILURE_DIR), s3_cfg=run.s3)
        run.lap("write_errors")
        return _finish(spark, summary, run)
    finally:
        decoding.release(spark, run.s3)


def _start_decode(spark, listing: Listing, to_decode: pd.DataFrame, run: _Run) -> _Decoding:
    """Plan the decode (who reads the files, who writes the table) and define it; nothing runs yet."""
    from pyspark import StorageLevel

    job = run.job
    mode = read_mode(to_decode["path"], job.read)
    base = writable_base(run.output) if mode == "tasks" else None
    staging = join(base, f"{STAGING_PREFIX}{run.run_id}") if base else None
    log.info("ingest %s: decoding %d files (read by %s, written by %s)", job.dataset, len(to_decode), mode,
             "the tasks" if staging else "Spark")
    if mode == "binaryfile":
        frame, parts, plan = decode_with_spark(spark, listing.raw, to_decode, dataset=job.dataset,
                                               image_size=job.image_size, partitions=job.partitions), None, None
    else:
        frame, parts, plan = decode_in_tasks(spark, to_decode, dataset=job.dataset, image_size=job.image_size,
                                             partitions=job.partitions, s3_cfg=run.s3, staging=staging,
                                             fetch_threads=job.fetch_threads)
    if staging is None:
        frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    return _Decoding(frame, parts, plan, staging, base)


def _resolve(meta: pd.DataFrame, to_decode: pd.DataFrame, path_issues: pd.DataFrame, listing: Listing,
             run: _Run) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(units, every issue row sorted by relpath, summary) from the decoded metadata."""
    job = run.job
    resolved = resolve(meta, dataset=job.dataset, fractions=job.split, seed=job.seed)
    unread = issue_rows(to_decode[~to_decode["path"].isin(meta["path"])], "error", "not_read",
                        "listed but its content could not be read")
    issues = pd.concat([path_issues, resolved.issues, unread], ignore_index=True).sort_values("relpath")
    summary = summarise(resolved.units, issues, listed=len(listing.paths), dataset=job.dataset,
                        class_names=resolved.class_names, job=job, root=listing.root, run_id=run.run_id,
                        tumor_note=resolved.tumor_note)
    return resolved.units, issues, summary


def _fail_if_bad(spark, summary: dict, issues: pd.DataFrame, run: _Run, *, base: str | None) -> None:
    """Raise JobFailed, with errors and summary in ``last_failure/``, when the run fails its checks."""
    failure = failure_reason(summary, run.job.max_error_rate)
    if not failure:
        return
    summary.update(status="failed", failure=failure)
    write_issues(spark, issues, output=run.output, folder=f"{FAILURE_DIR}/{ERRORS_DIR}", base=base, s3_cfg=run.s3)
    storage.write_text(spark, join(run.output, FAILURE_DIR, SUMMARY_NAME), json.dumps(summary, indent=2),
                       s3_cfg=run.s3)
    raise JobFailed(f"{failure}; the scan table was not written (errors and summary in "
                    f"{run.output}/{FAILURE_DIR}/)")


def _write_scans(spark, decoding: _Decoding, units: pd.DataFrame, meta: pd.DataFrame, run: _Run) -> None:
    """Replace the scan table: by the finalize tasks from the staging files, or by Spark."""
    log.info("ingest %s: writing %d scans to %s", run.job.dataset, len(units), run.output)
    # From here until the new summary is written, the folder reads as incomplete.
    storage.delete(spark, join(run.output, SUMMARY_NAME), s3_cfg=run.s3)
    if decoding.staging is None:
        (build_scans(spark, decoding.frame, units, dataset=run.job.dataset).write.mode("overwrite")
         .partitionBy("split").options(**SPARK_PARQUET_OPTIONS).parquet(storage.spark_uri(join(run.output, SCANS_DIR))))
        return
    storage.delete(spark, join(run.output, SCANS_DIR), s3_cfg=run.s3)
    written = finalize_scans(spark, units, meta, parts=decoding.parts, staging=decoding.staging,
                             scans=join(decoding.base, SCANS_DIR), dataset=run.job.dataset, s3_cfg=run.s3)
    if written != len(units):  # every resolved scan must be in exactly one staging file
        raise RuntimeError(f"ingest bug: {len(units)} scans resolved but {written} written")


def _finish(spark, summary: dict, run: _Run) -> dict:
    """Mark the run complete: summary.json, written last."""
    summary["status"] = "complete"
    summary["seconds"] = round(time.time() - run.started, 2)
    summary["phase_seconds"] = run.phases
    storage.write_text(spark, join(run.output, SUMMARY_NAME), json.dumps(summary, indent=2), s3_cfg=run.s3)
    log.info("ingest %s: %d scans %s, %d errors, %d skipped, %.1fs", run.job.dataset, summary["scans"],
             summary["per_split"], summary["files"]["errors"], summary["files"]["skipped"], summary["seconds"])
    return summary
