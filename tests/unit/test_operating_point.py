"""ROC curve and the validated tumour threshold: hand tables, a brute-force reference, scikit-learn agreement."""
import json

import numpy as np
import pytest

from classeg.metrics import choose_operating_point, roc_curve

INF = float("inf")


@pytest.mark.parametrize(
    "y_true, scores, fpr, tpr, thresholds",
    [
        # scikit-learn's documented example.
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8],
         [0, 0, 0.5, 0.5, 1], [0, 0.5, 0.5, 1, 1], [INF, 0.8, 0.4, 0.35, 0.1]),
        # Ties cross together: 0.9 holds one tumour and one not, 0.5 likewise.
        ([1, 0, 1, 0, 1], [0.9, 0.9, 0.5, 0.5, 0.2],
         [0, 0.5, 1, 1], [0, 1 / 3, 2 / 3, 1], [INF, 0.9, 0.5, 0.2]),
        # Booleans and a perfect ranking.
        ([True, False, True], [0.7, 0.1, 0.6],
         [0, 0, 0, 1], [0, 0.5, 1, 1], [INF, 0.7, 0.6, 0.1]),
    ],
)
def test_roc_curve_hand_table(y_true, scores, fpr, tpr, thresholds):
    got_fpr, got_tpr, got_thresholds = roc_curve(y_true, scores)
    assert got_fpr.tolist() == pytest.approx(fpr)
    assert got_tpr.tolist() == pytest.approx(tpr)
    assert got_thresholds.tolist() == pytest.approx(thresholds)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_matches_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 0.7 + 0.3 * y_true, 2)  # rounded: many ties
    expected = skm.roc_curve(y_true, scores, drop_intermediate=False)
    for ours, theirs in zip(roc_curve(y_true, scores), expected):
        assert np.array_equal(ours, theirs)


# Positives at 0.51 .. 0.70, negatives at 0.2, 0.3 and 0.555.
POSITIVES = 0.5 + np.arange(1, 21) / 100
MIXED_TRUE = [1] * 20 + [0, 0, 0]
MIXED_PROB = list(POSITIVES) + [0.2, 0.555, 0.3]


@pytest.mark.parametrize(
    "y_true, probability, target, threshold, sensitivity, specificity",
    [
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.5, 0.8, 0.5, 1.0),
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.95, 0.35, 1.0, 0.5),
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 1.0, 0.35, 1.0, 0.5),
        # 19 of 20 tumours reach 0.95 exactly; the 0.555 negative is above the threshold.
        (MIXED_TRUE, MIXED_PROB, 0.95, POSITIVES[1], 0.95, 2 / 3),
        (MIXED_TRUE, MIXED_PROB, 0.75, POSITIVES[5], 0.75, 1.0),
        (MIXED_TRUE, MIXED_PROB, 0.76, POSITIVES[4], 0.8, 2 / 3),
        # A tie: reaching 1/2 takes the whole 0.5 group, 2/3 sensitivity, and both negatives with it.
        ([1, 0, 1, 0, 1], [0.9, 0.9, 0.5, 0.5, 0.2], 0.5, 0.5, 2 / 3, 0.0),
        # 7/10 reaches a target computed as 0.1 * 7 (0.7000000000000001).
        ([1] * 10 + [0], list(np.arange(10, 0, -1) / 10) + [0.0], 0.1 * 7, 0.4, 0.7, 1.0),
    ],
)
def test_operating_point_hand_table(y_true, probability, target, threshold, sensitivity, specificity):
    point = choose_operating_point(y_true, probability, target_sensitivity=target)
    assert point["threshold"] == pytest.approx(threshold)
    assert point["sensitivity"] == pytest.approx(sensitivity)
    assert point["specificity"] == pytest.approx(specificity)
    assert point["target_sensitivity"] == target
    assert (point["positives"], point["negatives"]) == (int(np.sum(y_true)), len(y_true) - int(np.sum(y_true)))


def test_rounding_overshoot_of_a_probability_is_clipped():
    # A sum of softmax columns can exceed 1 by an ulp.
    point = choose_operating_point([0, 1], [0.2, 1 + 2e-16])
    assert point["threshold"] == 1.0 and point["sensitivity"] == 1.0


