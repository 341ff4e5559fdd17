"""Losses: hand-computed focal Tversky values, MONAI agreement, Dice/BCE/CE, argument checks."""
import math

import pytest
import torch

from classeg import losses

Y = [1.0, 1.0, 0.0, 0.0]
P = [0.9, 0.6, 0.2, 0.1]


def as_image(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 2)


# TP = 1.5, FN = 0.5, FP = 0.3 (hand-computed from Y and P).
@pytest.mark.parametrize(
    "smooth, exponent, expected_index, expected_loss",
    [
        (1.0, 0.75, 0.850340, 0.240618),     # 2.5 / 2.94 ; 0.149660 ** 0.75
        (1e-6, 1.0, 0.773196, 0.226804),     # 1.5 / 1.94 ; plain Tversky loss
        (1e-6, 0.75, 0.773196, 0.328653),
        (1e-6, 4 / 3, 0.773196, 0.138314),
    ],
)
def test_focal_tversky_hand_values(smooth, exponent, expected_index, expected_loss):
    index = losses.tversky_index(as_image(P), as_image(Y), smooth=smooth)
    loss = losses.focal_tversky_loss(as_image(P), as_image(Y), smooth=smooth, exponent=exponent)
    assert index.item() == pytest.approx(expected_index, abs=1e-6)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-6)


def test_weights_are_named_not_positional():
    # Swapping the weights changes the value: fn_weight multiplies FN = 0.5, fp_weight FP = 0.3.
    swapped = losses.tversky_index(as_image(P), as_image(Y), fn_weight=0.3, fp_weight=0.7)
    assert swapped.item() == pytest.approx(2.5 / 2.86, abs=1e-6)
    with pytest.raises(TypeError):
        losses.tversky_index(as_image(P), as_image(Y), 0.3, 0.7)  # keyword-only


def test_batch_and_image_modes():
    # Image B: empty target, one pixel at 0.1 -> TI = 1 / 1.03 = 0.970874, loss 0.070504.
    prediction = torch.cat([as_image(P), as_image([0.1, 0, 0, 0])])
    target = torch.cat([as_image(Y), as_image([0, 0, 0, 0])])
    per_image = losses.tversky_index(prediction, target, mode="image")
    assert per_image.tolist() == pytest.approx([0.850340, 0.970874], abs=1e-6)
    # Batch: TP 1.5, FN 0.5, FP 0.4 -> 2.5 / 2.97.
    assert losses.tversky_index(prediction, target).item() == pytest.approx(0.841751, abs=1e-6)
    assert losses.focal_tversky_loss(prediction, target).item() == pytest.approx(0.250903, abs=1e-6)
    assert losses.focal_tversky_loss(prediction, target, mode="image").item() == pytest.approx(
        (0.240618 + 0.070504) / 2, abs=1e-6)


def test_from_logits_matches_probabilities():
    logits = torch.logit(as_image(P).double())
    loss = losses.focal_tversky_loss(logits, as_image(Y), from_logits=True)
    assert loss.item() == pytest.approx(0.240618, abs=1e-6)


def test_perfect_prediction_has_zero_loss_and_finite_gradient():
    prediction = as_image(Y).requires_grad_(True)
    loss = losses.focal_tversky_loss(prediction, as_image(Y), smooth=1.0)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(prediction.grad).all()


