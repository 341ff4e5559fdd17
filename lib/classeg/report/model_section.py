"""What the classifier and segmenter sections share: the heading (or the note that there is no artifact),
the sentence describing the model, and the training-curves figure from model.json's history."""
from __future__ import annotations

import json
from pathlib import Path

from classeg.plots import training_curves_png
from classeg.report.markup import esc, figure, missing
from classeg.report.section import ReportContext


def open_model(ctx: ReportContext, name: str, artifact: Path | None) -> tuple[str, dict | None]:
    """(heading HTML, model.json) of the ``name`` ("classifier" | "segmenter") section; without an artifact,
    the heading with a note saying so and None (the section's status is recorded)."""
    heading = f"<h2 id='{name}'>{name.capitalize()}</h2>"
    if artifact is None:
        ctx.sections[name] = f"no {name} artifact found"
        return heading + missing(f"No {name} artifact found: the {name} has not been trained."), None
    return heading, json.loads((artifact / "model.json").read_text(encoding="utf-8"))


def curves_figure(ctx: ReportContext, name: str, meta: dict) -> str:
    """The ``<name>_curves.png`` figure of model.json's per-epoch history (a note when there is none)."""
    curves = ctx.save(f"{name}_curves.png", training_curves_png(meta.get("history") or [],
                                                                title=f"{name} training curves"))
    return figure(curves, f"{name} training curves", "Training curves (per epoch, from model.json history)")


def describe_model(meta: dict, artifact: Path, details: str) -> str:
    """The paragraph naming the model, its ``details`` (HTML, already escaped), epochs trained and artifact."""
    epochs = len(meta.get("history") or [])
    return (f"<p>Model <code>{esc(meta.get('model_id'))}</code> ({details}), trained {epochs} epochs; artifact "
            f"<code>{esc(artifact)}</code>.</p>")
