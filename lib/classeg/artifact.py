"""Model artifacts: a directory (local or ``s3://``) holding ``weights.pt`` (a full state dict) and
``model.json`` with everything needed to score with it and nothing global:

``format`` ("classeg-model/1"), ``model_id``, ``task`` ("classify" | "segment"), ``architecture`` (the model's
``describe()``, which rebuilds it), ``class_names``, ``input`` (``size``, ``channels``, ``mean``, ``std``,
``zscore``: exactly how to preprocess a canonical uint8 scan), ``training`` (config), ``history`` (per-epoch
dicts), ``metrics`` (final test metrics), ``data`` (scan-table fingerprint: path and row counts),
``classeg_version``, ``created_at``, ``weights`` (file name) and ``weights_sha256``.

For a classifier, ``tumor_classes`` lists the class names that mean "tumour" (used by Class-Seg scoring to
decide which scans to segment); it defaults from the class names and can be overridden at scoring time.

Wherever an artifact is expected (``score``, ``evaluate``, ``train --weights``), :func:`resolve_artifact`
also takes the output folder of ``classeg train --output DIR`` and picks the model of its newest completed
run (the rule is in its docstring).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, NamedTuple

import numpy as np

from classeg import __version__
from classeg.io.files import exists, list_files, read_bytes, write_bytes
from classeg.io.uri import absolute, join, parse_uri
from classeg.labels import TumorClassError, tumor_class_names

logger = logging.getLogger(__name__)

FORMAT = "classeg-model/1"
TASKS = ("classify", "segment")
WEIGHTS_NAME = "weights.pt"
META_NAME = "model.json"
#: What `classeg.training.outputs.write_outputs` writes under ``train.output``: each run's folder under
#: RUNS_DIR, holding its artifact in MODEL_DIR and, written last, RESULT_NAME; and a copy of the latest
#: finished run's artifact in ``<output>/MODEL_DIR``.
RUNS_DIR = "runs"
MODEL_DIR = "model"
RESULT_NAME = "result.json"


def default_tumor_classes(class_names) -> list[str] | None:
    """model.json's ``tumor_classes`` for these class names: :func:`classeg.labels.tumor_class_names`, or None
    (logged) when the names cannot be mapped; scoring then asks for ``score.tumor_classes``."""
    try:
        return tumor_class_names(class_names)
    except TumorClassError as err:
        logger.warning("model.json gets no tumor_classes: %s", err)
        return None


# ------------------------------------------------------------------------------------------- artifacts
def save_artifact(uri: str, *, model, task: str, class_names, input_spec: Mapping[str, Any],
                  training: Mapping[str, Any] | None = None, history=(), metrics: Mapping[str, Any] | None = None,
                  data: Mapping[str, Any] | None = None, tumor_classes=None, s3_cfg: Any = None,
                  extra: Mapping[str, Any] | None = None) -> dict:
    """Write ``model``'s state dict and model.json to the directory ``uri``; return the model.json dict.

    ``input_spec``: ``size`` (int), ``channels`` (1 or 3), ``mean``/``std`` (per channel, in [0, 1] units of
    the uint8/255 image) and ``zscore`` (bool: per-image z-score instead of mean/std, the segmenter's input).
    """
    import torch

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    missing = {"size", "channels", "mean", "std", "zscore"} - set(input_spec)
    if missing:
        raise ValueError(f"input_spec lacks {sorted(missing)}")
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, buffer)
    weights = buffer.getvalue()
    digest = hashlib.sha256(weights).hexdigest()
    created = datetime.now(timezone.utc)
    architecture = model.describe()
    meta = {
        "format": FORMAT,
        "model_id": f"{task}-{architecture.get('arch', 'model')}-{created:%Y%m%dT%H%M%S}-{digest[:8]}",
        "task": task, "architecture": architecture, "class_names": list(class_names),
        "input": {k: (list(v) if isinstance(v, (tuple, list, np.ndarray)) else v) for k, v in input_spec.items()},
        "training": dict(training or {}), "history": list(history), "metrics": dict(metrics or {}),
        "data": dict(data or {}), "classeg_version": __version__,
        "created_at": created.isoformat(timespec="seconds"), "weights": WEIGHTS_NAME, "weights_sha256": digest,
    }
    if task == "classify":
        meta["tumor_classes"] = list(tumor_classes) if tumor_classes is not None else default_tumor_classes(
            class_names)
    meta.update(dict(extra or {}))
    write_bytes(join(uri, WEIGHTS_NAME), weights, s3_cfg=s3_cfg)
    write_bytes(join(uri, META_NAME), json.dumps(meta, indent=2, default=json_default).encode(), s3_cfg=s3_cfg)
    return meta


def json_default(value):
    """``json.dumps(default=...)`` for numpy scalars and arrays (anything else becomes its str)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


@dataclass
class Artifact:
    """A loaded model artifact: ``model`` (eval mode, on ``device``) and its ``meta`` (model.json)."""

    model: Any
    meta: dict
    uri: str

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def model_id(self) -> str:
        return self.meta["model_id"]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """A canonical uint8 scan (H, W) or (H, W, 3) -> float32 (C, size, size) exactly as in training."""
        from classeg.transforms import preprocess_for_model

        spec = self.meta["input"]
        zscore = bool(spec["zscore"])
        return preprocess_for_model(image, input_size=spec["size"], mean=None if zscore else spec["mean"],
                                    std=None if zscore else spec["std"], zscore=zscore, channels=spec["channels"])


def read_meta(uri: str, *, s3_cfg: Any = None) -> dict:
    """Read and check a model.json; ValueError naming the problem for anything that is not an artifact."""
    try:
        meta = json.loads(read_bytes(join(uri, META_NAME), s3_cfg=s3_cfg))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no model artifact at {uri!r}: {META_NAME} not found") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{join(uri, META_NAME)} is not valid JSON ({err})") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"{join(uri, META_NAME)} has format {meta.get('format')!r}, expected {FORMAT!r}")
    for key in ("task", "architecture", "class_names", "input"):
        if key not in meta:
            raise ValueError(f"{join(uri, META_NAME)} lacks {key!r}")
    if meta["task"] not in TASKS:
        raise ValueError(f"{join(uri, META_NAME)}: task must be one of {TASKS}, got {meta['task']!r}")
    return meta