def test_gradient_flows_and_half_precision_input():
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    losses.focal_tversky_loss(logits, target, from_logits=True).backward()
    assert logits.grad.abs().sum() > 0
    half = losses.focal_tversky_loss(as_image(P).half(), as_image(Y))
    assert half.dtype == torch.float32 and half.item() == pytest.approx(0.240618, abs=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_monai(seed):
    monai_losses = pytest.importorskip("monai.losses")
    generator = torch.Generator().manual_seed(seed)
    prediction = torch.rand(4, 1, 16, 16, generator=generator, dtype=torch.float64)
    target = (torch.rand(4, 1, 16, 16, generator=generator) > 0.7).double()
    # MONAI: alpha weights false positives, beta false negatives; one channel is all "background".
    monai_tversky = monai_losses.TverskyLoss(alpha=0.3, beta=0.7, batch=True, smooth_nr=1, smooth_dr=1,
                                             sigmoid=False, include_background=True)
    expected = monai_tversky(prediction, target) ** 0.75
    assert losses.focal_tversky_loss(prediction, target).item() == pytest.approx(expected.item(), abs=1e-9)
    per_image = monai_losses.TverskyLoss(alpha=0.3, beta=0.7, batch=False, smooth_nr=1, smooth_dr=1)
    ours = losses.focal_tversky_loss(prediction, target, exponent=1.0, mode="image")
    assert ours.item() == pytest.approx(per_image(prediction, target).item(), abs=1e-9)
    monai_dice = monai_losses.DiceLoss(batch=True, smooth_nr=1, smooth_dr=1)
    assert losses.dice_loss(prediction, target).item() == pytest.approx(monai_dice(prediction, target).item(),
                                                                        abs=1e-9)


def test_dice_and_bce_dice_hand_values():
    # Dice: (2*1.5 + 1) / (1.8 + 2 + 1) = 0.833333; BCE = mean(-log .9, -log .6, -log .8, -log .9).
    assert losses.dice_loss(as_image(P), as_image(Y)).item() == pytest.approx(1 - 4 / 4.8, abs=1e-6)
    bce = (-math.log(0.9) - math.log(0.6) - math.log(0.8) - math.log(0.9)) / 4
    assert bce == pytest.approx(0.236173, abs=1e-6)
    combined = losses.bce_dice_loss(as_image(P), as_image(Y), bce_weight=1.0, dice_weight=1.0)
    assert combined.item() == pytest.approx(0.236173 + 0.166667, abs=1e-5)
    from_logits = losses.bce_dice_loss(torch.logit(as_image(P)), as_image(Y), from_logits=True)
    assert from_logits.item() == pytest.approx(combined.item(), abs=1e-5)
    only_bce = losses.bce_dice_loss(as_image(P), as_image(Y), dice_weight=0.0)
    assert only_bce.item() == pytest.approx(0.236173, abs=1e-6)


@pytest.mark.parametrize(
    "options, logits, labels, expected",
    [
        ({}, [[2.0, 0.0]], [0], 0.126928),                                # log(1 + e^-2)
        ({"label_smoothing": 0.1}, [[2.0, 0.0]], [0], 0.226928),          # .95*0.126928 + .05*2.126928
        ({"class_weights": [1.0, 3.0]}, [[2.0, 0.0], [2.0, 0.0]], [0, 1], 1.626928),  # (0.1269+3*2.1269)/4
    ],
)
def test_cross_entropy_hand_values(options, logits, labels, expected):
    loss = losses.cross_entropy_loss(**options)
    value = loss(torch.tensor(logits), torch.tensor(labels))
    assert value.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name, expected_type", [
    ("focal_tversky", losses.FocalTverskyLoss), ("tversky", losses.TverskyLoss), ("dice", losses.DiceLoss),
    ("bce_dice", losses.BCEDiceLoss), ("cross_entropy", torch.nn.CrossEntropyLoss),
])
def test_build_loss_names(name, expected_type):
    assert isinstance(losses.build_loss(name), expected_type)


def test_build_loss_modules_compute_the_functional_values():
    module = losses.build_loss("focal_tversky", smooth=1e-6, exponent=4 / 3)
    assert module(as_image(P), as_image(Y)).item() == pytest.approx(0.138314, abs=1e-6)
    assert losses.build_loss("tversky", smooth=1e-6)(as_image(P), as_image(Y)).item() == pytest.approx(
        0.226804, abs=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: losses.tversky_index(as_image(P), torch.zeros(1, 1, 2, 3)), "same shape"),
        (lambda: losses.tversky_index(as_image([0.5, 2.0, 0, 0]), as_image(Y)), "from_logits"),
        (lambda: losses.tversky_index([0.9], [1.0]), "torch tensors"),
        (lambda: losses.tversky_index(as_image(P), as_image(Y), mode="pixel"), "'pixel'"),
        (lambda: losses.tversky_index(as_image(P), as_image(Y), fn_weight=-1), "-1"),
        (lambda: losses.tversky_index(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), smooth=0), "0/0"),
        (lambda: losses.focal_tversky_loss(as_image(P), as_image(Y), exponent=0), "exponent"),
        (lambda: losses.focal_tversky_loss(as_image(P), as_image(Y), smooth=-1.0), "smooth"),
        (lambda: losses.dice_loss(as_image(P), as_image(Y), mode="sum"), "'sum'"),
        (lambda: losses.dice_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), smooth=0), "0/0"),
        (lambda: losses.bce_dice_loss(as_image(P), as_image(Y), bce_weight="1"), "bce_weight"),
        (lambda: losses.FocalTverskyLoss(fp_weight="high"), "fp_weight"),
        (lambda: losses.TverskyLoss(mode="x"), "'x'"),
        (lambda: losses.DiceLoss(smooth=-2), "smooth"),
        (lambda: losses.BCEDiceLoss(dice_weight=-1), "dice_weight"),
        (lambda: losses.cross_entropy_loss(label_smoothing=1.0), "label_smoothing"),
        (lambda: losses.cross_entropy_loss(class_weights=[1.0, -1.0]), "class_weights"),
        (lambda: losses.cross_entropy_loss(class_weights=[1.0, 1.0], num_classes=3), "num_classes=3"),
        (lambda: losses.build_loss("lovasz"), "focal_tversky"),
        (lambda: losses.build_loss("dice", alpha=0.3), "alpha"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
