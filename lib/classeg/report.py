"""The pipeline report: ``<workdir>/report/index.html`` plus PNG figures beside it, from a work directory's
outputs (scan table, model artifacts, scores table, and the archive's ground truth when it is known).

The page is self-contained: plain HTML and CSS, images as relative PNG files, no JavaScript, every key number
(counts, accuracy, AUC, Dice, error counts) written as text. ``summary.json`` beside it holds the same key
numbers for machines.

Where the inputs are: ``<workdir>/pipeline.json`` (written by ``classeg demo``) maps stage names to locations
(``scans``, ``classifier``, ``segmenter``, ``scores``, ``archive_truth``); without it, or for stages it does
not name, the conventional places are used: ``scans/``, ``models/classifier``, ``models/segmenter``,
``scores/`` and ``data/archive_truth.json``. A model location may be the artifact itself (a folder with
``model.json``) or a training output folder holding one somewhere below it (the newest is used). Missing
inputs make their sections say "not available" and why; the report never fails because a stage has not run.

Figures for the models are recomputed here from the test split of the scan table (at most
``max_eval_scans`` scans, in scan-table order), so the confusion matrix, ROC curve, per-class table and Dice
distribution always agree with each other; the metrics recorded in ``model.json`` at training time are shown
beside them. Segmentation Dice is per image at the model's input size, on test slices whose ground truth has
tumour (the "tumour-only" Dice of the Class-Seg literature; see :mod:`classeg.metrics`).

Local work directories only (the report reads files directly); tables are read with pyarrow, not Spark,
selecting only the columns needed.
"""
from __future__ import annotations

import html
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classeg.artifact import json_default

log = logging.getLogger(__name__)

PIPELINE_NAME = "pipeline.json"
REPORT_DIR = "report"
INDEX_NAME = "index.html"
SUMMARY_NAME = "summary.json"
DEFAULT_LOCATIONS = {"scans": "scans", "classifier": "models/classifier", "segmenter": "models/segmenter",
                     "scores": "scores", "archive_truth": "data/archive_truth.json"}
SCORE_COLUMNS = ("source_uri", "key", "status", "error", "label", "label_name", "tumor_probability", "tumor",
                 "mask_area_px", "mask_fraction", "height", "width", "classifier_id", "segmenter_id",
                 "scored_at", "run_id")
GALLERY_TILE_PX = 192
PREDICTED_RGB = (230, 40, 40)
TRUTH_RGB = (255, 214, 0)


# ---------------------------------------------------------------------------------------------- locating inputs
@dataclass
class Sources:
    """Where the report's inputs are (None: not found)."""

    workdir: Path
    scans: Path | None = None
    classifier: Path | None = None
    segmenter: Path | None = None
    scores: Path | None = None
    archive_truth: Path | None = None
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
    """Find the inputs of a work directory (see the module docstring)."""
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
        pipeline=pipeline if isinstance(pipeline, dict) else {},
    )


# ---------------------------------------------------------------------------------------------- reading inputs
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
    :func:`classeg.scoring.read_scores` reads them), with ``run_id``. A table without run folders is read as a
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
    """The newest row per ``source_uri`` of the completed runs of a scores table (without mask bytes)."""
    frame = _read_scores_table(scores, SCORE_COLUMNS)
    if frame.empty:
        return frame
    if "scored_at" in frame:
        frame = frame.sort_values("scored_at", kind="mergesort")
    return frame.drop_duplicates("source_uri", keep="last").sort_values("source_uri").reset_index(drop=True)


def read_score_masks(scores: Path, source_uris) -> dict[str, bytes]:
    """source_uri -> predicted mask PNG bytes, for the given scans (newest row of the completed runs wins)."""
    import pyarrow.dataset as ds

    if not source_uris:
        return {}
    frame = _read_scores_table(scores, ["source_uri", "mask", "scored_at"],
                               ds.field("source_uri").isin(list(source_uris)))
    if "scored_at" in frame:
        frame = frame.sort_values("scored_at", kind="mergesort")
    return {row.source_uri: row.mask for row in frame.itertuples() if row.mask is not None}


def read_runs(scores: Path) -> list[dict]:
    """Scoring run markers (``_runs/*.json``), oldest first."""
    runs = []
    for path in sorted((scores / "_runs").glob("*.json")):
        try:
            runs.append(json.loads(path.read_text(encoding="utf-8")))
        except ValueError:
            log.warning("skipping unreadable run marker %s", path)
    return sorted(runs, key=lambda r: (str(r.get("completed_at")), str(r.get("run_id"))))


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


# ---------------------------------------------------------------------------------------------- evaluation
def _predict(artifact, images: list[np.ndarray], *, batch_size: int = 64) -> np.ndarray:
    """Model outputs for canonical uint8 scans: classifier (N, K) softmax, segmenter (N, S, S) sigmoid."""
    import torch

    outputs = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.stack([artifact.preprocess(im) for im in images[start:start + batch_size]]))
            logits = artifact.model(batch)
            if artifact.task == "classify":
                outputs.append(torch.softmax(logits, dim=1).numpy())
            else:
                outputs.append(torch.sigmoid(logits)[:, 0].numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0,))


