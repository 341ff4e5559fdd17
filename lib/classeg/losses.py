"""Training losses: focal Tversky (the Class-Seg segmenter's loss), Dice, BCE + Dice, cross-entropy.

Segmentation losses take predictions and targets of the same shape, normally (N, 1, H, W): predictions are
probabilities in [0, 1] (the published model ends in a sigmoid) or, with ``from_logits=True``, logits (the
`classeg.models.resunet.ResUNet` output; numerically safer). Targets are binary masks in {0, 1} (soft
targets in [0, 1] are accepted). All sums run in float32 or wider, whatever the input dtype.

Tversky convention (Abraham and Khan 2019, and the published Class-Seg code)::

    TI = (TP + smooth) / (TP + fn_weight * FN + fp_weight * FP + smooth)
    TP = sum(p * y),  FN = sum((1 - p) * y),  FP = sum(p * (1 - y))
    focal Tversky loss = (1 - TI) ** exponent

with ``fn_weight = 0.7`` (false negatives, i.e. missed tumour, cost more), ``fp_weight = 0.3`` and
``exponent = 0.75`` (the paper's gamma = 4/3 enters as 1/gamma). Beware when comparing: the paper's and
the Class-Seg code's ``alpha`` multiplies **false negatives**, whereas MONAI's `TverskyLoss` and the Keras
community losses use ``alpha`` for **false positives** and ``beta`` for false negatives. This module names
the weights ``fn_weight`` and ``fp_weight`` so they cannot be swapped by accident.

``mode`` chooses how images of a batch are combined:

- ``"batch"`` (default, as the published code): one index over all pixels of all images in the batch.
- ``"image"``: one index per image; the loss is the mean over images of the per-image loss.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("batch", "image")


def _check_number(name: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _prepare(prediction: torch.Tensor, target: torch.Tensor, *, from_logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes/ranges and return float probabilities and targets, both (N, -1)."""
    if not isinstance(prediction, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError(
            f"prediction and target must be torch tensors, got {type(prediction).__name__} and "
            f"{type(target).__name__}"
        )
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have the same shape, got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}"
        )
    if prediction.ndim < 2 or prediction.shape[0] == 0:
        raise ValueError(f"expected (N, 1, H, W) tensors with N >= 1, got shape {tuple(prediction.shape)}")
    dtype = torch.promote_types(prediction.dtype, torch.float32) if prediction.is_floating_point() else torch.float32
    prediction = prediction.to(dtype)
    target = target.to(dtype)
    if from_logits:
        probabilities = torch.sigmoid(prediction)
    else:
        # One reduction per call; catching logits passed as probabilities is worth the sync.
        low, high = torch.aminmax(prediction.detach())
        if low < 0 or high > 1:
            raise ValueError(
                f"prediction must be probabilities in [0, 1] (pass from_logits=True for logits), got values "
                f"in [{low.item():.4g}, {high.item():.4g}]"
            )
        probabilities = prediction
    return probabilities.reshape(prediction.shape[0], -1), target.reshape(target.shape[0], -1)


def _confusion_sums(probabilities: torch.Tensor, target: torch.Tensor, mode: str):
    dims = None if mode == "batch" else 1
    if dims is None:
        tp = (probabilities * target).sum()
        fn = ((1 - probabilities) * target).sum()
        fp = (probabilities * (1 - target)).sum()
    else:
        tp = (probabilities * target).sum(dim=dims)
        fn = ((1 - probabilities) * target).sum(dim=dims)
        fp = (probabilities * (1 - target)).sum(dim=dims)
    return tp, fn, fp


