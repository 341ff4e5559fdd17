"""Scoring inside Spark tasks: archive objects in, scores-table rows out (one per image of each object).

Two layers, as the style guide asks for pandas UDFs:

* :class:`ClassSegPredictor` and :func:`score_frame` are plain Python/pandas: a DataFrame of archive objects
  (``objects_frame`` columns: uri, key, size, etag, mtime, version) in, each object's scores-table rows out.
  They run and are tested without Spark.
* :func:`score_partition` is the same logic as a ``mapInPandas`` function (iterator form): it picks the
  task's device and torch threads, loads the models once per Python worker process (cached by URI, so with
  Spark's worker reuse once per executor core, not once per task) and streams the task's objects through.

Per object, on the host (the pool's threads): :func:`classeg.io.files.fetch` (retries with backoff inside),
:func:`classeg.imaging.decode_file` (TIFF incl. LGG 3-channel stacks, JPEG, PNG, WebP, BMP, figshare ``.mat``;
DICOM of every common transfer syntax, windowed to uint8 as a viewer shows it, one image per frame; NIfTI
volumes, one image per axial slice) and :func:`classeg.imaging.to_uint8`. The images go to the models in
batches of ``batch_size`` images, cut across file boundaries (a 300-slice volume fills several batches; 32
small files share one). Per batch, on the device (:meth:`ClassSegPredictor.predict`): each model's resize and
normalisation from its model.json, one classifier forward pass; ``tumor_probability`` is the sum of the
softmax probabilities of the classifier's tumour classes; ``tumor = tumor_probability >= tumor_threshold``;
the segmenter runs on the tumour images only, its per-pixel probabilities resized (bilinear) back to each
image's original size and thresholded at ``mask_threshold``. Back on the host the pool PNG-encodes the masks.
Fetching and decoding run about two batches ahead of the models and encoding one behind, so the host's work
overlaps the models'; the seconds of each stage are counted (:mod:`classeg.scoring.stages`).

Row conventions (see :data:`classeg.scoring.table.SCORES_SCHEMA_DDL`):

* one row per image: a single-image file is one row with ``frame`` null; a multi-frame DICOM or a NIfTI
  volume is one row per frame or axial slice (``frame`` 0-based).
* ``status`` is ``ok``, ``error`` or ``skipped`` (:data:`classeg.errors.STATUSES`); an error row (one per
  object) has ``error = "<kind>: <detail>"`` with kind one of :data:`classeg.errors.ERROR_KINDS` and nulls in
  every prediction column; a skipped row (one per object: a DICOM without pixel data, or of a modality not in
  ``score.modalities``) has the reason in ``error`` and is not an error.
* ``mask`` is a PNG ({0, 255}, original height x width) for tumour images when a segmenter is given, else
  null; ``mask_area_px`` (pixels at original size), ``mask_fraction`` (area / (height * width)) and ``bbox``
  follow it. ``bbox`` is ``[x0, y0, x1, y1]`` in pixels of the original image, half-open like PIL's
  ``getbbox`` (``x1 - x0`` is the box width), null when the mask is empty.
* ``window_source``/``window_low``/``window_high``: the intensity window that took a DICOM or NIfTI image to
  uint8 (:class:`classeg.decoded.Window`); null for formats stored as displayed (PNG, JPEG, TIFF, .mat).
* DICOM identity (:data:`classeg.dicom.IDENTITY_COLUMNS`): study/series/SOP UIDs, instance number, modality,
  series description, pixel spacing and slice thickness (mm; also from NIfTI voxel sizes) and
  ``patient_key``, a keyed hash of PatientID; patient names, IDs and birth dates never reach a row or a log.
* ``height``/``width`` are the decoded image's original size; ``scored_at`` is the UTC time the batch was
  scored. ``run_id`` and ``run_date`` are added by the job (:mod:`classeg.scoring.job`) as partition folders.

torch is imported inside the functions that need it: this module is imported on the driver for planning and
pickled by reference into tasks.
"""
from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from classeg import imaging, redact
from classeg.archive import OBJECT_COLUMNS
from classeg.errors import FetchError
from classeg.io.files import fetch
from classeg.io.s3 import client as s3_client
from classeg.io.uri import parse_uri
from classeg.decoded import ReadSettings
from classeg.scoring.predictor import ClassSegPredictor, Prediction, ScoreSettings, select_device, task_threads
from classeg.scoring.stages import StageTimes
from classeg.scoring.table import IDENTITY_COLUMNS, OBJECT_KEY_COLUMNS, SCORE_COLUMNS

