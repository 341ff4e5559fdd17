"""LGG FLAIR segmentation layout (Kaggle "lgg-mri-segmentation", TCGA lower-grade glioma).

``TCGA_<inst>_<pid>_<YYYYMMDD>/TCGA_<inst>_<pid>_<YYYYMMDD>_<n>.tif`` (3-channel uint8: pre-contrast, FLAIR,
post-contrast) with ``..._<n>_mask.tif`` beside it ({0, 255}; any non-zero is tumour). ``n`` starts at 1 and
is not zero-padded. The Kaggle archive holds the tree twice; the slice ``key`` (``<folder>/<n>``) is the same
in both copies, so the ingest job keeps one. Each slice is paired with its mask by key; ``has_tumor`` (and the
label, ``tumor`` or ``no_tumor``) comes from the source mask.
"""
from __future__ import annotations

import re

import pandas as pd

from classeg import imaging
from classeg.datasets.common import META_NAMES, Resolution, base_record, decoded_images, issue_rows

DATASET = "lgg"
LABEL_NAMES = ("no_tumor", "tumor")
SEQUENCE = "pre+FLAIR+post"
_FOLDER = re.compile(r"^(TCGA_[A-Za-z0-9]+_[A-Za-z0-9]+)_(\d{8})$")
_FILE = re.compile(r"^(?P<folder>TCGA_[A-Za-z0-9]+_[A-Za-z0-9]+_\d{8})_(?P<n>\d+)(?P<mask>_mask)?\.tiff?$",
                   re.IGNORECASE)


def patient_of(folder: str) -> str:
    """``TCGA_CS_4941_19960909`` -> ``TCGA_CS_4941`` (the folder name without the date)."""
    match = _FOLDER.match(folder)
    if not match:
        raise ValueError(f"not an LGG patient folder name: {folder!r}")
    return match.group(1)


def parse_path(relpath: str) -> dict:
    name = relpath.rsplit("/", 1)[-1]
    if name.lower() in META_NAMES:
        return base_record(kind="meta")
    match = _FILE.match(name)
    if not match:
        reason = "unexpected_tiff_name" if name.lower().endswith((".tif", ".tiff")) else "not_a_scan"
        return base_record(kind="error", reason=reason)
    folder, number = match.group("folder"), int(match.group("n"))
    return base_record(kind="mask" if match.group("mask") else "image", key=f"{folder}/{number}",
                       patient_id=patient_of(folder), slice_index=number, sequence=SEQUENCE)


def decode(relpath: str, data: bytes, *, image_size: int) -> dict:
    array = imaging.decode_pil(data, relpath)
    height, width = array.shape[:2]
    if relpath.lower().endswith(("_mask.tif", "_mask.tiff")):
        mask = imaging.resize_mask(array, image_size)
        # has_tumor comes from the source mask: resizing may erase a lesion of a few pixels.
        return {"mask": imaging.encode_png(mask), "has_tumor": bool((array != 0).any()),
                "orig_height": height, "orig_width": width}
    if array.ndim == 2:
        array = array[..., None].repeat(3, axis=-1)  # a stack with one sequence: replicate like the dataset does
    return {"image": imaging.encode_png(imaging.canonical(array, image_size)),
            "orig_height": height, "orig_width": width}


def resolve(meta: pd.DataFrame) -> Resolution:
    """Pair each decoded slice with its decoded mask (same key). A slice without a mask file and a mask
    without a slice are errors; the partner of a file that failed to decode is skipped."""
    images = decoded_images(meta)
    masks, all_images = meta[meta["kind"] == "mask"], meta[meta["kind"] == "image"]
    ok_masks = masks[masks["reason"].isna()]
    units = images.merge(ok_masks[["key", "path", "has_tumor"]].rename(
        columns={"path": "mask_path", "has_tumor": "mask_has_tumor"}), on="key")
    units["has_tumor"] = units["mask_has_tumor"].astype(bool)
    units["label"] = units["has_tumor"].astype(int)
    units["label_name"] = units["label"].map(dict(enumerate(LABEL_NAMES)))
    units["fold"] = None
    failed_mask_keys = set(masks.loc[masks["reason"].notna(), "key"])
    failed_image_keys = set(all_images.loc[all_images["reason"].notna(), "key"])
    issues = [
        issue_rows(images[~images["key"].isin(masks["key"])], "error", "image_without_mask",
                   "no <name>_mask.tif beside this slice"),
        issue_rows(ok_masks[~ok_masks["key"].isin(all_images["key"])], "error", "mask_without_image",
                   "no slice image for this mask"),
        issue_rows(images[images["key"].isin(failed_mask_keys)], "skipped", "partner_failed",
                   "its mask could not be decoded (see the mask's error row)"),
        issue_rows(ok_masks[ok_masks["key"].isin(failed_image_keys)], "skipped", "partner_failed",
                   "its image could not be decoded (see the image's error row)")]
    return Resolution(units.drop(columns="mask_has_tumor"), issues, list(LABEL_NAMES))
