"""End-to-end evaluation of the Class-Seg pipeline on a scan table whose truth is known.

- `classeg.evaluation.slices`: per-slice truth, detection and pixel counts (plain pandas, and its
  ``mapInPandas`` form);
- `classeg.evaluation.classseg`: the driver job behind ``classeg evaluate --classifier --segmenter``
  (threshold choice, the Spark job, `classeg.metrics.classseg_metrics`, the outputs).

A single model on its own is evaluated by `classeg.training.evaluate_artifact` (``classeg evaluate --model``).
"""
from classeg.evaluation.classseg import (METRICS_NAME, SLICES_DIR, SPLITS, ClassSegEvaluation, evaluate_classseg,
                                        tumor_threshold)
from classeg.evaluation.slices import SLICE_COLUMNS, SLICES_SCHEMA_DDL, evaluate_partition, evaluate_slices

__all__ = ["METRICS_NAME", "SLICES_DIR", "SLICES_SCHEMA_DDL", "SLICE_COLUMNS", "SPLITS", "ClassSegEvaluation",
           "evaluate_classseg", "evaluate_partition", "evaluate_slices", "tumor_threshold"]
