"""Optimizers and learning-rate schedules for the training loop (pure torch, no distribution).

Learning rates follow the linear scaling rule: ``train.lr`` is the rate for one process, multiplied by the
number of processes (the global batch grows with it), reached by a linear warmup over ``train.warmup_epochs``
epochs counted in optimizer steps. After warmup:

- ``cosine``: half-cosine decay from the scaled rate to 0 over the remaining steps of ``train.epochs``
  (resuming with a larger ``--epochs`` stretches the decay of the epochs still to run);
- ``plateau``: multiply by ``PLATEAU_FACTOR`` when the monitored validation metric has not improved for
  ``PLATEAU_PATIENCE`` epochs;
- ``constant``.

The schedule is a pure function of the step (plus, for plateau, a small state saved in checkpoints), so a
resumed run uses exactly the rates an uninterrupted one would.
"""
from __future__ import annotations

import math
from typing import Any

PLATEAU_FACTOR = 0.1
PLATEAU_PATIENCE = 2
SCHEDULES = ("cosine", "plateau", "constant")


def build_optimizer(model, *, task: str, optimizer: str, lr: float, weight_decay: float, momentum: float,
                    backbone_lr_scale: float):
    """AdamW or SGD (Nesterov-free momentum) over the trainable parameters. Classifiers get two groups
    (backbone at ``lr * backbone_lr_scale``, head at ``lr``; `classeg.models.parameter_groups`); the
    segmenter one. Each group remembers its peak rate as ``peak_lr``."""
    import torch

    from classeg.models import parameter_groups

    if task == "classify":
        groups = parameter_groups(model, lr=lr, backbone_lr_scale=backbone_lr_scale, weight_decay=weight_decay)
    else:
        groups = [{"name": "all", "params": [p for p in model.parameters() if p.requires_grad], "lr": lr,
                   "weight_decay": weight_decay}]
    if not groups or not any(g["params"] for g in groups):
        raise ValueError("the model has no trainable parameters")
    for group in groups:
        group["peak_lr"] = group["lr"]
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")


class LRSchedule:
    """Per-step learning-rate factor (applied to each group's ``peak_lr``): warmup, then ``kind``.

    ``higher_is_better`` tells plateau which way the monitored metric improves.
    """

    def __init__(self, *, kind: str, warmup_steps: int, total_steps: int, higher_is_better: bool = True):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")
        self.kind = kind
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.higher_is_better = higher_is_better
        self.plateau_scale = 1.0
        self.plateau_best: float | None = None
        self.plateau_bad_epochs = 0

    def factor(self, step: int) -> float:
        """Multiplier of the peak rate at optimizer step ``step`` (0-based, counted over the whole run)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "plateau":
            return self.plateau_scale
        return 1.0

    def apply(self, optimizer, step: int) -> float:
        """Set every group's rate for ``step``; returns the factor."""
        factor = self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * factor
        return factor

    def epoch_end(self, metric: float | None) -> None:
        """Feed the epoch's monitored validation metric (plateau only; NaN/None counts as no improvement)."""
        if self.kind != "plateau":
            return
        improved = metric is not None and not math.isnan(metric) and (
            self.plateau_best is None
            or (metric > self.plateau_best if self.higher_is_better else metric < self.plateau_best))
        if improved:
            self.plateau_best, self.plateau_bad_epochs = float(metric), 0
            return
        self.plateau_bad_epochs += 1
        if self.plateau_bad_epochs >= PLATEAU_PATIENCE:
            self.plateau_scale *= PLATEAU_FACTOR
            self.plateau_bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_scale": self.plateau_scale, "plateau_best": self.plateau_best,
                "plateau_bad_epochs": self.plateau_bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = state["plateau_best"]
        self.plateau_bad_epochs = int(state["plateau_bad_epochs"])


def class_weights(label_counts: dict[int, int], num_classes: int) -> list[float]:
    """Inverse-frequency class weights ``N / (K * n_c)`` from the train split's label counts (1.0 on average
    over the samples); a class absent from the train split gets weight 0."""
    total = sum(label_counts.get(c, 0) for c in range(num_classes))
    if total == 0:
        raise ValueError(f"cannot weight classes without training rows (label counts {label_counts})")
    return [total / (num_classes * label_counts[c]) if label_counts.get(c) else 0.0 for c in range(num_classes)]
