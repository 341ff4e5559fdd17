"""The errors section: every file that did not become a scan (ingest errors and skipped files) or a score
(scoring error rows), grouped by stage, severity and reason, with a few examples each (named by their :mod:`classeg.redact`
labels)."""
from __future__ import annotations

from classeg import redact
from classeg.report.loading import read_ingest, read_scores
from classeg.report.markup import table
from classeg.report.section import ReportContext, Section


def _ingest_rows(ctx: ReportContext) -> list[list]:
    _, errors = read_ingest(ctx.sources.scans)
    rows = []
    for severity in ("error", "skipped"):
        subset = errors[errors["severity"] == severity] if len(errors) else errors
        for reason, group in subset.groupby("reason") if len(subset) else []:
            examples = ", ".join(redact.label(relpath) for relpath in group["relpath"].astype(str).head(3))
            rows.append(["ingest", severity, reason, len(group), examples])
    return rows


def _scoring_rows(ctx: ReportContext) -> list[list]:
    from classeg.errors import error_kind

    scores = read_scores(ctx.sources.scores)
    failed = scores[scores["status"] == "error"] if len(scores) else scores
    if not len(failed):
        return []
    rows = []
    kinds = failed["error"].map(lambda e: error_kind(e) or "unknown")
    for kind, group in failed.groupby(kinds):
        examples = "; ".join(f"{redact.label(k)}: {str(e)[:90]}" for k, e in zip(group["key"].head(3), group["error"]))
        rows.append(["scoring", "error", kind, len(group), examples])
    return rows


def render(ctx: ReportContext) -> str:
    parts = ["<h2 id='errors'>Errors</h2>",
             "<p>Bad inputs are data, not crashes: every file that did not become a scan or a score is listed "
             "with its reason.</p>"]
    rows = (_ingest_rows(ctx) if ctx.sources.scans is not None else []) + \
        (_scoring_rows(ctx) if ctx.sources.scores is not None else [])
    if not rows:
        ctx.sections["errors"] = "no errors recorded"
        return "".join(parts) + "<p>No errors recorded.</p>"
    ctx.keys["errors_by_reason"] = {f"{r[0]}:{r[2]}": r[3] for r in rows if r[1] == "error"}
    parts.append(table(["stage", "severity", "reason", "files", "examples"], rows,
                       caption="Errors and skipped files by reason"))
    ctx.sections["errors"] = "ok"
    return "".join(parts)


SECTION = Section(name="errors", render=render)