log = logging.getLogger(__name__)

__all__ = ["cached_predictor", "score_frame", "score_partition"]

# ---------------------------------------------------------------------------------------------- loading scans


@dataclass
class _Image:
    """One image of an object: its canonical uint8 scan, ``frame`` (None for a single-image file) and the
    ``window`` that took it to uint8; its :class:`Prediction`, then its encoded row, once they exist."""

    scan: np.ndarray
    frame: int | None
    window: Any = None
    prediction: Prediction | None = None
    row: dict | None = None


@dataclass
class _Loaded:
    """A fetched and decoded object: its images and identity, or the reason it has none to score
    (``skipped``), or why it could not be read (``error``)."""

    images: list[_Image] = field(default_factory=list)
    identity: dict | None = None
    skipped: str | None = None
    error: str | None = None


def _load_scan(uri: str, key: str, *, prepare, read_settings: ReadSettings, s3_cfg, max_bytes: int | None,
               client, stages: StageTimes) -> _Loaded:
    """Fetch and decode one object to canonical uint8 images; every failure of the object itself becomes
    ``error``."""
    from PIL import Image

    try:
        with stages.timed("fetch"):
            data = fetch(uri, s3_cfg=s3_cfg, max_bytes=max_bytes, client=client)
    except FetchError as err:
        return _Loaded(error=redact.scrub(err, uri, key))
    name = key or uri
    shown = redact.label(name)  # error texts name the object by its label (classeg.redact); the row has the URI
    try:
        with stages.timed("decode"):
            decoded = imaging.decode_file(data, name, read_settings)
            del data
            images = [_Image(prepare(image.pixels), image.frame, image.window) for image in decoded.images]
        return _Loaded(images=images, identity=decoded.identity, skipped=decoded.skipped)
    except imaging.DecodeError as err:
        return _Loaded(error=f"{err.reason}: {redact.scrub(err, uri, key)}")
    except Image.DecompressionBombError as err:
        return _Loaded(error=f"too_large: {shown}: {redact.scrub(err, uri, key)}")
    except ValueError as err:  # the decoded array was refused (shape, channels)
        return _Loaded(error=f"bad_structure: {shown}: {redact.scrub(err, uri, key)}")
    except Exception as err:  # noqa: BLE001 - third-party decoders raise anything on hostile bytes; the file is
        # the problem, not the job: record it as data (with its type) and carry on, as STYLE.md asks. Only the
        # exception's type reaches the log: a decoder's message may quote header values.
        log.warning("decoding %s failed with %s", redact.label(uri), type(err).__name__)
        return _Loaded(error=f"undecodable: {shown}: {type(err).__name__}")


# ---------------------------------------------------------------------------------------------- rows

_ROW_COLUMNS = SCORE_COLUMNS[len(OBJECT_KEY_COLUMNS):SCORE_COLUMNS.index("classifier_id")]


def _image_row(identity: dict, image: _Image) -> dict:
    """The ok row of one scored image (the mask PNG-encoded here, on the host)."""
    prediction = image.prediction
    height, width = image.scan.shape[:2]
    row = {**identity, "frame": image.frame, "status": "ok", "label": prediction.label,
           "label_name": prediction.label_name, "probabilities": prediction.probabilities,
           "tumor_probability": prediction.tumor_probability, "tumor": prediction.tumor, "height": int(height),
           "width": int(width)}
    if image.window is not None:
        row.update(window_source=image.window.source, window_low=image.window.low, window_high=image.window.high)
    if prediction.mask is not None:
        row.update(mask=imaging.encode_png(prediction.mask), mask_area_px=prediction.mask_area_px,
                   mask_fraction=prediction.mask_area_px / float(height * width), bbox=prediction.bbox)
    return row