def evaluate_classifier(artifact_dir: Path, scans: Path, *, max_scans: int) -> dict:
    """Recompute the classifier's test metrics: ``report`` (metrics.classification_report), ``y_true``,
    ``probabilities`` (N, K), ``class_names``, ``scans``."""
    from classeg.artifact import load_artifact
    from classeg.imaging import decode_png
    from classeg.metrics import classification_report

    artifact = load_artifact(str(artifact_dir), expect_task="classify")
    frame = read_test_split(scans, ["image", "label"], max_scans=max_scans)
    if frame.empty:
        raise ValueError(f"the scan table {scans} has no test scans")
    probabilities = _predict(artifact, [decode_png(b) for b in frame["image"]])
    y_true = frame["label"].to_numpy().astype(int)
    names = artifact.class_names
    report = classification_report(y_true, probabilities.argmax(axis=1), num_classes=len(names),
                                   class_names=names, scores=probabilities)
    return {"report": report, "y_true": y_true, "probabilities": probabilities, "class_names": names,
            "scans": len(frame), "model_id": artifact.model_id}


def evaluate_segmenter(artifact_dir: Path, scans: Path, *, max_scans: int, threshold: float = 0.5) -> dict:
    """Per-image Dice of the segmenter on test slices with tumour (at the model's input size):
    ``dice`` (N,), ``scans``, ``mean``, ``median``."""
    from classeg.artifact import load_artifact
    from classeg.imaging import decode_png, resize_mask
    from classeg.metrics import dice_per_image

    artifact = load_artifact(str(artifact_dir), expect_task="segment")
    frame = read_test_split(scans, ["image", "mask", "has_tumor"], max_scans=max_scans)
    frame = frame[(frame["has_tumor"] == True) & frame["mask"].notna()]  # noqa: E712 (nullable column)
    if frame.empty:
        raise ValueError(f"the scan table {scans} has no test scans with tumour masks")
    size = int(artifact.meta["input"]["size"])
    probabilities = _predict(artifact, [decode_png(b) for b in frame["image"]])
    targets = np.stack([resize_mask(decode_png(b), size) for b in frame["mask"]])
    dice = dice_per_image(probabilities, targets, threshold=threshold)
    return {"dice": dice, "scans": len(frame), "mean": float(dice.mean()), "median": float(np.median(dice)),
            "model_id": artifact.model_id}


