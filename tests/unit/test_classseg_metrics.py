"""End-to-end Class-Seg metrics on a slice table whose every value was worked out by hand."""
import json

import numpy as np
import pytest

from classeg.metrics import as_mapping, classseg_metrics

NAN = float("nan")
# Threshold 0.5. Per slice: patient, true mask area, tumour probability, segmenter TP, segmenter FP
# (None: segmenter not run), and what each slice tests.
SLICES = [
    ("TCGA_HT_7602", 10, 0.9, 8, 2),        # detected; Dice 16/20 = 0.8 for segmenter and pipeline
    ("TCGA_HT_7602", 5, 0.3, 5, 0),         # missed: segmenter Dice 1, pipeline Dice 0 (empty mask)
    ("TCGA_HT_7602", 0, 0.7, 0, 3),         # false alarm with a non-empty mask: pipeline Dice 0
    ("TCGA_CS_4941", 4, 0.6, 2, 0),         # detected; Dice 4/6
    ("TCGA_CS_4941", 0, 0.1, None, None),   # true negative, never segmented: pipeline Dice 1
    ("TCGA_CS_4941", 0, 0.8, 0, 0),         # false alarm, but the mask is empty: pipeline Dice 1
    ("TCGA_DU_5849", 0, 0.2, None, None),   # true negative
    ("TCGA_DU_5849", 6, 0.4, None, None),   # missed and never segmented: pipeline Dice 0
    ("TCGA_DU_5849", 0, 0.05, None, None),  # true negative
]


def _inputs(slices=SLICES, with_patients=True):
    columns = list(zip(*slices))
    return dict(
        has_tumor_true=[area > 0 for area in columns[1]],
        tumor_probability=list(columns[2]),
        threshold=0.5,
        true_area_px=list(columns[1]),
        segmenter_tp=list(columns[3]),
        segmenter_fp=list(columns[4]),
        patient_id=list(columns[0]) if with_patients else None,
    )


def test_slice_level_metrics_hand_values():
    result = classseg_metrics(**_inputs())
    assert (result["slices"], result["tumor_slices"]) == (9, 4)
    assert result["detection"] == pytest.approx({
        "threshold": 0.5, "tp": 2, "fp": 2, "tn": 3, "fn": 2,
        "sensitivity": 0.5, "specificity": 0.6, "accuracy": 5 / 9, "balanced_accuracy": 0.55})
    # Segmenter alone: tumour slices where it ran (0, 1, 3), whatever the classifier said.
    assert result["segmenter_dice_tumor"] == pytest.approx((0.8 + 1.0 + 2 / 3) / 3)
    assert result["segmenter_tumor_slices"] == 3
    # Pipeline: every tumour slice, missed ones (1, 7) at 0.
    assert result["pipeline_dice_tumor"] == pytest.approx((0.8 + 0 + 2 / 3 + 0) / 4)
    assert result["pipeline_dice_mean"] == pytest.approx((0.8 + 0 + 0 + 2 / 3 + 1 + 1 + 1 + 0 + 1) / 9)
    # Pooled pipeline pixels: TP 8 + 2, FP 2 + 3 (the false alarm's mask), FN 2 + 5 + 2 + 6.
    assert result["pipeline_dice_global"] == pytest.approx(2 * 10 / (2 * 10 + 5 + 15))
    assert result["false_alarm_masks"] == 1
    assert result["false_alarm_mask_rate"] == pytest.approx(1 / 5)


def test_per_patient_volume_dice_hand_values():
    per_patient = classseg_metrics(**_inputs())["per_patient"]
    assert [row["patient_id"] for row in per_patient["table"]] == ["TCGA_CS_4941", "TCGA_DU_5849", "TCGA_HT_7602"]
    cs, du, ht = per_patient["table"]
    assert cs == pytest.approx({
        "patient_id": "TCGA_CS_4941", "slices": 3, "tumor_slices": 1, "detected_tumor_slices": 1,
        "false_alarm_masks": 0, "segmented_slices": 2, "tp_px": 2, "fp_px": 0, "fn_px": 2,
        "dice": 4 / 6, "segmenter_dice": 4 / 6})
    assert du == pytest.approx({
        "patient_id": "TCGA_DU_5849", "slices": 3, "tumor_slices": 1, "detected_tumor_slices": 0,
        "false_alarm_masks": 0, "segmented_slices": 0, "tp_px": 0, "fp_px": 0, "fn_px": 6,
        "dice": 0.0, "segmenter_dice": NAN}, nan_ok=True)
    # Pooled over the volume, not the mean of slice Dice: pipeline TP 8, FP 2 + 3, FN 2 + 5; segmenter
    # TP 8 + 5, FP 2 + 3, FN 2.
    assert ht == pytest.approx({
        "patient_id": "TCGA_HT_7602", "slices": 3, "tumor_slices": 2, "detected_tumor_slices": 1,
        "false_alarm_masks": 1, "segmented_slices": 3, "tp_px": 8, "fp_px": 5, "fn_px": 7,
        "dice": 16 / 28, "segmenter_dice": 26 / 33})
    assert (per_patient["patients"], per_patient["tumor_patients"]) == (3, 3)
    assert per_patient["dice_mean"] == pytest.approx((4 / 6 + 0 + 16 / 28) / 3)
    assert per_patient["dice_median"] == pytest.approx(16 / 28)
    assert per_patient["segmenter_dice_mean"] == pytest.approx((4 / 6 + 26 / 33) / 2)  # DU never segmented
    assert per_patient["segmenter_dice_median"] == pytest.approx((4 / 6 + 26 / 33) / 2)


