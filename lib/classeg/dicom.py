"""DICOM as scanners and PACS write it: one file in, its 2-D images (one per frame) and identity out.

Reading (:func:`read_dicom`):

* The bytes are parsed by pydicom with ``force=True``, so files without the 128-byte preamble and ``DICM``
  marker (or without a file meta header) are read too; a file with neither the marker nor any standard data
  element is not DICOM (``unsupported``). A missing Transfer Syntax UID is taken from the encoding the file
  was read with.
* Objects without pixel data (structured reports, RT plans and structures, waveforms, DICOMDIRs) are
  ``skipped`` with the reason ``"no pixel data (<SOP class>)"``; so are modalities not in
  :attr:`ReadSettings.modalities` (``"modality CT not in score.modalities"``).
* Pixel data is decoded by pydicom's pixel handlers: native little/big endian, deflate, RLE, JPEG baseline,
  extended (12-bit) and lossless, JPEG-LS and JPEG 2000 through the pylibjpeg plugins (libjpeg, openjpeg,
  rle). YBR colour becomes RGB (pydicom's default), palette colour is looked up
  (:func:`pydicom.pixels.apply_color_lut`), signed pixels stay signed until the window.
* Grayscale frames get the modality transform (Rescale Slope/Intercept or Modality LUT, top level or in the
  enhanced functional groups) and then the window that takes them to uint8, recorded as a
  :class:`~classeg.decoded.Window`: the VOI LUT Sequence when present, else the first Window Center/Width pair
  (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT or SIGMOID), else the 0.5th-99.5th percentiles of all the file's
  frames. MONOCHROME1 is inverted after the window, so bright always means high signal.
* A multi-frame file gives one image per frame (``frame`` 0-based); a single-frame file's image has
  ``frame`` None.

Identity (:data:`IDENTITY_COLUMNS`): study/series/SOP instance UIDs, instance number, modality, series
description, pixel spacing (mm, [row, column]), slice thickness (mm) and ``patient_key``, the HMAC-SHA256 of
PatientID under a secret (:func:`patient_key`). Patient names, IDs and birth dates are never returned, logged
or put in an error message: value validation (whose warnings quote values) is off while the header is read,
and error texts and ``series_description`` have the file's identifying values (names, IDs, dates, accession
number, institution, physicians: :data:`_PHI_KEYWORDS`) replaced by ``<removed>``. Which other header values a
row carries, and why, is in docs/emr.md ("Security review").
"""
from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import re
import threading
from typing import Any

import numpy as np

from classeg.decoded import DecodeError, ReadSettings, ScanFile, ScanImage, Window

log = logging.getLogger(__name__)

__all__ = ["IDENTITY_COLUMNS", "PATIENT_KEY_ENV", "PERCENTILES", "load_patient_key_secret", "modality_frames",
           "patient_key", "read_dicom"]

IDENTITY_COLUMNS = ("study_uid", "series_uid", "sop_uid", "instance_number", "modality", "series_description",
                    "pixel_spacing_mm", "slice_thickness_mm", "patient_key")
PERCENTILES = (0.5, 99.5)
PATIENT_KEY_ENV = "CLASSEG_PATIENT_KEY_SECRET"
# Attributes of the PS3.15 Annex E Basic Profile (Table E.1-1) that hold text naming or pointing at the
# patient, the visit or the people and places involved: their values are scrubbed from every error text and from
# ``series_description`` (the one free-text attribute a row carries: the Clean Descriptors Option's cleaning).
_PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
                 "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientAddress",
                 "PatientTelephoneNumbers", "MedicalRecordLocator", "IssuerOfPatientID", "AccessionNumber", "StudyID",
                 "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstitutionName",
                 "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
                 "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician",
                 "PhysiciansOfRecord", "StationName", "DeviceSerialNumber", "StudyDescription")
# Person names (PN) are also scrubbed word by word: a description may spell "DOE^JANE" as "Jane Doe".
_PERSON_KEYWORDS = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
                    "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
                    "OperatorsName", "RequestingPhysician", "PhysiciansOfRecord")
_REMOVED = "<removed>"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# pydicom's value validation is a process-wide setting; the lock keeps the loader threads' save/restore of it
# from interleaving (only the header read runs under it, not the pixel decoding).
_VALIDATION_LOCK = threading.Lock()


