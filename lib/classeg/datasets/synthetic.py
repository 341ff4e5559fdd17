"""Synthetic brain-MRI scans written in the exact on-disk layouts of the real datasets (see DATASETS.md).

The real datasets cannot be downloaded on the build machines, so tests and the demo run on phantoms that
are learnable rather than noise: an axial head section (bright scalp ring, dark bone, dura/CSF band, cortex
with gyri and sulci, white matter, ventricles and deep grey matter), varied per patient (head size, aspect,
rotation, position, intensity gain and gamma, noise level) and along a patient's stack (the head is smaller
at the ends, the ventricles only appear in the middle), rendered in T1, T1C+ (contrast-enhanced), T2 or
FLAIR, with Rician-like noise. Positive slices carry a lesion: an irregular blob (union of a few ellipses
with a noisy boundary) whose mask is exactly the pixels rendered as lesion. Lesion kinds differ by place,
size and shape so tumour types are learnable:

- ``low_grade_glioma`` (LGG layout): inside a hemisphere, brightest in FLAIR, dark in T1, not enhancing;
- ``glioma``: irregular, inside a hemisphere, enhancing rim in T1C+;
- ``glioblastoma``: large, necrotic core (dark in T1/T1C+, bright in T2) with a thick enhancing rim;
- ``meningioma``: rounded, at the brain periphery against the skull, homogeneous enhancement;
- ``pituitary``: small, at the centre-bottom (sellar) region of the image.

Contrasts look different as on real scans: T1 dark CSF, T2 bright CSF, FLAIR dark CSF with bright lesions,
T1C+ like T1 plus a bright enhancing dura ring and bright lesion rims.

Every writer takes keyword-only arguments, is deterministic for its ``seed`` (``numpy.random.default_rng``,
no global random state: the same seed gives byte-identical files), refuses a non-empty output folder, writes
no extra files into the tree (real datasets have none) and returns the ground truth as a dict::

    {"layout": "lgg", "root": "/abs/output", "files": 98,      # files written, all copies included
     "slices": [{"path": "kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1.tif",  # relative, "/"
                 "mask_path": ".../TCGA_CS_4941_19960909_1_mask.tif",  # or None (mask inside the file/none)
                 "patient_id": "TCGA_CS_4941", "slice_index": 1, "label": 0, "label_name": "no_tumor",
                 "has_tumor": False, "height": 256, "width": 256, "mask_area_px": 0, ...}, ...],
     "broken": [{"path": "corrupt.tif", "kind": "corrupt_tiff"}, ...],
     ...layout-specific keys (patients, classes, folds)}

``has_tumor`` is always ``mask_area_px > 0`` of the exact mask. Layout-specific slice keys: LGG
``flair_copied_into``; figshare ``file_number``, ``fold``, ``mask_key``; folders ``split``, ``contrast``,
``kind``, ``mode``, ``subject``; archive ``format``, ``contrast``, ``kind``, ``mask`` (the exact (H, W) bool
numpy array; the archive has no mask files) and, for DICOM, ``rescale_slope``/``rescale_intercept``.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import shutil
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

LAYOUTS = ("lgg", "figshare", "folders", "archive")
CONTRASTS = ("T1", "T1C+", "T2", "FLAIR")
LESION_KINDS = ("low_grade_glioma", "glioma", "glioblastoma", "meningioma", "pituitary")
TUMOR_KINDS = ("glioma", "glioblastoma", "meningioma", "pituitary")  # what a "yes"/unknown class may show
FIGSHARE_LABELS = {1: "meningioma", 2: "glioma", 3: "pituitary"}
FIGSHARE_SMALL_NUMBERS = (955, 956, 957, 1070, 1071, 1072, 1073, 1074, 1075, 1076, 1203, 1204, 1205, 1206, 1207)
FOLDER_CLASSES_44C = (
    "Astrocitoma T1", "Astrocitoma T1C+", "Astrocitoma T2",
    "Glioblastoma T1", "Glioblastoma T1C+", "Glioblastoma T2",
    "Meningioma T1", "Meningioma T1C+", "Meningioma T2",
    "_NORMAL T1", "_NORMAL T2",
)
FOLDER_CLASSES_BINARY = ("yes", "no")
FOLDER_CLASSES_4 = ("glioma", "meningioma", "pituitary", "notumor")
ARCHIVE_FORMATS = ("tif", "jpg", "png", "webp", "mat", "dcm")
BROKEN_KINDS = ("corrupt_tiff", "empty", "text", "truncated_jpeg")
LGG_INSTITUTIONS = ("CS", "DU", "EZ", "FG", "HT")
LGG_CHANNELS = ("T1", "FLAIR", "T1C+")  # pre-contrast, FLAIR, post-contrast: the real channel order
LGG_CSV_COLUMNS = (
    "Patient", "RNASeqCluster", "MethylationCluster", "miRNACluster", "CNCluster", "RPPACluster",
    "OncosignCluster", "COCCluster", "histological_type", "neoplasm_histologic_grade", "tumor_tissue_site",
    "laterality", "tumor_location", "gender", "age_at_initial_pathologic", "race", "ethnicity", "death01",
)
MIN_IMAGE_SIZE = 16

# Code ranges of data.csv columns (inclusive) and the chance that a cell is blank, as in the real file.
_LGG_CSV_CODES = {
    "RNASeqCluster": (1, 4, 0.25), "MethylationCluster": (1, 5, 0.05), "miRNACluster": (1, 4, 0.0),
    "CNCluster": (1, 3, 0.05), "RPPACluster": (1, 4, 0.3), "OncosignCluster": (1, 3, 0.1),
    "COCCluster": (1, 3, 0.0), "histological_type": (1, 3, 0.02), "neoplasm_histologic_grade": (1, 2, 0.02),
    "tumor_tissue_site": (1, 1, 0.02), "laterality": (1, 3, 0.05), "tumor_location": (1, 5, 0.05),
    "gender": (1, 2, 0.0), "age_at_initial_pathologic": (20, 75, 0.02), "race": (1, 3, 0.05),
    "ethnicity": (1, 2, 0.1), "death01": (0, 1, 0.02),
}

# Tissue labels of the phantom and their intensity in [0, 1] per contrast.
_BG, _SCALP, _BONE, _DURA, _CSF, _GM, _WM = range(7)
_TISSUE_INTENSITY = {
    #                  bg    scalp bone  dura  csf   gm    wm
    "T1": np.array([0.00, 0.85, 0.10, 0.10, 0.10, 0.42, 0.62]),
    "T1C+": np.array([0.00, 0.88, 0.10, 0.80, 0.12, 0.45, 0.63]),  # enhancing dura: the bright inner ring
    "T2": np.array([0.00, 0.50, 0.08, 0.95, 0.95, 0.58, 0.36]),
    "FLAIR": np.array([0.00, 0.60, 0.08, 0.06, 0.06, 0.52, 0.40]),
}
# Lesion (core, rim) intensity per kind and contrast; the rim is the outer quarter of the lesion radius.
_LESION_INTENSITY = {
    "low_grade_glioma": {"T1": (0.34, 0.34), "T1C+": (0.45, 0.55), "T2": (0.88, 0.88), "FLAIR": (0.97, 0.97)},
    "glioma": {"T1": (0.80, 0.80), "T1C+": (0.74, 1.00), "T2": (0.86, 0.86), "FLAIR": (0.95, 0.95)},
    "glioblastoma": {"T1": (0.22, 0.80), "T1C+": (0.30, 1.00), "T2": (0.98, 0.80), "FLAIR": (0.78, 0.96)},
    "meningioma": {"T1": (0.76, 0.76), "T1C+": (0.94, 1.00), "T2": (0.80, 0.80), "FLAIR": (0.88, 0.88)},
    "pituitary": {"T1": (0.80, 0.80), "T1C+": (0.92, 1.00), "T2": (0.82, 0.82), "FLAIR": (0.86, 0.86)},
}
# Lesion shape per kind: radius range (in brain radii), number of ellipse lobes, boundary irregularity.
_LESION_SHAPE = {
    "low_grade_glioma": ((0.18, 0.32), (3, 5), 0.25),
    "glioma": ((0.18, 0.30), (3, 5), 0.30),
    "glioblastoma": ((0.26, 0.38), (2, 4), 0.20),
    "meningioma": ((0.17, 0.28), (1, 2), 0.06),
    "pituitary": ((0.10, 0.15), (1, 2), 0.05),
}
# Radii (in head radii) of the scalp/bone, bone/dura and dura/brain boundaries.
_BONE_OUTER, _DURA_OUTER, _BRAIN_EDGE = 0.92, 0.87, 0.83


# --------------------------------------------------------------------------------------------------------
# Phantom core
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Anatomy:
    """Per-patient head geometry and scanner appearance. Lengths are in units of half the image side.

    ``head_radius`` is the anterior-posterior semi-axis at the widest slice, ``aspect`` the left-right /
    anterior-posterior ratio, ``rotation`` in radians, ``center`` the (x, y) offset of the head, ``egg``
    how much wider the back (image bottom) is than the front, ``gain``/``gamma`` the intensity mapping
    ``gain * I ** gamma`` and ``noise_sigma`` the Rician noise level (fraction of full scale)."""

    head_radius: float
    aspect: float
    rotation: float
    center: tuple[float, float]
    egg: float
    gyri: int
    gyral_phase: float
    ventricle_scale: float
    gain: float
    gamma: float
    noise_sigma: float


@dataclass(frozen=True)
class Lesion:
    """One patient's lesion in brain-normalised coordinates (the brain outline is the unit circle, +y
    towards the image bottom). ``lobes`` are (dx, dy, semi-axis a, semi-axis b, angle) in units of
    ``radius``; ``irregularity`` scales the smooth noise added to the boundary."""

    kind: str
    center: tuple[float, float]
    radius: float
    lobes: tuple[tuple[float, float, float, float, float], ...]
    irregularity: float


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy."""
    return Anatomy(
        head_radius=float(rng.uniform(0.80, 0.90)), aspect=float(rng.uniform(0.78, 0.90)),
        rotation=float(rng.uniform(-0.2, 0.2)),
        center=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
        egg=float(rng.uniform(0.0, 0.08)), gyri=int(rng.integers(9, 15)),
        gyral_phase=float(rng.uniform(0, 2 * math.pi)), ventricle_scale=float(rng.uniform(0.75, 1.25)),
        gain=float(rng.uniform(0.85, 1.0)), gamma=float(rng.uniform(0.85, 1.2)),
        noise_sigma=float(rng.uniform(0.012, 0.035)),
    )


