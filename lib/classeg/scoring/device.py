"""Batched model preprocessing and mask postprocessing on the scoring device (torch ops; the CPU when there is
no GPU), so that the host only fetches, decodes and PNG-encodes.

:func:`model_inputs` is :func:`classeg.transforms.preprocess_for_model` (what training uses, numpy and PIL, one
image at a time) for a whole batch of canonical uint8 scans of any sizes: the scans of one shape are stacked,
copied to the device once (through pinned memory on CUDA) and converted, resized (bilinear, antialiased:
:func:`classeg.transforms.resize_tensor`, close to PIL's filter, not bit-exact) and normalised there.
:func:`masks_at_sizes` takes the segmenter's probabilities back to each scan's own size, thresholds them and
measures area and bounding box on the device; only the boolean masks and a few numbers reach the host.

torch is imported inside the functions: this module is imported on the driver.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from classeg.scoring.stages import STAGES

__all__ = ["DeviceMasks", "StageClock", "model_inputs", "masks_at_sizes", "shape_groups"]

# preprocess_for_model's z-score: a (near-)constant image is only centred.
_ZSCORE_EPS = 1e-6


def shape_groups(shapes: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], list[int]]:
    """Indices of ``shapes`` grouped by shape, in first-seen order (one stacked tensor per group)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(index)
    return groups


def _to_device(scans: Sequence[np.ndarray], device):
    """One uint8 tensor (n, H, W[, 3]) of same-shape scans on ``device``: stacked straight into pinned host
    memory on CUDA, so the copy can run asynchronously."""
    import torch

    shape = (len(scans), *scans[0].shape)
    if device.type != "cuda":
        return torch.from_numpy(np.stack(scans))
    host = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
    np.stack(scans, out=host.numpy())
    return host.to(device, non_blocking=True)


def _channels(batch, channels: int):
    """(n, H, W[, 3]) uint8 -> (n, C, H, W) float32 in [0, 255] with C = the model's channels, before resizing:
    a grayscale model gets the rounded channel mean of a 3-channel scan, as the uint8 image
    ``np.rint(image.mean(axis=2))`` that training's preprocessing sees."""
    values = batch.float()
    values = values[:, None] if values.ndim == 3 else values.permute(0, 3, 1, 2)
    own = values.shape[1]
    if channels == 1 and own == 3:
        return values.mean(dim=1, keepdim=True).round()
    if own != channels and own != 1:
        raise ValueError(f"scans have {own} channels but the model expects {channels}")
    return values


def model_inputs(scans: Sequence[np.ndarray], spec: Mapping, device, *, memory_format=None):
    """Model input (N, C, S, S) float32 on ``device`` for canonical uint8 scans (H, W) or (H, W, 3) of any
    sizes, as :func:`classeg.transforms.preprocess_for_model` computes it from ``spec`` (a model.json
    ``input``: ``size``, ``channels``, ``mean``/``std`` or ``zscore``): scale to [0, 1], resize to
    ``size``, replicate a grayscale scan to 3 channels, then normalise with ``mean``/``std`` or standardise each
    image (one mean and population std over its pixels and channels). Raises ValueError for an empty batch or
    a channel count the model cannot take."""
    import torch

    from classeg.transforms import queued_copy, resize_tensor

    if not len(scans):
        raise ValueError("model_inputs needs at least one scan, got none")
    size, channels = int(spec["size"]), int(spec["channels"])
    out = torch.empty((len(scans), channels, size, size), dtype=torch.float32, device=device)
    groups = shape_groups([scan.shape for scan in scans])
    for shape, indices in groups.items():
        values = _channels(_to_device([scans[i] for i in indices], device), channels) / 255.0
        if values.shape[-2:] != (size, size):
            values = resize_tensor(values, size=size, interpolation="bilinear")
        # One shape (the usual batch) fills the whole output; index tensors, like the mean and std below, go
        # to the device queued (queued_copy), so that making the inputs never waits for it.
        where = slice(None) if len(groups) == 1 else queued_copy(torch.tensor(indices), device=device)
        out[where] = values.expand(-1, channels, -1, -1)
    if spec.get("zscore"):
        flat = out.flatten(1)
        mean = flat.mean(dim=1)
        std = flat.std(dim=1, unbiased=False)
        std = torch.where(std < _ZSCORE_EPS, torch.ones_like(std), std)
        out = (out - mean[:, None, None, None]) / std[:, None, None, None]
    else:
        mean, std = (queued_copy(torch.tensor(spec[name], dtype=torch.float32), device=device)
                     for name in ("mean", "std"))
        if mean.numel() not in (1, channels) or std.numel() not in (1, channels):
            raise ValueError(f"mean/std need 1 or {channels} values, got {list(spec['mean'])}/{list(spec['std'])}")
        out = (out - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)
    return out.contiguous(memory_format=memory_format) if memory_format is not None else out


