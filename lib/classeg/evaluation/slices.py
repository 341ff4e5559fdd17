"""Per-slice Class-Seg evaluation: scan-table rows in, one row of truth, detection and pixel counts out.

Two layers, as scoring has (:mod:`classeg.scoring.udf`):

* :func:`evaluate_slices` is plain pandas: a batch of scan-table rows (:data:`INPUT_COLUMNS`) and a loaded
  :class:`~classeg.scoring.predictor.ClassSegPredictor` in, one :data:`SLICE_COLUMNS` row per slice out. It runs and is
  tested without Spark.
* :func:`evaluate_partition` is the same as a ``mapInPandas`` function (iterator form): it picks the task's
  device and torch threads and takes the process's cached predictor, so the models load once per Python
  worker, exactly as in scoring.

Per slice, at the scan table's canonical resolution (the stored image and mask PNGs share it, and the
predictor returns masks at the size of the scan it is given, so truth and counts are taken on the same
pixels): the true mask is the stored mask (an absent mask is empty); ``has_tumor_true`` is
``true_area_px > 0``, which can differ from the table's ``has_tumor`` (``has_tumor_source``, decided on the
source mask before resizing, where a lesion of a few pixels may vanish). The classifier runs on every slice;
``classified_tumor`` is ``tumor_probability >= threshold``. The segmenter runs on every slice classified
tumour (as in scoring) and on every slice whose true mask is non-empty (so the segmenter's own Dice is known
for the tumours the classifier missed); elsewhere ``segmented`` is false and its counts are null.
``segmenter_dice`` is the segmenter's mask against the truth; ``pipeline_dice`` the pipeline's mask (the
segmenter's where classified tumour, empty elsewhere), so a missed tumour scores 0 and a correctly rejected
tumour-free slice 1 (the empty policy of :mod:`classeg.metrics.segmentation`).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from classeg import imaging
from classeg.metrics import segmentation_counts
from classeg.metrics.segmentation import overlap_scores

__all__ = ["INPUT_COLUMNS", "SLICE_COLUMNS", "SLICES_ARROW_SCHEMA", "SLICES_SCHEMA_DDL", "evaluate_partition",
           "evaluate_slices"]

#: Scan-table columns a task reads.
INPUT_COLUMNS = ("scan_id", "patient_id", "slice_index", "has_tumor", "image", "mask")
SLICE_COLUMNS = ("scan_id", "patient_id", "slice_index", "has_tumor_source", "has_tumor_true", "true_area_px",
                 "tumor_probability", "classified_tumor", "segmented", "segmenter_tp", "segmenter_fp",
                 "segmenter_dice", "pipeline_dice")
#: Spark schema of the rows :func:`evaluate_slices` returns (pixel counts are null where not segmented).
SLICES_SCHEMA_DDL = (
    "scan_id string, patient_id string, slice_index int, has_tumor_source boolean, has_tumor_true boolean, "
    "true_area_px long, tumor_probability double, classified_tumor boolean, segmented boolean, "
    "segmenter_tp long, segmenter_fp long, segmenter_dice double, pipeline_dice double")
#: The same as an Arrow schema, for the per-slice table the driver writes (Spark's toPandas turns nullable
#: integers into floats; this turns them back).
SLICES_ARROW_SCHEMA = pa.schema([
    ("scan_id", pa.string()), ("patient_id", pa.string()), ("slice_index", pa.int32()),
    ("has_tumor_source", pa.bool_()), ("has_tumor_true", pa.bool_()), ("true_area_px", pa.int64()),
    ("tumor_probability", pa.float64()), ("classified_tumor", pa.bool_()), ("segmented", pa.bool_()),
    ("segmenter_tp", pa.int64()), ("segmenter_fp", pa.int64()), ("segmenter_dice", pa.float64()),
    ("pipeline_dice", pa.float64())])


def _dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    # The Tversky weights are unused; overlap_scores carries the empty policy Dice needs.
    return overlap_scores(tp, fp, fn, 0.7, 0.3)["dice"]


def _true_mask(png, shape: tuple[int, int], scan_id: str) -> np.ndarray:
    """The stored mask as (H, W) bool (absent: empty), checked to be at the image's resolution."""
    if png is None:
        return np.zeros(shape, bool)
    mask = imaging.decode_png(png)
    if mask.ndim == 3:
        mask = mask.max(axis=-1)
    if mask.shape != shape:
        raise ValueError(f"scan {scan_id!r}: mask is {mask.shape[1]}x{mask.shape[0]} px but its image is "
                         f"{shape[1]}x{shape[0]} px; the scan table stores both at one canonical size")
    return mask != 0


