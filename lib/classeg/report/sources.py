"""Where a work directory's report inputs are: ``pipeline.json``'s locations, else the conventional places
(see :mod:`classeg.report`). Local work directories only."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from classeg.evaluation.classseg import METRICS_NAME as CLASSSEG_METRICS

PIPELINE_NAME = "pipeline.json"
DEFAULT_LOCATIONS = {"scans": "scans", "classifier": "models/classifier", "segmenter": "models/segmenter",
                     "scores": "scores", "archive_truth": "data/archive_truth.json", "evaluation": "evaluation"}


@dataclass
class Sources:
    """Where the report's inputs are (None: not found)."""

    workdir: Path
    scans: Path | None = None
    classifier: Path | None = None
    segmenter: Path | None = None
    scores: Path | None = None
    archive_truth: Path | None = None
    evaluation: Path | None = None  # a `classeg evaluate --classifier --segmenter` output folder
    pipeline: dict = field(default_factory=dict)


def _local_path(location: str | os.PathLike, base: Path) -> Path:
    text = str(location)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" in text:
        raise ValueError(f"the report reads local work directories only, got {str(location)!r}")
    path = Path(text)
    return path if path.is_absolute() else base / path


def find_artifact(location: str | os.PathLike | None, task: str) -> Path | None:
    """The model artifact folder for ``task`` ("classify" | "segment") at or below ``location``: the folder
    itself if it holds a ``model.json`` of that task, else the newest such ``model.json`` below it."""
    if location is None:
        return None
    root = Path(location)
    if not root.exists():
        return None
    candidates = [root / "model.json"] if (root / "model.json").is_file() else []
    candidates += sorted(root.rglob("model.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("task") == task:
            return path.parent
    return None


def locate(workdir: str | os.PathLike) -> Sources:
    """Find the inputs of a work directory (see :mod:`classeg.report`)."""
    base = Path(workdir).resolve()
    if not base.is_dir():
        raise FileNotFoundError(f"work directory {str(base)!r} does not exist")
    pipeline: dict = {}
    if (base / PIPELINE_NAME).is_file():
        try:
            pipeline = json.loads((base / PIPELINE_NAME).read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{base / PIPELINE_NAME} is not valid JSON ({err})") from err
    named = pipeline.get("locations", {}) if isinstance(pipeline, dict) else {}
    paths = {name: _local_path(named.get(name) or default, base) for name, default in DEFAULT_LOCATIONS.items()}
    return Sources(
        workdir=base,
        scans=paths["scans"] if (paths["scans"] / "summary.json").is_file() else None,
        classifier=find_artifact(paths["classifier"], "classify"),
        segmenter=find_artifact(paths["segmenter"], "segment"),
        scores=paths["scores"] if paths["scores"].is_dir() else None,
        archive_truth=paths["archive_truth"] if paths["archive_truth"].is_file() else None,
        evaluation=paths["evaluation"] if (paths["evaluation"] / CLASSSEG_METRICS).is_file() else None,
        pipeline=pipeline if isinstance(pipeline, dict) else {},
    )