def random_lesion(rng: np.random.Generator, *, kind: str) -> Lesion:
    """Draw a lesion of ``kind`` (one of LESION_KINDS) at the place typical for that kind."""
    if kind not in LESION_KINDS:
        raise ValueError(f"kind must be one of {LESION_KINDS}, got {kind!r}")
    (r_lo, r_hi), (n_lo, n_hi), irregularity = _LESION_SHAPE[kind]
    radius = float(rng.uniform(r_lo, r_hi))
    if kind == "meningioma":
        angle = rng.uniform(0, 2 * math.pi)  # on the brain surface, against the skull
        center = (0.9 * math.cos(angle), 0.9 * math.sin(angle))
    elif kind == "pituitary":
        center = (rng.uniform(-0.04, 0.04), rng.uniform(0.42, 0.55))  # sella: centre, towards the bottom
    else:
        while True:  # inside one hemisphere, away from the outline
            center = (rng.choice((-1.0, 1.0)) * rng.uniform(0.22, 0.5), rng.uniform(-0.45, 0.4))
            if math.hypot(*center) < 0.62:
                break
    lobes = [(0.0, 0.0, 1.0, float(rng.uniform(0.7, 1.0)), float(rng.uniform(0, math.pi)))]
    for _ in range(int(rng.integers(n_lo, n_hi + 1)) - 1):
        direction, offset = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 0.7)
        lobes.append((offset * math.cos(direction), offset * math.sin(direction), float(rng.uniform(0.45, 0.8)),
                      float(rng.uniform(0.35, 0.7)), float(rng.uniform(0, math.pi))))
    return Lesion(kind=kind, center=(float(center[0]), float(center[1])), radius=radius, lobes=tuple(lobes),
                  irregularity=irregularity)


