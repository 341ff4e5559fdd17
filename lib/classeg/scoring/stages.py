"""Where a scoring task's time goes: seconds per stage, summed over the threads and tasks that did the work.

Stages (:data:`STAGES`): ``fetch`` (reading the object's bytes), ``decode`` (the file's images to canonical
uint8), ``preprocess`` (both models' inputs: copy to the device, resize, normalise), ``classify`` (classifier
forward and softmax), ``segment`` (segmenter forward, masks resized back and thresholded on the device, copied
to the host), ``encode`` (mask PNGs and the rows' DataFrame), ``write`` (the task waiting for Spark to take its
rows: Arrow conversion and the Parquet write downstream, seen through back-pressure at each ``yield``).
Fetch, decode and encode run in loader threads, the model stages in the task's thread, so the stages overlap
and can sum to more than the wall time. On a GPU the model stages are timed on the device's own timeline
(:class:`classeg.scoring.device.StageClock`, CUDA events), so that timing them does not make the host wait.
Counts travel with them: ``images`` (scored by the models), ``batches`` (model batches) and ``largest_batch``
(images in the largest one; a maximum, not a sum).

A job sums its tasks' :class:`StageTimes` with a Spark accumulator (:func:`stage_accumulator`): the scores
table's columns stay as they are. A retried task's attempts are all counted.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator, Mapping

__all__ = ["COUNTS", "HOST_STAGES", "STAGES", "StageTimes", "StagesParam", "stage_accumulator", "stage_summary"]

STAGES = ("fetch", "decode", "preprocess", "classify", "segment", "encode", "write")
# The stages that are the host's work whatever the device: the per-image cost beside the models.
HOST_STAGES = ("fetch", "decode", "encode")
COUNTS = ("images", "batches", "largest_batch")
_MAXIMA = ("largest_batch",)


class StageTimes:
    """Thread-safe seconds per stage (:data:`STAGES`) and counts (:data:`COUNTS`) of one task."""

    def __init__(self):
        self._lock = threading.Lock()
        self.values: dict[str, float] = {name: 0 for name in (*STAGES, *COUNTS)}

    def add(self, name: str, amount: float) -> None:
        if name not in self.values:
            raise ValueError(f"stage must be one of {STAGES + COUNTS}, got {name!r}")
        with self._lock:
            if name in _MAXIMA:
                self.values[name] = max(self.values[name], amount)
            else:
                self.values[name] += amount

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def batch(self, images: int) -> None:
        """Count one model batch of ``images`` images."""
        self.add("images", images)
        self.add("batches", 1)
        self.add("largest_batch", images)

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return dict(self.values)


class StagesParam:
    """Spark ``AccumulatorParam`` of :meth:`StageTimes.as_dict` values: stages and counts summed,
    ``largest_batch`` the maximum. Duck-typed (``zero``/``addInPlace``) so this module imports without
    pyspark."""

    def zero(self, value: Mapping[str, float]) -> dict[str, float]:
        return {name: 0 for name in (*STAGES, *COUNTS)}

    def addInPlace(self, total: dict[str, float], other: Mapping[str, float]) -> dict[str, float]:  # noqa: N802
        for name, value in other.items():
            total[name] = max(total.get(name, 0), value) if name in _MAXIMA else total.get(name, 0) + value
        return total


def stage_accumulator(spark):
    """A Spark accumulator summing the :class:`StageTimes` of a job's tasks (driver only)."""
    return spark.sparkContext.accumulator(StagesParam().zero({}), StagesParam())


def stage_summary(values: Mapping[str, float]) -> dict:
    """The run summary's fields from summed stage values: ``stage_seconds`` (:data:`STAGES`, rounded to ms),
    ``model_batches``, ``largest_batch`` and ``host_ms_per_image`` (:data:`HOST_STAGES` per image the models
    scored; None without images)."""
    images = int(values.get("images", 0))
    host = sum(float(values.get(name, 0)) for name in HOST_STAGES)
    return {"stage_seconds": {name: round(float(values.get(name, 0)), 3) for name in STAGES},
            "model_batches": int(values.get("batches", 0)), "largest_batch": int(values.get("largest_batch", 0)),
            "host_ms_per_image": round(1000 * host / images, 3) if images else None}
