"""What the driver decides before any rank starts: the `TrainPlan` (and its parts), small and picklable.

The driver (`classeg.training.job`) checks the request, materialises the splits and builds one frozen
`TrainPlan`; the engine pickles it to every rank, which reads nothing else. Its parts:

- `ModelSpec`: what builds the model and its loss (task, class names, input spec, architecture, initial
  weights, class weights);
- `Recipe`: the ``train`` config values the rank loop reads (optimisation, schedule, epochs, seeds, extras);
- `classeg.training.data.Shards` per split: the Parquet files of the split and each rank's row count;
- where the run lives (``run_uri``, checkpoint URIs), whether it resumes, and what it records in the artifact
  (the whole config and the scan-table fingerprint).

Importing this module imports neither torch nor Spark.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from classeg.io.uri import join
from classeg.training import checkpoints
from classeg.training.data import Shards

NO_WEIGHTS = {"kind": "none"}


@dataclass(frozen=True)
class ModelSpec:
    """How to build one task's model and loss.

    ``input_spec``: ``size``, ``channels``, ``mean``/``std`` (per channel, or None) and ``zscore`` (see
    `classeg.training.job.input_spec`). ``weights``: ``{"kind": "none" | "backbone" | "full", "uri": ...}``
    (`classeg.training.job.resolve_weights`). ``class_weights``: one cross-entropy weight per class, or None.
    ``arch``/``head``/``strategy`` apply to classifiers, ``base_filters`` to the segmenter, ``loss`` (the
    segmenter's) and ``label_smoothing`` (the classifier's) to the loss. ``lesion_class``: None, or the
    tumour class whose logit a mask-supervised lesion map raises (`classeg.models.build_classifier`); then
    the classifier reads masks too and ``mask_loss_weight`` weighs their loss.
    """

    task: str
    class_names: tuple[str, ...]
    input_spec: Mapping[str, Any]
    arch: str
    head: str
    strategy: str
    base_filters: int
    loss: str
    label_smoothing: float
    weights: Mapping[str, Any] = field(default_factory=lambda: dict(NO_WEIGHTS))
    class_weights: tuple[float, ...] | None = None
    endpoint_url: str | None = None
    lesion_class: int | None = None
    mask_loss_weight: float = 0.0

    @property
    def mask_supervised(self) -> bool:
        """Whether the classifier trains with a lesion map and reads masks."""
        return self.task == "classify" and self.lesion_class is not None

    @classmethod
    def from_train_config(cls, train: Mapping[str, Any], *, class_names, input_spec: Mapping[str, Any],
                          weights: Mapping[str, Any] | None = None, class_weights=None,
                          endpoint_url: str | None = None, lesion_class: int | None = None) -> "ModelSpec":
        """The spec from the ``train`` config section (a mapping) and what the driver found out."""
        if lesion_class is not None and not float(train["mask_loss_weight"]) >= 0:
            raise ValueError(f"train.mask_loss_weight must be >= 0, got {train['mask_loss_weight']!r}")
        return cls(task=str(train["task"]), class_names=tuple(class_names), input_spec=dict(input_spec),
                   arch=str(train["arch"]), head=str(train["head"]), strategy=str(train["strategy"]),
                   base_filters=int(train["base_filters"]), loss=str(train["loss"]),
                   label_smoothing=float(train["label_smoothing"]), weights=dict(weights or NO_WEIGHTS),
                   class_weights=None if class_weights is None else tuple(float(w) for w in class_weights),
                   endpoint_url=endpoint_url, lesion_class=lesion_class,
                   mask_loss_weight=float(train["mask_loss_weight"]) if lesion_class is not None else 0.0)


@dataclass(frozen=True)
class Recipe:
    """The ``train`` config values the rank loop reads (their meaning: ``conf/local.yaml``).

    ``lr`` is the rate for one process (the loop scales it by the number of processes); ``monitor`` is a
    validation metric name or ``auto``; ``early_stopping_patience`` 0 means off; ``target_sensitivity`` in
    (0, 1] picks the classifier's operating point on the validation split.
    """

    seed: int
    epochs: int
    batch_size: int
    grad_accum_steps: int
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    backbone_lr_scale: float
    schedule: str
    warmup_epochs: int
    monitor: str
    early_stopping_patience: int
    checkpoint_every_steps: int
    augment: bool
    threads_per_proc: int
    loader_threads: int
    compile: bool
    grad_compression: str
    eval_before_training: bool
    record_shards: bool
    target_sensitivity: float

    @classmethod
    def from_train_config(cls, train: Mapping[str, Any]) -> "Recipe":
        """The recipe from the ``train`` config section (a mapping holding at least these keys)."""
        values = {}
        for item in fields(cls):
            convert = {"int": int, "float": float, "bool": bool, "str": str}[str(item.type)]
            values[item.name] = convert(train[item.name])
        return cls(**values)


@dataclass(frozen=True)
class TrainPlan:
    """Everything one rank needs, decided on the driver. ``splits`` maps ``train``/``val``/``test`` to their
    `Shards`; ``s3`` is the ``s3`` config section (storage settings); ``config`` the whole configuration and
    ``fingerprint`` the scan table's identity (both recorded in the artifact); ``log_level`` rank 0's."""

    model: ModelSpec
    recipe: Recipe
    splits: Mapping[str, Shards]
    run_id: str
    run_uri: str
    output: str
    resume: bool
    s3: Mapping[str, Any] | None
    config: Mapping[str, Any]
    fingerprint: Mapping[str, Any]
    log_level: str = "INFO"

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    @property
    def last_uri(self) -> str:
        """``last.pt``: the resumable state after the latest epoch."""
        return join(checkpoints.checkpoint_dir(self.run_uri), checkpoints.LAST)

    @property
    def best_uri(self) -> str:
        """``best.pt``: the weights of the best epoch by the monitored validation metric."""
        return join(checkpoints.checkpoint_dir(self.run_uri), checkpoints.BEST)

    @property
    def artifact_uri(self) -> str:
        """The run's model artifact folder."""
        return join(self.run_uri, "model")
