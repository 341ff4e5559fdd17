"""The report's end-to-end Class-Seg section from a hand-built classseg_metrics.json (and per-slice table):
every number it states is the document's, it is found where pipeline.json or the convention says, and it is
absent without an evaluation."""
from __future__ import annotations

import html as htmllib
import json
import math
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from classeg.report import build_report, locate

DOCUMENT = {
    "slices": 40, "tumor_slices": 16,
    "detection": {"threshold": 0.3125, "tp": 15, "fp": 3, "tn": 21, "fn": 1, "sensitivity": 0.9375,
                  "specificity": 0.875, "accuracy": 0.9, "balanced_accuracy": 0.90625},
    "segmenter_dice_tumor": 0.8125, "segmenter_tumor_slices": 16, "pipeline_dice_tumor": 0.7617,
    "pipeline_dice_mean": 0.8346, "pipeline_dice_global": 0.7921, "false_alarm_masks": 2,
    "false_alarm_mask_rate": 2 / 24,
    "per_patient": {"patients": 3, "tumor_patients": 2, "dice_mean": 0.7734, "dice_median": 0.7734,
                    "segmenter_dice_mean": 0.8203, "segmenter_dice_median": 0.8203, "table": [
                        {"patient_id": "TCGA_AA_0001", "slices": 14, "tumor_slices": 8, "detected_tumor_slices": 8,
                         "false_alarm_masks": 1, "segmented_slices": 9, "tp_px": 300, "fp_px": 60, "fn_px": 40,
                         "dice": 0.8571, "segmenter_dice": 0.8571},
                        {"patient_id": "TCGA_BB_0002", "slices": 13, "tumor_slices": 8, "detected_tumor_slices": 7,
                         "false_alarm_masks": 1, "segmented_slices": 9, "tp_px": 200, "fp_px": 50, "fn_px": 100,
                         "dice": 0.6897, "segmenter_dice": 0.7835},
                        {"patient_id": "TCGA_CC_0003", "slices": 13, "tumor_slices": 0, "detected_tumor_slices": 0,
                         "false_alarm_masks": 0, "segmented_slices": 1, "tp_px": 0, "fp_px": 0, "fn_px": 0,
                         "dice": 1.0, "segmenter_dice": 1.0}]},
    "classifier": {"uri": "models/classifier", "model_id": "classify-resnet18-20240101T000000-aaaaaaaa"},
    "segmenter": {"uri": "models/segmenter", "model_id": "segment-resunet-20240101T000000-bbbbbbbb"},
    "split": "test", "threshold": 0.3125, "threshold_source": "model.json operating_point, chosen on the val split",
    "mask_threshold": 0.5, "scans": {"uri": "/data/scans", "run_id": "abc", "split_rows": 40},
    "has_tumor_disagreements": 0,
}


def _text(page: str) -> str:
    """The page's words: tags become spaces, then no space before punctuation."""
    words = re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", " ", page)))
    return re.sub(r" ([,.;:])", r"\1", words)


def _evaluation(folder, document=DOCUMENT, *, slices: bool = True):
    folder.mkdir(parents=True)
    (folder / "classseg_metrics.json").write_text(json.dumps(document))
    if slices:
        (folder / "classseg_slices").mkdir()
        table = pa.table({"has_tumor_true": [True, True, True, False], "pipeline_dice": [0.9, 0.0, 0.6, 1.0]})
        pq.write_table(table, folder / "classseg_slices" / "part-00000.parquet")
    return folder


def test_section_states_the_documents_numbers(tmp_path):
    _evaluation(tmp_path / "evaluation")
    summary = build_report(tmp_path)
    text = _text((tmp_path / "report" / "index.html").read_text(encoding="utf-8"))
    assert "End-to-end Class-Seg" in text and summary["sections"]["classseg"] == "ok"
    assert ("on the test split of /data/scans: 40 slices, 16 with tumour") in text
    assert "Tumour threshold 0.312 (model.json operating_point, chosen on the val split)" in text
    # Detection table: sensitivity, specificity, accuracy, balanced accuracy, TP FP TN FN.
    assert "0.938 0.875 0.900 0.906 15 3 21 1" in text
    assert "segmenter alone, true tumour slices 0.812 16" in text
    assert "pipeline, true tumour slices (missed tumour = 0) 0.762 16" in text
    assert "pipeline, pixels pooled over every slice 0.792 40" in text
    assert "False-alarm masks: 2 tumour-free slices" in text and "a rate of 0.083" in text
    assert "mean Dice 0.773, median 0.773 over 2 patients with tumour" in text
    assert "Buda et al. (2019) report a mean per-patient Dice of 0.82" in text
    assert "TCGA_BB_0002 13 8 7 1 0.690 0.783" in text
    keys = summary["key_numbers"]
    assert keys["classseg_sensitivity"] == 0.9375 and keys["classseg_specificity"] == 0.875
    assert keys["classseg_pipeline_dice"] == 0.7617 and keys["classseg_patient_dice"] == 0.7734
    assert "Class-Seg pipeline Dice (tumour slices) 0.762" in text  # the key-number strip
    assert "classseg_dice.png" in summary["images"]


def test_pipeline_json_names_the_evaluation_folder(tmp_path):
    folder = _evaluation(tmp_path / "runs" / "eval-7", slices=False)
    (tmp_path / "pipeline.json").write_text(json.dumps({"locations": {"evaluation": str(folder)}}))
    assert locate(tmp_path).evaluation == folder
    summary = build_report(tmp_path)
    assert summary["sections"]["classseg"] == "ok" and "classseg_dice.png" not in summary["images"]


def test_without_patients_or_with_undefined_values_it_says_so(tmp_path):
    document = {**DOCUMENT, "per_patient": None,
                "detection": {**DOCUMENT["detection"], "sensitivity": math.nan}}
    _evaluation(tmp_path / "evaluation", document, slices=False)
    summary = build_report(tmp_path)
    text = _text((tmp_path / "report" / "index.html").read_text(encoding="utf-8"))
    assert "No per-patient Dice: the scan table has no patient ids" in text
    assert "n/a 0.875 0.900" in text
    assert "classseg_patient_dice" not in summary["key_numbers"]


@pytest.mark.parametrize("content, reason", [("{not json", "Expecting property name"),
                                             (json.dumps({"slices": 3}), "has no 'detection' object")])
def test_an_unreadable_document_is_reported_not_raised(tmp_path, content, reason):
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "classseg_metrics.json").write_text(content)
    summary = build_report(tmp_path)
    assert summary["sections"]["classseg"].startswith("unreadable classseg_metrics.json") and reason in \
        summary["sections"]["classseg"]
    assert "could not be read" in (tmp_path / "report" / "index.html").read_text(encoding="utf-8")


def test_no_evaluation_no_section(tmp_path):
    (tmp_path / "evaluation").mkdir()  # a folder without classseg_metrics.json is not an evaluation
    summary = build_report(tmp_path)
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "End-to-end Class-Seg" not in page and "classseg" not in summary["sections"]
    assert not any(key.startswith("classseg_") for key in summary["key_numbers"])
