"""Classification and segmentation metrics, as functions and as accumulating meters for distributed runs.

Inputs may be numpy arrays, torch tensors (any device; copied to the CPU) or sequences. Results are numpy
float64 arrays or Python floats.

Classification conventions
--------------------------
- Labels are integers in ``[0, num_classes)``; the confusion matrix has rows = true class, columns =
  predicted class.
- Zero division (a class never predicted, never present, or always present) gives 0.0 for that class's
  precision / recall / specificity / F1, like scikit-learn's ``zero_division=0``. ``macro`` averages over
  all ``num_classes`` classes (scikit-learn with ``labels=range(num_classes)``), ``weighted`` by true
  support. ``balanced_accuracy`` averages recall over the classes that occur in ``y_true`` (as
  scikit-learn's `balanced_accuracy_score`).
- ROC AUC (binary, and one-vs-rest per class) is the Mann-Whitney statistic with ties counted one half,
  which equals the trapezoidal area under the ROC curve. It is NaN when only one class occurs (undefined);
  macro/weighted one-vs-rest averages skip NaN classes.

Segmentation conventions
------------------------
- Masks are (N, H, W), (N, 1, H, W) or a single (H, W); predictions may be probabilities, binarised as
  ``prediction >= threshold`` (0.5), targets as ``target >= 0.5``.
- Per image: ``Dice = 2TP / (2TP + FP + FN)``, ``IoU = TP / (TP + FP + FN)``,
  ``Tversky = TP / (TP + fn_weight*FN + fp_weight*FP)`` (fn_weight 0.7, fp_weight 0.3, as the loss).
- **Empty policy**: ground truth and prediction both empty -> 1.0 (a correct "no tumour"); exactly one of
  them empty -> 0.0 (that is what the formulas give).
- Aggregation over images: ``mean`` (all images, so empty-and-correct slices count as 1.0), ``tumour``
  (only images whose ground truth is non-empty: the usual "tumour-only" Dice of the Class-Seg and LGG
  literature; NaN when there are none), and ``global`` (one score from TP/FP/FN pooled over all pixels of
  all images; 1.0 when everything is empty).

Meters
------
`ClassificationMeter` and `SegmentationMeter` accumulate per batch and keep their whole state in one flat
float64 vector (`state()`), so ranks can sum it with one allreduce, `load_state` the sum, and `compute()`
the global metrics. ROC AUC in `ClassificationMeter` uses fixed-bin histograms of the one-vs-rest scores
(bins uniform in logit space, see the class), not stored scores: memory and allreduce size are
``2 * num_classes * auc_bins`` floats whatever the dataset size, and the AUC differs from the exact value
only through pairs that fall in the same bin (counted as ties).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

AVERAGES = ("macro", "weighted", None)
AGGREGATIONS = ("mean", "tumour", "global")


# --------------------------------------------------------------------------------------------------
# Input handling


def _to_numpy(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be array-like, got {type(values).__name__}") from err
    if array.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got {values!r:.200}")
    return array


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return int(num_classes)


def _labels(values: Any, name: str, num_classes: int | None = None) -> np.ndarray:
    array = _to_numpy(values, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class labels, got shape {array.shape}")
    if array.size and not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.mod(array, 1) == 0):
            raise ValueError(f"{name} must hold integer class labels, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} labels must be >= 0, got {array.min()}")
    if num_classes is not None and array.size and array.max() >= num_classes:
        raise ValueError(f"{name} labels must be < num_classes={num_classes}, got {array.max()}")
    return array


def _pair(y_true: Any, y_pred: Any, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    true = _labels(y_true, "y_true", num_classes)
    pred = _labels(y_pred, "y_pred", num_classes)
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {true.shape[0]} and {pred.shape[0]}")
    return true, pred


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


# --------------------------------------------------------------------------------------------------
# Classification


def confusion_matrix(y_true: Any, y_pred: Any, *, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows = true class, columns = predicted class.

    ``y_true``, ``y_pred``: (N,) integer labels in ``[0, num_classes)``.
    """
    num_classes = _check_num_classes(num_classes)
    true, pred = _pair(y_true, y_pred, num_classes)
    return np.bincount(true * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def _check_confusion(cm: Any) -> np.ndarray:
    cm = _to_numpy(cm, "confusion matrix")
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 2:
        raise ValueError(f"confusion matrix must be square (K, K) with K >= 2, got shape {cm.shape}")
    if np.any(cm < 0):
        raise ValueError("confusion matrix counts must be >= 0")
    return cm.astype(np.float64)


def per_class_scores(cm: Any) -> dict[str, np.ndarray]:
    """Per-class scores from a confusion matrix (rows true, columns predicted), each a (K,) array.

    Keys: ``precision`` TP/(TP+FP), ``recall`` (= sensitivity) TP/(TP+FN), ``specificity`` TN/(TN+FP),
    ``f1`` 2PR/(P+R), ``support`` (true count). Zero division gives 0.0.
    """
    cm = _check_confusion(cm)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    precision = _safe_divide(tp, tp + fp)
    recall = _safe_divide(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "specificity": _safe_divide(tn, tn + fp),
        "f1": _safe_divide(2 * tp, 2 * tp + fp + fn),
        "support": tp + fn,
    }


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of (N,) labels predicted exactly; N must be > 0."""
    true, pred = _pair(y_true, y_pred, None)
    if true.size == 0:
        raise ValueError("accuracy of an empty set is undefined (got 0 labels)")
    return float(np.mean(true == pred))


def _balanced_from_cm(cm: np.ndarray) -> float:
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def balanced_accuracy(y_true: Any, y_pred: Any, *, num_classes: int) -> float:
    """Mean recall over the classes that occur in ``y_true`` (scikit-learn's definition)."""
    return _balanced_from_cm(confusion_matrix(y_true, y_pred, num_classes=num_classes).astype(np.float64))


def _average(values: np.ndarray, support: np.ndarray, average: str | None) -> float | np.ndarray:
    if average is None:
        return values
    if average == "macro":
        return float(values.mean())
    total = support.sum()
    return float((values * support).sum() / total) if total else 0.0


def _scores(y_true: Any, y_pred: Any, num_classes: int, average: str | None, key: str):
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    scores = per_class_scores(confusion_matrix(y_true, y_pred, num_classes=num_classes))
    return _average(scores[key], scores["support"], average)


def precision(y_true: Any, y_pred: Any, *, num_classes: int, average: str | None = "macro"):
    """Precision TP/(TP+FP): per class ``(K,)`` array (``average=None``) or its macro/weighted mean."""
    return _scores(y_true, y_pred, num_classes, average, "precision")


def recall(y_true: Any, y_pred: Any, *, num_classes: int, average: str | None = "macro"):
    """Recall (sensitivity) TP/(TP+FN): per class ``(K,)`` array or its macro/weighted mean."""
    return _scores(y_true, y_pred, num_classes, average, "recall")


sensitivity = recall


def specificity(y_true: Any, y_pred: Any, *, num_classes: int, average: str | None = "macro"):
    """Specificity TN/(TN+FP), one-vs-rest per class: ``(K,)`` array or its macro/weighted mean."""
    return _scores(y_true, y_pred, num_classes, average, "specificity")


def f1_score(y_true: Any, y_pred: Any, *, num_classes: int, average: str | None = "macro"):
    """F1 2TP/(2TP+FP+FN): per class ``(K,)`` array or its macro/weighted mean."""
    return _scores(y_true, y_pred, num_classes, average, "f1")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as scipy.stats.rankdata(method='average'))."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.size]])
    group_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def _binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    positives = int(is_positive.sum())
    negatives = is_positive.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[is_positive].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_auc(y_true: Any, scores: Any, *, num_classes: int | None = None, average: str | None = "macro"):
    """Area under the ROC curve.

    Binary: ``y_true`` (N,) in {0, 1} and ``scores`` (N,) for class 1, or (N, 2) (column 1 is used).
    Multiclass one-vs-rest: ``scores`` (N, K); returns the per-class (K,) AUCs (``average=None``) or their
    ``macro`` / ``weighted`` (by prevalence) mean over the classes where it is defined. NaN when undefined
    (only one class present). Ties count one half (equals scikit-learn's `roc_auc_score`).
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    score_array = _to_numpy(scores, "scores").astype(np.float64)
    if not np.all(np.isfinite(score_array)):
        raise ValueError("scores must be finite (got NaN or inf)")
    if score_array.ndim == 1 or (score_array.ndim == 2 and score_array.shape[1] == 2 and num_classes in (None, 2)):
        true = _labels(y_true, "y_true", 2)
        positive_scores = score_array if score_array.ndim == 1 else score_array[:, 1]
        if positive_scores.shape[0] != true.shape[0]:
            raise ValueError(f"y_true has {true.shape[0]} labels but scores has {positive_scores.shape[0]} rows")
        return _binary_auc(true == 1, positive_scores)
    if score_array.ndim != 2:
        raise ValueError(f"scores must be (N,) or (N, K), got shape {score_array.shape}")
    k = score_array.shape[1] if num_classes is None else _check_num_classes(num_classes)
    if score_array.shape[1] != k:
        raise ValueError(f"scores must have num_classes={k} columns, got shape {score_array.shape}")
    true = _labels(y_true, "y_true", k)
    if score_array.shape[0] != true.shape[0]:
        raise ValueError(f"y_true has {true.shape[0]} labels but scores has {score_array.shape[0]} rows")
    per_class = np.array([_binary_auc(true == c, score_array[:, c]) for c in range(k)])
    return _average_auc(per_class, np.bincount(true, minlength=k).astype(np.float64), average)


def _average_auc(per_class: np.ndarray, support: np.ndarray, average: str | None):
    if average is None:
        return per_class
    defined = ~np.isnan(per_class)
    if not defined.any():
        return float("nan")
    if average == "macro":
        return float(per_class[defined].mean())
    return float((per_class[defined] * support[defined]).sum() / support[defined].sum())


def _report_from_confusion(cm: np.ndarray, class_names: Sequence[str] | None,
                           auc_per_class: np.ndarray | None) -> dict[str, Any]:
    k = cm.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else [str(n) for n in class_names]
    if len(names) != k:
        raise ValueError(f"class_names must have {k} entries, got {list(names)!r}")
    cm = cm.astype(np.float64)
    scores = per_class_scores(cm)
    total = cm.sum()
    per_class = {}
    for i, name in enumerate(names):
        entry = {key: float(scores[key][i]) for key in ("precision", "recall", "specificity", "f1")}
        entry["support"] = int(scores["support"][i])
        if auc_per_class is not None:
            entry["roc_auc"] = float(auc_per_class[i])
        per_class[name] = entry
    report: dict[str, Any] = {
        "samples": int(total),
        "accuracy": float(np.trace(cm) / total) if total else float("nan"),
        "balanced_accuracy": _balanced_from_cm(cm),
        "macro": {key: float(scores[key].mean()) for key in ("precision", "recall", "specificity", "f1")},
        "weighted": {key: float(_average(scores[key], scores["support"], "weighted"))
                     for key in ("precision", "recall", "specificity", "f1")},
        "per_class": per_class,
        "confusion_matrix": cm.astype(np.int64).tolist(),
        "class_names": names,
    }
    if auc_per_class is not None:
        report["roc_auc"] = (float(auc_per_class[1]) if k == 2
                             else _average_auc(auc_per_class, scores["support"], "macro"))
    return report


def classification_report(
    y_true: Any,
    y_pred: Any,
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    scores: Any = None,
) -> dict[str, Any]:
    """JSON-ready report: ``samples``, ``accuracy``, ``balanced_accuracy``, ``macro`` and ``weighted``
    precision/recall/specificity/F1, ``per_class`` (keyed by class name: precision, recall, specificity,
    f1, support, and roc_auc when ``scores`` (N, K) are given), ``confusion_matrix`` (nested lists) and
    ``roc_auc`` (binary: class 1; multiclass: macro one-vs-rest)."""
    cm = confusion_matrix(y_true, y_pred, num_classes=num_classes)
    auc = None
    if scores is not None:
        score_array = _to_numpy(scores, "scores").astype(np.float64)
        true = _labels(y_true, "y_true", num_classes)
        if score_array.shape != (true.size, num_classes) or not np.all(np.isfinite(score_array)):
            raise ValueError(f"scores must be finite, shape ({true.size}, {num_classes}), got shape "
                             f"{score_array.shape}")
        auc = np.array([_binary_auc(true == c, score_array[:, c]) for c in range(num_classes)])
    return _report_from_confusion(cm, class_names, auc)


class ClassificationMeter:
    """Accumulates classification results over batches (and ranks).

    ``update`` per batch; ``state()`` is a flat float64 vector: confusion matrix (K*K), loss sum, loss
    count, then positive and negative score histograms (K*bins each). Sum it across ranks (allreduce),
    `load_state` the sum, and `compute()`.

    ROC AUC: each one-vs-rest probability p is binned by its logit ``log(p/(1-p))`` clipped to
    ``[-logit_range, logit_range]`` into ``auc_bins`` equal bins. Binning in logit space keeps resolution
    for the confident scores a trained network produces (near 0 and 1), where equal-width probability bins
    would lump most samples together. Pairs that share a bin count as ties, which is the only difference
    from the exact AUC (with 2048 bins, |error| < 1e-3 on typical data). ``auc_bins=0`` disables AUC.
    """

    def __init__(self, num_classes: int, *, auc_bins: int = 2048, logit_range: float = 16.0):
        self.num_classes = _check_num_classes(num_classes)
        if isinstance(auc_bins, bool) or not isinstance(auc_bins, int) or auc_bins < 0:
            raise ValueError(f"auc_bins must be an int >= 0, got {auc_bins!r}")
        if not isinstance(logit_range, (int, float)) or not logit_range > 0:
            raise ValueError(f"logit_range must be > 0, got {logit_range!r}")
        self.auc_bins = auc_bins
        self.logit_range = float(logit_range)
        k = self.num_classes
        self._cm_size = k * k
        self._hist_size = k * auc_bins
        self._state = np.zeros(self._cm_size + 2 + 2 * self._hist_size, dtype=np.float64)

    # state layout
    def _cm(self) -> np.ndarray:
        return self._state[: self._cm_size].reshape(self.num_classes, self.num_classes)

    def _hist(self, positive: bool) -> np.ndarray:
        start = self._cm_size + 2 + (0 if positive else self._hist_size)
        return self._state[start: start + self._hist_size].reshape(self.num_classes, self.auc_bins)

    def reset(self) -> None:
        """Zero all accumulated counts."""
        self._state[:] = 0

    def update(self, y_true: Any, *, y_pred: Any = None, probabilities: Any = None, logits: Any = None,
               loss: float | None = None) -> None:
        """Add one batch.

        Args:
            y_true: (N,) integer labels.
            y_pred: (N,) predicted labels; default argmax of ``probabilities``/``logits``.
            probabilities: (N, K) class probabilities in [0, 1] (softmax output), used for ROC AUC.
            logits: (N, K) logits, used instead of ``probabilities`` (softmax applied here).
            loss: the batch's mean loss; accumulated weighted by N, reported as the mean ``loss``.
        """
        k = self.num_classes
        true = _labels(y_true, "y_true", k)
        if probabilities is not None and logits is not None:
            raise ValueError("pass probabilities or logits, not both")
        probs = None
        if logits is not None:
            logit_array = _to_numpy(logits, "logits").astype(np.float64)
            if logit_array.ndim != 2 or logit_array.shape[1] != k:
                raise ValueError(f"logits must be (N, {k}), got shape {logit_array.shape}")
            shifted = np.exp(logit_array - logit_array.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
        elif probabilities is not None:
            probs = _to_numpy(probabilities, "probabilities").astype(np.float64)
            if probs.ndim != 2 or probs.shape[1] != k:
                raise ValueError(f"probabilities must be (N, {k}), got shape {probs.shape}")
            # float32 rounding may overshoot [0, 1] by an ulp; anything more is not a probability
            if probs.size and (np.isnan(probs).any() or probs.min() < -1e-6 or probs.max() > 1 + 1e-6):
                raise ValueError("probabilities must lie in [0, 1] (pass logits= for raw outputs)")
            probs = np.clip(probs, 0.0, 1.0)
        if probs is not None and probs.shape[0] != true.shape[0]:
            raise ValueError(f"y_true has {true.shape[0]} labels but scores have {probs.shape[0]} rows")
        if y_pred is None:
            if probs is None:
                raise ValueError("update needs y_pred, probabilities or logits")
            y_pred = probs.argmax(axis=1)
        cm = confusion_matrix(true, y_pred, num_classes=k)
        self._cm()[...] += cm
        if loss is not None:
            loss_value = float(loss.item() if hasattr(loss, "item") else loss)
            if not np.isfinite(loss_value):
                raise ValueError(f"loss must be finite, got {loss_value!r}")
            self._state[self._cm_size] += loss_value * true.size
            self._state[self._cm_size + 1] += true.size
        if probs is not None and self.auc_bins:
            bins = self._bin(probs)
            for c in range(k):
                is_positive = true == c
                self._hist(True)[c] += np.bincount(bins[is_positive, c], minlength=self.auc_bins)
                self._hist(False)[c] += np.bincount(bins[~is_positive, c], minlength=self.auc_bins)

    def _bin(self, probs: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            logit = np.log(probs) - np.log1p(-probs)
        r = self.logit_range
        scaled = (np.clip(logit, -r, r) + r) / (2 * r) * self.auc_bins
        return np.minimum(scaled.astype(np.int64), self.auc_bins - 1)

    def state(self) -> np.ndarray:
        """A copy of the flat float64 state vector (sum across ranks, then `load_state`)."""
        return self._state.copy()

    def load_state(self, vector: Any) -> None:
        """Replace the state with ``vector`` (e.g. the allreduce sum of every rank's `state()`)."""
        array = _to_numpy(vector, "state").astype(np.float64).ravel()
        if array.shape != self._state.shape:
            raise ValueError(f"state must have {self._state.size} values, got {array.size}")
        self._state[:] = array

    def merge(self, other: "ClassificationMeter") -> None:
        """Add another meter's counts (same num_classes and bins) into this one."""
        if not isinstance(other, ClassificationMeter) or other._state.shape != self._state.shape \
                or other.logit_range != self.logit_range:
            raise ValueError("can only merge a ClassificationMeter with the same num_classes, auc_bins and "
                             "logit_range")
        self._state += other._state

    def confusion_matrix(self) -> np.ndarray:
        """Accumulated (K, K) int64 confusion matrix (rows true, columns predicted)."""
        return self._cm().astype(np.int64)

    def _auc_per_class(self) -> np.ndarray | None:
        if not self.auc_bins:
            return None
        positives, negatives = self._hist(True), self._hist(False)
        aucs = np.full(self.num_classes, np.nan)
        for c in range(self.num_classes):
            n_pos, n_neg = positives[c].sum(), negatives[c].sum()
            if n_pos and n_neg:
                negatives_below = np.cumsum(negatives[c]) - negatives[c]
                aucs[c] = float((positives[c] * (negatives_below + 0.5 * negatives[c])).sum() / (n_pos * n_neg))
        return aucs

    def report(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """Per-class report as `classification_report` (plus ``loss``) from the accumulated state."""
        report = _report_from_confusion(self._cm(), class_names, self._auc_per_class())
        report["loss"] = self._loss()
        return report

    def _loss(self) -> float:
        count = self._state[self._cm_size + 1]
        return float(self._state[self._cm_size] / count) if count else float("nan")

    def compute(self) -> dict[str, float]:
        """Flat dict of floats: ``samples``, ``loss`` (NaN if never given), ``accuracy``,
        ``balanced_accuracy``, ``precision_macro``, ``recall_macro``, ``specificity_macro``, ``f1_macro``,
        the same ``*_weighted``, ``roc_auc`` (binary: class 1; multiclass: macro one-vs-rest; NaN if no
        scores or undefined), and ``recall_<c>``/``precision_<c>`` for each class index c."""
        report = self.report()
        out = {
            "samples": float(report["samples"]),
            "loss": report["loss"],
            "accuracy": report["accuracy"],
            "balanced_accuracy": report["balanced_accuracy"],
        }
        for average in ("macro", "weighted"):
            for key, value in report[average].items():
                out[f"{key}_{average}"] = value
        out["roc_auc"] = report.get("roc_auc", float("nan"))
        for name, entry in report["per_class"].items():
            out[f"precision_{name}"] = entry["precision"]
            out[f"recall_{name}"] = entry["recall"]
        return out


# --------------------------------------------------------------------------------------------------
# Segmentation


def _masks(values: Any, name: str, threshold: float) -> np.ndarray:
    array = _to_numpy(values, name)
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


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    return float(threshold)


def segmentation_counts(prediction: Any, target: Any, *, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Per-image pixel counts ``tp``, ``fp``, ``fn``, ``tn`` as (N,) int64 arrays.

    ``prediction``: (N, 1, H, W), (N, H, W) or (H, W) masks or probabilities (``>= threshold`` is
    foreground); ``target``: the same shape, binary (``>= 0.5`` is foreground).
    """
    threshold = _check_threshold(threshold)
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


def _overlap_scores(tp, fp, fn, fn_weight: float, fp_weight: float) -> dict[str, np.ndarray]:
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    both_empty = (tp + fp + fn) == 0

    def score(numerator, denominator):
        # Policy: empty ground truth and empty prediction is a perfect answer.
        return np.where(both_empty, 1.0, _safe_divide(numerator, denominator))

    return {
        "dice": score(2 * tp, 2 * tp + fp + fn),
        "iou": score(tp, tp + fp + fn),
        "tversky": score(tp, tp + fn_weight * fn + fp_weight * fp),
    }


def _check_weights(fn_weight: Any, fp_weight: Any) -> None:
    for name, value in (("fn_weight", fn_weight), ("fp_weight", fp_weight)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if fn_weight == 0 and fp_weight == 0:
        raise ValueError("fn_weight and fp_weight cannot both be 0")


def dice_per_image(prediction: Any, target: Any, *, threshold: float = 0.5) -> np.ndarray:
    """(N,) Dice ``2TP/(2TP+FP+FN)`` per image; both masks empty -> 1.0 (see module docstring)."""
    counts = segmentation_counts(prediction, target, threshold=threshold)
    return _overlap_scores(counts["tp"], counts["fp"], counts["fn"], 0.7, 0.3)["dice"]


def iou_per_image(prediction: Any, target: Any, *, threshold: float = 0.5) -> np.ndarray:
    """(N,) IoU (Jaccard) ``TP/(TP+FP+FN)`` per image; both masks empty -> 1.0."""
    counts = segmentation_counts(prediction, target, threshold=threshold)
    return _overlap_scores(counts["tp"], counts["fp"], counts["fn"], 0.7, 0.3)["iou"]


def tversky_per_image(prediction: Any, target: Any, *, threshold: float = 0.5, fn_weight: float = 0.7,
                      fp_weight: float = 0.3) -> np.ndarray:
    """(N,) Tversky index ``TP/(TP + fn_weight*FN + fp_weight*FP)`` of binarised masks; both empty -> 1.0.
    ``fn_weight`` multiplies false negatives (as in `classeg.losses`)."""
    _check_weights(fn_weight, fp_weight)
    counts = segmentation_counts(prediction, target, threshold=threshold)
    return _overlap_scores(counts["tp"], counts["fp"], counts["fn"], fn_weight, fp_weight)["tversky"]


def aggregate(per_image: Any, target_nonempty: Any, *, how: str = "mean") -> float:
    """Average (N,) per-image scores: ``how="mean"`` over all images, ``"tumour"`` over images whose
    ground truth is non-empty (``target_nonempty`` (N,) bool; NaN if there is none). (The ``global``
    aggregation needs pixel counts: see `segmentation_scores`.)"""
    if how not in ("mean", "tumour"):
        raise ValueError(f"how must be 'mean' or 'tumour', got {how!r}")
    scores = _to_numpy(per_image, "per_image").astype(np.float64)
    nonempty = _to_numpy(target_nonempty, "target_nonempty").astype(bool)
    if scores.ndim != 1 or scores.shape != nonempty.shape:
        raise ValueError(f"per_image and target_nonempty must be equal-length 1-D arrays, got shapes "
                         f"{scores.shape} and {nonempty.shape}")
    selected = scores if how == "mean" else scores[nonempty]
    return float(selected.mean()) if selected.size else float("nan")


def segmentation_scores(prediction: Any, target: Any, *, threshold: float = 0.5, fn_weight: float = 0.7,
                        fp_weight: float = 0.3) -> dict[str, Any]:
    """Per-image and aggregated Dice, IoU and Tversky for a batch of masks.

    Returns a dict with (N,) arrays ``dice``, ``iou``, ``tversky``, ``tp``, ``fp``, ``fn``, ``tn``,
    ``target_nonempty``, and floats ``<metric>_mean``, ``<metric>_tumour`` and ``<metric>_global`` for
    each metric (conventions in the module docstring).
    """
    _check_weights(fn_weight, fp_weight)
    counts = segmentation_counts(prediction, target, threshold=threshold)
    per_image = _overlap_scores(counts["tp"], counts["fp"], counts["fn"], fn_weight, fp_weight)
    nonempty = (counts["tp"] + counts["fn"]) > 0
    pooled = _overlap_scores(counts["tp"].sum(), counts["fp"].sum(), counts["fn"].sum(), fn_weight, fp_weight)
    out: dict[str, Any] = {**per_image, **counts, "target_nonempty": nonempty}
    for name, values in per_image.items():
        out[f"{name}_mean"] = aggregate(values, nonempty, how="mean")
        out[f"{name}_tumour"] = aggregate(values, nonempty, how="tumour")
        out[f"{name}_global"] = float(pooled[name])
    return out


class SegmentationMeter:
    """Accumulates segmentation results over batches (and ranks) in a flat float64 vector.

    State layout (``STATE_FIELDS``): image counts, per-image score sums over all images and over
    tumour images (non-empty ground truth), pooled pixel counts, image-level detection counts, loss sum and
    count. Sum `state()` across ranks, `load_state` the sum, then `compute()`.
    """

    STATE_FIELDS = (
        "images", "tumour_images", "dice_sum", "iou_sum", "tversky_sum",
        "dice_tumour_sum", "iou_tumour_sum", "tversky_tumour_sum",
        "tp", "fp", "fn", "tn", "empty_correct", "tumour_detected", "loss_sum", "loss_count",
    )

    def __init__(self, *, threshold: float = 0.5, fn_weight: float = 0.7, fp_weight: float = 0.3):
        self.threshold = _check_threshold(threshold)
        _check_weights(fn_weight, fp_weight)
        self.fn_weight = float(fn_weight)
        self.fp_weight = float(fp_weight)
        self._index = {name: i for i, name in enumerate(self.STATE_FIELDS)}
        self._state = np.zeros(len(self.STATE_FIELDS), dtype=np.float64)

    def reset(self) -> None:
        """Zero all accumulated counts."""
        self._state[:] = 0

    def _add(self, name: str, value: float) -> None:
        self._state[self._index[name]] += value

    def _get(self, name: str) -> float:
        return float(self._state[self._index[name]])

    def update(self, prediction: Any, target: Any, *, loss: float | None = None) -> None:
        """Add a batch: ``prediction`` (N, 1, H, W) probabilities or masks (``>= threshold`` is
        foreground), ``target`` binary masks of the same shape; ``loss`` the batch's mean loss (weighted
        by N)."""
        scores = segmentation_scores(prediction, target, threshold=self.threshold, fn_weight=self.fn_weight,
                                     fp_weight=self.fp_weight)
        nonempty = scores["target_nonempty"]
        predicted_nonempty = (scores["tp"] + scores["fp"]) > 0
        n = nonempty.size
        self._add("images", n)
        self._add("tumour_images", nonempty.sum())
        for name in ("dice", "iou", "tversky"):
            self._add(f"{name}_sum", scores[name].sum())
            self._add(f"{name}_tumour_sum", scores[name][nonempty].sum())
        for name in ("tp", "fp", "fn", "tn"):
            self._add(name, scores[name].sum())
        self._add("empty_correct", np.count_nonzero(~nonempty & ~predicted_nonempty))
        self._add("tumour_detected", np.count_nonzero(nonempty & predicted_nonempty))
        if loss is not None:
            loss_value = float(loss.item() if hasattr(loss, "item") else loss)
            if not np.isfinite(loss_value):
                raise ValueError(f"loss must be finite, got {loss_value!r}")
            self._add("loss_sum", loss_value * n)
            self._add("loss_count", n)

    def state(self) -> np.ndarray:
        """A copy of the flat float64 state vector (fields in ``STATE_FIELDS`` order)."""
        return self._state.copy()

    def load_state(self, vector: Any) -> None:
        """Replace the state with ``vector`` (e.g. the allreduce sum of every rank's `state()`)."""
        array = _to_numpy(vector, "state").astype(np.float64).ravel()
        if array.shape != self._state.shape:
            raise ValueError(f"state must have {self._state.size} values, got {array.size}")
        self._state[:] = array

    def merge(self, other: "SegmentationMeter") -> None:
        """Add another meter's sums (same threshold and weights) into this one."""
        if not isinstance(other, SegmentationMeter) or (other.threshold, other.fn_weight, other.fp_weight) != (
                self.threshold, self.fn_weight, self.fp_weight):
            raise ValueError("can only merge a SegmentationMeter with the same threshold and weights")
        self._state += other._state

    def compute(self) -> dict[str, float]:
        """Flat dict of floats: ``images``, ``tumour_images``, ``dice``/``iou``/``tversky`` (mean over
        all images), ``*_tumour`` (over tumour images), ``*_global`` (pooled pixels), ``pixel_accuracy``,
        ``empty_correct_rate`` (share of tumour-free images predicted empty), ``detection_rate`` (share of
        tumour images with any predicted foreground), ``loss``. NaN where there is nothing to average."""
        images, tumour = self._get("images"), self._get("tumour_images")
        empty = images - tumour

        def ratio(numerator: float, denominator: float) -> float:
            return numerator / denominator if denominator else float("nan")

        pooled = _overlap_scores(self._get("tp"), self._get("fp"), self._get("fn"), self.fn_weight, self.fp_weight)
        out = {"images": images, "tumour_images": tumour}
        for name in ("dice", "iou", "tversky"):
            out[name] = ratio(self._get(f"{name}_sum"), images)
            out[f"{name}_tumour"] = ratio(self._get(f"{name}_tumour_sum"), tumour)
            out[f"{name}_global"] = float(pooled[name]) if images else float("nan")
        pixels = sum(self._get(k) for k in ("tp", "fp", "fn", "tn"))
        out["pixel_accuracy"] = ratio(self._get("tp") + self._get("tn"), pixels)
        out["empty_correct_rate"] = ratio(self._get("empty_correct"), empty)
        out["detection_rate"] = ratio(self._get("tumour_detected"), tumour)
        out["loss"] = ratio(self._get("loss_sum"), self._get("loss_count"))
        return out


def as_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready copy of a metrics dict: numpy arrays -> lists, numpy scalars -> Python numbers."""
    if not isinstance(values, Mapping):
        raise ValueError(f"values must be a mapping, got {type(values).__name__}")

    def convert(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return convert(values)