def phantom_slice(rng: np.random.Generator, *, size: int, anatomy: Anatomy, slice_pos: float,
                  lesion: Lesion | None = None, lesion_scale: float = 1.0,
                  contrasts: Sequence[str] = ("FLAIR",)) -> tuple[np.ndarray, np.ndarray]:
    """Render one axial slice.

    ``slice_pos`` in [0, 1] is the position in the patient's stack (0 bottom, 1 top: the head is smaller
    towards both ends, the ventricles are only present around the middle). ``lesion_scale`` in (0, 1]
    shrinks the lesion (used at the ends of a tumour's run of slices). Returns ``image`` float32
    (size, size, len(contrasts)) in [0, 1], one channel per contrast sharing the same anatomy and lesion,
    and ``mask`` bool (size, size): exactly the pixels rendered as lesion (all False without a lesion)."""
    _check_int("size", size, minimum=MIN_IMAGE_SIZE)
    if not 0.0 <= slice_pos <= 1.0:
        raise ValueError(f"slice_pos must be in [0, 1], got {slice_pos!r}")
    if not 0.0 < lesion_scale <= 1.0:
        raise ValueError(f"lesion_scale must be in (0, 1], got {lesion_scale!r}")
    contrasts = tuple(contrasts)
    bad = [c for c in contrasts if c not in CONTRASTS]
    if bad or not contrasts:
        raise ValueError(f"contrasts must be a non-empty sequence of {CONTRASTS}, got {contrasts!r}")
    frame = _head_frame(size, anatomy, slice_pos)
    labels = _tissue_labels(frame, anatomy, slice_pos)
    if lesion is None:
        mask = np.zeros((size, size), dtype=bool)
        rim = mask
    else:
        mask = _lesion_mask(rng, frame, lesion, lesion_scale, size)
        area = int(mask.sum())
        rim_px = max(1, int(round(0.25 * math.sqrt(area / math.pi))))
        rim = mask & ~_erode(mask, rim_px)
    texture = 0.05 * _smooth_noise(rng, (size, size), 0.8) + 0.06 * _smooth_noise(rng, (size, size), size / 6)
    lesion_texture = 0.06 * _smooth_noise(rng, (size, size), 1.5)
    channels = []
    for contrast in contrasts:
        intensity = _TISSUE_INTENSITY[contrast][labels]
        if lesion is not None:
            core_value, rim_value = _LESION_INTENSITY[lesion.kind][contrast]
            intensity = np.where(mask, core_value * (1 + lesion_texture), intensity)
            intensity = np.where(rim, rim_value * (1 + lesion_texture), intensity)
        intensity = np.clip(intensity * (1 + texture), 0.0, None) ** anatomy.gamma * anatomy.gain
        sigma = anatomy.noise_sigma
        # Rician magnitude noise: |signal + complex Gaussian|, as in magnitude MR images.
        noisy = np.hypot(intensity + sigma * rng.standard_normal(intensity.shape),
                         sigma * rng.standard_normal(intensity.shape))
        channels.append(np.clip(noisy, 0.0, 1.0))
    return np.stack(channels, axis=-1).astype(np.float32), mask


@dataclass(frozen=True)
class _Frame:
    bx: np.ndarray  # brain-normalised coordinates (brain outline = unit circle)
    by: np.ndarray
    rho: np.ndarray  # head-normalised radius (head outline = 1)
    theta: np.ndarray
    brain_px: float  # smallest brain semi-axis in pixels


def _slice_scale(slice_pos: float) -> float:
    """Head size along the stack: 1 near the middle, about 0.7 at the bottom and 0.85 at the top."""
    return 0.55 + 0.45 * math.sqrt(max(0.0, 1.0 - ((slice_pos - 0.55) / 0.6) ** 2))


def _head_frame(size: int, anatomy: Anatomy, slice_pos: float) -> _Frame:
    centres = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    v, u = np.meshgrid(centres, centres, indexing="ij")  # v grows downwards (rows), u to the right
    cos_a, sin_a = math.cos(anatomy.rotation), math.sin(anatomy.rotation)
    x = (u - anatomy.center[0]) * cos_a + (v - anatomy.center[1]) * sin_a
    y = -(u - anatomy.center[0]) * sin_a + (v - anatomy.center[1]) * cos_a
    semi_y = anatomy.head_radius * _slice_scale(slice_pos)
    semi_x = semi_y * anatomy.aspect
    yn = y / semi_y
    xn = x / (semi_x * (1.0 + anatomy.egg * np.clip(yn, -1.0, 1.0)))  # wider at the back (image bottom)
    rho = np.hypot(xn, yn)
    brain_px = _BRAIN_EDGE * semi_x * (1.0 - anatomy.egg) * size / 2.0
    return _Frame(bx=xn / _BRAIN_EDGE, by=yn / _BRAIN_EDGE, rho=rho, theta=np.arctan2(yn, xn),
                  brain_px=float(brain_px))


def _tissue_labels(frame: _Frame, anatomy: Anatomy, slice_pos: float) -> np.ndarray:
    rho, bx, by = frame.rho, frame.bx, frame.by
    labels = np.full(rho.shape, _BG, dtype=np.int8)
    labels[rho <= 1.0] = _SCALP
    labels[rho <= _BONE_OUTER] = _BONE
    labels[rho <= _DURA_OUTER] = _DURA
    b = rho / _BRAIN_EDGE
    brain = b <= 1.0
    theta, phase = frame.theta, anatomy.gyral_phase
    # Warp the angle so gyri are unevenly spaced, and vary the sulcal depth around the brain.
    gyral = np.cos(anatomy.gyri * theta + phase + 1.1 * np.sin(3 * theta + 2.3 * phase))
    depth = 0.5 + 0.5 * np.sin(5 * theta + 1.7 * phase)
    labels[brain] = _GM
    labels[brain & (b < 0.74 - 0.07 * gyral - 0.03 * depth)] = _WM  # white matter fingers between the sulci
    labels[brain & (b > 0.9 - 0.1 * depth) & (gyral > 0.9)] = _CSF  # sulci
    fissure_half = max(0.02, 0.6 / frame.brain_px)
    labels[brain & (np.abs(bx) < fissure_half) & (np.abs(by) > 0.35)] = _CSF
    middle = max(0.0, 1.0 - ((slice_pos - 0.5) / 0.24) ** 2) * anatomy.ventricle_scale
    if middle > 0.3:
        for side in (-1.0, 1.0):
            thalamus = ((bx - side * 0.15) / 0.11) ** 2 + ((by - 0.22) / 0.13) ** 2 < 1.0
            labels[brain & thalamus] = _GM
        labels[brain & (np.abs(bx) < fissure_half) & (by > 0.1) & (by < 0.32)] = _CSF  # third ventricle
    if middle > 0.08:
        for side in (-1.0, 1.0):
            lx, ly = bx - side * 0.12, by + 0.02
            turn = side * 0.3  # the frontal horns diverge
            rx = lx * math.cos(turn) + ly * math.sin(turn)
            ry = -lx * math.sin(turn) + ly * math.cos(turn)
            labels[brain & ((rx / (0.075 * middle)) ** 2 + (ry / (0.30 * middle)) ** 2 < 1.0)] = _CSF
    return labels


