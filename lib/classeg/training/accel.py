"""How one rank uses its device: mixed precision, memory format, cuDNN autotuning and optional compilation.

On CUDA: bf16 autocast where the GPU supports it (Ampere and newer; bf16 has fp32's exponent range, so no
loss scaling), fp16 autocast with a `torch.amp.GradScaler` otherwise; channels_last tensors (Tensor Cores
want NHWC); ``torch.backends.cudnn.benchmark`` (every batch of a run has the same shape, bar an epoch's last,
so autotuning pays once); ``torch.compile`` of the training forward when ``train.compile`` asks for it; and
`copied_ahead`, the training batches' copy to the device on a side stream, one batch ahead of the step.
On CPU each of these is off: fp32, contiguous tensors, no compilation (a CPU run is the reference the
resume and equality tests check bit for bit).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSettings:
    """What `settings_for` chose for a device: ``amp_dtype`` (a torch dtype, or None for fp32),
    ``grad_scaler`` (fp16 only), ``channels_last``, ``cudnn_benchmark``, ``compile``."""

    amp_dtype: Any
    grad_scaler: bool
    channels_last: bool
    cudnn_benchmark: bool
    compile: bool

    @property
    def use_amp(self) -> bool:
        return self.amp_dtype is not None

    def describe(self) -> str:
        """One line for the training log."""
        dtype = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype is not None else "fp32"
        return (f"{dtype}{' + GradScaler' if self.grad_scaler else ''}, "
                f"{'channels_last' if self.channels_last else 'contiguous'}, "
                f"cudnn.benchmark {'on' if self.cudnn_benchmark else 'off'}, "
                f"compile {'on' if self.compile else 'off'}")


def settings_for(device, *, compile_model: bool = False) -> DeviceSettings:
    """The settings for ``device`` (a torch.device); ``compile_model`` is ``train.compile`` (CUDA only)."""
    import torch

    if device.type != "cuda":
        if compile_model:
            log.info("train.compile applies to CUDA devices only; training on %s uncompiled", device)
        return DeviceSettings(amp_dtype=None, grad_scaler=False, channels_last=False, cudnn_benchmark=False,
                              compile=False)
    bf16 = torch.cuda.is_bf16_supported()
    return DeviceSettings(amp_dtype=torch.bfloat16 if bf16 else torch.float16, grad_scaler=not bf16,
                          channels_last=True, cudnn_benchmark=True, compile=bool(compile_model))


def apply(settings: DeviceSettings, model) -> None:
    """Set the process-wide flags and the model's memory format (before the engine wraps it)."""
    import torch

    if settings.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)


def grad_scaler(settings: DeviceSettings):
    """A GradScaler, enabled only for fp16 autocast."""
    import torch

    return torch.amp.GradScaler("cuda", enabled=settings.grad_scaler)


def compiled(settings: DeviceSettings, train_model):
    """``train_model`` (after the engine's wrapping, as PyTorch advises for DDP) compiled when asked."""
    if not settings.compile:
        return train_model
    import torch

    return torch.compile(train_model)


def copied_ahead(batches, device):
    """``batches`` (host batches from the cache loader) with their tensors already on ``device``, each copied
    one batch ahead on a side CUDA stream: the copy engine moves batch k+1 while batch k trains, instead of
    the copy waiting in line on the training stream. On the CPU, ``batches`` as they are. ``scan_key`` stays
    on the host (the augmentation is drawn from it there). Closing this closes ``batches``."""
    if device.type != "cuda":
        try:
            yield from batches
        finally:
            batches.close()
        return
    import torch

    stream = torch.cuda.Stream(device)

    def issue(batch: dict):
        with torch.cuda.stream(stream):
            moved = {name: value if name == "scan_key" else value.to(device, non_blocking=True)
                     for name, value in batch.items()}
            done = torch.cuda.Event()
            done.record(stream)
        return moved, done

    def ready(moved: dict, done) -> dict:
        current = torch.cuda.current_stream(device)
        current.wait_event(done)
        for name, value in moved.items():
            if name != "scan_key":
                value.record_stream(current)  # allocated on the side stream, used on this one
        return moved

    ahead = None
    try:
        for batch in batches:
            issued = issue(batch)
            if ahead is not None:
                yield ready(*ahead)
            ahead = issued
        if ahead is not None:
            yield ready(*ahead)
    finally:
        batches.close()
