"""Decode, normalise, resize and encode scans: pure numpy + PIL (+ tifffile, h5py for their formats; DICOM in
:mod:`classeg.dicom`, NIfTI in :mod:`classeg.volumes`).

Conventions: images are numpy arrays ``(H, W)`` (grayscale) or ``(H, W, C)`` with C in {3, 4} (channels last);
canonical scans are ``uint8``. Masks are ``(H, W)`` bool in memory and ``{0, 255}`` uint8 on disk (PNG).
Every decoding failure raises :class:`DecodeError` carrying a short machine-readable ``reason``.
:func:`decode_file` is the one entry point for a file that may hold several images (multi-frame DICOM, NIfTI
volumes) or none (skipped DICOM objects); :func:`decode_scan` is its one-image form.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from classeg.decoded import (ALL_EXTENSIONS, IMAGE_EXTENSIONS, REASONS, VOLUME_EXTENSIONS, DecodeError,
                             ReadSettings, ScanFile, ScanImage)
from classeg.dicom import read_dicom
from classeg.volumes import is_nifti, read_nifti

__all__ = ["ALL_EXTENSIONS", "DecodeError", "FigshareRecord", "IMAGE_EXTENSIONS", "REASONS", "ReadSettings",
           "ScanFile", "ScanImage", "canonical", "decode_file", "decode_pil", "decode_png", "decode_scan",
           "encode_png", "read_cvind", "read_figshare_mat", "resize_image", "resize_mask", "sniff_format",
           "to_uint8", "VOLUME_EXTENSIONS"]


def sniff_format(data: bytes, name: str = "") -> str:
    """Return 'dicom', 'nifti', 'tiff', 'jpeg', 'png', 'webp', 'mat', 'bmp', 'gif' or 'unknown' from magic
    bytes, falling back to the extension of ``name``. Raises DecodeError('empty') for zero bytes.

    ``DICM`` at offset 128 is tested first: DICOM PS3.10 lets the 128-byte preamble hold another format's
    header (dual-personality files, e.g. a TIFF header), and such a file is DICOM."""
    if not data:
        raise DecodeError("empty", f"{name or 'file'} is empty (0 bytes)")
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    if is_nifti(data):
        return "nifti"
    head = data[:16]
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] == b"GIF8":
        return "gif"
    if data[:19] == b"MATLAB 7.3 MAT-file" or data[:8] == b"\x89HDF\r\n\x1a\n" or data[512:520] == b"\x89HDF\r\n\x1a\n":
        return "mat"
    lower = name.lower()
    if lower.endswith((".dcm", ".dicom")):
        return "dicom"
    if lower.endswith((".nii", ".nii.gz")):
        return "nifti"
    return "unknown"


def decode_pil(data: bytes, name: str = "") -> np.ndarray:
    """Decode TIFF/JPEG/PNG/WebP/BMP bytes to ``(H, W)`` or ``(H, W, 3)`` array in the file's dtype.
    Palette and LA/RGBA images become L/RGB. Truncated files raise DecodeError('truncated')."""
    fmt = sniff_format(data, name)
    if fmt == "tiff":
        return _decode_tiff(data, name)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr"):
                img = img.convert("RGB" if img.mode not in ("LA",) else "L")
            if img.mode == "1":
                img = img.convert("L")
            array = np.asarray(img)
    except UnidentifiedImageError as err:
        raise DecodeError("undecodable", f"{name or 'file'}: not a readable image ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:
        text = str(err)
        reason = "truncated" if "truncated" in text.lower() or "premature" in text.lower() else "undecodable"
        raise DecodeError(reason, f"{name or 'file'}: {text}") from err
    return np.ascontiguousarray(array)


def _decode_tiff(data: bytes, name: str) -> np.ndarray:
    import tifffile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                if not tif.pages or tif.pages.first is None:
                    raise DecodeError("undecodable", f"{name or 'file'}: TIFF has no readable page")
                array = tif.pages.first.asarray()
    except DecodeError:
        raise
    except Exception as err:  # tifffile raises many types (TiffFileError, ValueError, struct.error, ...)
        raise DecodeError("undecodable", f"{name or 'file'}: unreadable TIFF ({type(err).__name__}: {err})") from err
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar configuration
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise DecodeError("bad_structure", f"{name or 'file'}: TIFF of shape {array.shape} is not a 2-D slice")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    return np.ascontiguousarray(array)


@dataclass(frozen=True)
class FigshareRecord:
    """One figshare ``cjdata`` struct. ``image`` (H, W) as stored (int16 usually), ``mask`` (H, W) bool,
    ``label`` 1 meningioma / 2 glioma / 3 pituitary, ``patient_id`` decoded from uint16 char codes,
    ``border`` flat [x1, y1, x2, y2, ...]."""

    image: np.ndarray
    mask: np.ndarray
    label: int
    patient_id: str
    border: np.ndarray


def _h5(data: bytes, name: str):
    import h5py

    try:
        return h5py.File(io.BytesIO(data), "r")
    except OSError as err:
        raise DecodeError("undecodable", f"{name or 'file'}: not a MATLAB v7.3 (HDF5) file ({err})") from err


def _matlab_string(dataset) -> str:
    codes = np.asarray(dataset).astype(np.uint32).ravel()
    return "".join(chr(c) for c in codes if c)


def read_figshare_mat(data: bytes, name: str = "") -> FigshareRecord:
    """Read a figshare brain-tumour ``.mat`` (MATLAB v7.3). MATLAB stores column-major, so image and mask are
    transposed back to (H, W). Raises DecodeError naming the missing field."""
    with _h5(data, name) as handle:
        if "cjdata" not in handle:
            raise DecodeError("bad_structure", f"{name or 'file'}: no 'cjdata' struct (keys: {sorted(handle)})")
        group = handle["cjdata"]
        missing = [f for f in ("label", "PID", "image", "tumorMask") if f not in group]
        if missing:
            raise DecodeError("bad_structure", f"{name or 'file'}: cjdata lacks field(s) {missing}")
        try:
            image = np.asarray(group["image"]).T
            mask = np.asarray(group["tumorMask"]).T != 0
            label = int(np.asarray(group["label"]).ravel()[0])
            patient_id = _matlab_string(group["PID"])
            border = np.asarray(group["tumorBorder"]).ravel() if "tumorBorder" in group else np.zeros(0)
        except (OSError, ValueError, IndexError) as err:
            raise DecodeError("undecodable", f"{name or 'file'}: damaged cjdata ({err})") from err
    if image.ndim != 2 or mask.shape != image.shape:
        raise DecodeError("bad_structure", f"{name or 'file'}: image {image.shape} and mask {mask.shape} disagree")
    return FigshareRecord(image=image, mask=mask, label=label, patient_id=patient_id, border=border)


def read_cvind(data: bytes, name: str = "cvind.mat") -> np.ndarray:
    """Read figshare's ``cvind.mat``: the official patient-wise fold (1..5) of each file, index i -> file i+1."""
    with _h5(data, name) as handle:
        if "cvind" not in handle:
            raise DecodeError("bad_structure", f"{name}: no 'cvind' variable (keys: {sorted(handle)})")
        return np.asarray(handle["cvind"]).ravel().astype(np.int64)


