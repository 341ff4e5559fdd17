"""Input conversion and checks shared by the metrics modules, and the JSON-ready output conversion."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def to_numpy(values: Any, name: str) -> np.ndarray:
    """``values`` (numpy array, torch tensor on any device, or sequence) as a numeric numpy array."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be array-like, got {type(values).__name__}") from err
    if array.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got {values!r:.200}")
    return array


def check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return int(num_classes)


def labels(values: Any, name: str, num_classes: int | None = None) -> np.ndarray:
    """(N,) int64 class labels in ``[0, num_classes)``; integral floats and booleans are accepted."""
    array = to_numpy(values, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class labels, got shape {array.shape}")
    if array.size and not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.mod(array, 1) == 0):
            raise ValueError(f"{name} must hold integer class labels, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} labels must be >= 0, got {array.min()}")
    if num_classes is not None and array.size and array.max() >= num_classes:
        raise ValueError(f"{name} labels must be < num_classes={num_classes}, got {array.max()}")
    return array


def safe_divide(numerator: Any, denominator: Any) -> np.ndarray:
    """Elementwise ``numerator / denominator`` in float64, 0.0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def clip_probability(values: np.ndarray, name: str) -> np.ndarray:
    """Finite float ``values`` checked to lie in [0, 1] and clipped there.

    Float rounding may overshoot [0, 1] by an ulp (a sum of softmax columns can exceed 1); anything more is
    not a probability.
    """
    outside = np.flatnonzero((values < -1e-6) | (values > 1 + 1e-6))
    if outside.size:
        raise ValueError(f"{name} must lie in [0, 1], got {values[outside[0]]!r} at index {outside[0]}")
    return np.clip(values, 0.0, 1.0)


def batch_loss(loss: Any) -> float:
    """A batch's mean loss (float or 0-d tensor) as a finite float."""
    value = float(loss.item() if hasattr(loss, "item") else loss)
    if not np.isfinite(value):
        raise ValueError(f"loss must be finite, got {value!r}")
    return value


def as_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready copy of a metrics dict: numpy arrays -> lists, numpy scalars -> Python numbers."""
    if not isinstance(values, Mapping):
        raise ValueError(f"values must be a mapping, got {type(values).__name__}")

    def convert(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return convert(values)
