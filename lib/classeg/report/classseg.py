"""The end-to-end Class-Seg section: what ``classeg evaluate --classifier --segmenter`` measured on a split
whose truth is known (``<evaluation>/classseg_metrics.json``, see `classeg.evaluation.classseg`), and the
distribution of the pipeline's Dice per tumour slice from ``classseg_slices/`` beside it. Absent (no
heading, no status) when the work directory has no such evaluation, like the pipeline section.

The numbers: detection sensitivity and specificity at the classifier's operating point; the segmenter's Dice
on the true tumour slices alone; the pipeline's Dice on them, where a tumour the classifier missed counts 0;
false-alarm masks (tumour-free slices that came out with a non-empty mask); and per-patient Dice with pixels
pooled over each patient's slices, as Buda et al. (2019) report it (mean 0.82 on the LGG set), the anchor
for a reader comparing with the literature.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from classeg.evaluation.classseg import METRICS_NAME, SLICES_DIR
from classeg.plots import dice_histogram_png
from classeg.report.markup import esc, figure, fmt, missing, table
from classeg.report.section import ReportContext, Section

log = logging.getLogger(__name__)

HEADING = "<h2 id='classseg'>End-to-end Class-Seg</h2>"
#: Buda et al. 2019 (Comput. Biol. Med. 109: 218-225): mean per-patient Dice on the TCGA LGG FLAIR set.
BUDA_2019_PATIENT_DICE = 0.82
PATIENT_ROWS = 40  # patients listed in the table; the mean and median cover them all


def _read(folder: Path) -> dict:
    document = json.loads((folder / METRICS_NAME).read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("detection"), dict):
        raise ValueError(f"{folder / METRICS_NAME} has no 'detection' object")
    return document


def _slice_dice(folder: Path) -> list[float] | None:
    """The pipeline's Dice on each true tumour slice, from the per-slice table (None without one)."""
    import pyarrow.dataset as ds

    if not (folder / SLICES_DIR).is_dir():
        return None
    frame = ds.dataset(str(folder / SLICES_DIR), format="parquet").to_table(
        columns=["has_tumor_true", "pipeline_dice"]).to_pandas()
    return frame.loc[frame["has_tumor_true"].astype(bool), "pipeline_dice"].tolist()


def _setting(document: dict) -> str:
    scans = document.get("scans") or {}
    classifier, segmenter = document.get("classifier") or {}, document.get("segmenter") or {}
    return (f"<p>Classifier <code>{esc(classifier.get('model_id'))}</code> with segmenter "
            f"<code>{esc(segmenter.get('model_id'))}</code> on the <b>{esc(document.get('split'))}</b> split of "
            f"<code>{esc(scans.get('uri'))}</code>: <b>{fmt(document.get('slices'))}</b> slices, "
            f"{fmt(document.get('tumor_slices'))} with tumour (the truth is each slice's mask at the scan "
            f"table's canonical size). Tumour threshold <b>{fmt(document.get('threshold'))}</b> "
            f"({esc(document.get('threshold_source'))}).</p>")


def _detection(document: dict) -> str:
    detection = document["detection"]
    return table(["sensitivity", "specificity", "accuracy", "balanced accuracy", "TP", "FP", "TN", "FN"],
                 [[detection.get(k) for k in ("sensitivity", "specificity", "accuracy", "balanced_accuracy",
                                              "tp", "fp", "tn", "fn")]],
                 caption="Detection (per slice) at the operating point")


