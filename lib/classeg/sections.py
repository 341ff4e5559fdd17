"""The configuration's sections: one frozen dataclass per section of ``conf/local.yaml``.

Each dataclass says which keys its section has and of what type each value is; ``Literal[...]`` fields have a
closed set of values (``classeg.config.CHOICES`` and the command line's choices come from them). The fields
have no defaults on purpose: the embedded YAML is the one place that holds default values, and
``classeg.config`` refuses a YAML whose keys differ from these fields.

``str | None`` fields are paths, URIs, ids or names whose default is null (unset). Free-form maps
(``spark.extra``, ``emr.tags``) are ``dict[str, Any]``.

Build instances with :func:`classeg.config.load_config`, which coerces and checks every value against these
annotations; a section is read-only (``cfg.train.epochs = 3`` raises), ``to_dict()`` gives a mutable copy.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

from classeg.errors import ConfigError

__all__ = ["EmrSection", "IngestSection", "S3Section", "SECTIONS", "ScoreSection", "Section", "SparkSection",
           "TrainSection"]


class Section:
    """Base of the section dataclasses (no fields of its own)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """A deep, mutable copy of this section's values, by key."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SparkSection(Section):
    """How :func:`classeg.spark.get_spark` builds the SparkSession (``master`` and the JVM options apply
    only to a session started here, not under ``spark-submit``)."""

    master: str
    app_name: str
    ui: bool
    shuffle_partitions: int
    arrow_batch_size: int  # spark.sql.execution.arrow.maxRecordsPerBatch for the scoring UDFs
    python_worker_reuse: bool
    local_java_options: str
    extra: dict[str, Any]  # any other spark.* settings, passed through verbatim


@dataclass(frozen=True)
class S3Section(Section):
    """The one S3 client factory's settings (:class:`classeg.io.s3.S3Settings`): endpoint, region, retries,
    timeouts in seconds, and the encryption and bucket owner every S3 request of classeg (and Spark's own
    writes, :func:`classeg.io.s3.spark_s3_conf`) asks for."""

    endpoint_url: str | None  # an S3-compatible store's http(s):// URL; null: AWS
    region: str
    max_attempts: int
    backoff_seconds: float
    connect_timeout: int
    read_timeout: int
    sse: Literal["none", "AES256", "aws:kms"]  # asked for on every object written; none: the bucket's default
    kms_key_id: str | None  # sse aws:kms only: KMS key id, ARN or alias; null: the AWS managed key aws/s3
    expected_bucket_owner: str | None  # 12-digit account id every bucket must belong to; null: not checked

    def __post_init__(self):
        self.check_encryption(self.sse, self.kms_key_id, self.expected_bucket_owner)

    @staticmethod
    def check_encryption(sse: str, kms_key_id: str | None, expected_bucket_owner: str | None) -> None:
        """ConfigError naming the keys when ``s3.kms_key_id`` does not fit ``s3.sse`` (``sse`` itself is checked
        against its annotation) or ``s3.expected_bucket_owner`` is no account id; the one place these rules
        live, :class:`~classeg.io.s3.S3Settings` applies them too."""
        if kms_key_id is not None:
            if not isinstance(kms_key_id, str) or not kms_key_id.strip():
                raise ConfigError(f"s3.kms_key_id must be null or a KMS key id, ARN or alias, got {kms_key_id!r}")
            if sse != "aws:kms":
                raise ConfigError(f"s3.kms_key_id is set but s3.sse is {sse!r}: a KMS key is used only with "
                                  "s3.sse: aws:kms (set s3.sse: aws:kms, or s3.kms_key_id: null)")
        owner = expected_bucket_owner
        if owner is not None and (not isinstance(owner, str) or not re.fullmatch(r"[0-9]{12}", owner)):
            raise ConfigError(f"s3.expected_bucket_owner must be null or a 12-digit AWS account id (quoted in "
                              f"YAML, so a leading 0 is kept), got {owner!r}")


@dataclass(frozen=True)
class IngestSection(Section):
    """The ingest job: which dataset layout to read from ``input`` and where the Parquet scan table goes."""

    dataset: Literal["lgg", "figshare", "folders"]  # same order as classeg.datasets.registry.LAYOUTS
    input: str | None  # dataset root: local path, file:// or s3:// URI
    output: str | None  # scan table location
    image_size: int
    seed: int
    split: list[float]  # train, val, test fractions
    max_error_rate: float
    partitions: int
    read: Literal["auto", "tasks", "binaryfile"]
    fetch_threads: int


@dataclass(frozen=True)
class TrainSection(Section):
    """The training job: the model (task, architecture, head, weights), the recipe (optimizer, schedule,
    loss, epochs) and how it runs on Spark (engine, processes, threads)."""

    task: Literal["classify", "segment"]
    scans: str | None  # scan table URI (the ingest output)
    output: str | None  # where runs, checkpoints and the model artifact go
    engine: Literal["horovod", "torch"]
    num_proc: int
    arch: Literal["resnet18", "resnet50"]
    head: Literal["linear", "dense"]
    strategy: Literal["frozen", "partial", "finetune"]
    weights: str | None  # a path or s3:// URI to a torchvision state dict, or "imagenet"; null: from scratch
    epochs: int
    batch_size: int
    image_size: int
    optimizer: Literal["adamw", "sgd"]
    lr: float
    backbone_lr_scale: float
    weight_decay: float
    momentum: float
    warmup_epochs: int
    schedule: Literal["cosine", "plateau", "constant"]
    class_weights: Literal["auto", "none"]
    label_smoothing: float
    early_stopping_patience: int
    monitor: str  # "auto" or a metric name: open-ended, so not a Literal
    grad_accum_steps: int
    segment_slices: Literal["tumor", "all"]
    base_filters: int
    loss: Literal["focal_tversky", "dice", "bce_dice"]
    run_id: str | None  # null: a new id; an existing one resumes
    max_restarts: int  # relaunches from last.pt after a failed launch
    checkpoint_every_steps: int  # last.pt also every N optimiser steps within an epoch; 0: at epoch ends only
    seed: int
    cache_dir: str | None  # Petastorm cache (file or hdfs, never s3); null: classeg.training.job.cache_location's rule
    threads_per_proc: int
    augment: bool
    loader_threads: int  # reader threads per process over the training cache
    compile: bool  # torch.compile the training forward on CUDA
    grad_compression: Literal["none", "fp16"]  # dtype of the gradient allreduce (training.collectives)
    torch_mode: str  # checked by classeg.training.engines (TORCH_MODES) where the torch engine starts
    eval_before_training: bool
    record_shards: bool
    target_sensitivity: float
    mask_supervision: bool
    mask_loss_weight: float


@dataclass(frozen=True)
class ScoreSection(Section):
    """The scoring job: the scan archive to read, the model artifacts, the scores table to write, and how
    each scoring task fetches, batches and runs the models."""

    archive: str | None  # s3://bucket/prefix or a local folder of scans
    classifier: str | None  # classifier artifact location
    segmenter: str | None  # segmenter artifact location; null: no masks
    output: str | None  # scores table root
    batch_size: int
    tumor_threshold: float | None  # null: the classifier's own operating point (model.json), else 0.5
    mask_threshold: float
    max_error_rate: float
    full: bool
    partitions: int  # 0: ceil(pending / objects_per_task), at least one per core
    objects_per_task: int
    plan_only: bool  # list and plan (<output>/_plans/<run_id>.json), score and mark nothing
    inventory: str  # S3 Inventory manifest.json or <dest-prefix>/<bucket>/<config-id>/; "": list the archive
    max_object_mb: int
    tumor_classes: list[str]
    run_date: str | None  # YYYY-MM-DD (a YAML date is kept as that string); null: today (UTC)
    run_id: str | None  # null: <UTC time>-<random>
    arrow_batch_size: int
    fetch_threads: int
    torch_threads: int
    device: str  # auto | cpu | cuda | cuda:N: open-ended (any GPU index), so not a Literal
    amp: bool
    channels_last: bool
    modalities: list[str]  # DICOM Modality values that are scored; []: all
    patient_key_secret: str | None  # secrets file or s3:// URI; null: $CLASSEG_PATIENT_KEY_SECRET
    redact_keys_in_logs: bool  # logs and messages show key#<hash> for object keys (classeg.redact)


@dataclass(frozen=True)
class EmrSection(Section):
    """The EMR cluster, its steps and the scheduled scoring state machine (``classeg emr ...``)."""

    region: str
    release_label: str
    log_uri: str | None  # s3:// URI for cluster logs
    wheelhouse: str | None  # s3:// URI of the uploaded wheels and job scripts
    subnet_id: str | None
    key_name: str | None  # EC2 key pair name
    master_instance_type: str
    core_instance_type: str
    core_instance_count: int
    gpus_per_node: int
    bid_price: str | None  # spot bid in USD, a string as the EMR API takes it; null: on-demand
    service_role: str
    instance_profile: str
    cluster_name: str
    python: str
    tags: dict[str, Any]
    endpoint_url: str | None  # EMR, Step Functions and Scheduler endpoint override
    bootstrap_uri: str | None  # null: WHEELHOUSE/bootstrap.sh
    idle_timeout_minutes: int
    tasks_per_gpu: int
    schedule_name: str
    state_machine_role_arn: str | None
    scheduler_role_arn: str | None
    kms_key_arn: str | None  # KMS key ARN for at-rest encryption (EMRFS and local disks); null: none
    tls_certificates: str | None  # s3:// zip of PEM certificates for in-transit TLS; null: none
    security_configuration: str | None  # an existing EMR security configuration; null: create one


# Section name in the YAML -> its dataclass, in the YAML's order.
SECTIONS: dict[str, type[Section]] = {
    "spark": SparkSection,
    "s3": S3Section,
    "ingest": IngestSection,
    "train": TrainSection,
    "score": ScoreSection,
    "emr": EmrSection,
}
