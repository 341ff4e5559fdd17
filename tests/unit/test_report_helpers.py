"""Report and demo helpers without Spark: ROC points, overlays, artifact discovery, archive truth files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from classeg.demo import save_archive_truth
from classeg.imaging import decode_png
from classeg.plots import PREDICTED_RGB, TRUTH_RGB, overlay, roc_points
from classeg.report.markup import metric as _metric
from classeg.report.sources import find_artifact, locate


@pytest.mark.parametrize("positive, scores, fpr, tpr", [
    # Perfect ranking: all positives above all negatives.
    ([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1], [0, 0, 0, 0.5, 1], [0, 0.5, 1, 1, 1]),
    # Worst ranking.
    ([0, 0, 1, 1], [0.9, 0.8, 0.3, 0.1], [0, 0.5, 1, 1, 1], [0, 0, 0, 0.5, 1]),
    # A tie between a positive and a negative moves diagonally in one step.
    ([1, 0, 1], [0.7, 0.7, 0.2], [0, 1, 1], [0, 0.5, 1]),
])
def test_roc_points(positive, scores, fpr, tpr):
    got_fpr, got_tpr = roc_points(np.array(positive, bool), np.array(scores))
    np.testing.assert_allclose(got_fpr, fpr)
    np.testing.assert_allclose(got_tpr, tpr)


def test_overlay_colours_prediction_and_truth():
    image = np.full((8, 8), 100, np.uint8)
    predicted = np.zeros((8, 8), bool)
    predicted[2:6, 2:6] = True
    truth = np.zeros((8, 8), bool)
    truth[0:3, 5:8] = True
    picture = overlay(image, predicted, truth, tile_px=16)
    assert picture.shape == (16, 16, 3) and picture.dtype == np.uint8
    assert tuple(picture[4, 4]) == PREDICTED_RGB  # predicted outline pixel (row 2, col 2 scaled by 2)
    assert tuple(picture[6, 6]) == (int(0.55 * 100 + 0.45 * 230), int(0.55 * 100 + 0.45 * 40),
                                    int(0.55 * 100 + 0.45 * 40))  # tinted interior
    assert tuple(picture[0, 15]) == TRUTH_RGB
    assert tuple(picture[15, 0]) == (100, 100, 100)  # untouched background


def test_overlay_accepts_int16_and_rgb():
    assert overlay(np.arange(64, dtype=np.int16).reshape(8, 8), None, None, tile_px=8).shape == (8, 8, 3)
    assert overlay(np.zeros((4, 6, 3), np.uint8), None, None, tile_px=12).shape == (8, 12, 3)


@pytest.mark.parametrize("metrics, names, expected", [
    ({"accuracy": 0.9}, ("accuracy",), 0.9),
    ({"test_accuracy": 0.8}, ("accuracy",), 0.8),
    ({"test": {"dice_tumour": 0.7}}, ("dice_tumor", "dice_tumour"), 0.7),
    ({"accuracy": True}, ("accuracy",), None),
    (None, ("accuracy",), None),
])
def test_metric_lookup(metrics, names, expected):
    assert _metric(metrics, *names) == expected


def test_find_artifact_picks_the_task(tmp_path):
    for rel, task in (("run/a", "classify"), ("run/b", "segment")):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "model.json").write_text(json.dumps({"task": task}))
    assert find_artifact(tmp_path, "classify") == tmp_path / "run" / "a"
    assert find_artifact(tmp_path / "run" / "b", "segment") == tmp_path / "run" / "b"
    assert find_artifact(tmp_path / "run" / "b", "classify") is None
    assert find_artifact(tmp_path / "absent", "classify") is None


def test_locate_uses_pipeline_json(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "summary.json").write_text("{}")
    (tmp_path / "pipeline.json").write_text(json.dumps({"locations": {"scans": str(tmp_path / "elsewhere")}}))
    sources = locate(tmp_path)
    assert sources.scans == tmp_path / "elsewhere" and sources.scores is None and sources.classifier is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        locate(tmp_path / "missing")


def test_save_archive_truth_round_trip(tmp_path):
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:5] = True
    truth = {"root": "/archive", "broken": [{"path": "empty.png", "kind": "empty"}], "slices": [
        {"path": "batch_02/scan_0002.png", "format": "png", "label": 1, "label_name": "tumor", "has_tumor": True,
         "mask_area_px": 6, "height": 5, "width": 7, "kind": "glioma", "mask": mask},
        {"path": "scan_0001.jpg", "format": "jpg", "label": 0, "label_name": "no_tumor", "has_tumor": False,
         "mask_area_px": 0, "height": 5, "width": 7, "kind": None, "mask": np.zeros((5, 7), bool)}]}
    data = save_archive_truth(truth, tmp_path / "truth.json")
    assert json.loads((tmp_path / "truth.json").read_text()) == data
    first = data["scans"][0]
    assert first["path"] == "batch_02/scan_0002.png" and first["has_tumor"] is True
    np.testing.assert_array_equal(decode_png((tmp_path / first["mask_png"]).read_bytes()) > 0, mask)
    assert data["broken"] == truth["broken"]
