"""Training input on the training device: uint8 cache batches become augmented, normalised model input.

The cache (`classeg.training.data`) holds every scan already decoded and resized to the model's input size:
images uint8 (N, C, S, S), masks uint8 (N, S, S) in {0, 1}. `model_inputs` moves a batch to the device
(``non_blocking``: the loader hands over pinned memory when CUDA is present), scales it to [0, 1], augments
the training split there with batched tensor ops (`augment_batch`) and normalises it as scoring does
(`normalize_batch`). On a machine without a GPU the same ops run on the CPU.

Augmentation is the one `classeg.transforms.augment` defines, batched: per scan, the parameters are those
`classeg.transforms.draw_augmentation` draws from a generator seeded by (seed, epoch, scan_id), as the numpy
path draws them (computed for the whole batch at once, bit for bit, by `classeg.training.seeded`), so a scan
gets the same flips, angle, offset and factor as it would there, and a resumed run repeats an uninterrupted
one. Geometry (flips, then rotation about the centre, zeros filled in) is one affine
matrix per scan through ``affine_grid``/``grid_sample``: bilinear for images, nearest for masks (they stay
binary). Intensity (contrast about the image mean, brightness offset, clipped to [0, 1]) is for images only.
Images must be square (the cache's are).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from classeg.training.seeded import uniforms
from classeg.transforms import AUGMENTATION_RANGES, augmentation_from_uniforms, queued_copy

#: Standard deviation below which a z-scored image is only centred (as `classeg.transforms.zscore`).
ZSCORE_EPS = 1e-6


def draw_batch(scan_keys, *, seed: int, epoch: int) -> dict[str, np.ndarray]:
    """Each scan's augmentation, drawn from ``default_rng([seed, epoch, scan id as an integer])`` (what
    `classeg.training.data.decode_example` draws for the same scan): float64 arrays of length N,
    ``flip_x``/``flip_y`` (-1 to flip, else 1), ``angle`` (radians), ``offset``, ``factor``."""
    keys = np.asarray(scan_keys, dtype=np.int64).reshape(-1)
    # The generators' first five doubles for the whole batch at once (`classeg.training.seeded`: bit for bit
    # what default_rng gives, without a Generator built in Python per scan on the thread that feeds the device).
    # The signed key's bits read unsigned: the scan id's own value, as the numpy path seeds with.
    values = augmentation_from_uniforms(uniforms(int(seed), int(epoch), keys.view(np.uint64), 5),
                                        **AUGMENTATION_RANGES)
    return {"flip_x": np.where(values["flip_horizontal"], -1.0, 1.0),
            "flip_y": np.where(values["flip_vertical"], -1.0, 1.0),
            "angle": np.radians(values["angle"]), "offset": values["offset"], "factor": values["factor"]}


def affine_matrices(params: Mapping[str, np.ndarray], dtype=np.float32) -> np.ndarray:
    """(N, 2, 3) ``affine_grid`` matrices: output pixel -> input pixel in normalised coordinates, for
    "flip, then rotate counter-clockwise by ``angle``" (the numpy path's order). The inverse of a rotation is
    its transpose and a flip is its own inverse, so the matrix is flip @ rotation.T."""
    cos, sin = np.cos(params["angle"]), np.sin(params["angle"])
    theta = np.zeros((len(cos), 2, 3), dtype=dtype)
    theta[:, 0, 0], theta[:, 0, 1] = params["flip_x"] * cos, params["flip_x"] * -sin
    theta[:, 1, 0], theta[:, 1, 1] = params["flip_y"] * sin, params["flip_y"] * cos
    return theta


def sampling_grid(theta, *, size: int, dtype, device):
    """``F.affine_grid(theta, (N, C, size, size), align_corners=False)`` computed by broadcasting (two
    multiply-adds per coordinate instead of a batched matrix product over every pixel, which costs several
    times more on a CPU): (N, size, size, 2) sampling positions in normalised coordinates."""
    import torch

    theta = theta.to(device=device, dtype=dtype)
    centres = (torch.arange(size, device=device, dtype=dtype) * 2 + 1) / size - 1  # pixel centres in [-1, 1]
    x, y = centres.view(1, 1, size), centres.view(1, size, 1)
    rows = [theta[:, k, 0].view(-1, 1, 1) * x + (theta[:, k, 1].view(-1, 1, 1) * y + theta[:, k, 2].view(-1, 1, 1))
            for k in (0, 1)]
    return torch.stack(rows, dim=-1)


def _check(images, masks, params) -> None:
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be a square batch (N, C, S, S), got shape {tuple(images.shape)}")
    if len(params["angle"]) != images.shape[0]:
        raise ValueError(f"params hold {len(params['angle'])} scans, the batch {images.shape[0]}")
    if masks is not None and (masks.ndim != 4 or masks.shape[0] != images.shape[0]
                              or masks.shape[-2:] != images.shape[-2:]):
        raise ValueError(f"masks must be (N, 1, S, S) matching images {tuple(images.shape)}, got "
                         f"{tuple(masks.shape)}")


def augment_batch(images, masks=None, *, params: Mapping[str, np.ndarray], scale: float = 1.0):
    """Augment a batch as the numpy path augments each scan: ``images`` float (N, C, S, S) in [0, ``scale``]
    (``scale`` 255: uint8 values, which saves a pass over the batch), ``masks`` float (N, 1, S, S) in {0, 1}
    or None, ``params`` from `draw_batch`. Returns (images in [0, ``scale``], masks in {0, 1} or None), on
    the input's device; ``images`` may be modified in place."""
    import torch
    import torch.nn.functional as F

    _check(images, masks, params)
    count = images.shape[0]
    # One host array per batch (matrix, factor, offset per scan), one copy to the device.
    host = np.empty((count, 8), dtype=np.float64)
    host[:, :6] = affine_matrices(params, dtype=np.float64).reshape(count, 6)
    host[:, 6], host[:, 7] = params["factor"], params["offset"] * scale
    values = queued_copy(torch.from_numpy(host), dtype=images.dtype, device=images.device)
    grid = sampling_grid(values[:, :6].view(count, 2, 3), size=images.shape[-1], dtype=images.dtype,
                         device=images.device)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is not None:
        masks = F.grid_sample(masks, grid.to(masks.dtype), mode="nearest", padding_mode="zeros",
                              align_corners=False)
    factor, offset = values[:, 6].view(-1, 1, 1, 1), values[:, 7].view(-1, 1, 1, 1)
    shift = offset + images.mean(dim=(1, 2, 3), keepdim=True) * (1 - factor)
    return images.mul_(factor).add_(shift).clamp_(0.0, scale), masks


def normalize_batch(images, input_spec: Mapping[str, Any], *, scale: float = 1.0):
    """``images`` float (N, C, S, S) in [0, ``scale``] -> model input as
    `classeg.transforms.preprocess_for_model` normalises: channel ``mean``/``std`` (classifiers) or, with
    ``zscore``, per image over all pixels and channels with the population std (a (near-)constant image is
    only centred). ``images`` may be modified in place."""
    import torch

    if input_spec["zscore"]:
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        std = images.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
        std = torch.where(std < ZSCORE_EPS * scale, torch.ones_like(std), std)
        return images.sub_(mean).div_(std)
    channels = images.shape[1]
    mean, std = input_spec["mean"], input_spec["std"]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"input_spec mean/std have {len(mean)}/{len(std)} values, the images {channels} channels")
    # (x / scale - mean) / std as one multiply-add: x * (1 / (scale std)) - mean / std
    host = torch.tensor([[1.0 / (scale * s) for s in std], [-m / s for m, s in zip(mean, std)]], dtype=images.dtype)
    gain, bias = queued_copy(host, dtype=images.dtype, device=images.device).view(2, 1, channels, 1, 1)
    return images.mul_(gain).add_(bias)


