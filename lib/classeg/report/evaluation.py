"""The report's own test-split evaluation of the model artifacts, so that its confusion matrix, ROC curve,
per-class table and Dice distribution all describe the same scans (at most ``max_scans`` test scans, in
scan-table order). Segmentation Dice is per image at the model's input size, on test slices whose ground truth
has tumour (the "tumour-only" Dice of the Class-Seg literature; see :mod:`classeg.metrics`)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from classeg.report.loading import read_test_split

log = logging.getLogger(__name__)
# What a failed recomputation may raise: the section then shows the recorded metrics and says why.
EVALUATION_ERRORS = (ValueError, OSError, RuntimeError, ImportError)


def recompute(evaluate: Callable[..., dict], artifact_dir: Path, scans: Path | None, *, max_scans: int,
              what: str) -> tuple[dict | None, str]:
    """``evaluate(artifact_dir, scans, max_scans=...)``, or (None, why) when there is no scan table or the
    evaluation fails (logged as a warning naming ``what``); why is "" on success."""
    if scans is None:
        return None, "no scan table to evaluate on"
    try:
        return evaluate(artifact_dir, scans, max_scans=max_scans), ""
    except EVALUATION_ERRORS as err:
        log.warning("report: %s evaluation unavailable: %s", what, err)
        return None, f"{type(err).__name__}: {err}"


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