def _identity(loaded: _Loaded) -> dict:
    return {name: (loaded.identity or {}).get(name) for name in IDENTITY_COLUMNS}


def _object_rows(loaded: _Loaded) -> list[dict]:
    """The rows of one object: one per image (ok, encoded by then), or one ``skipped`` or ``error`` row."""
    identity = _identity(loaded)
    if loaded.error is not None or (loaded.skipped is None and not loaded.images):
        return [{**identity, "status": "error", "error": loaded.error or "undecodable: no images in the file"}]
    if loaded.skipped is not None:
        return [{**identity, "status": "skipped", "error": loaded.skipped}]
    return [image.row for image in loaded.images]


def _rows(objects: Sequence["_Object"], classifier_id: str, segmenter_id: str | None) -> pd.DataFrame:
    """Scores-table rows (SCORE_COLUMNS) of finished objects: each object's rows, in order."""
    owners, columns = [], {name: [] for name in _ROW_COLUMNS}
    for item in objects:
        for row in _object_rows(item.loaded):
            owners.append(item.meta)
            for name in _ROW_COLUMNS:
                columns[name].append(row.get(name))
    frame = pd.DataFrame({
        "source_uri": pd.Series([meta["uri"] for meta in owners], dtype=object),
        "key": pd.Series([meta["key"] for meta in owners], dtype=object),
        "etag": pd.Series([meta["etag"] for meta in owners], dtype=object),
        "size": np.array([meta["size"] for meta in owners], dtype="int64"),
        "mtime": pd.to_datetime(np.array([meta["mtime"] for meta in owners], dtype="float64"), unit="s", utc=True),
        "version": pd.Series([meta["version"] for meta in owners], dtype=object),
    })
    for name, values in columns.items():
        frame[name] = pd.Series(values, dtype=object, index=frame.index)
    for name in ("tumor_probability", "mask_fraction", "window_low", "window_high", "slice_thickness_mm"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    frame["classifier_id"] = classifier_id
    frame["segmenter_id"] = segmenter_id
    frame["scored_at"] = pd.Timestamp.now(tz="UTC")
    return frame[list(SCORE_COLUMNS)]


# ---------------------------------------------------------------------------------------------- the stream

@dataclass
class _Object:
    """An archive object on its way through a task: its listing ``meta``, the loader's ``future`` until it is
    collected, then ``loaded``; ``unscored`` images still to go through the models and the ``encoding``
    futures that encode its images' rows."""

    meta: dict
    future: Future | None
    loaded: _Loaded | None = None
    unscored: int = 0
    encoding: list = field(default_factory=list)

    def finished(self, wait: bool) -> bool:
        if self.loaded is None or self.unscored:
            return False
        if not wait and not all(future.done() for future in self.encoding):
            return False
        for future in self.encoding:
            future.result()  # re-raises a failed encode
        return True


class _Pipeline:
    """Objects in, finished objects out, with the models fed batches of exactly ``batch_size`` images (the last
    may be shorter) cut across file boundaries: a volume's slices spread over as many batches as they fill,
    and small files share one. The pool fetches and decodes ahead while the models run, and PNG-encodes the
    masks of each batch after it; the look-ahead stops at about two batches of decoded images (estimated from
    the images per object seen so far), so memory does not grow with the number of objects."""

    def __init__(self, predictor: ClassSegPredictor, pool: ThreadPoolExecutor, load, *, batch_size: int,
                 stages: StageTimes):
        self.predictor, self.pool, self.load = predictor, pool, load
        self.batch_size, self.stages = batch_size, stages
        self.loading: deque[_Object] = deque()   # submitted, not yet collected (input order)
        self.waiting: deque[_Object] = deque()   # not yet finished (input order)
        self.queue: deque[tuple[_Object, _Image]] = deque()  # decoded images waiting for the models
        self.collected = self.images_seen = 0

    def ahead(self) -> float:
        per_object = self.images_seen / self.collected if self.collected else 1.0
        return len(self.queue) + len(self.loading) * max(1.0, per_object)

    def submit(self, meta: dict) -> None:
        item = _Object(meta=meta, future=self.pool.submit(self.load, meta["uri"], meta["key"]))
        self.loading.append(item)
        self.waiting.append(item)

    def collect(self) -> None:
        """Take the oldest loaded object (waiting for it) and queue its images."""
        item = self.loading.popleft()
        item.loaded, item.future = item.future.result(), None
        self.collected += 1
        if item.loaded.error is None and item.loaded.skipped is None:
            item.unscored = len(item.loaded.images)
            self.images_seen += item.unscored
            self.queue.extend((item, image) for image in item.loaded.images)

    def run_batch(self) -> None:
        chunk = [self.queue.popleft() for _ in range(min(self.batch_size, len(self.queue)))]
        predictions = self.predictor.predict([image.scan for _, image in chunk], stages=self.stages)
        for (item, image), prediction in zip(chunk, predictions):
            image.prediction = prediction
            item.unscored -= 1
        encoding = self.pool.submit(self._encode, chunk)
        for item in {id(item): item for item, _ in chunk}.values():
            item.encoding.append(encoding)

    def _encode(self, chunk: list[tuple[_Object, _Image]]) -> None:
        with self.stages.timed("encode"):
            for item, image in chunk:
                image.row = _image_row(_identity(item.loaded), image)

    def finished(self, wait: bool = False) -> list[_Object]:
        done = []
        while self.waiting and self.waiting[0].finished(wait):
            done.append(self.waiting.popleft())
        return done

    def run(self, metas: Iterator[dict]) -> Iterator[list[_Object]]:
        """Lists of finished objects, in input order."""
        exhausted = False
        while True:
            while not exhausted and self.ahead() < 2 * self.batch_size:
                meta = next(metas, None)
                exhausted = meta is None
                if meta is not None:
                    self.submit(meta)
            if len(self.queue) >= self.batch_size or (self.queue and not self.loading):
                self.run_batch()
            elif self.loading:
                self.collect()
            else:
                break
            done = self.finished()
            if done:
                yield done
        done = self.finished(wait=True)
        if done:
            yield done


def _check_objects(objects: pd.DataFrame) -> None:
    missing = [column for column in OBJECT_COLUMNS if column not in objects.columns]
    if missing:
        raise ValueError(f"objects lack columns {missing} (expected archive.objects_frame columns "
                         f"{list(OBJECT_COLUMNS)}); got {list(objects.columns)}")


def _metas(frames: Iterable[pd.DataFrame]) -> Iterator[dict]:
    for objects in frames:
        _check_objects(objects)
        yield from objects[list(OBJECT_COLUMNS)].to_dict("records")


def _score_stream(frames: Iterable[pd.DataFrame], predictor: ClassSegPredictor, *, batch_size: int,
                  s3_cfg: Any, max_bytes: int | None, fetch_threads: int, read_settings: ReadSettings,
                  stages: StageTimes) -> Iterator[pd.DataFrame]:
    """The shared loop of :func:`score_frame` and :func:`score_partition`: objects in, rows out, in order, one
    DataFrame per at least ``batch_size`` rows (:class:`_Pipeline`). The time spent handing each DataFrame on
    is the ``write`` stage."""
    metas = _metas(frames)
    first = next(metas, None)
    if first is None:
        return
    # One client per task (its connection pool is shared by the loader threads); local archives need none.
    client = s3_client(s3_cfg) if parse_uri(first["uri"]).scheme == "s3" else None
    load = functools.partial(_load_scan, prepare=predictor.prepare, read_settings=read_settings, s3_cfg=s3_cfg,
                             max_bytes=max_bytes, client=client, stages=stages)

    def hand_on(finished: list[_Object]) -> Iterator[pd.DataFrame]:
        with stages.timed("encode"):
            frame = _rows(finished, predictor.classifier_id, predictor.segmenter_id)
        handed = time.perf_counter()
        yield frame
        stages.add("write", time.perf_counter() - handed)

    ready: list[_Object] = []
    rows = 0
    with ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="classeg-fetch") as pool:
        pipeline = _Pipeline(predictor, pool, load, batch_size=batch_size, stages=stages)
        for done in pipeline.run(itertools.chain([first], metas)):
            ready.extend(done)
            rows += sum(len(item.loaded.images) or 1 for item in done)
            if rows >= batch_size:
                yield from hand_on(ready)
                ready, rows = [], 0
    if ready:
        yield from hand_on(ready)