def _soft_overlap(prediction: torch.Tensor, target: torch.Tensor, *, tp_weight: float, fn_weight: float,
                  fp_weight: float, smooth: float, mode: str, from_logits: bool, what: str) -> torch.Tensor:
    """``(tp_weight*TP + smooth) / (tp_weight*TP + fn_weight*FN + fp_weight*FP + smooth)`` of soft counts.

    Tversky is ``tp_weight=1``; Dice is ``tp_weight=2, fn_weight=fp_weight=1``, which keeps the published
    Dice smoothing (``smooth`` added once to ``2TP``, not to ``TP``). ``what`` names the score in errors.
    """
    smooth = _check_number("smooth", smooth)
    _check_mode(mode)
    probabilities, target = _prepare(prediction, target, from_logits=from_logits)
    tp, fn, fp = _confusion_sums(probabilities, target, mode)
    weighted_tp = tp_weight * tp
    denominator = weighted_tp + fn_weight * fn + fp_weight * fp + smooth
    if smooth == 0 and bool((denominator == 0).any()):
        raise ValueError(f"{what} undefined (0/0) for an empty target and prediction with smooth=0")
    return (weighted_tp + smooth) / denominator


def tversky_index(prediction: torch.Tensor, target: torch.Tensor, *, fn_weight: float = 0.7, fp_weight: float = 0.3,
                  smooth: float = 1.0, mode: str = "batch", from_logits: bool = False) -> torch.Tensor:
    """Soft Tversky index ``(TP + smooth) / (TP + fn_weight*FN + fp_weight*FP + smooth)``.

    Args:
        prediction: (N, 1, H, W) probabilities in [0, 1], or logits with ``from_logits=True``.
        target: (N, 1, H, W) masks in {0, 1} (or soft targets in [0, 1]).
        fn_weight: weight of false negatives (the paper's alpha, 0.7).
        fp_weight: weight of false positives (the paper's 1 - alpha, 0.3).
        smooth: added to numerator and denominator (1 in the published code); > 0 makes empty masks
            score 1.
        mode: "batch" -> scalar over the whole batch; "image" -> (N,) one index per image.

    Returns:
        A scalar tensor ("batch") or an (N,) tensor ("image"), differentiable w.r.t. ``prediction``.
    """
    fn_weight = _check_number("fn_weight", fn_weight)
    fp_weight = _check_number("fp_weight", fp_weight)
    return _soft_overlap(prediction, target, tp_weight=1.0, fn_weight=fn_weight, fp_weight=fp_weight,
                         smooth=smooth, mode=mode, from_logits=from_logits, what="Tversky index")


def focal_tversky_loss(prediction: torch.Tensor, target: torch.Tensor, *, fn_weight: float = 0.7,
                       fp_weight: float = 0.3, exponent: float = 0.75, smooth: float = 1.0, mode: str = "batch",
                       from_logits: bool = False) -> torch.Tensor:
    """Focal Tversky loss ``(1 - TI) ** exponent`` (Abraham and Khan 2019); scalar tensor.

    Arguments as `tversky_index`; ``exponent`` is 1/gamma of the paper (0.75 = 1/(4/3), the published
    default; 1 gives the plain Tversky loss). In "image" mode the per-image losses are averaged.
    """
    exponent = _check_number("exponent", exponent, strict=True)
    index = tversky_index(prediction, target, fn_weight=fn_weight, fp_weight=fp_weight, smooth=smooth,
                          mode=mode, from_logits=from_logits)
    return _safe_power(1 - index, exponent).mean()


def _safe_power(base: torch.Tensor, exponent: float) -> torch.Tensor:
    """``max(base, 0) ** exponent`` with a zero (not NaN) gradient where base <= 0.

    Rounding can push TI a hair above 1, and a perfect prediction makes 1 - TI exactly 0, where the
    gradient of x**0.75 is infinite; the double `where` keeps NaN out of the backward pass.
    """
    positive = base > 0
    safe = torch.where(positive, base, torch.ones_like(base))
    return torch.where(positive, safe.pow(exponent), torch.zeros_like(base))


