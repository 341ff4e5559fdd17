"""The ``mni`` anatomy model: axial slices of real anatomy, the MNI152 2009a T1 template (ICBM 2009a nonlinear
symmetric, 1 mm, skull-stripped) with its grey- and white-matter maps, as nilearn ships them inside its wheel
(``nilearn/datasets/data/``). They are read with nibabel; nothing is downloaded and nilearn itself is never
imported. Install with the ``synth`` extra: ``pip install 'classeg[synth]'``.

Per patient: the head sits in the scanner with a small affine jitter (rotations about the three axes, scale,
shift), under a smooth multiplicative bias field, with its own gain, gamma and Rician noise level. Contrasts:
inside the brain T1 (and T1C+) keep the template's own intensity, T2 and FLAIR mix the grey/white-matter
fractions (CSF is the rest of the brain) with the phantom's tissue intensities; outside the brain a dura/CSF
band, bone and scalp follow the distance from the brain surface. Lesions are 3-D blobs, star-shaped about
their centre (an ellipsoid whose radius varies smoothly with direction), with every radius between 4.5 and
11 mm: the blob holds a 9 mm ball and fits in a 22 mm one, so every diameter lies in 9-22 mm. Intensities
per kind follow the phantom (the LGG kind is FLAIR-hyperintense); a slice's mask is exactly the pixels where
the lesion replaces the tissue intensity.

Frames: template coordinates are the template's world millimetres (RAS: +x right, +y anterior, +z up).
The scanner frame is centred on the head (``HEAD_CENTRE_MM`` in the template when unjittered); slices are
planes of constant scanner z. Images are radiological: row 0 anterior, column 0 the patient's right.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from classeg.synthetic.anatomies import SliceSpec
from classeg.synthetic.checks import check_int
from classeg.synthetic.phantom import (
    CONTRASTS, LESION_INTENSITY, LESION_KINDS, MIN_IMAGE_SIZE, TISSUE_INTENSITY, TISSUES,
)
from classeg.synthetic.pixels import smooth_noise

TEMPLATE_NAME = "mni_icbm152_{map}_tal_nlin_sym_09a_converted.nii.gz"
MISSING_EXTRA = ("anatomy 'mni' needs the MNI152 template that nilearn ships in its wheel, read with nibabel "
                 "and scipy: install the synth extra, pip install 'classeg[synth]'")
LESION_DIAMETER_MM = (9.0, 22.0)
HEAD_CENTRE_MM = (0.0, -18.0, 15.0)
# Scanner heights (mm from the head centre) that slice_pos 0 and 1 map to: cerebellum to vertex.
_Z_BOTTOM, _Z_TOP = -55.0, 55.0
_SPACING_MM = (1.0, 6.0)  # slice spacing a stack through a lesion may take
_BRAIN_T1 = 15  # template T1 above this is brain (CSF included); below is background
_RIM = 0.75  # the rim is the outer quarter of the lesion radius
# Per kind: radius range (mm, before the border), border irregularity, where the centre goes.
_LESION_SHAPE = {
    "low_grade_glioma": ((6.0, 10.0), 0.25, "deep"),
    "glioma": ((6.0, 10.0), 0.30, "deep"),
    "glioblastoma": ((8.0, 11.0), 0.20, "deep"),
    "meningioma": ((6.0, 10.0), 0.06, "surface"),
    "pituitary": ((5.5, 7.5), 0.05, "sella"),
}
# How far past the brain surface (mm, signed distance) a lesion of each place may reach: gliomas stay in
# the brain, a meningioma fills the dura band it grows from, the sella lies outside the brain altogether.
_ALLOWED_DEPTH = {"deep": 0.0, "surface": -2.5, "sella": None}
_SELLA_MM = (0.0, 2.0, -28.0)  # below the hypothalamus, at the midline
# Outer edges (mm from the brain surface) of the dura band, bone and scalp; 1 mm ramps between them.
_LAYERS_MM = (3.0, 8.0, 13.0)


@dataclass(frozen=True)
class Template:
    """The template volumes (X, Y, Z), uint8 as shipped, and what the model derives from them once."""

    path: str
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    world_to_voxel: np.ndarray  # (4, 4): template mm -> voxel indices
    voxel_mm: tuple[float, float, float]
    white_matter_t1: float  # median T1 where white matter is certain: the scale of the T1 channel
    depth: np.ndarray  # float32 signed distance to the brain surface in mm (> 0 inside), on a 2x coarser grid
    world_to_coarse: np.ndarray  # (4, 4): template mm -> indices of ``depth``
    deep_centres: np.ndarray  # (N, 3) mm: deep white matter of either hemisphere, room for the largest lesion
    surface_centres: np.ndarray  # (M, 3) mm: just inside the brain surface


def template_path(tissue_map: str = "t1") -> Path:
    """The shipped file of ``tissue_map`` ('t1', 'gm' or 'wm') inside the installed nilearn package."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(MISSING_EXTRA)
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / TEMPLATE_NAME.format(map=tissue_map)
    if not path.is_file():
        raise FileNotFoundError(f"the installed nilearn has no {path.name} (looked for {path}); "
                                f"reinstall the synth extra: pip install 'classeg[synth]'")
    return path


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Read the template once per process (volumes are read-only, shared by every writer call)."""
    try:
        import nibabel
        from scipy import ndimage
    except ImportError as err:
        raise ImportError(MISSING_EXTRA) from err
    images = {name: nibabel.load(str(template_path(name))) for name in ("t1", "gm", "wm")}
    volumes = {name: np.asarray(image.dataobj, dtype=np.uint8) for name, image in images.items()}
    affine = images["t1"].affine
    voxel_mm = tuple(float(z) for z in images["t1"].header.get_zooms()[:3])
    coarse = volumes["t1"][::2, ::2, ::2] > _BRAIN_T1
    coarse = ndimage.binary_fill_holes(coarse)
    sampling = [2 * z for z in voxel_mm]
    depth = (ndimage.distance_transform_edt(coarse, sampling=sampling)
             - ndimage.distance_transform_edt(~coarse, sampling=sampling)).astype(np.float32)
    coarse_affine = affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    index = np.indices(coarse.shape).reshape(3, -1).T
    world = index @ coarse_affine[:3, :3].T + coarse_affine[:3, 3]
    flat_depth, flat_wm = depth.ravel(), volumes["wm"][::2, ::2, ::2].ravel()
    largest_radius = LESION_DIAMETER_MM[1] / 2
    deep = ((flat_wm > 128) & (flat_depth >= largest_radius + 2.0) & (np.abs(world[:, 0]) >= 12.0)
            & (world[:, 2] >= -5.0) & (world[:, 2] <= 50.0))
    surface = (flat_depth >= 1.0) & (flat_depth <= 4.0) & (world[:, 2] >= 5.0) & (world[:, 2] <= 60.0)
    white = volumes["wm"] > 230
    return Template(path=str(template_path("t1")), t1=volumes["t1"], gm=volumes["gm"], wm=volumes["wm"],
                    world_to_voxel=np.linalg.inv(affine), voxel_mm=voxel_mm,
                    white_matter_t1=float(np.median(volumes["t1"][white])), depth=depth,
                    world_to_coarse=np.linalg.inv(coarse_affine), deep_centres=world[deep],
                    surface_centres=world[surface])


@dataclass(frozen=True)
class MniHead:
    """One patient in the scanner. Template mm = ``HEAD_CENTRE_MM + matrix @ scanner_mm + shift_mm`` with
    ``matrix`` = ``rotation`` (yaw about z, pitch about x, roll about y, radians) times per-axis ``scale``.
    ``fov_mm`` is the image side in mm, ``layer_scale`` scales the dura/bone/scalp thickness, ``bias`` the
    terms (direction x, y, z, wavelength mm, phase, amplitude) of the log bias field in scanner mm, and
    ``gain``/``gamma``/``noise_sigma`` map intensity as in the phantom."""

    yaw: float
    pitch: float
    roll: float
    scale: tuple[float, float, float]
    shift_mm: tuple[float, float, float]
    fov_mm: float
    layer_scale: float
    bias: tuple[tuple[float, float, float, float, float, float], ...]
    gain: float
    gamma: float
    noise_sigma: float

    @property
    def rotation(self) -> np.ndarray:
        cz, sz = math.cos(self.yaw), math.sin(self.yaw)
        cx, sx = math.cos(self.pitch), math.sin(self.pitch)
        cy, sy = math.cos(self.roll), math.sin(self.roll)
        rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
        rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
        ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
        return rz @ rx @ ry

    def to_template(self, scanner_mm: np.ndarray) -> np.ndarray:
        """(N, 3) scanner mm -> (N, 3) template mm."""
        matrix = self.rotation * np.asarray(self.scale)  # rotation @ diag(scale)
        return scanner_mm @ matrix.T + np.add(HEAD_CENTRE_MM, self.shift_mm)

    def to_scanner(self, template_mm: np.ndarray) -> np.ndarray:
        """(N, 3) template mm -> (N, 3) scanner mm (the exact inverse: diag(1 / scale) @ rotation.T)."""
        inverse = self.rotation.T / np.asarray(self.scale)[:, None]
        return (template_mm - np.add(HEAD_CENTRE_MM, self.shift_mm)) @ inverse.T


@dataclass(frozen=True)
class MniLesion:
    """A 3-D lesion in template mm: inside where the distance from ``centre_mm`` is below
    :meth:`radius_along` of the direction. ``axes`` (3x3 rows, unit) and ``semi`` (relative semi-axes, largest
    1) shape the ellipsoid, ``bumps`` (unit direction x, y, z, frequency, phase, weight) its irregular border;
    ``allowed_depth_mm`` keeps the mask where the brain's signed distance exceeds it (None: anywhere)."""

    kind: str
    centre_mm: tuple[float, float, float]
    radius_mm: float
    axes: tuple[tuple[float, float, float], ...]
    semi: tuple[float, float, float]
    bumps: tuple[tuple[float, float, float, float, float, float], ...]
    irregularity: float
    allowed_depth_mm: float | None

    def radius_along(self, directions: np.ndarray) -> np.ndarray:
        """Radius in mm along each (N, 3) unit direction, within LESION_DIAMETER_MM / 2."""
        along = directions @ np.asarray(self.axes).T
        ellipsoid = 1.0 / np.sqrt(np.sum((along / np.asarray(self.semi)) ** 2, axis=1))
        bumps = np.asarray(self.bumps)
        border = np.cos(bumps[:, 3] * (directions @ bumps[:, :3].T) + bumps[:, 4]) @ bumps[:, 5]
        radius = self.radius_mm * ellipsoid * (1.0 + self.irregularity * border / bumps[:, 5].sum())
        return np.clip(radius, LESION_DIAMETER_MM[0] / 2, LESION_DIAMETER_MM[1] / 2)


