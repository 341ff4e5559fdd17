"""Training checkpoints: ``<output>/runs/<run_id>/checkpoints/{last,best}.pt`` (local or s3://), and the
`TrainState` they carry.

A checkpoint is a ``torch.save``d dict of tensors and plain Python values only (so ``torch.load(...,
weights_only=True)`` reads it and `classeg.models.read_state_dict` finds its ``model`` state):

``format`` ("classeg-checkpoint/1"), ``task``, ``class_names``, ``epoch`` (epochs completed), ``model`` (state
dict, no DDP prefix), ``monitor``, ``best``, ``best_epoch``; ``last.pt`` also holds the rest of the
`TrainState` (``history``, ``bad_epochs``, ``step``, ``micro``) and ``optimizer``, ``schedule``, ``world_size``
and ``rng`` (per rank: torch, numpy and python generator states).

A ``last.pt`` written within an epoch (``train.checkpoint_every_steps``) has ``micro`` > 0: the micro-batches of
epoch ``epoch + 1`` already trained. It also holds ``micro_steps`` (the epoch's micro-batches) and ``within_epoch``:
per rank, the running training-loss sum and image count of the epoch so far and the module's buffers (BatchNorm
statistics differ between ranks until the epoch end averages them). A checkpoint without ``micro`` is at an
epoch end.

Metric names: history entries use ``_tumor`` (``val_dice_tumor``); checkpoints written before the rename
(``val_dice_tumour``) load with the new names.
"""
from __future__ import annotations

import hashlib
import io
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from classeg.io.files import read_bytes, write_bytes
from classeg.io.uri import join

FORMAT = "classeg-checkpoint/1"
LAST = "last.pt"
BEST = "best.pt"


@dataclass
class TrainState:
    """Where a run stands after ``epoch`` completed epochs: the loop's state that ``last.pt`` keeps besides
    the model, optimizer, schedule and generator states (so a resumed run continues exactly where the first
    stopped), plus what this run learned that is not checkpointed.

    ``best`` is the best monitored validation value so far (None before the first finite one) and
    ``best_epoch`` its 1-based epoch; ``bad_epochs`` counts epochs since it last improved (early stopping);
    ``step`` counts optimizer steps over the whole run (the learning-rate schedule's clock); ``micro`` the
    micro-batches of epoch ``epoch + 1`` already trained (0 at an epoch end); ``history`` has one dict per
    epoch (``epoch``, ``train_loss``, ``lr``, ``images_per_sec``, ``seconds``, ``val_<metric>``).
    """

    epoch: int = 0
    step: int = 0
    micro: int = 0
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    # This run only, not checkpointed: the first epoch it trained (0-based) and the optimizer step it started
    # at, whether early stopping ended it, and the validation metrics of the initial weights
    # (``train.eval_before_training``).
    start_epoch: int = 0
    start_step: int = 0
    stopped_early: bool = False
    initial_val: dict | None = None

    def complete_epoch(self, entry: dict, *, value: float, higher_is_better: bool) -> bool:
        """Close epoch ``epoch + 1``: append its history ``entry``, compare its monitored validation ``value``
        with the best so far (NaN never improves) and count the epoch. True when it is the new best."""
        improved = not math.isnan(value) and (
            self.best is None or (value > self.best if higher_is_better else value < self.best))
        if improved:
            self.best, self.best_epoch, self.bad_epochs = float(value), self.epoch + 1, 0
        else:
            self.bad_epochs += 1
        self.history.append(entry)
        self.epoch += 1
        self.micro = 0
        return improved

    def to_checkpoint(self) -> dict:
        """The checkpointed fields, as ``last.pt`` stores them."""
        return {"epoch": self.epoch, "step": self.step, "micro": self.micro, "best": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "history": [dict(entry) for entry in self.history]}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "TrainState":
        """The state a ``last.pt`` dict holds; the resumed run continues epoch ``epoch + 1`` after its first
        ``micro`` micro-batches (0: from its start)."""
        epoch, step = int(checkpoint["epoch"]), int(checkpoint["step"])
        return cls(epoch=epoch, step=step, micro=int(checkpoint.get("micro", 0)), best=checkpoint["best"],
                   best_epoch=checkpoint["best_epoch"], bad_epochs=int(checkpoint["bad_epochs"]),
                   history=[upgrade_metric_names(entry) for entry in checkpoint["history"]], start_epoch=epoch,
                   start_step=step)