def dice_loss(prediction: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0, mode: str = "batch",
              from_logits: bool = False) -> torch.Tensor:
    """Soft Dice loss ``1 - (2*TP + smooth) / (sum(p) + sum(y) + smooth)``; scalar tensor.

    Shapes and ``mode`` as `tversky_index` (Dice is the Tversky index with both weights 0.5).
    """
    dice = _soft_overlap(prediction, target, tp_weight=2.0, fn_weight=1.0, fp_weight=1.0, smooth=smooth,
                         mode=mode, from_logits=from_logits, what="Dice")
    return (1 - dice).mean()


def bce_dice_loss(prediction: torch.Tensor, target: torch.Tensor, *, bce_weight: float = 1.0,
                  dice_weight: float = 1.0, smooth: float = 1.0, mode: str = "batch",
                  from_logits: bool = False) -> torch.Tensor:
    """``bce_weight * mean binary cross-entropy + dice_weight * dice_loss``; scalar tensor.

    With ``from_logits=True`` the BCE term is computed from logits (`binary_cross_entropy_with_logits`).
    """
    bce_weight = _check_number("bce_weight", bce_weight)
    dice_weight = _check_number("dice_weight", dice_weight)
    dice = dice_loss(prediction, target, smooth=smooth, mode=mode, from_logits=from_logits)
    prediction_f = prediction.float() if prediction.dtype in (torch.float16, torch.bfloat16) else prediction
    target_f = target.to(prediction_f.dtype)
    if from_logits:
        bce = F.binary_cross_entropy_with_logits(prediction_f, target_f)
    else:
        bce = F.binary_cross_entropy(prediction_f, target_f)
    return bce_weight * bce + dice_weight * dice


class _SegmentationLoss(nn.Module):
    """Module form of a functional segmentation loss: ``loss(prediction, target) -> scalar``."""

    function = staticmethod(focal_tversky_loss)

    def __init__(self, **options: Any):
        super().__init__()
        self.options = options
        # Validate now, not at the first batch.
        probe = torch.full((1, 1, 2, 2), 0.5)
        self.function(probe, probe, **options)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.function(prediction, target, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class FocalTverskyLoss(_SegmentationLoss):
    """Module form of `focal_tversky_loss`; keyword options as there (``fn_weight=0.7, fp_weight=0.3,
    exponent=0.75, smooth=1, mode="batch", from_logits=False``)."""

    function = staticmethod(focal_tversky_loss)

    def __init__(self, *, fn_weight: float = 0.7, fp_weight: float = 0.3, exponent: float = 0.75,
                 smooth: float = 1.0, mode: str = "batch", from_logits: bool = False):
        super().__init__(fn_weight=fn_weight, fp_weight=fp_weight, exponent=exponent, smooth=smooth,
                         mode=mode, from_logits=from_logits)


class TverskyLoss(_SegmentationLoss):
    """``1 - tversky_index``: the focal Tversky loss with exponent 1; options as `tversky_index`."""

    function = staticmethod(focal_tversky_loss)

    def __init__(self, *, fn_weight: float = 0.7, fp_weight: float = 0.3, smooth: float = 1.0,
                 mode: str = "batch", from_logits: bool = False):
        super().__init__(fn_weight=fn_weight, fp_weight=fp_weight, exponent=1.0, smooth=smooth,
                         mode=mode, from_logits=from_logits)


class DiceLoss(_SegmentationLoss):
    """Module form of `dice_loss` (``smooth=1, mode="batch", from_logits=False``)."""

    function = staticmethod(dice_loss)

    def __init__(self, *, smooth: float = 1.0, mode: str = "batch", from_logits: bool = False):
        super().__init__(smooth=smooth, mode=mode, from_logits=from_logits)


class BCEDiceLoss(_SegmentationLoss):
    """Module form of `bce_dice_loss` (``bce_weight=1, dice_weight=1, smooth=1, mode="batch"``)."""

    function = staticmethod(bce_dice_loss)

    def __init__(self, *, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 mode: str = "batch", from_logits: bool = False):
        super().__init__(bce_weight=bce_weight, dice_weight=dice_weight, smooth=smooth, mode=mode,
                         from_logits=from_logits)


def cross_entropy_loss(*, class_weights: Sequence[float] | torch.Tensor | None = None, label_smoothing: float = 0.0,
                       num_classes: int | None = None) -> nn.CrossEntropyLoss:
    """Categorical cross-entropy for the classifier: ``loss(logits (N, K), labels (N,) int64) -> scalar``.

    A thin wrapper over `torch.nn.CrossEntropyLoss` (mean reduction) that validates its arguments.
    ``class_weights``: one non-negative weight per class (e.g. inverse class frequency), length
    ``num_classes`` when that is given. ``label_smoothing`` in [0, 1).
    """
    label_smoothing = _check_number("label_smoothing", label_smoothing)
    if label_smoothing >= 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    weight = None
    if class_weights is not None:
        try:
            weight = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"class_weights must be a sequence of numbers, got {class_weights!r}") from err
        if weight.numel() == 0 or bool((weight < 0).any()) or not bool(torch.isfinite(weight).all()):
            raise ValueError(f"class_weights must be finite and >= 0, one per class, got {class_weights!r}")
        if num_classes is not None and weight.numel() != num_classes:
            raise ValueError(
                f"class_weights must have num_classes={num_classes} values, got {weight.numel()}"
            )
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