def _lesion_mask(rng: np.random.Generator, frame: _Frame, lesion: Lesion, lesion_scale: float,
                 size: int) -> np.ndarray:
    # Never shrink a lesion below ~2 pixels of radius: a smaller one would vanish at small image sizes.
    radius = max(lesion.radius * lesion_scale, 2.0 / frame.brain_px)
    cx = lesion.center[0] + 0.02 * rng.standard_normal()
    cy = lesion.center[1] + 0.02 * rng.standard_normal()
    dist = np.full(frame.bx.shape, np.inf)
    for dx, dy, a, b, angle in lesion.lobes:
        lx = (frame.bx - cx) / radius - dx
        ly = (frame.by - cy) / radius - dy
        rx = lx * math.cos(angle) + ly * math.sin(angle)
        ry = -lx * math.sin(angle) + ly * math.cos(angle)
        dist = np.minimum(dist, np.hypot(rx / a, ry / b))
    boundary = _smooth_noise(rng, dist.shape, max(1.0, 0.4 * radius * frame.brain_px))
    inside = dist < 1.0 + lesion.irregularity * np.clip(boundary, -2.5, 2.5)
    # A meningioma grows from the dura, so it may fill the dura band; other kinds stay within the brain.
    allowed = frame.rho <= (_DURA_OUTER if lesion.kind == "meningioma" else _BRAIN_EDGE)
    mask = inside & allowed
    if not mask.any():  # the noisy boundary ate a tiny lesion: fall back to a small disc at its centre
        mask = (np.hypot(frame.bx - cx, frame.by - cy) * frame.brain_px <= 2.0) & allowed
    if not mask.any():
        row, col = np.unravel_index(np.argmin(np.hypot(frame.bx - cx, frame.by - cy)), frame.bx.shape)
        mask[row, col] = True
    return mask


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """White noise low-passed by a Gaussian of ``sigma_px`` (via FFT, periodic), standardised to unit std."""
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (fy ** 2 + fx ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=shape)
    std = field.std()
    return field / std if std > 0 else field


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion with the 4-neighbourhood, ``steps`` times (pixels outside the image count as False)."""
    out = mask.copy()
    for _ in range(steps):
        padded = np.pad(out, 1, constant_values=False)
        out = out & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return out


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def lesion_kind_for_class(class_name: str, rng: np.random.Generator | None = None) -> str | None:
    """Lesion kind shown by a folder class: None for normal/no/notumor, a random tumour kind for ``yes``
    (needs ``rng``), else from the tumour name (menin-, pitu-, glioblast-, glio/astro/oligo/ependi-);
    other tumour names get a fixed kind chosen by a stable hash of the name, so each class stays learnable."""
    tumour = _CONTRAST_SUFFIX.sub("", class_name).strip().lower()
    if tumour in ("no", "notumor", "no_tumor", "no tumor", "normal", "_normal", "healthy"):
        return None
    if "normal" in tumour:
        return None
    if tumour == "yes":
        if rng is None:
            raise ValueError(f"class {class_name!r} shows any tumour kind: pass rng to draw one")
        return str(rng.choice(TUMOR_KINDS))
    for key, kind in (("glioblast", "glioblastoma"), ("menin", "meningioma"), ("pitu", "pituitary"),
                      ("glio", "glioma"), ("astro", "glioma"), ("oligo", "glioma"), ("ependi", "glioma")):
        if key in tumour:
            return kind
    return TUMOR_KINDS[zlib.crc32(tumour.encode("utf-8")) % len(TUMOR_KINDS)]


_CONTRAST_SUFFIX = re.compile(r"(?:^|[\s_-])(T1C\+|T1|T2|FLAIR)$", re.IGNORECASE)


def contrast_for_class(class_name: str) -> str:
    """``'Meningioma T1C+'`` -> ``'T1C+'``; classes without a contrast suffix are T1C+ (as most of the
    4-class and yes/no sets are)."""
    match = _CONTRAST_SUFFIX.search(class_name.strip())
    return match.group(1).upper() if match else "T1C+"


# --------------------------------------------------------------------------------------------------------
# Public writers
# --------------------------------------------------------------------------------------------------------

def write_dataset(layout: str, output: str | os.PathLike, *, patients: int | None = None, seed: int = 0,
                  image_size: int | None = None, **options: Any) -> dict:
    """Write a synthetic dataset of ``layout`` (one of LAYOUTS) into the empty or new folder ``output``.

    ``patients`` and ``image_size`` left as None take the layout's default. For ``folders``, ``image_size``
    sets ``size_range=(image_size, image_size)``; ``patients`` does not apply to ``archive``. Other
    ``options`` go to the layout's writer (write_lgg, write_figshare, write_folders, write_archive).
    Returns the ground truth (see the module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    kwargs = dict(options, seed=seed)
    if patients is not None:
        if layout == "archive":
            raise ValueError(f"patients does not apply to the archive layout (it has none), got {patients!r}")
        kwargs["patients"] = patients
    if image_size is not None:
        if layout == "folders":
            if "size_range" in options:
                raise ValueError(f"give image_size or size_range for folders, not both: got {image_size!r} "
                                 f"and {options['size_range']!r}")
            kwargs["size_range"] = (image_size, image_size)
        else:
            kwargs["image_size"] = image_size
    writer = {"lgg": write_lgg, "figshare": write_figshare, "folders": write_folders,
              "archive": write_archive}[layout]
    return writer(output, **kwargs)


def write_lgg(output: str | os.PathLike, *, patients: int = 12, seed: int = 0, image_size: int = 256,
              slices_per_patient: tuple[int, int] = (12, 20), tumor_fraction: float = 0.35,
              duplicate_copy: bool = True, data_csv: bool = True) -> dict:
    """Write the Kaggle LGG layout: ``kaggle_3m/TCGA_<inst>_<pid>_<YYYYMMDD>/<folder>_<n>.tif`` (n from 1,
    unpadded; (H, W, 3) uint8 RGB TIFF: pre-contrast T1, FLAIR, post-contrast T1) with ``<folder>_<n>_mask.tif``
    ((H, W) uint8 {0, 255}), ``kaggle_3m/data.csv`` and, with ``duplicate_copy``, a byte-identical copy of the
    tree at ``lgg-mri-segmentation/kaggle_3m/``.

    Each patient has ``slices_per_patient`` (inclusive range) slices; the tumour is one contiguous run of
    about ``tumor_fraction`` of them around the middle of the stack (none when 0). Some patients lack a
    sequence and have FLAIR copied into its channel, as in the real data. Truth slices list each slice once
    (the top-level copy); label 1 = tumour."""
    _check_int("patients", patients, minimum=1)
    _check_int("seed", seed, minimum=0)
    _check_int("image_size", image_size, minimum=MIN_IMAGE_SIZE)
    lo, hi = _check_range("slices_per_patient", slices_per_patient, minimum=1)
    if isinstance(tumor_fraction, bool) or not isinstance(tumor_fraction, (int, float)) \
            or not 0.0 <= tumor_fraction <= 1.0:
        raise ValueError(f"tumor_fraction must be a number in [0, 1], got {tumor_fraction!r}")
    _check_bool("duplicate_copy", duplicate_copy)
    _check_bool("data_csv", data_csv)
    import tifffile

    root = _prepare_output(output)
    base = root / "kaggle_3m"
    base.mkdir()
    rng = np.random.default_rng(seed)
    folders = _lgg_folder_names(rng, patients)
    slices: list[dict] = []
    patient_truth: list[dict] = []
    for index, folder in enumerate(folders):
        patient_id = folder.rsplit("_", 1)[0]
        prng = np.random.default_rng([seed, index])
        anatomy = random_anatomy(prng)
        lesion = random_lesion(prng, kind="low_grade_glioma")
        count = int(prng.integers(lo, hi + 1))
        run = _tumour_run(prng, count, tumor_fraction)
        copied = []  # a missing sequence is replaced by FLAIR, as in the real stacks
        if prng.random() < 0.15:
            copied = [str(prng.choice(("T1", "T1C+")))]
        (base / folder).mkdir()
        for position in range(count):
            number = position + 1
            in_run = position in run
            lesion_scale = 1.0
            if in_run and len(run) > 1:
                t = 2.0 * (position - run.start) / (len(run) - 1) - 1.0
                lesion_scale = 0.55 + 0.45 * math.sqrt(1.0 - t * t)
            image, mask = phantom_slice(prng, size=image_size, anatomy=anatomy,
                                        slice_pos=(position + 0.5) / count, lesion=lesion if in_run else None,
                                        lesion_scale=lesion_scale, contrasts=LGG_CHANNELS)
            pixels = _to_uint8(image)
            for name in copied:
                pixels[..., LGG_CHANNELS.index(name)] = pixels[..., 1]
            image_rel = f"kaggle_3m/{folder}/{folder}_{number}.tif"
            mask_rel = f"kaggle_3m/{folder}/{folder}_{number}_mask.tif"
            tifffile.imwrite(root / image_rel, pixels, photometric="rgb", metadata=None)
            tifffile.imwrite(root / mask_rel, mask.astype(np.uint8) * 255, photometric="minisblack",
                             metadata=None)
            area = int(mask.sum())
            slices.append({"path": image_rel, "mask_path": mask_rel, "patient_id": patient_id,
                           "slice_index": number, "label": int(area > 0),
                           "label_name": "tumor" if area else "no_tumor", "has_tumor": area > 0,
                           "height": image_size, "width": image_size, "mask_area_px": area,
                           "flair_copied_into": list(copied)})
        patient_truth.append({"patient_id": patient_id, "folder": folder, "slices": count,
                              "tumor_slices": [i + 1 for i in run], "flair_copied_into": copied})
    if data_csv:
        _write_lgg_csv(base / "data.csv", rng, [p["patient_id"] for p in patient_truth])
    if duplicate_copy:
        shutil.copytree(base, root / "lgg-mri-segmentation" / "kaggle_3m")
    return _finish("lgg", root, slices, [], patients=patient_truth)


def write_figshare(output: str | os.PathLike, *, patients: int = 12, seed: int = 0, image_size: int = 512,
                   slices_per_patient: tuple[int, int] = (6, 14),
                   small_numbers: Sequence[int] = FIGSHARE_SMALL_NUMBERS, folds: int = 5) -> dict:
    """Write the figshare layout: ``1.mat`` ... ``N.mat`` (MATLAB v7.3 = HDF5 with a 512-byte MATLAB userblock,
    struct ``cjdata``: ``label`` (1, 1) float64 1/2/3, ``PID`` (len, 1) uint16 char codes, ``image`` int16
    stored transposed, ``tumorBorder`` (1, 2k) float64 ``[x1, y1, ...]`` with x = column, y = row, 1-based
    MATLAB pixel coordinates of the mask's border pixels, ``tumorMask`` uint8 stored transposed), ``cvind.mat``
    (``cvind`` (1, N) float64, the patient-wise fold 1..``folds``) and ``README.txt``.

    Each patient has one class (classes cycle over patients, so 3 patients cover all three); files are
    numbered consecutively patient by patient in a shuffled patient order. Numbers in ``small_numbers`` get a
    256x256 image instead of ``image_size`` (the real dataset's quirk). Every slice has a tumour."""
    _check_int("patients", patients, minimum=1)
    _check_int("seed", seed, minimum=0)
    _check_int("image_size", image_size, minimum=MIN_IMAGE_SIZE)
    lo, hi = _check_range("slices_per_patient", slices_per_patient, minimum=1)
    _check_int("folds", folds, minimum=2)
    small = _check_numbers("small_numbers", small_numbers)
    import h5py

    root = _prepare_output(output)
    rng = np.random.default_rng(seed)
    labels = rng.permutation([(i % 3) + 1 for i in range(patients)])
    pids = _unique_codes(rng, patients, lambda r: str(int(r.integers(100000, 1000000))))
    order = rng.permutation(patients)
    fold_of = {int(p): (rank % folds) + 1 for rank, p in enumerate(rng.permutation(patients))}
    kinds = {1: "meningioma", 2: "glioma", 3: "pituitary"}
    slices: list[dict] = []
    patient_truth: list[dict] = []
    fold_column: list[float] = []
    number = 0
    for p in order:
        p = int(p)
        prng = np.random.default_rng([seed, p])
        anatomy = random_anatomy(prng)
        label = int(labels[p])
        lesion = random_lesion(prng, kind=kinds[label])
        count = int(prng.integers(lo, hi + 1))
        scale = float(prng.uniform(900, 2000))  # scanner units of full scale
        start = float(prng.uniform(0.35, 0.5))
        first = number + 1
        for position in range(count):
            number += 1
            side = 256 if number in small else image_size
            t = 0.0 if count == 1 else 2.0 * position / (count - 1) - 1.0
            image, mask = phantom_slice(prng, size=side, anatomy=anatomy,
                                        slice_pos=min(1.0, start + 0.03 * position), lesion=lesion,
                                        lesion_scale=0.6 + 0.4 * math.sqrt(1.0 - t * t), contrasts=("T1C+",))
            intensities = np.round(image[..., 0] * scale).astype(np.int16)
            rel = f"{number}.mat"
            _write_figshare_mat(h5py, root / rel, label=label, patient_id=pids[p], image=intensities,
                                mask=mask, created=_matlab_date(prng))
            fold_column.append(float(fold_of[p]))
            area = int(mask.sum())
            slices.append({"path": rel, "mask_path": None, "mask_key": "cjdata/tumorMask",
                           "patient_id": pids[p], "slice_index": number, "file_number": number, "label": label,
                           "label_name": FIGSHARE_LABELS[label], "has_tumor": area > 0, "height": side,
                           "width": side, "mask_area_px": area, "fold": fold_of[p]})
        patient_truth.append({"patient_id": pids[p], "label": label, "label_name": FIGSHARE_LABELS[label],
                              "fold": fold_of[p], "files": list(range(first, number + 1))})
    with h5py.File(root / "cvind.mat", "w", userblock_size=512) as handle:
        _mat_dataset(handle, "cvind", np.asarray([fold_column], dtype=np.float64), "double")
    _stamp_matlab_header(root / "cvind.mat", _matlab_date(rng))
    (root / "README.txt").write_text(_FIGSHARE_README.format(count=number, patients=patients), encoding="utf-8")
    return _finish("figshare", root, slices, [], patients=patient_truth,
                   classes=[FIGSHARE_LABELS[k] for k in (1, 2, 3)], folds=folds)


def write_folders(output: str | os.PathLike, *, patients: int | None = None, seed: int = 0,
                  images_per_class: int = 6, classes: Sequence[str] | None = None, split_dirs: bool = False,
                  size_range: tuple[int, int] = (40, 80)) -> dict:
    """Write a folder-per-class JPEG set: ``<class>/<id>_big_gallery.jpeg`` (about 1 in 10 files each
    ``.jpg``, ``.png``, ``.webp``), with ``split_dirs`` under ``Training/`` (about 80%) and ``Testing/``.

    ``classes`` defaults to FOLDER_CLASSES_44C (kept verbatim: spaces, ``+``); FOLDER_CLASSES_BINARY and
    FOLDER_CLASSES_4 work too. The lesion kind comes from the class name (see lesion_kind_for_class), the
    contrast from its suffix (T1/T1C+/T2/FLAIR, default T1C+). Image sides are drawn from ``size_range``
    (inclusive; square or not, the head centred on a black canvas); about 1 in 5 images is saved grayscale
    (mode L), the rest RGB. The files carry no patient id (truth ``patient_id`` None); with ``patients`` set,
    the images are nevertheless drawn from that many hidden subjects (truth ``subject``), as in the real sets
    where one patient gives several images and image-level splits leak."""
    if patients is not None:
        _check_int("patients", patients, minimum=1)
    _check_int("seed", seed, minimum=0)
    _check_int("images_per_class", images_per_class, minimum=1)
    _check_bool("split_dirs", split_dirs)
    size_lo, size_hi = _check_range("size_range", size_range, minimum=MIN_IMAGE_SIZE)
    class_names = list(FOLDER_CLASSES_44C if classes is None else _check_classes(classes))
    from PIL import Image

    root = _prepare_output(output)
    rng = np.random.default_rng(seed)
    subjects = None
    if patients is not None:
        subjects = [random_anatomy(np.random.default_rng([seed, 1_000_000 + s])) for s in range(patients)]
    items = [(label, k) for label in range(len(class_names)) for k in range(images_per_class)]
    slot = rng.permutation(len(items))  # spreads extensions and grayscale evenly over the set
    extensions = ("jpeg",) * 7 + ("jpg", "png", "webp")
    slices: list[dict] = []
    for index, (label, k) in enumerate(items):
        name = class_names[label]
        irng = np.random.default_rng([seed, label, k])
        subject = None
        if subjects is None:
            anatomy = random_anatomy(irng)
        else:
            subject = int(irng.integers(len(subjects)))
            anatomy = replace(subjects[subject], rotation=subjects[subject].rotation + irng.uniform(-0.05, 0.05))
        kind = lesion_kind_for_class(name, irng)
        contrast = contrast_for_class(name)
        height = int(irng.integers(size_lo, size_hi + 1))
        width = height if irng.random() < 0.5 else int(irng.integers(size_lo, size_hi + 1))
        side = min(height, width)
        lesion = random_lesion(irng, kind=kind) if kind else None
        image, mask = phantom_slice(irng, size=side, anatomy=anatomy, slice_pos=float(irng.uniform(0.35, 0.65)),
                                    lesion=lesion, lesion_scale=float(irng.uniform(0.7, 1.0)), contrasts=(contrast,))
        canvas = np.zeros((height, width), dtype=np.uint8)
        top, left = (height - side) // 2, (width - side) // 2
        canvas[top:top + side, left:left + side] = _to_uint8(image[..., 0])
        grayscale = slot[index] % 5 == 4
        ext = extensions[slot[index] % len(extensions)]
        pixels = canvas if grayscale else np.repeat(canvas[..., None], 3, axis=-1)
        split = None
        folder = name
        if split_dirs:
            n_test = int(round(0.2 * images_per_class)) if images_per_class >= 2 else 0
            split = "Testing" if k >= images_per_class - n_test else "Training"
            folder = f"{split}/{name}"
        (root / folder).mkdir(parents=True, exist_ok=True)
        rel = f"{folder}/{irng.bytes(12).hex()}_big_gallery.{ext}"
        _save_pil(Image, root / rel, pixels, ext)
        area = int(mask.sum())
        slices.append({"path": rel, "mask_path": None, "patient_id": None, "slice_index": None, "label": label,
                       "label_name": name, "has_tumor": area > 0, "height": height, "width": width,
                       "mask_area_px": area, "split": split, "contrast": contrast, "kind": kind,
                       "mode": "L" if grayscale else "RGB", "subject": subject})
    return _finish("folders", root, slices, [], classes=class_names)


def write_archive(output: str | os.PathLike, *, seed: int = 0, count: int = 24, image_size: int = 64,
                  broken: bool = True, formats: Sequence[str] = ARCHIVE_FORMATS, style: str = "mixed") -> dict:
    """Write an unlabelled folder of ``count`` scans for the scoring job, ``scan_<i>.<ext>`` in the root and
    (every third) in ``batch_02/``, cycling over ``formats``: ``tif`` LGG-style (H, W, 3) uint8, ``jpg``
    grayscale JPEG, ``png`` and ``webp`` RGB, ``mat`` figshare-style v7.3 (always with a tumour, as in
    figshare), ``dcm`` DICOM MR MONOCHROME2 (uint16 or int16 stored values with a non-trivial
    RescaleSlope/RescaleIntercept; modality values = stored * slope + intercept). About half the scans have a
    lesion; the truth entry keeps its exact ``mask``. With ``broken``, adds ``corrupt.tif`` (valid TIFF header,
    then garbage), ``empty.png`` (0 bytes), ``notes.txt`` (text) and ``truncated.jpg`` (first half of a JPEG),
    listed under ``broken`` with kinds corrupt_tiff, empty, text, truncated_jpeg.

    ``style="lgg"`` makes every scan an LGG-style low-grade-glioma slice (pre-contrast, FLAIR, post-contrast):
    3-channel for tif/png/webp/jpg, the FLAIR channel alone for the single-channel formats (mat, dcm), so a
    model trained on LGG data scores an archive of its own kind of scans (the demo's archive)."""
    if style not in ("mixed", "lgg"):
        raise ValueError(f"style must be 'mixed' or 'lgg', got {style!r}")
    _check_int("seed", seed, minimum=0)
    _check_int("count", count, minimum=1)
    _check_int("image_size", image_size, minimum=MIN_IMAGE_SIZE)
    _check_bool("broken", broken)
    formats = tuple(formats) if not isinstance(formats, str) else (formats,)
    bad = [f for f in formats if f not in ARCHIVE_FORMATS]
    if bad or not formats or len(set(formats)) != len(formats):
        raise ValueError(f"formats must be distinct values from {ARCHIVE_FORMATS}, got {formats!r}")
    import h5py
    import tifffile
    from PIL import Image

    root = _prepare_output(output)
    rng = np.random.default_rng(seed)
    slot = rng.permutation(count)
    tumour_slot = rng.permutation(count)
    slices: list[dict] = []
    for index in range(count):
        fmt = formats[slot[index] % len(formats)]
        has_lesion = (fmt == "mat" and style == "mixed") or tumour_slot[index] % 2 == 0
        irng = np.random.default_rng([seed, index])
        anatomy = random_anatomy(irng)
        folder = "batch_02/" if index % 3 == 2 else ""
        rel = f"{folder}scan_{index:04d}.{fmt}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] = {"path": rel, "format": fmt}
        slice_pos = float(irng.uniform(0.35, 0.65))
        if fmt == "mat":
            label = int(irng.integers(1, 4))
        if fmt == "tif" or style == "lgg":
            kind, contrasts = "low_grade_glioma", LGG_CHANNELS
        elif fmt == "mat":
            kind, contrasts = {1: "meningioma", 2: "glioma", 3: "pituitary"}[label], ("T1C+",)
        else:
            kind, contrasts = str(irng.choice(TUMOR_KINDS)), (str(irng.choice(CONTRASTS)),)
        lesion = random_lesion(irng, kind=kind) if has_lesion else None
        image, mask = phantom_slice(irng, size=image_size, anatomy=anatomy, slice_pos=slice_pos, lesion=lesion,
                                    contrasts=contrasts)
        single = image[..., 1] if style == "lgg" else image[..., 0]  # lgg: the FLAIR channel
        if fmt == "tif":
            tifffile.imwrite(root / rel, _to_uint8(image), photometric="rgb", metadata=None)
        elif fmt == "mat":
            scale = float(irng.uniform(900, 2000))
            _write_figshare_mat(h5py, root / rel, label=label, patient_id=str(int(irng.integers(100000, 1000000))),
                                image=np.round(single * scale).astype(np.int16), mask=mask,
                                created=_matlab_date(irng))
            entry["figshare_label"] = label
        elif fmt == "dcm":
            entry.update(_write_dicom(root / rel, irng, single, seed=seed, index=index,
                                      contrast=contrasts[1] if style == "lgg" else contrasts[0],
                                      signed=index % 2 == 1))
        elif style == "lgg":
            _save_pil(Image, root / rel, _to_uint8(image), fmt)
        else:
            gray = _to_uint8(image[..., 0])
            pixels = gray if fmt == "jpg" else np.repeat(gray[..., None], 3, axis=-1)
            _save_pil(Image, root / rel, pixels, fmt)
        area = int(mask.sum())
        entry.update({"mask_path": None, "patient_id": None, "slice_index": None, "label": int(area > 0),
                      "label_name": "tumor" if area else "no_tumor", "has_tumor": area > 0,
                      "height": image_size, "width": image_size, "mask_area_px": area,
                      "contrast": "+".join(contrasts), "kind": kind if area else None, "mask": mask})
        slices.append(entry)
    broken_files: list[dict] = []
    if broken:
        broken_files = _write_broken(root, rng, Image)
    return _finish("archive", root, slices, broken_files)


# --------------------------------------------------------------------------------------------------------
# Helpers: validation, names, file formats
# --------------------------------------------------------------------------------------------------------

def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_range(name: str, value: Any, *, minimum: int) -> tuple[int, int]:
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    if not ok or not minimum <= value[0] <= value[1]:
        raise ValueError(f"{name} must be (low, high) integers with {minimum} <= low <= high, got {value!r}")
    return int(value[0]), int(value[1])


def _check_numbers(name: str, value: Any) -> frozenset[int]:
    if isinstance(value, (str, bytes)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value):
        raise ValueError(f"{name} must be a collection of file numbers >= 1, got {value!r}")
    return frozenset(int(v) for v in value)


def _check_classes(classes: Any) -> list[str]:
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"classes must be a sequence of folder names, got {classes!r}")
    names = list(classes)
    bad = [c for c in names if not c.strip() or "/" in c or "\\" in c or c in (".", "..")
           or c.lower() in ("training", "testing")]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct non-empty folder names (no '/', not Training/Testing), "
                         f"got {classes!r}")
    return names


