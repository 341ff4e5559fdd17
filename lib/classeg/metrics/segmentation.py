"""Segmentation metrics of binary masks: pixel counts, Dice, IoU, Tversky, and their aggregation.

Conventions
-----------
- Masks are (N, H, W), (N, 1, H, W) or a single (H, W); predictions may be probabilities, binarised as
  ``prediction >= threshold`` (0.5), targets as ``target >= 0.5``.
- Per image: ``Dice = 2TP / (2TP + FP + FN)``, ``IoU = TP / (TP + FP + FN)``,
  ``Tversky = TP / (TP + fn_weight*FN + fp_weight*FP)`` (fn_weight 0.7, fp_weight 0.3, as the loss).
- **Empty policy**: ground truth and prediction both empty -> 1.0 (a correct "no tumour"); exactly one of
  them empty -> 0.0 (that is what the formulas give).
- Aggregation over images: ``mean`` (all images, so empty-and-correct slices count as 1.0), ``tumor``
  (only images whose ground truth is non-empty: the usual "tumour-only" Dice of the Class-Seg and LGG
  literature; NaN when there are none), and ``global`` (one score from TP/FP/FN pooled over all pixels of
  all images; 1.0 when everything is empty).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from classeg.metrics._arrays import safe_divide, to_numpy

AGGREGATIONS = ("mean", "tumor", "global")


def _masks(values: Any, name: str, threshold: float) -> np.ndarray:
    array = to_numpy(values, name)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 4:
        if array.shape[1] != 1:
            raise ValueError(f"{name} must be (N, 1, H, W), (N, H, W) or (H, W), got shape {array.shape}")
        array = array[:, 0]
    elif array.ndim != 3:
        raise ValueError(f"{name} must be (N, 1, H, W), (N, H, W) or (H, W), got shape {array.shape}")
    if array.dtype == bool:
        return array.reshape(array.shape[0], -1)
    if not (np.issubdtype(array.dtype, np.number)):
        raise ValueError(f"{name} must be numeric or boolean, got dtype {array.dtype}")
    return (array >= threshold).reshape(array.shape[0], -1)


def check_threshold(threshold: Any) -> float:
    """A mask binarisation threshold in (0, 1] as a float."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    return float(threshold)


