"""Figshare brain-tumour layout (Jun Cheng, 3064 T1-weighted contrast-enhanced slices, 233 patients).

``1.mat`` ... ``3064.mat`` (MATLAB v7.3 = HDF5, struct ``cjdata``: label 1/2/3, PID, image, tumorBorder,
tumorMask) and ``cvind.mat`` with the official patient-wise 5-fold split. Images are integer intensities,
normalised per image to uint8. Every slice has a tumour; its mask is in the slice's own file. The folds of
the first ``cvind.mat`` become each scan's ``fold``.
"""
from __future__ import annotations

import re

import pandas as pd

from classeg import imaging
from classeg.datasets.common import META_NAMES, Resolution, base_record, decoded_images, issue_rows

DATASET = "figshare"
LABEL_NAMES = ("meningioma", "glioma", "pituitary")  # label = MATLAB code - 1
SEQUENCE = "T1C+"
_SLICE = re.compile(r"^(\d+)\.mat$", re.IGNORECASE)


def parse_path(relpath: str) -> dict:
    name = relpath.rsplit("/", 1)[-1]
    if name.lower() == "cvind.mat":
        return base_record(kind="folds")
    if name.lower() in META_NAMES:
        return base_record(kind="meta")
    match = _SLICE.match(name)
    if not match:
        return base_record(kind="error", reason="not_a_scan")
    number = int(match.group(1))
    return base_record(kind="image", key=str(number), slice_index=number, sequence=SEQUENCE)


def decode(relpath: str, data: bytes, *, image_size: int) -> dict:
    if relpath.rsplit("/", 1)[-1].lower() == "cvind.mat":
        return {"folds": [int(f) for f in imaging.read_cvind(data, relpath)]}
    record = imaging.read_figshare_mat(data, relpath)
    if record.label not in (1, 2, 3):
        raise imaging.DecodeError("bad_structure", f"{relpath}: cjdata.label must be 1, 2 or 3, got {record.label}")
    mask = imaging.resize_mask(record.mask, image_size)
    height, width = record.image.shape
    return {"image": imaging.encode_png(imaging.canonical(record.image, image_size)),
            "mask": imaging.encode_png(mask), "has_tumor": bool(mask.any()),
            "label": record.label - 1, "label_name": LABEL_NAMES[record.label - 1],
            "patient_id": record.patient_id or None, "orig_height": height, "orig_width": width}


def resolve(meta: pd.DataFrame) -> Resolution:
    """Each decoded slice is a scan whose mask is in its own file; labels and has_tumor come from the file.
    The first decoded ``cvind.mat`` (by path) gives the folds, any other is skipped as a duplicate."""
    images = decoded_images(meta)
    folds = meta[(meta["kind"] == "folds") & meta["reason"].isna()].sort_values("path")
    fold_of: dict[str, int] = {}
    issues = []
    if len(folds):
        fold_of = {str(i + 1): int(f) for i, f in enumerate(folds.iloc[0]["folds"])}
        issues = [issue_rows(folds.iloc[:1], "skipped", "folds", "official patient-wise folds (the fold column)"),
                  issue_rows(folds.iloc[1:], "skipped", "duplicate", "another cvind.mat was used")]
    units = images.assign(mask_path=images["path"])
    units["fold"] = units["key"].map(fold_of)
    return Resolution(units, issues, list(LABEL_NAMES))
