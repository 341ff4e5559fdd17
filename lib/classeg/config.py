"""Typed job configuration: the embedded YAML default, `--conf FILE` overlays and `--set key=value` overrides.

The schema *is* the embedded default (`conf/local.yaml`): every key that exists there is a key, and its default
value fixes its type. Keys with a closed set of values are listed in `CHOICES`. Anything else is an error that
names the key and what was accepted, so a typo never silently falls back to a default.

A `Config` is a plain nested dict underneath, so it pickles cheaply to executors.
"""
from __future__ import annotations

import copy
import datetime
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from classeg.errors import ConfigError

DEFAULT_PATH = Path(__file__).resolve().parent / "conf" / "local.yaml"

CHOICES: dict[str, tuple[str, ...]] = {
    "ingest.dataset": ("lgg", "figshare", "folders"),
    "ingest.read": ("auto", "tasks", "binaryfile"),
    "train.task": ("classify", "segment"),
    "train.engine": ("horovod", "torch"),
    "train.arch": ("resnet18", "resnet50"),
    "train.head": ("linear", "dense"),
    "train.strategy": ("frozen", "partial", "finetune"),
    "train.optimizer": ("adamw", "sgd"),
    "train.schedule": ("cosine", "plateau", "constant"),
    "train.class_weights": ("auto", "none"),
    "train.segment_slices": ("tumor", "all"),
    "train.loss": ("focal_tversky", "dice", "bce_dice"),
}

# Keys whose default is null but whose values are strings (paths, URIs, ids).
_NULLABLE_STR = "nullable"


class Config:
    """Validated, nested configuration with attribute access: ``cfg.train.engine`` or ``cfg["train.engine"]``."""

    def __init__(self, data: Mapping[str, Any], _section: bool = False):
        self._data = dict(data)
        self._section = _section

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(f"no config key {name!r}; known: {sorted(self._data)}") from None
        # Top-level values are sections; inside a section a dict is a free-form map (spark.extra, emr.tags).
        return Config(value, _section=True) if not self._section and isinstance(value, dict) else value

    def __getitem__(self, dotted: str) -> Any:
        node: Any = self._data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(dotted)
            node = node[part]
        return node

    def __getstate__(self):
        return (self._data, self._section)

    def __setstate__(self, state):
        self._data, self._section = state

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and other._data == self._data

    def __repr__(self) -> str:
        return f"Config({self._data!r})"

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def replace(self, **dotted_values: Any) -> "Config":
        """A copy with values set by dotted key (use ``__`` for ``.`` in keyword names), validated."""
        data = self.to_dict()
        for key, value in dotted_values.items():
            _assign(data, key.replace("__", "."), value, parse=False)
        return Config(data)


