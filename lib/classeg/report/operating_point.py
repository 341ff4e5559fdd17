"""The classifier's operating point, as model.json records it for a classifier::

    "operating_point": {"threshold": t, "sensitivity": s, "specificity": p, "target_sensitivity": 0.95,
                        "youden": {"threshold": t, "sensitivity": s, "specificity": p, ...}}

``threshold`` applies to the tumour probability (the summed softmax of the model's ``tumor_classes``; a scan is
tumour when the probability is at least the threshold); sensitivity and specificity are those of the split
the point was chosen on (``split``, default the validation split), in [0, 1]. The training job may add
``tumor_classes``, ``positives``, ``negatives`` and the validation ``roc``; the report reads only what it
shows. It states the points, draws them on the ROC curve and, when it recomputed the test split, gives the
test split's rates at the chosen threshold."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from classeg.plots import RocMarker
from classeg.report.markup import esc, fmt


SPLIT_NAMES = {"val": "validation"}  # model.json's split names as the page words them


@dataclass(frozen=True)
class OperatingPoint:
    """A tumour-probability threshold and the sensitivity and specificity it had where it was chosen."""

    threshold: float
    sensitivity: float
    specificity: float


@dataclass(frozen=True)
class OperatingPoints:
    """What model.json records: the ``chosen`` point, the ``youden`` point (or None), the target sensitivity
    the chosen point was picked for (or None) and the ``split`` both were measured on."""

    chosen: OperatingPoint
    youden: OperatingPoint | None
    target_sensitivity: float | None
    split: str

    def markers(self) -> list[RocMarker]:
        """The points as ROC markers (false positive rate = 1 - specificity), chosen point first."""
        named = [("operating point", self.chosen), ("Youden point", self.youden)]
        return [RocMarker(f"{name} ({self.split}, threshold {point.threshold:.3f})", 1.0 - point.specificity,
                          point.sensitivity) for name, point in named if point is not None]

    def html(self) -> str:
        """A paragraph stating the points."""
        target = ("" if self.target_sensitivity is None
                  else f" for a target sensitivity of {fmt(self.target_sensitivity, 2)}")
        text = (f"<p>Operating point, chosen on the {esc(self.split)} split{target}: tumour threshold "
                f"<b>{fmt(self.chosen.threshold)}</b>, sensitivity <b>{fmt(self.chosen.sensitivity)}</b>, "
                f"specificity <b>{fmt(self.chosen.specificity)}</b>")
        if self.youden is not None:
            text += (f"; Youden point: threshold {fmt(self.youden.threshold)}, sensitivity "
                     f"{fmt(self.youden.sensitivity)}, specificity {fmt(self.youden.specificity)}")
        return text + ".</p>"


def _rate(entry: dict, name: str, where: str) -> float:
    value = entry.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{where}.{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _point(entry, where: str) -> OperatingPoint:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object with threshold, sensitivity and specificity, got {entry!r}")
    return OperatingPoint(*(_rate(entry, key, where) for key in ("threshold", "sensitivity", "specificity")))


def read_operating_points(meta: dict) -> OperatingPoints | None:
    """The operating points of a model.json dict; None without an ``operating_point``. Raises ValueError
    naming the bad field when it is malformed."""
    entry = meta.get("operating_point")
    if entry is None:
        return None
    chosen = _point(entry, "operating_point")
    youden = None if entry.get("youden") is None else _point(entry["youden"], "operating_point.youden")
    target = (None if entry.get("target_sensitivity") is None
              else _rate(entry, "target_sensitivity", "operating_point"))
    split = str(entry.get("split") or "validation")
    return OperatingPoints(chosen, youden, target, SPLIT_NAMES.get(split, split))


def rates_at(threshold: float, y_true, probabilities, tumor_indices) -> tuple[float, float]:
    """(sensitivity, specificity) of "tumour probability >= threshold" against the truth, where the tumour
    probability is the sum of ``probabilities`` (N, K) over ``tumor_indices`` and a scan is truly tumour when
    its label (N,) is one of them; NaN where a split has no tumour (or no non-tumour) scans."""
    y_true = np.asarray(y_true)
    indices = list(tumor_indices)
    predicted = np.asarray(probabilities)[:, indices].sum(axis=1) >= threshold
    truth = np.isin(y_true, indices)
    sensitivity = float(predicted[truth].mean()) if truth.any() else math.nan
    specificity = float((~predicted[~truth]).mean()) if (~truth).any() else math.nan
    return sensitivity, specificity


def tumor_indices(meta: dict) -> list[int]:
    """Indices in ``class_names`` of the tumour classes the operating point was chosen for (its own
    ``tumor_classes``, else model.json's); [] when not recorded or when they name every class (no non-tumour
    class to tell apart)."""
    names = list(meta.get("class_names") or [])
    entry = meta.get("operating_point")
    tumor = (entry.get("tumor_classes") if isinstance(entry, dict) else None) or meta.get("tumor_classes") or []
    indices = [names.index(n) for n in tumor if n in names]
    return indices if 0 < len(indices) < len(names) else []


def rates_on_test_split_html(points: OperatingPoints, meta: dict, y_true, probabilities) -> str:
    """A paragraph with the test split's sensitivity and specificity at the chosen threshold ((N,) labels,
    (N, K) probabilities); "" when model.json does not say which classes are tumour."""
    indices = tumor_indices(meta)
    if not indices:
        return ""
    sensitivity, specificity = rates_at(points.chosen.threshold, y_true, probabilities, indices)
    return (f"<p>At that threshold on the {len(np.asarray(y_true))} test scans: sensitivity "
            f"<b>{fmt(sensitivity)}</b>, specificity <b>{fmt(specificity)}</b>.</p>")
