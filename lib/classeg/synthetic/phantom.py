"""The phantom anatomy model: a learnable axial head section drawn from a few shapes, no template needed.

An axial head section (bright scalp ring, dark bone, dura/CSF band, cortex with gyri and sulci, white matter,
ventricles and deep grey matter), varied per patient (head size, aspect, rotation, position, intensity gain
and gamma, noise level) and along a patient's stack (the head is smaller at the ends, the ventricles only
appear in the middle), rendered in T1, T1C+ (contrast-enhanced), T2 or FLAIR, with Rician-like noise.
Positive slices carry a lesion: an irregular blob (union of a few ellipses with a noisy boundary) whose mask
is exactly the pixels rendered as lesion. Lesion kinds differ by place, size and shape so tumour types are
learnable:

- ``low_grade_glioma`` (LGG layout): inside a hemisphere, brightest in FLAIR, dark in T1, not enhancing;
- ``glioma``: irregular, inside a hemisphere, enhancing rim in T1C+;
- ``glioblastoma``: large, necrotic core (dark in T1/T1C+, bright in T2) with a thick enhancing rim;
- ``meningioma``: rounded, at the brain periphery against the skull, homogeneous enhancement;
- ``pituitary``: small, at the centre-bottom (sellar) region of the image.

Contrasts look different as on real scans: T1 dark CSF, T2 bright CSF, FLAIR dark CSF with bright lesions,
T1C+ like T1 plus a bright enhancing dura ring and bright lesion rims.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from classeg.synthetic.anatomies import SliceSpec
from classeg.synthetic.checks import check_int
from classeg.synthetic.pixels import erode, smooth_noise

CONTRASTS = ("T1", "T1C+", "T2", "FLAIR")
LESION_KINDS = ("low_grade_glioma", "glioma", "glioblastoma", "meningioma", "pituitary")
TUMOR_KINDS = ("glioma", "glioblastoma", "meningioma", "pituitary")  # what a "yes"/unknown class may show
MIN_IMAGE_SIZE = 16

# Tissue labels of the phantom (indices into TISSUES) and their intensity in [0, 1] per contrast.
TISSUES = ("background", "scalp", "bone", "dura", "csf", "gm", "wm")
_BG, _SCALP, _BONE, _DURA, _CSF, _GM, _WM = range(len(TISSUES))
TISSUE_INTENSITY = {
    #                  bg    scalp bone  dura  csf   gm    wm
    "T1": np.array([0.00, 0.85, 0.10, 0.10, 0.10, 0.42, 0.62]),
    "T1C+": np.array([0.00, 0.88, 0.10, 0.80, 0.12, 0.45, 0.63]),  # enhancing dura: the bright inner ring
    "T2": np.array([0.00, 0.50, 0.08, 0.95, 0.95, 0.58, 0.36]),
    "FLAIR": np.array([0.00, 0.60, 0.08, 0.06, 0.06, 0.52, 0.40]),
}
# Lesion (core, rim) intensity per kind and contrast; the rim is the outer quarter of the lesion radius.
LESION_INTENSITY = {
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
    check_int("size", size, minimum=MIN_IMAGE_SIZE)
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
        rim = mask & ~erode(mask, rim_px)
    texture = 0.05 * smooth_noise(rng, (size, size), 0.8) + 0.06 * smooth_noise(rng, (size, size), size / 6)
    lesion_texture = 0.06 * smooth_noise(rng, (size, size), 1.5)
    channels = []
    for contrast in contrasts:
        intensity = TISSUE_INTENSITY[contrast][labels]
        if lesion is not None:
            core_value, rim_value = LESION_INTENSITY[lesion.kind][contrast]
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
    boundary = smooth_noise(rng, dist.shape, max(1.0, 0.4 * radius * frame.brain_px))
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


class PhantomModel:
    """The phantom as an anatomy model (see :mod:`classeg.synthetic.anatomies`): planes are the specs
    themselves, each rendered by :func:`phantom_slice`."""

    name = "phantom"

    def random_head(self, rng: np.random.Generator) -> Anatomy:
        return random_anatomy(rng)

    def jitter(self, head: Anatomy, rng: np.random.Generator) -> Anatomy:
        return replace(head, rotation=head.rotation + rng.uniform(-0.05, 0.05))

    def random_lesion(self, rng: np.random.Generator, *, kind: str) -> Lesion:
        return random_lesion(rng, kind=kind)

    def plan(self, head: Anatomy, lesion: Lesion | None, specs: Sequence[SliceSpec]) -> list[SliceSpec]:
        return list(specs)

    def render(self, rng: np.random.Generator, *, size: int, head: Anatomy, lesion: Lesion | None,
               plane: SliceSpec, contrasts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        with_lesion = lesion is not None and plane.lesion_scale is not None
        return phantom_slice(rng, size=size, anatomy=head, slice_pos=plane.slice_pos,
                             lesion=lesion if with_lesion else None,
                             lesion_scale=plane.lesion_scale if with_lesion else 1.0, contrasts=contrasts)

    def slice_info(self, head: Anatomy, plane: SliceSpec, size: int) -> dict:
        return {}
