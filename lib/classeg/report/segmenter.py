"""The segmenter section: the artifact's description, the test metrics recorded in model.json (either
spelling of the tumour metrics: ``dice_tumor`` or, in older files, ``dice_tumour``), its training curves
and the report's own Dice distribution over the test slices with tumour."""
from __future__ import annotations

from classeg.plots import dice_histogram_png
from classeg.report.evaluation import evaluate_segmenter, recompute
from classeg.report.markup import figure, fmt, metric, missing, recorded_table
from classeg.report.model_section import curves_figure, describe_model, open_model
from classeg.report.section import ReportContext, Section

DICE_TUMOR = ("dice_tumor", "dice_tumour")
RECORDED = (("Dice (tumour images)", DICE_TUMOR), ("Dice (all images)", ("dice",)),
            ("IoU (tumour images)", ("iou_tumor", "iou_tumour")), ("Dice (pooled pixels)", ("dice_global",)),
            ("detection rate", ("detection_rate",)), ("loss", ("loss",)))


def _details(meta: dict) -> str:
    arch = meta.get("architecture", {})
    return (f"ResUNet, base filters {fmt(arch.get('base_filters', arch.get('config', {}).get('base_filters')))}, "
            f"input {fmt(meta.get('input', {}).get('size'))} px")


def _recomputed(ctx: ReportContext, evaluation: dict, recorded_dice) -> str:
    ctx.keys["segmenter_dice"] = evaluation["mean"] if recorded_dice is None else recorded_dice
    ctx.keys["segmenter_dice_recomputed"] = evaluation["mean"]
    ctx.keys["segmenter_test_scans"] = evaluation["scans"]
    dice = evaluation["dice"]
    histogram = ctx.save("dice_distribution.png", dice_histogram_png(dice, title="Dice per test slice with tumour"))
    ctx.sections["segmenter"] = "ok"
    return (f"<p>Recomputed by this report on <b>{evaluation['scans']}</b> test slices with tumour: mean Dice "
            f"<b>{fmt(evaluation['mean'])}</b>, median {fmt(evaluation['median'])}, "
            f"{int((dice >= 0.5).sum())} of {len(dice)} slices with Dice at least 0.5.</p>"
            + figure(histogram, "histogram of Dice", "Dice distribution on the test split (tumour slices)"))


def render(ctx: ReportContext) -> str:
    heading, meta = open_model(ctx, "segmenter", ctx.sources.segmenter)
    if meta is None:
        return heading
    recorded = meta.get("metrics") or {}
    recorded_dice = metric(recorded, *DICE_TUMOR, "dice")
    parts = [heading, describe_model(meta, ctx.sources.segmenter, _details(meta)), recorded_table(recorded, RECORDED),
             curves_figure(ctx, "segmenter", meta)]
    evaluation, why = recompute(evaluate_segmenter, ctx.sources.segmenter, ctx.sources.scans,
                                max_scans=ctx.max_eval_scans, what="segmenter")
    if evaluation is None:
        ctx.keys["segmenter_dice"] = recorded_dice
        ctx.sections["segmenter"] = f"recorded metrics only: {why}"
        return "".join(parts) + missing(f"Dice distribution not recomputed ({why}).")
    return "".join(parts) + _recomputed(ctx, evaluation, recorded_dice)


SECTION = Section(name="segmenter", render=render, key_labels=(
    ("segmenter_dice", "segmenter test Dice (tumour slices)"),))
