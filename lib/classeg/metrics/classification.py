"""Classification metrics: confusion matrix, per-class scores, balanced accuracy, ROC AUC, a JSON report.

Conventions
-----------
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
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from classeg.metrics._arrays import check_num_classes, labels, safe_divide, to_numpy

AVERAGES = ("macro", "weighted", None)


def _pair(y_true: Any, y_pred: Any, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    true = labels(y_true, "y_true", num_classes)
    pred = labels(y_pred, "y_pred", num_classes)
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {true.shape[0]} and {pred.shape[0]}")
    return true, pred


def confusion_matrix(y_true: Any, y_pred: Any, *, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows = true class, columns = predicted class.

    ``y_true``, ``y_pred``: (N,) integer labels in ``[0, num_classes)``.
    """
    num_classes = check_num_classes(num_classes)
    true, pred = _pair(y_true, y_pred, num_classes)
    return np.bincount(true * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def _check_confusion(cm: Any) -> np.ndarray:
    cm = to_numpy(cm, "confusion matrix")
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
    precision = safe_divide(tp, tp + fp)
    recall = safe_divide(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "specificity": safe_divide(tn, tn + fp),
        "f1": safe_divide(2 * tp, 2 * tp + fp + fn),
        "support": tp + fn,
    }


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of (N,) labels predicted exactly; N must be > 0."""
    true, pred = _pair(y_true, y_pred, None)
    if true.size == 0:
        raise ValueError("accuracy of an empty set is undefined (got 0 labels)")
    return float(np.mean(true == pred))


def balanced_from_cm(cm: np.ndarray) -> float:
    """Mean recall over the classes with true support in a float (K, K) confusion matrix."""
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def balanced_accuracy(y_true: Any, y_pred: Any, *, num_classes: int) -> float:
    """Mean recall over the classes that occur in ``y_true`` (scikit-learn's definition)."""
    return balanced_from_cm(confusion_matrix(y_true, y_pred, num_classes=num_classes).astype(np.float64))


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


def binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC of (N,) float ``scores`` for the (N,) bool ``is_positive``; NaN with one class."""
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
    score_array = to_numpy(scores, "scores").astype(np.float64)
    if not np.all(np.isfinite(score_array)):
        raise ValueError("scores must be finite (got NaN or inf)")
    if score_array.ndim == 1 or (score_array.ndim == 2 and score_array.shape[1] == 2 and num_classes in (None, 2)):
        true = labels(y_true, "y_true", 2)
        positive_scores = score_array if score_array.ndim == 1 else score_array[:, 1]
        if positive_scores.shape[0] != true.shape[0]:
            raise ValueError(f"y_true has {true.shape[0]} labels but scores has {positive_scores.shape[0]} rows")
        return binary_auc(true == 1, positive_scores)
    if score_array.ndim != 2:
        raise ValueError(f"scores must be (N,) or (N, K), got shape {score_array.shape}")
    k = score_array.shape[1] if num_classes is None else check_num_classes(num_classes)
    if score_array.shape[1] != k:
        raise ValueError(f"scores must have num_classes={k} columns, got shape {score_array.shape}")
    true = labels(y_true, "y_true", k)
    if score_array.shape[0] != true.shape[0]:
        raise ValueError(f"y_true has {true.shape[0]} labels but scores has {score_array.shape[0]} rows")
    per_class = np.array([binary_auc(true == c, score_array[:, c]) for c in range(k)])
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


def report_from_confusion(cm: np.ndarray, class_names: Sequence[str] | None,
                          auc_per_class: np.ndarray | None) -> dict[str, Any]:
    """`classification_report` from a (K, K) confusion matrix and optional (K,) one-vs-rest AUCs."""
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
        "balanced_accuracy": balanced_from_cm(cm),
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
        score_array = to_numpy(scores, "scores").astype(np.float64)
        true = labels(y_true, "y_true", num_classes)
        if score_array.shape != (true.size, num_classes) or not np.all(np.isfinite(score_array)):
            raise ValueError(f"scores must be finite, shape ({true.size}, {num_classes}), got shape "
                             f"{score_array.shape}")
        auc = np.array([binary_auc(true == c, score_array[:, c]) for c in range(num_classes)])
    return report_from_confusion(cm, class_names, auc)
