"""`classeg evaluate --classifier --segmenter` end to end on local Spark: a hand-drawn LGG-layout dataset
(tests/classseg_models.py) ingested by the real ingest job, scored by hand-set model artifacts whose every
output follows from the drawn rectangles. Expected counts and Dice are derived here from the rectangles
alone, never from the job's output."""
from __future__ import annotations

import json
import statistics

import classseg_models as cm
import pyarrow.parquet as pq
import pytest

from classeg import synthetic
from classeg.cli import main
from classeg.evaluation import SLICE_COLUMNS

LOCAL = ["--set", "spark.master=local[2]"]


def _dice(tp: float, fp: float, fn: float) -> float:
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _expected(threshold: float) -> dict:
    """Every number classseg_metrics.json should hold at ``threshold``, from the rectangles."""
    rows = cm.expected(threshold)
    for row in rows:
        row["fn"] = row["true_area_px"] - row["tp"]
        called = row["classified_tumor"]
        row["pipeline"] = (row["tp"] if called else 0, row["fp"] if called else 0,
                           row["fn"] if called else row["true_area_px"])
    tumour = [r for r in rows if r["true_area_px"]]
    free = [r for r in rows if not r["true_area_px"]]
    patients = {}
    for row in rows:
        totals = patients.setdefault(row["patient_id"], [0, 0, 0])
        for i, value in enumerate(row["pipeline"]):
            totals[i] += value
    per_patient = [_dice(*totals) for _, totals in sorted(patients.items())]
    pooled = [sum(r["pipeline"][i] for r in rows) for i in range(3)]
    return {
        "tp": sum(r["classified_tumor"] for r in tumour), "fn": sum(not r["classified_tumor"] for r in tumour),
        "fp": sum(r["classified_tumor"] for r in free), "tn": sum(not r["classified_tumor"] for r in free),
        "segmenter": statistics.mean(_dice(r["tp"], r["fp"], r["fn"]) for r in tumour),
        "pipeline_tumor": statistics.mean(_dice(*r["pipeline"]) for r in tumour),
        "pipeline_mean": statistics.mean(_dice(*r["pipeline"]) for r in rows),
        "pipeline_global": _dice(*pooled),
        "false_alarms": sum(r["classified_tumor"] and r["fp"] > 0 for r in free),
        "patients": per_patient, "free": len(free), "tumour": len(tumour),
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory, spark):  # the session fixture: the CLI shares the tests' SparkSession
    root = tmp_path_factory.mktemp("classseg-eval")
    cm.write_dataset(root / "lgg")
    assert main(["ingest", "--dataset", "lgg", "--input", str(root / "lgg"), "--output", str(root / "scans"),
                 "--image-size", str(cm.SIZE), *LOCAL]) == 0
    return root, cm.save_models(root / "models")


def _evaluate(setup, name: str, *flags: str) -> tuple[dict, list[dict]]:
    root, models = setup
    out = root / name
    assert main(["evaluate", "--classifier", models["classifier"], "--segmenter", models["segmenter"],
                 "--scans", str(root / "scans"), "--output", str(out), "--split", "all", *flags, *LOCAL]) == 0
    document = json.loads((out / "classseg_metrics.json").read_text())
    table = pq.read_table(str(out / "classseg_slices"))
    assert table.schema.names == list(SLICE_COLUMNS)
    assert [str(table.schema.field(n).type) for n in ("slice_index", "true_area_px", "segmenter_tp")] == [
        "int32", "int64", "int64"]
    return document, table.to_pylist()


def _assert_metrics(document: dict, want: dict) -> None:
    detection = document["detection"]
    assert (detection["tp"], detection["fp"], detection["tn"], detection["fn"]) == (
        want["tp"], want["fp"], want["tn"], want["fn"])
    assert detection["sensitivity"] == pytest.approx(want["tp"] / want["tumour"])
    assert detection["specificity"] == pytest.approx(want["tn"] / want["free"])
    assert document["slices"] == len(cm.SLICES) and document["tumor_slices"] == want["tumour"]
    assert document["segmenter_tumor_slices"] == want["tumour"]  # the segmenter ran on every true tumour
    assert document["segmenter_dice_tumor"] == pytest.approx(want["segmenter"])
    assert document["pipeline_dice_tumor"] == pytest.approx(want["pipeline_tumor"])
    assert document["pipeline_dice_mean"] == pytest.approx(want["pipeline_mean"])
    assert document["pipeline_dice_global"] == pytest.approx(want["pipeline_global"])
    assert document["false_alarm_masks"] == want["false_alarms"]
    assert document["false_alarm_mask_rate"] == pytest.approx(want["false_alarms"] / want["free"])
    per_patient = document["per_patient"]
    assert per_patient["patients"] == per_patient["tumor_patients"] == 2
    assert [row["dice"] for row in per_patient["table"]] == pytest.approx(want["patients"])
    assert per_patient["dice_mean"] == pytest.approx(statistics.mean(want["patients"]))
    assert per_patient["dice_median"] == pytest.approx(statistics.median(want["patients"]))


