"""Metrics: hand cases, scikit-learn agreement on random inputs, meters summed across 'ranks'."""
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from classeg import metrics

# Hand case: rows true, columns predicted -> [[1, 1, 0], [0, 2, 0], [1, 0, 1]].
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0]


def test_confusion_matrix_and_accuracy_hand_case():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED, num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics.accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    assert metrics.balanced_accuracy(Y_TRUE, Y_PRED, num_classes=3) == pytest.approx((0.5 + 1 + 0.5) / 3)


@pytest.mark.parametrize(
    "function, per_class",
    [
        (metrics.precision, [1 / 2, 2 / 3, 1.0]),
        (metrics.recall, [1 / 2, 1.0, 1 / 2]),
        (metrics.sensitivity, [1 / 2, 1.0, 1 / 2]),
        (metrics.specificity, [3 / 4, 3 / 4, 4 / 4]),  # TN / (TN + FP): class 0 has TN 3, FP 1
        (metrics.f1_score, [2 / 4, 4 / 5, 2 / 3]),     # 2TP / (2TP + FP + FN)
    ],
)
def test_per_class_scores_hand_case(function, per_class):
    assert function(Y_TRUE, Y_PRED, num_classes=3, average=None).tolist() == pytest.approx(per_class)
    assert function(Y_TRUE, Y_PRED, num_classes=3) == pytest.approx(np.mean(per_class))
    # Supports are 2, 2, 2 here, so weighted equals macro.
    assert function(Y_TRUE, Y_PRED, num_classes=3, average="weighted") == pytest.approx(np.mean(per_class))


def test_zero_division_gives_zero():
    # Class 2 never occurs and is never predicted.
    assert metrics.precision([0, 1], [0, 0], num_classes=3, average=None).tolist() == [0.5, 0.0, 0.0]
    assert metrics.recall([0, 1], [0, 0], num_classes=3, average=None).tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "y_true, scores, expected",
    [
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),  # scikit-learn's documented example
        ([0, 1], [0.5, 0.5], 0.5),                    # a tie counts one half
        ([0, 0, 1], [0.2, 0.2, 0.2], 0.5),
        ([1, 1, 0], [0.9, 0.8, 0.1], 1.0),
        ([1, 1, 0], [0.1, 0.2, 0.9], 0.0),
        ([1, 1, 1], [0.1, 0.2, 0.9], float("nan")),   # one class only: undefined
    ],
)
def test_binary_auc_hand_cases(y_true, scores, expected):
    assert metrics.roc_auc(y_true, scores) == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize("seed, num_classes", [(0, 2), (1, 3), (2, 4)])
def test_agrees_with_sklearn_on_random_labels(seed, num_classes):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, num_classes, 300)
    scores = rng.dirichlet(np.ones(num_classes), 300)
    # Make the predictions informative so the metrics are not all near chance.
    scores[np.arange(300), y_true] += rng.random(300)
    scores /= scores.sum(axis=1, keepdims=True)
    y_pred = scores.argmax(axis=1)
    labels = list(range(num_classes))
    assert metrics.confusion_matrix(y_true, y_pred, num_classes=num_classes).tolist() == \
        skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert metrics.balanced_accuracy(y_true, y_pred, num_classes=num_classes) == pytest.approx(
        skm.balanced_accuracy_score(y_true, y_pred))
    for ours, theirs in ((metrics.precision, skm.precision_score), (metrics.recall, skm.recall_score),
                         (metrics.f1_score, skm.f1_score)):
        for average in ("macro", "weighted", None):
            expected = theirs(y_true, y_pred, labels=labels, average=average, zero_division=0)
            assert np.allclose(ours(y_true, y_pred, num_classes=num_classes, average=average), expected)
    multilabel = skm.multilabel_confusion_matrix(y_true, y_pred, labels=labels)  # [[tn, fp], [fn, tp]]
    expected_specificity = multilabel[:, 0, 0] / (multilabel[:, 0, 0] + multilabel[:, 0, 1])
    assert np.allclose(metrics.specificity(y_true, y_pred, num_classes=num_classes, average=None),
                       expected_specificity)
    if num_classes == 2:
        assert metrics.roc_auc(y_true, scores) == pytest.approx(skm.roc_auc_score(y_true, scores[:, 1]))
        assert metrics.roc_auc(y_true, scores[:, 1]) == pytest.approx(skm.roc_auc_score(y_true, scores[:, 1]))
    else:
        for average in ("macro", "weighted"):
            assert metrics.roc_auc(y_true, scores, average=average) == pytest.approx(
                skm.roc_auc_score(y_true, scores, multi_class="ovr", average=average))