def evaluate_slices(rows: pd.DataFrame, predictor, *, threshold: float) -> pd.DataFrame:
    """Evaluate one batch of scan-table rows (:data:`INPUT_COLUMNS`; ``image``/``mask`` PNG bytes, mask may be
    null) with ``predictor`` (a :class:`~classeg.scoring.predictor.ClassSegPredictor` with a segmenter) at the tumour
    ``threshold`` in [0, 1]. Returns one :data:`SLICE_COLUMNS` row per input row, in order (see the module
    docstring for what each column means)."""
    if predictor.segmenter is None:
        raise ValueError("evaluating Class-Seg needs a predictor with a segmenter")
    scans = [imaging.decode_png(png) for png in rows["image"]]
    ids = rows["scan_id"].tolist()
    truths = [_true_mask(png, scan.shape[:2], scan_id) for png, scan, scan_id in zip(rows["mask"], scans, ids)]
    area = np.array([int(truth.sum()) for truth in truths], dtype=np.int64)
    predictions = predictor.predict(scans)
    probability = np.array([p.tumor_probability for p in predictions], dtype=np.float64)
    called = probability >= threshold
    masks = [p.mask for p in predictions]
    # The predictor segments what it called tumour; the tumours it missed are segmented here, and so is a
    # slice whose float32 probability the predictor compared just below the threshold that float64 reaches.
    wanted = [i for i, mask in enumerate(masks) if mask is None and (called[i] or area[i] > 0)]
    for i, mask in zip(wanted, predictor.segment([scans[i] for i in wanted]) if wanted else []):
        masks[i] = mask
    segmented = np.array([mask is not None for mask in masks], dtype=bool)
    tp = np.zeros(len(rows), np.int64)
    fp = np.zeros(len(rows), np.int64)
    chosen = np.flatnonzero(segmented)
    if chosen.size:
        counts = segmentation_counts(np.stack([masks[i] for i in chosen]), np.stack([truths[i] for i in chosen]))
        tp[chosen], fp[chosen] = counts["tp"], counts["fp"]
    segmenter_dice = np.where(segmented, _dice(tp, fp, area - tp), np.nan)
    pipeline_tp, pipeline_fp = np.where(called, tp, 0), np.where(called, fp, 0)
    pipeline_dice = _dice(pipeline_tp, pipeline_fp, area - pipeline_tp)
    return pd.DataFrame({
        "scan_id": pd.Series(ids, dtype=object),
        "patient_id": pd.Series(rows["patient_id"].tolist(), dtype=object),
        "slice_index": pd.array(rows["slice_index"].tolist(), dtype="Int32"),
        "has_tumor_source": pd.array(rows["has_tumor"].tolist(), dtype="boolean"),
        "has_tumor_true": area > 0,
        "true_area_px": area,
        "tumor_probability": probability,
        "classified_tumor": called,
        "segmented": segmented,
        "segmenter_tp": pd.Series(tp, dtype="Int64").mask(~segmented),
        "segmenter_fp": pd.Series(fp, dtype="Int64").mask(~segmented),
        "segmenter_dice": segmenter_dice,
        "pipeline_dice": pipeline_dice,
    }, columns=list(SLICE_COLUMNS))


def evaluate_partition(frames: Iterator[pd.DataFrame], settings) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` function (bind ``settings``, a :class:`~classeg.scoring.predictor.ScoreSettings` naming both
    artifacts and the tumour threshold, with functools.partial): scan-table rows in, :data:`SLICES_SCHEMA_DDL`
    rows out, in batches of ``settings.batch_size``. Models come from the process's predictor cache, as in
    scoring, so they load once per Python worker."""
    import torch

    from classeg.scoring.predictor import select_device, task_threads
    from classeg.scoring.udf import cached_predictor

    threads = task_threads(settings.torch_threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    predictor = cached_predictor(settings, select_device(settings.device))
    for frame in frames:
        for start in range(0, len(frame), settings.batch_size):
            batch = frame.iloc[start:start + settings.batch_size]
            yield evaluate_slices(batch, predictor, threshold=settings.tumor_threshold)