def _prepare_output(output: Any) -> Path:
    if not isinstance(output, (str, os.PathLike)) or not str(output):
        raise ValueError(f"output must be a folder path, got {output!r}")
    root = Path(output)
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"output {str(root)!r} exists and is not a folder")
        if any(root.iterdir()):
            raise FileExistsError(f"output folder {str(root)!r} is not empty: refusing to mix datasets")
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def _finish(layout: str, root: Path, slices: list[dict], broken: list[dict], **extra: Any) -> dict:
    files = sum(1 for path in root.rglob("*") if path.is_file())
    log.info("wrote synthetic %s dataset: %d files, %d slices (%d with tumour) to %s", layout, files,
             len(slices), sum(s["has_tumor"] for s in slices), root)
    return {"layout": layout, "root": str(root), "files": files, "slices": slices, "broken": broken, **extra}


def _unique_codes(rng: np.random.Generator, count: int, draw) -> list[str]:
    codes: list[str] = []
    while len(codes) < count:
        code = draw(rng)
        if code not in codes:
            codes.append(code)
    return codes


def _lgg_folder_names(rng: np.random.Generator, patients: int) -> list[str]:
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))

    def draw(r: np.random.Generator) -> str:
        institution = str(r.choice(LGG_INSTITUTIONS))
        if r.random() < 0.6:
            code = f"{int(r.integers(1000, 10000))}"  # e.g. TCGA_CS_4941
        else:
            code = "A" + "".join(r.choice(alphabet, 3))  # e.g. TCGA_DU_A5TW
        return f"TCGA_{institution}_{code}"

    patient_ids = _unique_codes(rng, patients, draw)
    folders = []
    for patient_id in patient_ids:
        year, month, day = int(rng.integers(1995, 2006)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        folders.append(f"{patient_id}_{year:04d}{month:02d}{day:02d}")
    return folders


def _tumour_run(rng: np.random.Generator, count: int, tumor_fraction: float) -> range:
    if tumor_fraction <= 0.0:
        return range(0)
    length = int(round(tumor_fraction * count + rng.uniform(-1.0, 1.0)))
    length = min(count, max(1, length))
    middle = count / 2.0 + rng.uniform(-count / 8.0, count / 8.0)
    start = int(round(middle - length / 2.0))
    margin = 1 if count - length >= 2 else 0  # real runs start after the first slice and end before the last
    start = min(max(start, margin), count - length - margin)
    return range(start, start + length)


def _write_lgg_csv(path: Path, rng: np.random.Generator, patient_ids: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LGG_CSV_COLUMNS)
        for patient_id in sorted(patient_ids):
            row = [patient_id]
            for column in LGG_CSV_COLUMNS[1:]:
                low, high, blank = _LGG_CSV_CODES[column]
                value = int(rng.integers(low, high + 1))
                # pandas wrote the real file, so columns with blanks hold floats ("2.0").
                row.append("" if rng.random() < blank else f"{float(value):.1f}")
            writer.writerow(row)


_FIGSHARE_README = """\
Synthetic brain tumour dataset in the layout of the figshare T1-weighted CE-MRI set.

It contains {count} T1-weighted contrast-enhanced slices from {patients} synthetic patients. Every slice
has a tumour of one of three kinds: meningioma, glioma or pituitary tumour. Each slice is a MATLAB v7.3
file (HDF5) holding a struct cjdata with the fields:

cjdata.label: 1 for meningioma, 2 for glioma, 3 for pituitary tumour
cjdata.PID: patient ID
cjdata.image: image data
cjdata.tumorBorder: coordinates of points on the tumour border, [x1, y1, x2, y2, ...]
cjdata.tumorMask: binary image, 1 marks the tumour region

cvind.mat holds cvind, the patient-wise cross-validation fold of every file (file i has fold cvind(i)).
"""


def _matlab_date(rng: np.random.Generator) -> str:
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return (f"{days[int(rng.integers(7))]} {months[int(rng.integers(12))]} {int(rng.integers(1, 29)):2d} "
            f"{int(rng.integers(24)):02d}:{int(rng.integers(60)):02d}:{int(rng.integers(60)):02d} "
            f"{int(rng.integers(2014, 2016))}")


def _stamp_matlab_header(path: Path, created: str) -> None:
    """Fill the 512-byte HDF5 userblock with the MATLAB v7.3 header: 116 bytes of text, 8 bytes of subsystem
    offset, version 0x0200 and the endian indicator 'IM', zero padding."""
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 .".encode("ascii")
    header = text.ljust(116, b" ") + b" " * 8 + struct.pack("<H", 0x0200) + b"IM"
    with open(path, "r+b") as handle:
        handle.write(header.ljust(512, b"\x00"))


def _mat_dataset(parent, name: str, data: np.ndarray, matlab_class: str):
    dataset = parent.create_dataset(name, data=data, track_times=False)
    dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class.encode("ascii"))
    if matlab_class == "char":
        dataset.attrs["MATLAB_int_decode"] = np.int32(2)
    return dataset