def patient_key(patient_id: str | None, secret: bytes | None) -> str | None:
    """HMAC-SHA256 of ``patient_id`` (UTF-8, surrounding spaces stripped) under ``secret``, as 64 hex digits;
    None when either is missing. Without the secret the key cannot be turned back into the ID."""
    if not patient_id or not secret:
        return None
    return hmac.new(secret, str(patient_id).strip().encode("utf-8"), hashlib.sha256).hexdigest()


def load_patient_key_secret(setting: str | None, *, s3_cfg: Any = None) -> bytes | None:
    """The secret of :func:`patient_key` from ``score.patient_key_secret``: None reads the environment variable
    :data:`PATIENT_KEY_ENV` (unset: None, no patient keys); otherwise a secrets URI, a local file path or
    ``s3://`` object, read with :func:`classeg.io.files.read_text` (surrounding whitespace stripped).
    Raises ValueError (naming the URI, never the secret) for an empty secret."""
    if setting is None:
        value = os.environ.get(PATIENT_KEY_ENV)
        if value is None:
            log.warning("no patient key secret (score.patient_key_secret unset, %s unset): patient_key is null",
                        PATIENT_KEY_ENV)
            return None
        source = f"environment variable {PATIENT_KEY_ENV}"
    else:
        from classeg.io.files import read_text

        value, source = read_text(str(setting), s3_cfg=s3_cfg), f"secrets file {setting}"
    secret = value.strip().encode("utf-8")
    if not secret:
        raise ValueError(f"the patient key secret in {source} is empty")
    return secret


# ---------------------------------------------------------------------------------------------- header

def _read_dataset(data: bytes, name: str):
    """Parse the bytes (``force=True``) with value validation off; DecodeError when it is not DICOM."""
    import pydicom
    from pydicom.datadict import dictionary_has_tag
    from pydicom.errors import InvalidDicomError

    has_marker = len(data) > 132 and data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        standard = any(dictionary_has_tag(tag) and tag.group >= 0x0008 for tag in ds.keys())
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        kind = "truncated" if isinstance(err, EOFError) else "undecodable"
        raise DecodeError(kind, f"{name}: unreadable DICOM header ({type(err).__name__})") from err
    if not has_marker and not standard:
        raise DecodeError("unsupported", f"{name}: not a DICOM file (no DICM marker, no standard data elements)")
    _check_complete(ds, len(data), name)
    return ds


_UNDEFINED_LENGTH = 0xFFFFFFFF
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _check_complete(ds, size: int, name: str) -> None:
    """pydicom reads a file cut inside an element without complaint, keeping the partial value: a file cut
    before its pixel data would look like an object without pixels (skipped). The last element's declared
    length says whether the bytes were all there."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if not len(ds) or syntax == _DEFLATED:  # deflated: offsets count the inflated stream, not the file
        return
    last = ds.get_item(max(ds.keys()))
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if tell is not None and length not in (None, _UNDEFINED_LENGTH) and tell + length > size:
        raise DecodeError("truncated", f"{name}: the file ends inside element {last.tag} ({size} bytes, the element "
                                       f"needs {tell + length})")


def _text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    return None if value in (None, "") else str(value).strip() or None


def _number(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _functional(ds, sequence: str, keyword: str, frame: int = 0):
    """``keyword`` from the top level, else from the enhanced IOD's shared or per-frame functional groups."""
    if keyword in ds:
        return ds.get(keyword)
    for groups, index in (("SharedFunctionalGroupsSequence", 0), ("PerFrameFunctionalGroupsSequence", frame)):
        items = ds.get(groups) or []
        if index < len(items):
            inner = items[index].get(sequence) or []
            if inner and keyword in inner[0]:
                return inner[0].get(keyword)
    return None


def _identity(ds, settings: ReadSettings) -> dict:
    spacing = _functional(ds, "PixelMeasuresSequence", "PixelSpacing")
    spacing = [_number(v) for v in spacing] if spacing is not None and len(spacing) == 2 else None
    number = _number(ds.get("InstanceNumber"))
    return {
        "study_uid": _text(ds, "StudyInstanceUID"), "series_uid": _text(ds, "SeriesInstanceUID"),
        "sop_uid": _text(ds, "SOPInstanceUID"), "instance_number": int(number) if number is not None else None,
        "modality": _text(ds, "Modality"), "series_description": _text(ds, "SeriesDescription"),
        "pixel_spacing_mm": spacing if spacing and None not in spacing else None,
        "slice_thickness_mm": _number(_functional(ds, "PixelMeasuresSequence", "SliceThickness")),
        "patient_key": patient_key(_text(ds, "PatientID"), settings.patient_key_secret),
    }


