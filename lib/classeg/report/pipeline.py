"""The pipeline section: the stages of the last ``classeg demo`` run, from ``pipeline.json`` (absent
without one)."""
from __future__ import annotations

from classeg.report.markup import table
from classeg.report.section import ReportContext, Section


def render(ctx: ReportContext) -> str:
    pipeline = ctx.sources.pipeline
    stages = pipeline.get("stages") if pipeline else None
    if not stages:
        return ""
    rows = [[name, stage.get("status"), f"{stage.get('seconds') or 0:.1f}", stage.get("output"), stage.get("note", "")]
            for name, stage in stages.items() if name != "report"]
    return "<h2 id='pipeline'>Pipeline run</h2>" + table(["stage", "status", "seconds", "output", "note"], rows,
                                                         caption="Stages of the last demo run")


SECTION = Section(name="pipeline", render=render)