def test_youden_point_hand_values():
    # J over thresholds 0.8, 0.4, 0.35, 0.1 is 0.5, 0, 0.5, 0: the tie goes to the higher threshold.
    point = choose_operating_point([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert point["youden"] == pytest.approx({"threshold": 0.8, "sensitivity": 0.5, "specificity": 1.0, "j": 0.5})
    mixed = choose_operating_point(MIXED_TRUE, MIXED_PROB)
    assert mixed["youden"] == pytest.approx(
        {"threshold": POSITIVES[5], "sensitivity": 0.75, "specificity": 1.0, "j": 0.75})


@pytest.mark.parametrize("seed, target", [(3, 0.95), (4, 0.8), (5, 0.5), (6, 1.0)])
def test_operating_point_is_the_highest_threshold_reaching_the_target(seed, target):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, 400)
    probability = np.clip(np.round(rng.normal(0.35 + 0.3 * y_true, 0.2), 3), 0, 1)
    point = choose_operating_point(y_true, probability, target_sensitivity=target)
    # Brute force: every distinct probability as a threshold, tumour = probability >= threshold.
    candidates = sorted(set(probability.tolist()), reverse=True)
    reached = [t for t in candidates if np.mean(probability[y_true == 1] >= t) >= target]
    assert point["threshold"] == reached[0]
    assert point["sensitivity"] == pytest.approx(np.mean(probability[y_true == 1] >= reached[0]))
    assert point["specificity"] == pytest.approx(np.mean(probability[y_true == 0] < reached[0]))
    j = {t: np.mean(probability[y_true == 1] >= t) - np.mean(probability[y_true == 0] >= t) for t in candidates}
    best = max(j.values())
    assert point["youden"]["threshold"] == max(t for t, v in j.items() if v == best)


def test_roc_is_downsampled_json_ready_and_keeps_the_chosen_points():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 2, 2000)
    probability = rng.beta(2 + 3 * y_true, 4 - 2 * y_true)
    point = choose_operating_point(y_true, probability, target_sensitivity=0.9)
    roc = json.loads(json.dumps(point, allow_nan=False))["roc"]
    assert 150 <= len(roc["fpr"]) <= 200 and len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert roc["thresholds"][0] is None and (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0)
    assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    assert np.all(np.diff(roc["thresholds"][1:]) < 0)
    for chosen in (point, point["youden"]):
        i = roc["thresholds"].index(chosen["threshold"])
        assert (roc["tpr"][i], 1 - roc["fpr"][i]) == pytest.approx((chosen["sensitivity"], chosen["specificity"]))
    small = choose_operating_point([0, 1, 1], [0.2, 0.6, 0.9], max_roc_points=4)
    assert small["roc"] == {"fpr": [0.0, 0.0, 0.0, 1.0], "tpr": [0.0, 0.5, 1.0, 1.0],
                            "thresholds": [None, 0.9, 0.6, 0.2]}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: roc_curve([0, 0, 0], [0.1, 0.2, 0.3]), r"no positive \(1\)"),
        (lambda: roc_curve([1, 1], [0.1, 0.2]), r"no negative \(0\)"),
        (lambda: roc_curve([0, 1], [0.1, 0.2, 0.3]), "same length, got 2 and 3"),
        (lambda: roc_curve([0, 2], [0.1, 0.2]), "< num_classes=2"),
        (lambda: roc_curve([0, 1], [0.1, float("inf")]), "finite, got inf at index 1"),
        (lambda: choose_operating_point([0, 1], [0.1, float("nan")]), "tumor_probability must be finite, got nan"),
        (lambda: choose_operating_point([0, 1], [0.1, 1.2]), r"\[0, 1\], got 1.2 at index 1"),
        (lambda: choose_operating_point([0, 0], [0.1, 0.2]), r"no positive \(1\)"),
        (lambda: choose_operating_point([1, 1], [0.1, 0.2]), r"no negative \(0\)"),
        (lambda: choose_operating_point([0, 1, 1], [0.1, 0.2]), "same length, got 3 and 2"),
        (lambda: choose_operating_point([0, 1], [0.1, 0.2], target_sensitivity=0), r"\(0, 1\], got 0"),
        (lambda: choose_operating_point([0, 1], [0.1, 0.2], target_sensitivity=1.5), r"\(0, 1\], got 1.5"),
        (lambda: choose_operating_point([0, 1], [0.1, 0.2], target_sensitivity=True), "got True"),
        (lambda: choose_operating_point([0, 1], [0.1, 0.2], target_sensitivity=float("nan")), "got nan"),
        (lambda: choose_operating_point([0, 1], [0.1, 0.2], max_roc_points=3), "max_roc_points"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
