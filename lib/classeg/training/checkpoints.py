"""Training checkpoints: ``<output>/runs/<run_id>/checkpoints/{last,best}.pt`` (local or s3://).

A checkpoint is a ``torch.save``d dict of tensors and plain Python values only (so ``torch.load(...,
weights_only=True)`` reads it and `classeg.models.read_state_dict` finds its ``model`` state):

``format`` ("classeg-checkpoint/1"), ``task``, ``class_names``, ``epoch`` (epochs completed), ``model`` (state
dict, no DDP prefix), and in ``last.pt`` also ``optimizer``, ``schedule``, ``history``, ``best`` (monitored
value), ``best_epoch``, ``bad_epochs`` (early stopping), ``step`` (optimizer steps so far), ``world_size``
and ``rng`` (per rank: torch, numpy and python generator states).
"""
from __future__ import annotations

import io
import random
from typing import Any

import numpy as np

from classeg.artifact import join, read_bytes, write_bytes

FORMAT = "classeg-checkpoint/1"
LAST = "last.pt"
BEST = "best.pt"


def checkpoint_dir(run_uri: str) -> str:
    return join(run_uri, "checkpoints")


def exists(uri: str, *, s3_cfg: Any = None) -> bool:
    """Whether a checkpoint file/object exists (reads it; checkpoints are read whole anyway)."""
    try:
        read_bytes(uri, s3_cfg=s3_cfg)
    except FileNotFoundError:
        return False
    return True


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