def load_artifact(uri: str, *, device: str = "cpu", s3_cfg: Any = None, expect_task: str | None = None) -> Artifact:
    """Load an artifact directory (local or s3://). Checks the weights' SHA-256 against model.json."""
    import torch

    from classeg.models.classifier import classifier_from_description
    from classeg.models.resunet import resunet_from_description

    meta = read_meta(uri, s3_cfg=s3_cfg)
    if expect_task and meta["task"] != expect_task:
        raise ValueError(f"{uri} is a {meta['task']!r} model, expected a {expect_task!r} model")
    weights = read_bytes(join(uri, meta.get("weights", WEIGHTS_NAME)), s3_cfg=s3_cfg)
    if meta.get("weights_sha256") and hashlib.sha256(weights).hexdigest() != meta["weights_sha256"]:
        raise ValueError(f"{uri}: weights do not match the SHA-256 recorded in {META_NAME} (corrupt or replaced)")
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    build = classifier_from_description if meta["task"] == "classify" else resunet_from_description
    model = build(meta["architecture"], weights=state)
    model.eval().to(device)
    return Artifact(model=model, meta=meta, uri=uri)


# -------------------------------------------------------------------------------- training output folders
def resolve_artifact(uri: str, *, task: str | None = None, s3_cfg: Any = None) -> str:
    """The artifact folder ``uri`` stands for: ``uri`` itself, or the model of a training output's newest
    completed run. Driver only; the result is what executors and ranks are given.

    ``uri`` (local, made absolute with :func:`classeg.io.uri.absolute`; or ``s3://``, kept as spelled) is:

    1. an artifact folder (it holds ``model.json``): returned as it is;
    2. the ``--output`` folder of ``classeg train``: ``<uri>/runs/<run_id>/model`` of its newest completed
       run. A run is complete when its ``result.json`` exists (training writes it after the run's artifact
       and the ``<uri>/model`` copy); the newest is the one whose ``model.json`` ``created_at`` (UTC, the
       moment the artifact was saved, so a resumed run counts from when it finished) is latest, ties broken
       by the greater run id; with ``task`` ("classify" | "segment"), the newest run of that task (one output
       folder may hold runs of both). The run's own folder rather than ``<uri>/model``, because the next
       training run overwrites that copy while a job may still be reading it;
    3. a training output without completed runs but with ``<uri>/model/model.json``: that folder.

    Otherwise FileNotFoundError naming ``uri`` and what was looked for; ValueError when a completed run's
    ``model.json`` is missing or not a classeg artifact. Which folder was chosen is logged.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}")
    uri = absolute(uri)
    if exists(join(uri, META_NAME), s3_cfg=s3_cfg):
        return uri
    runs = _completed_runs(uri, s3_cfg=s3_cfg)
    if runs and task is not None:
        matching = [run for run in runs if run.task == task]
        if not matching:
            raise ValueError(f"training output {uri!r} has completed runs of task {sorted({r.task for r in runs})}, "
                             f"none of task {task!r}: expected a {task!r} model")
        runs = matching
    if runs:
        newest = max(runs)
        logger.info("%s is a training output: run %s (artifact of %s, the newest of %d completed runs) -> %s", uri,
                    newest.run_id, newest.created.isoformat(), len(runs), newest.model)
        return newest.model
    latest = join(uri, MODEL_DIR)
    if exists(join(latest, META_NAME), s3_cfg=s3_cfg):
        logger.info("%s is a training output without completed runs under %s/: using its copy %s", uri,
                    RUNS_DIR, latest)
        return latest
    raise FileNotFoundError(
        f"no model artifact at {uri!r}: looked for {META_NAME} in it and, as a training output folder, for "
        f"{RUNS_DIR}/<run_id>/{RESULT_NAME} with {RUNS_DIR}/<run_id>/{MODEL_DIR}/{META_NAME} and for "
        f"{MODEL_DIR}/{META_NAME}: none found")


class _Run(NamedTuple):
    """A completed training run; tuples order by ``created``, then ``run_id`` (the newest-run rule)."""

    created: datetime
    run_id: str
    model: str
    task: str


def _completed_runs(output: str, *, s3_cfg: Any) -> list[_Run]:
    """Every completed run under ``<output>/runs/``."""
    runs_uri = join(output, RUNS_DIR)
    base = parse_uri(runs_uri)
    found = []
    for item in list_files(runs_uri, suffix=RESULT_NAME, s3_cfg=s3_cfg):
        relative = item.prefix[len(base.dir_prefix):] if item.is_s3 else os.path.relpath(item.path, base.path)
        parts = relative.replace(os.sep, "/").split("/")
        if len(parts) != 2 or parts[1] != RESULT_NAME:
            continue  # a result.json deeper down (a copied artifact, a cache) is not a run's marker
        model = join(runs_uri, parts[0], MODEL_DIR)
        try:
            meta = read_meta(model, s3_cfg=s3_cfg)
            created = datetime.fromisoformat(meta["created_at"])
        except (FileNotFoundError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"training output {output!r}: run {parts[0]!r} is complete ({RESULT_NAME}) but its "
                             f"{MODEL_DIR}/ is not a usable artifact: {err}") from err
        created = created if created.tzinfo else created.replace(tzinfo=timezone.utc)
        found.append(_Run(created, parts[0], model, meta["task"]))
    return found
