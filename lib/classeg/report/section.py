"""What a report section is: a function from a :class:`ReportContext` to HTML, plus the key numbers it
contributes to the page's key-number strip. A new section is a module defining one :class:`Section`, listed
in :data:`classeg.report.page.SECTIONS`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classeg.report.sources import Sources


@dataclass
class ReportContext:
    """Everything a section reads, and the two dicts every section writes: ``keys`` (key numbers, written
    to summary.json as ``key_numbers``) and ``sections`` (section name -> "ok" or why it is not available).
    ``out`` is the report folder; figures are saved below it under relative names."""

    sources: Sources
    out: Path
    max_eval_scans: int = 2000
    gallery_size: int = 12
    keys: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, str] = field(default_factory=dict)

    def save(self, name: str, png: bytes | None) -> str | None:
        """Write ``png`` to ``out/name`` (``name`` relative, may name a subfolder); return ``name``, or None
        when there is no figure."""
        if png is None:
            return None
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return name


@dataclass(frozen=True)
class Section:
    """One part of the page. ``render`` returns its HTML (possibly empty) and records its key numbers and
    status in the context; ``key_labels`` are the (key, label) pairs the page shows, in this order, for the
    keys it set."""

    name: str
    render: Callable[[ReportContext], str]
    key_labels: tuple[tuple[str, str], ...] = ()
