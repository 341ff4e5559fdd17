"""Launching the per-rank function on Spark: Horovod-on-Spark or Spark's TorchDistributor. Driver only.

- ``horovod``: ``horovod.spark.run(train_rank, args=(plan, "horovod"), num_proc=N, env=...)`` starts N Spark
  tasks, each launching one training process (Gloo, or MPI where Horovod was built with it); it returns every
  rank's value in rank order and rank 0's is the result.
- ``torch``: ``TorchDistributor(num_processes=N, local_mode=..., use_gpu=...).run(train_rank, plan, "torch")``
  runs torchrun: ``local_mode=True`` on the driver (one torchrun, N processes; what a single machine wants),
  ``local_mode=False`` as N Spark barrier tasks with one process each (a cluster; needs N free task slots and
  dynamic allocation off). ``train.torch_mode`` picks: ``auto`` (local for a ``local[...]`` master, barrier
  otherwise), ``local`` or ``barrier``. TorchDistributor returns one process's value; in local mode every
  process writes the same output file, so the value may be a non-zero rank's None: the driver then reads the
  ``result.json`` rank 0 wrote.

Before starting, :func:`check_slots` fails at once when the cluster cannot run ``num_proc`` tasks together
(both engines would otherwise wait for slots that never come: Horovod until its start timeout, barrier mode
through Spark's retried slot check) or when barrier mode meets dynamic allocation. Neither engine passes a
process's exception back to the driver (Horovod says which process exited, TorchDistributor that training
failed), so each process records its failure in the run folder and :func:`launch` raises
``JobFailed("training failed on rank R: <cause>")``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid

from classeg.errors import ConfigError, JobFailed, root_cause
from classeg.io.files import list_files, read_bytes, read_text, write_text
from classeg.io.uri import join
from classeg.training.plan import TrainPlan

log = logging.getLogger(__name__)

TORCH_MODES = ("auto", "local", "barrier")
#: Horovod's tensor fusion for the ranks: one fusion buffer holds a whole ResNet50 fp32 gradient (about 94 MiB).
#: DDP's bucket size is `classeg.training.collectives.DDP_BUCKET_MB`; the cycle time is chosen in each rank
#: (`classeg.training.collectives.HOROVOD_CYCLE_MS`), where it is known whether the rank has a GPU.
HOROVOD_ENV = {"HOROVOD_FUSION_THRESHOLD": str(128 * 1024 * 1024)}

HOROVOD_HINT = ("install it with `make setup` (builds Horovod 0.28.1 from the sdist with PyTorch and Gloo: "
                "tools/build_horovod.sh, then `pip install --no-deps .cache/wheels/horovod-0.28.1-*.whl`; "
                "do not use the horovod[spark] extra, it pins pyarrow<11), or train with --engine torch")


def check_engine(engine: str) -> None:
    """Raise ValueError (naming what is missing and how to install it) if ``engine`` cannot run here."""
    if engine == "horovod":
        try:
            import horovod.spark  # noqa: F401  (needs pyspark, cloudpickle, psutil at run time)
            import horovod.torch as hvd
            import cloudpickle  # noqa: F401
            import psutil  # noqa: F401
        except ImportError as err:
            raise ValueError(f"engine 'horovod' is not usable: {err}; {HOROVOD_HINT}") from err
        if not (hvd.gloo_built() or hvd.mpi_built()):
            raise ValueError(f"engine 'horovod': this Horovod build has neither Gloo nor MPI; {HOROVOD_HINT}")
        return
    if engine == "torch":
        try:
            import torch.distributed as dist
            from pyspark.ml.torch.distributor import TorchDistributor  # noqa: F401
        except ImportError as err:
            raise ValueError(f"engine 'torch' is not usable: {err}; it needs pyspark >= 3.4 and torch") from err
        if not dist.is_available():
            raise ValueError("engine 'torch': this torch build has no torch.distributed support")
        return
    raise ValueError(f"engine must be one of ('horovod', 'torch'), got {engine!r}")


def torch_local_mode(spark, mode: str) -> bool:
    if mode not in TORCH_MODES:
        raise ValueError(f"train.torch_mode must be one of {TORCH_MODES}, got {mode!r}")
    if mode == "auto":
        return spark.sparkContext.master.startswith("local")
    return mode == "local"


def torch_use_gpu(conf_get, *, local: bool, cuda_available: bool) -> bool:
    """TorchDistributor's ``use_gpu``: in local mode the ranks run on the driver, so whether it has CUDA; in
    barrier mode they run in executor tasks, so whether each task is given GPUs (``spark.task.resource.gpu.amount``
    above 0, as the EMR steps set it): an EMR driver on a CPU-only master node must still ask for them."""
    if local:
        return cuda_available
    try:
        return float(conf_get("spark.task.resource.gpu.amount", "0") or 0) > 0
    except ValueError:
        return False


def task_slots(spark) -> tuple[int, str]:
    """How many tasks the cluster can run at once, counted as Spark's barrier check counts them (each
    executor's cores // ``spark.task.cpus``, GPUs and other task resources included), and where they come from
    in words: ``"local[2]: 2 cores, spark.task.cpus=1"``, ``"2 executors, 4 cores in all, spark.task.cpus=1"``."""
    from py4j.protocol import Py4JError

    context = spark.sparkContext
    task_cpus = int(context.getConf().get("spark.task.cpus", "1"))
    jvm_context = context._jsc.sc()
    try:
        slots = int(jvm_context.maxNumConcurrentTasks(jvm_context.resourceProfileManager()
                                                      .defaultResourceProfile()))
    except Py4JError:  # an internal Spark API: where it is missing, the scheduler's own parallelism
        slots = context.defaultParallelism // task_cpus
    backend = jvm_context.schedulerBackend()
    try:
        if context.master.startswith("local"):
            where = f"{context.master}: {int(backend.totalCores())} cores"
        else:
            executors = int(jvm_context.getExecutorIds().size())
            where = f"{executors} executor{'' if executors == 1 else 's'}, {int(backend.totalCoreCount())} cores in all"
    except (Py4JError, TypeError, ValueError):  # another scheduler backend: its cores are not known here
        where = f"master {context.master}"
    return slots, f"{where}, spark.task.cpus={task_cpus}"


def _registration_deadline(spark) -> float:
    """Until when (``time.time()``) executors may still be registering: Spark's own wait for them
    (``spark.scheduler.maxRegisteredResourcesWaitingTime``) counted from the application's start. A local
    master's slots are there from the start."""
    context = spark.sparkContext
    if context.master.startswith("local"):
        return 0.0
    wait_s = context._jsc.sc().conf().getTimeAsSeconds("spark.scheduler.maxRegisteredResourcesWaitingTime", "30s")
    return context.startTime / 1000 + float(wait_s)


