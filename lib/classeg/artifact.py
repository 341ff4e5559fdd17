"""Model artifacts: a directory (local or ``s3://``) holding ``weights.pt`` (a full state dict) and
``model.json`` with everything needed to score with it and nothing global:

``format`` ("classeg-model/1"), ``model_id``, ``task`` ("classify" | "segment"), ``architecture`` (the model's
``describe()``, which rebuilds it), ``class_names``, ``input`` (``size``, ``channels``, ``mean``, ``std``,
``zscore``: exactly how to preprocess a canonical uint8 scan), ``training`` (config), ``history`` (per-epoch
dicts), ``metrics`` (final test metrics), ``data`` (scan-table fingerprint: path and row counts),
``classeg_version``, ``created_at``, ``weights`` (file name) and ``weights_sha256``.

For a classifier, ``tumor_classes`` lists the class names that mean "tumour" (used by Class-Seg scoring to
decide which scans to segment); it defaults from the class names and can be overridden at scoring time.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np

from classeg import __version__
from classeg.io.files import read_bytes, write_bytes
from classeg.io.uri import join
from classeg.labels import TumorClassError, tumor_class_names

logger = logging.getLogger(__name__)

FORMAT = "classeg-model/1"
TASKS = ("classify", "segment")
WEIGHTS_NAME = "weights.pt"
META_NAME = "model.json"


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
