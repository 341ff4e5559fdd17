"""End-to-end Class-Seg metrics: the classifier's detection and the segmentation the combined pipeline delivers.

Class-Seg segments a slice only when the classifier calls it tumour (``tumor_probability >= threshold``).
`classseg_metrics` scores that pipeline on slices whose truth is known, separating the two models' shares:
how well the classifier detects tumour slices, how well the segmenter outlines a tumour when it is asked to,
and the Dice a user actually gets, where a missed tumour slice has an empty mask.

Inputs are per-slice pixel counts rather than Dice values so that per-patient Dice can pool pixels over a
patient's whole volume (Buda et al. 2019), which per-slice Dice cannot give.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from classeg.metrics._arrays import clip_probability, to_numpy
from classeg.metrics.segmentation import overlap_scores


def _dice(tp: Any, fp: Any, fn: Any) -> np.ndarray:
    # overlap_scores applies the empty policy (nothing true, nothing predicted -> 1.0); weights unused here.
    return overlap_scores(tp, fp, fn, 0.7, 0.3)["dice"]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def _vector(values: Any, name: str, n: int | None, *, allow_nan: bool = False) -> np.ndarray:
    """(N,) float64 copy of ``values`` (None entries become NaN); checks length, finiteness and sign."""
    if isinstance(values, (list, tuple)):
        values = [np.nan if v is None else v for v in values]
    array = to_numpy(values, name)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name} must be a 1-D numeric array, got shape {array.shape}, dtype {array.dtype}")
    array = array.astype(np.float64)
    if n is not None and array.size != n:
        raise ValueError(f"{name} must have one value per slice ({n}), got {array.size}")
    bad = np.flatnonzero(np.isinf(array) if allow_nan else ~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} must be finite, got {array[bad[0]]!r} at index {bad[0]}")
    negative = np.flatnonzero(array < 0)
    if negative.size:
        raise ValueError(f"{name} must be >= 0, got {array[negative[0]]!r} at index {negative[0]}")
    return array


def _check_threshold(threshold: Any) -> float:
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating))
            or not 0 <= threshold <= 1):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)


def _slices(has_tumor_true: Any, tumor_probability: Any, true_area_px: Any, segmenter_tp: Any,
            segmenter_fp: Any) -> dict[str, np.ndarray]:
    """Validated per-slice inputs: truth (bool), probability, true area, segmenter tp/fp (NaN = not run)."""
    truth = to_numpy(has_tumor_true, "has_tumor_true")
    if truth.ndim != 1 or truth.size == 0 or not (truth.dtype == bool or np.isin(truth, (0, 1)).all()):
        raise ValueError(f"has_tumor_true must be a non-empty 1-D bool array, got shape {truth.shape}, "
                         f"dtype {truth.dtype}")
    truth = truth.astype(bool)
    n = truth.size
    probability = clip_probability(_vector(tumor_probability, "tumor_probability", n), "tumor_probability")
    area = _vector(true_area_px, "true_area_px", n)
    mismatch = np.flatnonzero(truth != (area > 0))
    if mismatch.size:
        i = mismatch[0]
        raise ValueError(f"has_tumor_true must equal true_area_px > 0 (the true mask decides), got "
                         f"has_tumor_true={bool(truth[i])} and true_area_px={area[i]:g} at index {i}")
    tp = _vector(segmenter_tp, "segmenter_tp", n, allow_nan=True)
    fp = _vector(segmenter_fp, "segmenter_fp", n, allow_nan=True)
    uneven = np.flatnonzero(np.isnan(tp) != np.isnan(fp))
    if uneven.size:
        raise ValueError(f"segmenter_tp and segmenter_fp must be missing on the same slices, got "
                         f"{tp[uneven[0]]!r} and {fp[uneven[0]]!r} at index {uneven[0]}")
    too_many = np.flatnonzero(tp > area)
    if too_many.size:
        i = too_many[0]
        raise ValueError(f"segmenter_tp cannot exceed true_area_px, got {tp[i]:g} > {area[i]:g} at index {i}")
    return {"truth": truth, "probability": probability, "area": area, "tp": tp, "fp": fp}


def _pipeline(slices: dict[str, np.ndarray], threshold: float) -> dict[str, np.ndarray]:
    """Per-slice detection and the pixel counts of the segmenter's and the pipeline's masks."""
    called = slices["probability"] >= threshold
    segmented = ~np.isnan(slices["tp"])
    unsegmented = np.flatnonzero(called & ~segmented)
    if unsegmented.size:
        raise ValueError(f"segmenter counts are missing for {unsegmented.size} slices classified tumour "
                         f"(first at index {unsegmented[0]}); the pipeline's mask there is the segmenter's")
    seg_tp, seg_fp = np.nan_to_num(slices["tp"]), np.nan_to_num(slices["fp"])
    seg_fn = slices["area"] - seg_tp
    return {
        "called": called, "segmented": segmented, "seg_tp": seg_tp, "seg_fp": seg_fp, "seg_fn": seg_fn,
        # A slice the classifier rejects gets an empty mask: all its true pixels are missed.
        "tp": np.where(called, seg_tp, 0.0), "fp": np.where(called, seg_fp, 0.0),
        "fn": np.where(called, seg_fn, slices["area"]),
    }


def _detection(truth: np.ndarray, called: np.ndarray, threshold: float) -> dict[str, Any]:
    tp, fp = int((called & truth).sum()), int((called & ~truth).sum())
    fn, tn = int((~called & truth).sum()), int((~called & ~truth).sum())
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    defined = [v for v in (sensitivity, specificity) if not np.isnan(v)]
    return {"threshold": threshold, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "sensitivity": sensitivity,
            "specificity": specificity, "accuracy": (tp + tn) / truth.size,
            "balanced_accuracy": float(np.mean(defined))}


def _per_patient(patient_id: Any, truth: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per-patient volume Dice (pixels pooled over the patient's slices), its mean/median, and the table."""
    ids = to_numpy(patient_id, "patient_id")
    if ids.ndim != 1 or ids.size != truth.size:
        raise ValueError(f"patient_id must be (N,) with N = {truth.size} slices, got shape {ids.shape}")
    if ids.dtype.kind == "f" and np.isnan(ids).any():
        raise ValueError(f"patient_id must not contain NaN, got NaN at index {np.flatnonzero(np.isnan(ids))[0]}")
    patients, index = np.unique(ids, return_inverse=True)

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(index, weights=values.astype(np.float64), minlength=patients.size)

    tp, fp, fn = total(masks["tp"]), total(masks["fp"]), total(masks["fn"])
    segmented = masks["segmented"]
    seg = [total(np.where(segmented, masks[k], 0.0)) for k in ("seg_tp", "seg_fp", "seg_fn")]
    segmented_slices = total(segmented)
    dice = _dice(tp, fp, fn)
    segmenter_dice = np.where(segmented_slices > 0, _dice(*seg), np.nan)
    columns = {
        "slices": total(np.ones(truth.size)), "tumor_slices": total(truth),
        "detected_tumor_slices": total(truth & masks["called"]), "false_alarm_masks": total(masks["false_alarm"]),
        "segmented_slices": segmented_slices, "tp_px": tp, "fp_px": fp, "fn_px": fn,
    }
    table = [{"patient_id": patient.item(), **{k: int(v[i]) for k, v in columns.items()},
              "dice": float(dice[i]), "segmenter_dice": float(segmenter_dice[i])}
             for i, patient in enumerate(patients)]
    with_tumor = columns["tumor_slices"] > 0
    seg_defined = segmenter_dice[with_tumor & ~np.isnan(segmenter_dice)]
    return {
        "patients": int(patients.size), "tumor_patients": int(with_tumor.sum()),
        "dice_mean": _mean(dice[with_tumor]),
        "dice_median": float(np.median(dice[with_tumor])) if with_tumor.any() else float("nan"),
        "segmenter_dice_mean": _mean(seg_defined),
        "segmenter_dice_median": float(np.median(seg_defined)) if seg_defined.size else float("nan"),
        "table": table,
    }


