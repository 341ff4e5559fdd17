"""The training job on the driver: validate everything, materialise the data, launch the engine.

`run_training(spark, cfg)` checks the request before any worker starts (each problem is a ValueError naming
the offending value): the scan table exists and is complete, every split has rows (for the segmenter: masks,
and tumour slices when ``train.segment_slices=tumor``), at least one row per process, the segmenter's image
size is a multiple of 16, the engine is installed, and ``--weights``, when it is a classeg artifact or
checkpoint, was trained on the same task and class names. Then it materialises train/val/test with Petastorm,
computes class weights from the train split's counts, builds the `classeg.training.plan.TrainPlan` (frozen,
picklable: what every rank needs) and launches `classeg.training.loop.train_rank` through
`classeg.training.engines`.

Layout under ``train.output``::

    runs/<run_id>/checkpoints/last.pt, best.pt     resumable state, best weights by the validation metric
    runs/<run_id>/model/                           THE model artifact of the run (+ metrics.json, figures)
    runs/<run_id>/result.json                      what the job returned
    runs/<run_id>/cache/                           Petastorm cache while training, for a local output
    model/                                         a copy of the latest finished run's artifact

Everything under ``train.output`` is written through classeg's storage layer (`classeg.io.files`), so an
``s3://`` output works without a Hadoop S3 filesystem and gets the ``s3`` settings (endpoint, retries,
encryption). The Petastorm cache is different: Spark writes it and every rank reads it back, so it must be a
filesystem both reach without S3 support (`cache_location`: ``train.cache_dir``, else the rule there).
On a cluster, local folders (the output, the cache) are checked to be shared by every executor before any data
is materialised (`classeg.spark.check_shared_folder`).

A run id defaults to a new timestamp-based id (logged); running again with the same ``--run-id`` resumes
from ``last.pt``. A launch that fails (a training process killed, a node lost) is relaunched from ``last.pt``
up to ``train.max_restarts`` times within the same job.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import tempfile
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from classeg.artifact import read_meta, resolve_artifact
from classeg.errors import ConfigError
from classeg.io.files import exists, read_bytes
from classeg.io.uri import absolute, is_s3, join, parse_uri
from classeg.config import Config
from classeg.training import checkpoints
from classeg.training.data import SPLITS, SplitData, prepare_split, split_counts
from classeg.training.engines import check_engine, check_slots, launch, torch_local_mode
from classeg.training.plan import ModelSpec, Recipe, TrainPlan

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """``YYYYmmdd-HHMMSS-xxxxxx`` (UTC time + random suffix)."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def _uri(location: str) -> str:
    """Local paths (plain or ``file://``) as absolute paths; S3 URIs as given, without a trailing slash."""
    return location.rstrip("/") if is_s3(location) else parse_uri(location).path


#: The Petastorm cache of a run with an s3:// output on a cluster: EMR's HDFS (on the core nodes' disks).
CLUSTER_CACHE_ROOT = "hdfs:///tmp/classeg/cache"
#: The rule of `cache_location`, as the messages and ``--cache``'s help state it.
CACHE_RULE = ("train.cache_dir (--cache) empty: <output>/runs/<run_id>/cache for a local output; for an s3:// "
              "output, a folder under spark.local.dir on a local[...] master and "
              f"{CLUSTER_CACHE_ROOT}/<run_id> on a cluster")


