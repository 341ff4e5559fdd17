"""The Class-Seg predictor: classify a batch of scans, segment those classified as tumour. Plain Python and
torch, no Spark: :class:`ClassSegPredictor` is what :mod:`classeg.scoring.udf` runs inside each task, and what
``classeg evaluate`` runs over a scan table.

Per batch of canonical uint8 scans (any sizes): each model's input is made on the device from the whole batch
(:mod:`classeg.scoring.device`: resize and normalise as model.json says); one classifier forward pass;
``tumor_probability`` is the sum of the softmax probabilities of the classifier's tumour classes
(:func:`resolve_tumor_classes`, from the one vocabulary :mod:`classeg.labels`); ``tumor = tumor_probability >=
tumor_threshold``; the segmenter runs on the tumour scans only. Its per-pixel probabilities are resized
(bilinear) back to each scan's original size on the device and thresholded at ``mask_threshold``; only the
boolean masks, their areas and boxes come back to the host.

torch is imported inside the functions that need it: this module is imported on the driver for planning and
pickled by reference into tasks.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from classeg import imaging
from classeg.decoded import READ_DEFAULT_MODALITIES, ReadSettings
from classeg.io.s3 import S3Settings
from classeg.labels import TumorClassError, tumor_class_names
from classeg.scoring.stages import StageTimes

if TYPE_CHECKING:
    from classeg.scoring.device import DeviceMasks

log = logging.getLogger(__name__)

__all__ = ["ClassSegPredictor", "DEVICE_CHOICES", "Prediction", "ScoreSettings", "resolve_tumor_classes",
           "select_device", "task_threads", "tumor_threshold"]

DEVICE_CHOICES = ("auto", "cpu", "cuda")

# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ScoreSettings:
    """Everything a scoring task needs; small and picklable (URIs and numbers, no clients, no models).

    ``classifier``/``segmenter``: artifact URIs (segmenter None: classify only). ``tumor_classes``: class names
    meaning tumour, overriding model.json's ``tumor_classes`` (empty: use model.json). ``max_bytes``: larger
    objects become ``too_large`` rows. ``s3``: :class:`~classeg.io.s3.S3Settings` (endpoint, retries,
    timeouts; anything ``S3Settings.of`` takes is turned into one).
    ``device``: "auto" | "cpu" | "cuda" | "cuda:N" (see :func:`select_device`). ``torch_threads``: 0 means the
    task's CPUs (``spark.task.cpus``), else that many. ``fetch_threads``: objects fetched and decoded at once.
    ``modalities``: DICOM Modality values scored (others are ``skipped`` rows; empty: all).
    ``patient_key_secret``: the HMAC secret of the ``patient_key`` column (None: the column is null); it
    travels to the tasks inside these settings and is left out of ``repr``.
    """

    classifier: str
    segmenter: str | None = None
    tumor_classes: tuple[str, ...] = ()
    tumor_threshold: float = 0.5
    mask_threshold: float = 0.5
    batch_size: int = 32
    max_bytes: int | None = 64 * 2**20
    s3: S3Settings | None = None
    fetch_threads: int = 8
    torch_threads: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    modalities: tuple[str, ...] = READ_DEFAULT_MODALITIES
    patient_key_secret: bytes | None = field(default=None, repr=False)

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
        object.__setattr__(self, "s3", S3Settings.of(self.s3))
        object.__setattr__(self, "modalities", self.read_settings.modalities)  # checked, upper case

    @property
    def read_settings(self) -> ReadSettings:
        """How the tasks read scan files: the DICOM modalities scored and the patient key secret."""
        modalities = self.modalities if isinstance(self.modalities, str) else tuple(self.modalities)
        return ReadSettings(modalities=modalities, patient_key_secret=self.patient_key_secret)


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


def task_threads(requested: int) -> int:
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


DEFAULT_TUMOR_THRESHOLD = 0.5


def tumor_threshold(meta: dict, override: float | None = None) -> tuple[float, str]:
    """The classifier's tumour threshold and where it came from: ``override`` (``--tumor-threshold``) when
    given, else model.json's ``operating_point.threshold`` (chosen on the validation split), else 0.5.
    Raises ValueError for a threshold outside [0, 1]."""
    if override is not None:
        threshold, source = override, "--tumor-threshold"
    else:
        point = meta.get("operating_point")
        if isinstance(point, dict) and point.get("threshold") is not None:
            split = point.get("split") or "val"
            threshold, source = point["threshold"], f"model.json operating_point, chosen on the {split} split"
        else:
            reason = meta.get("operating_point_reason") or "model.json has no operating_point"
            threshold, source = DEFAULT_TUMOR_THRESHOLD, f"default {DEFAULT_TUMOR_THRESHOLD} ({reason})"
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"tumour threshold ({source}) must be a number in [0, 1], got {threshold!r}")
    return float(threshold), source


# ---------------------------------------------------------------------------------------------- predictor

@dataclass
class Prediction:
    """One scan's Class-Seg result. ``probabilities`` (K,) float32 softmax; ``mask`` (H, W) bool at the scan's
    original size, or None when the scan was not segmented (not tumour, or no segmenter); with it its
    ``mask_area_px`` and ``bbox`` (``[x0, y0, x1, y1]`` half-open, None for an empty mask), measured on the
    device."""

    label: int
    label_name: str
    probabilities: np.ndarray
    tumor_probability: float
    tumor: bool
    mask: np.ndarray | None = None
    mask_area_px: int | None = None
    bbox: list[int] | None = None


class ClassSegPredictor:
    """A loaded classifier (and optional segmenter) applying the Class-Seg rule to batches of scans.

    Build with :meth:`load` (artifact URIs) or from loaded :class:`classeg.artifact.Artifact` objects.
    ``tumor_classes``: class names meaning tumour (empty: model.json's), resolved and checked by
    :func:`resolve_tumor_classes`. ``device``: a torch device string; models are moved there. On CUDA the
    forward passes run under float16 autocast when ``amp``; ``channels_last`` uses NHWC tensors (on CPU and CUDA).
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
        # NHWC on both: oneDNN's CPU convolutions and cuDNN's Tensor Core kernels both want it.
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for artifact in (classifier, segmenter):
            if artifact is not None:
                artifact.model.eval().to(self.device, memory_format=self._memory_format)

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

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A decoded scan as stored (any dtype, (H, W) or (H, W, 3)) -> the canonical uint8 scan the models take
        (:func:`classeg.imaging.to_uint8`). Thread-safe (numpy only): the task runs it in its loader threads;
        resizing and normalising happen on the device, per batch (:meth:`predict`)."""
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or min(image.shape[:2]) < 1:
            raise imaging.DecodeError("bad_structure", f"decoded array of shape {image.shape} is not a 2-D scan")
        return imaging.to_uint8(image)

    def _inputs(self, artifact, scans: Sequence[np.ndarray]):
        from classeg.scoring.device import model_inputs

        return model_inputs(scans, artifact.meta["input"], self.device, memory_format=self._memory_format)

    def _forward(self, model, inputs):
        import torch

        with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.amp):
            return model(inputs).float()

    def predict(self, scans: Sequence[np.ndarray], *, stages: StageTimes | None = None) -> list[Prediction]:
        """Class-Seg on one batch of canonical uint8 scans (H, W) or (H, W, 3) of any sizes (:meth:`prepare`):
        both models' inputs are made on the device, the classifier runs on all, the segmenter on the tumour
        scans. Returns one :class:`Prediction` per scan, in order. ``stages``: where the time goes
        (preprocess, classify, segment)."""
        import torch

        from classeg.scoring.device import StageClock

        if not len(scans):
            return []
        stages = stages if stages is not None else StageTimes()
        clock = StageClock(self.device, stages)
        with torch.inference_mode():
            inputs = self._inputs(self.classifier, scans)
            clock.mark("preprocess")
            logits = self._forward(self.classifier.model, inputs)
            probabilities = torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32)
            clock.mark("classify")
        clock.close()
        del inputs
        tumor_probability = probabilities[:, self.tumor_indices].sum(axis=1)
        is_tumor = tumor_probability >= self.tumor_threshold
        labels = probabilities.argmax(axis=1)
        predictions = [Prediction(label=int(labels[i]), label_name=self.class_names[labels[i]],
                                  probabilities=probabilities[i], tumor_probability=float(tumor_probability[i]),
                                  tumor=bool(is_tumor[i])) for i in range(len(scans))]
        positives = np.flatnonzero(is_tumor)
        if self.segmenter is not None and positives.size:
            found = self._segment([scans[i] for i in positives], stages)
            for k, index in enumerate(positives):
                predictions[index].mask = found.masks[k]
                predictions[index].mask_area_px = found.areas[k]
                predictions[index].bbox = found.bboxes[k]
        stages.batch(len(scans))
        return predictions

    def _segment(self, scans: Sequence[np.ndarray], stages: StageTimes) -> DeviceMasks:
        import torch

        from classeg.scoring.device import StageClock, masks_at_sizes

        if self.segmenter is None:
            raise ValueError("this predictor has no segmenter")
        clock = StageClock(self.device, stages)
        with torch.inference_mode():
            inputs = self._inputs(self.segmenter, scans)
            clock.mark("preprocess")
            probabilities = torch.sigmoid(self._forward(self.segmenter.model, inputs))[:, :1]
            found = masks_at_sizes(probabilities, [scan.shape[:2] for scan in scans], self.mask_threshold)
            clock.mark("segment")
        clock.close()
        return found

    def segment(self, scans: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Tumour masks (H, W) bool at each canonical uint8 scan's own size: the segmenter's per-pixel
        probabilities, resized bilinearly to the scan's size on the device, ``>= mask_threshold``."""
        if not len(scans):
            return []
        return self._segment(scans, StageTimes()).masks
