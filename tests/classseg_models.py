"""Hand-set Class-Seg models and a hand-drawn LGG-layout dataset whose every expected count is known.

The models are real artifacts (classeg.artifact.save_artifact) whose weights are set by hand so that their
outputs follow simple rules, with no training:

* the classifier (ResNet18, 32 px, mean 0 / std 1) carries the scan's top-left pixel through the network
  (one centre tap in the stem, identity 1x1 taps in the downsampling shortcuts, every residual branch zero),
  so its tumour logit is ``CLASSIFIER_WEIGHT * background - CLASSIFIER_BIAS`` for a scan whose top-left
  corner is its uniform ``background`` (in [0, 1]): dim scans are called tumour-free, bright ones tumour;
* the segmenter (ResUNet, base width 4) carries the z-scored image through the stem and the last decoder's
  shortcut to the head, so its mask is ``zscore(image) >= 1``: for a scan of two grey levels with the
  brighter one on under half of the pixels, exactly the bright pixels.

:data:`SLICES` draws each slice as a uniform background with one bright rectangle (or none) and a true
mask rectangle (or none); :func:`expected` derives every per-slice count from the rectangles alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = 32
BRIGHT = 250
CLASSIFIER_WEIGHT = 50.0
CLASSIFIER_BIAS = 15.0
OPERATING_THRESHOLD = 0.7
PATIENTS = ("TCGA_AA_0001_20000101", "TCGA_BB_0002_20010101")
DIM, MEDIUM, LIGHT = 20, 79, 120  # backgrounds: tumour probability ~0, ~0.62, ~1


@dataclass(frozen=True)
class Slice:
    """One LGG slice: its patient folder and number, the background grey level, and (row0, row1, col0, col1)
    half-open rectangles of the bright region and of the true mask (None: none)."""

    folder: str
    number: int
    background: int
    bright: tuple[int, int, int, int] | None
    mask: tuple[int, int, int, int] | None


SLICES = (
    Slice(PATIENTS[0], 1, LIGHT, (10, 16, 10, 16), (10, 16, 10, 16)),   # found, outlined exactly
    Slice(PATIENTS[0], 2, LIGHT, (10, 16, 10, 13), (10, 16, 10, 16)),   # found, half outlined
    Slice(PATIENTS[0], 3, DIM, (8, 14, 18, 24), (8, 14, 18, 24)),       # missed, though the segmenter sees it
    Slice(PATIENTS[0], 4, LIGHT, None, None),                           # false detection, empty mask
    Slice(PATIENTS[0], 5, DIM, None, None),                             # correctly rejected
    Slice(PATIENTS[1], 1, LIGHT, (12, 20, 12, 22), (12, 20, 12, 20)),   # found, outlined too wide
    Slice(PATIENTS[1], 2, LIGHT, (4, 8, 20, 26), None),                 # false alarm with a mask
    Slice(PATIENTS[1], 3, MEDIUM, (14, 20, 6, 12), (14, 20, 6, 12)),    # found only below 0.62
    Slice(PATIENTS[1], 4, MEDIUM, None, None),                          # false detection only below 0.62
    Slice(PATIENTS[1], 5, DIM, None, None),
)


def _area(box) -> int:
    return 0 if box is None else (box[1] - box[0]) * (box[3] - box[2])


def _overlap(a, b) -> int:
    if a is None or b is None:
        return 0
    return max(0, min(a[1], b[1]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[2], b[2]))


def tumor_probability(background: int) -> float:
    return 1.0 / (1.0 + math.exp(-(CLASSIFIER_WEIGHT * background / 255.0 - CLASSIFIER_BIAS)))


def expected(threshold: float) -> list[dict]:
    """Per slice, from the rectangles: patient, truth, probability, call, and the segmenter's tp/fp."""
    rows = []
    for spec in SLICES:
        probability = tumor_probability(spec.background)
        rows.append({"scan_id_key": f"{spec.folder}/{spec.number}", "patient_id": spec.folder.rsplit("_", 1)[0],
                     "true_area_px": _area(spec.mask), "tumor_probability": probability,
                     "classified_tumor": probability >= threshold, "tp": _overlap(spec.bright, spec.mask),
                     "fp": _area(spec.bright) - _overlap(spec.bright, spec.mask)})
    return rows


def _image(spec: Slice) -> np.ndarray:
    image = np.full((SIZE, SIZE, 3), spec.background, np.uint8)
    if spec.bright is not None:
        r0, r1, c0, c1 = spec.bright
        image[r0:r1, c0:c1] = BRIGHT
    return image


