"""ResNet18/50 tumour classifiers: torchvision backbones, Class-Seg heads, transfer strategies.

A classifier is a `ClassifierNet`: a torchvision ResNet whose `fc` is removed (`.backbone`, which maps
(N, 3, H, W) to pooled features (N, 512) or (N, 2048)) followed by a new head (`.head`):

- ``linear``: one `nn.Linear(features, num_classes)`, i.e. torchvision's `fc` replaced (no dropout).
- ``dense``: the published Class-Seg head: pooled features -> Dense 1024, 1024, 1024, 256, each followed by
  ReLU and Dropout(`dropout`, 0.3 by default) -> Dense(num_classes).

The forward pass returns **logits** (N, num_classes); `predict_proba` applies the softmax. Binary problems
use ``num_classes=2`` (softmax), as the published models do.

Lesion map (``lesion_class`` set, binary tumour/no-tumour models trained with mask supervision): a 1x1
convolution on ``layer2`` (stride 8) scores every 8x8 cell for "tumour here"; the maximum over cells is
added to the logit of class ``lesion_class``. A pooled global feature dilutes a lesion of a few dozen
pixels among 16 000; a cell-level maximum does not, so small lesions on real anatomy stay visible to the
classifier. In training mode with ``emit_lesion_map`` set, forward returns ``(logits, lesion_logits)``
(lesion logits (N, 1, H/8, W/8)) for the mask loss (`classeg.losses.MaskSupervisedLoss`); otherwise the
logits alone, so scoring and evaluation see one tensor either way.

Transfer strategies (what trains):

- ``frozen``: only the head. The backbone's parameters have ``requires_grad=False`` and its BatchNorm
  layers stay in eval mode (running statistics neither used from the batch nor updated) even after
  ``model.train()``: `ClassifierNet.train` re-applies eval mode to the frozen stages.
- ``partial``: ``layer4`` and the head; the stem and ``layer1``-``layer3`` are frozen as above.
- ``finetune``: everything. `parameter_groups` gives the backbone a smaller learning rate than the head.

Weights travel with the preprocessing they expect: every model carries ``input_size``, ``mean`` and
``std`` (ImageNet statistics by default), and `describe()` records them for the model artifact. Nothing is
downloaded implicitly; ``weights="imagenet"`` asks torchvision, which only succeeds offline when the file is
already in torch's hub cache, and otherwise raises `WeightsUnavailableError` naming the file to stage.
"""
from __future__ import annotations

import logging
import io
import os
import urllib.error
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

logger = logging.getLogger(__name__)

