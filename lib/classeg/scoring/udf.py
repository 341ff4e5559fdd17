"""Scoring inside Spark tasks: archive objects in, scores-table rows out (one per image of each object).

Two layers, as the style guide asks for pandas UDFs:

* :class:`ClassSegPredictor` and :func:`score_frame` are plain Python/pandas: a DataFrame of archive objects
  (``objects_frame`` columns: uri, key, size, etag, mtime, version) in, each object's scores-table rows out.
  They run and are tested without Spark.
* :func:`score_partition` is the same logic as a ``mapInPandas`` function (iterator form): it picks the
  task's device and torch threads, loads the models once per Python worker process (cached by URI, so with
  Spark's worker reuse once per executor core, not once per task) and streams the task's objects through.

Per object: :func:`classeg.io.files.fetch` (retries with backoff inside), :func:`classeg.imaging.decode_file`
(TIFF incl. LGG 3-channel stacks, JPEG, PNG, WebP, BMP, figshare ``.mat``; DICOM of every common transfer
syntax, windowed to uint8 as a viewer shows it, one image per frame; NIfTI volumes, one image per axial slice),
:func:`classeg.imaging.to_uint8`, then each model's own preprocessing from its model.json
(:meth:`classeg.artifact.Artifact.preprocess`: resize + normalise). Fetching and decoding run in a small
thread pool one batch ahead of the model, so I/O and decoding overlap inference.

Per batch of ``batch_size`` images: one classifier forward pass; ``tumor_probability`` is the sum of the
softmax probabilities of the classifier's tumour classes; ``tumor = tumor_probability >= tumor_threshold``;
the segmenter runs on the tumour images only. Its per-pixel probabilities are resized (bilinear) back to the
image's original size and thresholded at ``mask_threshold``.

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
import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
from classeg.scoring.predictor import ClassSegPredictor, Prediction, ScoreSettings, select_device, task_threads
from classeg.decoded import ReadSettings
from classeg.scoring.table import IDENTITY_COLUMNS, OBJECT_KEY_COLUMNS, SCORE_COLUMNS

log = logging.getLogger(__name__)

__all__ = ["cached_predictor", "score_frame", "score_partition"]

# ---------------------------------------------------------------------------------------------- loading scans

@dataclass
class _Loaded:
    """A fetched and decoded object: its images (canonical uint8 scan + classifier input, frame, window) and
    identity, or the reason it has none to score (``skipped``), or why it could not be read (``error``)."""

    scans: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    windows: list = field(default_factory=list)
    identity: dict | None = None
    skipped: str | None = None
    error: str | None = None


def _load_scan(uri: str, key: str, *, prepare, read_settings: ReadSettings, s3_cfg, max_bytes: int | None,
               client) -> _Loaded:
    """Fetch, decode and prepare one object; every failure of the object itself becomes ``error``."""
    from PIL import Image

    try:
        data = fetch(uri, s3_cfg=s3_cfg, max_bytes=max_bytes, client=client)
    except FetchError as err:
        return _Loaded(error=redact.scrub(err, uri, key))
    name = key or uri
    shown = redact.label(name)  # error texts name the object by its label (classeg.redact); the row has the URI
    try:
        decoded = imaging.decode_file(data, name, read_settings)
        loaded = _Loaded(identity=decoded.identity, skipped=decoded.skipped)
        for image in decoded.images:
            scan, inputs = prepare(image.pixels)
            loaded.scans.append(scan)
            loaded.inputs.append(inputs)
            loaded.frames.append(image.frame)
            loaded.windows.append(image.window)
    except imaging.DecodeError as err:
        return _Loaded(error=f"{err.reason}: {redact.scrub(err, uri, key)}")
    except Image.DecompressionBombError as err:
        return _Loaded(error=f"too_large: {shown}: {redact.scrub(err, uri, key)}")
    except ValueError as err:  # preprocessing refused the decoded array (shape, channels)
        return _Loaded(error=f"bad_structure: {shown}: {redact.scrub(err, uri, key)}")
    except Exception as err:  # noqa: BLE001 - third-party decoders raise anything on hostile bytes; the file is
        # the problem, not the job: record it as data (with its type) and carry on, as STYLE.md asks. Only the
        # exception's type reaches the log: a decoder's message may quote header values.
        log.warning("decoding %s failed with %s", redact.label(uri), type(err).__name__)
        return _Loaded(error=f"undecodable: {shown}: {type(err).__name__}")
    return loaded


def _bbox(mask: np.ndarray) -> list[int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


_ROW_COLUMNS = SCORE_COLUMNS[len(OBJECT_KEY_COLUMNS):SCORE_COLUMNS.index("classifier_id")]


def _prediction_row(row: dict, scan: np.ndarray, prediction: Prediction) -> None:
    height, width = scan.shape[:2]
    row.update(status="ok", label=prediction.label, label_name=prediction.label_name,
               probabilities=prediction.probabilities, tumor_probability=prediction.tumor_probability,
               tumor=prediction.tumor, height=int(height), width=int(width))
    if prediction.mask is not None:
        area = int(prediction.mask.sum())
        row.update(mask=imaging.encode_png(prediction.mask), mask_area_px=area,
                   mask_fraction=area / float(height * width), bbox=_bbox(prediction.mask))


def _object_rows(item: _Loaded, predictions: Sequence[Prediction]) -> list[dict]:
    """The rows of one object: one per image (ok), or one ``skipped`` or ``error`` row."""
    identity = {name: (item.identity or {}).get(name) for name in IDENTITY_COLUMNS}
    if item.error is not None or (item.skipped is None and not predictions):
        return [{**identity, "status": "error", "error": item.error or "undecodable: no images in the file"}]
    if item.skipped is not None:
        return [{**identity, "status": "skipped", "error": item.skipped}]
    rows = []
    for scan, frame, window, prediction in zip(item.scans, item.frames, item.windows, predictions):
        row = {**identity, "frame": frame}
        if window is not None:
            row.update(window_source=window.source, window_low=window.low, window_high=window.high)
        _prediction_row(row, scan, prediction)
        rows.append(row)
    return rows


def _rows(objects: pd.DataFrame, loaded: Sequence[_Loaded], predictions: Mapping[int, list[Prediction]],
          classifier_id: str, segmenter_id: str | None) -> pd.DataFrame:
    """Scores-table rows (SCORE_COLUMNS) for one batch of objects: each object's rows, in order."""
    owners, columns = [], {name: [] for name in _ROW_COLUMNS}
    for i, item in enumerate(loaded):
        for row in _object_rows(item, predictions.get(i, [])):
            owners.append(i)
            for name in _ROW_COLUMNS:
                columns[name].append(row.get(name))
    frame = pd.DataFrame({
        "source_uri": objects["uri"].to_numpy(dtype=object)[owners],
        "key": objects["key"].to_numpy(dtype=object)[owners],
        "etag": objects["etag"].to_numpy(dtype=object)[owners],
        "size": objects["size"].to_numpy(dtype="int64")[owners],
        "mtime": pd.to_datetime(objects["mtime"].to_numpy(dtype="float64")[owners], unit="s", utc=True),
        "version": objects["version"].to_numpy(dtype=object)[owners],
    })
    for name, values in columns.items():
        frame[name] = pd.Series(values, dtype=object, index=frame.index)
    for name in ("tumor_probability", "mask_fraction", "window_low", "window_high", "slice_thickness_mm"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    frame["classifier_id"] = classifier_id
    frame["segmenter_id"] = segmenter_id
    frame["scored_at"] = pd.Timestamp.now(tz="UTC")
    return frame[list(SCORE_COLUMNS)]


def _predict(predictor: ClassSegPredictor, loaded: Sequence[_Loaded], batch_size: int) -> dict[int, list]:
    """Each object's predictions (object index -> one per image), in model batches of ``batch_size`` images
    (a multi-frame file spreads over several batches)."""
    images = [(i, k) for i, item in enumerate(loaded) if item.error is None for k in range(len(item.scans))]
    found: dict[int, list] = {}
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        scans = [loaded[i].scans[k] for i, k in chunk]
        inputs = [loaded[i].inputs[k] for i, k in chunk]
        for (i, _), prediction in zip(chunk, predictor.predict(scans, inputs)):
            found.setdefault(i, []).append(prediction)
    return found


def _rebatch(frames: Iterable[pd.DataFrame], size: int) -> Iterator[pd.DataFrame]:
    """Re-cut a stream of DataFrames into DataFrames of ``size`` rows (the last may be shorter)."""
    buffer: list[pd.DataFrame] = []
    held = 0
    for frame in frames:
        start = 0
        while start < len(frame):
            take = min(size - held, len(frame) - start)
            buffer.append(frame.iloc[start:start + take])
            held += take
            start += take
            if held == size:
                yield pd.concat(buffer, ignore_index=True)
                buffer, held = [], 0
    if held:
        yield pd.concat(buffer, ignore_index=True)


def _check_objects(objects: pd.DataFrame) -> None:
    missing = [column for column in OBJECT_COLUMNS if column not in objects.columns]
    if missing:
        raise ValueError(f"objects lack columns {missing} (expected archive.objects_frame columns "
                         f"{list(OBJECT_COLUMNS)}); got {list(objects.columns)}")


def _score_stream(frames: Iterable[pd.DataFrame], predictor: ClassSegPredictor, *, batch_size: int,
                  s3_cfg: Any, max_bytes: int | None, fetch_threads: int,
                  read_settings: ReadSettings) -> Iterator[pd.DataFrame]:
    """The shared loop of :func:`score_frame` and :func:`score_partition`: objects in, rows out, one
    DataFrame per batch. Batch k+1 is fetched and decoded by the thread pool while batch k is in the model,
    so at most two batches of decoded scans are held (memory is flat in the number of objects)."""
    load = None
    with ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="classeg-fetch") as pool:
        queue: deque[tuple[pd.DataFrame, list[Future]]] = deque()

        def drain(limit: int) -> Iterator[pd.DataFrame]:
            while len(queue) > limit:
                objects, futures = queue.popleft()
                loaded = [future.result() for future in futures]
                predictions = _predict(predictor, loaded, batch_size)
                yield _rows(objects, loaded, predictions, predictor.classifier_id, predictor.segmenter_id)

        for objects in _rebatch(frames, batch_size):
            _check_objects(objects)
            if load is None:
                # One client per task (its connection pool is shared by the loader threads); local archives
                # need none. Built lazily: a task without objects makes no client.
                client = s3_client(s3_cfg) if parse_uri(objects["uri"].iloc[0]).scheme == "s3" else None
                load = functools.partial(_load_scan, prepare=predictor.prepare, read_settings=read_settings,
                                         s3_cfg=s3_cfg, max_bytes=max_bytes, client=client)
            queue.append((objects, [pool.submit(load, uri, key) for uri, key in
                                    zip(objects["uri"].tolist(), objects["key"].tolist())]))
            yield from drain(1)
        yield from drain(0)