def _mask(spec: Slice) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if spec.mask is not None:
        r0, r1, c0, c1 = spec.mask
        mask[r0:r1, c0:c1] = 255
    return mask


def write_dataset(root: Path) -> Path:
    """The slices in the Kaggle LGG layout (``kaggle_3m/<folder>/<folder>_<n>.tif`` and ``_mask.tif``)."""
    from PIL import Image

    for spec in SLICES:
        folder = root / "kaggle_3m" / spec.folder
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(spec)).save(folder / f"{spec.folder}_{spec.number}.tif", format="TIFF")
        Image.fromarray(_mask(spec)).save(folder / f"{spec.folder}_{spec.number}_mask.tif", format="TIFF")
    return root


def scan_rows():
    """The slices as scan-table rows (classeg.evaluation.slices.INPUT_COLUMNS), without ingest."""
    import pandas as pd

    from classeg.imaging import encode_png

    return pd.DataFrame({
        "scan_id": [f"{spec.folder}/{spec.number}" for spec in SLICES],
        "patient_id": [spec.folder.rsplit("_", 1)[0] for spec in SLICES],
        "slice_index": [spec.number for spec in SLICES],
        "has_tumor": [spec.mask is not None for spec in SLICES],
        "image": [encode_png(_image(spec)) for spec in SLICES],
        "mask": [encode_png(_mask(spec)) for spec in SLICES],
    })


def _identity_batchnorms(model) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.fill_(1.0)
            module.bias.zero_()
            module.running_mean.zero_()
            module.running_var.fill_(1.0)


def brightness_classifier():
    """ResNet18 whose tumour logit is ``CLASSIFIER_WEIGHT * x[0, 0] - CLASSIFIER_BIAS`` (see module docstring)."""
    import torch

    from classeg.models import build_classifier

    model = build_classifier(arch="resnet18", num_classes=2, input_size=SIZE, mean=[0.0] * 3, std=[1.0] * 3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        _identity_batchnorms(model)
        backbone = model.backbone
        backbone.conv1.weight[0, :, 3, 3] = 1.0 / 3.0  # channel 0 = the channel mean, stride 2
        for stage in (backbone.layer2, backbone.layer3, backbone.layer4):
            stage[0].downsample[0].weight[0, 0, 0, 0] = 1.0
        model.head.weight[1, 0] = CLASSIFIER_WEIGHT
        model.head.bias[1] = -CLASSIFIER_BIAS
    return model.eval()


def zscore_segmenter():
    """ResUNet whose mask is ``zscore(image) >= 1`` (see module docstring)."""
    import torch

    from classeg.models import build_resunet

    model = build_resunet(in_channels=3, base_filters=4)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        _identity_batchnorms(model)
        model.stem[0].weight[0, :, 1, 1] = 1.0 / 3.0
        model.stem[3].weight[0, 0, 1, 1] = 1.0
        model.dec1.shortcut[0].weight[0, 2 * model.base_filters, 0, 0] = 1.0  # skip1's channel 0 in the concat
        model.head.weight[0, 0, 0, 0] = 10.0
        model.head.bias[0] = -10.0
    return model.eval()


def save_models(root: Path, *, operating_point: bool = True) -> dict:
    """Save both artifacts under ``root``; the classifier's model.json records an operating point at
    :data:`OPERATING_THRESHOLD` unless ``operating_point`` is false. Returns their paths."""
    from classeg.artifact import save_artifact

    classifier = brightness_classifier()
    extra = {"operating_point": {"threshold": OPERATING_THRESHOLD, "sensitivity": 0.95, "specificity": 0.5,
                                 "target_sensitivity": 0.95, "split": "val", "tumor_classes": ["tumor"]}
             } if operating_point else {"operating_point": None, "operating_point_reason": "hand-set test model"}
    save_artifact(str(root / "classifier"), model=classifier, task="classify", class_names=["no_tumor", "tumor"],
                  input_spec={"size": SIZE, "channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3, "zscore": False},
                  extra=extra)
    save_artifact(str(root / "segmenter"), model=zscore_segmenter(), task="segment",
                  class_names=["background", "tumor"],
                  input_spec={"size": SIZE, "channels": 3, "mean": None, "std": None, "zscore": True})
    return {"classifier": str(root / "classifier"), "segmenter": str(root / "segmenter")}
