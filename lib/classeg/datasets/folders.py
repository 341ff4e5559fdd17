"""Folder-per-class layout (e.g. Kaggle "brain-tumor-mri-images-44c", yes/no and 4-class sets).

The label is the parent folder's name, kept verbatim (spaces, ``+``, Portuguese/Spanish spellings). Optional
``Training/`` and ``Testing/`` top folders are honoured as the split. There are no patient ids, so no
patient-level split is possible (the ingest summary says so). The contrast in a 44c class name (T1, T1C+, T2)
is parsed into ``sequence``. Labels are the class names in sorted order; ``has_tumor`` comes from the class
names through :func:`classeg.labels.tumor_class_names`, and is null (with a note in the ingest summary) for a
set of class names it cannot map. There are no masks.

Scans are images (``imaging.IMAGE_EXTENSIONS``), DICOM files (``.dcm``, ``.dicom``) and NIfTI volumes
(``.nii``, ``.nii.gz``), all decoded by :func:`classeg.imaging.decode_file`, the decoder the scoring job uses.
A 2-D file is one scan; a multi-frame DICOM or a NIfTI volume is one scan per frame or axial slice (key
``<relpath>#<frame>``, ``slice_index`` the 0-based frame). DICOM is read with :data:`READ_SETTINGS`: only
modality MR (decode_file's default; there is no ingest key for it), other modalities and objects without pixel
data are 'skipped' errors-table rows. DICOM identity is not ingested.
"""
from __future__ import annotations

import re

import pandas as pd

from classeg import imaging
from classeg.datasets.common import META_NAMES, SKIPPED, Resolution, base_record, decoded_images
from classeg.labels import TumorClassError, tumor_class_names

DATASET = "folders"
SCAN_EXTENSIONS = imaging.IMAGE_EXTENSIONS + imaging.VOLUME_EXTENSIONS
# decode_file's defaults: modality MR only (training data for a brain-MRI model) and no patient key, since
# ingest keeps no DICOM identity.
READ_SETTINGS = imaging.ReadSettings()
SPLIT_FOLDERS = {"training": "train", "train": "train", "testing": "test", "test": "test",
                 "validation": "val", "val": "val"}
_CONTRAST = re.compile(r"(?:^|[\s_-])(T1C\+|T1|T2|FLAIR)$", re.IGNORECASE)


def sequence_of(class_name: str) -> str | None:
    """``'Astrocitoma T1C+'`` -> ``'T1C+'``; ``'glioma'`` -> None."""
    match = _CONTRAST.search(class_name.strip())
    return match.group(1).upper() if match else None


def parse_path(relpath: str) -> dict:
    parts = relpath.split("/")
    name = parts[-1]
    if name.lower() in META_NAMES:
        return base_record(kind="meta")
    if not name.lower().endswith(SCAN_EXTENSIONS):
        return base_record(kind="error", reason="not_a_scan")
    split_hint = None
    folders = parts[:-1]
    if folders and folders[0].lower() in SPLIT_FOLDERS and len(folders) >= 2:
        split_hint = SPLIT_FOLDERS[folders[0].lower()]
    if not folders or (split_hint and len(folders) < 2):
        return base_record(kind="error", reason="no_class_folder")
    class_name = folders[-1]
    return base_record(kind="image", key=relpath, label_name=class_name, sequence=sequence_of(class_name),
                       split_hint=split_hint)


def decode(relpath: str, data: bytes, *, image_size: int) -> dict | list[dict]:
    """One dict for a 2-D file, one per frame or axial slice (with its ``key`` and ``slice_index``) for a
    multi-frame DICOM or a NIfTI volume, ``{SKIPPED: reason}`` for a DICOM object with nothing to ingest."""
    scan = imaging.decode_file(data, relpath, READ_SETTINGS)
    if scan.skipped is not None:
        return {SKIPPED: scan.skipped}
    if not scan.images:
        raise imaging.DecodeError("bad_structure", f"{relpath}: the file holds no images")
    if len(scan.images) == 1 and scan.images[0].frame is None:
        return _canonical_fields(scan.images[0].pixels, image_size)
    return [{"key": f"{relpath}#{image.frame}", "slice_index": image.frame,
             **_canonical_fields(image.pixels, image_size)} for image in scan.images]


def _canonical_fields(pixels, image_size: int) -> dict:
    height, width = pixels.shape[:2]
    return {"image": imaging.encode_png(imaging.canonical(pixels, image_size)),
            "orig_height": height, "orig_width": width}


def resolve(meta: pd.DataFrame) -> Resolution:
    """Each decoded image (each slice of a multi-image file) is a scan labelled by its class folder; no
    masks."""
    images = decoded_images(meta)
    class_names = sorted(images["label_name"].unique())
    units = images.assign(mask_path=None, fold=None)
    units["label"] = units["label_name"].map({name: i for i, name in enumerate(class_names)})
    if not class_names:
        return Resolution(units.assign(has_tumor=None), [], class_names)
    try:
        tumor = tumor_class_names(class_names)
    except TumorClassError as err:
        units["has_tumor"] = None
        note = f"has_tumor is null: {err}"
    else:
        units["has_tumor"] = units["label_name"].isin(tumor)
        note = f"has_tumor from the class names (classeg.labels): tumour classes {tumor}"
    return Resolution(units, [], class_names, tumor_note=note)
