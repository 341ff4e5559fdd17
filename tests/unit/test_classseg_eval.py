"""The Class-Seg evaluation without Spark: per-slice counts of hand-set models on hand-drawn slices (expected
values from the drawn rectangles, tests/classseg_models.py), the threshold rule, and the bad inputs that
must fail before any Spark work (mixed or missing flags, missing artifacts)."""
from __future__ import annotations

import math

import classseg_models as cm
import numpy as np
import pandas as pd
import pytest

from classeg.evaluation import SLICE_COLUMNS, ClassSegEvaluation, evaluate_slices, tumor_threshold


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return cm.save_models(tmp_path_factory.mktemp("classseg-models"))


@pytest.fixture(scope="module")
def predictor(models):
    from classeg.scoring.predictor import ClassSegPredictor

    return ClassSegPredictor.load(models["classifier"], models["segmenter"])


def _dice(tp: int, fp: int, fn: int) -> float:
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


@pytest.mark.parametrize("threshold", [cm.OPERATING_THRESHOLD, 0.5])
def test_every_slice_matches_its_drawn_rectangles(predictor, threshold):
    predictor.tumor_threshold = threshold
    rows = cm.scan_rows()
    result = evaluate_slices(rows, predictor, threshold=threshold)
    assert list(result.columns) == list(SLICE_COLUMNS) and len(result) == len(cm.SLICES)
    assert result["scan_id"].tolist() == rows["scan_id"].tolist()
    for got, want in zip(result.to_dict("records"), cm.expected(threshold)):
        where = want["scan_id_key"]
        assert got["patient_id"] == want["patient_id"], where
        assert got["true_area_px"] == want["true_area_px"] and got["has_tumor_true"] == (want["true_area_px"] > 0)
        assert got["tumor_probability"] == pytest.approx(want["tumor_probability"], abs=1e-3), where
        assert got["classified_tumor"] == want["classified_tumor"], where
        # The segmenter runs on the true tumours and on what the classifier calls tumour, nowhere else.
        assert got["segmented"] == (want["true_area_px"] > 0 or want["classified_tumor"]), where
        fn = want["true_area_px"] - want["tp"]
        if got["segmented"]:
            assert (got["segmenter_tp"], got["segmenter_fp"]) == (want["tp"], want["fp"]), where
            assert got["segmenter_dice"] == pytest.approx(_dice(want["tp"], want["fp"], fn)), where
        else:
            assert pd.isna(got["segmenter_tp"]) and pd.isna(got["segmenter_fp"]), where
            assert math.isnan(got["segmenter_dice"]), where
        if want["classified_tumor"]:
            pipeline = _dice(want["tp"], want["fp"], fn)
        else:  # an empty mask: a missed tumour scores 0, a rejected tumour-free slice 1
            pipeline = 0.0 if want["true_area_px"] else 1.0
        assert got["pipeline_dice"] == pytest.approx(pipeline), where


def test_truth_is_the_canonical_mask_not_the_table_flag(predictor):
    rows = cm.scan_rows()
    rows.loc[4, "has_tumor"] = True  # the source mask had a lesion that resizing erased
    rows.loc[9, "mask"] = None       # an absent mask is an empty mask
    result = evaluate_slices(rows, predictor, threshold=0.7)
    assert bool(result.loc[4, "has_tumor_source"]) and not result.loc[4, "has_tumor_true"]
    assert result.loc[9, "true_area_px"] == 0 and not result.loc[9, "has_tumor_true"]


def test_bad_slices_and_predictors_are_refused(models, predictor):
    from classeg.imaging import encode_png
    from classeg.scoring.predictor import ClassSegPredictor

    rows = cm.scan_rows()
    rows.loc[0, "mask"] = encode_png(np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match="mask is 16x16 px but its image is 32x32 px"):
        evaluate_slices(rows, predictor, threshold=0.5)
    alone = ClassSegPredictor.load(models["classifier"])
    with pytest.raises(ValueError, match="needs a predictor with a segmenter"):
        evaluate_slices(cm.scan_rows(), alone, threshold=0.5)


@pytest.mark.parametrize("meta, override, threshold, source", [
    ({"operating_point": {"threshold": 0.31, "split": "val"}}, None, 0.31, "model.json operating_point"),
    ({"operating_point": {"threshold": 0.31}}, 0.8, 0.8, "--tumor-threshold"),
    ({"operating_point": {"threshold": 0.31}}, 0, 0.0, "--tumor-threshold"),
    ({"operating_point": None, "operating_point_reason": "the validation split has 0 tumour"}, None, 0.5,
     "default 0.5 (the validation split has 0 tumour"),
    ({}, None, 0.5, "default 0.5 (model.json has no operating_point)"),
])
def test_threshold_comes_from_the_flag_then_the_operating_point_then_half(meta, override, threshold, source):
    chosen, why = tumor_threshold(meta, override)
    assert chosen == threshold and why.startswith(source)


@pytest.mark.parametrize("meta, override", [({}, 1.5), ({}, -0.1), ({"operating_point": {"threshold": 2}}, None),
                                            ({}, True)])
def test_threshold_outside_the_unit_interval_is_refused(meta, override):
    with pytest.raises(ValueError, match="must be a number in \\[0, 1\\]"):
        tumor_threshold(meta, override)


@pytest.mark.parametrize("flags, message", [
    (["--model", "m", "--classifier", "c"], "not both: got --model with --classifier"),
    (["--model", "m", "--tumor-threshold", "0.4"], "not both: got --model with --tumor-threshold"),
    (["--classifier", "c"], "--segmenter is missing"),
    (["--segmenter", "s"], "--classifier is missing"),
    ([], "evaluate needs --model URI, or --classifier URI and --segmenter URI"),
])
def test_mixed_or_missing_flags_fail_before_spark(flags, message, tmp_path, capsys):
    from classeg.cli import main

    assert main(["evaluate", *flags, "--scans", str(tmp_path / "scans"), "--output", str(tmp_path / "out")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_or_wrong_artifacts_fail_in_the_plan(models, tmp_path):
    plan = dict(scans=str(tmp_path / "scans"), output=str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="no model artifact at"):
        ClassSegEvaluation.plan(classifier=models["classifier"], segmenter=str(tmp_path / "nowhere"), **plan)
    with pytest.raises(ValueError, match="expected a 'segment' model"):
        ClassSegEvaluation.plan(classifier=models["classifier"], segmenter=models["classifier"], **plan)
    with pytest.raises(ValueError, match="needs both --classifier and --segmenter"):
        ClassSegEvaluation.plan(classifier=models["classifier"], segmenter=None, **plan)
    with pytest.raises(ValueError, match="split must be one of"):
        ClassSegEvaluation.plan(classifier=models["classifier"], segmenter=models["segmenter"], split="dev", **plan)


def test_the_plan_records_the_operating_point_and_the_task_settings(models, tmp_path):
    job = ClassSegEvaluation.plan(classifier=models["classifier"], segmenter=models["segmenter"],
                                  scans=str(tmp_path / "scans"), output=str(tmp_path / "out"),
                                  settings={"mask_threshold": 0.4, "batch_size": 3})
    assert job.threshold == cm.OPERATING_THRESHOLD and job.threshold_source.startswith("model.json")
    assert job.settings.tumor_threshold == cm.OPERATING_THRESHOLD
    assert (job.settings.mask_threshold, job.settings.batch_size) == (0.4, 3)
    assert job.settings.segmenter == models["segmenter"]