class MaskSupervisedLoss(nn.Module):
    """The classifier's loss with lesion-map supervision: ``cross_entropy(logits, labels) + weight *
    BCE(lesion_logits, cell_targets)``.

    ``forward(output, target)``: ``output`` is ``(logits (N, K), lesion_logits (N, 1, h, w))`` and
    ``target`` ``(labels (N,) int64, masks (N, 1, H, W) in {0, 1})`` in training; a cell's target is 1 when
    any mask pixel under it is tumour (max pooling to the map's grid). ``output`` logits alone with
    ``target`` labels alone (evaluation, where the model returns logits only) give the cross entropy.
    Tumour cells are a few in a thousand, so positives weigh ``pos_weight`` times more in the BCE: without
    that the map learns "never tumour".
    """

    def __init__(self, cross_entropy: nn.Module, *, weight: float = 1.0, pos_weight: float = 20.0):
        super().__init__()
        self.cross_entropy = cross_entropy
        self.weight = _check_number("weight", weight)
        self.register_buffer("pos_weight", torch.tensor(_check_number("pos_weight", pos_weight, strict=True)))

    def forward(self, output, target) -> torch.Tensor:
        if not isinstance(output, tuple):
            return self.cross_entropy(output, target[0] if isinstance(target, tuple) else target)
        logits, lesion_logits = output
        labels, masks = target
        cells = F.adaptive_max_pool2d(masks.float(), lesion_logits.shape[-2:])
        mask_loss = F.binary_cross_entropy_with_logits(lesion_logits.float(), cells, pos_weight=self.pos_weight)
        return self.cross_entropy(logits.float(), labels) + self.weight * mask_loss


_FACTORIES = {
    "focal_tversky": FocalTverskyLoss,
    "tversky": TverskyLoss,
    "dice": DiceLoss,
    "bce_dice": BCEDiceLoss,
    "cross_entropy": cross_entropy_loss,
}
LOSS_NAMES = tuple(_FACTORIES)


def build_loss(name: str, **options: Any) -> nn.Module:
    """Loss module by name: one of ``LOSS_NAMES`` ("focal_tversky", "tversky", "dice", "bce_dice",
    "cross_entropy"), with that loss's keyword options; unknown options raise ValueError listing the
    accepted ones."""
    if name not in _FACTORIES:
        raise ValueError(f"loss name must be one of {LOSS_NAMES}, got {name!r}")
    factory = _FACTORIES[name]
    accepted = [p for p in inspect.signature(factory).parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"loss {name!r} accepts options {accepted}, got unknown {unknown}")
    return factory(**options)
