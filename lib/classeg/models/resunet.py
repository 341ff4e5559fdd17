"""The Class-Seg ResUNet tumour segmenter.

This is the segmenter of the published Class-Seg pipeline, rebuilt layer for layer from its Keras model:

```
input (N, C, H, W), per-image z-scored
stage 1   conv3x3(16)+BN+ReLU, conv3x3(16)+BN+ReLU              -> skip1   (H,    W)
          maxpool 2x2, ResBlock(32)                              -> skip2   (H/2,  W/2)
          maxpool 2x2, ResBlock(64)                              -> skip3   (H/4,  W/4)
          maxpool 2x2, ResBlock(128)                             -> skip4   (H/8,  W/8)
          maxpool 2x2, ResBlock(256)                             bottleneck (H/16, W/16)
decoder   up x2 (nearest), concat skip4, ResBlock(128)
          up x2 (nearest), concat skip3, ResBlock(64)
          up x2 (nearest), concat skip2, ResBlock(32)
          up x2 (nearest), concat skip1, ResBlock(16)
head      conv1x1(1)                                             -> logits  (N, 1, H, W)
```

`ResBlock(f)`: main path conv1x1(f), BN, ReLU, conv3x3(f), BN; shortcut conv1x1(f), BN; add; ReLU.

It is a *post-activation* residual U-Net with max-pooling between stages (the ReLU comes after the addition,
as in He et al. 2015), **not** Zhang et al.'s (2018) pre-activation ResUNet with strided convolutions. Every
convolution has a bias (as the Keras model does, even before BatchNorm) so that with 3 input channels and
base width 16 it has exactly 1,206,129 trainable parameters, the count of the published model (BatchNorm
running statistics are buffers, as Keras' non-trainable weights are).

The forward pass returns **logits**; the published model ends in a sigmoid, which here is `predict_proba`
(or pass `from_logits=True` to the losses in `classeg.losses`, which is numerically safer for training).
Input height and width must be multiples of 16 (four 2x2 poolings).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from classeg.models.classifier import load_state_dict_strict, read_state_dict

logger = logging.getLogger(__name__)

#: Total downsampling factor; input sides must be multiples of it.
SIDE_MULTIPLE = 16
#: Trainable parameters of the published model (3 input channels, base width 16).
PUBLISHED_PARAMETER_COUNT = 1_206_129


class ResidualBlock(nn.Module):
    """Post-activation residual block of the Class-Seg ResUNet.

    Main path conv1x1 -> BN -> ReLU -> conv3x3 -> BN; shortcut conv1x1 -> BN; sum; ReLU.
    Maps (N, in_channels, H, W) to (N, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True),
            nn.BatchNorm2d(out_channels),
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.main(x) + self.shortcut(x))