def score_frame(objects: pd.DataFrame, predictor: ClassSegPredictor, *, batch_size: int = 32, s3_cfg: Any = None,
                max_bytes: int | None = 64 * 2**20, fetch_threads: int = 4,
                read_settings: ReadSettings | None = None, stages: StageTimes | None = None) -> pd.DataFrame:
    """Score archive objects without Spark: the rows (:data:`SCORE_COLUMNS`) of each row of ``objects``
    (columns of :func:`classeg.archive.objects_frame`), in order: one per image (one per frame or slice of a
    multi-image file). Objects that cannot be fetched or decoded become ``error`` rows, objects without images
    to score (``read_settings``: DICOM modalities, patient key secret) ``skipped`` rows; nothing is dropped.
    ``s3_cfg``: the ``s3`` config section for ``s3://`` objects. ``stages``: a
    :class:`~classeg.scoring.stages.StageTimes` that gets the seconds per stage and the batch counts."""
    _check_objects(objects)
    if objects.empty:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in SCORE_COLUMNS})
    parts = list(_score_stream([objects.reset_index(drop=True)], predictor, batch_size=batch_size, s3_cfg=s3_cfg,
                               max_bytes=max_bytes, fetch_threads=fetch_threads,
                               read_settings=read_settings or ReadSettings(),
                               stages=stages if stages is not None else StageTimes()))
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------- Spark wrapper

