"""The dataset section: the scan table's ingest summary (scans and patients per split and class, files)."""
from __future__ import annotations

from classeg.plots import class_counts_png
from classeg.report.loading import read_ingest
from classeg.report.markup import esc, figure, fmt, missing, table
from classeg.report.section import ReportContext, Section

SPLITS = ("train", "val", "test")


def render(ctx: ReportContext) -> str:
    parts = ["<h2 id='dataset'>Dataset (scan table)</h2>"]
    if ctx.sources.scans is None:
        ctx.sections["dataset"] = "no scan table (summary.json) found"
        return "".join(parts) + missing("No scan table found: the ingest stage has not run.")
    summary, _ = read_ingest(ctx.sources.scans)
    per_split = summary.get("per_split", {})
    patients = summary.get("patients", {})
    files = summary.get("files", {})
    keys = ctx.keys
    keys["scans"] = int(summary.get("scans", 0))
    keys["patients"] = int(patients.get("count", 0))
    keys["ingest_errors"] = int(files.get("errors", 0))
    parts.append(
        f"<p>Dataset <b>{esc(summary.get('dataset'))}</b> from "
        f"<code>{esc(summary.get('input'))}</code>, canonical size {fmt(summary.get('image_size'))} px: "
        f"<b>{keys['scans']}</b> scans from <b>{keys['patients']}</b> patients "
        f"({', '.join(f'{s} {per_split.get(s, 0)}' for s in SPLITS)}), "
        f"{fmt(summary.get('tumor_scans'))} with tumour. {esc(summary.get('split_note', ''))}.</p>")
    rows = [[name] + [counts.get(s, 0) for s in SPLITS] + [sum(counts.get(s, 0) for s in SPLITS)]
            for name, counts in (summary.get("per_class") or {}).items()]
    rows.append(["all classes"] + [per_split.get(s, 0) for s in SPLITS] + [keys["scans"]])
    rows.append(["patients"] + [patients.get("per_split", {}).get(s, 0) for s in SPLITS] + [keys["patients"]])
    parts.append(table(["class", *SPLITS, "total"], rows, caption="Scans per split and class"))
    parts.append(table(["files listed", "became scans", "masks", "errors", "skipped", "error rate"],
                       [[files.get("listed"), files.get("scans"), files.get("masks"), files.get("errors"),
                         files.get("skipped"), summary.get("error_rate")]], caption="Files"))
    counts = ctx.save("dataset_counts.png", class_counts_png(summary.get("per_class") or {}))
    parts.append(figure(counts, "bar chart of scans per split", "Scans per split, stacked by class"))
    ctx.sections["dataset"] = "ok"
    return "".join(parts)


SECTION = Section(name="dataset", render=render, key_labels=(
    ("scans", "scans in the scan table"), ("patients", "patients"), ("ingest_errors", "ingest errors")))
