"""Every figure the project draws, as PNG bytes: the pipeline report (`classeg.report`) saves them beside its
page, training and `classeg evaluate` write them beside a model artifact (local folders and s3:// alike).

Matplotlib with the Agg backend, chosen at call time, never at import. Conventions shared by all figures:
class order is the artifact's ``class_names`` order; for a binary classifier the last class is the tumour
class; masks are (H, W) with non-zero meaning tumour; Dice values lie in [0, 1] (NaN entries are ignored).

``write_evaluation`` writes ``metrics.json`` and the task's figures into an artifact folder: classifier ->
``confusion_matrix.png`` and ``training_curves.png`` (when there is a history); segmenter ->
``dice_histogram.png``, ``overlays.png`` and ``training_curves.png``.
"""
from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

METRICS_NAME = "metrics.json"
DPI = 100
TILE_PX = 192
PREDICTED_RGB = (230, 40, 40)
TRUTH_RGB = (255, 214, 0)
# Per-epoch metrics worth a line on the curves; per-class and averaged variants crowd the plot (the tables
# have them). Both spellings of the tumour metrics: histories in older model.json files say "tumour".
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "f1_macro", "dice", "dice_tumor", "iou_tumor",
                    "dice_tumour", "iou_tumour")
# Per-epoch values that are bookkeeping, not quality: never drawn as metrics.
_NOT_METRICS = ("seconds", "time", "lr", "learning_rate", "samples", "images", "step")


class RocMarker(NamedTuple):
    """A point drawn on a ROC curve: ``label`` for the legend, rates in [0, 1]."""

    label: str
    false_positive_rate: float
    true_positive_rate: float


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display; chosen here, not at import time
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- classifier
def confusion_matrix_png(cm, class_names: Sequence[str], *, title: str = "Confusion matrix") -> bytes:
    """(K, K) counts, rows true, columns predicted; each cell shows its count and row share."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = cm.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(k), class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _png(fig)


def roc_points(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve as drawn: (false positive rates, true positive rates) of
    :func:`classeg.metrics.roc_curve` for (N,) truth and (N,) scores, from (0, 0) to (1, 1), one point per
    distinct score (ties move diagonally). Both classes must occur."""
    from classeg.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(is_positive, bool), np.asarray(scores, float))
    return fpr, tpr


def roc_curve_png(y_true, probabilities, class_names: Sequence[str], *, title: str = "ROC curve",
                  markers: Sequence[RocMarker] = ()) -> bytes | None:
    """ROC curves from (N,) true labels and (N, K) class probabilities. Binary: the curve of the last class
    (tumour); multi-class: one-vs-rest per class. ``markers`` are drawn as points (an operating point). None
    when no class has both positives and negatives."""
    from classeg.metrics import roc_auc

    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
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
    for marker, style in zip(markers, ("o", "s", "^", "D")):
        axis.plot([marker.false_positive_rate], [marker.true_positive_rate], marker=style, linestyle="none",
                  markersize=8, markeredgecolor="black", label=marker.label)
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title(title)
    return _png(fig)


def class_counts_png(per_class: dict, *, title: str = "scan table: scans per split and class") -> bytes | None:
    """Stacked bars of scans per split (train, val, test), one colour per class, from an ingest summary's
    ``per_class`` ({class: {split: count}}); None when it names no split."""
    splits = [s for s in ("train", "val", "test") if any(s in v for v in (per_class or {}).values())]
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
    axis.set_title(title)
    return _png(fig)


# ---------------------------------------------------------------------------------------------- training
def _curve_columns(history: Sequence[dict]):
    """(frame, loss columns, metric columns) of a per-epoch history; ``epoch`` is 1, 2, ... where missing."""
    import pandas as pd

    frame = pd.DataFrame([h for h in (history or []) if isinstance(h, dict)])
    if frame.empty:
        return frame, [], []
    if "epoch" not in frame:
        frame["epoch"] = np.arange(1, len(frame) + 1)
    numeric = [c for c in frame.columns if c != "epoch" and pd.api.types.is_numeric_dtype(frame[c])
               and not pd.api.types.is_bool_dtype(frame[c])]
    losses = [c for c in numeric if "loss" in c]
    others = [c for c in numeric if c not in losses and not any(s in c for s in _NOT_METRICS)]
    headline = [c for c in others if c.split("_", 1)[-1] in HEADLINE_METRICS or c in HEADLINE_METRICS]
    return frame, losses, headline or others


def training_curves_png(history: Sequence[dict], *, title: str = "Training curves") -> bytes | None:
    """Losses on the left, the headline quality metrics (``HEADLINE_METRICS``, plain or ``val_``-prefixed)
    on the right, per epoch, from a history of dicts (model.json's ``history``); None without values."""
    from matplotlib.ticker import MaxNLocator

    frame, losses, others = _curve_columns(history)
    if not losses and not others:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, columns, label in ((axes[0], losses, "loss"), (axes[1], others, "metric")):
        for column in columns:
            axis.plot(frame["epoch"], frame[column], marker="o", label=column)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if columns:
            axis.legend(fontsize=8)
        else:
            axis.text(0.5, 0.5, f"no {label} values recorded", ha="center", va="center", transform=axis.transAxes)
    fig.suptitle(title)
    return _png(fig)