def decode_file(data: bytes, name: str = "", settings: ReadSettings | None = None) -> ScanFile:
    """Decode any supported file to its images (:class:`~classeg.decoded.ScanFile`): one for TIFF (incl. LGG
    3-channel stacks), JPEG, PNG, WebP, BMP and figshare .mat (as stored, ``frame`` None); one uint8 image per
    frame for DICOM (:func:`classeg.dicom.read_dicom`) and per axial slice for NIfTI
    (:func:`classeg.volumes.read_nifti`), with their windows and identity. DICOM objects without pixel data or
    of a modality not in ``settings.modalities`` come back with ``skipped`` set. Unknown types raise
    DecodeError('unsupported')."""
    settings = settings or ReadSettings()
    fmt = sniff_format(data, name)
    if fmt in ("tiff", "jpeg", "png", "webp", "bmp", "gif"):
        return ScanFile(images=(ScanImage(decode_pil(data, name)),))
    if fmt == "mat":
        return ScanFile(images=(ScanImage(read_figshare_mat(data, name).image),))
    if fmt == "dicom":
        return read_dicom(data, name, settings)
    if fmt == "nifti":
        return read_nifti(data, name)
    raise DecodeError("unsupported", f"{name or 'file'}: unsupported file type (not TIFF/JPEG/PNG/WebP/.mat/DICOM/"
                                     f"NIfTI)")


_ANY_MODALITY = ReadSettings(modalities=())


def decode_scan(data: bytes, name: str = "") -> np.ndarray:
    """The one image of a scan file, as :func:`decode_file` gives it ((H, W) or (H, W, 3); DICOM of any
    modality, windowed to uint8). For multi-image files (multi-frame DICOM, NIfTI) the middle image; a file
    without images raises DecodeError('unsupported') with the reason."""
    decoded = decode_file(data, name, _ANY_MODALITY)
    if not decoded.images:
        raise DecodeError("unsupported", f"{name or 'file'}: {decoded.skipped}")
    return decoded.images[len(decoded.images) // 2].pixels


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as uint8. uint8 passes through; anything else is min-max normalised per image
    (per whole array, not per channel, so channel contrasts survive). A constant image becomes zeros."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    values = image.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(image.shape, np.uint8)
    low, high = float(values[finite].min()), float(values[finite].max())
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    scaled = (np.where(finite, values, low) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (H, W[, 3]) image to (size, size[, 3]) with bilinear filtering (area-aware when
    shrinking). Same-size input is returned unchanged."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    if image.dtype != np.uint8:
        raise ValueError(f"resize_image expects uint8, got {image.dtype}")
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=None))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a mask (any non-zero = tumour) to (size, size) bool with nearest-neighbour sampling."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    if mask.ndim == 3:
        mask = mask.max(axis=-1)
    binary = np.asarray(mask) != 0
    if binary.shape == (size, size):
        return binary
    resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return np.asarray(resized) > 127


def encode_png(image: np.ndarray, *, compress_level: int = 1) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, 3) array, or of a bool mask (stored as {0, 255})."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"encode_png expects uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_png` (uint8 array)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img).copy()


def canonical(image: np.ndarray, size: int) -> np.ndarray:
    """The canonical stored scan: uint8, (size, size) or (size, size, 3)."""
    return resize_image(to_uint8(image), size)