_PREDICTORS: dict[tuple, ClassSegPredictor] = {}
_PREDICTORS_LOCK = threading.Lock()


def cached_predictor(settings: ScoreSettings, device: str) -> ClassSegPredictor:
    """The predictor for ``settings`` on ``device``, loaded once per Python process (Spark reuses its Python
    workers, so tasks after the first reuse the models). Only the latest models are kept, so a long-lived
    worker scoring with new artifacts does not accumulate old ones."""
    key = (settings.classifier, settings.segmenter, device, settings.tumor_classes, settings.amp,
           settings.channels_last)
    with _PREDICTORS_LOCK:
        predictor = _PREDICTORS.get(key)
        if predictor is None:
            _PREDICTORS.clear()
            predictor = ClassSegPredictor.load(
                settings.classifier, settings.segmenter, s3_cfg=settings.s3, device=device,
                tumor_classes=settings.tumor_classes, amp=settings.amp, channels_last=settings.channels_last)
            _PREDICTORS[key] = predictor
            log.info("loaded %s and %s on %s", predictor.classifier_id, predictor.segmenter_id, device)
    predictor.tumor_threshold = settings.tumor_threshold
    predictor.mask_threshold = settings.mask_threshold
    return predictor


def score_partition(frames: Iterator[pd.DataFrame], settings: ScoreSettings, stages=None,
                    redaction: redact.KeyRedaction | None = None) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` function (bind ``settings`` with functools.partial): the task's objects in, scores rows
    (:data:`SCORES_SCHEMA_DDL`) out. Sets torch's threads to the task's CPUs (or ``settings.torch_threads``),
    picks the task's device (:func:`select_device`) and reuses the process's cached models. ``stages``: a
    Spark accumulator (:func:`classeg.scoring.stages.stage_accumulator`) that gets the task's seconds per
    stage and batch counts when its objects are done. ``redaction``: the driver's :mod:`classeg.redact` policy,
    made this worker's (None: keep the worker's)."""
    import torch

    redact.activate(redaction)

    threads = task_threads(settings.torch_threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    device = select_device(settings.device)
    predictor = cached_predictor(settings, device)
    times = StageTimes()
    yield from _score_stream(frames, predictor, batch_size=settings.batch_size, s3_cfg=settings.s3,
                             max_bytes=settings.max_bytes, fetch_threads=settings.fetch_threads,
                             read_settings=settings.read_settings, stages=times)
    if stages is not None:
        stages.add(times.as_dict())