@dataclass(frozen=True)
class MniPlane:
    """An axial plane at scanner height ``z_mm``; ``lesion`` says whether the stack shows the lesion."""

    z_mm: float
    lesion: bool


class MniModel:
    """The anatomy model over the MNI152 template (see the module docstring); builds the template on
    construction, so a missing ``synth`` extra fails before any file is written."""

    name = "mni"

    def __init__(self) -> None:
        self.template = load_template()

    def random_head(self, rng: np.random.Generator) -> MniHead:
        bias = []
        for _ in range(3):
            direction = _unit(rng.standard_normal(3))
            bias.append((*direction, float(rng.uniform(180.0, 400.0)), float(rng.uniform(0, 2 * math.pi)),
                         float(rng.uniform(0.03, 0.08))))
        size = float(rng.uniform(0.92, 1.08))
        return MniHead(yaw=float(rng.uniform(-0.14, 0.14)), pitch=float(rng.uniform(-0.10, 0.10)),
                       roll=float(rng.uniform(-0.06, 0.06)),
                       scale=tuple(size * float(s) for s in rng.uniform(0.96, 1.04, size=3)),
                       shift_mm=(float(rng.uniform(-6, 6)), float(rng.uniform(-6, 6)), float(rng.uniform(-3, 3))),
                       fov_mm=float(rng.uniform(200.0, 220.0)), layer_scale=float(rng.uniform(0.8, 1.25)),
                       bias=tuple(bias), gain=float(rng.uniform(0.85, 1.0)), gamma=float(rng.uniform(0.85, 1.2)),
                       noise_sigma=float(rng.uniform(0.012, 0.035)))

    def jitter(self, head: MniHead, rng: np.random.Generator) -> MniHead:
        return replace(head, yaw=head.yaw + float(rng.uniform(-0.05, 0.05)))

    def random_lesion(self, rng: np.random.Generator, *, kind: str) -> MniLesion:
        """A lesion of ``kind`` (one of LESION_KINDS): gliomas in the deep white matter of a hemisphere, a
        meningioma at the brain surface, a pituitary lesion at the sella."""
        if kind not in LESION_KINDS:
            raise ValueError(f"kind must be one of {LESION_KINDS}, got {kind!r}")
        (r_lo, r_hi), irregularity, place = _LESION_SHAPE[kind]
        if place == "sella":
            centre = np.add(_SELLA_MM, rng.uniform(-1.5, 1.5, size=3))
        else:
            candidates = self.template.deep_centres if place == "deep" else self.template.surface_centres
            centre = candidates[int(rng.integers(len(candidates)))] + rng.uniform(-1.0, 1.0, size=3)
        axes = _rotation(rng)
        semi = (1.0, float(rng.uniform(0.7, 1.0)), float(rng.uniform(0.7, 1.0)))
        bumps = tuple((*_unit(rng.standard_normal(3)), float(rng.uniform(2.0, 6.0)),
                       float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.5, 1.0))) for _ in range(5))
        return MniLesion(kind=kind, centre_mm=tuple(float(c) for c in centre),
                         radius_mm=float(rng.uniform(r_lo, r_hi)), axes=tuple(tuple(map(float, a)) for a in axes),
                         semi=semi, bumps=bumps, irregularity=irregularity,
                         allowed_depth_mm=_ALLOWED_DEPTH[place])

    def plan(self, head: MniHead, lesion: MniLesion | None, specs: Sequence[SliceSpec]) -> list[MniPlane]:
        """Planes for ``specs``. Without a lesion slice, ``slice_pos`` spans the brain from the cerebellum to
        the vertex. A single lesion slice cuts the lesion, off its middle as ``lesion_scale`` drops below 1.
        A stack with lesion slices is evenly spaced so that those slices share the lesion's height (the
        spacing kept within 1-6 mm) and the others lie beyond it; the mask, not the spec, decides which
        slices show it."""
        flagged = [i for i, spec in enumerate(specs) if spec.lesion_scale is not None]
        if lesion is None or not flagged:
            return [MniPlane(z_mm=_Z_BOTTOM + (_Z_TOP - _Z_BOTTOM) * spec.slice_pos, lesion=False) for spec in specs]
        bottom, top = _height_range(head, lesion)
        middle, half = (top + bottom) / 2, (top - bottom) / 2
        if len(specs) == 1:
            offset = 0.8 * half * math.sqrt(max(0.0, 1.0 - specs[0].lesion_scale ** 2))
            return [MniPlane(z_mm=middle + offset, lesion=True)]
        spacing = float(np.clip((top - bottom) / len(flagged), *_SPACING_MM))
        centre = flagged[0] + (len(flagged) - 1) / 2
        return [MniPlane(z_mm=middle + (i - centre) * spacing, lesion=True) for i in range(len(specs))]

    def render(self, rng: np.random.Generator, *, size: int, head: MniHead, lesion: MniLesion | None,
               plane: MniPlane, contrasts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``image`` float32 (size, size, len(contrasts)) in [0, 1] and ``mask`` bool (size, size). The random
        draws do not depend on the lesion, so the same generator state renders the same slice with and
        without it, differing exactly inside ``mask``."""
        check_int("size", size, minimum=MIN_IMAGE_SIZE)
        contrasts = tuple(contrasts)
        if not contrasts or any(c not in CONTRASTS for c in contrasts):
            raise ValueError(f"contrasts must be a non-empty sequence of {CONTRASTS}, got {contrasts!r}")
        scanner = _plane_points(size, head.fov_mm, plane.z_mm)
        template = head.to_template(scanner)
        tissue = _sample_tissue(self.template, template)
        mask = np.zeros(size * size, dtype=bool)
        rim = mask
        if plane.lesion and lesion is not None:
            mask, rim = _lesion_pixels(self.template, lesion, template)
        log_bias = sum(amp * np.cos(2 * math.pi * (scanner @ np.array([dx, dy, dz])) / wavelength + phase)
                       for dx, dy, dz, wavelength, phase, amp in head.bias)
        texture = 0.04 * smooth_noise(rng, (size, size), 0.8) + 0.05 * smooth_noise(rng, (size, size), size / 6)
        lesion_texture = 0.06 * smooth_noise(rng, (size, size), 1.5).ravel()
        channels = []
        for contrast in contrasts:
            intensity = _tissue_intensity(tissue, contrast, head.layer_scale)
            if lesion is not None:
                core, rim_value = LESION_INTENSITY[lesion.kind][contrast]
                intensity = np.where(mask, np.where(rim, rim_value, core) * (1 + lesion_texture), intensity)
            intensity = np.clip(intensity * (1 + texture.ravel()), 0.0, None) ** head.gamma * head.gain
            intensity = intensity * np.exp(log_bias)
            sigma = head.noise_sigma
            # Rician magnitude noise: |signal + complex Gaussian|, as in magnitude MR images.
            noisy = np.hypot(intensity + sigma * rng.standard_normal(intensity.shape),
                             sigma * rng.standard_normal(intensity.shape))
            channels.append(np.clip(noisy, 0.0, 1.0).reshape(size, size))
        return np.stack(channels, axis=-1).astype(np.float32), mask.reshape(size, size)

    def slice_info(self, head: MniHead, plane: MniPlane, size: int) -> dict:
        return {"pixel_mm": head.fov_mm / size, "plane_z_mm": plane.z_mm}


def _unit(vector: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in vector / np.linalg.norm(vector))


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation, from a unit quaternion (plain arithmetic: no LAPACK sign conventions
    that could differ between machines)."""
    w, x, y, z = _unit(rng.standard_normal(4))
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@functools.lru_cache(maxsize=1)
def _sphere_directions(count: int = 600) -> np.ndarray:
    """(count, 3) unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    k = np.arange(count) + 0.5
    polar = np.arccos(1 - 2 * k / count)
    azimuth = math.pi * (1 + 5 ** 0.5) * k
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


def _height_range(head: MniHead, lesion: MniLesion) -> tuple[float, float]:
    """Lowest and highest scanner z of the lesion's surface (a star-shaped blob spans every height between)."""
    directions = _sphere_directions()
    surface = np.add(lesion.centre_mm, directions * lesion.radius_along(directions)[:, None])
    heights = head.to_scanner(surface)[:, 2]
    return float(heights.min()), float(heights.max())


def _plane_points(size: int, fov_mm: float, z_mm: float) -> np.ndarray:
    """(size * size, 3) scanner mm of the pixel centres, row-major; row 0 anterior, column 0 the right."""
    centres = ((np.arange(size) + 0.5) / size - 0.5) * fov_mm
    y, x = np.meshgrid(-centres, -centres, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), np.full(size * size, z_mm)], axis=1)


