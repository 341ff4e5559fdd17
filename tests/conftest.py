"""Shared fixtures: one session-scoped local SparkSession (local[2], UI off, temp dirs, stopped at the end)."""
from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# Torch in every Python worker would otherwise take all cores each; the machine has two.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from classeg.config import load_config
    from classeg.spark import get_spark

    local_dir = tmp_path_factory.mktemp("spark-local")
    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    cfg = load_config(overrides=[
        "spark.master=local[2]", "spark.shuffle_partitions=4",
        f"spark.extra={{spark.local.dir: '{local_dir}', spark.sql.warehouse.dir: '{warehouse}', "
        f"spark.driver.memory: 3g, spark.sql.adaptive.enabled: 'true'}}"])
    session = get_spark(cfg, app_name="classeg-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def base_config():
    from classeg.config import load_config

    return load_config(overrides=["spark.master=local[2]", "spark.shuffle_partitions=4"])
