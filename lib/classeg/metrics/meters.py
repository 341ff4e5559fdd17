"""Accumulating meters for distributed runs: `ClassificationMeter` and `SegmentationMeter`.

Each meter keeps its whole state in one flat float64 vector (`state()`), so ranks can sum it with one
allreduce, `load_state` the sum, and `compute()` the global metrics. ROC AUC in `ClassificationMeter` uses
fixed-bin histograms of the one-vs-rest scores (bins uniform in logit space, see the class), not stored
scores: memory and allreduce size are ``2 * num_classes * auc_bins`` floats whatever the dataset size, and
the AUC differs from the exact value only through pairs that fall in the same bin (counted as ties).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from classeg.metrics._arrays import batch_loss, check_num_classes, labels, to_numpy
from classeg.metrics.classification import confusion_matrix, report_from_confusion
from classeg.metrics.segmentation import check_threshold, check_weights, overlap_scores, segmentation_scores


class _FlatStateMeter:
    """State handling shared by the meters: one flat float64 vector ``_state`` that ranks sum.

    Subclasses set ``_state`` and ``_setup`` (the settings two meters must share to be summed) and name
    those settings in ``_SETUP_WORDS`` for the merge error.
    """

    _SETUP_WORDS = ""
    _state: np.ndarray

    def _setup(self) -> tuple:
        raise NotImplementedError

    def reset(self) -> None:
        """Zero all accumulated counts."""
        self._state[:] = 0

    def state(self) -> np.ndarray:
        """A copy of the flat float64 state vector (sum it across ranks, then `load_state`)."""
        return self._state.copy()

    def load_state(self, vector: Any) -> None:
        """Replace the state with ``vector`` (e.g. the allreduce sum of every rank's `state()`)."""
        array = to_numpy(vector, "state").astype(np.float64).ravel()
        if array.shape != self._state.shape:
            raise ValueError(f"state must have {self._state.size} values, got {array.size}")
        self._state[:] = array

    def merge(self, other: "_FlatStateMeter") -> None:
        """Add another meter's sums (same class and settings) into this one."""
        if type(other) is not type(self) or other._setup() != self._setup():
            raise ValueError(f"can only merge a {type(self).__name__} with the same {self._SETUP_WORDS}")
        self._state += other._state


class ClassificationMeter(_FlatStateMeter):
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

    _SETUP_WORDS = "num_classes, auc_bins and logit_range"

    def __init__(self, num_classes: int, *, auc_bins: int = 2048, logit_range: float = 16.0):
        self.num_classes = check_num_classes(num_classes)
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

    def _setup(self) -> tuple:
        return self.num_classes, self.auc_bins, self.logit_range

    # state layout
    def _cm(self) -> np.ndarray:
        return self._state[: self._cm_size].reshape(self.num_classes, self.num_classes)

    def _hist(self, positive: bool) -> np.ndarray:
        start = self._cm_size + 2 + (0 if positive else self._hist_size)
        return self._state[start: start + self._hist_size].reshape(self.num_classes, self.auc_bins)

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
        true = labels(y_true, "y_true", k)
        probs = self._probabilities(probabilities, logits)
        if probs is not None and probs.shape[0] != true.shape[0]:
            raise ValueError(f"y_true has {true.shape[0]} labels but scores have {probs.shape[0]} rows")
        if y_pred is None:
            if probs is None:
                raise ValueError("update needs y_pred, probabilities or logits")
            y_pred = probs.argmax(axis=1)
        self._cm()[...] += confusion_matrix(true, y_pred, num_classes=k)
        if loss is not None:
            self._state[self._cm_size] += batch_loss(loss) * true.size
            self._state[self._cm_size + 1] += true.size
        if probs is not None and self.auc_bins:
            bins = self._bin(probs)
            for c in range(k):
                is_positive = true == c
                self._hist(True)[c] += np.bincount(bins[is_positive, c], minlength=self.auc_bins)
                self._hist(False)[c] += np.bincount(bins[~is_positive, c], minlength=self.auc_bins)

    def _probabilities(self, probabilities: Any, logits: Any) -> np.ndarray | None:
        """(N, K) float64 probabilities from either argument (softmax of logits), or None if neither."""
        k = self.num_classes
        if probabilities is not None and logits is not None:
            raise ValueError("pass probabilities or logits, not both")
        if logits is not None:
            logit_array = to_numpy(logits, "logits").astype(np.float64)
            if logit_array.ndim != 2 or logit_array.shape[1] != k:
                raise ValueError(f"logits must be (N, {k}), got shape {logit_array.shape}")
            shifted = np.exp(logit_array - logit_array.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
        if probabilities is None:
            return None
        probs = to_numpy(probabilities, "probabilities").astype(np.float64)
        if probs.ndim != 2 or probs.shape[1] != k:
            raise ValueError(f"probabilities must be (N, {k}), got shape {probs.shape}")
        # float32 rounding may overshoot [0, 1] by an ulp; anything more is not a probability
        if probs.size and (np.isnan(probs).any() or probs.min() < -1e-6 or probs.max() > 1 + 1e-6):
            raise ValueError("probabilities must lie in [0, 1] (pass logits= for raw outputs)")
        return np.clip(probs, 0.0, 1.0)

    def _bin(self, probs: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            logit = np.log(probs) - np.log1p(-probs)
        r = self.logit_range
        scaled = (np.clip(logit, -r, r) + r) / (2 * r) * self.auc_bins
        return np.minimum(scaled.astype(np.int64), self.auc_bins - 1)

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
        report = report_from_confusion(self._cm(), class_names, self._auc_per_class())
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


class SegmentationMeter(_FlatStateMeter):
    """Accumulates segmentation results over batches (and ranks) in a flat float64 vector.

    State layout (``STATE_FIELDS``): image counts, per-image score sums over all images and over
    tumour images (non-empty ground truth), pooled pixel counts, image-level detection counts, loss sum and
    count. Sum `state()` across ranks, `load_state` the sum, then `compute()`.
    """

    STATE_FIELDS = (
        "images", "tumor_images", "dice_sum", "iou_sum", "tversky_sum",
        "dice_tumor_sum", "iou_tumor_sum", "tversky_tumor_sum",
        "tp", "fp", "fn", "tn", "empty_correct", "tumor_detected", "loss_sum", "loss_count",
    )
    _SETUP_WORDS = "threshold and weights"

    def __init__(self, *, threshold: float = 0.5, fn_weight: float = 0.7, fp_weight: float = 0.3):
        self.threshold = check_threshold(threshold)
        check_weights(fn_weight, fp_weight)
        self.fn_weight = float(fn_weight)
        self.fp_weight = float(fp_weight)
        self._index = {name: i for i, name in enumerate(self.STATE_FIELDS)}
        self._state = np.zeros(len(self.STATE_FIELDS), dtype=np.float64)

    def _setup(self) -> tuple:
        return self.threshold, self.fn_weight, self.fp_weight

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
        self._add("tumor_images", nonempty.sum())
        for name in ("dice", "iou", "tversky"):
            self._add(f"{name}_sum", scores[name].sum())
            self._add(f"{name}_tumor_sum", scores[name][nonempty].sum())
        for name in ("tp", "fp", "fn", "tn"):
            self._add(name, scores[name].sum())
        self._add("empty_correct", np.count_nonzero(~nonempty & ~predicted_nonempty))
        self._add("tumor_detected", np.count_nonzero(nonempty & predicted_nonempty))
        if loss is not None:
            self._add("loss_sum", batch_loss(loss) * n)
            self._add("loss_count", n)

    def compute(self) -> dict[str, float]:
        """Flat dict of floats: ``images``, ``tumor_images``, ``dice``/``iou``/``tversky`` (mean over
        all images), ``*_tumor`` (over tumour images), ``*_global`` (pooled pixels), ``pixel_accuracy``,
        ``empty_correct_rate`` (share of tumour-free images predicted empty), ``detection_rate`` (share of
        tumour images with any predicted foreground), ``loss``. NaN where there is nothing to average."""
        images, tumor = self._get("images"), self._get("tumor_images")
        empty = images - tumor

        def ratio(numerator: float, denominator: float) -> float:
            return numerator / denominator if denominator else float("nan")

        pooled = overlap_scores(self._get("tp"), self._get("fp"), self._get("fn"), self.fn_weight, self.fp_weight)
        out = {"images": images, "tumor_images": tumor}
        for name in ("dice", "iou", "tversky"):
            out[name] = ratio(self._get(f"{name}_sum"), images)
            out[f"{name}_tumor"] = ratio(self._get(f"{name}_tumor_sum"), tumor)
            out[f"{name}_global"] = float(pooled[name]) if images else float("nan")
        pixels = sum(self._get(k) for k in ("tp", "fp", "fn", "tn"))
        out["pixel_accuracy"] = ratio(self._get("tp") + self._get("tn"), pixels)
        out["empty_correct_rate"] = ratio(self._get("empty_correct"), empty)
        out["detection_rate"] = ratio(self._get("tumor_detected"), tumor)
        out["loss"] = ratio(self._get("loss_sum"), self._get("loss_count"))
        return out
