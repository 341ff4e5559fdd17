"""The one SparkSession factory.

Locally it builds ``local[*]`` (or ``spark.master`` from config); under ``spark-submit`` (EMR, YARN) the master
and resources chosen there win, and only settings the job needs are added. Never called at import time and
never on an executor. The command-line entry points run inside :func:`stopping_started_session`, which stops
the session a command started when it ends; library functions leave the caller's session alone.

:func:`check_shared_folder` is what a job calls before heavy work when it is about to have executors write or
read a local folder (ingest's output and staging, training's output and Petastorm cache): on a cluster whose
executors may run on other hosts, a local path names a different disk on each node.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Iterator

from classeg.config import Config
from classeg.errors import ConfigError
from classeg.io.s3 import S3Settings, spark_s3_conf
from classeg.io.uri import parse_uri

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


# ---------------------------------------------------------------------------------------------- shared folders
#: What to use instead of a folder the executors do not share with the driver.
SHARED_STORAGE_HINT = ("an s3:// URI, an hdfs:// URI (EMR has HDFS), or a folder every node mounts at one path "
                       "(NFS, EFS)")
#: The name of the file the driver writes for the executors to look for (a leading dot: listings skip it).
TOKEN_PREFIX = ".classeg-shared-"


def is_local_master(spark) -> bool:
    """Whether the executors are threads of this driver process (``local``, ``local[N]``, ``local[*]``)."""
    return spark.sparkContext.master.startswith("local")


def probe_executors(spark, token: str, *, tasks: int | None = None) -> list[tuple[str, str, bool]]:
    """A small Spark job of ``tasks`` tasks (default: one per task slot, ``defaultParallelism``), each
    answering ``(host, executor working directory, whether the file token exists there)``. Each task holds its
    slot for a moment so that the tasks spread over every executor instead of queueing on the first."""
    context = spark.sparkContext
    tasks = max(1, tasks or context.defaultParallelism)

    def answer(_):
        import os as os_
        import socket as socket_
        import time as time_

        time_.sleep(0.5)  # hold the slot: the next task goes to another executor
        yield socket_.gethostname(), os_.getcwd(), os_.path.exists(token)

    with job_stage(spark, "shared-storage", f"check that every executor sees {os.path.dirname(token)}"):
        return context.parallelize(range(tasks), tasks).mapPartitions(answer).collect()


def unshared(answers: list[tuple[str, str, bool]]) -> list[str]:
    """The executors (``host:working directory``) among `probe_executors`' answers that did not see the file."""
    return sorted({f"{host}:{cwd}" for host, cwd, seen in answers if not seen})


def check_shared_folder(spark, location: str, *, what: str, instead: str = "") -> None:
    """Raise ConfigError at once unless every executor sees the local folder ``location`` as the driver does.

    Applies on a cluster (a master that is not ``local[...]``) to a plain local path or ``file://`` URI; an
    ``s3://``, ``hdfs://`` or other Hadoop URI names the same storage everywhere and is not checked. The
    driver creates the folder, writes a token file in it, and :func:`probe_executors` runs one task per task
    slot that looks for it. Executors that register later than the check are not covered. The message names
    ``what`` (``"ingest.output"``), the folder, the executors that did not see it and what to use instead
    (:data:`SHARED_STORAGE_HINT`, then ``instead``). A folder the check created is removed when it fails."""
    ensure_driver("check_shared_folder")
    try:
        parsed = parse_uri(location)
    except ValueError:  # hdfs:// and other Hadoop filesystems: shared storage by construction
        return
    if parsed.is_s3 or is_local_master(spark):
        return
    folder = parsed.path
    created = not os.path.exists(folder)
    os.makedirs(folder, exist_ok=True)
    token = os.path.join(folder, f"{TOKEN_PREFIX}{uuid.uuid4().hex}")
    with open(token, "w") as handle:
        handle.write(f"written by the classeg driver on {socket.gethostname()} at {time.time():.0f}\n")
    try:
        missing = unshared(probe_executors(spark, token))
    finally:
        os.remove(token)
    if not missing:
        log.info("%s %s: every executor sees it", what, folder)
        return
    if created and not os.listdir(folder):
        os.rmdir(folder)
    log.warning("%s %s: the driver's token is missing for the executors at %s", what, folder, ", ".join(missing))
    hosts = sorted({where.split(":", 1)[0] for where in missing})
    raise ConfigError(
        f"{what} {folder!r} is a local folder the executors do not share with the driver (the driver's test "
        f"file is missing on {', '.join(hosts[:3])}{' and others' if len(hosts) > 3 else ''}): use "
        f"{SHARED_STORAGE_HINT}{'; ' + instead if instead else ''}")
