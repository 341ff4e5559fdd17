"""The columns of ingest's intermediate frames, as (name, Spark type) pairs, and their Spark DDL."""
from __future__ import annotations

# One row per listed file, from its path alone (listing.parse_listing).
PARSED_FIELDS = [("path", "string"), ("relpath", "string"), ("kind", "string"), ("key", "string"),
                 ("patient_id", "string"), ("slice_index", "int"), ("label", "int"), ("label_name", "string"),
                 ("sequence", "string"), ("split_hint", "string"), ("reason", "string")]
# One row per decoded file, or per slice of a multi-image file (decode.decode_frame): the parsed fields plus
# what decoding found. ``slice_uri`` names the row (the file's path; ``<path>#<n>`` for its n-th slice): the
# staging files and the joins with the resolved scans go by it. ``severity`` ('error' or 'skipped') says what
# a ``reason`` is.
DECODED_FIELDS = PARSED_FIELDS + [("slice_uri", "string"), ("severity", "string"), ("detail", "string"),
                                  ("image", "binary"), ("mask", "binary"), ("has_tumor", "boolean"),
                                  ("orig_height", "int"), ("orig_width", "int"), ("folds", "array<int>")]
# What the driver collects from the decode tasks: everything but the pixels.
META_FIELDS = [field for field in DECODED_FIELDS if field[0] not in ("image", "mask")]
# One row per resolved scan (resolve.resolve), before the pixels are joined in.
UNIT_FIELDS = [("scan_id", "string"), ("key", "string"), ("image_path", "string"), ("slice_uri", "string"),
               ("mask_path", "string"), ("patient_id", "string"), ("slice_index", "int"), ("sequence", "string"),
               ("label", "int"), ("label_name", "string"), ("has_tumor", "boolean"), ("split", "string"),
               ("fold", "int")]


def names(fields) -> list[str]:
    return [name for name, _ in fields]


def ddl(fields) -> str:
    """``"name type, ..."``: the schema string Spark's createDataFrame and mapInPandas take."""
    return ", ".join(f"{name} {kind}" for name, kind in fields)