def _border_points(mask: np.ndarray) -> np.ndarray:
    """Flat [x1, y1, x2, y2, ...] (x = column, y = row, 1-based) of the mask's border pixels, ordered by
    angle around the centroid so that consecutive points trace the outline."""
    border = mask & ~_erode(mask, 1)
    rows, cols = np.nonzero(border)
    if rows.size == 0:
        return np.zeros(0, dtype=np.float64)
    order = np.argsort(np.arctan2(rows - rows.mean(), cols - cols.mean()), kind="stable")
    return np.stack([cols[order] + 1.0, rows[order] + 1.0], axis=1).ravel().astype(np.float64)


def _write_figshare_mat(h5py, path: Path, *, label: int, patient_id: str, image: np.ndarray, mask: np.ndarray,
                        created: str) -> None:
    with h5py.File(path, "w", userblock_size=512) as handle:
        group = handle.create_group("cjdata")
        group.attrs["MATLAB_class"] = np.bytes_(b"struct")
        _mat_dataset(group, "label", np.array([[float(label)]], dtype=np.float64), "double")
        codes = np.array([ord(c) for c in patient_id], dtype=np.uint16).reshape(-1, 1)
        _mat_dataset(group, "PID", codes, "char")
        _mat_dataset(group, "image", np.ascontiguousarray(image.T), "int16")  # MATLAB is column-major
        _mat_dataset(group, "tumorBorder", _border_points(mask).reshape(1, -1), "double")
        _mat_dataset(group, "tumorMask", np.ascontiguousarray(mask.astype(np.uint8).T), "logical")
    _stamp_matlab_header(path, created)