def test_tumour_free_patient_is_listed_but_not_averaged():
    slices = SLICES + [("TCGA_FG_A4MT", 0, 0.9, 0, 4)]  # a tumour-free patient with a false alarm mask
    result = classseg_metrics(**_inputs(slices))
    row = result["per_patient"]["table"][2]  # sorted by id
    assert (row["patient_id"], row["tumor_slices"], row["fp_px"], row["dice"]) == ("TCGA_FG_A4MT", 0, 4, 0.0)
    assert result["per_patient"]["tumor_patients"] == 3
    assert result["per_patient"]["dice_mean"] == pytest.approx((4 / 6 + 0 + 16 / 28) / 3)
    assert (result["false_alarm_masks"], result["false_alarm_mask_rate"]) == (2, pytest.approx(2 / 6))


def test_integer_patient_ids_nan_counts_and_json():
    inputs = _inputs()
    inputs["patient_id"] = [7, 7, 7, 3, 3, 3, 5, 5, 5]
    inputs["segmenter_tp"] = np.array([NAN if v is None else v for v in inputs["segmenter_tp"]])
    inputs["segmenter_fp"] = np.array([NAN if v is None else v for v in inputs["segmenter_fp"]])
    result = classseg_metrics(**inputs)
    assert [row["patient_id"] for row in result["per_patient"]["table"]] == [3, 5, 7]
    assert result["pipeline_dice_tumor"] == pytest.approx((0.8 + 2 / 3) / 4)
    loaded = json.loads(json.dumps(as_mapping(result)))
    assert loaded["per_patient"]["table"][2]["dice"] == pytest.approx(16 / 28)
    assert classseg_metrics(**_inputs(with_patients=False))["per_patient"] is None


def test_perfect_pipeline_and_undefined_rates():
    perfect = classseg_metrics(has_tumor_true=[True, False], tumor_probability=[0.9, 0.1], threshold=0.5,
                               true_area_px=[3, 0], segmenter_tp=[3, 0], segmenter_fp=[0, 0])
    assert perfect["detection"]["balanced_accuracy"] == 1.0
    assert (perfect["segmenter_dice_tumor"], perfect["pipeline_dice_tumor"], perfect["pipeline_dice_global"]) == \
        (1.0, 1.0, 1.0)
    # No tumour slice: sensitivity and tumour Dice are undefined, balanced accuracy is the specificity.
    clean = classseg_metrics(has_tumor_true=[False, False], tumor_probability=[0.9, 0.1], threshold=0.5,
                             true_area_px=[0, 0], segmenter_tp=[0, None], segmenter_fp=[2, None])
    assert np.isnan(clean["detection"]["sensitivity"]) and clean["detection"]["balanced_accuracy"] == 0.5
    assert np.isnan(clean["segmenter_dice_tumor"]) and np.isnan(clean["pipeline_dice_tumor"])
    assert clean["segmenter_tumor_slices"] == 0 and clean["false_alarm_masks"] == 1
    # Threshold 0 calls every slice tumour (ties go to tumour).
    everything = classseg_metrics(has_tumor_true=[True, False], tumor_probability=[0.0, 0.0], threshold=0,
                                  true_area_px=[3, 0], segmenter_tp=[1, 0], segmenter_fp=[0, 0])
    assert everything["detection"]["tp"] == 1 and everything["detection"]["fp"] == 1


def _bad(**changes):
    inputs = _inputs()
    inputs.update(changes)
    return lambda: classseg_metrics(**inputs)


@pytest.mark.parametrize(
    "call, message",
    [
        (_bad(segmenter_tp=[8, 5, 0, 2, None, 0, None, 6, None]), "same slices, got 6.0 and nan at index 7"),
        (_bad(tumor_probability=[0.9, 0.3, 0.7, 0.6, 0.1, 0.8, 0.2, 0.6, 0.05]),
         "missing for 1 slices classified tumour \\(first at index 7\\)"),
        (_bad(has_tumor_true=[True] * 9), "has_tumor_true=True and true_area_px=0 at index 2"),
        (_bad(segmenter_tp=[11, 5, 0, 2, None, 0, None, None, None]), "11 > 10 at index 0"),
        (_bad(segmenter_fp=[2, 0, -3, 0, None, 0, None, None, None]), ">= 0, got -3.0 at index 2"),
        (_bad(true_area_px=[10, 5, 0]), "one value per slice \\(9\\), got 3"),
        (_bad(tumor_probability=[0.9, NAN, 0.7, 0.6, 0.1, 0.8, 0.2, 0.4, 0.05]), "finite, got nan at index 1"),
        (_bad(tumor_probability=[1.9, 0.3, 0.7, 0.6, 0.1, 0.8, 0.2, 0.4, 0.05]), r"\[0, 1\], got 1.9"),
        (_bad(threshold=1.5), r"threshold must be a number in \[0, 1\], got 1.5"),
        (_bad(threshold=None), "got None"),
        (_bad(patient_id=["a", "b"]), "N = 9 slices"),
        (_bad(patient_id=[1.0, 1.0, 1.0, 2.0, 2.0, 2.0, NAN, 3.0, 3.0]), "NaN at index 6"),
        (lambda: classseg_metrics(has_tumor_true=[], tumor_probability=[], threshold=0.5, true_area_px=[],
                                  segmenter_tp=[], segmenter_fp=[]), "non-empty"),
        (_bad(has_tumor_true=[2] * 9), "bool"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