def _phi_values(ds) -> list[tuple[str, bool]]:
    """The file's identifying values (:data:`_PHI_KEYWORDS`) as (text, whole words only), longest first: each
    value whole, and the words of person names."""
    values = set()
    for keyword in _PHI_KEYWORDS:
        value = ds.get(keyword)
        parts = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        texts = [str(part).strip() for part in parts if part not in (None, "")]
        values |= {(text, False) for text in texts if len(text) > 1}
        if keyword in _PERSON_KEYWORDS:
            values |= {(word, True) for text in texts for word in re.split(r"[\s^=,]+", text) if len(word) > 1}
    return sorted(values, key=lambda value: (-len(value[0]), value[1]))


def _scrub(text: str | None, phi: list[tuple[str, bool]]) -> str | None:
    """``text`` with each identifying value of the file (case-insensitive; name words only as whole words)
    replaced by ``<removed>``."""
    if not text:
        return text
    for value, whole_word in phi:
        pattern = rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])" if whole_word else re.escape(value)
        text = re.sub(pattern, _REMOVED, text, flags=re.IGNORECASE)
    return text


def _sop_class_name(ds) -> str:
    from pydicom.uid import UID

    uid = ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", None)
    if not uid:
        return "no SOP Class UID"
    name = UID(str(uid)).name
    return name[: -len(" Storage")] if name.endswith(" Storage") else name


def _fill_transfer_syntax(ds) -> None:
    """Files without (0002,0010): the syntax they were read with (only native encodings can lack it)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _header(data: bytes, name: str, settings: ReadSettings):
    """(dataset, identity, skip reason or None, PHI values to scrub), under the validation lock."""
    from pydicom import config

    with _VALIDATION_LOCK, config.disable_value_validation():
        ds = _read_dataset(data, name)
        phi = _phi_values(ds)
        identity = _identity(ds, settings)
        identity["series_description"] = _scrub(identity["series_description"], phi)
        if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
            return ds, identity, f"no pixel data ({_sop_class_name(ds)})", phi
        modality = identity["modality"]
        if settings.modalities and (modality or "").upper() not in settings.modalities:
            return ds, identity, f"modality {modality or '(none)'} not in score.modalities", phi
        _fill_transfer_syntax(ds)
        # Touch the pixel module now, so that its values are converted with validation off.
        for keyword in ("PhotometricInterpretation", "WindowCenter", "WindowWidth", "VOILUTFunction",
                        "RescaleSlope", "RescaleIntercept", "BitsStored", "NumberOfFrames"):
            ds.get(keyword)
    return ds, identity, None, phi


# ---------------------------------------------------------------------------------------------- pixels

def _decode_error(err: Exception, name: str, phi: list[str]) -> DecodeError:
    text = _scrub(f"{type(err).__name__}: {err}", phi).splitlines()
    detail = " ".join(line.strip() for line in text)[:400]
    lowered = detail.lower()
    if "less than expected" in lowered or "truncated" in lowered or isinstance(err, EOFError):
        kind = "truncated"
    elif isinstance(err, (AttributeError, KeyError)) or "missing required element" in lowered:
        kind = "bad_structure"
    else:
        kind = "undecodable"
    return DecodeError(kind, f"{name}: cannot decode the pixel data ({detail})")


def _rescale(frame: np.ndarray, ds, index: int) -> np.ndarray:
    """Modality transform of one grayscale frame to float64 modality units."""
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds:
        return np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    slope = _number(_functional(ds, "PixelValueTransformationSequence", "RescaleSlope", index))
    intercept = _number(_functional(ds, "PixelValueTransformationSequence", "RescaleIntercept", index))
    values = frame.astype(np.float64)
    if slope is not None and intercept is not None:
        values = values * slope + intercept
    return values


def modality_frames(ds) -> list[np.ndarray]:
    """The frames of a dataset with pixel data as arrays: grayscale (H, W) float64 in modality units (rescale
    applied), colour (H, W, 3) RGB in the stored dtype (YBR converted, palette looked up). Raises what
    pydicom's decoders raise."""
    from pydicom.pixels import apply_color_lut, iter_pixels

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = []
    for index, frame in enumerate(iter_pixels(ds)):
        if photometric == "PALETTE COLOR":
            frames.append(apply_color_lut(frame, ds))
        elif frame.ndim == 3:
            frames.append(frame)
        else:
            frames.append(_rescale(frame, ds, index))
    return frames