@dataclass
class DeviceMasks:
    """Masks at their scans' own sizes, on the host: ``masks`` (H, W) bool each, ``areas`` (pixels) and
    ``bboxes`` (``[x0, y0, x1, y1]`` half-open, None for an empty mask), in the order of the input."""

    masks: list
    areas: list
    bboxes: list


def _boxes(masks):
    """(n, H, W) bool on the device -> (n, 5) int64 rows of area, x0, y0, x1, y1 (half-open)."""
    import torch

    rows, cols = masks.any(dim=2), masks.any(dim=1)
    height, width = masks.shape[1], masks.shape[2]
    y0 = rows.int().argmax(dim=1)
    y1 = height - rows.flip(1).int().argmax(dim=1)
    x0 = cols.int().argmax(dim=1)
    x1 = width - cols.flip(1).int().argmax(dim=1)
    return torch.stack([masks.flatten(1).sum(dim=1), x0, y0, x1, y1], dim=1).long()


def masks_at_sizes(probabilities, sizes: Sequence[tuple[int, int]], threshold: float) -> DeviceMasks:
    """``probabilities`` (N, 1, s, s) on the device -> each resized (bilinear, not antialiased, as before
    scoring moved to the device) to its ``sizes[i]`` = (height, width) and thresholded at ``>= threshold``,
    with its area and bounding box, on the host."""
    import torch.nn.functional as F

    if len(sizes) != probabilities.shape[0]:
        raise ValueError(f"{probabilities.shape[0]} probability maps for {len(sizes)} sizes")
    masks, areas, bboxes = [None] * len(sizes), [0] * len(sizes), [None] * len(sizes)
    for size, indices in shape_groups(sizes).items():
        chosen = probabilities[indices]
        if tuple(chosen.shape[-2:]) != size:
            chosen = F.interpolate(chosen, size=size, mode="bilinear", align_corners=False)
        binary = chosen[:, 0] >= threshold
        boxes = _boxes(binary).to("cpu", non_blocking=True)  # pinned, queued: the masks' copy waits for both
        host = binary.cpu().numpy()
        boxes = boxes.numpy()
        for k, index in enumerate(indices):
            masks[index] = host[k]
            areas[index] = int(boxes[k, 0])
            bboxes[index] = [int(v) for v in boxes[k, 1:]] if boxes[k, 0] else None
    return DeviceMasks(masks=masks, areas=areas, bboxes=bboxes)


class StageClock:
    """Stage times on the device's own timeline, without making the host wait at each stage's end: on CUDA
    each :meth:`mark` records an event on the current stream, and :meth:`close`, called once the host has
    waited for the device anyway (a copy of results to the host), adds the time between consecutive events to
    ``stages`` (a :class:`classeg.scoring.stages.StageTimes`). On the CPU, where an op's work is done when the
    call returns, the times are the host clock's. Not thread-safe: one clock per batch and thread."""

    def __init__(self, device, stages):
        import torch

        self._torch = torch
        self._cuda = device.type == "cuda"
        self._stages = stages
        self._marks = [(None, self._now())]

    def _now(self):
        if not self._cuda:
            return time.perf_counter()
        event = self._torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def mark(self, stage: str) -> None:
        """The work queued since the previous mark (or the clock's start) was ``stage``'s."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self._marks.append((stage, self._now()))

    def close(self) -> None:
        """Add the marked stages' seconds to ``stages`` (on CUDA waiting for the last mark, which the host
        should already have waited past)."""
        if self._cuda:
            self._marks[-1][1].synchronize()
        for (_, before), (stage, after) in zip(self._marks, self._marks[1:]):
            self._stages.add(stage, before.elapsed_time(after) / 1000 if self._cuda else after - before)
        self._marks = self._marks[-1:]
