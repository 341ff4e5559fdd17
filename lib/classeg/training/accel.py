"""How one rank uses its device: mixed precision, memory format, cuDNN autotuning and optional compilation.

On CUDA: bf16 autocast where the GPU supports it (Ampere and newer; bf16 has fp32's exponent range, so no
loss scaling), fp16 autocast with a `torch.amp.GradScaler` otherwise; channels_last tensors (Tensor Cores
want NHWC); ``torch.backends.cudnn.benchmark`` (every batch of a run has the same shape, bar an epoch's last,
so autotuning pays once); ``torch.compile`` of the training forward when ``train.compile`` asks for it; and
`prepared_ahead`, each training batch copied to the device and made into model input (augmentation,
normalisation) on a side stream, one batch ahead of the step.
On CPU each of these is off: fp32, contiguous tensors, no compilation, inputs made in line (a CPU run is the
reference the resume and equality tests check bit for bit).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSettings:
    """What `settings_for` chose for a device: ``amp_dtype`` (a torch dtype, or None for fp32),
    ``grad_scaler`` (fp16 only), ``channels_last``, ``cudnn_benchmark``, ``compile``, and
    ``prepare_ahead``: the next batch's model input made on the copy's side stream while this one trains
    (`prepared_ahead`; off, only the copy runs there and the input is made on the training stream)."""

    amp_dtype: Any
    grad_scaler: bool
    channels_last: bool
    cudnn_benchmark: bool
    compile: bool
    prepare_ahead: bool = False

    @property
    def use_amp(self) -> bool:
        return self.amp_dtype is not None

    def describe(self) -> str:
        """One line for the training log."""
        dtype = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype is not None else "fp32"
        return (f"{dtype}{' + GradScaler' if self.grad_scaler else ''}, "
                f"{'channels_last' if self.channels_last else 'contiguous'}, "
                f"cudnn.benchmark {'on' if self.cudnn_benchmark else 'off'}, "
                f"compile {'on' if self.compile else 'off'}"
                + (", inputs prepared ahead on a side stream" if self.prepare_ahead else ""))


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
                          channels_last=True, cudnn_benchmark=True, compile=bool(compile_model), prepare_ahead=True)


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


def _tensors(value) -> list:
    """The tensors in ``value``: a tensor, or a dict, tuple or list of them (nested), None and others skipped."""
    if hasattr(value, "record_stream"):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [tensor for item in value for tensor in _tensors(item)]
    return []


def prepared_ahead(batches, device, prepare, *, skip: int = 0, on_side_stream: bool = True):
    """(host batch, ``prepare(batch on device)``) for each of ``batches`` (host batches from the cache loader),
    (host batch, None) for the first ``skip`` ones, which are neither copied nor prepared (a run resumed
    within an epoch passes over them). ``prepare`` makes the model input (augmentation, normalisation).

    On CUDA batch k+1 is copied on a side stream while batch k trains (the copy engine moves it instead of the
    copy waiting in line on the training stream) and, ``on_side_stream``, prepared there too, so its
    augmentation kernels can run beside the step's instead of before them; the training stream waits for
    the side stream's event before it uses them. On the CPU each batch is prepared when it is reached.
    ``scan_key`` stays on the host (the augmentation is drawn from it there). Closing this closes ``batches``."""
    if device.type != "cuda":
        try:
            for index, batch in enumerate(batches):
                yield batch, (prepare(batch) if index >= skip else None)
        finally:
            batches.close()
        return
    import torch

    stream = torch.cuda.Stream(device)

    def issue(batch: dict, index: int):
        if index < skip:
            return batch, None, None
        with torch.cuda.stream(stream):
            moved = {name: value if name == "scan_key" else value.to(device, non_blocking=True)
                     for name, value in batch.items()}
            made = prepare(moved) if on_side_stream else moved
            done = torch.cuda.Event()
            done.record(stream)
        return batch, made, done

    def ready(batch: dict, made, done):
        if done is None:
            return batch, None
        current = torch.cuda.current_stream(device)
        current.wait_event(done)
        for tensor in _tensors(made):
            if tensor.device.type == "cuda":
                tensor.record_stream(current)  # allocated on the side stream, used on this one
        return batch, (made if on_side_stream else prepare(made))

    ahead = None
    try:
        for index, batch in enumerate(batches):
            issued = issue(batch, index)
            if ahead is not None:
                yield ready(*ahead)
            ahead = issued
        if ahead is not None:
            yield ready(*ahead)
    finally:
        batches.close()
