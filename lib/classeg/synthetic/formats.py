"""File formats of the synthetic writers: TIFF, PNG/JPEG/WebP (PIL), MATLAB v7.3 (HDF5) figshare structs,
DICOM MR and the deliberately broken files of the scoring archive. Every writer is deterministic for its
inputs (no timestamps, UIDs derived from the seed)."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np

from classeg.synthetic.phantom import phantom_slice, random_anatomy
from classeg.synthetic.pixels import erode, to_uint8

BROKEN_KINDS = ("corrupt_tiff", "empty", "text", "truncated_jpeg")


def matlab_date(rng: np.random.Generator) -> str:
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return (f"{days[int(rng.integers(7))]} {months[int(rng.integers(12))]} {int(rng.integers(1, 29)):2d} "
            f"{int(rng.integers(24)):02d}:{int(rng.integers(60)):02d}:{int(rng.integers(60)):02d} "
            f"{int(rng.integers(2014, 2016))}")


def stamp_matlab_header(path: Path, created: str) -> None:
    """Fill the 512-byte HDF5 userblock with the MATLAB v7.3 header: 116 bytes of text, 8 bytes of subsystem
    offset, version 0x0200 and the endian indicator 'IM', zero padding."""
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 .".encode("ascii")
    header = text.ljust(116, b" ") + b" " * 8 + struct.pack("<H", 0x0200) + b"IM"
    with open(path, "r+b") as handle:
        handle.write(header.ljust(512, b"\x00"))


def mat_dataset(parent, name: str, data: np.ndarray, matlab_class: str):
    dataset = parent.create_dataset(name, data=data, track_times=False)
    dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class.encode("ascii"))
    if matlab_class == "char":
        dataset.attrs["MATLAB_int_decode"] = np.int32(2)
    return dataset


def border_points(mask: np.ndarray) -> np.ndarray:
    """Flat [x1, y1, x2, y2, ...] (x = column, y = row, 1-based) of the mask's border pixels, ordered by
    angle around the centroid so that consecutive points trace the outline."""
    border = mask & ~erode(mask, 1)
    rows, cols = np.nonzero(border)
    if rows.size == 0:
        return np.zeros(0, dtype=np.float64)
    order = np.argsort(np.arctan2(rows - rows.mean(), cols - cols.mean()), kind="stable")
    return np.stack([cols[order] + 1.0, rows[order] + 1.0], axis=1).ravel().astype(np.float64)


def write_figshare_mat(h5py, path: Path, *, label: int, patient_id: str, image: np.ndarray, mask: np.ndarray,
                       created: str) -> None:
    with h5py.File(path, "w", userblock_size=512) as handle:
        group = handle.create_group("cjdata")
        group.attrs["MATLAB_class"] = np.bytes_(b"struct")
        mat_dataset(group, "label", np.array([[float(label)]], dtype=np.float64), "double")
        codes = np.array([ord(c) for c in patient_id], dtype=np.uint16).reshape(-1, 1)
        mat_dataset(group, "PID", codes, "char")
        mat_dataset(group, "image", np.ascontiguousarray(image.T), "int16")  # MATLAB is column-major
        mat_dataset(group, "tumorBorder", border_points(mask).reshape(1, -1), "double")
        mat_dataset(group, "tumorMask", np.ascontiguousarray(mask.astype(np.uint8).T), "logical")
    stamp_matlab_header(path, created)


def save_pil(Image, path: Path, pixels: np.ndarray, ext: str) -> None:
    fmt = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    options = {"JPEG": {"quality": 90}, "PNG": {}, "WEBP": {"quality": 90, "method": 4}}[fmt]
    Image.fromarray(pixels).save(path, format=fmt, **options)


def write_dicom(path: Path, rng: np.random.Generator, image: np.ndarray, *, seed: int, index: int,
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


def write_broken(root: Path, rng: np.random.Generator, Image) -> list[dict]:
    # A valid little-endian TIFF header whose first-IFD offset points into random bytes.
    garbage = rng.integers(0, 256, size=2048, dtype=np.uint8).tobytes()
    (root / "corrupt.tif").write_bytes(b"II*\x00" + struct.pack("<I", 8) + b"\xff\xff" + garbage)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("scans exported from the PACS on request; ask radiology for the rest\n",
                                    encoding="utf-8")
    image, _ = phantom_slice(rng, size=64, anatomy=random_anatomy(rng), slice_pos=0.5, contrasts=("T2",))
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image[..., 0])).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return [{"path": "corrupt.tif", "kind": "corrupt_tiff"}, {"path": "empty.png", "kind": "empty"},
            {"path": "notes.txt", "kind": "text"}, {"path": "truncated.jpg", "kind": "truncated_jpeg"}]


def write_tiff(path: Path, pixels: np.ndarray) -> None:
    """(H, W, 3) uint8 as an RGB TIFF, (H, W) as minisblack; no tifffile metadata tag, so the bytes depend on
    the pixels alone."""
    import tifffile

    tifffile.imwrite(path, pixels, photometric="rgb" if pixels.ndim == 3 else "minisblack", metadata=None)