ARCHS = ("resnet18", "resnet50")
HEADS = ("linear", "dense")
STRATEGIES = ("frozen", "partial", "finetune")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Hidden widths of the published Class-Seg dense head.
DENSE_HEAD_UNITS = (1024, 1024, 1024, 256)
#: Backbone children frozen per strategy (torchvision ResNet attribute names).
_STEM_AND_EARLY = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
_FROZEN_STAGES = {
    "frozen": _STEM_AND_EARLY + ("layer4", "avgpool"),
    "partial": _STEM_AND_EARLY,
    "finetune": (),
}
_FEATURES = {"resnet18": 512, "resnet50": 2048}
#: Channels of ``layer2``'s output, where the lesion map reads.
_LESION_FEATURES = {"resnet18": 128, "resnet50": 512}
# Listing a few hundred key names in an error helps nobody.
_MAX_KEYS_IN_ERROR = 20


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were requested but cannot be obtained (no network and no staged file)."""


class ClassifierNet(nn.Module):
    """ResNet backbone + classification head; (N, in_channels, H, W) normalised images -> (N, K) logits.

    Inputs are images already resized to about ``input_size`` and normalised with ``mean``/``std``
    (`classeg.transforms.preprocess_for_model`). A 1-channel model (``in_channels=1``) replicates its
    grayscale input to the 3 channels the ResNet stem expects.

    Attributes: ``backbone`` (torchvision ResNet with ``fc = Identity``), ``head`` (the head module),
    ``arch``, ``num_classes``, ``head_type`` ("linear" or "dense"; ``describe()["head"]``), ``strategy``,
    ``dropout``, ``in_channels``, ``input_size``, ``mean``, ``std`` (tuples of floats, one per input channel),
    ``lesion_class`` (None, or the class whose logit the lesion map raises; then ``lesion`` is the map's
    1x1 convolution) and ``emit_lesion_map`` (train-time flag, see the module docstring).
    Build with `build_classifier`.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        arch: str,
        num_classes: int,
        head_type: str,
        strategy: str,
        dropout: float,
        in_channels: int,
        input_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        lesion_class: int | None = None,
    ):
        super().__init__()
        self.backbone, self.head = backbone, head
        # The description model.json records (classifier_from_description rebuilds the net from it).
        self.arch, self.num_classes, self.head_type, self.strategy = arch, num_classes, head_type, strategy
        self.dropout, self.in_channels, self.input_size = dropout, in_channels, input_size
        self.mean, self.std, self.lesion_class = mean, std, lesion_class
        self.lesion = None if lesion_class is None else nn.Conv2d(_LESION_FEATURES[arch], 1, kernel_size=1)
        self.emit_lesion_map = False
        self._apply_strategy()

    def frozen_modules(self) -> list[nn.Module]:
        """Backbone stages that the transfer strategy freezes (no gradients, BatchNorm in eval mode)."""
        return [getattr(self.backbone, name) for name in _FROZEN_STAGES[self.strategy]]

    def _apply_strategy(self) -> None:
        for module in self.frozen_modules():
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ClassifierNet":
        """Set train/eval mode; frozen stages always stay in eval mode so BatchNorm statistics stay fixed."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) float normalised images -> (N, num_classes) logits."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"classifier expects (N, {self.in_channels}, H, W) input, got shape {tuple(x.shape)}"
            )
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.lesion is None:
            return self.head(self.backbone(x))
        net = self.backbone
        features = net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))
        lesion_logits = self.lesion(features)
        pooled = torch.flatten(net.avgpool(net.layer4(net.layer3(features))), 1)
        logits = self.head(pooled)
        boost = torch.zeros_like(logits)
        boost[:, self.lesion_class] = lesion_logits.flatten(1).amax(dim=1)
        logits = logits + boost
        if self.training and self.emit_lesion_map:
            return logits, lesion_logits
        return logits

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, num_classes), softmax of `forward`, computed without gradients."""
        return torch.softmax(self.forward(x), dim=1)

    def config(self) -> dict[str, Any]:
        """The `build_classifier` keyword arguments (without ``weights``) that rebuild this architecture."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "head": self.head_type,
            "strategy": self.strategy,
            "dropout": self.dropout,
            "in_channels": self.in_channels,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "lesion_class": self.lesion_class,
        }

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for a model.json.

        Keys: ``task`` ("classification"), ``arch``, ``head``, ``strategy``, ``num_classes``,
        ``input_size``, ``in_channels``, ``mean``, ``std``, ``output`` ("logits"), parameter counts, and
        ``config`` (the `build_classifier` kwargs; `classifier_from_description` consumes it).
        """
        return {
            "task": "classification",
            "arch": self.arch,
            "head": self.head_type,
            "strategy": self.strategy,
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "in_channels": self.in_channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "output": "logits (apply softmax for probabilities)",
            "lesion_class": self.lesion_class,
            "total_parameters": sum(p.numel() for p in self.parameters()),
            "trainable_parameters": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "config": self.config(),
        }


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _channel_stats(name: str, values: Sequence[float] | None, default: tuple[float, ...],
                   in_channels: int) -> tuple[float, ...]:
    if values is None:
        # A grayscale model sees one channel; the ImageNet statistic averaged over RGB is the usual stand-in.
        return default if in_channels == 3 else (round(sum(default) / 3, 6),)
    try:
        stats = tuple(float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a sequence of {in_channels} floats, got {values!r}") from err
    if len(stats) != in_channels:
        raise ValueError(f"{name} must have {in_channels} values (one per input channel), got {values!r}")
    if name == "std" and any(s <= 0 for s in stats):
        raise ValueError(f"std values must be > 0, got {values!r}")
    return stats


def _build_head(head: str, *, in_features: int, num_classes: int, dropout: float) -> nn.Module:
    if head == "linear":
        return nn.Linear(in_features, num_classes)
    layers: list[nn.Module] = []
    width = in_features
    for units in DENSE_HEAD_UNITS:
        layers += [nn.Linear(width, units), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = units
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _build_backbone(arch: str) -> nn.Module:
    import torchvision

    backbone = getattr(torchvision.models, arch)(weights=None)
    backbone.fc = nn.Identity()
    return backbone


def build_classifier(
    *,
    arch: str,
    num_classes: int,
    head: str = "linear",
    strategy: str = "finetune",
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    dropout: float = 0.3,
    in_channels: int = 3,
    input_size: int = 224,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    endpoint_url: str | None = None,
    lesion_class: int | None = None,
) -> ClassifierNet:
    """Build a ResNet tumour classifier.

    Args:
        arch: "resnet18" or "resnet50" (torchvision architectures, built with ``weights=None``).
        num_classes: number of classes K >= 2; the output is (N, K) logits.
        head: "linear" (replace ``fc``) or "dense" (the Class-Seg 1024-1024-1024-256 head).
        strategy: "frozen", "partial" or "finetune" (see the module docstring).
        weights: backbone weights. None: random initialisation. A local path or ``s3://bucket/key``
            URI (or an in-memory mapping) of a torchvision-format ResNet state dict, e.g. the published
            ``resnet18-f37072fd.pth``; its ``fc.*`` keys are ignored (the head is new), any other
            missing/unexpected key or shape mismatch raises ValueError listing the keys. "imagenet":
            torchvision's published weights for ``arch`` (its DEFAULT enum entry; "imagenet:IMAGENET1K_V1"
            picks another entry), which offline only works when the file is already in torch's hub cache;
            otherwise `WeightsUnavailableError` names the file to stage. To load a full classeg classifier
            state dict (an artifact), use `load_classifier_state` or `classifier_from_description`.
        dropout: dropout rate of the dense head, in [0, 1); unused by the linear head.
        in_channels: 3 (RGB or the LGG 3-sequence stack) or 1 (grayscale, replicated to 3 in forward).
        input_size: side in pixels of the square images the model is trained on (preprocessing metadata;
            the network itself accepts any size of at least 32).
        mean, std: per-channel normalisation the weights expect, one value per input channel; default
            ImageNet statistics (their RGB average for 1 channel).
        endpoint_url: S3 endpoint for ``s3://`` weights; None lets boto3 use ``AWS_ENDPOINT_URL`` or AWS.
        lesion_class: None (no lesion map), or the index of the tumour class whose logit the lesion map
            raises (see the module docstring); trained with a mask loss, it is how a from-scratch ResNet
            finds lesions of a few millimetres on real anatomy.

    Returns:
        A `ClassifierNet` in train mode (frozen stages in eval mode).
    """
    _check_build_args(arch=arch, num_classes=num_classes, head=head, strategy=strategy, dropout=dropout,
                      in_channels=in_channels, input_size=input_size, lesion_class=lesion_class)
    mean_t = _channel_stats("mean", mean, IMAGENET_MEAN, in_channels)
    std_t = _channel_stats("std", std, IMAGENET_STD, in_channels)

    backbone = _build_backbone(arch)
    if weights is not None:
        load_backbone_state(backbone, _backbone_state(weights, arch, endpoint_url), arch=arch)
    model = ClassifierNet(
        backbone=backbone,
        head=_build_head(head, in_features=_FEATURES[arch], num_classes=num_classes, dropout=float(dropout)),
        arch=arch,
        num_classes=num_classes,
        head_type=head,
        strategy=strategy,
        dropout=float(dropout),
        in_channels=in_channels,
        input_size=input_size,
        mean=mean_t,
        std=std_t,
        lesion_class=lesion_class,
    )
    logger.debug("built %s/%s classifier (%s), weights=%r", arch, head, strategy,
                 weights if not isinstance(weights, Mapping) else "<state dict>")
    return model


def _backbone_state(weights, arch: str, endpoint_url: str | None) -> Mapping[str, torch.Tensor]:
    if isinstance(weights, str) and (weights == "imagenet" or weights.startswith("imagenet:")):
        return imagenet_state_dict(arch, variant=weights.partition(":")[2] or "DEFAULT")
    if isinstance(weights, Mapping):
        return weights
    return read_state_dict(weights, endpoint_url=endpoint_url)


def _check_build_args(*, arch, num_classes, head, strategy, dropout, in_channels, input_size, lesion_class) -> None:
    _check_choice("arch", arch, ARCHS)
    _check_choice("head", head, HEADS)
    _check_choice("strategy", strategy, STRATEGIES)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (binary tasks use 2), got {num_classes!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    if in_channels not in (1, 3) or isinstance(in_channels, bool):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels!r}")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 32:
        raise ValueError(f"input_size must be an int >= 32, got {input_size!r}")
    if lesion_class is not None and (isinstance(lesion_class, bool) or not isinstance(lesion_class, int)
                                     or not 0 <= lesion_class < num_classes):
        raise ValueError(f"lesion_class must be None or a class index in [0, {num_classes}), got {lesion_class!r}")


# --------------------------------------------------------------------------------------------------
# Weights


def imagenet_state_dict(arch: str, *, variant: str = "DEFAULT") -> dict[str, torch.Tensor]:
    """torchvision's published ImageNet state dict for ``arch`` (enum entry ``variant``).

    torchvision reads ``<torch hub dir>/checkpoints/<file>`` when present and downloads otherwise. When
    that fails (no network), raises `WeightsUnavailableError` naming the file (e.g.
    ``resnet18-f37072fd.pth``), its URL, where to stage it, and how to pass a staged copy directly.
    """
    _check_choice("arch", arch, ARCHS)
    from torchvision.models import ResNet18_Weights, ResNet50_Weights

    enum = {"resnet18": ResNet18_Weights, "resnet50": ResNet50_Weights}[arch]
    try:
        entry = enum[variant]
    except KeyError as err:
        raise ValueError(
            f"variant must be one of {[e.name for e in enum] + ['DEFAULT']}, got {variant!r}"
        ) from err
    filename = os.path.basename(urlparse(entry.url).path)
    try:
        return entry.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError) as err:
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise WeightsUnavailableError(
            f"ImageNet weights for {arch} ({enum.__name__}.{entry.name}) are not available offline: "
            f"{err}. Stage the file {filename} (from {entry.url}) and either copy it to {cache}/ "
            f"(or set TORCH_HOME), or pass it directly: weights='/path/to/{filename}' or "
            f"weights='s3://bucket/prefix/{filename}'."
        ) from err


def read_state_dict(source: str | os.PathLike, *, endpoint_url: str | None = None) -> dict[str, torch.Tensor]:
    """Load a state dict from a local path (or ``file://`` URI) or an ``s3://bucket/key`` URI.

    S3 objects are read through :func:`classeg.io.files.read_bytes` (the one client factory, with retries);
    ``endpoint_url`` overrides the default S3 settings' endpoint (None lets boto3 honour ``AWS_ENDPOINT_URL``).
    Files are read with ``torch.load(weights_only=True)`` onto the CPU. A checkpoint dict holding the
    weights under ``"state_dict"`` or ``"model"`` is unwrapped, and a ``module.`` prefix on every key
    (from DistributedDataParallel) is stripped.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"weights source must be a path or s3:// URI, got {source!r}")
    source = os.fspath(source)
    if source.startswith("s3://"):
        from classeg.errors import ArchiveError
        from classeg.io.files import read_bytes
        from classeg.io.s3 import S3Settings

        parsed = urlparse(source)
        if not parsed.netloc or not parsed.path.lstrip("/"):
            raise ValueError(f"s3 URI must look like s3://bucket/key, got {source!r}")
        settings = S3Settings.of({"endpoint_url": endpoint_url} if endpoint_url else None)
        try:
            data = read_bytes(source, s3_cfg=settings)  # the one S3 client and retry loop
        except ArchiveError as err:
            raise FileNotFoundError(f"cannot fetch weights {source}: {err}") from err
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    else:
        path = source[len("file://"):] if source.startswith("file://") else source
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file not found: {source}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    return _unwrap_state_dict(state, source)


def _unwrap_state_dict(state: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(state, Mapping) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source} does not hold a state dict (mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _format_keys(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_KEYS_IN_ERROR])
    return shown + (f", ... ({len(keys) - _MAX_KEYS_IN_ERROR} more)" if len(keys) > _MAX_KEYS_IN_ERROR else "")


def _state_problems(module: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    expected = module.state_dict()
    # Old torchvision checkpoints predate BatchNorm's num_batches_tracked buffer; it is not a weight.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_format_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_format_keys(mismatched)}")
    return problems


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str) -> None:
    """Load ``state`` into ``module``; any missing/unexpected key or shape mismatch raises ValueError.

    The message lists the offending keys (``what`` names the model in it). Missing
    ``num_batches_tracked`` buffers are tolerated.
    """
    problems = _state_problems(module, state)
    if problems:
        raise ValueError(f"state dict does not fit the {what}: " + "; ".join(problems))
    module.load_state_dict(state, strict=False)


def load_backbone_state(backbone: nn.Module, state: Mapping[str, torch.Tensor], *, arch: str = "ResNet") -> None:
    """Load a torchvision-format ResNet state dict into ``backbone`` (a ResNet whose ``fc`` is Identity).

    ``fc.*`` keys are ignored (the classification head is new); every other key must match exactly.
    Raises ValueError listing missing/unexpected keys and shape mismatches otherwise.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"state must be a mapping of names to tensors, got {type(state).__name__}")
    filtered = {k: v for k, v in state.items() if not k.startswith("fc.")}
    load_state_dict_strict(backbone, filtered, what=f"{arch} backbone")