def segmentation_counts(prediction: Any, target: Any, *, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Per-image pixel counts ``tp``, ``fp``, ``fn``, ``tn`` as (N,) int64 arrays.

    ``prediction``: (N, 1, H, W), (N, H, W) or (H, W) masks or probabilities (``>= threshold`` is
    foreground); ``target``: the same shape, binary (``>= 0.5`` is foreground).
    """
    threshold = check_threshold(threshold)
    pred = _masks(prediction, "prediction", threshold)
    true = _masks(target, "target", 0.5)
    if pred.shape != true.shape:
        raise ValueError(f"prediction and target shapes differ: {pred.shape} vs {true.shape} (as (N, H*W))")
    tp = np.count_nonzero(pred & true, axis=1)
    fp = np.count_nonzero(pred & ~true, axis=1)
    fn = np.count_nonzero(~pred & true, axis=1)
    tn = pred.shape[1] - tp - fp - fn
    return {"tp": tp.astype(np.int64), "fp": fp.astype(np.int64), "fn": fn.astype(np.int64),
            "tn": tn.astype(np.int64)}


def overlap_scores(tp: Any, fp: Any, fn: Any, fn_weight: float, fp_weight: float) -> dict[str, np.ndarray]:
    """``dice``, ``iou`` and ``tversky`` from pixel counts (scalars or (N,) arrays), with the empty policy."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    both_empty = (tp + fp + fn) == 0

    def score(numerator, denominator):
        # Policy: empty ground truth and empty prediction is a perfect answer.
        return np.where(both_empty, 1.0, safe_divide(numerator, denominator))

    return {
        "dice": score(2 * tp, 2 * tp + fp + fn),
        "iou": score(tp, tp + fp + fn),
        "tversky": score(tp, tp + fn_weight * fn + fp_weight * fp),
    }


def check_weights(fn_weight: Any, fp_weight: Any) -> None:
    """Tversky weights must be numbers >= 0, not both 0."""
    for name, value in (("fn_weight", fn_weight), ("fp_weight", fp_weight)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if fn_weight == 0 and fp_weight == 0:
        raise ValueError("fn_weight and fp_weight cannot both be 0")


def dice_per_image(prediction: Any, target: Any, *, threshold: float = 0.5) -> np.ndarray:
    """(N,) Dice ``2TP/(2TP+FP+FN)`` per image; both masks empty -> 1.0 (see module docstring)."""
    counts = segmentation_counts(prediction, target, threshold=threshold)
    return overlap_scores(counts["tp"], counts["fp"], counts["fn"], 0.7, 0.3)["dice"]


def iou_per_image(prediction: Any, target: Any, *, threshold: float = 0.5) -> np.ndarray:
    """(N,) IoU (Jaccard) ``TP/(TP+FP+FN)`` per image; both masks empty -> 1.0."""
    counts = segmentation_counts(prediction, target, threshold=threshold)
    return overlap_scores(counts["tp"], counts["fp"], counts["fn"], 0.7, 0.3)["iou"]


def tversky_per_image(prediction: Any, target: Any, *, threshold: float = 0.5, fn_weight: float = 0.7,
                      fp_weight: float = 0.3) -> np.ndarray:
    """(N,) Tversky index ``TP/(TP + fn_weight*FN + fp_weight*FP)`` of binarised masks; both empty -> 1.0.
    ``fn_weight`` multiplies false negatives (as in `classeg.losses`)."""
    check_weights(fn_weight, fp_weight)
    counts = segmentation_counts(prediction, target, threshold=threshold)
    return overlap_scores(counts["tp"], counts["fp"], counts["fn"], fn_weight, fp_weight)["tversky"]


def aggregate(per_image: Any, target_nonempty: Any, *, how: str = "mean") -> float:
    """Average (N,) per-image scores: ``how="mean"`` over all images, ``"tumor"`` over images whose
    ground truth is non-empty (``target_nonempty`` (N,) bool; NaN if there is none). (The ``global``
    aggregation needs pixel counts: see `segmentation_scores`.)"""
    if how not in ("mean", "tumor"):
        raise ValueError(f"how must be 'mean' or 'tumor', got {how!r}")
    scores = to_numpy(per_image, "per_image").astype(np.float64)
    nonempty = to_numpy(target_nonempty, "target_nonempty").astype(bool)
    if scores.ndim != 1 or scores.shape != nonempty.shape:
        raise ValueError(f"per_image and target_nonempty must be equal-length 1-D arrays, got shapes "
                         f"{scores.shape} and {nonempty.shape}")
    selected = scores if how == "mean" else scores[nonempty]
    return float(selected.mean()) if selected.size else float("nan")


def segmentation_scores(prediction: Any, target: Any, *, threshold: float = 0.5, fn_weight: float = 0.7,
                        fp_weight: float = 0.3) -> dict[str, Any]:
    """Per-image and aggregated Dice, IoU and Tversky for a batch of masks.

    Returns a dict with (N,) arrays ``dice``, ``iou``, ``tversky``, ``tp``, ``fp``, ``fn``, ``tn``,
    ``target_nonempty``, and floats ``<metric>_mean``, ``<metric>_tumor`` and ``<metric>_global`` for
    each metric (conventions in the module docstring).
    """
    check_weights(fn_weight, fp_weight)
    counts = segmentation_counts(prediction, target, threshold=threshold)
    per_image = overlap_scores(counts["tp"], counts["fp"], counts["fn"], fn_weight, fp_weight)
    nonempty = (counts["tp"] + counts["fn"]) > 0
    pooled = overlap_scores(counts["tp"].sum(), counts["fp"].sum(), counts["fn"].sum(), fn_weight, fp_weight)
    out: dict[str, Any] = {**per_image, **counts, "target_nonempty": nonempty}
    for name, values in per_image.items():
        out[f"{name}_mean"] = aggregate(values, nonempty, how="mean")
        out[f"{name}_tumor"] = aggregate(values, nonempty, how="tumor")
        out[f"{name}_global"] = float(pooled[name])
    return out
