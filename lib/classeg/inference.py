"""The Class-Seg predictor: classify every scan, segment those classified as tumour.

Two layers, as the style guide asks for pandas UDFs:

* :class:`ClassSegPredictor` and :func:`score_frame` are plain Python/pandas: a DataFrame of archive objects
  (``objects_frame`` columns: uri, key, size, etag, mtime, version) in, one scores-table row per object out.
  They run and are tested without Spark.
* :func:`score_partition` is the same logic as a ``mapInPandas`` function (iterator form): it picks the
  task's device and torch threads, loads the models once per Python worker process (cached by URI, so with
  Spark's worker reuse once per executor core, not once per task) and streams the task's objects through.

Per object: :func:`classeg.archive.fetch` (retries with backoff inside), :func:`classeg.imaging.decode_scan`
(TIFF incl. LGG 3-channel stacks, JPEG, PNG, WebP, BMP, figshare ``.mat``, DICOM with rescale),
:func:`classeg.imaging.to_uint8`, then each model's own preprocessing from its model.json
(:meth:`classeg.artifact.Artifact.preprocess`: resize + normalise). Fetching and decoding run in a small
thread pool one batch ahead of the model, so I/O and decoding overlap inference.

Per batch of ``batch_size`` scans: one classifier forward pass; ``tumor_probability`` is the sum of the
softmax probabilities of the classifier's tumour classes; ``tumor = tumor_probability >= tumor_threshold``;
the segmenter runs on the tumour scans only. Its per-pixel probabilities are resized (bilinear) back to the
scan's original size and thresholded at ``mask_threshold``.

Row conventions (see :data:`SCORES_SCHEMA_DDL`):

* ``status`` is ``ok`` or ``error``; an error row has ``error = "<kind>: <detail>"`` with kind one of
  :data:`ERROR_KINDS` and nulls in every prediction column.
* ``mask`` is a PNG ({0, 255}, original height x width) for tumour scans when a segmenter is given, else
  null; ``mask_area_px`` (pixels at original size), ``mask_fraction`` (area / (height * width)) and ``bbox``
  follow it. ``bbox`` is ``[x0, y0, x1, y1]`` in pixels of the original scan, half-open like PIL's
  ``getbbox`` (``x1 - x0`` is the box width), null when the mask is empty.
* ``height``/``width`` are the decoded scan's original size; ``scored_at`` is the UTC time the batch was
  scored. ``run_id`` and ``run_date`` are added by the job (:mod:`classeg.scoring`) as partition folders.

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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from classeg import imaging
from classeg.archive import OBJECT_COLUMNS
from classeg.errors import FetchError
from classeg.labels import TumorClassError, tumor_class_names
from classeg.io.files import fetch
from classeg.io.s3 import client as s3_client
from classeg.io.uri import parse_uri

log = logging.getLogger(__name__)

__all__ = [
    "ClassSegPredictor", "ERROR_KINDS", "Prediction", "SCORE_COLUMNS", "SCORES_SCHEMA_DDL", "ScoreSettings",
    "TumorClassError", "resolve_tumor_classes", "score_frame", "score_partition", "select_device",
]

ERROR_KINDS = ("undecodable", "empty", "unsupported", "too_large", "not_found", "fetch_failed", "bad_structure",
               "truncated")

SCORE_COLUMNS = ("source_uri", "key", "etag", "size", "mtime", "version", "status", "error", "label", "label_name",
                 "probabilities", "tumor_probability", "tumor", "mask", "mask_area_px", "mask_fraction", "bbox",
                 "height", "width", "classifier_id", "segmenter_id", "scored_at")
# Spark schema of the rows score_frame / score_partition return (the table adds run_date and run_id).
SCORES_SCHEMA_DDL = (
    "source_uri string, key string, etag string, size long, mtime timestamp, version string, status string, "
    "error string, label int, label_name string, probabilities array<float>, tumor_probability double, "
    "tumor boolean, mask binary, mask_area_px long, mask_fraction double, bbox array<int>, height int, "
    "width int, classifier_id string, segmenter_id string, scored_at timestamp")

DEVICE_CHOICES = ("auto", "cpu", "cuda")

# ---------------------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class ScoreSettings:
    """Everything a scoring task needs; small and picklable (URIs and numbers, no clients, no models).

    ``classifier``/``segmenter``: artifact URIs (segmenter None: classify only). ``tumor_classes``: class names
    meaning tumour, overriding model.json's ``tumor_classes`` (empty: use model.json). ``max_bytes``: larger
    objects become ``too_large`` rows. ``s3``: the config's ``s3`` section (endpoint, retries, timeouts).
    ``device``: "auto" | "cpu" | "cuda" | "cuda:N" (see :func:`select_device`). ``torch_threads``: 0 means the
    task's CPUs (``spark.task.cpus``), else that many. ``fetch_threads``: objects fetched and decoded at once.
    """

    classifier: str
    segmenter: str | None = None
    tumor_classes: tuple[str, ...] = ()
    tumor_threshold: float = 0.5
    mask_threshold: float = 0.5
    batch_size: int = 32
    max_bytes: int | None = 64 * 2**20
    s3: Mapping[str, Any] | None = None
    fetch_threads: int = 8
    torch_threads: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True

    def __post_init__(self):
        for name in ("tumor_threshold", "mask_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        for name, minimum in (("batch_size", 1), ("fetch_threads", 1), ("torch_threads", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if not isinstance(self.classifier, str) or not self.classifier:
            raise ValueError(f"classifier must be an artifact URI, got {self.classifier!r}")
        _check_device(self.device)
        object.__setattr__(self, "tumor_classes", tuple(self.tumor_classes))
        object.__setattr__(self, "s3", dict(self.s3) if self.s3 is not None else None)


def _check_device(device: str) -> None:
    if not isinstance(device, str) or not (device in DEVICE_CHOICES or (
            device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"device must be one of {DEVICE_CHOICES} or 'cuda:N', got {device!r}")


def select_device(preference: str = "auto") -> str:
    """The torch device for this task: an explicit ``preference`` ("cpu", "cuda", "cuda:N") as given;
    "auto": the GPU Spark assigned to the task (``TaskContext.get().resources()['gpu'].addresses[0]``) when
    there is one, else ``cuda:0`` if torch sees a GPU, else ``cpu``."""
    import torch

    _check_device(preference)
    if preference != "auto":
        return preference
    gpu = None
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None:
            gpu = context.resources().get("gpu")
    except ImportError:  # scoring without Spark installed
        context = None
    if gpu is not None and gpu.addresses and torch.cuda.is_available():
        return f"cuda:{gpu.addresses[0]}"
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _task_threads(requested: int) -> int:
    if requested > 0:
        return requested
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        return max(1, int(context.cpus())) if context is not None else 1
    except ImportError:
        return 1


# ---------------------------------------------------------------------------------------------- tumour classes

# What model.json files written before classeg.labels listed as tumour: every class but a few no-tumour names,
# so ["no_tumour", "tumour"] listed both. Such a list is recognised and replaced by the vocabulary's answer.
_LEGACY_NO_TUMOR_NAMES = ("no_tumor", "no", "notumor", "no tumor", "normal", "healthy")


def _legacy_default(names: Sequence[str]) -> list[str]:
    return [name for name in names if name.lower() not in _LEGACY_NO_TUMOR_NAMES
            and not name.lower().strip("_ ").startswith("normal")]


def resolve_tumor_classes(class_names: Sequence[str], meta_tumor_classes: Sequence[str] | None,
                          override: Sequence[str] = ()) -> list[int]:
    """Indices of the classes meaning tumour.

    ``override`` (config ``score.tumor_classes``) wins when non-empty. Otherwise model.json's
    ``tumor_classes`` when someone chose it, else :func:`classeg.labels.tumor_class_names`. A model.json
    list equal to what classeg derived before the shared vocabulary existed is not a choice: the vocabulary
    decides (old artifacts listed both classes of ``["no_tumour", "tumour"]``). Raises
    :class:`~classeg.labels.TumorClassError` naming the classes when the mapping is missing, unknown or empty.
    """
    names = list(class_names)
    if override:
        chosen, source = list(override), "score.tumor_classes"
    else:
        chosen, source = _chosen_tumor_classes(names, meta_tumor_classes), "model.json tumor_classes"
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise TumorClassError(f"{source} {chosen} names classes the classifier does not have: {unknown}; its "
                              f"classes are {names}")
    if not chosen:
        raise TumorClassError(f"no class of {names} means tumour: nothing would ever be segmented; set "
                              "score.tumor_classes")
    return [names.index(name) for name in chosen]


def _chosen_tumor_classes(names: list[str], meta_tumor_classes: Sequence[str] | None) -> list[str]:
    chose = meta_tumor_classes is not None and list(meta_tumor_classes) != _legacy_default(names)
    try:
        derived = tumor_class_names(names)
    except TumorClassError:
        if chose:
            return list(meta_tumor_classes)
        raise
    return list(meta_tumor_classes) if chose else derived


# ---------------------------------------------------------------------------------------------- predictor

@dataclass
class Prediction:
    """One scan's Class-Seg result. ``probabilities`` (K,) float32 softmax; ``mask`` (H, W) bool at the scan's
    original size, or None when the scan was not segmented (not tumour, or no segmenter)."""

    label: int
    label_name: str
    probabilities: np.ndarray
    tumor_probability: float
    tumor: bool
    mask: np.ndarray | None = None


def _match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """A uint8 scan with the channel count a model expects: grayscale models get the channel mean of a
    3-channel scan (the LGG stack, RGB exports); 3-channel models replicate grayscale (in preprocessing)."""
    if channels == 1 and image.ndim == 3:
        return np.rint(image.mean(axis=2)).astype(np.uint8)
    return image


class ClassSegPredictor:
    """A loaded classifier (and optional segmenter) applying the Class-Seg rule to batches of scans.

    Build with :meth:`load` (artifact URIs) or from loaded :class:`classeg.artifact.Artifact` objects.
    ``tumor_classes``: class names meaning tumour (empty: model.json's), resolved and checked by
    :func:`resolve_tumor_classes`. ``device``: a torch device string; models are moved there. On CUDA the
    forward passes run under float16 autocast when ``amp``; on CPU ``channels_last`` uses NHWC tensors.
    """

    def __init__(self, classifier, segmenter=None, *, tumor_classes: Sequence[str] = (), tumor_threshold: float = 0.5,
                 mask_threshold: float = 0.5, device: str = "cpu", amp: bool = True, channels_last: bool = True):
        import torch

        if classifier.task != "classify":
            raise ValueError(f"{classifier.uri} is a {classifier.task!r} model, expected a classifier ('classify')")
        if segmenter is not None and segmenter.task != "segment":
            raise ValueError(f"{segmenter.uri} is a {segmenter.task!r} model, expected a segmenter ('segment')")
        for name, value in (("tumor_threshold", tumor_threshold), ("mask_threshold", mask_threshold)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        self.classifier = classifier
        self.segmenter = segmenter
        self.class_names = classifier.class_names
        self.tumor_indices = resolve_tumor_classes(self.class_names, classifier.meta.get("tumor_classes"),
                                                   tuple(tumor_classes))
        self.tumor_threshold = float(tumor_threshold)
        self.mask_threshold = float(mask_threshold)
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self._memory_format = (torch.channels_last if channels_last and self.device.type == "cpu"
                               else torch.contiguous_format)
        for artifact in (classifier, segmenter):
            if artifact is not None:
                artifact.model.eval().to(self.device, memory_format=self._memory_format)
        self._classifier_channels = int(classifier.meta["input"]["channels"])
        self._segmenter_channels = int(segmenter.meta["input"]["channels"]) if segmenter is not None else None

    @classmethod
    def load(cls, classifier_uri: str, segmenter_uri: str | None = None, *, s3_cfg: Any = None,
             device: str = "cpu", **options) -> "ClassSegPredictor":
        """Load both artifacts (checking each one's task and weights checksum) and build the predictor.
        Raises FileNotFoundError for a missing artifact, ValueError for a wrong one (e.g. a segmenter given
        as classifier) and :class:`TumorClassError` for classes without tumour meaning."""
        from classeg.artifact import load_artifact

        classifier = load_artifact(classifier_uri, device="cpu", s3_cfg=s3_cfg, expect_task="classify")
        segmenter = (load_artifact(segmenter_uri, device="cpu", s3_cfg=s3_cfg, expect_task="segment")
                     if segmenter_uri else None)
        return cls(classifier, segmenter, device=device, **options)

    @property
    def classifier_id(self) -> str:
        return self.classifier.model_id

    @property
    def segmenter_id(self) -> str | None:
        return self.segmenter.model_id if self.segmenter is not None else None

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A decoded scan as stored (any dtype, (H, W) or (H, W, 3)) -> (canonical uint8 scan, classifier input
        float32 (C, size, size)). Thread-safe (numpy/PIL only): the task runs it in its loader threads."""
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or min(image.shape[:2]) < 1:
            raise imaging.DecodeError("bad_structure", f"decoded array of shape {image.shape} is not a 2-D scan")
        canonical = imaging.to_uint8(image)
        return canonical, self.classifier.preprocess(_match_channels(canonical, self._classifier_channels))

    def _forward(self, model, batch: np.ndarray):
        import torch

        inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
        inputs = inputs.contiguous(memory_format=self._memory_format)
        with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.amp):
            return model(inputs).float()

    def predict(self, scans: Sequence[np.ndarray], inputs: Sequence[np.ndarray] | None = None) -> list[Prediction]:
        """Class-Seg on one batch. ``scans``: canonical uint8 scans (H, W) or (H, W, 3), any sizes;
        ``inputs``: their classifier inputs from :meth:`prepare` (computed here when None).
        Returns one :class:`Prediction` per scan, in order."""
        import torch

        if not len(scans):
            return []
        if inputs is None:
            inputs = [self.prepare(scan)[1] for scan in scans]
        logits = self._forward(self.classifier.model, np.stack(inputs))
        probabilities = torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32)
        tumor_probability = probabilities[:, self.tumor_indices].sum(axis=1)
        is_tumor = tumor_probability >= self.tumor_threshold
        labels = probabilities.argmax(axis=1)
        predictions = [Prediction(label=int(labels[i]), label_name=self.class_names[labels[i]],
                                  probabilities=probabilities[i], tumor_probability=float(tumor_probability[i]),
                                  tumor=bool(is_tumor[i])) for i in range(len(scans))]
        positives = np.flatnonzero(is_tumor)
        if self.segmenter is not None and positives.size:
            for index, mask in zip(positives, self.segment([scans[i] for i in positives])):
                predictions[index].mask = mask
        return predictions

    def segment(self, scans: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Tumour masks (H, W) bool at each canonical uint8 scan's own size: the segmenter's per-pixel
        probabilities, resized bilinearly to the scan's size, ``>= mask_threshold``."""
        import torch
        import torch.nn.functional as F

        if self.segmenter is None:
            raise ValueError("this predictor has no segmenter")
        batch = np.stack([self.segmenter.preprocess(_match_channels(scan, self._segmenter_channels))
                          for scan in scans])
        probabilities = torch.sigmoid(self._forward(self.segmenter.model, batch))[:, :1]
        masks = []
        for scan, probability in zip(scans, probabilities):
            height, width = scan.shape[:2]
            if probability.shape[-2:] != (height, width):
                probability = F.interpolate(probability[None], size=(height, width), mode="bilinear",
                                            align_corners=False)[0]
            masks.append((probability[0] >= self.mask_threshold).cpu().numpy())
        return masks


# ---------------------------------------------------------------------------------------------- loading scans

@dataclass
class _Loaded:
    """A fetched and decoded scan (canonical uint8 + classifier input), or the reason it is not."""

    scan: np.ndarray | None = None
    inputs: np.ndarray | None = None
    error: str | None = None


def _load_scan(uri: str, key: str, *, prepare, s3_cfg, max_bytes: int | None, client) -> _Loaded:
    """Fetch, decode and prepare one object; every failure of the object itself becomes ``error``."""
    from PIL import Image

    try:
        data = fetch(uri, s3_cfg=s3_cfg, max_bytes=max_bytes, client=client)
    except FetchError as err:
        return _Loaded(error=str(err))
    name = key or uri
    try:
        scan, inputs = prepare(imaging.decode_scan(data, name))
    except imaging.DecodeError as err:
        return _Loaded(error=f"{err.reason}: {err}")
    except Image.DecompressionBombError as err:
        return _Loaded(error=f"too_large: {name}: {err}")
    except ValueError as err:  # preprocessing refused the decoded array (shape, channels)
        return _Loaded(error=f"bad_structure: {name}: {err}")
    except Exception as err:  # noqa: BLE001 - third-party decoders raise anything on hostile bytes; the file is
        # the problem, not the job: record it as data (with its type) and carry on, as STYLE.md asks.
        log.warning("decoding %s failed with %s: %s", uri, type(err).__name__, err, exc_info=True)
        return _Loaded(error=f"undecodable: {name}: {type(err).__name__}: {err}")
    return _Loaded(scan=scan, inputs=inputs)


def _bbox(mask: np.ndarray) -> list[int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def _rows(objects: pd.DataFrame, loaded: Sequence[_Loaded], predictions: Mapping[int, Prediction],
          classifier_id: str, segmenter_id: str | None) -> pd.DataFrame:
    """Scores-table rows (SCORE_COLUMNS) for one batch of objects."""
    count = len(objects)
    columns: dict[str, list] = {name: [None] * count for name in SCORE_COLUMNS[6:]}
    for i, item in enumerate(loaded):
        prediction = predictions.get(i)
        if prediction is None:
            columns["status"][i] = "error"
            columns["error"][i] = item.error or "undecodable: no prediction"
            continue
        height, width = item.scan.shape[:2]
        columns["status"][i] = "ok"
        columns["label"][i] = prediction.label
        columns["label_name"][i] = prediction.label_name
        columns["probabilities"][i] = prediction.probabilities
        columns["tumor_probability"][i] = prediction.tumor_probability
        columns["tumor"][i] = prediction.tumor
        columns["height"][i], columns["width"][i] = int(height), int(width)
        if prediction.mask is not None:
            area = int(prediction.mask.sum())
            columns["mask"][i] = imaging.encode_png(prediction.mask)
            columns["mask_area_px"][i] = area
            columns["mask_fraction"][i] = area / float(height * width)
            columns["bbox"][i] = _bbox(prediction.mask)
    frame = pd.DataFrame({
        "source_uri": objects["uri"].to_numpy(dtype=object),
        "key": objects["key"].to_numpy(dtype=object),
        "etag": objects["etag"].to_numpy(dtype=object),
        "size": objects["size"].to_numpy(dtype="int64"),
        "mtime": pd.to_datetime(objects["mtime"].to_numpy(dtype="float64"), unit="s", utc=True),
        "version": objects["version"].to_numpy(dtype=object),
    })
    for name, values in columns.items():
        frame[name] = pd.Series(values, dtype=object, index=frame.index)
    frame["tumor_probability"] = pd.to_numeric(frame["tumor_probability"], errors="coerce").astype("float64")
    frame["mask_fraction"] = pd.to_numeric(frame["mask_fraction"], errors="coerce").astype("float64")
    frame["classifier_id"] = classifier_id
    frame["segmenter_id"] = segmenter_id
    frame["scored_at"] = pd.Timestamp.now(tz="UTC")
    return frame[list(SCORE_COLUMNS)]


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
                  s3_cfg: Any, max_bytes: int | None, fetch_threads: int) -> Iterator[pd.DataFrame]:
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
                good = [i for i, item in enumerate(loaded) if item.error is None]
                predictions = dict(zip(good, predictor.predict([loaded[i].scan for i in good],
                                                               [loaded[i].inputs for i in good])))
                yield _rows(objects, loaded, predictions, predictor.classifier_id, predictor.segmenter_id)

        for objects in _rebatch(frames, batch_size):
            _check_objects(objects)
            if load is None:
                # One client per task (its connection pool is shared by the loader threads); local archives
                # need none. Built lazily: a task without objects makes no client.
                client = s3_client(s3_cfg) if parse_uri(objects["uri"].iloc[0]).scheme == "s3" else None
                load = functools.partial(_load_scan, prepare=predictor.prepare, s3_cfg=s3_cfg, max_bytes=max_bytes,
                                         client=client)
            queue.append((objects, [pool.submit(load, uri, key) for uri, key in
                                    zip(objects["uri"].tolist(), objects["key"].tolist())]))
            yield from drain(1)
        yield from drain(0)


def score_frame(objects: pd.DataFrame, predictor: ClassSegPredictor, *, batch_size: int = 32, s3_cfg: Any = None,
                max_bytes: int | None = 64 * 2**20, fetch_threads: int = 4) -> pd.DataFrame:
    """Score archive objects without Spark: one row (:data:`SCORE_COLUMNS`) per row of ``objects`` (columns
    of :func:`classeg.archive.objects_frame`), in order. Objects that cannot be fetched or decoded become
    ``error`` rows; nothing is dropped. ``s3_cfg``: the ``s3`` config section for ``s3://`` objects."""
    _check_objects(objects)
    if objects.empty:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in SCORE_COLUMNS})
    parts = list(_score_stream([objects.reset_index(drop=True)], predictor, batch_size=batch_size, s3_cfg=s3_cfg,
                               max_bytes=max_bytes, fetch_threads=fetch_threads))
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


def score_partition(frames: Iterator[pd.DataFrame], settings: ScoreSettings) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` function (bind ``settings`` with functools.partial): the task's objects in, scores rows
    (:data:`SCORES_SCHEMA_DDL`) out. Sets torch's threads to the task's CPUs (or ``settings.torch_threads``),
    picks the task's device (:func:`select_device`) and reuses the process's cached models."""
    import torch

    threads = _task_threads(settings.torch_threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    device = select_device(settings.device)
    predictor = cached_predictor(settings, device)
    yield from _score_stream(frames, predictor, batch_size=settings.batch_size, s3_cfg=settings.s3,
                             max_bytes=settings.max_bytes, fetch_threads=settings.fetch_threads)