def load_classifier_state(
    model: ClassifierNet,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    endpoint_url: str | None = None,
) -> ClassifierNet:
    """Load a full classeg classifier state dict (``model.state_dict()`` of a `ClassifierNet`, keys
    ``backbone.*`` and ``head.*``) from a mapping, a local path or an ``s3://`` URI. Strict: key or shape
    problems raise ValueError listing them. Returns ``model``."""
    if not isinstance(model, ClassifierNet):
        raise ValueError(f"model must be a ClassifierNet, got {type(model).__name__}")
    state = source if isinstance(source, Mapping) else read_state_dict(source, endpoint_url=endpoint_url)
    load_state_dict_strict(model, state, what=f"{model.arch}/{model.head_type} classifier")
    return model


def classifier_from_description(
    description: Mapping[str, Any],
    *,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    endpoint_url: str | None = None,
) -> ClassifierNet:
    """Rebuild a classifier from `ClassifierNet.describe()` output (as stored in model.json) and, when
    ``weights`` is given, load the full classifier state dict from it (see `load_classifier_state`).
    The model is returned in eval mode, ready for scoring."""
    config = description.get("config") if isinstance(description, Mapping) else None
    if not isinstance(config, Mapping):
        raise ValueError("description must be a ClassifierNet.describe() dict with a 'config' mapping, "
                         f"got {description!r}")
    model = build_classifier(**config)
    if weights is not None:
        load_classifier_state(model, weights, endpoint_url=endpoint_url)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Optimisation