def roc_points(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve (false positive rates, true positive rates), from (0, 0) to (1, 1), one point per distinct
    score threshold (ties move diagonally)."""
    is_positive = np.asarray(is_positive, bool)
    order = np.argsort(-np.asarray(scores, float), kind="mergesort")
    ranked_scores = np.asarray(scores, float)[order]
    ranked = is_positive[order]
    last_of_run = np.r_[ranked_scores[1:] != ranked_scores[:-1], True]
    tp = np.cumsum(ranked)[last_of_run]
    fp = np.cumsum(~ranked)[last_of_run]
    positives, negatives = max(int(is_positive.sum()), 1), max(int((~is_positive).sum()), 1)
    return np.r_[0.0, fp / negatives], np.r_[0.0, tp / positives]


# ---------------------------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display; chosen here, not at import time
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path.name


def _history_frame(history) -> pd.DataFrame:
    rows = [h for h in (history or []) if isinstance(h, dict)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    if "epoch" not in frame:
        frame["epoch"] = np.arange(1, len(frame) + 1)
    return frame


HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "f1_macro", "dice", "dice_tumour", "iou_tumour")


def plot_history(history, path: Path, title: str) -> str | None:
    """Training curves: losses on the left, every other numeric per-epoch value on the right."""
    frame = _history_frame(history)
    if frame.empty:
        return None
    numeric = [c for c in frame.columns if c != "epoch" and pd.api.types.is_numeric_dtype(frame[c])
               and not pd.api.types.is_bool_dtype(frame[c])]
    skip = ("seconds", "time", "lr", "learning_rate", "samples", "images", "step")
    losses = [c for c in numeric if "loss" in c]
    others = [c for c in numeric if c not in losses and not any(s in c for s in skip)]
    headline = [c for c in others if c.split("_", 1)[-1] in HEADLINE_METRICS or c in HEADLINE_METRICS]
    others = headline or others  # per-class and averaged variants crowd the plot; the table has them
    if not losses and not others:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, columns, label in ((axes[0], losses, "loss"), (axes[1], others, "metric")):
        for column in columns:
            axis.plot(frame["epoch"], frame[column], marker="o", label=column)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if columns:
            axis.legend(fontsize=8)
        else:
            axis.text(0.5, 0.5, f"no {label} values recorded", ha="center", va="center", transform=axis.transAxes)
    fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(cm, class_names, path: Path, title: str) -> str:
    plt = _pyplot()
    cm = np.asarray(cm)
    fig, axis = plt.subplots(figsize=(1.3 * len(class_names) + 2.5, 1.1 * len(class_names) + 2))
    axis.imshow(cm, cmap="Blues")
    for (i, j), value in np.ndenumerate(cm):
        axis.text(j, i, str(int(value)), ha="center", va="center",
                  color="white" if value > cm.max() / 2 else "black", fontsize=12)
    axis.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    return _save(fig, path)


def plot_roc(y_true, probabilities, class_names, path: Path, title: str) -> str | None:
    """Binary: the curve for the last class (tumour); multi-class: one-vs-rest per class."""
    from classeg.metrics import roc_auc

    y_true = np.asarray(y_true)
    classes = [len(class_names) - 1] if len(class_names) == 2 else list(range(len(class_names)))
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(4.8, 4.4))
    drawn = 0
    for c in classes:
        positive = y_true == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr = roc_points(positive, probabilities[:, c])
        auc = roc_auc(positive.astype(int), probabilities[:, c])
        axis.plot(fpr, tpr, label=f"{class_names[c]} (AUC {auc:.3f})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title(title)
    return _save(fig, path)


def plot_dice(dice, path: Path, title: str) -> str:
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(5.5, 3.6))
    axis.hist(np.asarray(dice), bins=np.linspace(0, 1, 21), color="#4c72b0", edgecolor="white")
    mean = float(np.mean(dice))
    axis.axvline(mean, color="#c44e52", linestyle="--", label=f"mean {mean:.3f}")
    axis.set_xlabel("Dice per image")
    axis.set_ylabel("images")
    axis.set_xlim(0, 1)
    axis.legend()
    axis.set_title(title)
    return _save(fig, path)


def plot_counts(summary: dict, path: Path) -> str | None:
    """Scans per split and class, stacked bars."""
    per_class = summary.get("per_class") or {}
    splits = [s for s in ("train", "val", "test") if any(s in v for v in per_class.values())]
    if not per_class or not splits:
        return None
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(5.5, 3.4))
    bottom = np.zeros(len(splits))
    for name, counts in per_class.items():
        values = np.array([counts.get(s, 0) for s in splits], float)
        axis.bar(splits, values, bottom=bottom, label=name)
        bottom += values
    axis.set_ylabel("scans")
    axis.legend(fontsize=8)
    axis.set_title("scan table: scans per split and class")
    return _save(fig, path)


def _contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (outside the image counts as outside the mask)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def overlay(image: np.ndarray, predicted: np.ndarray | None, truth: np.ndarray | None, *,
            tile_px: int = GALLERY_TILE_PX) -> np.ndarray:
    """An RGB uint8 picture of ``image`` (any dtype, (H, W) or (H, W, 3)) with the predicted mask tinted red
    (outline red) and the true mask outlined yellow, enlarged (nearest) to at least ``tile_px`` on its long
    side. Masks are (H, W) bool at the image's size (others are resized, nearest)."""
    from PIL import Image

    from classeg.imaging import to_uint8

    pixels = to_uint8(np.asarray(image))
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    rgb = np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels[..., :3].copy()
    height, width = rgb.shape[:2]
    scale = max(1, math.ceil(tile_px / max(height, width)))
    rgb = np.asarray(Image.fromarray(rgb).resize((width * scale, height * scale), Image.NEAREST)).copy()

    def fit(mask):
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = mask.max(axis=2)
        mask = mask != 0
        return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (width * scale, height * scale), Image.NEAREST)) > 127

    if predicted is not None:
        area = fit(predicted)
        tint = np.array(PREDICTED_RGB, float)
        rgb[area] = (0.55 * rgb[area] + 0.45 * tint).astype(np.uint8)
        rgb[_contour(area)] = PREDICTED_RGB
    if truth is not None:
        edge = _contour(fit(truth))
        thick = edge | np.roll(edge, 1, axis=0) | np.roll(edge, 1, axis=1)
        rgb[thick] = TRUTH_RGB
    return rgb


def _save_png(pixels: np.ndarray, path: Path) -> str:
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG")
    return path.name


# ---------------------------------------------------------------------------------------------- HTML helpers
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.{digits}f}"
    return str(value)


