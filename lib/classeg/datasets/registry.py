"""The one registry of dataset layouts: ``ingest.dataset`` names one of LAYOUTS."""
from __future__ import annotations

from classeg.datasets import figshare, folders, lgg
from classeg.datasets.common import Layout

LAYOUTS: dict[str, Layout] = {module.DATASET: module for module in (lgg, figshare, folders)}


def get_layout(dataset: str) -> Layout:
    """The layout named ``dataset``; ValueError naming the known layouts otherwise."""
    try:
        return LAYOUTS[dataset]
    except KeyError:
        raise ValueError(f"dataset must be one of {sorted(LAYOUTS)}, got {dataset!r}") from None