def test_operating_point_from_model_json(setup):
    document, slices = _evaluate(setup, "at-operating-point")
    want = _expected(cm.OPERATING_THRESHOLD)
    # The drawn set: 3 tumours found, 2 missed (one dim, one at probability 0.62 under the 0.7 threshold).
    assert (want["tp"], want["fn"], want["fp"], want["tn"], want["false_alarms"]) == (3, 2, 2, 3, 1)
    _assert_metrics(document, want)
    assert document["threshold"] == cm.OPERATING_THRESHOLD
    assert document["threshold_source"].startswith("model.json operating_point")
    assert document["split"] == "all" and document["has_tumor_disagreements"] == 0
    root, models = setup
    summary = json.loads((root / "scans" / "summary.json").read_text())
    assert document["scans"]["run_id"] == summary["run_id"] and document["scans"]["split_rows"] == len(cm.SLICES)
    meta = json.loads((root / "models" / "segmenter" / "model.json").read_text())
    assert document["segmenter"] == {"uri": models["segmenter"], "model_id": meta["model_id"]}

    expected = {(r["patient_id"], int(r["scan_id_key"].rsplit("/", 1)[1])): r for r in cm.expected(0.7)}
    assert len(slices) == len(expected)
    for row in slices:
        want_row = expected[(row["patient_id"], row["slice_index"])]
        assert row["true_area_px"] == want_row["true_area_px"]
        assert row["classified_tumor"] == want_row["classified_tumor"]
        assert row["tumor_probability"] == pytest.approx(want_row["tumor_probability"], abs=1e-3)
        if row["segmented"]:
            assert (row["segmenter_tp"], row["segmenter_fp"]) == (want_row["tp"], want_row["fp"])
        else:
            assert row["segmenter_tp"] is None and not want_row["true_area_px"] and not want_row["classified_tumor"]


def test_tumor_threshold_flag_overrides_the_operating_point(setup):
    document, _ = _evaluate(setup, "at-half", "--tumor-threshold", "0.5")
    want = _expected(0.5)
    assert (want["tp"], want["fn"], want["fp"], want["tn"]) == (4, 1, 3, 2)
    _assert_metrics(document, want)
    assert document["threshold"] == 0.5 and document["threshold_source"] == "--tumor-threshold"


def test_single_model_mode_still_works(setup):
    root, models = setup
    out = root / "classifier-alone"
    assert main(["evaluate", "--model", models["classifier"], "--scans", str(root / "scans"), "--output", str(out),
                 "--split", "all", *LOCAL]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # argmax (probability >= 0.5) calls the light and medium backgrounds tumour: 6 of 10 labels right.
    assert metrics["rows"] == len(cm.SLICES) and metrics["metrics"]["accuracy"] == pytest.approx(0.6)
    assert not (out / "classseg_metrics.json").exists()


def test_a_table_without_masks_is_refused(setup, tmp_path, capsys):
    root, models = setup
    synthetic.write_folders(tmp_path / "folders", images_per_class=2, classes=synthetic.FOLDER_CLASSES_BINARY,
                            size_range=(32, 32))
    assert main(["ingest", "--dataset", "folders", "--input", str(tmp_path / "folders"), "--output",
                 str(tmp_path / "scans"), "--image-size", "32", *LOCAL]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--classifier", models["classifier"], "--segmenter", models["segmenter"], "--scans",
                 str(tmp_path / "scans"), "--output", str(tmp_path / "out"), "--split", "all", *LOCAL]) == 1
    assert "2 tumour slices without a mask" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
