"""HTML building blocks of the report page: number formatting, tables, figures, notes, the stylesheet, and
the lookup of recorded metrics in a model.json ``metrics`` dict. Every value is escaped."""
from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1200px;
       color: #1f2328; background: #ffffff; line-height: 1.45; padding: 0 16px; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: 6px; }
h2 { margin-top: 36px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 10px 0 18px 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; }
th { background: #f6f8fa; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
figure { display: inline-block; margin: 8px 16px 8px 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 13px; color: #57606a; max-width: 520px; }
.keys { display: flex; flex-wrap: wrap; gap: 10px; padding: 0; list-style: none; }
.keys li { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 12px; }
.keys b { display: block; font-size: 20px; }
.gallery figure { width: 200px; }
.gallery img { width: 192px; image-rendering: pixelated; }
.missing { color: #9a6700; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle; }
"""


def fmt(value: Any, digits: int = 3) -> str:
    """A value as page text: None and non-finite floats "n/a", booleans "yes"/"no", floats to ``digits``."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.{digits}f}"
    return str(value)


def esc(value: Any) -> str:
    """``str(value)`` escaped for HTML."""
    return html.escape(str(value))


def table(header, rows, *, caption: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(name: str | None, alt: str, caption: str) -> str:
    """An image with its caption, or a "not available" note when there is no image (``name`` None)."""
    if not name:
        return f"<p class='missing'>{html.escape(caption)}: not available.</p>"
    return (f"<figure><img src='{html.escape(name)}' alt='{html.escape(alt)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def missing(text: str) -> str:
    return f"<p class='missing'>{html.escape(text)}</p>"


def metric(metrics: dict | None, *names: str) -> Any:
    """The first of ``names`` found in a model.json ``metrics`` dict, plain, ``test_``-prefixed or under a
    ``test`` sub-dict; None when none is a number."""
    if not isinstance(metrics, dict):
        return None
    places = [metrics] + [metrics[k] for k in ("test",) if isinstance(metrics.get(k), dict)]
    for name in names:
        for place in places:
            for key in (name, f"test_{name}"):
                value = place.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return value
    return None


def recorded_table(recorded: dict, rows) -> str:
    """The table of test metrics recorded in model.json: ``rows`` are (label, metric names in order of
    preference); metrics not recorded are left out, and so is the table when none is."""
    found = [[label, metric(recorded, *names)] for label, names in rows]
    found = [row for row in found if row[1] is not None]
    if not found:
        return ""
    return table(["recorded test metric (model.json)", "value"], found, caption="Test metrics recorded at training")