def upgrade_metric_names(entry: dict) -> dict:
    """A metrics or history dict with pre-rename keys (``dice_tumour``, ``val_iou_tumour``) under the
    current names (``dice_tumor``, ``val_iou_tumor``); a key present under both spellings keeps the new one."""
    upgraded = {}
    for key, value in entry.items():
        new = key[:-len("_tumour")] + "_tumor" if key.endswith("_tumour") else key
        if new == key or new not in entry:
            upgraded[new] = value
    return upgraded


def checkpoint_dir(run_uri: str) -> str:
    return join(run_uri, "checkpoints")


def save(uri: str, checkpoint: dict, *, s3_cfg: Any = None) -> None:
    """Write a checkpoint dict (rank 0 only)."""
    import torch

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **checkpoint}, buffer)
    write_bytes(uri, buffer.getvalue(), s3_cfg=s3_cfg)


def load(uri: str, *, s3_cfg: Any = None) -> dict:
    """Read a checkpoint onto the CPU; ValueError if the file is not a classeg checkpoint."""
    import torch

    data = read_bytes(uri, s3_cfg=s3_cfg)
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a file that is not a checkpoint
        raise ValueError(f"{uri} is not a readable torch checkpoint: {err}") from err
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{uri} is not a classeg checkpoint (format {FORMAT!r})")
    return checkpoint


def rank_progress(model, *, loss_sum: float, seen: int) -> dict:
    """One rank's part of a ``last.pt`` written within an epoch: the epoch's training-loss sum and image count
    so far, and ``model``'s buffers on the CPU."""
    buffers = {name: value.detach().cpu().clone() for name, value in model.named_buffers()}
    return {"loss_sum": float(loss_sum), "seen": int(seen), "buffers": buffers}


def resume_within_epoch(checkpoint: dict, *, model, rank: int, size: int, micro_steps: int, uri: str) -> dict | None:
    """None for a ``last.pt`` written at an epoch end. For one written within an epoch: this rank's buffers go
    back into ``model`` (call it after the engine's broadcast of rank 0's: each rank's BatchNorm statistics are
    its own until the epoch end averages them), and the result holds what the epoch resumes with: ``micro``
    (micro-batches done), ``rng`` (this rank's generator states after them), ``loss_sum`` and ``seen``.
    ValueError when this run would read other shards or batches (another world size or ``micro_steps``)."""
    import torch

    micro = int(checkpoint.get("micro", 0))
    if not micro:
        return None
    saved = (int(checkpoint["world_size"]), int(checkpoint["micro_steps"]))
    if saved != (size, micro_steps):
        raise ValueError(f"{uri} was saved within epoch {int(checkpoint['epoch']) + 1} by {saved[0]} processes with "
                         f"{saved[1]} micro-batches per epoch; this run has {size} and {micro_steps}: resume it "
                         "with the train.num_proc, train.batch_size and train.grad_accum_steps it was saved with")
    mine = checkpoint["within_epoch"][rank]
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in mine["buffers"].items():
            buffers[name].copy_(value)
    return {"micro": micro, "rng": checkpoint["rng"][rank], "loss_sum": float(mine["loss_sum"]),
            "seen": int(mine["seen"])}


def rng_state() -> dict:
    """This process's torch, numpy and python generator states, as checkpoint-safe values."""
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    import torch

    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def state_checksum(module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, values): equal on ranks holding the same model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(name.encode())
        digest.update(str(array.dtype).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
