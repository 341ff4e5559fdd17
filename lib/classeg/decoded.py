"""What decoding a file yields: its 2-D images, or the reason it has none, or a :class:`DecodeError`.

A scan file holds one image (a TIFF, PNG, single-frame DICOM), many (a multi-frame DICOM, a NIfTI volume:
one per frame or axial slice) or none (a DICOM structured report, RT plan or ECG: ``skipped`` says why).
This module has no dependencies inside classeg, so the format readers (:mod:`classeg.imaging`,
:mod:`classeg.dicom`, :mod:`classeg.volumes`) all import it without cycles.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ALL_EXTENSIONS", "DecodeError", "IMAGE_EXTENSIONS", "READ_DEFAULT_MODALITIES", "REASONS", "ReadSettings",
           "ScanFile", "ScanImage", "VOLUME_EXTENSIONS", "Window"]

REASONS = ("empty", "unsupported", "undecodable", "truncated", "too_large", "bad_structure", "unreadable")
READ_DEFAULT_MODALITIES = ("MR",)
# File types classeg decodes, by extension (used when magic bytes are ambiguous; re-exported by classeg.imaging).
IMAGE_EXTENSIONS = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
VOLUME_EXTENSIONS = (".dcm", ".dicom", ".nii", ".nii.gz")
ALL_EXTENSIONS = IMAGE_EXTENSIONS + (".mat",) + VOLUME_EXTENSIONS


class DecodeError(ValueError):
    """A file could not be turned into an image. ``reason`` is one of REASONS; the message says why."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {REASONS}, got {reason!r}")
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ReadSettings:
    """How scan files are read: ``modalities`` that are scored (DICOM Modality values; empty: all; files of
    other modalities are skipped) and the ``patient_key_secret`` (bytes) of the keyed patient hash (None: no
    ``patient_key``). The secret is left out of ``repr`` so that it never reaches a log."""

    modalities: tuple[str, ...] = READ_DEFAULT_MODALITIES
    patient_key_secret: bytes | None = field(default=None, repr=False)

    def __post_init__(self):
        if isinstance(self.modalities, str) or not all(isinstance(m, str) for m in self.modalities):
            raise ValueError(f"modalities must be a list of DICOM Modality values, got {self.modalities!r}")
        object.__setattr__(self, "modalities", tuple(m.upper() for m in self.modalities))
        if isinstance(self.patient_key_secret, str):
            object.__setattr__(self, "patient_key_secret", self.patient_key_secret.encode("utf-8"))


@dataclass(frozen=True)
class Window:
    """The intensity window that took a file's values to uint8: values ``<= low`` became 0, ``>= high`` 255,
    linearly between (for ``voi_lut`` and sigmoid windows, ``low``/``high`` bound the input range).

    ``source``: ``voi_lut`` (the file's VOI LUT Sequence), ``window`` (its Window Center/Width, first pair),
    ``percentile`` (no window in the file: the 0.5th and 99.5th percentiles of the whole file's values, so all
    frames or slices of one file share it), ``stored_range`` (8-bit, colour and palette images: the stored bit
    depth's full range, i.e. shown as stored)."""

    source: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class ScanImage:
    """One 2-D image of a file: ``pixels`` (H, W) or (H, W, 3) in the file's dtype (formats without a window:
    TIFF, PNG, .mat, ...) or uint8 after ``window`` (DICOM, NIfTI); ``frame`` 0-based for multi-frame files
    and volumes, None for single-image files."""

    pixels: np.ndarray
    frame: int | None = None
    window: Window | None = None


@dataclass(frozen=True)
class ScanFile:
    """A decoded file: its ``images`` (empty when ``skipped`` gives the reason it has none to score) and, for
    DICOM and NIfTI, ``identity``: the scores-table identity columns (study_uid, series_uid, sop_uid,
    instance_number, modality, series_description, pixel_spacing_mm [row, column], slice_thickness_mm,
    patient_key). Identity never holds patient names, IDs or birth dates."""

    images: tuple[ScanImage, ...] = ()
    skipped: str | None = None
    identity: dict | None = None
