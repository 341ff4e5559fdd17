"""Decoded-file metadata -> scans: the layout pairs and labels them, then groups (patients; else the slices
of one file, or single scans) are dealt into splits.

Pure pandas on the driver: no pixels pass through here, only the metadata the decode tasks return.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import pandas as pd

from classeg import split as splitting
from classeg.datasets.common import issue_rows
from classeg.datasets.registry import get_layout
from classeg.ingest.fields import UNIT_FIELDS, names

UNIT_COLUMNS = names(UNIT_FIELDS)


class Resolved(NamedTuple):
    """``units``: one row per scan with UNIT_COLUMNS (``scan_id``, ``image_path``, ``slice_uri``,
    ``mask_path``, patient, label, ``has_tumor``, split and fold); ``issues``: ERROR_COLUMNS rows for files
    that failed to decode, held nothing to ingest or did not pair; ``class_names``: label i is
    ``class_names[i]``; ``tumor_note``: the layout's note on where ``has_tumor`` came from (None where the
    masks give it)."""

    units: pd.DataFrame
    issues: pd.DataFrame
    class_names: list[str]
    tumor_note: str | None


def resolve(meta: pd.DataFrame, *, dataset: str, fractions, seed: int) -> Resolved:
    """Turn decoded-file metadata into scans. ``meta`` has META_FIELDS (one row per decoded file or slice,
    ``reason`` set where decoding failed or found nothing to ingest, ``severity`` 'skipped' for the latter).
    ``fractions``: (train, val, test); ``seed``: the split's seed."""
    resolution = get_layout(dataset).resolve(meta)
    failed = meta["reason"].notna()
    skipped = failed & (meta["severity"] == "skipped")  # read fine, nothing to ingest: not bad input
    issues = pd.concat([issue_rows(meta[failed & ~skipped], "error", None, None),
                        issue_rows(meta[skipped], "skipped", None, None), *resolution.issues], ignore_index=True)
    units = resolution.units.rename(columns={"path": "image_path"})
    if units.empty:
        return Resolved(pd.DataFrame(columns=UNIT_COLUMNS), issues, resolution.class_names, resolution.tumor_note)
    units["scan_id"] = [hashlib.sha1(f"{dataset}:{key}".encode()).hexdigest()[:16] for key in units["key"]]
    # Without a patient id, the slices of one volume or multi-frame file are still one patient's: they are
    # dealt into a split together, so no volume is in two splits.
    several = units["image_path"].duplicated(keep=False)
    alone = ("file:" + units["image_path"]).where(several, "scan:" + units["scan_id"])
    units["group_id"] = units["patient_id"].where(units["patient_id"].notna(), alone)
    units = units.merge(assign_groups(units, fractions=fractions, seed=seed), on="group_id")
    return Resolved(units[UNIT_COLUMNS].reset_index(drop=True), issues, resolution.class_names,
                    resolution.tumor_note)


def assign_groups(units: pd.DataFrame, *, fractions, seed: int) -> pd.DataFrame:
    """Split groups (patients, the slices of one file, or single scans): (group_id, split). A group's stratum
    is its majority label (ties: the lower label); its split hint is its first scan's."""
    counts = units.groupby(["group_id", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["group_id", "n", "label"], ascending=[True, False, True])
    groups = counts.drop_duplicates("group_id")[["group_id", "label"]].rename(columns={"label": "stratum"})
    hints = units.groupby("group_id")["split_hint"].first().rename("split_hint").reset_index()
    groups = groups.merge(hints, on="group_id")
    return splitting.assign_splits(groups, fractions=fractions, seed=seed)
