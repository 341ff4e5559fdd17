"""The classifier's operating point in the report: read from a hand-built model.json, stated in the text,
drawn on the ROC curve, and the test split's rates at its threshold. No Spark."""
from __future__ import annotations

import html as htmllib
import io
import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from classeg.plots import RocMarker, roc_curve_png
from classeg.report import build_report
from classeg.report.operating_point import (OperatingPoint, rates_at, rates_on_test_split_html,
                                            read_operating_points, tumor_indices)

MODEL_JSON = {
    "task": "classify", "model_id": "classify-op", "class_names": ["no_tumor", "tumor"], "tumor_classes": ["tumor"],
    "architecture": {"arch": "resnet18", "head": "linear"}, "input": {"size": 32},
    "metrics": {"split": "test", "accuracy": 0.9, "roc_auc": 0.95},
    "operating_point": {"threshold": 0.3125, "sensitivity": 0.95, "specificity": 0.8, "target_sensitivity": 0.95,
                        "positives": 20, "negatives": 30,
                        "youden": {"threshold": 0.5, "sensitivity": 0.9, "specificity": 0.9, "j": 0.8}},
}


def _text(page: str) -> str:
    """The page's words: tags become spaces, then no space before punctuation."""
    words = re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", " ", page)))
    return re.sub(r" ([,.;:])", r"\1", words)


def test_read_operating_points_from_model_json():
    points = read_operating_points(MODEL_JSON)
    assert points.chosen == OperatingPoint(threshold=0.3125, sensitivity=0.95, specificity=0.8)
    assert points.youden == OperatingPoint(threshold=0.5, sensitivity=0.9, specificity=0.9)
    assert points.target_sensitivity == 0.95 and points.split == "validation"
    # On the ROC plane: x = 1 - specificity, y = sensitivity.
    markers = points.markers()
    assert [(m.false_positive_rate, m.true_positive_rate) for m in markers] == [
        pytest.approx((0.2, 0.95)), pytest.approx((0.1, 0.9))]
    assert markers[0].label == "operating point (validation, threshold 0.312)"
    text = _text(points.html())
    assert ("Operating point, chosen on the validation split for a target sensitivity of 0.95: tumour threshold "
            "0.312, sensitivity 0.950, specificity 0.800; Youden point: threshold 0.500, sensitivity 0.900, "
            "specificity 0.900.") in text


def test_operating_point_is_optional():
    assert read_operating_points({"task": "classify"}) is None
    minimal = read_operating_points({"operating_point": {"threshold": 0.4, "sensitivity": 1, "specificity": 0.5,
                                                         "split": "val"}})
    assert minimal.youden is None and minimal.target_sensitivity is None and minimal.split == "validation"
    assert len(minimal.markers()) == 1
    assert "target" not in minimal.html() and "Youden" not in minimal.html()


@pytest.mark.parametrize("entry, message", [
    (0.5, r"operating_point must be an object"),
    ({"sensitivity": 0.9, "specificity": 0.8}, r"operating_point\.threshold must be a number in \[0, 1\], got None"),
    ({"threshold": 0.5, "sensitivity": 1.2, "specificity": 0.8}, r"operating_point\.sensitivity .* got 1\.2"),
    ({"threshold": 0.5, "sensitivity": 0.9, "specificity": True}, r"operating_point\.specificity .* got True"),
    ({"threshold": 0.5, "sensitivity": 0.9, "specificity": 0.8, "youden": {"threshold": "x"}},
     r"operating_point\.youden\.threshold .* got 'x'"),
    ({"threshold": 0.5, "sensitivity": 0.9, "specificity": 0.8, "target_sensitivity": 2},
     r"operating_point\.target_sensitivity .* got 2"),
])
def test_malformed_operating_point_names_the_field(entry, message):
    with pytest.raises(ValueError, match=message):
        read_operating_points({"operating_point": entry})


@pytest.mark.parametrize("threshold, expected", [
    # tumour probability = p[:, 1]: 0.9, 0.6, 0.4 (tumour), 0.7, 0.2, 0.1 (no tumour)
    (0.5, (2 / 3, 2 / 3)),
    (0.4, (1.0, 2 / 3)),   # ties go to tumour
    (0.95, (0.0, 1.0)),
    (0.0, (1.0, 0.0)),
])
def test_rates_at_threshold(threshold, expected):
    y_true = np.array([1, 1, 1, 0, 0, 0])
    tumor = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1])
    probabilities = np.stack([1 - tumor, tumor], axis=1)
    assert rates_at(threshold, y_true, probabilities, [1]) == pytest.approx(expected)


