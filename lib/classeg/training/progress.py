"""Rank 0's progress within a training epoch: a tqdm bar on a terminal, else ``PROGRESS_LINES`` log lines."""
from __future__ import annotations

import logging
import sys
from typing import Callable

log = logging.getLogger("classeg.training")

#: Progress lines per epoch on rank 0 (when there is no tqdm bar).
PROGRESS_LINES = 10


def _bar(total: int, enabled: bool, description: str):
    """A tqdm bar on rank 0 when tqdm is installed and stderr is a terminal, else None (log lines instead)."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=description, leave=False, file=sys.stderr)


class EpochProgress:
    """``update`` after every micro-batch; ``mean_loss`` is called only when a line or the bar's loss shows it,
    ``PROGRESS_LINES`` times an epoch (reading a loss on the device waits for the device)."""

    def __init__(self, *, rank0: bool, total: int, epoch: int, epochs: int) -> None:
        self.rank0, self.total, self.epoch, self.epochs = rank0, total, epoch, epochs
        self.bar = _bar(total, rank0, f"epoch {epoch + 1}/{epochs}")
        self.every = max(1, total // PROGRESS_LINES)

    def update(self, micro: int, mean_loss: Callable[[], float], *, images_per_sec: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if (micro + 1) % self.every == 0 or micro + 1 == self.total:  # the loss read waits for the device
                self.bar.set_postfix(loss=f"{mean_loss():.4f}")
        elif self.rank0 and (micro + 1) % self.every == 0 and micro + 1 < self.total:
            log.info("epoch %d/%d %3d%% (%d/%d steps) loss %.4f, %.1f images/s", self.epoch + 1, self.epochs,
                     100 * (micro + 1) // self.total, micro + 1, self.total, mean_loss(), images_per_sec)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