def _table(header, rows, *, caption: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(name: str | None, alt: str, caption: str) -> str:
    if not name:
        return f"<p class='missing'>{html.escape(caption)}: not available.</p>"
    return (f"<figure><img src='{html.escape(name)}' alt='{html.escape(alt)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _missing(text: str) -> str:
    return f"<p class='missing'>{html.escape(text)}</p>"


def _metric(metrics: dict | None, *names: str) -> Any:
    """The first of ``names`` found in a model.json ``metrics`` dict, plain, ``test_``-prefixed or under a
    ``test`` sub-dict."""
    if not isinstance(metrics, dict):
        return None
    places = [metrics] + [metrics[k] for k in ("test",) if isinstance(metrics.get(k), dict)]
    for name in names:
        for place in places:
            for key in (name, f"test_{name}"):
                value = place.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return value
    return None


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1200px;
       color: #1f2328; background: #ffffff; line-height: 1.45; padding: 0 16px; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: 6px; }
h2 { margin-top: 36px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 10px 0 18px 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; }
th { background: #f6f8fa; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
figure { display: inline-block; margin: 8px 16px 8px 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 13px; color: #57606a; max-width: 520px; }
.keys { display: flex; flex-wrap: wrap; gap: 10px; padding: 0; list-style: none; }
.keys li { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 12px; }
.keys b { display: block; font-size: 20px; }
.gallery figure { width: 200px; }
.gallery img { width: 192px; image-rendering: pixelated; }
.missing { color: #9a6700; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle; }
"""


# ---------------------------------------------------------------------------------------------- the report
def build_report(workdir: str | os.PathLike, output: str | os.PathLike | None = None, *,
                 max_eval_scans: int = 2000, gallery_size: int = 12) -> dict:
    """Write the report for ``workdir`` into ``output`` (default ``<workdir>/report``); return its summary:
    ``index`` (path of index.html), ``images`` (PNG names), ``key_numbers`` and ``sections`` (name ->
    "ok" or why it is not available). The output folder's old PNGs are removed first."""
    started = time.time()
    sources = locate(workdir)
    out = Path(output).resolve() if output else sources.workdir / REPORT_DIR
    if out.exists():
        for old in list(out.glob("*.png")) + [out / INDEX_NAME, out / SUMMARY_NAME]:
            if old.is_file():
                old.unlink()
        if (out / "gallery").is_dir():
            shutil.rmtree(out / "gallery")
    (out / "gallery").mkdir(parents=True, exist_ok=True)
    keys: dict[str, Any] = {}
    sections: dict[str, str] = {}
    body = [
        _dataset_section(sources, out, keys, sections),
        _classifier_section(sources, out, keys, sections, max_eval_scans),
        _segmenter_section(sources, out, keys, sections, max_eval_scans),
        _scoring_section(sources, out, keys, sections, gallery_size),
        _errors_section(sources, keys, sections),
        _pipeline_section(sources),
    ]
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>classeg pipeline report</title><style>{CSS}</style></head><body>"
        "<h1>classeg pipeline report</h1>"
        f"<p>Work directory <code>{html.escape(str(sources.workdir))}</code>; generated {html.escape(created)}.</p>"
        f"{_key_numbers_html(keys)}{''.join(body)}</body></html>\n")
    (out / INDEX_NAME).write_text(page, encoding="utf-8")
    images = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    summary = {"index": str(out / INDEX_NAME), "created_at": created, "workdir": str(sources.workdir),
               "images": images, "key_numbers": keys, "sections": sections,
               "seconds": round(time.time() - started, 2)}
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, default=json_default), encoding="utf-8")
    log.info("report: %s (%d images, %.1fs)", out / INDEX_NAME, len(images), summary["seconds"])
    return summary


KEY_LABELS = [
    ("scans", "scans in the scan table"), ("patients", "patients"), ("ingest_errors", "ingest errors"),
    ("classifier_accuracy", "classifier test accuracy"), ("classifier_auc", "classifier test ROC AUC"),
    ("segmenter_dice", "segmenter test Dice (tumour slices)"), ("archive_scored", "archive scans scored"),
    ("archive_tumor", "scored as tumour"), ("scoring_errors", "scoring errors"),
    ("archive_accuracy", "archive tumour/no-tumour accuracy vs truth"),
    ("archive_dice", "archive Dice vs truth (tumour scans)"),
]


def _key_numbers_html(keys: dict) -> str:
    items = [f"<li>{html.escape(label)}<b>{html.escape(_fmt(keys[name]))}</b></li>"
             for name, label in KEY_LABELS if name in keys]
    if not items:
        return _missing("No pipeline outputs found in this work directory yet.")
    return "<h2 id='key-numbers'>Key numbers</h2><ul class='keys'>" + "".join(items) + "</ul>"


def _dataset_section(sources: Sources, out: Path, keys: dict, sections: dict) -> str:
    parts = ["<h2 id='dataset'>Dataset (scan table)</h2>"]
    if sources.scans is None:
        sections["dataset"] = "no scan table (summary.json) found"
        return "".join(parts) + _missing("No scan table found: the ingest stage has not run.")
    summary, _ = read_ingest(sources.scans)
    splits = ["train", "val", "test"]
    per_split = summary.get("per_split", {})
    patients = summary.get("patients", {})
    files = summary.get("files", {})
    keys["scans"] = int(summary.get("scans", 0))
    keys["patients"] = int(patients.get("count", 0))
    keys["ingest_errors"] = int(files.get("errors", 0))
    parts.append(
        f"<p>Dataset <b>{html.escape(str(summary.get('dataset')))}</b> from "
        f"<code>{html.escape(str(summary.get('input')))}</code>, canonical size {_fmt(summary.get('image_size'))} px: "
        f"<b>{keys['scans']}</b> scans from <b>{keys['patients']}</b> patients "
        f"({', '.join(f'{s} {per_split.get(s, 0)}' for s in splits)}), "
        f"{_fmt(summary.get('tumor_scans'))} with tumour. {html.escape(str(summary.get('split_note', '')))}.</p>")
    rows = [[name] + [counts.get(s, 0) for s in splits] + [sum(counts.get(s, 0) for s in splits)]
            for name, counts in (summary.get("per_class") or {}).items()]
    rows.append(["all classes"] + [per_split.get(s, 0) for s in splits] + [keys["scans"]])
    rows.append(["patients"] + [patients.get("per_split", {}).get(s, 0) for s in splits] + [keys["patients"]])
    parts.append(_table(["class", *splits, "total"], rows, caption="Scans per split and class"))
    parts.append(_table(["files listed", "became scans", "masks", "errors", "skipped", "error rate"],
                        [[files.get("listed"), files.get("scans"), files.get("masks"), files.get("errors"),
                          files.get("skipped"), summary.get("error_rate")]], caption="Files"))
    parts.append(_figure(plot_counts(summary, out / "dataset_counts.png"), "bar chart of scans per split",
                         "Scans per split, stacked by class"))
    sections["dataset"] = "ok"
    return "".join(parts)


def _classifier_section(sources: Sources, out: Path, keys: dict, sections: dict, max_eval_scans: int) -> str:
    parts = ["<h2 id='classifier'>Classifier</h2>"]
    if sources.classifier is None:
        sections["classifier"] = "no classifier artifact found"
        return "".join(parts) + _missing("No classifier artifact found: the classifier has not been trained.")
    meta = json.loads((sources.classifier / "model.json").read_text(encoding="utf-8"))
    recorded = meta.get("metrics") or {}
    names = list(meta.get("class_names", []))
    arch = meta.get("architecture", {})
    history = meta.get("history") or []
    parts.append(f"<p>Model <code>{html.escape(str(meta.get('model_id')))}</code> "
                 f"({html.escape(str(arch.get('arch', '?')))}, head {html.escape(str(arch.get('head', '?')))}, "
                 f"input {_fmt(meta.get('input', {}).get('size'))} px, classes {html.escape(', '.join(names))}), "
                 f"trained {len(history)} epochs; artifact <code>{html.escape(str(sources.classifier))}</code>.</p>")
    rec_acc = _metric(recorded, "accuracy")
    rec_auc = _metric(recorded, "roc_auc", "auc")
    rec_rows = [[label, _metric(recorded, *aliases)] for label, aliases in (
        ("accuracy", ("accuracy",)), ("balanced accuracy", ("balanced_accuracy",)), ("ROC AUC", ("roc_auc", "auc")),
        ("F1 (macro)", ("f1_macro",)), ("loss", ("loss",)))]
    rec_rows = [r for r in rec_rows if r[1] is not None]
    if rec_rows:
        parts.append(_table(["recorded test metric (model.json)", "value"], rec_rows,
                            caption="Test metrics recorded at training"))
    parts.append(_figure(plot_history(history, out / "classifier_curves.png", "classifier training curves"),
                         "classifier training curves", "Training curves (per epoch, from model.json history)"))
    try:
        evaluation = evaluate_classifier(sources.classifier, sources.scans, max_scans=max_eval_scans) \
            if sources.scans is not None else None
    except (ValueError, OSError, RuntimeError, ImportError) as err:
        log.warning("report: classifier evaluation unavailable: %s", err)
        evaluation, why = None, f"{type(err).__name__}: {err}"
    else:
        why = "no scan table to evaluate on"
    if evaluation is None:
        keys["classifier_accuracy"] = rec_acc
        if rec_auc is not None:
            keys["classifier_auc"] = rec_auc
        cm = recorded.get("confusion_matrix") if isinstance(recorded, dict) else None
        parts.append(_missing(f"Not recomputed on the test split ({why})."))
        if cm and names:
            parts.append(_figure(plot_confusion(cm, names, out / "confusion_matrix.png", "confusion matrix (recorded)"),
                                 "confusion matrix", "Confusion matrix recorded in model.json"))
        sections["classifier"] = f"recorded metrics only: {why}"
        return "".join(parts)
    report = evaluation["report"]
    keys["classifier_accuracy"] = report["accuracy"] if rec_acc is None else rec_acc
    keys["classifier_auc"] = report.get("roc_auc") if rec_auc is None else rec_auc
    keys["classifier_test_scans"] = evaluation["scans"]
    keys["classifier_accuracy_recomputed"] = report["accuracy"]
    parts.append(f"<p>Recomputed by this report on <b>{evaluation['scans']}</b> test scans: accuracy "
                 f"<b>{_fmt(report['accuracy'])}</b>, balanced accuracy {_fmt(report['balanced_accuracy'])}, "
                 f"ROC AUC <b>{_fmt(report.get('roc_auc'))}</b>, macro F1 {_fmt(report['macro']['f1'])}.</p>")
    per_class = [[name, e["precision"], e["recall"], e["specificity"], e["f1"], e.get("roc_auc"), e["support"]]
                 for name, e in report["per_class"].items()]
    parts.append(_table(["class", "precision", "recall", "specificity", "F1", "ROC AUC", "support"], per_class,
                        caption="Per-class metrics (test split)"))
    cm = report["confusion_matrix"]
    parts.append(_table(["true \\ predicted", *names], [[n, *row] for n, row in zip(names, cm)],
                        caption="Confusion matrix (rows true, columns predicted)"))
    parts.append(_figure(plot_confusion(cm, names, out / "confusion_matrix.png", "confusion matrix (test)"),
                         "confusion matrix", "Confusion matrix on the test split"))
    parts.append(_figure(plot_roc(evaluation["y_true"], evaluation["probabilities"], names, out / "roc_curve.png",
                                  "ROC curve (test)"),
                         "ROC curve", "ROC curve on the test split (needs both classes present)"))
    sections["classifier"] = "ok"
    return "".join(parts)


def _segmenter_section(sources: Sources, out: Path, keys: dict, sections: dict, max_eval_scans: int) -> str:
    parts = ["<h2 id='segmenter'>Segmenter</h2>"]
    if sources.segmenter is None:
        sections["segmenter"] = "no segmenter artifact found"
        return "".join(parts) + _missing("No segmenter artifact found: the segmenter has not been trained.")
    meta = json.loads((sources.segmenter / "model.json").read_text(encoding="utf-8"))
    recorded = meta.get("metrics") or {}
    history = meta.get("history") or []
    arch = meta.get("architecture", {})
    parts.append(f"<p>Model <code>{html.escape(str(meta.get('model_id')))}</code> (ResUNet, base filters "
                 f"{_fmt(arch.get('base_filters', arch.get('config', {}).get('base_filters')))}, input "
                 f"{_fmt(meta.get('input', {}).get('size'))} px), trained {len(history)} epochs; artifact "
                 f"<code>{html.escape(str(sources.segmenter))}</code>.</p>")
    rec_rows = [[label, _metric(recorded, *aliases)] for label, aliases in (
        ("Dice (tumour images)", ("dice_tumour", "dice_tumor")), ("Dice (all images)", ("dice",)),
        ("IoU (tumour images)", ("iou_tumour", "iou_tumor")), ("Dice (pooled pixels)", ("dice_global",)),
        ("detection rate", ("detection_rate",)), ("loss", ("loss",)))]
    rec_rows = [r for r in rec_rows if r[1] is not None]
    if rec_rows:
        parts.append(_table(["recorded test metric (model.json)", "value"], rec_rows,
                            caption="Test metrics recorded at training"))
    rec_dice = _metric(recorded, "dice_tumour", "dice_tumor", "dice")
    parts.append(_figure(plot_history(history, out / "segmenter_curves.png", "segmenter training curves"),
                         "segmenter training curves", "Training curves (per epoch, from model.json history)"))
    try:
        evaluation = evaluate_segmenter(sources.segmenter, sources.scans, max_scans=max_eval_scans) \
            if sources.scans is not None else None
    except (ValueError, OSError, RuntimeError, ImportError) as err:
        log.warning("report: segmenter evaluation unavailable: %s", err)
        evaluation, why = None, f"{type(err).__name__}: {err}"
    else:
        why = "no scan table to evaluate on"
    if evaluation is None:
        keys["segmenter_dice"] = rec_dice
        sections["segmenter"] = f"recorded metrics only: {why}"
        return "".join(parts) + _missing(f"Dice distribution not recomputed ({why}).")
    keys["segmenter_dice"] = evaluation["mean"] if rec_dice is None else rec_dice
    keys["segmenter_dice_recomputed"] = evaluation["mean"]
    keys["segmenter_test_scans"] = evaluation["scans"]
    dice = evaluation["dice"]
    parts.append(f"<p>Recomputed by this report on <b>{evaluation['scans']}</b> test slices with tumour: mean Dice "
                 f"<b>{_fmt(evaluation['mean'])}</b>, median {_fmt(evaluation['median'])}, "
                 f"{int((dice >= 0.5).sum())} of {len(dice)} slices with Dice at least 0.5.</p>")
    parts.append(_figure(plot_dice(dice, out / "dice_distribution.png", "Dice per test slice with tumour"),
                         "histogram of Dice", "Dice distribution on the test split (tumour slices)"))
    sections["segmenter"] = "ok"
    return "".join(parts)


def _gallery_choice(scores: pd.DataFrame, truth: dict, size: int) -> pd.DataFrame:
    """Up to ``size`` ok rows: predicted tumours first (those with known truth first), then a few negatives."""
    ok = scores[scores["status"] == "ok"].copy()
    if ok.empty:
        return ok
    ok["known"] = ok["key"].isin(truth.keys()) if "key" in ok else False
    tumor = ok[ok["tumor"] == True].sort_values(["known", "key"], ascending=[False, True])  # noqa: E712
    other = ok[ok["tumor"] != True].sort_values(["known", "key"], ascending=[False, True])  # noqa: E712
    negatives = min(len(other), max(size // 3, size - len(tumor)))
    return pd.concat([tumor.head(size - negatives), other.head(negatives)])


def _scoring_section(sources: Sources, out: Path, keys: dict, sections: dict, gallery_size: int) -> str:
    from classeg.archive import error_kind

    parts = ["<h2 id='scoring'>Archive scoring (Class-Seg)</h2>"]
    if sources.scores is None:
        sections["scoring"] = "no scores table found"
        return "".join(parts) + _missing("No scores table found: the archive has not been scored.")
    scores = read_scores(sources.scores)
    runs = read_runs(sources.scores)
    truth, broken = read_truth(sources.archive_truth) if sources.archive_truth else ({}, [])
    if scores.empty:
        sections["scoring"] = "scores table is empty"
        return "".join(parts) + _missing("The scores table has no rows yet.")
    ok = scores[scores["status"] == "ok"]
    errors = scores[scores["status"] == "error"]
    tumor = ok[ok["tumor"] == True]  # noqa: E712
    keys["archive_scored"] = len(scores)
    keys["archive_tumor"] = len(tumor)
    keys["scoring_errors"] = len(errors)
    parts.append(f"<p><b>{len(scores)}</b> archive files scored (newest result per file): <b>{len(ok)}</b> ok, "
                 f"<b>{len(errors)}</b> errors; <b>{len(tumor)}</b> classified as tumour and segmented, "
                 f"{len(ok) - len(tumor)} as no tumour. Scores table <code>{html.escape(str(sources.scores))}</code>."
                 "</p>")
    if runs:
        rows = [[r.get("run_id"), r.get("run_date"), r.get("completed_at"),
                 *(r.get("summary", {}).get(k) for k in ("listed", "pending", "scored", "ok", "errors"))]
                for r in runs]
        parts.append(_table(["run", "run date", "completed", "listed", "new", "scored", "ok", "errors"], rows,
                            caption="Scoring runs (incremental: each run scores only new or changed files)"))
    if not ok.empty and "label_name" in ok:
        counts = ok["label_name"].value_counts()
        parts.append(_table(["predicted class", "scans"], [[k, int(v)] for k, v in counts.items()],
                            caption="Predicted classes"))
    # Against the truth the demo saved for its synthetic archive.
    dice_by_key: dict[str, float] = {}
    if truth:
        known = ok[ok["key"].isin(truth.keys())] if "key" in ok else ok.iloc[:0]
        if len(known):
            truth_tumor = known["key"].map(lambda k: bool(truth[k]["has_tumor"]))
            correct = known["tumor"].astype("boolean").fillna(False).astype(bool) == truth_tumor
            keys["archive_accuracy"] = float(correct.mean())
            keys["archive_known"] = len(known)
            dice_by_key = _archive_dice(sources.scores, known, truth)
            if dice_by_key:
                keys["archive_dice"] = float(np.mean(list(dice_by_key.values())))
            parts.append(
                f"<p>Against the archive's known truth ({len(known)} scans): tumour/no-tumour accuracy "
                f"<b>{_fmt(keys['archive_accuracy'])}</b>"
                + (f"; mean Dice on the {len(dice_by_key)} true-tumour scans <b>{_fmt(keys['archive_dice'])}</b> "
                   "(a tumour scan classified as no tumour counts as Dice 0)" if dice_by_key else "")
                + f". Planted broken files: {len(broken)}, of which "
                f"{int(errors['key'].isin([b['path'] for b in broken]).sum()) if 'key' in errors else 0} "
                "became error rows.</p>")
    chosen = _gallery_choice(scores, truth, gallery_size)
    parts.append("<h3>Gallery</h3><p class='legend'>Predicted mask: <span style='background:rgb"
                 f"{PREDICTED_RGB}'></span>red tint and outline; ground truth: "
                 f"<span style='background:rgb{TRUTH_RGB}'></span>yellow outline (where known).</p>")
    tiles = _gallery_tiles(sources.scores, chosen, truth, dice_by_key, out / "gallery")
    parts.append("<div class='gallery'>" + "".join(tiles) + "</div>" if tiles else _missing("No scans to show."))
    kinds = errors["error"].map(lambda e: error_kind(e) or "unknown") if len(errors) else pd.Series(dtype=str)
    keys["scoring_errors_by_kind"] = {str(k): int(v) for k, v in kinds.value_counts().items()}
    sections["scoring"] = "ok"
    return "".join(parts)


def _archive_dice(scores_dir: Path, known: pd.DataFrame, truth: dict) -> dict[str, float]:
    """key -> Dice of the predicted mask against the true mask, for scans whose truth has tumour."""
    from classeg.imaging import decode_png
    from classeg.metrics import dice_per_image

    positives = known[known["key"].map(lambda k: bool(truth[k]["has_tumor"]) and bool(truth[k].get("mask_png")))]
    masks = read_score_masks(scores_dir, positives["source_uri"].tolist())
    result = {}
    for row in positives.itertuples():
        true_mask = decode_png(Path(truth[row.key]["mask_png"]).read_bytes()) != 0
        data = masks.get(row.source_uri)
        predicted = decode_png(data) != 0 if data is not None else np.zeros_like(true_mask)
        if predicted.ndim == 3:
            predicted = predicted.any(axis=2)
        if predicted.shape != true_mask.shape:
            log.warning("report: %s: predicted mask %s vs true mask %s, skipped", row.key, predicted.shape,
                        true_mask.shape)
            continue
        result[row.key] = float(dice_per_image(predicted, true_mask)[0])
    return result


def _gallery_tiles(scores_dir: Path, chosen: pd.DataFrame, truth: dict, dice_by_key: dict, folder: Path) -> list[str]:
    from classeg.archive import FetchError, fetch
    from classeg.imaging import DecodeError, decode_png, decode_scan

    masks = read_score_masks(scores_dir, chosen["source_uri"].tolist()) if len(chosen) else {}
    tiles = []
    for index, row in enumerate(chosen.itertuples()):
        key = getattr(row, "key", None) or row.source_uri.rsplit("/", 1)[-1]
        try:
            image = decode_scan(fetch(row.source_uri), key)
        except (FetchError, DecodeError) as err:
            log.warning("report: cannot show %s: %s", row.source_uri, err)
            continue
        predicted = decode_png(masks[row.source_uri]) if row.source_uri in masks else None
        entry = truth.get(key)
        true_mask = None
        if entry and entry.get("mask_png"):
            true_mask = decode_png(Path(entry["mask_png"]).read_bytes())
        name = _save_png(overlay(image, predicted, true_mask), folder / f"scan_{index:03d}.png")
        caption = (f"{key}: predicted {row.label_name} (tumour probability {_fmt(row.tumor_probability)})"
                   + (f", mask {int(row.mask_area_px)} px" if predicted is not None and pd.notna(row.mask_area_px) else ""))
        if entry:
            caption += f"; truth {entry.get('label_name')}"
            if key in dice_by_key:
                caption += f", Dice {_fmt(dice_by_key[key])}"
        tiles.append(_figure(f"gallery/{name}", f"scan {key} with predicted mask", caption))
    return tiles


def _errors_section(sources: Sources, keys: dict, sections: dict) -> str:
    from classeg.archive import error_kind

    parts = ["<h2 id='errors'>Errors</h2>",
             "<p>Bad inputs are data, not crashes: every file that did not become a scan or a score is listed "
             "with its reason.</p>"]
    rows = []
    if sources.scans is not None:
        summary, errors = read_ingest(sources.scans)
        for severity in ("error", "skipped"):
            subset = errors[errors["severity"] == severity] if len(errors) else errors
            for reason, group in subset.groupby("reason") if len(subset) else []:
                examples = ", ".join(group["relpath"].astype(str).head(3))
                rows.append(["ingest", severity, reason, len(group), examples])
    if sources.scores is not None:
        scores = read_scores(sources.scores)
        failed = scores[scores["status"] == "error"] if len(scores) else scores
        if len(failed):
            kinds = failed["error"].map(lambda e: error_kind(e) or "unknown")
            for kind, group in failed.groupby(kinds):
                examples = "; ".join(f"{k}: {str(e)[:90]}" for k, e in zip(group["key"].head(3), group["error"]))
                rows.append(["scoring", "error", kind, len(group), examples])
    if not rows:
        sections["errors"] = "no errors recorded"
        return "".join(parts) + "<p>No errors recorded.</p>"
    keys["errors_by_reason"] = {f"{r[0]}:{r[2]}": r[3] for r in rows if r[1] == "error"}
    parts.append(_table(["stage", "severity", "reason", "files", "examples"], rows,
                        caption="Errors and skipped files by reason"))
    sections["errors"] = "ok"
    return "".join(parts)


def _pipeline_section(sources: Sources) -> str:
    stages = sources.pipeline.get("stages") if sources.pipeline else None
    if not stages:
        return ""
    rows = [[name, stage.get("status"), f"{stage.get('seconds') or 0:.1f}", stage.get("output"), stage.get("note", "")]
            for name, stage in stages.items() if name != "report"]
    return "<h2 id='pipeline'>Pipeline run</h2>" + _table(["stage", "status", "seconds", "output", "note"], rows,
                                                         caption="Stages of the last demo run")
