"""What every dataset layout shares: the :class:`Layout` protocol, the per-file record a layout produces and
the issue rows that account for files that did not become scans.

A layout (one module per layout, registered in :mod:`classeg.datasets.registry`) answers three questions for
the ingest job, each a pure function testable without Spark:

- ``parse_path(relpath) -> dict``: classify a file from its path alone (relative to the dataset root,
  ``/``-separated) into a ``kind`` (see KINDS) with its ``key`` (what pairs an image with its mask, and what
  identifies a slice across duplicate copies), ``patient_id``, ``slice_index``, ``label_name``, ``sequence``
  and ``split_hint`` where the path tells them (:func:`base_record` gives every field).
- ``decode(relpath, data, *, image_size) -> dict | list[dict]``: decode one file's bytes into the canonical
  fields (``image``/``mask`` PNG bytes, ``has_tumor``, ``orig_height``, ``orig_width``, labels found inside the
  file, ``folds`` for a folds file). A file of several images (a multi-frame DICOM, a NIfTI volume) gives a
  list, one dict per slice, each with its own ``key`` (distinct from every other slice's) and ``slice_index``
  (the 0-based frame or axial slice); the ingest job makes each slice a decoded row of its own. A file that was
  read but holds nothing to ingest (a DICOM object without pixel data, or of another modality) gives
  ``{SKIPPED: reason}`` and becomes a 'skipped' errors-table row. Raises :class:`classeg.imaging.DecodeError`
  for a bad file.
- ``resolve(meta) -> Resolution``: the layout's own step from decoded files to scans: which image goes with
  which mask, what each scan's label and ``has_tumor`` are, and which files are orphans.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pandas as pd

KINDS = ("image", "mask", "folds", "meta", "error")

# Names that datasets ship beside the scans; they are recorded as metadata, not as bad input.
META_NAMES = ("data.csv", "readme.md", "readme.txt", "license.txt", "license")

# The errors table: one row per listed file that did not become (part of) a scan. ``severity`` is 'error'
# (bad input, counted in the error rate) or 'skipped' (duplicates, metadata, partners of failed files, files
# with nothing to ingest).
ERROR_COLUMNS = ["source_uri", "relpath", "severity", "reason", "detail"]

# The key of a decode result for a file with nothing to ingest: ``{SKIPPED: reason}``.
SKIPPED = "skipped"

# What a layout's resolve step returns per scan, besides the image file's own parsed fields.
UNIT_FIELDS = ("mask_path", "label", "label_name", "has_tumor", "fold")


@dataclass(frozen=True)
class Resolution:
    """A layout's scans and the files it rejected while pairing them.

    ``units``: one row per scan, the image's row of ``meta`` (``path`` is the image file, ``slice_uri`` the
    decoded row: the file's path, or ``<path>#<n>`` for one slice of a multi-image file) plus UNIT_FIELDS:
    ``mask_path`` (the ``slice_uri`` of the decoded row holding the mask: a separate file, the image file
    itself, or None; for a one-image file that is its path), ``label``
    (0-based index into ``class_names``), ``label_name``, ``has_tumor`` (bool, or None when unknown) and
    ``fold`` (int or None). ``issues``: ERROR_COLUMNS rows for files of ``meta`` that decoded but did not
    become scans (decode failures are recorded by the job, not here). ``tumor_note``: why ``has_tumor`` is
    what it is where that comes from class names rather than masks (None otherwise).
    """

    units: pd.DataFrame
    issues: list[pd.DataFrame]
    class_names: list[str]
    tumor_note: str | None = None


class Layout(Protocol):
    """A dataset layout; the layout modules (lgg, figshare, folders) are its implementations."""

    DATASET: str

    def parse_path(self, relpath: str) -> dict: ...

    def decode(self, relpath: str, data: bytes, *, image_size: int) -> dict | list[dict]: ...

    def resolve(self, meta: pd.DataFrame) -> Resolution: ...


def is_hidden(relpath: str) -> bool:
    """True for dotfiles and OS litter (``.DS_Store``, ``__MACOSX/``, ``Thumbs.db``) anywhere in the path."""
    parts = relpath.split("/")
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() == "thumbs.db"


def base_record(**fields) -> dict:
    """A parse_path record: every field None (kind 'error') except those given."""
    record = {"kind": "error", "key": None, "patient_id": None, "slice_index": None, "label": None,
              "label_name": None, "sequence": None, "split_hint": None, "reason": None}
    record.update(fields)
    return record


def decoded_images(meta: pd.DataFrame) -> pd.DataFrame:
    """The images of ``meta`` that decoded (``reason`` null: neither failed nor skipped), as a copy; a
    multi-image file has one row per slice."""
    return meta[(meta["kind"] == "image") & meta["reason"].isna()].copy()


def issue_rows(frame: pd.DataFrame, severity: str, reason: str | None, detail: str | None) -> pd.DataFrame:
    """ERROR_COLUMNS rows for the files of ``frame`` (which has ``path`` and ``relpath``); ``reason``/``detail``
    None take the frame's own ``reason``/``detail`` columns."""
    own_detail = frame["detail"].to_numpy() if "detail" in frame else None
    return pd.DataFrame({"source_uri": frame["path"].to_numpy(), "relpath": frame["relpath"].to_numpy(),
                         "severity": severity,
                         "reason": reason if reason is not None else frame["reason"].to_numpy(),
                         "detail": detail if detail is not None else own_detail}, columns=ERROR_COLUMNS)
