"""Classification, segmentation and end-to-end Class-Seg metrics, as functions and as meters for distributed runs.

Inputs may be numpy arrays, torch tensors (any device; copied to the CPU) or sequences. Results are numpy
float64 arrays or Python floats; `as_mapping` makes a metrics dict JSON-ready.

Modules (every public name is re-exported here, so ``from classeg.metrics import X`` is the one import):

- `classeg.metrics.classification`: confusion matrix, precision/recall/specificity/F1, balanced accuracy,
  ROC AUC, `classification_report` (label and zero-division conventions in its docstring).
- `classeg.metrics.segmentation`: pixel counts, Dice/IoU/Tversky per image, the ``mean`` / ``tumor`` /
  ``global`` aggregations and the empty-mask policy.
- `classeg.metrics.meters`: `ClassificationMeter` and `SegmentationMeter`, whose flat state vectors ranks
  sum with one allreduce.
- `classeg.metrics.operating_point`: the binary `roc_curve` and `choose_operating_point`, the validated
  tumour threshold stored in model.json.
- `classeg.metrics.classseg`: `classseg_metrics`, detection plus segmenter and pipeline Dice of Class-Seg,
  per slice and per patient.
"""
from classeg.metrics._arrays import as_mapping
from classeg.metrics.classification import (
    AVERAGES,
    accuracy,
    balanced_accuracy,
    classification_report,
    confusion_matrix,
    f1_score,
    per_class_scores,
    precision,
    recall,
    roc_auc,
    sensitivity,
    specificity,
)
from classeg.metrics.classseg import classseg_metrics
from classeg.metrics.meters import ClassificationMeter, SegmentationMeter
from classeg.metrics.operating_point import choose_operating_point, roc_curve
from classeg.metrics.segmentation import (
    AGGREGATIONS,
    aggregate,
    dice_per_image,
    iou_per_image,
    segmentation_counts,
    segmentation_scores,
    tversky_per_image,
)

__all__ = [
    "AGGREGATIONS", "AVERAGES", "ClassificationMeter", "SegmentationMeter", "accuracy", "aggregate", "as_mapping",
    "balanced_accuracy", "choose_operating_point", "classification_report", "classseg_metrics",
    "confusion_matrix", "dice_per_image", "f1_score", "iou_per_image", "per_class_scores", "precision", "recall",
    "roc_auc", "roc_curve", "segmentation_counts", "segmentation_scores", "sensitivity", "specificity",
    "tversky_per_image",
]
