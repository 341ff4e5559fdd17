"""What every layout reader shares: the per-file record it produces and the reasons a file is rejected.

A layout module exposes two pure functions used by the ingest job (and testable without Spark):

- ``parse_path(relpath) -> dict``: classify a file from its path alone (relative to the dataset root,
  ``/``-separated) into a ``kind`` (see KINDS) with its ``key`` (what pairs an image with its mask, and what
  identifies a slice across duplicate copies), ``patient_id``, ``slice_index``, ``label_name``, ``sequence``
  and ``split_hint`` where the path tells them.
- ``decode(relpath, data, *, image_size) -> dict``: decode one file's bytes into the canonical fields
  (``image``/``mask`` PNG bytes, ``has_tumor``, ``orig_height``, ``orig_width``, labels found inside the file,
  ``folds`` for a folds file). Raises :class:`classeg.imaging.DecodeError` for a bad file.
"""
from __future__ import annotations

KINDS = ("image", "mask", "folds", "meta", "error")

# Names that datasets ship beside the scans; they are recorded as metadata, not as bad input.
META_NAMES = ("data.csv", "readme.md", "readme.txt", "license.txt", "license")


def is_hidden(relpath: str) -> bool:
    """True for dotfiles and OS litter (``.DS_Store``, ``__MACOSX/``, ``Thumbs.db``) anywhere in the path."""
    parts = relpath.split("/")
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() == "thumbs.db"


def base_record(**fields) -> dict:
    record = {"kind": "error", "key": None, "patient_id": None, "slice_index": None, "label": None,
              "label_name": None, "sequence": None, "split_hint": None, "reason": None}
    record.update(fields)
    return record