def cache_location(cache_dir: str | None, *, output: str, run_id: str, local_master: bool, local_dir: str) -> str:
    """Where Spark materialises the Petastorm cache of run ``run_id``, as the URI Spark is given.

    Spark's executors write the cache and every training rank reads it (Petastorm: pyarrow for ``file://``
    and ``hdfs://``), so it is a filesystem both reach without S3 support: ``cache_dir`` when given (a local
    path or ``file://`` URI on one machine or on storage every node mounts, ``hdfs://`` on EMR; ``s3://`` is a
    ConfigError: Petastorm would need s3fs). Empty: ``<output>/runs/<run_id>/cache`` for a local ``output``;
    for an ``s3://`` output, ``<local_dir>/classeg-cache/<run_id>`` on a ``local[...]`` master (the executors
    are the driver; ``local_dir`` is Spark's first local dir) and ``hdfs:///tmp/classeg/cache/<run_id>`` on a
    cluster (:data:`CACHE_RULE`)."""
    from classeg.ingest.storage import spark_uri

    if cache_dir:
        if is_s3(cache_dir):
            raise ConfigError(f"train.cache_dir={cache_dir!r}: the Petastorm cache cannot be on S3 (Spark writes it "
                              "and every rank reads it back through pyarrow); use a local path or file:// URI on "
                              "one machine or shared storage, or hdfs:// on EMR, or leave it empty ("
                              f"{CACHE_RULE})")
        return spark_uri(absolute(cache_dir))
    if not is_s3(output):
        return spark_uri(join(output, f"runs/{run_id}", "cache"))
    if local_master:
        return spark_uri(os.path.join(local_dir, "classeg-cache", run_id))
    return f"{CLUSTER_CACHE_ROOT}/{run_id}"


def spark_local_dir(spark) -> str:
    """The first of Spark's local directories (``SPARK_LOCAL_DIRS``, else ``spark.local.dir``, else the temp dir)."""
    conf = spark.sparkContext.getConf()
    local_dirs = os.environ.get("SPARK_LOCAL_DIRS") or conf.get("spark.local.dir", tempfile.gettempdir())
    return local_dirs.split(",")[0].strip()


def _check_shared(spark, *, output: str, cache: str) -> None:
    """On a cluster: the local folders the executors and ranks write (the output, the cache) must be shared."""
    from classeg.spark import check_shared_folder

    check_shared_folder(spark, output, what="train.output")
    cache_path = cache[len("file://"):] if cache.startswith("file://") else None
    if cache_path is not None and not cache_path.startswith(output.rstrip("/") + "/"):
        check_shared_folder(spark, cache, what="train.cache_dir",
                            instead=f"or no --cache (an s3:// output then caches in {CLUSTER_CACHE_ROOT}/<run_id>)")


def _remove_if_empty(cache: str) -> None:
    """The run's local cache folder once Petastorm has deleted the splits in it (a folder under spark.local.dir
    would stay behind otherwise); other filesystems and a folder with anything left in it are left alone."""
    if cache.startswith("file://"):
        with contextlib.suppress(OSError):  # not empty, or already gone
            os.rmdir(cache[len("file://"):])


def input_spec(task: str, *, image_size: int, channels: int) -> dict:
    """How scans become model input (recorded in the artifact): ImageNet mean/std at ``image_size`` for
    classifiers (3 channels; grayscale scans are replicated), per-image z-score for the segmenter."""
    from classeg.models import IMAGENET_MEAN, IMAGENET_STD

    if task == "classify":
        return {"size": image_size, "channels": 3, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                "zscore": False}
    return {"size": image_size, "channels": channels, "mean": None, "std": None, "zscore": True}