def parameter_groups(
    model: ClassifierNet,
    *,
    lr: float,
    backbone_lr_scale: float = 0.1,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: trainable backbone parameters at ``lr * backbone_lr_scale``, head (and
    the lesion map's convolution) at ``lr``. Frozen parameters are left out (so ``frozen`` yields only the head group; ``partial`` a
    ``layer4`` group and the head). Each group carries a ``name`` ("backbone"/"head") key that torch
    optimizers keep, so a trainer or scheduler can find it; empty groups are omitted.

    Example: ``torch.optim.Adam(parameter_groups(model, lr=1e-3))``.
    """
    if not isinstance(model, ClassifierNet):
        raise ValueError(f"model must be a ClassifierNet, got {type(model).__name__}")
    for name, value in (("lr", lr), ("backbone_lr_scale", backbone_lr_scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    groups = []
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for p in model.head.parameters() if p.requires_grad]
    if model.lesion is not None:  # a new layer like the head, trained at the head's rate
        head += [p for p in model.lesion.parameters() if p.requires_grad]
    if backbone:
        groups.append({"name": "backbone", "params": backbone, "lr": lr * backbone_lr_scale,
                       "weight_decay": weight_decay})
    if head:
        groups.append({"name": "head", "params": head, "lr": lr, "weight_decay": weight_decay})
    return groups
