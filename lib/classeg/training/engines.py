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
"""
from __future__ import annotations

import json
import logging

from classeg.io.files import read_bytes
from classeg.io.uri import join
from classeg.training.plan import TrainPlan

log = logging.getLogger(__name__)

TORCH_MODES = ("auto", "local", "barrier")

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


def launch(spark, plan: TrainPlan, *, engine: str, num_proc: int, threads: int, torch_mode: str = "auto") -> dict:
    """Run `classeg.training.loop.train_rank` on ``num_proc`` processes; return rank 0's result dict."""
    from classeg.training.loop import train_rank

    if engine == "horovod":
        import horovod.spark

        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        results = horovod.spark.run(train_rank, args=(plan, "horovod"), num_proc=num_proc, env=env,
                                    verbose=1 if log.isEnabledFor(logging.DEBUG) else 0)
        result = results[0] if results else None
    elif engine == "torch":
        import torch
        from pyspark.ml.torch.distributor import TorchDistributor

        local = torch_local_mode(spark, torch_mode)
        log.info("TorchDistributor: %d processes, %s mode", num_proc, "local" if local else "barrier")
        distributor = TorchDistributor(num_processes=num_proc, local_mode=local, use_gpu=torch.cuda.is_available())
        result = distributor.run(train_rank, plan, "torch")
    else:
        raise ValueError(f"engine must be one of ('horovod', 'torch'), got {engine!r}")
    if not isinstance(result, dict):
        result = json.loads(read_bytes(join(plan.run_uri, "result.json"), s3_cfg=plan.s3))
    return result