def resolve_weights(weights: str | None, *, task: str, arch: str, head: str, base_filters: int,
                    class_names: list[str], s3_cfg: Any = None) -> dict:
    """What ``--weights`` is: ``{"kind": "none" | "backbone" | "full", "uri": ...}``.

    ``imagenet``: torchvision's weights (checked to be available offline now). A classeg artifact folder (or a
    training output folder: its newest completed run's model, `classeg.artifact.resolve_artifact`) or a
    classeg checkpoint: full weights; its task and class names must match (ValueError otherwise). Any other
    file: a torchvision-format backbone state dict (classifier) or a full ResUNet state dict (segmenter).
    A local ``uri`` in the result is absolute: every rank reads it from its own working directory."""
    if not weights:
        return {"kind": "none"}
    if weights == "imagenet" or weights.startswith("imagenet:"):
        if task != "classify":
            raise ValueError(f"--weights {weights!r} applies to classifiers only, not to task {task!r}")
        from classeg.models.classifier import WeightsUnavailableError, imagenet_state_dict

        try:
            imagenet_state_dict(arch, variant=weights.partition(":")[2] or "DEFAULT")
        except WeightsUnavailableError as err:
            raise ValueError(str(err)) from err
        return {"kind": "backbone", "uri": weights}
    weights = absolute(weights)
    try:
        artifact = resolve_artifact(weights, task=task, s3_cfg=s3_cfg)
    except FileNotFoundError:
        artifact = None  # not an artifact: a checkpoint or state-dict file, read below
    meta = None if artifact is None else read_meta(artifact, s3_cfg=s3_cfg)
    if meta is not None:
        _check_source(weights, meta.get("task"), meta.get("class_names"), task=task, class_names=class_names)
        config = meta["architecture"].get("config", {})
        expected = ({"arch": arch, "head": head, "num_classes": len(class_names)} if task == "classify"
                    else {"base_filters": base_filters})
        mismatched = {k: (config.get(k), v) for k, v in expected.items() if config.get(k) != v}
        if mismatched:
            raise ValueError(f"--weights {weights!r} is a {config} model; this run needs {expected} "
                             f"(artifact value, requested value: {mismatched})")
        return {"kind": "full", "uri": join(artifact, meta.get("weights", "weights.pt")),
                "lesion_map": config.get("lesion_class") is not None}
    import torch

    data = read_bytes(weights, s3_cfg=s3_cfg)  # FileNotFoundError names the URI
    try:
        content = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a file that is not a state dict
        raise ValueError(f"--weights {weights!r} is neither a classeg artifact nor a readable torch file: "
                         f"{err}") from err
    if isinstance(content, dict) and content.get("format") == checkpoints.FORMAT:
        _check_source(weights, content.get("task"), content.get("class_names"), task=task, class_names=class_names)
        state = content.get("model") or {}
        return {"kind": "full", "uri": weights, "lesion_map": any(str(k).startswith("lesion.") for k in state)}
    return {"kind": "backbone" if task == "classify" else "full", "uri": weights}


def _check_source(weights: str, source_task, source_classes, *, task: str, class_names: list[str]) -> None:
    if source_task is not None and source_task != task:
        raise ValueError(f"--weights {weights!r} is a {source_task!r} model, this run trains task {task!r}")
    if source_classes is not None and list(source_classes) != list(class_names):
        raise ValueError(f"--weights {weights!r} was trained on class names {list(source_classes)}, but the scan "
                         f"table's class names are {list(class_names)}")


def _check_splits(counts: dict, *, task: str, tumor_only: bool, scans: str, num_proc: int) -> dict[str, int]:
    """Rows each split contributes to the task; ValueError for anything unusable."""
    total_masks = sum(counts[s]["masks"] for s in counts)
    if task == "segment" and total_masks == 0:
        raise ValueError(f"scan table {scans!r} has no masks (a classification-only dataset?): it cannot train a "
                         "segmenter; use --task classify or a dataset with tumour masks")
    rows = {}
    for split in SPLITS:
        entry = counts.get(split, {"rows": 0})
        usable = entry["rows"]
        what = "rows"
        if task == "segment":
            usable, what = ((entry["tumor"], "tumour slices") if tumor_only and split != "test"
                            else (entry["masks"], "slices with masks"))
        if usable == 0:
            raise ValueError(f"the {split!r} split of scan table {scans!r} has no {what} ({entry['rows']} rows in "
                             f"the split; splits present: "
                             f"{ {s: c['rows'] for s, c in counts.items() if c['rows']} })")
        if usable < num_proc:
            raise ValueError(f"the {split!r} split of {scans!r} has {usable} {what}, fewer than --num-proc "
                             f"{num_proc}: every process needs at least one")
        rows[split] = usable
    return rows


def _channels(frame) -> int:
    from pyspark.sql import functions as F

    from classeg.imaging import decode_png

    first = frame.filter(F.col("split") == "train").select("image").first()
    image = decode_png(bytes(first["image"]))
    return 1 if image.ndim == 2 else int(image.shape[2])