def test_auc_with_many_ties_matches_sklearn():
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + 0.3 * y_true, 1)
    assert metrics.roc_auc(y_true, scores) == pytest.approx(skm.roc_auc_score(y_true, scores))


def test_torch_inputs_are_accepted():
    assert metrics.accuracy(torch.tensor(Y_TRUE), torch.tensor(Y_PRED)) == pytest.approx(4 / 6)
    assert metrics.roc_auc(torch.tensor([0, 0, 1, 1]), torch.tensor([0.1, 0.4, 0.35, 0.8])) == 0.75


def test_classification_report_structure_and_values():
    scores = np.eye(3)[Y_PRED] * 0.8 + 0.1
    report = metrics.classification_report(Y_TRUE, Y_PRED, num_classes=3, class_names=["glioma", "meningioma",
                                                                                          "pituitary"],
                                           scores=scores)
    assert report["samples"] == 6
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["meningioma"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "specificity": 0.75, "f1": 0.8, "support": 2,
         "roc_auc": metrics.roc_auc(np.array(Y_TRUE) == 1, scores[:, 1])})
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["macro"]["recall"] == pytest.approx(2 / 3)
    assert report["roc_auc"] == pytest.approx(
        skm.roc_auc_score(Y_TRUE, scores / scores.sum(axis=1, keepdims=True), multi_class="ovr"))


