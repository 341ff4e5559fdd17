"""Pixel-level helpers shared by the anatomy models and the file writers."""
from __future__ import annotations

import math

import numpy as np


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """White noise low-passed by a Gaussian of ``sigma_px`` (via FFT, periodic), standardised to unit std."""
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (fy ** 2 + fx ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=shape)
    std = field.std()
    return field / std if std > 0 else field


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion with the 4-neighbourhood, ``steps`` times (pixels outside the image count as False)."""
    out = mask.copy()
    for _ in range(steps):
        padded = np.pad(out, 1, constant_values=False)
        out = out & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float intensities in [0, 1] (clipped) to uint8 0..255."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