def _save_pil(Image, path: Path, pixels: np.ndarray, ext: str) -> None:
    fmt = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    options = {"JPEG": {"quality": 90}, "PNG": {}, "WEBP": {"quality": 90, "method": 4}}[fmt]
    Image.fromarray(pixels).save(path, format=fmt, **options)


def _write_dicom(path: Path, rng: np.random.Generator, image: np.ndarray, *, seed: int, index: int,
                 contrast: str, signed: bool) -> dict:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID, generate_uid

    scale = float(rng.uniform(900, 2000))
    # Stored values use the whole integer range of their type; the rescale maps them back to scanner units.
    slope, intercept = (2.0, 100.0) if signed else (0.5, -200.0)
    stored = np.round((image * scale - intercept) / slope).astype(np.int16 if signed else np.uint16)

    def uid(role: str) -> str:
        return generate_uid(entropy_srcs=["classeg-synthetic", str(seed), str(index), role])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.FrameOfReferenceUID = uid("frame")
    ds.Modality = "MR"
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = f"SYN{seed:03d}{index:04d}"
    ds.StudyDate = f"{int(rng.integers(2005, 2020))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    ds.SeriesDescription = f"AX {contrast}"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.InstanceNumber = index + 1
    ds.MagneticFieldStrength = "1.5"
    ds.SliceThickness = "5"
    ds.PixelSpacing = ["0.9375", "0.9375"]
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "US"
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return {"rescale_slope": slope, "rescale_intercept": intercept, "stored_dtype": str(stored.dtype)}


def _write_broken(root: Path, rng: np.random.Generator, Image) -> list[dict]:
    # A valid little-endian TIFF header whose first-IFD offset points into random bytes.
    garbage = rng.integers(0, 256, size=2048, dtype=np.uint8).tobytes()
    (root / "corrupt.tif").write_bytes(b"II*\x00" + struct.pack("<I", 8) + b"\xff\xff" + garbage)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("scans exported from the PACS on request; ask radiology for the rest\n",
                                    encoding="utf-8")
    image, _ = phantom_slice(rng, size=64, anatomy=random_anatomy(rng), slice_pos=0.5, contrasts=("T2",))
    buffer = io.BytesIO()
    Image.fromarray(_to_uint8(image[..., 0])).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return [{"path": "corrupt.tif", "kind": "corrupt_tiff"}, {"path": "empty.png", "kind": "empty"},
            {"path": "notes.txt", "kind": "text"}, {"path": "truncated.jpg", "kind": "truncated_jpeg"}]