def _random_batches(seed, num_classes, n=400, batches=5):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes)) + 1.5 * np.eye(num_classes)[y_true]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, logits, probabilities, np.array_split(np.arange(n), batches)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_classification_meter_summed_over_ranks(num_classes):
    y_true, _, probabilities, chunks = _random_batches(3, num_classes)
    ranks = [metrics.ClassificationMeter(num_classes), metrics.ClassificationMeter(num_classes)]
    for i, chunk in enumerate(chunks):
        ranks[i % 2].update(y_true[chunk], probabilities=torch.tensor(probabilities[chunk]), loss=float(i))
    total = metrics.ClassificationMeter(num_classes)
    total.load_state(ranks[0].state() + ranks[1].state())  # what an allreduce(sum) produces
    result = total.compute()
    y_pred = probabilities.argmax(axis=1)
    assert result["samples"] == 400
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert result["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert result["recall_weighted"] == pytest.approx(skm.recall_score(y_true, y_pred, average="weighted"))
    sizes = [len(c) for c in chunks]
    assert result["loss"] == pytest.approx(sum(i * s for i, s in enumerate(sizes)) / 400)
    expected_auc = (skm.roc_auc_score(y_true, probabilities[:, 1]) if num_classes == 2
                    else skm.roc_auc_score(y_true, probabilities, multi_class="ovr"))
    assert result["roc_auc"] == pytest.approx(expected_auc, abs=1e-3)  # histogram: pairs in a bin tie
    assert total.confusion_matrix().tolist() == skm.confusion_matrix(y_true, y_pred).tolist()
    merged = metrics.ClassificationMeter(num_classes)
    merged.merge(ranks[0])
    merged.merge(ranks[1])
    assert np.array_equal(merged.state(), total.state())


def test_classification_meter_auc_resolves_confident_scores():
    # A trained network's probabilities crowd near 0 and 1; logit-space bins keep them apart.
    rng = np.random.default_rng(4)
    y_true = rng.integers(0, 2, 1000)
    logits = rng.normal(loc=np.where(y_true == 1, 9.0, 6.0), scale=1.5)
    p1 = 1 / (1 + np.exp(-logits))
    meter = metrics.ClassificationMeter(2)
    meter.update(y_true, probabilities=np.stack([1 - p1, p1], axis=1))
    assert meter.compute()["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, p1), abs=2e-3)


def test_classification_meter_logits_equal_probabilities_and_report():
    y_true, logits, probabilities, _ = _random_batches(6, 3, n=60, batches=1)
    from_logits, from_probs = metrics.ClassificationMeter(3), metrics.ClassificationMeter(3)
    from_logits.update(y_true, logits=logits)
    from_probs.update(y_true, probabilities=probabilities)
    assert np.array_equal(from_logits.state(), from_probs.state())
    report = from_probs.report(["a", "b", "c"])
    assert set(report["per_class"]) == {"a", "b", "c"}
    assert np.isnan(report["loss"])
    no_auc = metrics.ClassificationMeter(3, auc_bins=0)
    no_auc.update(y_true, y_pred=probabilities.argmax(axis=1))
    assert np.isnan(no_auc.compute()["roc_auc"]) and no_auc.state().size == 9 + 2


# Segmentation: five 2x2 images, flattened row-major.
SEG_CASES = [
    # target, prediction, dice, iou, tversky (fn 0.7, fp 0.3)
    ([0, 0, 0, 0], [0, 0, 0, 0], 1.0, 1.0, 1.0),              # both empty: policy 1.0
    ([0, 0, 0, 0], [1, 0, 0, 0], 0.0, 0.0, 0.0),              # false alarm on a tumour-free slice
    ([1, 1, 0, 0], [0, 0, 0, 0], 0.0, 0.0, 0.0),              # missed tumour
    ([1, 1, 0, 0], [1, 0, 1, 0], 0.5, 1 / 3, 0.5),            # TP 1, FP 1, FN 1
    ([1, 1, 1, 0], [1, 1, 0, 0], 0.8, 2 / 3, 2 / 2.7),        # TP 2, FP 0, FN 1
]


def _seg_arrays():
    target = np.array([c[0] for c in SEG_CASES], dtype=np.float32).reshape(-1, 1, 2, 2)
    prediction = np.array([c[1] for c in SEG_CASES], dtype=np.float32).reshape(-1, 1, 2, 2)
    return prediction * 0.9, target  # probabilities 0.9 / 0.0


def test_segmentation_per_image_hand_table():
    prediction, target = _seg_arrays()
    assert metrics.dice_per_image(prediction, target).tolist() == pytest.approx([c[2] for c in SEG_CASES])
    assert metrics.iou_per_image(prediction, target).tolist() == pytest.approx([c[3] for c in SEG_CASES])
    assert metrics.tversky_per_image(prediction, target).tolist() == pytest.approx([c[4] for c in SEG_CASES])


def test_segmentation_aggregates_hand_values():
    prediction, target = _seg_arrays()
    scores = metrics.segmentation_scores(prediction, target)
    assert scores["dice_mean"] == pytest.approx((1 + 0 + 0 + 0.5 + 0.8) / 5)
    assert scores["dice_tumor"] == pytest.approx((0 + 0.5 + 0.8) / 3)
    # Pooled: TP 3, FP 2, FN 4.
    assert scores["dice_global"] == pytest.approx(6 / 12)
    assert scores["iou_global"] == pytest.approx(3 / 9)
    assert scores["target_nonempty"].tolist() == [False, False, True, True, True]
    assert metrics.aggregate(scores["iou"], scores["target_nonempty"], how="tumor") == pytest.approx(
        (0 + 1 / 3 + 2 / 3) / 3)
    assert np.isnan(metrics.aggregate([1.0], [False], how="tumor"))


def test_segmentation_threshold_and_shapes():
    probabilities = np.array([[0.2, 0.6], [0.5, 0.49]])
    target = np.array([[0, 1], [1, 0]])
    assert metrics.dice_per_image(probabilities, target).tolist() == [1.0]          # >= 0.5 is foreground
    assert metrics.dice_per_image(probabilities, target, threshold=0.55).tolist() == pytest.approx([2 / 3])
    assert metrics.dice_per_image(torch.tensor(probabilities)[None], torch.tensor(target)[None]).tolist() == [1.0]


def test_dice_and_iou_agree_with_sklearn_on_random_masks():
    rng = np.random.default_rng(8)
    target = rng.random((6, 1, 16, 16)) > 0.6
    prediction = rng.random((6, 1, 16, 16))
    dice = metrics.dice_per_image(prediction, target)
    iou = metrics.iou_per_image(prediction, target)
    for i in range(6):
        flat_true, flat_pred = target[i].ravel(), prediction[i].ravel() >= 0.5
        assert dice[i] == pytest.approx(skm.f1_score(flat_true, flat_pred))
        assert iou[i] == pytest.approx(skm.jaccard_score(flat_true, flat_pred))


def test_segmentation_meter_summed_over_ranks():
    rng = np.random.default_rng(9)
    target = rng.random((10, 1, 8, 8)) > 0.7
    target[[2, 5]] = False  # tumour-free slices
    prediction = rng.random((10, 1, 8, 8))
    prediction[5] = 0.0    # correctly empty
    ranks = [metrics.SegmentationMeter(), metrics.SegmentationMeter()]
    for i, chunk in enumerate(np.array_split(np.arange(10), 4)):
        ranks[i % 2].update(torch.tensor(prediction[chunk]), target[chunk], loss=0.5)
    total = metrics.SegmentationMeter()
    total.load_state(ranks[0].state() + ranks[1].state())
    result = total.compute()
    reference = metrics.segmentation_scores(prediction, target)
    for name in ("dice", "iou", "tversky"):
        assert result[name] == pytest.approx(reference[f"{name}_mean"])
        assert result[f"{name}_tumor"] == pytest.approx(reference[f"{name}_tumor"])
        assert result[f"{name}_global"] == pytest.approx(reference[f"{name}_global"])
    assert result["images"] == 10 and result["tumor_images"] == 8
    assert result["empty_correct_rate"] == 0.5   # slice 5 predicted empty, slice 2 not
    assert result["detection_rate"] == 1.0
    assert result["loss"] == pytest.approx(0.5)
    assert result["pixel_accuracy"] == pytest.approx(np.mean((prediction >= 0.5) == target))
    merged = metrics.SegmentationMeter()
    merged.merge(ranks[0])
    merged.merge(ranks[1])
    assert np.array_equal(merged.state(), total.state())
    empty = metrics.SegmentationMeter().compute()
    assert np.isnan(empty["dice"]) and np.isnan(empty["loss"])


def test_as_mapping_is_json_ready():
    import json

    prediction, target = _seg_arrays()
    loaded = json.loads(json.dumps(metrics.as_mapping(metrics.segmentation_scores(prediction, target))))
    assert loaded["dice_mean"] == pytest.approx(0.46)
    assert loaded["target_nonempty"] == [False, False, True, True, True]
    assert loaded["tp"] == [0, 0, 0, 1, 2]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.confusion_matrix([0, 1], [0, 3], num_classes=3), "< num_classes=3"),
        (lambda: metrics.confusion_matrix([0, 1], [0, 1], num_classes=1), "num_classes"),
        (lambda: metrics.accuracy([0, 1], [0]), "same length"),
        (lambda: metrics.accuracy([], []), "empty"),
        (lambda: metrics.balanced_accuracy([0, -1], [0, 0], num_classes=2), ">= 0"),
        (lambda: metrics.precision([0.5], [0], num_classes=2), "integer"),
        (lambda: metrics.recall([[0, 1]], [[0, 1]], num_classes=2), "1-D"),
        (lambda: metrics.specificity([0], [0], num_classes=2, average="micro"), "'micro'"),
        (lambda: metrics.f1_score([0], [2], num_classes=2), "< num_classes"),
        (lambda: metrics.per_class_scores(np.ones((2, 3))), "square"),
        (lambda: metrics.roc_auc([0, 1], [0.1, np.nan]), "finite"),
        (lambda: metrics.roc_auc([0, 1, 2], np.ones((3, 2)), num_classes=3), "3 columns"),
        (lambda: metrics.roc_auc([0, 1], [0.1, 0.2, 0.3]), "2 labels"),
        (lambda: metrics.classification_report([0, 1], [0, 1], num_classes=2, class_names=["a"]), "2 entries"),
        (lambda: metrics.classification_report([0, 1], [0, 1], num_classes=2, scores=[0.1, 0.9]), "scores"),
        (lambda: metrics.ClassificationMeter(1), "num_classes"),
        (lambda: metrics.ClassificationMeter(2, auc_bins=-1), "auc_bins"),
        (lambda: metrics.ClassificationMeter(2).update([0, 1]), "y_pred"),
        (lambda: metrics.ClassificationMeter(2).update([0], probabilities=[[2.0, -1.0]]), r"\[0, 1\]"),
        (lambda: metrics.ClassificationMeter(2).update([0], logits=[[1.0, 2.0, 3.0]]), r"\(N, 2\)"),
        (lambda: metrics.ClassificationMeter(2).load_state(np.zeros(3)), "values"),
        (lambda: metrics.ClassificationMeter(2).merge(metrics.ClassificationMeter(3)), "same num_classes"),
        (lambda: metrics.segmentation_counts(np.zeros((2, 2)), np.zeros((3, 3))), "shapes differ"),
        (lambda: metrics.segmentation_counts(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 4))), r"\(N, 1, H, W\)"),
        (lambda: metrics.dice_per_image(np.zeros((2, 2)), np.zeros((2, 2)), threshold=0), "threshold"),
        (lambda: metrics.iou_per_image(np.zeros(4), np.zeros(4)), "shape"),
        (lambda: metrics.tversky_per_image(np.zeros((2, 2)), np.zeros((2, 2)), fn_weight=-0.7), "fn_weight"),
        (lambda: metrics.aggregate([1.0], [True], how="median"), "'median'"),
        (lambda: metrics.segmentation_scores(np.zeros((2, 2)), np.zeros((2, 2)), fn_weight=0, fp_weight=0),
         "both be 0"),
        (lambda: metrics.SegmentationMeter(threshold=2.0), "threshold"),
        (lambda: metrics.SegmentationMeter().update(np.zeros((2, 2)), np.zeros((2, 2)), loss=float("nan")),
         "finite"),
        (lambda: metrics.SegmentationMeter().load_state([1.0]), "values"),
        (lambda: metrics.SegmentationMeter().merge(metrics.SegmentationMeter(threshold=0.3)), "same threshold"),
        (lambda: metrics.as_mapping([1, 2]), "mapping"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