def _sample(volume: np.ndarray, world_to_index: np.ndarray, points: np.ndarray, *, outside: float) -> np.ndarray:
    from scipy import ndimage

    index = points @ world_to_index[:3, :3].T + world_to_index[:3, 3]
    return ndimage.map_coordinates(volume, index.T, output=np.float32, order=1, mode="constant", cval=outside)


def _sample_tissue(template: Template, points: np.ndarray) -> dict[str, np.ndarray]:
    """Per point: T1 (in white-matter units), grey/white fractions, brain weight and signed brain depth."""
    t1 = _sample(template.t1, template.world_to_voxel, points, outside=0.0)
    return {"t1": t1 / template.white_matter_t1,
            "gm": _sample(template.gm, template.world_to_voxel, points, outside=0.0) / 255.0,
            "wm": _sample(template.wm, template.world_to_voxel, points, outside=0.0) / 255.0,
            "brain": np.clip((t1 - 5.0) / (2 * _BRAIN_T1), 0.0, 1.0),
            "depth": _sample(template.depth, template.world_to_coarse, points, outside=-100.0)}


def _tissue_intensity(tissue: dict[str, np.ndarray], contrast: str, layer_scale: float) -> np.ndarray:
    table = dict(zip(TISSUES, TISSUE_INTENSITY[contrast]))
    if contrast in ("T1", "T1C+"):  # the template is a T1: keep its own contrast inside the brain
        inside = tissue["t1"] * table["wm"]
    else:
        csf = np.clip(1.0 - tissue["gm"] - tissue["wm"], 0.0, 1.0)
        inside = tissue["gm"] * table["gm"] + tissue["wm"] * table["wm"] + csf * table["csf"]
    dura, bone, scalp = (edge * layer_scale for edge in _LAYERS_MM)
    outside = np.interp(np.maximum(-tissue["depth"], 0.0),
                        [0.0, dura - 0.5, dura + 0.5, bone - 0.5, bone + 0.5, scalp - 0.5, scalp + 0.5],
                        [table["dura"], table["dura"], table["bone"], table["bone"], table["scalp"],
                         table["scalp"], table["background"]])
    return tissue["brain"] * inside + (1.0 - tissue["brain"]) * outside


def _lesion_pixels(template: Template, lesion: MniLesion, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool mask and rim of the points (template mm) inside the lesion and its allowed region."""
    offset = points - np.asarray(lesion.centre_mm)
    distance = np.linalg.norm(offset, axis=1)
    mask = np.zeros(len(points), dtype=bool)
    rim = np.zeros(len(points), dtype=bool)
    near = np.nonzero(distance < LESION_DIAMETER_MM[1] / 2)[0]
    if near.size == 0:
        return mask, rim
    directions = offset[near] / np.maximum(distance[near], 1e-9)[:, None]
    radius = lesion.radius_along(directions)
    inside = distance[near] < radius
    if lesion.allowed_depth_mm is not None:
        inside &= _sample(template.depth, template.world_to_coarse, points[near], outside=-100.0) \
            > lesion.allowed_depth_mm
    mask[near] = inside
    rim[near] = inside & (distance[near] > _RIM * radius)
    return mask, rim