def classseg_metrics(
    *,
    has_tumor_true: Any,
    tumor_probability: Any,
    threshold: float,
    true_area_px: Any,
    segmenter_tp: Any,
    segmenter_fp: Any,
    patient_id: Any = None,
) -> dict[str, Any]:
    """Detection, segmenter and pipeline metrics of Class-Seg on N slices with known truth.

    Args:
        has_tumor_true: (N,) bool, the slice's true mask is non-empty; must equal ``true_area_px > 0``.
        tumor_probability: (N,) classifier probability of tumour in [0, 1] (up to 1e-6 above 1 is clipped).
        threshold: the classifier's tumour threshold in [0, 1]; tumour = ``tumor_probability >= threshold``.
        true_area_px: (N,) pixels in the true mask (at the resolution the counts were taken).
        segmenter_tp, segmenter_fp: (N,) pixels of the segmenter's mask that are true / false positives
            against the true mask (false negatives are ``true_area_px - segmenter_tp``). NaN or None where
            the segmenter was not run; it must have been run on every slice classified tumour.
        patient_id: optional (N,) patient of each slice (str or int), for the per-patient aggregates.

    Returns:
        A JSON-ready dict (NaN where a value is undefined, e.g. a sensitivity without tumour slices)::

            {"slices", "tumor_slices",
             "detection": {"threshold", "tp", "fp", "tn", "fn", "sensitivity", "specificity", "accuracy",
                           "balanced_accuracy"},
             "segmenter_dice_tumor", "segmenter_tumor_slices",
             "pipeline_dice_tumor", "pipeline_dice_mean", "pipeline_dice_global",
             "false_alarm_masks", "false_alarm_mask_rate",
             "per_patient": None or {"patients", "tumor_patients", "dice_mean", "dice_median",
                                     "segmenter_dice_mean", "segmenter_dice_median", "table": [...]}}

    Conventions (what counts when):
        - Detection counts are per slice: TP = tumour slice called tumour, FP = tumour-free slice called
          tumour, and so on. ``balanced_accuracy`` is the mean of the sensitivity and specificity that are
          defined.
        - Dice per slice is ``2TP / (2TP + FP + FN)``; a slice with nothing true and nothing predicted
          scores 1.0 (`classeg.metrics.segmentation`'s empty policy).
        - ``segmenter_dice_tumor``: mean Dice of the segmenter's mask over the tumour slices where it was
          run, whatever the classifier said (``segmenter_tumor_slices`` of them). It measures the segmenter
          alone; it is the pipeline's Dice only if the segmenter ran on every tumour slice.
        - The pipeline's mask is the segmenter's mask on slices classified tumour and empty elsewhere. So
          ``pipeline_dice_tumor`` (mean over all tumour slices) counts a missed tumour slice as 0;
          ``pipeline_dice_mean`` averages over every slice (a tumour-free slice scores 1 when its mask is
          empty, 0 when a false alarm left a non-empty mask); ``pipeline_dice_global`` pools the pixels of
          all slices, so a false alarm's mask adds false-positive pixels.
        - ``false_alarm_masks``: tumour-free slices classified tumour whose segmenter mask is non-empty;
          ``false_alarm_mask_rate`` is that over the tumour-free slices.
        - Per patient (Buda et al. 2019): Dice of the pipeline's masks over the patient's whole volume,
          from TP/FP/FN pooled over all its slices; ``segmenter_dice`` likewise for the segmenter's masks
          over the patient's slices where it ran (NaN if none). ``dice_mean``/``dice_median`` (and the
          segmenter's) aggregate over patients with at least one tumour slice, as a patient without
          tumour has no volume Dice worth averaging; the ``table`` lists every patient, sorted by id.
    """
    threshold = _check_threshold(threshold)
    slices = _slices(has_tumor_true, tumor_probability, true_area_px, segmenter_tp, segmenter_fp)
    truth = slices["truth"]
    masks = _pipeline(slices, threshold)
    masks["false_alarm"] = ~truth & masks["called"] & (masks["seg_fp"] > 0)
    segmenter_dice = _dice(masks["seg_tp"], masks["seg_fp"], masks["seg_fn"])
    pipeline_dice = _dice(masks["tp"], masks["fp"], masks["fn"])
    seg_on_tumor = truth & masks["segmented"]
    return {
        "slices": int(truth.size),
        "tumor_slices": int(truth.sum()),
        "detection": _detection(truth, masks["called"], threshold),
        "segmenter_dice_tumor": _mean(segmenter_dice[seg_on_tumor]),
        "segmenter_tumor_slices": int(seg_on_tumor.sum()),
        "pipeline_dice_tumor": _mean(pipeline_dice[truth]),
        "pipeline_dice_mean": _mean(pipeline_dice),
        "pipeline_dice_global": float(_dice(masks["tp"].sum(), masks["fp"].sum(), masks["fn"].sum())),
        "false_alarm_masks": int(masks["false_alarm"].sum()),
        "false_alarm_mask_rate": _ratio(masks["false_alarm"].sum(), (~truth).sum()),
        "per_patient": None if patient_id is None else _per_patient(patient_id, truth, masks),
    }