def test_rates_at_sums_the_tumour_classes_and_says_nan_without_negatives():
    # Three classes, tumour = classes 1 and 2: probabilities 0.7, 0.5 (tumour), 0.3 (no tumour).
    probabilities = np.array([[0.3, 0.4, 0.3], [0.5, 0.1, 0.4], [0.7, 0.2, 0.1]])
    assert rates_at(0.5, np.array([1, 2, 0]), probabilities, [1, 2]) == pytest.approx((1.0, 1.0))
    sensitivity, specificity = rates_at(0.5, np.array([1, 2, 2]), probabilities, [1, 2])
    assert sensitivity == pytest.approx(2 / 3) and math.isnan(specificity)


@pytest.mark.parametrize("meta, expected", [
    ({"class_names": ["no_tumor", "tumor"], "tumor_classes": ["tumor"]}, [1]),
    ({"class_names": ["glioma", "meningioma", "notumor"], "tumor_classes": ["glioma", "meningioma"]}, [0, 1]),
    ({"class_names": ["no", "yes"]}, []),                                       # not recorded
    ({"class_names": ["no", "yes"], "tumor_classes": ["no", "yes"]}, []),      # nothing to tell apart
    # the operating point's own tumour classes win over model.json's
    ({"class_names": ["a", "b", "c"], "tumor_classes": ["a"], "operating_point": {"tumor_classes": ["b", "c"]}},
     [1, 2]),
])
def test_tumor_indices(meta, expected):
    assert tumor_indices(meta) == expected


def test_rates_on_test_split_state_the_rates_at_the_chosen_threshold():
    points = read_operating_points(MODEL_JSON)  # threshold 0.3125
    tumor = np.array([0.9, 0.6, 0.2, 0.7, 0.2, 0.1])
    probabilities = np.stack([1 - tumor, tumor], axis=1)
    text = _text(rates_on_test_split_html(points, MODEL_JSON, np.array([1, 1, 1, 0, 0, 0]), probabilities))
    assert "At that threshold on the 6 test scans: sensitivity 0.667, specificity 0.667." in text
    assert rates_on_test_split_html(points, {"class_names": ["no", "yes"]}, [0, 1], np.eye(2)) == ""


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_roc_curve_draws_the_markers():
    y_true = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.stack([1 - np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9]),
                              np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9])], axis=1)
    names = ["no_tumor", "tumor"]
    plain = _pixels(roc_curve_png(y_true, probabilities, names))
    marked = _pixels(roc_curve_png(y_true, probabilities, names, markers=[RocMarker("op", 1 / 3, 2 / 3)]))
    assert plain.shape == marked.shape
    # The curve is matplotlib's first colour (blue); the marker the second (orange, #ff7f0e).
    orange = (np.abs(marked - [255, 127, 14]).sum(axis=2) < 30).sum()
    assert (np.abs(plain - [255, 127, 14]).sum(axis=2) < 30).sum() == 0
    assert orange > 50, orange
    assert roc_curve_png(np.zeros(4, int), np.full((4, 2), 0.5), names) is None  # one class only: no curve


def _workdir(tmp_path, meta: dict):
    folder = tmp_path / "models" / "classifier"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps(meta))
    return tmp_path


def test_report_states_the_recorded_operating_point(tmp_path):
    summary = build_report(_workdir(tmp_path, MODEL_JSON))
    text = _text((tmp_path / "report" / "index.html").read_text(encoding="utf-8"))
    assert "classifier tumour threshold 0.312" in text  # the key-number strip
    assert "Operating point, chosen on the validation split for a target sensitivity of 0.95" in text
    assert summary["key_numbers"]["classifier_threshold"] == 0.3125
    assert summary["sections"]["classifier"] == "recorded metrics only: no scan table to evaluate on"


def test_report_without_operating_point_has_no_trace_of_it(tmp_path):
    meta = {k: v for k, v in MODEL_JSON.items() if k != "operating_point"}
    summary = build_report(_workdir(tmp_path, meta))
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "threshold" not in page and "classifier_threshold" not in summary["key_numbers"]
    assert "classifier test accuracy 0.900" in _text(page)


def test_report_ignores_a_malformed_operating_point_and_says_why(tmp_path):
    meta = {**MODEL_JSON, "operating_point": {"threshold": 1.5, "sensitivity": 0.9, "specificity": 0.8}}
    summary = build_report(_workdir(tmp_path, meta))
    text = _text((tmp_path / "report" / "index.html").read_text(encoding="utf-8"))
    assert ("The operating point in model.json is ignored: operating_point.threshold must be a number in [0, 1], "
            "got 1.5.") in text
    assert "classifier_threshold" not in summary["key_numbers"]