def _check_request(train) -> None:
    """The request's own values (before the scan table is read); ValueError naming the bad one."""
    if not train.scans or not train.output:
        raise ValueError(f"train needs --scans URI and --output URI (got scans={train.scans!r}, "
                         f"output={train.output!r})")
    if train.task == "segment" and train.image_size % 16:
        raise ValueError(f"the segmenter's image size must be a multiple of 16 (four 2x2 poolings), got "
                         f"train.image_size={train.image_size}")
    if train.task == "classify" and train.image_size < 32:
        raise ValueError(f"the classifier's image size must be at least 32, got train.image_size={train.image_size}")


def _resumes(run_id: str, run_uri: str, *, task: str, class_names: list[str], s3_cfg: Any) -> bool:
    """Whether the run already has a ``last.pt`` to resume from (ValueError when it trained something else)."""
    last_uri = join(checkpoints.checkpoint_dir(run_uri), checkpoints.LAST)
    try:
        last = checkpoints.load(last_uri, s3_cfg=s3_cfg)
    except FileNotFoundError:
        log.info("run id %s (rerun with --run-id %s to resume); output %s", run_id, run_id, run_uri)
        return False
    if last.get("task") != task or list(last.get("class_names") or []) != class_names:
        raise ValueError(f"run {run_id!r} at {run_uri} trained task {last.get('task')!r} on classes "
                         f"{last.get('class_names')}; this request is task {task!r} on {class_names}: use "
                         "another --run-id")
    log.info("run id %s: resuming after epoch %d (%s)", run_id, last["epoch"], last_uri)
    return True


def _class_weights(train, counts: dict, class_names: list[str]) -> list[float] | None:
    """Inverse train-split frequency weights when ``train.class_weights`` is ``auto`` (classifier), else None."""
    if train.task != "classify" or train.class_weights != "auto":
        return None
    from classeg.training.optim import class_weights as inverse_frequency

    weights = inverse_frequency(counts["train"]["labels"], len(class_names))
    log.info("class weights (inverse train frequency): %s",
             ", ".join(f"{n} {w:.3f}" for n, w in zip(class_names, weights)))
    return weights


def lesion_class(train, counts: dict, class_names: list[str], weights: dict) -> int | None:
    """The class whose logit a mask-supervised lesion map raises, or None for no lesion map.

    On for a binary tumour/no-tumour classifier (`classeg.labels`) whose train split has masks, when
    ``train.mask_supervision`` is on; a full classeg model given as ``--weights`` keeps its own
    architecture (with or without the map). Off, with the reason logged, otherwise."""
    from classeg.labels import TumorClassError, tumor_class_names

    if train.task != "classify":
        return None
    inherited = weights.get("lesion_map")
    wanted = train.mask_supervision if inherited is None else inherited
    if not wanted:
        return None
    try:
        tumor = tumor_class_names(class_names)
    except TumorClassError:
        tumor = []
    why_not = None
    if len(class_names) != 2 or len(tumor) != 1:
        why_not = f"classes {class_names} are not one tumour and one no-tumour class"
    elif counts["train"]["masks"] == 0:
        why_not = "the train split has no masks"
    if why_not is None:
        index = class_names.index(tumor[0])
        log.info("mask supervision: a lesion map raises class %r, trained on the train split's masks", tumor[0])
        return index
    if inherited:
        raise ValueError(f"--weights is a classifier with a lesion map, which needs masks to train, but {why_not}")
    log.info("mask supervision off: %s", why_not)
    return None


def _launch_with_restarts(spark, plan: TrainPlan, train) -> dict:
    """:func:`launch`, relaunched up to ``train.max_restarts`` times after a failure (a killed process, a lost
    node: any failure but a configuration error), each time from ``last.pt`` when the run has one, as torchrun's
    ``--max-restarts`` and Spark's task retries do. A failure that repeats ends the run after the last try."""
    from classeg.errors import root_cause

    for attempt in range(train.max_restarts + 1):
        try:
            return launch(spark, plan, engine=train.engine, num_proc=train.num_proc,
                          threads=train.threads_per_proc, torch_mode=train.torch_mode)
        except ConfigError:
            raise
        except Exception as err:
            if attempt == train.max_restarts:
                raise
            resume = exists(plan.last_uri, s3_cfg=plan.s3)
            log.warning("training failed (%s); restart %d of %d from %s", root_cause(err), attempt + 1,
                        train.max_restarts, "last.pt" if resume else "the start (no checkpoint yet)")
            plan = dataclasses.replace(plan, resume=resume)
    raise AssertionError("unreachable")


