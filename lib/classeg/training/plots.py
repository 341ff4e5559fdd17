"""Figures written beside a model artifact and by `classeg evaluate`, as PNG bytes (so they go to local
folders and s3:// alike through `classeg.artifact.write_bytes`). Matplotlib with the Agg backend, chosen at
call time, never at import.

``write_evaluation`` writes ``metrics.json`` and the task's figures: classifier -> ``confusion_matrix.png``
and ``training_curves.png`` (when there is a history); segmenter -> ``dice_histogram.png``,
``overlays.png`` (image, ground truth contour in green, prediction in red) and ``training_curves.png``.
"""
from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from classeg.artifact import join, write_bytes
from classeg.metrics import as_mapping

METRICS_NAME = "metrics.json"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


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


def training_curves_png(history: Sequence[dict], *, title: str = "Training curves") -> bytes | None:
    """Loss (train and validation) and every other ``val_*`` metric per epoch; None without history."""
    if not history:
        return None
    plt = _pyplot()
    epochs = [entry["epoch"] for entry in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        values = [entry.get(key, math.nan) for entry in history]
        left.plot(epochs, values, marker="o", label=label)
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    shown = [k for k in ("val_accuracy", "val_balanced_accuracy", "val_f1_macro", "val_roc_auc", "val_dice",
                         "val_dice_tumour", "val_iou_tumour") if any(k in entry for entry in history)]
    for key in shown:
        right.plot(epochs, [entry.get(key, math.nan) for entry in history], marker="o", label=key[4:])
    right.set_xlabel("epoch")
    right.set_ylim(0, 1.02)
    right.set_ylabel("validation metric")
    if shown:
        right.legend(fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def dice_histogram_png(dice: Sequence[float], *, title: str = "Dice per tumour slice") -> bytes:
    """Histogram of per-image Dice in [0, 1] with its mean."""
    plt = _pyplot()
    values = np.asarray([d for d in dice if d is not None and not math.isnan(d)], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(values, bins=np.linspace(0, 1, 21), color="#4a7ab7", edgecolor="white")
    if values.size:
        ax.axvline(values.mean(), color="black", linestyle="--", label=f"mean {values.mean():.3f} (n={values.size})")
        ax.legend()
    ax.set_xlabel("Dice")
    ax.set_ylabel("slices")
    ax.set_title(title)
    return _png(fig)


def _display(image: np.ndarray) -> np.ndarray:
    """Model input (C, H, W), any normalisation -> (H, W, 3) in [0, 1] for display."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        image = image.transpose(1, 2, 0)
    if image.ndim == 2 or image.shape[2] == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    low, high = np.percentile(image, 1), np.percentile(image, 99)
    return np.clip((image - low) / (high - low if high > low else 1.0), 0, 1)


def overlay_gallery_png(samples: Sequence[dict], *, title: str = "Segmentation overlays") -> bytes | None:
    """Tiles of ``samples`` (dicts with ``image`` (C, H, W), ``mask`` and ``prediction`` (H, W) in {0, 1},
    ``dice``): ground truth outlined in green, prediction filled in translucent red."""
    if not samples:
        return None
    plt = _pyplot()
    columns = min(4, len(samples))
    rows = math.ceil(len(samples) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, sample in zip(axes.ravel(), samples):
        ax.imshow(_display(sample["image"]))
        prediction = np.asarray(sample["prediction"]).reshape(np.asarray(sample["prediction"]).shape[-2:])
        truth = np.asarray(sample["mask"]).reshape(np.asarray(sample["mask"]).shape[-2:])
        red = np.zeros(prediction.shape + (4,))
        red[..., 0], red[..., 3] = 1.0, 0.4 * (prediction > 0.5)
        ax.imshow(red)
        if truth.any():
            ax.contour(truth > 0.5, levels=[0.5], colors="lime", linewidths=1)
        ax.set_title(f"Dice {sample.get('dice', math.nan):.2f}", fontsize=9)
    fig.suptitle(title)
    return _png(fig)


def write_evaluation(uri: str, *, task: str, metrics: dict, class_names: Sequence[str], history=(),
                     dice: Sequence[float] = (), samples: Sequence[dict] = (), s3_cfg: Any = None,
                     extra: dict | None = None) -> list[str]:
    """Write ``metrics.json`` (``metrics`` plus ``extra``) and the task's figures into the folder ``uri``;
    returns the file names written."""
    document = {"task": task, "class_names": list(class_names), "metrics": as_mapping(metrics), **(extra or {})}
    write_bytes(join(uri, METRICS_NAME), json.dumps(document, indent=2, default=str).encode(), s3_cfg=s3_cfg)
    written = [METRICS_NAME]
    figures: dict[str, bytes | None] = {"training_curves.png": training_curves_png(list(history))}
    if task == "classify":
        cm = metrics.get("confusion_matrix")
        if cm is not None:
            figures["confusion_matrix.png"] = confusion_matrix_png(cm, class_names)
    else:
        figures["dice_histogram.png"] = dice_histogram_png(dice)
        figures["overlays.png"] = overlay_gallery_png(samples)
    for name, data in figures.items():
        if data is not None:
            write_bytes(join(uri, name), data, s3_cfg=s3_cfg)
            written.append(name)
    return written
