"""`classeg train --output s3://...` on local[2] against a real S3-compatible server (moto, 127.0.0.1), with a
local scan table: the Petastorm cache goes to Spark's local dir (the rule of
`classeg.training.job.cache_location`), everything else the run writes (checkpoints, the model artifact, its
metrics and figures, result.json) goes through classeg's S3 layer with the configured encryption, and
`classeg score --classifier s3://bucket/run` takes that training output folder."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from classeg import synthetic
from classeg.cli import main
from classeg.errors import ConfigError
from classeg.scoring import read_scores
from classeg.training.job import CLUSTER_CACHE_ROOT, cache_location, spark_local_dir
from lgg_tables import small_lgg_table

SIZE = 32
BUCKET = "train-output"
RUN_ID = "s3run"


@pytest.fixture(scope="module")
def table(tmp_path_factory, spark):
    return small_lgg_table(spark, tmp_path_factory.mktemp("s3-train-data"), patients=6, seed=11, image_size=SIZE,
                           slices_per_patient=(6, 7))


def _s3_flags(endpoint: str) -> list[str]:
    return ["--set", f"s3.endpoint_url={endpoint}", "--set", "s3.sse=AES256", "--set", "s3.backoff_seconds=0.01"]


@pytest.fixture(scope="module")
def trained(table, spark, s3, moto_endpoint, worker_env):
    """(exit status, the JSON result `classeg train` printed)."""
    s3.create_bucket(Bucket=BUCKET)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["train", "--task", "classify", "--scans", str(table), "--output", f"s3://{BUCKET}/run",
                     "--engine", "horovod", "--num-proc", "2", "--epochs", "1", "--batch-size", "4",
                     "--image-size", str(SIZE), "--run-id", RUN_ID, "--set", "spark.master=local[2]",
                     "--set", "train.threads_per_proc=1", "--set", "train.lr=0.001", *_s3_flags(moto_endpoint)])
    return code, json.loads(printed.getvalue()) if code == 0 else None


def _objects(s3) -> dict[str, str | None]:
    keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for item in page.get("Contents", ())]
    return {key: s3.head_object(Bucket=BUCKET, Key=key).get("ServerSideEncryption") for key in keys}


def test_training_writes_its_run_to_s3_encrypted(trained, s3):
    code, _ = trained
    assert code == 0
    objects = _objects(s3)
    run = f"run/runs/{RUN_ID}"
    for key in (f"{run}/checkpoints/last.pt", f"{run}/checkpoints/best.pt", f"{run}/model/model.json",
                f"{run}/model/weights.pt", f"{run}/model/metrics.json", f"{run}/result.json", "run/model/model.json",
                "run/model/weights.pt"):
        assert key in objects, f"{key} not in the bucket: {sorted(objects)}"
    assert set(objects.values()) == {"AES256"}, "every object the run wrote carries s3.sse"
    assert not [key for key in objects if "/cache/" in key], "the Petastorm cache is not on S3"
    result = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{run}/result.json")["Body"].read())
    assert result["artifact"] == f"s3://{BUCKET}/{run}/model" and result["epochs_completed"] == 1


def test_the_cache_of_an_s3_run_on_a_local_master_is_under_spark_local_dir_and_removed(trained, spark):
    code, result = trained
    assert code == 0
    local_dir = spark_local_dir(spark)
    expected = f"file://{local_dir}/classeg-cache/{RUN_ID}"
    assert result["cache"] == expected
    assert not Path(expected[len("file://"):]).exists(), "the run's cache folder is gone after training"
    assert Path(local_dir, "classeg-cache").is_dir()


def test_score_takes_the_s3_training_output_folder(trained, spark, s3, tmp_path, moto_endpoint, worker_env, capsys):
    assert trained[0] == 0
    archive = synthetic.write_archive(tmp_path / "archive", seed=5, count=6, image_size=SIZE, broken=False)
    capsys.readouterr()
    code = main(["score", "--archive", str(tmp_path / "archive"), "--classifier", f"s3://{BUCKET}/run",
                 "--output", str(tmp_path / "scores"), "--batch-size", "4", "--set", "spark.master=local[2]",
                 "--set", "score.fetch_threads=2", *_s3_flags(moto_endpoint)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scored"] == summary["ok"] == len(archive["slices"])
    scores = read_scores(spark, str(tmp_path / "scores")).select("status", "classifier_id").toPandas()
    assert len(scores) == len(archive["slices"]) and set(scores.status) == {"ok"}
    model = json.loads(s3.get_object(Bucket=BUCKET, Key=f"run/runs/{RUN_ID}/model/model.json")["Body"].read())
    assert set(scores.classifier_id) == {model["model_id"]}, "scored with the run's model"


@pytest.mark.parametrize("cache_dir, output, local_master, expected", [
    pytest.param(None, "/data/out", True, "file:///data/out/runs/r1/cache", id="local-output"),
    pytest.param(None, "/data/out", False, "file:///data/out/runs/r1/cache", id="local-output-cluster"),
    pytest.param(None, "s3://b/out", True, "file:///spark-local/classeg-cache/r1", id="s3-output-local-master"),
    pytest.param(None, "s3://b/out", False, f"{CLUSTER_CACHE_ROOT}/r1", id="s3-output-cluster"),
    pytest.param("hdfs:///scratch/c", "s3://b/out", False, "hdfs:///scratch/c", id="hdfs-given"),
    pytest.param("file:///mnt/efs/c", "s3://b/out", False, "file:///mnt/efs/c", id="file-given"),
    pytest.param("/mnt/efs/c", "/data/out", True, "file:///mnt/efs/c", id="path-given"),
])
def test_cache_location_rule(cache_dir, output, local_master, expected):
    assert cache_location(cache_dir, output=output, run_id="r1", local_master=local_master,
                          local_dir="/spark-local") == expected


def test_a_relative_cache_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cache_location("scratch", output="s3://b/o", run_id="r", local_master=True,
                          local_dir="/x") == f"file://{tmp_path}/scratch"


def test_a_cache_on_s3_is_refused_with_the_rule():
    with pytest.raises(ConfigError, match=r"train.cache_dir='s3://b/cache'.*cannot be on S3.*hdfs:///tmp/classeg"):
        cache_location("s3://b/cache", output="s3://b/out", run_id="r", local_master=True, local_dir="/x")


KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"  # moto's account


def test_ingest_writes_its_table_to_s3_encrypted(table, s3, moto_endpoint, worker_env, capsys):
    """`classeg ingest --output s3://...` on local Spark: the scan files, the errors table and summary.json go
    through classeg's S3 layer (no Hadoop S3 filesystem), every object with s3.sse aws:kms and the configured key,
    and the scan files hold the rows the local table holds."""
    import pyarrow.parquet as pq

    bucket = "ingest-output"
    s3.create_bucket(Bucket=bucket)
    code = main(["ingest", "--dataset", "lgg", "--input", str(table.parent / "data"), "--output",
                 f"s3://{bucket}/tables/lgg", "--image-size", str(SIZE), "--split", "0.5,0.25,0.25",
                 "--set", "spark.master=local[2]", "--set", f"s3.endpoint_url={moto_endpoint}",
                 "--set", "s3.sse=aws:kms", "--set", f"s3.kms_key_id={KEY_ARN}", "--set", "s3.backoff_seconds=0.01"])
    assert code == 0, capsys.readouterr().err
    keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", ())]
    heads = {key: s3.head_object(Bucket=bucket, Key=key) for key in keys}
    scans = [key for key in keys if key.startswith("tables/lgg/scans/") and key.endswith(".parquet")]
    assert scans and "tables/lgg/summary.json" in keys, keys
    assert not [key for key in keys if "_staging" in key], "the staging files are not left behind"
    assert {(h.get("ServerSideEncryption"), h.get("SSEKMSKeyId")) for h in heads.values()} == {("aws:kms", KEY_ARN)}
    rows = sum(pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())).num_rows
               for key in scans)
    local = sum(pq.read_metadata(path).num_rows for path in (table / "scans").rglob("*.parquet"))
    assert rows == local > 0