def run_training(spark, cfg: Config) -> dict:
    """Train ``cfg.train.task`` on the scan table ``cfg.train.scans``; returns rank 0's result (run id,
    artifact location, history, test metrics, per-rank weight checksums, ...). Driver only."""
    from petastorm.spark import SparkDatasetConverter

    from classeg.ingest.table import read_scan_table
    from classeg.spark import ensure_driver, is_local_master

    ensure_driver("run_training")
    started = time.time()
    train, config = cfg.train, cfg.to_dict()
    task, s3_settings = train.task, config["s3"]
    _check_request(train)
    check_engine(train.engine)
    if train.engine == "torch":
        torch_local_mode(spark, train.torch_mode)
    scans, output = _uri(train.scans), _uri(train.output)
    frame, summary = read_scan_table(spark, scans, s3_cfg=s3_settings)
    class_names = list(summary.get("class_names") or [])
    if task == "classify" and len(class_names) < 2:
        raise ValueError(f"a classifier needs at least 2 classes; scan table {scans!r} has {class_names}")
    counts = split_counts(frame)
    tumor_only = task == "segment" and train.segment_slices == "tumor"
    rows = _check_splits(counts, task=task, tumor_only=tumor_only, scans=scans, num_proc=train.num_proc)
    # Before any data is materialised: the cluster must run num_proc tasks at once.
    check_slots(spark, engine=train.engine, num_proc=train.num_proc, torch_mode=train.torch_mode)
    weights = resolve_weights(train.weights, task=task, arch=train.arch, head=train.head,
                              base_filters=train.base_filters, class_names=class_names, s3_cfg=s3_settings)
    run_id = train.run_id or new_run_id()
    run_uri = join(output, f"runs/{run_id}")
    resume = _resumes(run_id, run_uri, task=task, class_names=class_names, s3_cfg=s3_settings)

    cache = cache_location(train.cache_dir, output=output, run_id=run_id, local_master=is_local_master(spark),
                           local_dir=spark_local_dir(spark))
    _check_shared(spark, output=output, cache=cache)
    log.info("Petastorm cache of run %s: %s", run_id, cache)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, cache)
    spec = input_spec(task, image_size=train.image_size, channels=_channels(frame) if task == "segment" else 3)
    model = ModelSpec.from_train_config(config["train"], class_names=class_names, input_spec=spec, weights=weights,
                                        class_weights=_class_weights(train, counts, class_names),
                                        endpoint_url=s3_settings.get("endpoint_url"),
                                        lesion_class=lesion_class(train, counts, class_names, weights))
    prepared: dict[str, SplitData] = {}
    try:
        for split in SPLITS:
            prepared[split] = prepare_split(spark, frame, split=split, task=task, rows=rows[split],
                                            tumor_only=tumor_only and split != "test", processes=train.num_proc,
                                            seed=train.seed, input_spec=spec,
                                            with_mask=model.mask_supervised and split == "train")
        plan = TrainPlan(
            model=model, recipe=Recipe.from_train_config(config["train"]),
            splits={split: data.shards for split, data in prepared.items()}, run_id=run_id, run_uri=run_uri,
            output=output, resume=resume, s3=s3_settings, config=config,
            fingerprint={"scans": scans, "scan_table_run_id": summary.get("run_id"),
                         "rows": {s: counts[s]["rows"] for s in SPLITS}, "task_rows": rows,
                         "segment_slices": train.segment_slices if task == "segment" else None},
            log_level=logging.getLevelName(logging.getLogger("classeg").getEffectiveLevel()))
        result = _launch_with_restarts(spark, plan, train)
    finally:
        for split_data in prepared.values():
            split_data.delete()
        _remove_if_empty(cache)
    result["cache"], result["driver_seconds"] = cache, round(time.time() - started, 1)
    log.info("train %s: run %s finished in %.1fs; artifact %s (copy at %s)", task, run_id, result["driver_seconds"],
             result["artifact"], result.get("latest_artifact"))
    return result
