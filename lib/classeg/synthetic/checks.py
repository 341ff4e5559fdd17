"""Argument checks of the synthetic writers: each raises ValueError naming the argument and the bad value."""
from __future__ import annotations

from typing import Any

import numpy as np


def check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_range(name: str, value: Any, *, minimum: int) -> tuple[int, int]:
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    if not ok or not minimum <= value[0] <= value[1]:
        raise ValueError(f"{name} must be (low, high) integers with {minimum} <= low <= high, got {value!r}")
    return int(value[0]), int(value[1])


def check_numbers(name: str, value: Any) -> frozenset[int]:
    if isinstance(value, (str, bytes)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value):
        raise ValueError(f"{name} must be a collection of file numbers >= 1, got {value!r}")
    return frozenset(int(v) for v in value)


def check_classes(classes: Any) -> list[str]:
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"classes must be a sequence of folder names, got {classes!r}")
    names = list(classes)
    bad = [c for c in names if not c.strip() or "/" in c or "\\" in c or c in (".", "..")
           or c.lower() in ("training", "testing")]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct non-empty folder names (no '/', not Training/Testing), "
                         f"got {classes!r}")
    return names
