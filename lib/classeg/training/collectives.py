"""What the per-rank training loop needs from a distributed engine, and nothing else.

`Collectives` is the only place that knows whether ranks talk through Horovod (``hvd``) or
``torch.distributed`` (DDP under torchrun, Spark's TorchDistributor): rank/size/local rank, summing numpy
vectors (metric meter states, BatchNorm statistics), broadcasting and gathering small Python objects, barriers,
and the two engine-specific pieces of an optimisation step (wrapping model and optimizer; stepping, with AMP
and gradient accumulation). `LocalCollectives` is the single-process stand-in used by unit tests and by
single-process evaluation.

Objects are created inside the rank process (``for_engine``), never on the driver: each imports its framework
lazily, so shipping the training function to executors imports nothing heavy on the driver.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import numpy as np

log = logging.getLogger("classeg.training")

ENGINES = ("horovod", "torch")
#: DDP's gradient bucket size (MiB). PyTorch's 25 splits a ResNet18's fp32 gradients (about 45 MiB) into several
#: allreduces; 50 holds them in one after the small first bucket, and a ResNet50's (about 94 MiB) in two, so
#: communication still starts while the backward pass runs. Horovod's counterpart is set by the engine
#: (`classeg.training.engines.HOROVOD_ENV`).
DDP_BUCKET_MB = 50
#: Horovod's background thread negotiates with the other ranks once per cycle (ms), busy or not. On a GPU a short
#: cycle (Horovod's default, 1 ms) starts fused allreduces as soon as the backward pass has produced the
#: gradients, on spare host cores. Training on the CPU that thread takes its core from the rank's compute: 2
#: processes on 2 cores trained faster at 5 ms than at 1 ms, and faster again at 25 ms (a step there takes
#: 0.4 s or more, so waiting up to one cycle for the last gradients costs little; 100 ms was slower). See
#: BENCHMARKS.md, training throughput. A HOROVOD_CYCLE_TIME in the rank's environment wins.
HOROVOD_CYCLE_MS = {"cuda": "1", "cpu": "25"}
#: ``train.grad_compression``: the dtype gradients travel in between ranks. ``fp16`` halves the bytes of every
#: allreduce (Horovod's ``Compression.fp16``, DDP's ``fp16_compress_hook``): each rank casts its gradients to
#: fp16, the sum (DDP: of gradients divided by the world size first) is taken in fp16, and the result is cast
#: back to fp32 before the optimizer step, the same on every rank. Values keep about 3 significant digits, and
#: magnitudes below fp16's smallest normal (6e-5; 6e-8 subnormal) lose precision or become 0. Horovod has no
#: bf16 reduction, so bf16 is not offered. Training on the CPU it slowed Horovod down in every run and DDP over
#: Gloo up in some runs and down in others (BENCHMARKS.md, training throughput): Horovod's ranks warn.
GRAD_COMPRESSION = ("none", "fp16")


class Collectives:
    """Base class: a single process (rank 0 of 1). Subclasses override the communication."""

    name = "local"

    def __init__(self) -> None:
        self.rank = 0
        self.size = 1
        self.local_rank = 0

    # ------------------------------------------------------------------------------------ communication
    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks of a float64 vector (same shape on every rank)."""
        return np.asarray(array, dtype=np.float64).copy()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """Rank ``root``'s (picklable) ``obj`` on every rank."""
        return obj

    def allgather_object(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        return [obj]

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def shutdown(self) -> None:
        """Release the engine (process group); called once at the end of the rank function."""

    # ------------------------------------------------------------------------------------ optimisation
    def wrap(self, model, optimizer, *, accum_steps: int, device, compression: str = "none"):
        """Return (model used for the training forward pass, optimizer used for stepping), with rank 0's
        parameters on every rank. Load optimizer state into the returned optimizer, not the one passed in.
        ``compression``: one of `GRAD_COMPRESSION`, the dtype of the gradient allreduce (one process: none)."""
        _check_compression(compression)
        return model, optimizer

    def broadcast_optimizer_state(self, optimizer) -> None:
        """Make rank 0's (loaded, non-empty) optimizer state every rank's."""

    def no_sync(self, train_model):
        """Context for the micro-batches of an accumulation group that must not synchronise gradients."""
        return contextlib.nullcontext()

    def optimizer_step(self, optimizer, scaler) -> None:
        """One (possibly AMP-scaled) optimizer step after the last micro-batch of an accumulation group."""
        scaler.step(optimizer)
        scaler.update()

    # ------------------------------------------------------------------------------------ helpers
    def average_buffers(self, module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over ranks, in place.

        Each rank updates its BatchNorm statistics from its own batches; parameters stay identical through
        gradient averaging but statistics drift apart. Averaging once per epoch keeps every rank's model (and
        rank 0's checkpoint) the same model."""
        import torch

        buffers = [b for b in module.buffers() if torch.is_floating_point(b)]
        if self.size == 1 or not buffers:
            return
        flat = np.concatenate([b.detach().cpu().double().numpy().ravel() for b in buffers])
        flat = self.allreduce_sum(flat) / self.size
        offset = 0
        with torch.no_grad():
            for b in buffers:
                n = b.numel()
                b.copy_(torch.from_numpy(flat[offset:offset + n]).reshape(b.shape).to(b.dtype))
                offset += n


LocalCollectives = Collectives


class HorovodCollectives(Collectives):
    """Horovod (Gloo or MPI, NCCL on GPUs): ``hvd.init()`` at construction."""

    name = "horovod"

    def __init__(self) -> None:
        import horovod.torch as hvd
        import torch

        os.environ.setdefault("HOROVOD_CYCLE_TIME", HOROVOD_CYCLE_MS["cuda" if torch.cuda.is_available() else "cpu"])
        hvd.init()
        self.hvd = hvd
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()
        self._calls = 0

    def _name(self, what: str) -> str:
        # Horovod matches collective calls across ranks by name; every rank makes the same calls in order.
        self._calls += 1
        return f"classeg.{what}.{self._calls}"

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
        return self.hvd.allreduce(tensor, op=self.hvd.Sum, name=self._name("allreduce")).numpy()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=root, name=self._name("broadcast"))

    def allgather_object(self, obj: Any) -> list:
        return self.hvd.allgather_object(obj, name=self._name("allgather"))

    def barrier(self) -> None:
        self.hvd.barrier()

    def shutdown(self) -> None:
        self.hvd.shutdown()

    def wrap(self, model, optimizer, *, accum_steps: int, device, compression: str = "none"):
        _check_compression(compression)
        if compression == "fp16" and device.type == "cpu" and self.rank == 0:
            log.warning("train.grad_compression=fp16 with Horovod on the CPU: its fp16 allreduce was measured "
                        "slower than fp32 there (BENCHMARKS.md, training throughput)")
        hvd = self.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)  # distributed: rank 0's weights everywhere
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        # A new optimizer object over the same parameter groups (any state of `optimizer` is not carried over).
        return model, hvd.DistributedOptimizer(
            optimizer, named_parameters=trainable, backward_passes_per_step=accum_steps, op=hvd.Average,
            compression=hvd.Compression.fp16 if compression == "fp16" else hvd.Compression.none)

    def broadcast_optimizer_state(self, optimizer) -> None:
        # Only with state: on an empty optimizer Horovod would run a zero-gradient step to create the state,
        # moving the weights through weight decay. A fresh optimizer is identical on every rank anyway.
        if optimizer.state_dict()["state"]:
            self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def optimizer_step(self, optimizer, scaler) -> None:
        if scaler.is_enabled():
            optimizer.synchronize()  # distributed: allreduce before unscaling, then step without a second one
            scaler.unscale_(optimizer)
            with optimizer.skip_synchronize():
                scaler.step(optimizer)
        else:
            optimizer.step()
        scaler.update()


