"""NIfTI volumes (``.nii``, ``.nii.gz``, NIfTI-1 and -2) read with nibabel: one uint8 image per axial slice.

Convention: the volume is reoriented to RAS+ (:func:`nibabel.as_closest_canonical`), so its third voxel axis
runs inferior to superior and ``frame`` k is the k-th axial slice from the bottom. Each slice is shown in the
radiological convention: rows run anterior (top) to posterior, columns patient right (left of the image) to
patient left. Intensities: ``scl_slope``/``scl_inter`` applied (nibabel's ``get_fdata``), then one window for
the whole volume, the 0.5th-99.5th percentiles of its finite voxels (:data:`classeg.dicom.PERCENTILES`), so
all slices of a volume share it. 4-D volumes (time series) use their first volume.

Identity: ``pixel_spacing_mm`` [row, column] and ``slice_thickness_mm`` from the voxel sizes (zooms) after
reorientation; the DICOM-only columns are null.
"""
from __future__ import annotations

import gzip
import zlib

import numpy as np

from classeg.decoded import DecodeError, ScanFile, ScanImage, Window

__all__ = ["is_nifti", "nifti_bytes", "read_nifti"]

_GZIP_MAGIC = b"\x1f\x8b"


def _header_bytes(data: bytes) -> bytes:
    if data[:2] != _GZIP_MAGIC:
        return data[:544]
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], 544)
    except zlib.error:
        return b""


def is_nifti(data: bytes) -> bool:
    """True for NIfTI-1 (``n+1``/``ni1`` magic at byte 344) or NIfTI-2 (``n+2`` at byte 4), gzipped or not."""
    head = _header_bytes(data)
    return (len(head) >= 348 and head[344:347] in (b"n+1", b"ni1")) or (len(head) >= 8 and head[4:7] == b"n+2")


def _load(data: bytes, name: str):
    import nibabel

    raw = data
    if data[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(data)
        except EOFError as err:
            raise DecodeError("truncated", f"{name}: gzip stream ends early ({err})") from err
        except (OSError, zlib.error) as err:
            raise DecodeError("undecodable", f"{name}: damaged gzip stream ({err})") from err
    for image_class in (nibabel.Nifti1Image, nibabel.Nifti2Image):
        try:
            image = image_class.from_bytes(raw)
            return nibabel.as_closest_canonical(image)
        except nibabel.filebasedimages.ImageFileError:
            continue
        except (ValueError, EOFError, OSError) as err:
            text = str(err)
            kind = "truncated" if "expected" in text.lower() or "buffer" in text.lower() else "undecodable"
            raise DecodeError(kind, f"{name}: unreadable NIfTI ({type(err).__name__}: {text})") from err
    raise DecodeError("undecodable", f"{name}: not a NIfTI-1 or NIfTI-2 header")


def read_nifti(data: bytes, name: str = "") -> ScanFile:
    """Decode a NIfTI volume to one uint8 (H, W) image per axial slice (see the module docstring for the
    orientation and window). Raises DecodeError: ``truncated`` data, ``bad_structure`` for fewer than 3 or
    more than 4 dimensions, ``undecodable`` otherwise."""
    name = name or "file"
    canonical = _load(data, name)
    try:
        volume = np.asarray(canonical.get_fdata(dtype=np.float32))
    except (ValueError, EOFError, OSError) as err:
        raise DecodeError("truncated", f"{name}: voxel data ends early ({err})") from err
    if volume.ndim == 4:
        volume = volume[..., 0]
    if volume.ndim == 2:
        volume = volume[..., None]
    if volume.ndim != 3:
        raise DecodeError("bad_structure", f"{name}: NIfTI of shape {volume.shape} is not a 3-D volume")
    finite = volume[np.isfinite(volume)]
    low, high = (float(v) for v in np.percentile(finite, (0.5, 99.5))) if finite.size else (0.0, 0.0)
    if high <= low and finite.size:
        low, high = float(finite.min()), float(finite.max())
    window = Window("percentile", low, high)
    span = (high - low) or 1.0
    zooms = [float(z) for z in canonical.header.get_zooms()[:3]] + [1.0, 1.0, 1.0]
    images = []
    for k in range(volume.shape[2]):
        # RAS voxel (i, j) -> row = posterior-going (reversed j), column = toward patient left (reversed i).
        axial = np.flip(volume[:, :, k].T, axis=(0, 1))
        unit = np.nan_to_num((axial - low) / span, nan=0.0)
        images.append(ScanImage(pixels=np.clip(np.rint(unit * 255), 0, 255).astype(np.uint8), frame=k, window=window))
    identity = {"study_uid": None, "series_uid": None, "sop_uid": None, "instance_number": None, "modality": None,
                "series_description": None, "pixel_spacing_mm": [zooms[1], zooms[0]],
                "slice_thickness_mm": zooms[2], "patient_key": None}
    return ScanFile(images=tuple(images), identity=identity)


def nifti_bytes(volume: np.ndarray, affine: np.ndarray | None = None, *, compress: bool = False) -> bytes:
    """A NIfTI-1 file of ``volume`` (X, Y, Z) with ``affine`` (default: identity), gzipped when ``compress``:
    what a test or synthetic archive writes."""
    import nibabel

    image = nibabel.Nifti1Image(np.asarray(volume), np.eye(4) if affine is None else affine)
    raw = image.to_bytes()
    return gzip.compress(raw, mtime=0) if compress else raw

