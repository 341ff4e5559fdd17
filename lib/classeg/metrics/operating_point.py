"""The classifier's operating point: the binary ROC curve and the tumour threshold chosen on validation data.

Class-Seg segments only the slices the classifier calls tumour, so a missed tumour is never segmented. The
threshold on ``tumor_probability`` is therefore chosen for a target sensitivity on the validation split
(`choose_operating_point`) rather than fixed at 0.5; the training job stores the result in model.json as
``operating_point`` and scoring uses ``operating_point["threshold"]`` as its default tumour threshold.

Convention: a slice is called tumour when ``tumor_probability >= threshold`` (ties go to tumour), so a
threshold equal to one of the validation probabilities includes that slice.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from classeg.metrics._arrays import clip_probability, labels, to_numpy

# Sensitivity is a ratio of counts; the slack lets a target computed in floating point (0.1 * 7) meet 7/10.
_RATE_SLACK = 1e-12


def _binary_inputs(y_true: Any, scores: Any, scores_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool truth and (N,) float64 finite scores, with at least one positive and one negative."""
    true = labels(y_true, "y_true", 2).astype(bool)
    values = to_numpy(scores, scores_name)
    if values.ndim != 1 or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise ValueError(f"{scores_name} must be a 1-D numeric array, got shape {values.shape}, dtype {values.dtype}")
    values = values.astype(np.float64)
    if values.shape != true.shape:
        raise ValueError(f"y_true and {scores_name} must have the same length, got {true.size} and {values.size}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"{scores_name} must be finite, got {values[bad[0]]!r} at index {bad[0]} "
                         f"({bad.size} non-finite values)")
    positives = int(true.sum())
    if positives == 0 or positives == true.size:
        missing = "positive (1)" if positives == 0 else "negative (0)"
        raise ValueError(f"y_true must hold both classes to draw a ROC curve, got {true.size} labels and no "
                         f"{missing} label")
    return true, values


def roc_curve(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary ROC curve, one point per distinct score (scikit-learn's ``roc_curve(drop_intermediate=False)``).

    Args:
        y_true: (N,) labels in {0, 1} (or bool); 1 is the positive (tumour) class. Both classes must occur.
        scores: (N,) finite scores, higher meaning more likely positive.

    Returns:
        ``(fpr, tpr, thresholds)``, float64 arrays of equal length M + 1 for M distinct scores. ``thresholds``
        descend: ``thresholds[0] = +inf`` (nothing called positive: fpr = tpr = 0), then each distinct
        score; point i counts ``scores >= thresholds[i]`` as positive, so the last point is (1, 1).
    """
    true, values = _binary_inputs(y_true, scores, "scores")
    order = np.argsort(values, kind="mergesort")[::-1]
    sorted_scores, sorted_true = values[order], true[order]
    # The last index of each run of equal scores: tied samples cross the threshold together.
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    tps = np.cumsum(sorted_true)[last_of_run].astype(np.float64)
    fps = (last_of_run + 1) - tps
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    thresholds = np.r_[np.inf, sorted_scores[last_of_run]]
    return fpr, tpr, thresholds


def _check_target(target_sensitivity: Any) -> float:
    if (isinstance(target_sensitivity, bool) or not isinstance(target_sensitivity, (int, float, np.floating))
            or not 0 < target_sensitivity <= 1):
        raise ValueError(f"target_sensitivity must be a number in (0, 1], got {target_sensitivity!r}")
    return float(target_sensitivity)


def _roc_sample(fpr: np.ndarray, tpr: np.ndarray, keep: list[int], max_points: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` ROC points, spread evenly along the curve.

    ``fpr + tpr`` grows monotonically along the curve from 0 to 2, so equal steps of it follow both its
    steep and its flat stretches (equal steps in index would crowd the axis of the larger class).
    ``keep`` (the first and last points, the operating points) are always included.
    """
    if fpr.size <= max_points:
        return np.arange(fpr.size)
    keep_set = set(keep)
    spread = np.searchsorted(fpr + tpr, np.linspace(0.0, 2.0, max_points - len(keep_set)))
    return np.array(sorted(keep_set | set(np.minimum(spread, fpr.size - 1).tolist())))


def choose_operating_point(
    y_true: Any,
    tumor_probability: Any,
    *,
    target_sensitivity: float = 0.95,
    max_roc_points: int = 200,
) -> dict[str, Any]:
    """The highest tumour threshold whose validation sensitivity reaches ``target_sensitivity``.

    Args:
        y_true: (N,) validation labels, 1 (or True) = tumour slice; both classes must occur.
        tumor_probability: (N,) classifier probabilities of tumour, in [0, 1] (an overshoot of up to 1e-6
            from float rounding is clipped), no NaN.
        target_sensitivity: in (0, 1]; sensitivity = TP / (TP + FN) with tumour = probability >= threshold.
        max_roc_points: at most this many ROC points in ``roc`` (>= 4), spread along the curve.

    Returns:
        A JSON-ready dict (Python floats and lists)::

            {"threshold", "sensitivity", "specificity", "target_sensitivity", "positives", "negatives",
             "youden": {"threshold", "sensitivity", "specificity", "j"},
             "roc": {"fpr": [...], "tpr": [...], "thresholds": [...]}}

    Rules:
        - Candidate thresholds are the distinct validation probabilities. Sensitivity only grows as the
          threshold falls, so the highest candidate that reaches the target is also the most specific one;
          it is always the probability of a tumour slice, which stays tumour at that threshold.
        - Ties: slices with equal probability cross together, so the sensitivity reached may exceed the
          target by more than one slice. A sensitivity counts as reaching the target within 1e-12, so 7/10
          reaches a target computed in floating point as 0.1 * 7.
        - ``youden``: the candidate maximising Youden's J = sensitivity + specificity - 1; among equal J,
          the highest threshold.
        - ``roc`` is the validation ROC (`roc_curve`), downsampled to at most ``max_roc_points`` points that
          always include both ends and the two chosen points. Its first threshold is +inf (nothing called
          tumour), written as ``None`` (JSON null) because JSON has no infinity.
    """
    true, probability = _binary_inputs(y_true, tumor_probability, "tumor_probability")
    probability = clip_probability(probability, "tumor_probability")
    target = _check_target(target_sensitivity)
    if isinstance(max_roc_points, bool) or not isinstance(max_roc_points, int) or max_roc_points < 4:
        raise ValueError(f"max_roc_points must be an int >= 4, got {max_roc_points!r}")
    fpr, tpr, thresholds = roc_curve(true, probability)
    # Index 0 (+inf) has sensitivity 0 < target, so the first index reaching the target is a real score.
    chosen = int(np.argmax(tpr >= target - _RATE_SLACK))
    j = tpr - fpr
    youden = 1 + int(np.argmax(j[1:]))
    sample = _roc_sample(fpr, tpr, [0, fpr.size - 1, chosen, youden], max_roc_points)
    return {
        "threshold": float(thresholds[chosen]),
        "sensitivity": float(tpr[chosen]),
        "specificity": float(1 - fpr[chosen]),
        "target_sensitivity": target,
        "positives": int(true.sum()),
        "negatives": int((~true).sum()),
        "youden": {"threshold": float(thresholds[youden]), "sensitivity": float(tpr[youden]),
                   "specificity": float(1 - fpr[youden]), "j": float(j[youden])},
        "roc": {"fpr": fpr[sample].tolist(), "tpr": tpr[sample].tolist(),
                "thresholds": [None if np.isinf(t) else float(t) for t in thresholds[sample]]},
    }
