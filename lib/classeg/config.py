"""Typed job configuration: the embedded YAML default, `--conf FILE` overlays and `--set key=value` overrides.

Two halves, each written once: :mod:`classeg.sections` declares every section as a frozen dataclass (which
keys exist and each value's type, ``Literal[...]`` for a closed set of values) and the embedded default
``conf/local.yaml`` holds every default value. Their keys must agree; a YAML key without a field, or a field
without a default, is a ConfigError naming both. `CHOICES` is read off the ``Literal`` annotations.

Every value given is coerced and checked against its field's annotation. Anything else is an error that names
the key, what was accepted and the value given, so a typo never silently falls back to a default.

A `Config` holds one section instance per section (``cfg.train`` is a :class:`~classeg.sections.TrainSection`)
and pickles cheaply to executors.
"""
from __future__ import annotations

import copy
import datetime
import functools
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from classeg.errors import ConfigError
from classeg.sections import SECTIONS, Section

__all__ = ["CHOICES", "Config", "ConfigError", "DEFAULT_PATH", "FIELD_TYPES", "load_config"]

DEFAULT_PATH = Path(__file__).resolve().parent / "conf" / "local.yaml"

# Section -> field -> annotation (resolved), the schema every value is checked against.
FIELD_TYPES: dict[str, dict[str, Any]] = {name: get_type_hints(cls) for name, cls in SECTIONS.items()}


