"""What the Spark UI and the driver log show of a classeg job: each step's Spark jobs in a job group named for
it (`classeg-ingest-decode`, `classeg-train-classify-val`, ...), the caller's job group restored afterwards, and
py4j's connection chatter kept out of the log."""
from __future__ import annotations

import logging

from classeg import synthetic
from classeg.config import load_config
from classeg.ingest.job import run_ingest
from classeg.spark import job_stage, quiet_third_party_logs


def test_ingest_steps_run_in_named_job_groups(spark, tmp_path):
    context = spark.sparkContext
    synthetic.write_folders(tmp_path / "data", seed=4, images_per_class=3, classes=["glioma", "notumor"])
    context.setJobGroup("the-callers-group", "a notebook cell")
    try:
        run_ingest(spark, load_config(overrides=["ingest.dataset=folders", f"ingest.input={tmp_path / 'data'}",
                                                 f"ingest.output={tmp_path / 'table'}", "ingest.image_size=32"]))
        assert context.getLocalProperty("spark.jobGroup.id") == "the-callers-group"
        assert context.getLocalProperty("spark.job.description") == "a notebook cell"
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
        context.setLocalProperty("spark.job.description", None)
    tracker = context.statusTracker()
    for group in ("classeg-ingest-decode", "classeg-ingest-write"):
        assert tracker.getJobIdsForGroup(group), f"no Spark job ran in {group}"


def test_job_stage_names_the_group_and_restores_none(spark):
    context = spark.sparkContext
    with job_stage(spark, "unit-check", "classeg test: count"):
        assert context.getLocalProperty("spark.job.description") == "classeg test: count"
        spark.range(10).count()
    assert context.getLocalProperty("spark.jobGroup.id") is None
    assert context.statusTracker().getJobIdsForGroup("classeg-unit-check")


def test_py4j_chatter_is_filtered_below_warning():
    quiet_third_party_logs()
    root = logging.getLogger()
    chatter = logging.LogRecord("root", logging.INFO, "/x/py4j-0.10.9.7-src.zip/py4j/java_gateway.py", 1038,
                                "Exception while sending command.", None, None)
    ours = logging.LogRecord("classeg.training", logging.INFO, "/x/classeg/training/job.py", 1, "epoch 1", None, None)
    serious = logging.LogRecord("root", logging.ERROR, "/x/py4j/java_gateway.py", 1, "gateway died", None, None)
    assert not root.filter(chatter) and root.filter(ours) and root.filter(serious)