# ---------------------------------------------------------------------------------------------- segmenter
def dice_histogram_png(dice: Sequence[float], *, title: str = "Dice per tumour slice") -> bytes:
    """Histogram of per-image Dice in [0, 1] with its mean (NaN and None entries are left out)."""
    plt = _pyplot()
    values = np.asarray([d for d in dice if d is not None and not math.isnan(d)], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.hist(values, bins=np.linspace(0, 1, 21), color="#4c72b0", edgecolor="white")
    if values.size:
        ax.axvline(values.mean(), color="#c44e52", linestyle="--",
                   label=f"mean {values.mean():.3f} (n={values.size})")
        ax.legend()
    ax.set_xlabel("Dice per image")
    ax.set_ylabel("images")
    ax.set_xlim(0, 1)
    ax.set_title(title)
    return _png(fig)


def _contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (outside the image counts as outside the mask)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def overlay(image: np.ndarray, predicted: np.ndarray | None, truth: np.ndarray | None, *,
            tile_px: int = TILE_PX) -> np.ndarray:
    """An RGB uint8 picture of ``image`` (any dtype, (H, W) or (H, W, 3)) with the predicted mask tinted red
    (outline red) and the true mask outlined yellow, enlarged (nearest) to at least ``tile_px`` on its long
    side. Masks are (H, W) or (H, W, C), non-zero meaning tumour, at the image's size (others are resized,
    nearest)."""
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


def rgb_png(pixels: np.ndarray) -> bytes:
    """(H, W, 3) uint8 pixels (an ``overlay``) as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _display(image: np.ndarray) -> np.ndarray:
    """Model input (C, H, W) or (H, W), any normalisation -> (H, W) or (H, W, 3) uint8, clipped to the 1st-99th
    percentile so that z-scored inputs keep their contrast."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        image = image.transpose(1, 2, 0)
        image = image[..., 0] if image.shape[2] == 1 else image[..., :3]
    low, high = np.percentile(image, 1), np.percentile(image, 99)
    scaled = np.clip((image - low) / (high - low if high > low else 1.0), 0, 1)
    return np.rint(scaled * 255).astype(np.uint8)


def overlay_gallery_png(samples: Sequence[dict], *, title: str = "Segmentation overlays") -> bytes | None:
    """Tiles of ``samples`` (dicts with ``image`` (C, H, W), ``mask`` and ``prediction`` (H, W) or (1, H, W),
    ``dice``), each drawn by :func:`overlay`: prediction tinted red, ground truth outlined yellow; None
    without samples."""
    if not samples:
        return None
    plt = _pyplot()
    columns = min(4, len(samples))
    rows = math.ceil(len(samples) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, sample in zip(axes.ravel(), samples):
        prediction = np.asarray(sample["prediction"])
        truth = np.asarray(sample["mask"])
        ax.imshow(overlay(_display(sample["image"]), prediction.reshape(prediction.shape[-2:]) > 0.5,
                          truth.reshape(truth.shape[-2:]) > 0.5))
        ax.set_title(f"Dice {sample.get('dice', math.nan):.2f}", fontsize=9)
    fig.suptitle(title)
    return _png(fig)


# ---------------------------------------------------------------------------------------------- artifact folder
def evaluation_figures(*, task: str, metrics: dict, class_names: Sequence[str], history=(),
                       dice: Sequence[float] = (), samples: Sequence[dict] = ()) -> dict[str, bytes]:
    """File name -> PNG bytes of the figures an artifact folder holds for ``task`` ("classify" | "segment");
    figures without data are left out."""
    figures: dict[str, bytes | None] = {"training_curves.png": training_curves_png(list(history))}
    if task == "classify":
        cm = metrics.get("confusion_matrix")
        if cm is not None:
            figures["confusion_matrix.png"] = confusion_matrix_png(cm, class_names)
    else:
        figures["dice_histogram.png"] = dice_histogram_png(dice)
        figures["overlays.png"] = overlay_gallery_png(samples)
    return {name: data for name, data in figures.items() if data is not None}


def write_evaluation(uri: str, *, task: str, metrics: dict, class_names: Sequence[str], history=(),
                     dice: Sequence[float] = (), samples: Sequence[dict] = (), s3_cfg: Any = None,
                     extra: dict | None = None) -> list[str]:
    """Write ``metrics.json`` (``metrics`` plus ``extra``) and the task's figures into the folder ``uri``;
    returns the file names written."""
    from classeg.io.files import write_bytes
    from classeg.io.uri import join
    from classeg.metrics import as_mapping

    document = {"task": task, "class_names": list(class_names), "metrics": as_mapping(metrics), **(extra or {})}
    write_bytes(join(uri, METRICS_NAME), json.dumps(document, indent=2, default=str).encode(), s3_cfg=s3_cfg)
    written = [METRICS_NAME]
    figures = evaluation_figures(task=task, metrics=metrics, class_names=class_names, history=history, dice=dice,
                                 samples=samples)
    for name, data in figures.items():
        write_bytes(join(uri, name), data, s3_cfg=s3_cfg)
        written.append(name)
    return written