def check_slots(spark, *, engine: str, num_proc: int, torch_mode: str = "auto") -> None:
    """Raise ConfigError at once if ``num_proc`` training processes of ``engine`` cannot run here: barrier mode
    (``--engine torch`` on a cluster) under ``spark.dynamicAllocation.enabled``, or fewer task slots than
    processes (both engines run one Spark task per process, all at the same time). Torch's local mode runs its
    processes on the driver and needs no slots. On a cluster that has just started, waits for executors as
    long as Spark itself would (``spark.scheduler.maxRegisteredResourcesWaitingTime`` from the application's
    start). Driver only."""
    if engine not in ("horovod", "torch") or (engine == "torch" and torch_local_mode(spark, torch_mode)):
        return
    context = spark.sparkContext
    conf = context.getConf()
    # Spark ignores dynamic allocation on a local master.
    dynamic = (not context.master.startswith("local")
               and conf.get("spark.dynamicAllocation.enabled", "false").strip().lower() == "true")
    if engine == "torch" and dynamic:
        raise ConfigError("--engine torch on a cluster runs Spark barrier tasks, which Spark refuses while "
                          "spark.dynamicAllocation.enabled=true: set spark.dynamicAllocation.enabled=false "
                          "(spark-submit --conf spark.dynamicAllocation.enabled=false; EMR turns it on by "
                          "default), or train with --engine horovod")
    slots, where = task_slots(spark)
    deadline = _registration_deadline(spark)
    while slots < num_proc and time.time() < deadline:
        time.sleep(1.0)
        slots, where = task_slots(spark)
    if slots >= num_proc:
        return
    if dynamic:
        log.info("train.num_proc=%d: %d task slots now (%s); dynamic allocation adds executors on demand",
                 num_proc, slots, where)
        return
    more = ("use a larger local[N] master (--set spark.master=local[N])" if context.master.startswith("local")
            else "give the cluster more executors or cores (spark.executor.instances, spark.executor.cores)")
    lower = f"lower --num-proc to {slots}" if slots else "lower --num-proc"
    raise ConfigError(f"train.num_proc={num_proc} needs {num_proc} task slots at once, the cluster has {slots} "
                      f"({where}): {lower}, or {more}")