def score_frame(objects: pd.DataFrame, predictor: ClassSegPredictor, *, batch_size: int = 32, s3_cfg: Any = None,
                max_bytes: int | None = 64 * 2**20, fetch_threads: int = 4,
                read_settings: ReadSettings | None = None) -> pd.DataFrame:
    """Score archive objects without Spark: the rows (:data:`SCORE_COLUMNS`) of each row of ``objects``
    (columns of :func:`classeg.archive.objects_frame`), in order: one per image (one per frame or slice of a
    multi-image file). Objects that cannot be fetched or decoded become ``error`` rows, objects without images
    to score (``read_settings``: DICOM modalities, patient key secret) ``skipped`` rows; nothing is dropped.
    ``s3_cfg``: the ``s3`` config section for ``s3://`` objects."""
    _check_objects(objects)
    if objects.empty:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in SCORE_COLUMNS})
    parts = list(_score_stream([objects.reset_index(drop=True)], predictor, batch_size=batch_size, s3_cfg=s3_cfg,
                               max_bytes=max_bytes, fetch_threads=fetch_threads,
                               read_settings=read_settings or ReadSettings()))
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


def score_partition(frames: Iterator[pd.DataFrame], settings: ScoreSettings,
                    redaction: redact.KeyRedaction | None = None) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` function (bind ``settings`` with functools.partial): the task's objects in, scores rows
    (:data:`SCORES_SCHEMA_DDL`) out. Sets torch's threads to the task's CPUs (or ``settings.torch_threads``),
    picks the task's device (:func:`select_device`) and reuses the process's cached models. ``redaction``: the
    driver's :mod:`classeg.redact` policy, made this worker's (None: keep the worker's)."""
    import torch

    redact.activate(redaction)

    threads = task_threads(settings.torch_threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    device = select_device(settings.device)
    predictor = cached_predictor(settings, device)
    yield from _score_stream(frames, predictor, batch_size=settings.batch_size, s3_cfg=settings.s3,
                             max_bytes=settings.max_bytes, fetch_threads=settings.fetch_threads,
                             read_settings=settings.read_settings)