class TorchCollectives(Collectives):
    """``torch.distributed`` under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the
    environment): Gloo on CPU, NCCL on CUDA; the model is wrapped in DistributedDataParallel."""

    name = "torch"

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        self.dist = dist
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        # Object collectives pickle through tensors of the backend's device.
        self._device = torch.device("cuda", self.local_rank) if backend == "nccl" else torch.device("cpu")

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(self._device)
        self.dist.all_reduce(tensor, op=self.dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        holder = [obj if self.rank == root else None]
        self.dist.broadcast_object_list(holder, src=root, device=self._device)
        return holder[0]

    def allgather_object(self, obj: Any) -> list:
        out: list = [None] * self.size
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self.dist.barrier()

    def shutdown(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()

    def wrap(self, model, optimizer, *, accum_steps: int, device, compression: str = "none"):
        from torch.nn.parallel import DistributedDataParallel

        _check_compression(compression)
        # distributed: DDP broadcasts rank 0's parameters and buffers at construction and averages gradients,
        # in buckets of DDP_BUCKET_MB; the gradients live in the buckets (no copy in and out of them).
        ids = [device.index] if device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=DDP_BUCKET_MB,
                                          gradient_as_bucket_view=True)
        if compression == "fp16":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            wrapped.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return wrapped, optimizer

    def no_sync(self, train_model):
        return train_model.no_sync()


def _check_compression(compression: str) -> None:
    if compression not in GRAD_COMPRESSION:
        raise ValueError(f"train.grad_compression must be one of {GRAD_COMPRESSION}, got {compression!r}")


def for_engine(engine: str) -> Collectives:
    """Initialise the engine's communication inside a rank process."""
    if engine == "horovod":
        return HorovodCollectives()
    if engine == "torch":
        return TorchCollectives()
    if engine == "local":
        return LocalCollectives()
    raise ValueError(f"engine must be one of {ENGINES + ('local',)}, got {engine!r}")
