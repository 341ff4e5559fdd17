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


# ---------------------------------------------------------------------------------------------- S3 on loopback
from s3util import aws_test_env, direct_client, start_moto, stop_moto, test_s3_cfg  # noqa: E402


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3-compatible server (moto, server mode) on 127.0.0.1 for the session; dummy AWS credentials,
    no ~/.aws, no instance-metadata lookups and no HTTP proxy while it runs."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in aws_test_env().items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        server, endpoint_url = start_moto()
        try:
            yield endpoint_url
        finally:
            stop_moto(server)


@pytest.fixture(scope="session")
def s3(moto_endpoint):
    """A plain boto3 client on the moto server, for arranging buckets and objects."""
    return direct_client(moto_endpoint)


@pytest.fixture()
def s3_cfg(moto_endpoint):
    """An `s3` config section pointing at the moto server (6 attempts, 10 ms backoff, short timeouts)."""
    return test_s3_cfg(moto_endpoint)


@pytest.fixture(scope="module")
def worker_env(spark, moto_endpoint):
    """Dummy AWS credentials for the Python workers too: Spark passes SparkContext.environment to the workers
    it starts (as spark.executorEnv.* does on a cluster), whatever the environment was when the JVM started."""
    environment = spark.sparkContext.environment
    saved = dict(environment)
    environment.update(aws_test_env())
    yield
    environment.clear()
    environment.update(saved)


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory):
    """A Spark standalone master and one 2-core worker on 127.0.0.1 (tests/cluster.py), stopped at the end."""
    from cluster import start_cluster

    cluster = start_cluster(tmp_path_factory.mktemp("standalone"), cores=2)
    yield cluster
    cluster.stop()
