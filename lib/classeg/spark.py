"""The one SparkSession factory.

Locally it builds ``local[*]`` (or ``spark.master`` from config); under ``spark-submit`` (EMR, YARN) the master
and resources chosen there win, and only settings the job needs are added. Never called at import time and
never on an executor. The command-line entry points run inside :func:`stopping_started_session`, which stops
the session a command started when it ends; library functions leave the caller's session alone.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

from classeg.config import Config
from classeg.io.s3 import S3Settings, spark_s3_conf

log = logging.getLogger(__name__)


def ensure_driver(what: str) -> None:
    """Raise RuntimeError if called inside a Spark task: ``what`` must run on the driver only."""
    from pyspark import TaskContext

    if TaskContext.get() is not None:
        raise RuntimeError(f"{what} must run on the Spark driver, not inside a task")


JOB_GROUP_PREFIX = "classeg"


@contextlib.contextmanager
def job_stage(spark, group: str, description: str) -> Iterator[None]:
    """Every Spark job started inside the block belongs to job group ``classeg-<group>`` with
    ``description`` (``ingest lgg: decode``), so the Spark UI and the history server say which step of
    which job is running. The thread's previous group and description are restored afterwards."""
    context = spark.sparkContext
    keys = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")
    previous = {key: context.getLocalProperty(key) for key in keys}
    context.setJobGroup(f"{JOB_GROUP_PREFIX}-{group}", description)
    try:
        yield
    finally:
        for key, value in previous.items():
            context.setLocalProperty(key, value)


class _Py4jChatter(logging.Filter):
    """py4j also logs on the root logger ("Exception while sending command." with a traceback, at INFO, when a
    callback connection is reset at shutdown): below WARNING, records from py4j's own files are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "py4j" not in record.pathname


def quiet_third_party_logs(*, debug: bool = False) -> None:
    """The driver log says what classeg does: py4j's connection chatter (INFO lines with tracebacks each time
    a Python callback connection closes, on its own and on the root logger) only at DEBUG, and Petastorm's FutureWarnings about pyarrow APIs it
    still uses (nothing a user can act on) not at all."""
    if not debug:
        logging.getLogger("py4j").setLevel(logging.WARNING)
        root = logging.getLogger()
        if not any(isinstance(f, _Py4jChatter) for f in root.filters):
            root.addFilter(_Py4jChatter())
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?$")


def _submitted() -> bool:
    # spark-submit sets spark.master in the JVM conf it launches the driver with.
    return "SPARK_SUBMIT" in os.environ or os.environ.get("PYSPARK_GATEWAY_PORT") is not None


def session_settings(cfg: Config) -> dict[str, str]:
    """The Spark settings :func:`get_spark` adds to a new session: Arrow, worker reuse, shuffle partitions,
    Parquet codec, console progress, the S3 encryption of ``cfg.s3`` for Spark's own writes, then
    ``spark.extra`` verbatim (it wins)."""
    spark_cfg = cfg.spark
    settings = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(spark_cfg.arrow_batch_size),
        "spark.python.worker.reuse": str(bool(spark_cfg.python_worker_reuse)).lower(),
        "spark.sql.shuffle.partitions": str(spark_cfg.shuffle_partitions),
        "spark.sql.parquet.compression.codec": "snappy",
        # Cached frames here are mostly PNG bytes: compressing them again costs CPU and saves nothing.
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
        # Progress bars only on a terminal: in spark-submit logs and notebooks they are noise.
        "spark.ui.showConsoleProgress": str(sys.stderr.isatty() and not os.environ.get("CI")).lower(),
        # A failed write must not leave a table that looks complete: Spark's committer writes _SUCCESS last.
        "spark.sql.sources.partitionOverwriteMode": "static",
    }
    # Spark's own S3 writes encrypted as classeg's are (s3.sse, s3.kms_key_id); spark.extra still wins.
    settings.update(spark_s3_conf(S3Settings.of(cfg)))
    settings.update({str(k): str(v) for k, v in (spark_cfg.extra or {}).items()})
    return settings


def get_spark(cfg: Config, *, app_name: str | None = None):
    """Return the active SparkSession, creating it from ``cfg.spark`` if there is none.

    Settings: Arrow enabled with ``spark.arrow_batch_size`` records per batch, Python worker reuse,
    shuffle partitions, the UI off locally unless ``spark.ui``, the local driver's JVM options
    (``spark.local_java_options``), and ``spark.extra`` passed through verbatim (it wins).
    Python workers use this interpreter unless ``PYSPARK_PYTHON`` says otherwise.
    """
    ensure_driver("get_spark")
    from pyspark.sql import SparkSession

    spark_cfg = cfg.spark
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name or spark_cfg.app_name)
    if not _submitted():
        builder = builder.master(spark_cfg.master)
        builder = builder.config("spark.ui.enabled", str(bool(spark_cfg.ui)).lower())
        builder = builder.config("spark.driver.memory", os.environ.get("CLASSEG_DRIVER_MEMORY", "4g"))
        if spark_cfg.local_java_options:  # C1-only JIT by default: see conf/local.yaml
            builder = builder.config("spark.driver.extraJavaOptions", spark_cfg.local_java_options)
    for key, value in session_settings(cfg).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("CLASSEG_SPARK_LOG_LEVEL", "WARN"))
    log.info("Spark %s, master %s, default parallelism %d", spark.version, spark.sparkContext.master,
             spark.sparkContext.defaultParallelism)
    return spark


def _running_spark():
    """The SparkSession (else the bare SparkContext) running in this process, or None. Imports pyspark only if
    something already has: no session can exist otherwise."""
    if "pyspark" not in sys.modules:
        return None
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession() or SparkContext._active_spark_context


@contextlib.contextmanager
def stopping_started_session() -> Iterator[None]:
    """Stop the SparkSession started inside the block when the block ends, on success or error: a finished
    ``spark-submit`` must exit and give back the cluster's cores. A session or SparkContext that was already
    running when the block began (a notebook's or an EMR kernel's ``spark``, a test's fixture) belongs to its
    caller and keeps running."""
    started_before = _running_spark() is not None
    try:
        yield
    finally:
        running = None if started_before else _running_spark()
        if running is not None:
            log.debug("stopping the SparkSession this command started")
            try:
                running.stop()
            except Exception as err:  # a JVM that already died cannot stop; the command's own outcome stands
                log.warning("could not stop the SparkSession: %s", err)
