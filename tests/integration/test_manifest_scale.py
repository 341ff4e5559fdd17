"""The manifest as a Parquet folder Spark reads (issue 16): records that only add files, compaction, the pending
anti-join on (uri, version), a corrupt file named, tasks sized by object count, and a plan-only run.

Everything runs on the session's local[2] Spark with listings made in memory (objects_frame-shaped frames with
made-up URIs): no object is fetched, so no model scores anything here."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from classeg.archive import list_archive, objects_frame
from classeg.config import load_config
from classeg.errors import ArchiveError
from classeg.scoring.job import ScoreJob, listing_frame, plan_pending, task_count
from classeg.scoring.table import MANIFEST_DIR, Manifest


def listing(count: int, *, start: int = 0, version: str = "v1") -> pd.DataFrame:
    """An objects_frame-shaped listing of ``count`` made-up objects."""
    keys = [f"p{index // 10:03d}/s{index:05d}.dcm" for index in range(start, start + count)]
    frame = pd.DataFrame({"uri": [f"s3://archive/scans/{key}" for key in keys], "key": keys,
                          "size": [1000 + index for index in range(count)], "etag": version, "mtime": 1.7e9,
                          "version": version})
    return frame.astype({"size": "int64", "mtime": "float64"})


def scored_rows(spark, objects: pd.DataFrame, *, status: str = "ok", error: str | None = None):
    """What a run's read-back gives record_frame: (uri, version, status, error) per object."""
    rows = objects[["uri", "version"]].assign(status=status, error=error)
    return spark.createDataFrame(rows, "uri string, version string, status string, error string")


def pairs(spark, manifest: Manifest) -> set[tuple[str, str]]:
    return {(row.uri, row.version) for row in manifest.frame(spark).select("uri", "version").collect()}


def manifest_files(output: Path) -> dict[str, str]:
    """Name -> sha256 of every visible file directly under _manifest/."""
    folder = output / MANIFEST_DIR
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("*.parquet"))}


def test_many_records_then_compaction_keep_the_key_set(spark, tmp_path):
    output = tmp_path / "scores"
    expected = set()
    # One file the way the in-memory path (and every output before the Spark manifest) wrote them.
    old = listing(5, start=100)
    Manifest.open(output).record("run-0", old[["uri", "version"]].assign(status="ok"))
    expected |= set(zip(old["uri"], old["version"]))
    for run in range(1, 7):
        batch = listing(4, start=run * 4)
        Manifest.open(output).record_frame(f"run-{run}", scored_rows(spark, batch), rows=4)
        expected |= set(zip(batch["uri"], batch["version"]))
    manifest = Manifest.open(output)
    assert len(manifest.files) == 7 and pairs(spark, manifest) == expected and len(expected) == 29
    assert manifest.compact(spark, max_files=7) == 0  # not above the limit: nothing rewritten
    assert len(manifest_files(output)) == 7

    assert manifest.compact(spark, max_files=4) == 7
    assert len(manifest.files) == 1 and len(manifest_files(output)) == 1
    reopened = Manifest.open(output)
    assert pairs(spark, reopened) == expected and len(Manifest.load(output)) == 29
    table = pq.read_table(output / MANIFEST_DIR / next(iter(manifest_files(output))))
    assert table.column_names == ["uri", "version", "status", "run_id", "recorded_at"]
    assert set(table.column("run_id").to_pylist()) == {f"run-{run}" for run in range(7)}
    plan = plan_pending(spark, listing(40), reopened, objects_per_task=100)
    try:
        assert (plan.listed, plan.already_scored, plan.pending) == (40, 24, 16)
    finally:
        plan.release()


def test_pending_is_an_anti_join_on_uri_and_version(spark, tmp_path):
    output = tmp_path / "scores"
    Manifest.open(output).record_frame("run-1", scored_rows(spark, listing(10)), rows=10)
    # 0-5 unchanged, 6-9 changed (same uri, new version), 10-12 new.
    archive = pd.concat([listing(6), listing(4, start=6, version="v2"), listing(3, start=10)], ignore_index=True)
    plan = plan_pending(spark, archive, Manifest.open(output), objects_per_task=100, count_changed=True)
    try:
        assert (plan.listed, plan.already_scored, plan.changed, plan.new, plan.pending) == (13, 6, 4, 3, 7)
        rows = plan.frame.toPandas()
        assert sorted(zip(rows["key"], rows["version"])) == sorted(
            zip(archive["key"][6:], archive["version"][6:]))
        assert list(rows.columns) == ["uri", "key", "size", "etag", "mtime", "version"]
    finally:
        plan.release()
    full = plan_pending(spark, archive, Manifest.open(output), full=True, objects_per_task=100)
    assert (full.pending, full.already_scored, full.frame.count()) == (13, None, 13)


def test_corrupt_manifest_file_is_named(spark, tmp_path):
    output = tmp_path / "scores"
    Manifest.open(output).record_frame("run-1", scored_rows(spark, listing(3)), rows=3)
    (output / MANIFEST_DIR / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ArchiveError, match=r"cannot read manifest file .*_manifest/broken\.parquet"):
        plan_pending(spark, listing(5), Manifest.open(output), objects_per_task=100)
    with pytest.raises(ArchiveError, match=r"_manifest/broken\.parquet"):
        Manifest.load(output)


