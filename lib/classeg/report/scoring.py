"""The archive scoring section: what the scores table says (newest row per file of the completed runs), its
runs, the predicted classes, the agreement with the archive's known truth where the demo saved one, and a
gallery of scans with their predicted (and true) masks."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from classeg import redact
from classeg.plots import PREDICTED_RGB, TRUTH_RGB, overlay, rgb_png
from classeg.report.loading import frame_index, read_runs, read_score_masks, read_scores, read_truth
from classeg.report.markup import esc, figure, fmt, missing, table
from classeg.report.section import ReportContext, Section

log = logging.getLogger(__name__)


def _gallery_choice(scores: pd.DataFrame, truth: dict, size: int) -> pd.DataFrame:
    """Up to ``size`` ok rows: predicted tumours first (those with known truth first), then a few negatives."""
    ok = scores[scores["status"] == "ok"].copy()
    if ok.empty:
        return ok
    ok["known"] = ok["key"].isin(truth.keys()) if "key" in ok else False
    tumor = ok[ok["tumor"] == True].sort_values(["known", "key"], ascending=[False, True])  # noqa: E712
    other = ok[ok["tumor"] != True].sort_values(["known", "key"], ascending=[False, True])  # noqa: E712
    negatives = min(len(other), max(size // 3, size - len(tumor)))
    return pd.concat([tumor.head(size - negatives), other.head(negatives)])


def _archive_dice(scores_dir: Path, known: pd.DataFrame, truth: dict) -> dict[str, float]:
    """key -> Dice of the predicted mask against the true mask, for scans whose truth has tumour (a scan
    without a predicted mask scores 0)."""
    from classeg.imaging import decode_png
    from classeg.metrics import dice_per_image

    positives = known[known["key"].map(lambda k: bool(truth[k]["has_tumor"]) and bool(truth[k].get("mask_png")))]
    masks = read_score_masks(scores_dir, positives["source_uri"].tolist())
    result = {}
    for row in positives.itertuples():
        true_mask = decode_png(Path(truth[row.key]["mask_png"]).read_bytes()) != 0
        data = masks.get((row.source_uri, frame_index(row.frame)))
        predicted = decode_png(data) != 0 if data is not None else np.zeros_like(true_mask)
        if predicted.ndim == 3:
            predicted = predicted.any(axis=2)
        if predicted.shape != true_mask.shape:
            log.warning("report: %s: predicted mask %s vs true mask %s, skipped", redact.label(row.key),
                        predicted.shape, true_mask.shape)
            continue
        result[row.key] = float(dice_per_image(predicted, true_mask)[0])
    return result


def _gallery_tiles(ctx: ReportContext, chosen: pd.DataFrame, truth: dict, dice_by_key: dict) -> list[str]:
    from classeg.errors import FetchError
    from classeg.decoded import ReadSettings
    from classeg.imaging import DecodeError, decode_file, decode_png
    from classeg.io.files import fetch

    masks = read_score_masks(ctx.sources.scores, chosen["source_uri"].tolist()) if len(chosen) else {}
    tiles = []
    for index, row in enumerate(chosen.itertuples()):
        key = getattr(row, "key", None) or row.source_uri.rsplit("/", 1)[-1]
        frame = frame_index(row.frame)
        try:
            images = decode_file(fetch(row.source_uri), key, ReadSettings(modalities=())).images
            image = next(image.pixels for image in images if image.frame == frame)
        except (FetchError, DecodeError, StopIteration) as err:
            log.warning("report: cannot show %s (frame %s): %s", redact.label(row.source_uri), frame,
                        type(err).__name__)
            continue
        shown = redact.label(key)  # the gallery names a scan as the logs do
        if frame is not None:
            key, shown = f"{key} frame {frame}", f"{shown} frame {frame}"
        predicted = decode_png(masks[(row.source_uri, frame)]) if (row.source_uri, frame) in masks else None
        entry = truth.get(key)
        true_mask = None
        if entry and entry.get("mask_png"):
            true_mask = decode_png(Path(entry["mask_png"]).read_bytes())
        name = ctx.save(f"gallery/scan_{index:03d}.png", rgb_png(overlay(image, predicted, true_mask)))
        caption = f"{shown}: predicted {row.label_name} (tumour probability {fmt(row.tumor_probability)})"
        if predicted is not None and pd.notna(row.mask_area_px):
            caption += f", mask {int(row.mask_area_px)} px"
        if entry:
            caption += f"; truth {entry.get('label_name')}"
            if key in dice_by_key:
                caption += f", Dice {fmt(dice_by_key[key])}"
        tiles.append(figure(name, f"scan {shown} with predicted mask", caption))
    return tiles


def _runs_table(runs: list[dict]) -> str:
    rows = [[r.get("run_id"), r.get("run_date"), r.get("completed_at"),
             *(r.get("summary", {}).get(k) for k in ("listed", "pending", "scored", "ok", "errors", "skipped",
                                                     "rows"))]
            for r in runs]
    return table(["run", "run date", "completed", "listed", "new", "scored", "ok", "errors", "skipped", "images"],
                 rows, caption="Scoring runs (incremental: each run scores only new or changed files; a multi-frame "
                               "file or volume is one image per frame or slice)")


def _stages_table(runs: list[dict]) -> str:
    """Where each run's scoring time went: the tasks' seconds per stage (classeg.scoring.stages) and the host's
    milliseconds per image."""
    from classeg.scoring.stages import STAGES

    timed = [r.get("summary", {}) | {"run_id": r.get("run_id")} for r in runs
             if r.get("summary", {}).get("stage_seconds")]
    if not timed:
        return ""
    rows = [[s["run_id"], s.get("ok_rows"), s.get("model_batches"), s.get("largest_batch"),
             *(fmt(s["stage_seconds"].get(name)) for name in STAGES), fmt(s.get("host_ms_per_image"))]
            for s in timed]
    return table(["run", "images", "model batches", "largest batch", *(f"{name} s" for name in STAGES),
                  "host ms / image"], rows,
                 caption="Scoring time by stage (seconds summed over the tasks' threads: fetch, decode and encode "
                         "run beside the models, so the stages add up to more than the run took; host ms / image "
                         "= (fetch + decode + encode) / images scored)")


_SERIES_SHOWN = 25


def _series_table(scores_dir: Path) -> str:
    """The series of the completed runs (classeg.scoring.series), most suspicious first."""
    from classeg.scoring.series import read_series

    series = read_series(scores_dir)
    if series.empty:
        return ""
    series = series.sort_values(["tumor_slices", "max_tumor_probability"], ascending=False)
    rows = [[row.series_uid or redact.label(row.series_key), row.modality, row.series_description,
             row.slices_scored, row.tumor_slices, fmt(row.max_tumor_probability), fmt(row.mean_tumor_probability),
             "" if pd.isna(row.tumor_first_slice) else f"{int(row.tumor_first_slice)}-{int(row.tumor_last_slice)}",
             fmt(row.tumor_volume_mm3), row.run_id] for row in series.head(_SERIES_SHOWN).itertuples()]
    return table(["series", "modality", "description", "slices", "tumour slices", "max p(tumour)",
                  "mean p(tumour)", "tumour slices range", "tumour volume (mm³)", "run"], rows,
                 caption=f"Series (DICOM series or volumes; {len(series)} in all, the {min(len(series), _SERIES_SHOWN)}"
                         f" with the most tumour slices shown; volume = mask area x pixel spacing x slice "
                         f"thickness, summed over tumour slices)")


def _against_truth(ctx: ReportContext, ok: pd.DataFrame, errors: pd.DataFrame, truth: dict,
                   broken: list[dict]) -> tuple[str, dict[str, float]]:
    """(paragraph, key -> Dice) comparing the ok rows with the truth the demo saved for its synthetic
    archive; ("", {}) when no scored scan has known truth."""
    known = ok[ok["key"].isin(truth.keys())] if "key" in ok else ok.iloc[:0]
    if not len(known):
        return "", {}
    keys = ctx.keys
    truth_tumor = known["key"].map(lambda k: bool(truth[k]["has_tumor"]))
    correct = known["tumor"].astype("boolean").fillna(False).astype(bool) == truth_tumor
    keys["archive_accuracy"] = float(correct.mean())
    keys["archive_known"] = len(known)
    dice_by_key = _archive_dice(ctx.sources.scores, known, truth)
    if dice_by_key:
        keys["archive_dice"] = float(np.mean(list(dice_by_key.values())))
    planted = int(errors["key"].isin([b["path"] for b in broken]).sum()) if "key" in errors else 0
    paragraph = (
        f"<p>Against the archive's known truth ({len(known)} scans): tumour/no-tumour accuracy "
        f"<b>{fmt(keys['archive_accuracy'])}</b>"
        + (f"; mean Dice on the {len(dice_by_key)} true-tumour scans <b>{fmt(keys['archive_dice'])}</b> "
           "(a tumour scan classified as no tumour counts as Dice 0)" if dice_by_key else "")
        + f". Planted broken files: {len(broken)}, of which {planted} became error rows.</p>")
    return paragraph, dice_by_key


def _gallery(ctx: ReportContext, scores: pd.DataFrame, truth: dict, dice_by_key: dict) -> str:
    chosen = _gallery_choice(scores, truth, ctx.gallery_size)
    tiles = _gallery_tiles(ctx, chosen, truth, dice_by_key)
    return ("<h3>Gallery</h3><p class='legend'>Predicted mask: <span style='background:rgb"
            f"{PREDICTED_RGB}'></span>red tint and outline; ground truth: "
            f"<span style='background:rgb{TRUTH_RGB}'></span>yellow outline (where known).</p>"
            + ("<div class='gallery'>" + "".join(tiles) + "</div>" if tiles else missing("No scans to show.")))


def render(ctx: ReportContext) -> str:
    from classeg.errors import error_kind

    parts = ["<h2 id='scoring'>Archive scoring (Class-Seg)</h2>"]
    sources = ctx.sources
    if sources.scores is None:
        ctx.sections["scoring"] = "no scores table found"
        return "".join(parts) + missing("No scores table found: the archive has not been scored.")
    scores = read_scores(sources.scores)
    runs = read_runs(sources.scores)
    truth, broken = read_truth(sources.archive_truth) if sources.archive_truth else ({}, [])
    if scores.empty:
        ctx.sections["scoring"] = "scores table is empty"
        return "".join(parts) + missing("The scores table has no rows yet.")
    ok = scores[scores["status"] == "ok"]
    errors = scores[scores["status"] == "error"]
    skipped = scores[scores["status"] == "skipped"]
    tumor = ok[ok["tumor"] == True]  # noqa: E712
    files = scores["source_uri"].nunique()
    ctx.keys.update(archive_scored=files, archive_tumor=len(tumor), scoring_errors=len(errors),
                    scoring_skipped=len(skipped))
    parts.append(f"<p><b>{files}</b> archive files scored (newest result per file): <b>{ok['source_uri'].nunique()}"
                 f"</b> ok ({len(ok)} images), <b>{len(errors)}</b> errors, <b>{len(skipped)}</b> skipped (no image "
                 f"or another modality); <b>{len(tumor)}</b> images classified as tumour and segmented, "
                 f"{len(ok) - len(tumor)} as no tumour. Scores table <code>{esc(sources.scores)}</code>.</p>")
    if runs:
        parts.append(_runs_table(runs))
        parts.append(_stages_table(runs))
    parts.append(_series_table(sources.scores))
    if len(skipped):
        reasons = skipped["error"].fillna("(no reason)").value_counts()
        parts.append(table(["skip reason", "files"], [[k, int(v)] for k, v in reasons.items()],
                           caption="Skipped files (accounted for, not errors)"))
    if not ok.empty and "label_name" in ok:
        counts = ok["label_name"].value_counts()
        parts.append(table(["predicted class", "scans"], [[k, int(v)] for k, v in counts.items()],
                           caption="Predicted classes"))
    paragraph, dice_by_key = _against_truth(ctx, ok, errors, truth, broken) if truth else ("", {})
    parts.append(paragraph)
    parts.append(_gallery(ctx, scores, truth, dice_by_key))
    kinds = errors["error"].map(lambda e: error_kind(e) or "unknown") if len(errors) else pd.Series(dtype=str)
    ctx.keys["scoring_errors_by_kind"] = {str(k): int(v) for k, v in kinds.value_counts().items()}
    ctx.sections["scoring"] = "ok"
    return "".join(parts)


SECTION = Section(name="scoring", render=render, key_labels=(
    ("archive_scored", "archive scans scored"), ("archive_tumor", "scored as tumour"),
    ("scoring_errors", "scoring errors"), ("scoring_skipped", "files skipped (no image, other modality)"),
    ("archive_accuracy", "archive tumour/no-tumour accuracy vs truth"),
    ("archive_dice", "archive Dice vs truth (tumour scans)")))