def _optional(hint: Any) -> Any | None:
    """``X`` for an ``X | None`` annotation, else None."""
    if get_origin(hint) in (typing.Union, types.UnionType) and type(None) in get_args(hint):
        rest = [arg for arg in get_args(hint) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
    return None


def _literal_choices(hint: Any) -> tuple | None:
    inner = _optional(hint)
    hint = hint if inner is None else inner
    return get_args(hint) if get_origin(hint) is Literal else None


# Dotted key -> its accepted values, for every Literal field (the CLI's choices come from here).
CHOICES: dict[str, tuple[str, ...]] = {
    f"{section}.{name}": choices
    for section, hints in FIELD_TYPES.items() for name, hint in hints.items()
    if (choices := _literal_choices(hint)) is not None
}

# ------------------------------------------------------------------------------------------- the Config object


class Config:
    """Validated configuration, read-only: ``cfg.train.engine`` (a frozen section dataclass) or
    ``cfg["train.engine"]``. Build it with :func:`load_config`; change it with :meth:`replace`."""

    def __init__(self, data: Mapping[str, Mapping[str, Any]]):
        object.__setattr__(self, "_sections", _sections_of(data))

    def __getattr__(self, name: str) -> Section:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._sections[name]
        except KeyError:
            raise AttributeError(f"no config section {name!r}; known: {list(SECTIONS)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Config is read-only; use cfg.replace({name}__key=value) for a changed copy")

    def __getitem__(self, dotted: str) -> Any:
        section, _, rest = dotted.partition(".")
        if section not in self._sections:
            raise KeyError(dotted)
        node: Any = self._sections[section]
        if not rest:
            return node
        name, _, map_key = rest.partition(".")
        if name not in FIELD_TYPES[section]:
            raise KeyError(dotted)
        node = getattr(node, name)
        if map_key:  # a free-form map's keys may hold dots themselves (spark.extra.spark.executor.memory)
            if not isinstance(node, dict) or map_key not in node:
                raise KeyError(dotted)
            node = node[map_key]
        return node

    def __getstate__(self) -> dict[str, dict[str, Any]]:
        return self.to_dict()

    def __setstate__(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        object.__setattr__(self, "_sections", _sections_of(state))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and other._sections == self._sections

    __hash__ = None  # equal configs may hold lists and maps

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """A deep, mutable copy: section -> key -> value."""
        return {name: section.to_dict() for name, section in self._sections.items()}

    def replace(self, **dotted_values: Any) -> "Config":
        """A copy with values set by dotted key (use ``__`` for ``.`` in keyword names), validated like
        :func:`load_config`."""
        data = self.to_dict()
        for key, value in dotted_values.items():
            _assign(data, key.replace("__", "."), value, parse=False)
        _validate(data)
        return Config(data)


def _sections_of(data: Mapping[str, Mapping[str, Any]]) -> dict[str, Section]:
    """The section instances for already-coerced ``data``; ConfigError naming missing or unknown keys."""
    unknown = sorted(set(data) - set(SECTIONS))
    missing = [name for name in SECTIONS if name not in data]
    if unknown or missing:
        raise ConfigError(f"config sections must be {list(SECTIONS)}; unknown {unknown}, missing {missing}")
    sections = {}
    for name, cls in SECTIONS.items():
        values = data[name]
        fields = FIELD_TYPES[name]
        unknown, missing = sorted(set(values) - set(fields)), [key for key in fields if key not in values]
        if unknown or missing:
            raise ConfigError(f"section {name!r} ({cls.__name__}) has unknown keys {unknown} and lacks {missing}")
        sections[name] = cls(**{key: values[key] for key in fields})
    return sections


# ----------------------------------------------------------------------------------- coercion by annotation

_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_MISMATCH = object()


def _to_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _BOOL_WORDS.get(value.lower(), _MISMATCH)
    return _MISMATCH


def _to_int(value: Any) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) else _MISMATCH


def _to_float(value: Any) -> Any:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _MISMATCH


def _to_str(value: Any) -> Any:
    if isinstance(value, datetime.date):  # YAML reads an unquoted 2026-01-31 (e.g. score.run_date) as a date
        return value.isoformat()
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return _MISMATCH
    return str(value)


# Scalar annotation -> (converter returning _MISMATCH on a wrong type, what the error says is accepted).
_SCALARS: dict[Any, tuple[Any, str]] = {
    bool: (_to_bool, "true or false"),
    int: (_to_int, "an integer"),
    float: (_to_float, "a number"),
    str: (_to_str, "a string"),
}


def _coerce(dotted: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` says (``dotted`` names the key in errors); ConfigError when it cannot be."""
    if hint is Any:
        return value
    inner = _optional(hint)
    if inner is not None:
        if value is None:
            return None
        hint, or_null = inner, " or null"
    else:
        or_null = ""
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{dotted} must be one of {list(get_args(hint))}{or_null}, got {value!r}")
        return value
    if origin is list:
        return _coerce_list(dotted, value, get_args(hint)[0], or_null)
    if origin is dict:
        key_hint, value_hint = get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{dotted} expects a mapping{or_null}, got {value!r}")
        return {_coerce(f"{dotted} (a key)", key, key_hint): _coerce(f"{dotted}.{key}", item, value_hint)
                for key, item in value.items()}
    if hint not in _SCALARS:
        raise ConfigError(f"{dotted}: classeg.sections declares unsupported type {hint!r}")
    convert, accepted = _SCALARS[hint]
    converted = convert(value)
    if converted is _MISMATCH:
        raise ConfigError(f"{dotted} expects {accepted}{or_null}, got {value!r}")
    return converted


def _coerce_list(dotted: str, value: Any, item_hint: Any, or_null: str) -> list:
    if isinstance(value, str):  # comma-separated, as --set ingest.split=0.8,0.1,0.1 gives it
        items = [item.strip() for item in value.split(",") if item.strip()]
        # String items stay as typed (a class named "no" or "007"); others are YAML scalars (numbers).
        value = items if item_hint is str else [_parse_scalar(item) for item in items]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{dotted} expects a list (YAML list or comma-separated){or_null}, got {value!r}")
    return [_coerce(f"{dotted}[{index}]", item, item_hint) for index, item in enumerate(value)]


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else ""


def _takes_text(hint: Any) -> bool:
    """Whether a ``--set`` value for ``hint`` is the text as typed rather than a YAML scalar."""
    inner = _optional(hint)
    hint = hint if inner is None else inner
    choices = _literal_choices(hint)
    return hint is str or (choices is not None and all(isinstance(choice, str) for choice in choices))


def _parse_text(text: str, hint: Any) -> Any:
    """A ``--set`` value: YAML (numbers, lists, maps, null, quoted strings), except that a string field keeps
    the text as typed where YAML would read a number, bool or date (run id 0042 stays "0042", not 34)."""
    parsed = _parse_scalar(text)
    if isinstance(parsed, (bool, int, float, datetime.date)) and _takes_text(hint):
        return text.strip()
    return parsed


# ------------------------------------------------------------------------------------------ keys and values


def _lookup(dotted: str) -> tuple[str, str | None, str | None]:
    """(section, field or None for a whole section, key inside a free-form map or None) of ``dotted``;
    ConfigError naming the key and what the level above it accepts when it does not exist."""
    section, _, rest = dotted.partition(".")
    if section not in FIELD_TYPES:
        raise ConfigError(f"unknown config key {dotted!r}: the top level accepts {sorted(FIELD_TYPES)}")
    if not rest:
        return section, None, None
    name, _, map_key = rest.partition(".")
    fields = FIELD_TYPES[section]
    if name not in fields:
        raise ConfigError(f"unknown config key {dotted!r}: section {section!r} accepts {sorted(fields)}")
    if map_key and get_origin(fields[name]) is not dict:
        raise ConfigError(f"unknown config key {dotted!r}: {section}.{name} is a single value, not a map")
    return section, name, map_key or None


def _assign(data: dict[str, dict[str, Any]], dotted: str, value: Any, *, parse: bool) -> None:
    """Set ``dotted`` in ``data`` to ``value`` coerced by its annotation (``parse``: ``value`` is ``--set``
    text). A whole section takes a mapping of its keys; ``section.map.key`` sets one entry of a map."""
    section, name, map_key = _lookup(dotted)
    if name is None:
        if isinstance(value, str) and parse:
            value = _parse_scalar(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{dotted} is a section; expected a mapping, got {value!r}")
        for key, item in value.items():
            _assign(data, f"{dotted}.{key}", item, parse=False)
        return
    hint = FIELD_TYPES[section][name]
    if map_key is not None:
        hint = get_args(hint)[1]
    if isinstance(value, str) and parse:
        value = _parse_text(value, hint)
    if map_key is not None:
        data[section][name] = {**data[section][name], map_key: _coerce(dotted, value, hint)}
    else:
        data[section][name] = _coerce(dotted, value, hint)


@functools.lru_cache(maxsize=4)
def _read_defaults(path: Path) -> dict[str, dict[str, Any]]:
    """The default file's values, coerced; ConfigError when its keys and the section dataclasses differ."""
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    where = f"default config {str(path)!r}"
    if not isinstance(raw, Mapping) or set(raw) != set(SECTIONS):
        found = sorted(raw) if isinstance(raw, Mapping) else type(raw).__name__
        raise ConfigError(f"{where} must hold the sections {list(SECTIONS)}, found {found}")
    defaults: dict[str, dict[str, Any]] = {}
    for section, cls in SECTIONS.items():
        values, fields = raw[section] or {}, FIELD_TYPES[section]
        extra, lacking = sorted(set(values) - set(fields)), sorted(set(fields) - set(values))
        if extra or lacking:
            raise ConfigError(f"{where} section {section!r} and {cls.__module__}.{cls.__name__} differ: keys "
                              f"without a field {extra}, fields without a default {lacking}")
        defaults[section] = {name: _coerce(f"{section}.{name}", values[name], hint) for name, hint in fields.items()}
    return defaults


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
                "train.loader_threads", "score.batch_size", "score.max_object_mb")
    for key in positive:
        section, name = key.split(".")
        if data[section][name] < 1:
            raise ConfigError(f"{key} must be at least 1, got {data[section][name]!r}")
    if data["train"]["checkpoint_every_steps"] < 0:
        raise ConfigError("train.checkpoint_every_steps must be 0 (off) or a number of optimiser steps, got "
                          f"{data['train']['checkpoint_every_steps']!r}")
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
    strings ``"section.key=value"`` (values parsed as YAML scalars; a string key keeps the text as typed).

    Raises ConfigError naming the key for unknown keys, wrong types and values outside the accepted set,
    and FileNotFoundError naming the file for a missing ``--conf``.
    """
    data = copy.deepcopy(_read_defaults(DEFAULT_PATH))
    for path in conf_files:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        with open(path, encoding="utf-8") as handle:
            overlay = yaml.safe_load(handle) or {}
        if not isinstance(overlay, Mapping):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, "
                              f"got {type(overlay).__name__}")
        try:
            for key, value in overlay.items():
                _assign(data, str(key), value, parse=False)
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
