"""Reading a work directory's tables and files for the report: the scan table (ingest summary, errors, test
split), the scores table (completed runs only, newest row per file), scoring run markers and the archive truth.
Tables are read with pyarrow, not Spark, selecting only the columns needed."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("source_uri", "key", "frame", "status", "error", "label", "label_name",
                 "tumor_probability", "tumor", "mask_area_px", "mask_fraction", "height", "width", "series_uid",
                 "modality", "classifier_id", "segmenter_id", "scored_at", "run_id")


def _read_parquet_dir(path: Path, columns=None, filter_expression=None) -> pd.DataFrame:
    """A (hive-partitioned) Parquet folder as pandas; files starting with ``_`` or ``.`` are ignored."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
    wanted = None if columns is None else [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=wanted, filter=filter_expression).to_pandas()


def read_ingest(scans: Path) -> tuple[dict, pd.DataFrame]:
    """(summary.json, errors table) of a scan table folder; the errors table may be empty."""
    summary = json.loads((scans / "summary.json").read_text(encoding="utf-8"))
    errors_dir = scans / "errors"
    errors = (_read_parquet_dir(errors_dir) if errors_dir.is_dir()
              else pd.DataFrame(columns=["source_uri", "relpath", "severity", "reason", "detail"]))
    return summary, errors


def read_test_split(scans: Path, columns, *, max_scans: int) -> pd.DataFrame:
    """The first ``max_scans`` rows of the scan table's test split (by scan_id), with ``columns``."""
    import pyarrow.dataset as ds

    frame = _read_parquet_dir(scans / "scans", columns=list(columns) + ["scan_id"],
                              filter_expression=ds.field("split") == "test")
    return frame.sort_values("scan_id", kind="mergesort").head(max_scans).reset_index(drop=True)


def _run_folders(scores: Path) -> list[tuple[str, Path]]:
    """(run_id, folder) of every ``run_date=D/run_id=R`` folder of a scores table. Folder names are matched
    percent-decoded too (``run_date%3D...``), as Hadoop writes them when given a percent-encoded file URI."""
    from urllib.parse import unquote

    found = []
    for date_dir in sorted(p for p in scores.iterdir() if p.is_dir()):
        if not unquote(date_dir.name).startswith("run_date="):
            continue
        for run_dir in sorted(p for p in date_dir.iterdir() if p.is_dir()):
            name = unquote(run_dir.name)
            if name.startswith("run_id="):
                found.append((name[len("run_id="):], run_dir))
    return found


def _read_scores_table(scores: Path, columns, rows_filter=None) -> pd.DataFrame:
    """Rows of the completed runs of a scores table (those with a ``_runs/<run_id>.json`` marker, as
    :func:`classeg.scoring.table.read_scores` reads them), with ``run_id``. A table without run folders is read as a
    plain (hive-partitioned) Parquet folder."""
    folders = _run_folders(scores)
    if not folders:
        return _read_parquet_dir(scores, columns=columns, filter_expression=rows_filter)
    completed = {r.get("run_id") for r in read_runs(scores)}
    parts = []
    for run_id, folder in folders:
        if run_id not in completed:
            continue
        frame = _read_parquet_dir(folder, columns=[c for c in columns if c != "run_id"],
                                  filter_expression=rows_filter)
        parts.append(frame.assign(run_id=run_id))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(columns))


def read_scores(scores: Path) -> pd.DataFrame:
    """The newest row per ``source_uri`` (and ``frame``, for multi-frame files and volumes) of the completed
    runs of a scores table (without mask bytes)."""
    frame = _read_scores_table(scores, SCORE_COLUMNS)
    if frame.empty:
        return frame
    if "scored_at" in frame:
        frame = frame.sort_values("scored_at", kind="mergesort")
    if "frame" not in frame:
        frame["frame"] = None
    return (frame.drop_duplicates(["source_uri", "frame"], keep="last").sort_values(["source_uri", "frame"])
            .reset_index(drop=True))


def read_score_masks(scores: Path, source_uris) -> dict[tuple[str, int | None], bytes]:
    """(source_uri, frame) -> predicted mask PNG bytes, for the given files (newest row of the completed runs
    wins; ``frame`` None for single-image files)."""
    import pyarrow.dataset as ds

    if not source_uris:
        return {}
    frame = _read_scores_table(scores, ["source_uri", "frame", "mask", "scored_at"],
                               ds.field("source_uri").isin(list(source_uris)))
    if "scored_at" in frame:
        frame = frame.sort_values("scored_at", kind="mergesort")
    if "frame" not in frame:
        frame["frame"] = None
    return {(row.source_uri, frame_index(row.frame)): row.mask for row in frame.itertuples()
            if row.mask is not None}


def frame_index(value) -> int | None:
    """A scores row's ``frame`` as the int or None the masks are keyed by (pandas reads nulls as NaN)."""
    return None if value is None or pd.isna(value) else int(value)


def read_runs(scores: Path) -> list[dict]:
    """The completed scoring runs (their ``_runs/*.json`` markers), oldest first: the scores table's one rule,
    :func:`classeg.scoring.table.completed_runs`. A table whose markers cannot be read shows no runs (logged):
    the report still renders."""
    from classeg.errors import ArchiveError
    from classeg.scoring.table import completed_runs

    try:
        return list(completed_runs(str(scores)).values())
    except ArchiveError as err:
        log.warning("cannot read the run markers of %s: %s", scores, err)
        return []


def read_truth(path: Path) -> tuple[dict[str, dict], list[dict]]:
    """(key -> truth entry, broken files) from an archive truth JSON (see ``classeg.demo.save_archive_truth``).
    Entries with a ``mask_png`` get its path resolved next to the JSON file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    entries = {}
    for entry in data.get("scans", []):
        entry = dict(entry)
        if entry.get("mask_png"):
            entry["mask_png"] = str(path.parent / entry["mask_png"])
        entries[entry["path"]] = entry
    return entries, list(data.get("broken", []))