class ResUNet(nn.Module):
    """Class-Seg ResUNet: (N, in_channels, H, W) z-scored images -> (N, out_channels, H, W) logits.

    H and W must be multiples of 16. Use `build_resunet` to construct one; attributes `in_channels`,
    `base_filters`, `out_channels` and `describe()` record what is needed to rebuild it for scoring.
    The expected input preprocessing is a per-image z-score (`classeg.transforms.zscore`), recorded as
    `normalization = "zscore"`.
    """

    normalization = "zscore"

    def __init__(self, *, in_channels: int = 3, base_filters: int = 16, out_channels: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.base_filters = base_filters
        self.out_channels = out_channels
        f = base_filters
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, f, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(f),
            nn.ReLU(inplace=True),
            nn.Conv2d(f, f, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(f),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.enc2 = ResidualBlock(f, 2 * f)
        self.enc3 = ResidualBlock(2 * f, 4 * f)
        self.enc4 = ResidualBlock(4 * f, 8 * f)
        self.bottleneck = ResidualBlock(8 * f, 16 * f)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec4 = ResidualBlock(16 * f + 8 * f, 8 * f)
        self.dec3 = ResidualBlock(8 * f + 4 * f, 4 * f)
        self.dec2 = ResidualBlock(4 * f + 2 * f, 2 * f)
        self.dec1 = ResidualBlock(2 * f + f, f)
        self.head = nn.Conv2d(f, out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) float -> (N, out_channels, H, W) logits; H, W multiples of 16."""
        _check_input(x, self.in_channels)
        skip1 = self.stem(x)
        skip2 = self.enc2(self.pool(skip1))
        skip3 = self.enc3(self.pool(skip2))
        skip4 = self.enc4(self.pool(skip3))
        x = self.bottleneck(self.pool(skip4))
        x = self.dec4(torch.cat([self.up(x), skip4], dim=1))
        x = self.dec3(torch.cat([self.up(x), skip3], dim=1))
        x = self.dec2(torch.cat([self.up(x), skip2], dim=1))
        x = self.dec1(torch.cat([self.up(x), skip1], dim=1))
        return self.head(x)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Tumour probability per pixel, (N, out_channels, H, W) in [0, 1]: sigmoid of `forward`.

        Runs under `torch.no_grad()` and leaves the train/eval mode as it is (call `.eval()` first for
        inference).
        """
        return torch.sigmoid(self.forward(x))

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for a model.json; `build_resunet(**describe()['config'])` rebuilds it."""
        return {
            "task": "segmentation",
            "arch": "resunet",
            "config": {
                "in_channels": self.in_channels,
                "base_filters": self.base_filters,
                "out_channels": self.out_channels,
            },
            "side_multiple": SIDE_MULTIPLE,
            "normalization": self.normalization,
            "output": "logits (apply sigmoid for probabilities)",
            "trainable_parameters": count_parameters(self),
        }


def _check_input(x: torch.Tensor, in_channels: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"ResUNet input must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"ResUNet built for {in_channels} input channels, got shape {tuple(x.shape)}"
        )
    height, width = x.shape[-2:]
    if height % SIDE_MULTIPLE or width % SIDE_MULTIPLE or height == 0 or width == 0:
        raise ValueError(
            f"ResUNet input height and width must be positive multiples of {SIDE_MULTIPLE}, "
            f"got shape {tuple(x.shape)}"
        )


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter elements of `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_resunet(
    *,
    in_channels: int = 3,
    base_filters: int = 16,
    out_channels: int = 1,
    weights: str | Mapping[str, torch.Tensor] | None = None,
    endpoint_url: str | None = None,
) -> ResUNet:
    """Build the Class-Seg ResUNet (see the module docstring for the exact architecture).

    Args:
        in_channels: image channels (3 for the LGG pre-contrast/FLAIR/post-contrast stack, 1 for single
            sequences).
        base_filters: width of the first stage; the published model uses 16 (stages 16/32/64/128/256).
        out_channels: output maps; 1 (tumour vs background) in Class-Seg.
        weights: None (random init), or a full ResUNet state dict: a mapping, a local path, or an
            ``s3://bucket/key`` URI (fetched with boto3; ``endpoint_url`` or ``AWS_ENDPOINT_URL``).
            Loading is strict: missing/unexpected keys or shape mismatches raise ValueError listing them.

    Returns:
        A `ResUNet` in train mode whose forward returns logits.
    """
    for name, value in (("in_channels", in_channels), ("base_filters", base_filters),
                        ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    model = ResUNet(in_channels=in_channels, base_filters=base_filters, out_channels=out_channels)
    if weights is not None:
        state = weights if isinstance(weights, Mapping) else read_state_dict(weights, endpoint_url=endpoint_url)
        load_state_dict_strict(model, state, what="ResUNet")
    return model


def resunet_from_description(
    description: Mapping[str, Any],
    *,
    weights: str | Mapping[str, torch.Tensor] | None = None,
    endpoint_url: str | None = None,
) -> ResUNet:
    """Rebuild a ResUNet from `ResUNet.describe()` output (as stored in model.json), load ``weights``
    (a full ResUNet state dict: mapping, local path or ``s3://`` URI) when given, and return it in eval
    mode, ready for scoring."""
    config = description.get("config") if isinstance(description, Mapping) else None
    if not isinstance(config, Mapping):
        raise ValueError("description must be a ResUNet.describe() dict with a 'config' mapping, "
                         f"got {description!r}")
    return build_resunet(**config, weights=weights, endpoint_url=endpoint_url).eval()
