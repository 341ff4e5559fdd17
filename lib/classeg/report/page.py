"""Assembling the report: run every section in page order, write ``index.html`` (key numbers first) and
``summary.json`` into the report folder."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from classeg.artifact import json_default
from classeg.report.classifier import SECTION as CLASSIFIER
from classeg.report.classseg import SECTION as CLASSSEG
from classeg.report.dataset import SECTION as DATASET
from classeg.report.errors import SECTION as ERRORS
from classeg.report.markup import CSS, esc, fmt, missing
from classeg.report.pipeline import SECTION as PIPELINE
from classeg.report.scoring import SECTION as SCORING
from classeg.report.section import ReportContext, Section
from classeg.report.segmenter import SECTION as SEGMENTER
from classeg.report.sources import locate

log = logging.getLogger(__name__)

REPORT_DIR = "report"
INDEX_NAME = "index.html"
SUMMARY_NAME = "summary.json"
# Page order; the key-number strip follows it too.
SECTIONS: tuple[Section, ...] = (DATASET, CLASSIFIER, SEGMENTER, CLASSSEG, SCORING, ERRORS, PIPELINE)


def _clear(out: Path) -> None:
    """Remove what an earlier report left in ``out`` (its PNGs, page, summary and gallery), so that no stale
    figure survives; leave anything else alone."""
    if out.exists():
        for old in list(out.glob("*.png")) + [out / INDEX_NAME, out / SUMMARY_NAME]:
            if old.is_file():
                old.unlink()
        if (out / "gallery").is_dir():
            shutil.rmtree(out / "gallery")
    (out / "gallery").mkdir(parents=True, exist_ok=True)


def _key_numbers_html(keys: dict[str, Any], sections=SECTIONS) -> str:
    items = [f"<li>{esc(label)}<b>{esc(fmt(keys[name]))}</b></li>"
             for section in sections for name, label in section.key_labels if name in keys]
    if not items:
        return missing("No pipeline outputs found in this work directory yet.")
    return "<h2 id='key-numbers'>Key numbers</h2><ul class='keys'>" + "".join(items) + "</ul>"


def _page(ctx: ReportContext, body: list[str], created: str) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>classeg pipeline report</title><style>{CSS}</style></head><body>"
            "<h1>classeg pipeline report</h1>"
            f"<p>Work directory <code>{esc(ctx.sources.workdir)}</code>; generated {esc(created)}.</p>"
            f"{_key_numbers_html(ctx.keys)}{''.join(body)}</body></html>\n")


def build_report(workdir: str | os.PathLike, output: str | os.PathLike | None = None, *,
                 max_eval_scans: int = 2000, gallery_size: int = 12) -> dict:
    """Write the report for ``workdir`` into ``output`` (default ``<workdir>/report``); return its summary:
    ``index`` (path of index.html), ``images`` (PNG names), ``key_numbers`` and ``sections`` (name ->
    "ok" or why it is not available). The output folder's old PNGs are removed first."""
    started = time.time()
    sources = locate(workdir)
    out = Path(output).resolve() if output else sources.workdir / REPORT_DIR
    _clear(out)
    ctx = ReportContext(sources=sources, out=out, max_eval_scans=max_eval_scans, gallery_size=gallery_size)
    body = [section.render(ctx) for section in SECTIONS]
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (out / INDEX_NAME).write_text(_page(ctx, body, created), encoding="utf-8")
    images = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    summary = {"index": str(out / INDEX_NAME), "created_at": created, "workdir": str(sources.workdir),
               "images": images, "key_numbers": ctx.keys, "sections": ctx.sections,
               "seconds": round(time.time() - started, 2)}
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, default=json_default), encoding="utf-8")
    log.info("report: %s (%d images, %.1fs)", out / INDEX_NAME, len(images), summary["seconds"])
    return summary