def train_process(plan: TrainPlan, engine: str, failures: str) -> dict | None:
    """What every training process runs: `classeg.training.loop.train_rank`, recording its failure as
    ``<failures>/rank-<R>-<pid>.json`` (rank, time, :func:`classeg.errors.root_cause`) before re-raising it."""
    from classeg.spark import quiet_third_party_logs
    from classeg.training.loop import train_rank

    quiet_third_party_logs()  # the ranks' output reaches the driver's log
    try:
        return train_rank(plan, engine)
    except BaseException as err:
        rank = os.environ.get("RANK") or os.environ.get("HOROVOD_RANK") or "unknown"
        record = {"rank": rank, "time": time.time(), "error": root_cause(err)}
        try:
            write_text(join(failures, f"rank-{rank}-{os.getpid()}.json"), json.dumps(record), s3_cfg=plan.s3)
        except Exception as failed:  # the process's own failure must still reach its engine unchanged
            log.warning("could not record rank %s's failure under %s: %s", rank, failures, failed)
        raise


def first_failure(failures: str, *, s3_cfg=None) -> dict | None:
    """The earliest failure a training process recorded under ``failures`` (see :func:`train_process`)."""
    records = []
    for location in list_files(failures, suffix=".json", s3_cfg=s3_cfg):
        try:
            records.append(json.loads(read_text(location, s3_cfg=s3_cfg)))
        except (OSError, ValueError) as err:  # a record cut short by the process's death: the others remain
            log.debug("unreadable failure record %s: %s", location.uri, err)
    return min(records, key=lambda record: record.get("time", 0.0), default=None)


def launch(spark, plan: TrainPlan, *, engine: str, num_proc: int, threads: int, torch_mode: str = "auto") -> dict:
    """Run `classeg.training.loop.train_rank` on ``num_proc`` processes; return rank 0's result dict.
    ConfigError at once when the cluster cannot run them (:func:`check_slots`); JobFailed naming the first
    failed process and its cause when training fails there."""
    check_slots(spark, engine=engine, num_proc=num_proc, torch_mode=torch_mode)
    failures = join(plan.run_uri, "failures", f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
    try:
        result = _run_engine(spark, plan, failures, engine=engine, num_proc=num_proc, threads=threads,
                             torch_mode=torch_mode)
    except Exception as err:
        failure = first_failure(failures, s3_cfg=plan.s3)
        if failure is None:
            raise
        raise JobFailed(f"training failed on rank {failure.get('rank')}: {failure.get('error')}") from err
    if not isinstance(result, dict):
        result = json.loads(read_bytes(join(plan.run_uri, "result.json"), s3_cfg=plan.s3))
    return result


def _run_engine(spark, plan: TrainPlan, failures: str, *, engine: str, num_proc: int, threads: int,
                torch_mode: str):
    if engine == "horovod":
        import horovod.spark

        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
               **HOROVOD_ENV}
        # Tuning on a cluster: the driver's own HOROVOD_FUSION_THRESHOLD and HOROVOD_CYCLE_TIME win.
        env.update({name: os.environ[name] for name in (*HOROVOD_ENV, "HOROVOD_CYCLE_TIME") if name in os.environ})
        # The ranks' output (rank 0's epoch progress and test metrics, any rank's warnings) is forwarded to the
        # driver's stderr, prefixed [rank]<stream>, as TorchDistributor does; stdout stays the job's result.
        results = horovod.spark.run(train_process, args=(plan, "horovod", failures), num_proc=num_proc, env=env,
                                    stdout=sys.stderr, stderr=sys.stderr,
                                    verbose=1 if log.isEnabledFor(logging.DEBUG) else 0)
        return results[0] if results else None
    if engine == "torch":
        import torch
        from pyspark.ml.torch.distributor import TorchDistributor

        local = torch_local_mode(spark, torch_mode)
        use_gpu = torch_use_gpu(spark.sparkContext.getConf().get, local=local,
                                cuda_available=torch.cuda.is_available())
        log.info("TorchDistributor: %d processes, %s mode, %s", num_proc, "local" if local else "barrier",
                 "GPUs" if use_gpu else "CPUs")
        distributor = TorchDistributor(num_processes=num_proc, local_mode=local, use_gpu=use_gpu)
        return distributor.run(train_process, plan, "torch", failures)
    raise ValueError(f"engine must be one of ('horovod', 'torch'), got {engine!r}")