def test_record_writes_only_new_files_and_applies_the_done_rule(spark, tmp_path):
    output = tmp_path / "scores"
    for run in range(3):
        Manifest.open(output).record_frame(f"run-{run}", scored_rows(spark, listing(3, start=run * 3)), rows=3)
    before = manifest_files(output)
    assert len(before) == 3
    objects = listing(6, start=20)
    frames = objects.iloc[[0, 0, 0]][["uri", "version"]].assign(status="ok", error=None)  # one object, 3 frames
    rest = objects.iloc[1:][["uri", "version"]].assign(
        status=["skipped", "error", "error", "error", "ok"],
        error=["modality CT not in score.modalities", "undecodable: bad header", "fetch_failed: 6 attempts",
               None, None])
    scored = spark.createDataFrame(pd.concat([frames, rest]), "uri string, version string, status string, "
                                                              "error string")
    written = Manifest.open(output).record_frame("run-9", scored, rows=8)
    after = manifest_files(output)
    assert {name: after[name] for name in before} == before  # the old files are untouched
    assert len(after) == len(before) + len(written) and len(written) == 1
    assert {Path(uri).name for uri in written} == set(after) - set(before)
    table = pq.read_table(output / MANIFEST_DIR / Path(written[0]).name)
    recorded = dict(zip(table.column("uri").to_pylist(), table.column("status").to_pylist()))
    uris = objects["uri"].tolist()
    # Done: ok (once, whatever its frames), skipped, permanent errors; retried: fetch_failed and unexplained errors.
    assert recorded == {uris[0]: "ok", uris[1]: "skipped", uris[2]: "error", uris[5]: "ok"}
    assert set(table.column("run_id").to_pylist()) == {"run-9"}


def test_tasks_follow_objects_per_task_not_the_arrow_batch(spark, tmp_path):
    from pyspark.sql import functions as F

    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(key)
    spark.conf.set(key, "2")  # one partition per Arrow batch would make 15 here
    try:
        assert listing_frame(spark, listing(30)).rdd.getNumPartitions() == spark.sparkContext.defaultParallelism
        assert spark.conf.get(key) == "2"
        plan = plan_pending(spark, listing(30), Manifest.open(tmp_path / "empty"), objects_per_task=4)
        sizes = plan.frame.groupBy(F.spark_partition_id()).count().collect()
        assert plan.tasks == plan.frame.rdd.getNumPartitions() == len(sizes) == 8  # ceil(30 / 4)
        assert sum(row["count"] for row in sizes) == 30 and max(row["count"] for row in sizes) <= 5
        plan.release()
    finally:
        spark.conf.set(key, previous)
    cores = spark.sparkContext.defaultParallelism
    assert [task_count(spark, pending, objects_per_task=2000) for pending in (0, 1, 30, 4000, 4001)] == \
        [0, 1, cores, max(2, cores), max(3, cores)]
    assert task_count(spark, 30, objects_per_task=4, partitions=3) == 3  # score.partitions wins
    assert task_count(spark, 2, objects_per_task=4, partitions=5) == 2  # never more tasks than objects


def test_plan_only_writes_the_plan_and_scores_nothing(spark, tmp_path):
    from scoring_models import save_classifier

    from classeg.models import build_classifier

    archive = tmp_path / "archive"
    archive.mkdir()
    for index in range(6):
        (archive / f"scan{index}.png").write_bytes(b"x" * (index + 1))  # never read: nothing is scored
    output = tmp_path / "scores"
    scored = objects_frame(list_archive(archive)).iloc[:4]
    Manifest.open(output).record("run-0", scored[["uri", "version"]].assign(status="ok"))
    (archive / "scan0.png").write_bytes(b"changed")  # new size: a new version of a scored object
    before = manifest_files(output)
    classifier = tmp_path / "classifier"
    save_classifier(classifier, build_classifier(arch="resnet18", num_classes=2, input_size=32),
                    ["no_tumour", "tumour"])
    cfg = load_config(values={"score.archive": str(archive), "score.output": str(output),
                              "score.classifier": str(classifier), "score.plan_only": True,
                              "score.objects_per_task": 1, "score.run_id": "plan-1"})
    plan = ScoreJob.from_config(cfg).run(spark)
    assert {key: plan[key] for key in ("listed", "new", "changed", "already_scored", "pending", "tasks")} == \
        {"listed": 6, "new": 2, "changed": 1, "already_scored": 3, "pending": 3, "tasks": 3}
    written = json.loads((output / "_plans" / "plan-1.json").read_text())
    assert written == plan and written["plan_only"] is True and written["manifest_files"] == 1
    assert sorted(path.name for path in output.iterdir()) == ["_manifest", "_plans"]  # no rows, no marker
    assert manifest_files(output) == before


def test_objects_per_task_is_checked(tmp_path):
    cfg = load_config(values={"score.archive": str(tmp_path), "score.output": str(tmp_path / "out"),
                              "score.classifier": str(tmp_path / "model"), "score.objects_per_task": 0})
    with pytest.raises(ValueError, match="score.objects_per_task must be >= 1, got 0"):
        ScoreJob.from_config(cfg)