def _default_data() -> dict[str, Any]:
    with open(DEFAULT_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


_SCHEMA: dict[str, Any] | None = None


def _schema() -> dict[str, Any]:
    global _SCHEMA  # read-only cache of the parsed default file
    if _SCHEMA is None:
        _SCHEMA = _default_data()
    return _SCHEMA


def _schema_default(dotted: str) -> Any:
    node: Any = _schema()
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            prefix = ".".join(parts[:depth])
            known = sorted(node) if isinstance(node, dict) else []
            where = f"section {prefix!r}" if prefix else "the top level"
            raise ConfigError(f"unknown config key {dotted!r}: {where} accepts {known}")
        node = node[part]
        if isinstance(node, dict) and not node and depth < len(parts) - 1:
            return None  # inside a free-form map: any key
    return node


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else ""


def _coerce(dotted: str, value: Any, default: Any) -> Any:
    choices = CHOICES.get(dotted)
    if choices is not None:
        if value not in choices:
            raise ConfigError(f"{dotted} must be one of {list(choices)}, got {value!r}")
        return value
    if default is None:
        if isinstance(value, datetime.date):  # YAML reads an unquoted 2026-01-31 (e.g. score.run_date) as a date
            return value.isoformat()
        if value is None or isinstance(value, (str, int, float)):
            return None if value is None else (str(value) if not isinstance(value, (int, float)) else value)
        raise ConfigError(f"{dotted} expects a string (path, URI or id) or null, got {value!r}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{dotted} expects true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{dotted} expects an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{dotted} expects a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{dotted} expects a string, got {value!r}")
        return str(value)
    if isinstance(default, list):
        if isinstance(value, str):
            value = [_parse_scalar(item) for item in value.split(",") if item.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{dotted} expects a list (YAML list or comma-separated), got {value!r}")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted} expects a mapping, got {value!r}")
        return value
    raise ConfigError(f"{dotted}: unsupported default type {type(default).__name__}")


def _assign(data: dict[str, Any], dotted: str, value: Any, *, parse: bool) -> None:
    default = _schema_default(dotted)
    if isinstance(value, str) and parse:
        value = _parse_scalar(value)
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if isinstance(default, dict) and default and isinstance(value, dict):
        for key, sub in value.items():
            _assign(data, f"{dotted}.{key}", sub, parse=False)
        return
    node[parts[-1]] = _coerce(dotted, value, default)


def _overlay(data: dict[str, Any], overlay: Mapping[str, Any], prefix: str = "") -> None:
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        default = _schema_default(dotted)
        if isinstance(default, dict) and default:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted} is a section; expected a mapping, got {value!r}")
            _overlay(data, value, prefix=f"{dotted}.")
        else:
            _assign(data, dotted, value, parse=False)


def _validate(data: dict[str, Any]) -> None:
    split = data["ingest"]["split"]
    if len(split) != 3 or any(not isinstance(f, (int, float)) or f < 0 for f in split) or abs(sum(split) - 1) > 1e-6:
        raise ConfigError(f"ingest.split must be three non-negative fractions summing to 1, got {split!r}")
    for key in ("ingest.max_error_rate", "score.max_error_rate", "score.tumor_threshold", "score.mask_threshold"):
        section, name = key.split(".")
        value = data[section][name]
        if value is None and key == "score.tumor_threshold":
            continue  # null: the classifier's own operating point
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"{key} must be between 0 and 1, got {value!r}")
    positive = ("ingest.image_size", "ingest.fetch_threads", "train.num_proc", "train.epochs", "train.batch_size",
                "train.image_size", "train.grad_accum_steps", "train.threads_per_proc", "train.base_filters",
                "score.batch_size", "score.max_object_mb")
    for key in positive:
        section, name = key.split(".")
        if data[section][name] < 1:
            raise ConfigError(f"{key} must be at least 1, got {data[section][name]!r}")
    if data["train"]["lr"] <= 0:
        raise ConfigError(f"train.lr must be positive, got {data['train']['lr']!r}")
    target = data["train"]["target_sensitivity"]
    if not 0 < target <= 1:
        raise ConfigError(f"train.target_sensitivity must be in (0, 1], got {target!r}")


def load_config(conf_files: Iterable[str | os.PathLike] = (), overrides: Iterable[str] = (),
                values: Mapping[str, Any] | None = None) -> Config:
    """Build the job configuration.

    Order (later wins): the embedded default, each ``conf_files`` YAML overlay, ``values`` (dotted key ->
    already-typed value, e.g. from command-line flags; ``None`` values are skipped), then ``overrides``
    strings ``"section.key=value"`` (values parsed as YAML scalars).

    Raises ConfigError naming the key for unknown keys, wrong types and values outside the accepted set,
    and FileNotFoundError naming the file for a missing ``--conf``.
    """
    data = copy.deepcopy(_schema())
    for path in conf_files:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        with open(path, encoding="utf-8") as handle:
            overlay = yaml.safe_load(handle) or {}
        if not isinstance(overlay, Mapping):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(overlay).__name__}")
        try:
            _overlay(data, overlay)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err
    for dotted, value in (values or {}).items():
        if value is not None:
            _assign(data, dotted, value, parse=False)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        dotted, text = item.split("=", 1)
        _assign(data, dotted.strip(), text, parse=True)
    _validate(data)
    return Config(data)