def _voi_lut_window(values: np.ndarray, ds) -> tuple[np.ndarray, Window]:
    from pydicom.pixels import apply_voi

    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    mapped = np.asarray(apply_voi(np.rint(values).astype(np.int64), ds, index=0), dtype=np.float64)
    top = float(np.max(item.LUTData)) if bits > 16 or bits < 8 else float(2 ** bits - 1)
    return mapped / max(top, 1.0), Window("voi_lut", float(first), float(first + entries - 1))


def _tag_window(values: np.ndarray, ds) -> tuple[np.ndarray, Window]:
    """Window Center/Width (first pair) to [0, 1] as PS3.3 C.11.2.1.2/3 defines it."""
    def first(keyword):
        value = ds.get(keyword)
        return float(value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
                     else value)

    center, width = first("WindowCenter"), first("WindowWidth")
    function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"Window Width must be > 0 for SIGMOID, got {width}")
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width)), Window("window", center - width / 2,
                                                                              center + width / 2)
    if function == "LINEAR_EXACT":
        low, high = center - width / 2, center + width / 2
    else:
        if width < 1:
            raise ValueError(f"Window Width must be >= 1 for LINEAR, got {width}")
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    if high <= low:
        raise ValueError(f"empty window (center {center}, width {width})")
    return (values - low) / (high - low), Window("window", low, high)


def _percentile_window(frames: list[np.ndarray]) -> Window:
    finite = np.concatenate([frame[np.isfinite(frame)].ravel() for frame in frames])
    if finite.size == 0:
        return Window("percentile", 0.0, 0.0)
    low, high = (float(v) for v in np.percentile(finite, PERCENTILES))
    if high <= low:  # a mostly constant image: its full range instead
        low, high = float(finite.min()), float(finite.max())
    return Window("percentile", low, high)


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.nan_to_num(unit, nan=0.0) * 255.0), 0, 255).astype(np.uint8)


def _gray_images(frames: list[np.ndarray], ds) -> list[tuple[np.ndarray, Window]]:
    if "VOILUTSequence" in ds:
        windowed = [_voi_lut_window(frame, ds) for frame in frames]
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        windowed = [_tag_window(frame, ds) for frame in frames]
    else:
        window = _percentile_window(frames)
        span = (window.high - window.low) or 1.0
        windowed = [((frame - window.low) / span, window) for frame in frames]
    invert = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    return [(255 - _to_uint8(unit) if invert else _to_uint8(unit), window) for unit, window in windowed]


def _colour_image(frame: np.ndarray, ds) -> tuple[np.ndarray, Window]:
    if frame.dtype == np.uint8:
        return frame, Window("stored_range", 0.0, 255.0)
    bits = 16 if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR" else int(
        ds.get("BitsStored") or frame.dtype.itemsize * 8)
    top = float(2 ** bits - 1)
    return _to_uint8(frame.astype(np.float64) / top), Window("stored_range", 0.0, top)


def read_dicom(data: bytes, name: str = "", settings: ReadSettings | None = None) -> ScanFile:
    """Decode a DICOM file to a :class:`~classeg.decoded.ScanFile`: uint8 images (one per frame), their
    windows and the file's identity, or ``skipped`` with the reason. Raises :class:`DecodeError`
    (``truncated`` pixel data, ``bad_structure`` for a missing pixel-module element, ``undecodable``,
    ``unsupported`` for non-DICOM bytes); messages never contain patient names, IDs or birth dates."""
    settings = settings or ReadSettings()
    name = name or "file"
    ds, identity, skipped, phi = _header(data, name, settings)
    if skipped:
        return ScanFile(skipped=skipped, identity=identity)
    try:
        frames = modality_frames(ds)
        if not frames:
            raise DecodeError("bad_structure", f"{name}: pixel data holds no frames")
        gray = frames[0].ndim == 2
        images = _gray_images(frames, ds) if gray else [_colour_image(frame, ds) for frame in frames]
    except DecodeError:
        raise
    except (ValueError, RuntimeError, AttributeError, KeyError, TypeError, NotImplementedError, EOFError,
            OSError, IndexError) as err:
        raise _decode_error(err, name, phi) from err
    multi = len(images) > 1 or int(_number(ds.get("NumberOfFrames")) or 1) > 1
    return ScanFile(images=tuple(ScanImage(pixels=pixels, frame=i if multi else None, window=window)
                                 for i, (pixels, window) in enumerate(images)), identity=identity)