def _dice(document: dict) -> str:
    rows = [["segmenter alone, true tumour slices", document.get("segmenter_dice_tumor"),
             document.get("segmenter_tumor_slices")],
            ["pipeline, true tumour slices (missed tumour = 0)", document.get("pipeline_dice_tumor"),
             document.get("tumor_slices")],
            ["pipeline, every slice", document.get("pipeline_dice_mean"), document.get("slices")],
            ["pipeline, pixels pooled over every slice", document.get("pipeline_dice_global"),
             document.get("slices")]]
    alarms = (f"<p>False-alarm masks: <b>{fmt(document.get('false_alarm_masks'))}</b> tumour-free slices "
              f"classified tumour came out with a non-empty mask (a rate of "
              f"{fmt(document.get('false_alarm_mask_rate'))} of the tumour-free slices).</p>")
    return table(["Dice", "value", "slices"], rows, caption="Segmentation quality") + alarms


def _patients(document: dict) -> str:
    per_patient = document.get("per_patient")
    if not isinstance(per_patient, dict):
        return missing("No per-patient Dice: the scan table has no patient ids for these slices.")
    text = (f"<p>Per patient (the Dice of each patient's volume, pixels pooled over its slices): mean Dice "
            f"<b>{fmt(per_patient.get('dice_mean'))}</b>, median <b>{fmt(per_patient.get('dice_median'))}</b> "
            f"over {fmt(per_patient.get('tumor_patients'))} patients with tumour (segmenter alone: mean "
            f"{fmt(per_patient.get('segmenter_dice_mean'))}, median {fmt(per_patient.get('segmenter_dice_median'))})"
            f". Buda et al. (2019) report a mean per-patient Dice of {BUDA_2019_PATIENT_DICE:.2f} on the TCGA "
            f"lower-grade glioma (LGG) set, the usual anchor for this measure.</p>")
    listed = (per_patient.get("table") or [])[:PATIENT_ROWS]
    rows = [[p.get("patient_id"), p.get("slices"), p.get("tumor_slices"), p.get("detected_tumor_slices"),
             p.get("false_alarm_masks"), p.get("dice"), p.get("segmenter_dice")] for p in listed]
    caption = "Per patient" + (f" (first {PATIENT_ROWS} of {per_patient.get('patients')})"
                               if len(per_patient.get("table") or []) > PATIENT_ROWS else "")
    return text + table(["patient", "slices", "tumour slices", "detected", "false-alarm masks", "Dice",
                         "segmenter Dice"], rows, caption=caption)


def _histogram(ctx: ReportContext, folder: Path) -> str:
    dice = _slice_dice(folder)
    if not dice:
        return ""
    png = ctx.save("classseg_dice.png", dice_histogram_png(dice, title="Pipeline Dice per tumour slice"))
    return figure(png, "histogram of pipeline Dice", "Pipeline Dice per true tumour slice (a missed tumour is 0)")


def render(ctx: ReportContext) -> str:
    folder = ctx.sources.evaluation
    if folder is None:
        return ""
    try:
        document = _read(folder)
    except ValueError as err:  # json.JSONDecodeError included
        ctx.sections["classseg"] = f"unreadable {METRICS_NAME}: {err}"
        return HEADING + missing(f"The evaluation in {folder} could not be read ({err}).")
    detection, per_patient = document["detection"], document.get("per_patient") or {}
    ctx.keys.update({"classseg_sensitivity": detection.get("sensitivity"),
                     "classseg_specificity": detection.get("specificity"),
                     "classseg_segmenter_dice": document.get("segmenter_dice_tumor"),
                     "classseg_pipeline_dice": document.get("pipeline_dice_tumor")})
    if per_patient:
        ctx.keys["classseg_patient_dice"] = per_patient.get("dice_mean")
    ctx.sections["classseg"] = "ok"
    return "".join([HEADING, _setting(document), _detection(document), _dice(document), _patients(document),
                    _histogram(ctx, folder)])


SECTION = Section(name="classseg", render=render, key_labels=(
    ("classseg_sensitivity", "Class-Seg detection sensitivity"),
    ("classseg_specificity", "Class-Seg detection specificity"),
    ("classseg_pipeline_dice", "Class-Seg pipeline Dice (tumour slices)"),
    ("classseg_patient_dice", "Class-Seg per-patient mean Dice")))