def model_inputs(batch: Mapping[str, Any], *, task: str, input_spec: Mapping[str, Any], device,
                 channels_last: bool = False, augment: bool = False, seed: int = 0, epoch: int = 0,
                 with_mask: bool = False):
    """A loader batch (``image`` uint8 (N, C, S, S), ``mask`` uint8 (N, S, S), ``label`` int64 (N,),
    ``scan_key`` int64 (N,)) -> (images float32 (N, C, S, S) on ``device``, target): labels (classify),
    masks float32 (N, 1, S, S) (segment), or (labels, masks) for a mask-supervised classifier (``with_mask``).
    ``augment``: the training split's augmentation, drawn per (seed, epoch, scan)."""
    import torch

    needs_mask = task == "segment" or with_mask
    # Kept in 0-255 until normalisation, which folds the 1/255 into its multiply-add.
    images = batch["image"].to(device, non_blocking=True).float()
    masks = batch["mask"].to(device, non_blocking=True).unsqueeze(1).float() if needs_mask else None
    if augment:
        params = draw_batch(batch["scan_key"].numpy(), seed=seed, epoch=epoch)
        images, masks = augment_batch(images, masks, params=params, scale=255.0)
    images = normalize_batch(images, input_spec, scale=255.0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = images.contiguous(memory_format=fmt)
    if task == "segment":
        return images, masks
    labels = batch["label"].to(device, non_blocking=True)
    return images, ((labels, masks) if with_mask else labels)
