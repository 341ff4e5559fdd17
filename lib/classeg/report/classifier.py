"""The classifier section: the artifact's description, the test metrics recorded in model.json, its training
curves, the report's own recomputation on the test split (per-class table, confusion matrix, ROC curve) and
the operating point where model.json records one."""
from __future__ import annotations

from classeg.plots import confusion_matrix_png, roc_curve_png
from classeg.report.evaluation import evaluate_classifier, recompute
from classeg.report.markup import esc, figure, fmt, metric, missing, recorded_table, table
from classeg.report.model_section import curves_figure, describe_model, open_model
from classeg.report.operating_point import OperatingPoints, read_operating_points, rates_on_test_split_html
from classeg.report.section import ReportContext, Section

RECORDED = (("accuracy", ("accuracy",)), ("balanced accuracy", ("balanced_accuracy",)),
            ("ROC AUC", ("roc_auc", "auc")), ("F1 (macro)", ("f1_macro",)), ("loss", ("loss",)))


def _operating_points(meta: dict) -> tuple[OperatingPoints | None, str]:
    """(points or None, HTML stating them or why they are ignored)."""
    try:
        points = read_operating_points(meta)
    except ValueError as err:
        return None, missing(f"The operating point in model.json is ignored: {err}.")
    return points, points.html() if points is not None else ""


def _details(meta: dict, names: list) -> str:
    arch = meta.get("architecture", {})
    return (f"{esc(arch.get('arch', '?'))}, head {esc(arch.get('head', '?'))}, "
            f"input {fmt(meta.get('input', {}).get('size'))} px, classes {esc(', '.join(names))}")


def _recorded_only(ctx: ReportContext, recorded: dict, names: list, why: str) -> str:
    """Key numbers and the recorded confusion matrix when the test split could not be recomputed."""
    ctx.keys["classifier_accuracy"] = metric(recorded, "accuracy")
    recorded_auc = metric(recorded, "roc_auc", "auc")
    if recorded_auc is not None:
        ctx.keys["classifier_auc"] = recorded_auc
    parts = [missing(f"Not recomputed on the test split ({why}).")]
    cm = recorded.get("confusion_matrix") if isinstance(recorded, dict) else None
    if cm and names:
        name = ctx.save("confusion_matrix.png", confusion_matrix_png(cm, names, title="confusion matrix (recorded)"))
        parts.append(figure(name, "confusion matrix", "Confusion matrix recorded in model.json"))
    ctx.sections["classifier"] = f"recorded metrics only: {why}"
    return "".join(parts)


def _recomputed(ctx: ReportContext, evaluation: dict, recorded: dict, names: list, meta: dict,
                points: OperatingPoints | None) -> str:
    """Key numbers, tables and figures from the report's own run over the test split."""
    report = evaluation["report"]
    recorded_accuracy, recorded_auc = metric(recorded, "accuracy"), metric(recorded, "roc_auc", "auc")
    ctx.keys["classifier_accuracy"] = report["accuracy"] if recorded_accuracy is None else recorded_accuracy
    ctx.keys["classifier_auc"] = report.get("roc_auc") if recorded_auc is None else recorded_auc
    ctx.keys["classifier_test_scans"] = evaluation["scans"]
    ctx.keys["classifier_accuracy_recomputed"] = report["accuracy"]
    parts = [f"<p>Recomputed by this report on <b>{evaluation['scans']}</b> test scans: accuracy "
             f"<b>{fmt(report['accuracy'])}</b>, balanced accuracy {fmt(report['balanced_accuracy'])}, "
             f"ROC AUC <b>{fmt(report.get('roc_auc'))}</b>, macro F1 {fmt(report['macro']['f1'])}.</p>"]
    if points is not None:
        parts.append(rates_on_test_split_html(points, meta, evaluation["y_true"], evaluation["probabilities"]))
    per_class = [[name, e["precision"], e["recall"], e["specificity"], e["f1"], e.get("roc_auc"), e["support"]]
                 for name, e in report["per_class"].items()]
    parts.append(table(["class", "precision", "recall", "specificity", "F1", "ROC AUC", "support"], per_class,
                       caption="Per-class metrics (test split)"))
    cm = report["confusion_matrix"]
    parts.append(table(["true \\ predicted", *names], [[n, *row] for n, row in zip(names, cm)],
                       caption="Confusion matrix (rows true, columns predicted)"))
    name = ctx.save("confusion_matrix.png", confusion_matrix_png(cm, names, title="confusion matrix (test)"))
    parts.append(figure(name, "confusion matrix", "Confusion matrix on the test split"))
    markers = points.markers() if points is not None else []
    roc = ctx.save("roc_curve.png", roc_curve_png(evaluation["y_true"], evaluation["probabilities"], names,
                                                  title="ROC curve (test)", markers=markers))
    caption = "ROC curve on the test split (needs both classes present)"
    if markers:
        caption += f"; markers: the operating points chosen on the {points.split} split"
    parts.append(figure(roc, "ROC curve", caption))
    ctx.sections["classifier"] = "ok"
    return "".join(parts)


def render(ctx: ReportContext) -> str:
    heading, meta = open_model(ctx, "classifier", ctx.sources.classifier)
    if meta is None:
        return heading
    recorded = meta.get("metrics") or {}
    names = list(meta.get("class_names", []))
    points, stated = _operating_points(meta)
    if points is not None:
        ctx.keys["classifier_threshold"] = points.chosen.threshold
    parts = [heading, describe_model(meta, ctx.sources.classifier, _details(meta, names)),
             recorded_table(recorded, RECORDED), stated, curves_figure(ctx, "classifier", meta)]
    evaluation, why = recompute(evaluate_classifier, ctx.sources.classifier, ctx.sources.scans,
                                max_scans=ctx.max_eval_scans, what="classifier")
    if evaluation is None:
        parts.append(_recorded_only(ctx, recorded, names, why))
    else:
        parts.append(_recomputed(ctx, evaluation, recorded, names, meta, points))
    return "".join(parts)


SECTION = Section(name="classifier", render=render, key_labels=(
    ("classifier_accuracy", "classifier test accuracy"), ("classifier_auc", "classifier test ROC AUC"),
    ("classifier_threshold", "classifier tumour threshold")))
