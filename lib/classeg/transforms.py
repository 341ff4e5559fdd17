"""Image transforms for training and scoring: pure functions over numpy arrays (and torch for `resize_tensor`
and `queued_copy`).

Conventions: images are numpy arrays (H, W) or (H, W, C), either ``uint8`` (0-255) or floating point
intensities in [0, 1]; functions that compute return ``float32``. Masks are (H, W) arrays, foreground
``>= 0.5`` (or ``True``). Model inputs are ``float32`` (C, H, W).

`preprocess_for_model` is the one preprocessing path shared by training and scoring, so the two cannot
drift apart: scale to [0, 1] -> resize (bilinear, antialiased, in float32) -> normalise (channel
mean/std for the classifiers, or per-image z-score for the segmenter) -> (C, H, W).

The optional enhancement steps of the ResNet50 brain-tumour paper (high-pass sharpening, histogram
equalisation, threshold binarisation, dilation/erosion) are `sharpen`, `equalize_histogram`, `binarize`,
`dilate`, `erode`, chained by `enhance`. Train-time augmentation (`augment`) applies the same random flips
and rotation to image and mask and intensity jitter to the image only, drawing from a
`numpy.random.Generator`, so a seed reproduces it exactly.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
ENHANCEMENT_STEPS = ("sharpen", "equalize", "binarize", "dilate", "erode")


# --------------------------------------------------------------------------------------------------
# Validation helpers


def _image(image: Any, name: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array (H, W) or (H, W, C), got {type(image).__name__}")
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} must be (H, W) or (H, W, C) with H, W > 0, got shape {image.shape}")
    if image.ndim == 3 and not 1 <= image.shape[2] <= 4:
        raise ValueError(f"{name} must have 1-4 channels last (H, W, C), got shape {image.shape}")
    if not (image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating) or image.dtype == bool):
        raise ValueError(f"{name} must be uint8, bool or floating point, got dtype {image.dtype}")
    return image


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 (0-255) -> float32 in [0, 1]; bool -> float32 {0, 1}; float -> float32 unchanged in value."""
    image = _image(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255)
    return image.astype(np.float32)


def _size(size: Any) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _per_channel(image: np.ndarray, function) -> np.ndarray:
    """Apply ``function`` to every (H, W) channel of an (H, W) or (H, W, C) array."""
    if image.ndim == 2:
        return function(image)
    return np.stack([function(image[..., c]) for c in range(image.shape[2])], axis=-1)


def _rgb_stats(name: str, values: Any, channels: int) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a sequence of floats, got {values!r}") from err
    if array.size != channels:
        raise ValueError(f"{name} must have one value per channel ({channels}), got {values!r}")
    if name == "std" and np.any(array <= 0):
        raise ValueError(f"std must be > 0, got {values!r}")
    return array


# --------------------------------------------------------------------------------------------------
# Geometry and intensity


def resize(image: np.ndarray, *, size: int | Sequence[int], interpolation: str = "bilinear") -> np.ndarray:
    """Resize an (H, W) or (H, W, C) image to ``size`` (int for square, or (height, width)) with PIL.

    uint8 images stay uint8 (PIL's L/RGB paths); float images are resized per channel in float32 (PIL
    mode F) and come back float32; bool masks use nearest-neighbour and stay bool. PIL's bilinear and
    bicubic filters antialias when downscaling (as torchvision's ``antialias=True``). Use
    ``interpolation="nearest"`` for label masks.
    """
    image = _image(image)
    height, width = _size(size)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}")
    if image.shape[:2] == (height, width):
        return image.copy()
    if image.dtype == bool:
        return resize(image.astype(np.uint8), size=(height, width), interpolation="nearest").astype(bool)
    resample = INTERPOLATIONS[interpolation]
    if image.dtype == np.uint8 and (image.ndim == 2 or image.shape[2] in (1, 3)):
        pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        out = np.asarray(pil.resize((width, height), resample=resample))
        return out[..., None] if image.ndim == 3 and out.ndim == 2 else out
    dtype = np.uint8 if image.dtype == np.uint8 else np.float32

    def one(channel: np.ndarray) -> np.ndarray:
        if dtype == np.uint8:
            return np.asarray(Image.fromarray(channel).resize((width, height), resample=resample))
        pil = Image.fromarray(channel.astype(np.float32), mode="F")
        return np.asarray(pil.resize((width, height), resample=resample), dtype=np.float32)

    return _per_channel(image, one)


def queued_copy(host, *, device, dtype=None):
    """A small host tensor (as ``dtype``, if given) on ``device``, queued behind the work already there: on CUDA
    from pinned memory with ``non_blocking``. ``Tensor.to(cuda)`` from pageable memory (and
    ``torch.as_tensor(values, device=cuda)``) waits for the device to finish everything queued before it, so
    the host thread could no longer run ahead of the device."""
    host = host if dtype is None else host.to(dtype)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def resize_tensor(tensor, *, size: int | Sequence[int], interpolation: str = "bilinear"):
    """Resize a torch tensor (C, H, W) or (N, C, H, W) with `torch.nn.functional.interpolate`.

    Bilinear/bicubic use ``antialias=True``, so downscaling matches `resize` closely (not bit-exactly);
    nearest is for masks. Returns a tensor of the input's rank and dtype (floats; integer/bool masks
    require "nearest").
    """
    import torch
    import torch.nn.functional as F

    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (3, 4):
        raise ValueError(f"tensor must be a torch tensor (C, H, W) or (N, C, H, W), got "
                         f"{getattr(tensor, 'shape', type(tensor).__name__)}")
    height, width = _size(size)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}")
    batch = tensor if tensor.ndim == 4 else tensor[None]
    if interpolation == "nearest":
        # "nearest-exact" samples pixel centres, as PIL's nearest does.
        source = batch if batch.is_floating_point() else batch.float()
        out = F.interpolate(source, size=(height, width), mode="nearest-exact").to(batch.dtype)
    else:
        if not batch.is_floating_point():
            raise ValueError(f"{interpolation} resizing needs a floating point tensor, got {batch.dtype}")
        out = F.interpolate(batch, size=(height, width), mode=interpolation, align_corners=False, antialias=True)
    return out if tensor.ndim == 4 else out[0]


def normalize(image: np.ndarray, *, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(image - mean) / std`` per channel; ``image`` (H, W) or (H, W, C) in [0, 1] (uint8 is scaled
    first), ``mean``/``std`` one value per channel. Returns float32 of the same shape."""
    image = to_float(image)
    channels = 1 if image.ndim == 2 else image.shape[2]
    mean_a, std_a = _rgb_stats("mean", mean, channels), _rgb_stats("std", std, channels)
    if image.ndim == 2:
        return (image - mean_a[0]) / std_a[0]
    return (image - mean_a) / std_a


def imagenet_normalize(image: np.ndarray) -> np.ndarray:
    """`normalize` with the ImageNet statistics; ``image`` (H, W, 3) in [0, 1] or uint8."""
    return normalize(image, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def zscore(image: np.ndarray, *, per_channel: bool = False, eps: float = 1e-6) -> np.ndarray:
    """Per-image standardisation ``(image - mean) / std`` (population std), the Class-Seg segmenter's input.

    ``per_channel=False`` (the published code) uses one mean and std over all pixels and channels.
    A (near-)constant image (std < ``eps``) is only centred, giving zeros instead of dividing by ~0.
    Returns float32 of the input's shape.
    """
    image = to_float(image)
    if not isinstance(eps, (int, float)) or eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    values = image.astype(np.float64)
    axes = (0, 1) if per_channel and image.ndim == 3 else None
    mean = values.mean(axis=axes, keepdims=axes is not None)
    std = values.std(axis=axes, keepdims=axes is not None)
    std = np.where(std < eps, 1.0, std)
    return ((values - mean) / std).astype(np.float32)


_zscore_image = zscore  # preprocess_for_model's `zscore` flag shadows the function name


# --------------------------------------------------------------------------------------------------
# Enhancement (ResNet50 paper)


def sharpen(image: np.ndarray, *, amount: float = 1.0) -> np.ndarray:
    """High-pass sharpening ``image - amount * laplacian(image)``, per channel, clipped to [0, 1].

    With ``amount=1`` this is the 3x3 kernel [[0,-1,0],[-1,5,-1],[0,-1,0]] (borders reflected).
    ``image`` uint8 or float in [0, 1]; returns float32.
    """
    image = to_float(image)
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
        raise ValueError(f"amount must be a number >= 0, got {amount!r}")
    high_pass = _per_channel(image, lambda c: ndimage.laplace(c.astype(np.float64), mode="reflect"))
    return np.clip(image - amount * high_pass, 0.0, 1.0).astype(np.float32)


def equalize_histogram(image: np.ndarray, *, bins: int = 256) -> np.ndarray:
    """Histogram equalisation per channel (OpenCV's ``equalizeHist`` rule), returning float32 in [0, 1].

    Intensities are quantised to ``bins`` levels; level v maps to
    ``(cdf(v) - cdf_min) / (pixels - cdf_min)`` where ``cdf_min`` is the count of the lowest occupied
    level. A constant channel is returned unchanged.
    """
    image = to_float(image)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an int >= 2, got {bins!r}")

    def one(channel: np.ndarray) -> np.ndarray:
        levels = np.clip(np.rint(channel * (bins - 1)), 0, bins - 1).astype(np.int64)
        cdf = np.cumsum(np.bincount(levels.ravel(), minlength=bins))
        cdf_min = cdf[cdf > 0][0]
        if cdf_min == levels.size:
            return channel.astype(np.float32)
        return ((cdf[levels] - cdf_min) / (levels.size - cdf_min)).astype(np.float32)

    return _per_channel(image, one)


def otsu_threshold(image: np.ndarray, *, bins: int = 256) -> float:
    """Otsu's threshold of a [0, 1] image (all channels pooled): the level maximising between-class variance."""
    image = to_float(image)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an int >= 2, got {bins!r}")
    counts, edges = np.histogram(np.clip(image, 0, 1), bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    cumulative = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = cumulative / weight_low
        mean_high = (cumulative[-1] - cumulative) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between = np.nan_to_num(between[:-1], nan=-1.0)
    if between.max() <= 0:
        return float(image.mean())
    return float(edges[np.argmax(between) + 1])


def binarize(image: np.ndarray, *, threshold: float | str = 0.5) -> np.ndarray:
    """Threshold binarisation: float32 1.0 where ``image >= threshold`` else 0.0 (shape kept).

    ``threshold`` a number in [0, 1] or ``"otsu"`` (`otsu_threshold` of the image).
    """
    image = to_float(image)
    if threshold == "otsu":
        threshold = otsu_threshold(image)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1] or 'otsu', got {threshold!r}")
    return (image >= threshold).astype(np.float32)


def _morphology(image: np.ndarray, size: int, iterations: int, operation) -> np.ndarray:
    image = to_float(image)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")

    def one(channel: np.ndarray) -> np.ndarray:
        for _ in range(iterations):
            channel = operation(channel, size=(size, size), mode="nearest")
        return channel

    return _per_channel(image, one).astype(np.float32)


def dilate(image: np.ndarray, *, size: int = 3, iterations: int = 1) -> np.ndarray:
    """Grey-level dilation (maximum over a ``size`` x ``size`` square), ``iterations`` times, per channel.
    On a 0/1 image it is binary dilation. Returns float32 of the input's shape."""
    return _morphology(image, size, iterations, ndimage.grey_dilation)


def erode(image: np.ndarray, *, size: int = 3, iterations: int = 1) -> np.ndarray:
    """Grey-level erosion (minimum over a ``size`` x ``size`` square), ``iterations`` times, per channel.
    Borders are padded with the nearest value, so foreground touching the border is not eroded there."""
    return _morphology(image, size, iterations, ndimage.grey_erosion)


_STEP_FUNCTIONS = {
    "sharpen": sharpen,
    "equalize": equalize_histogram,
    "binarize": binarize,
    "dilate": dilate,
    "erode": erode,
}


def enhance(image: np.ndarray, *, steps: Sequence[str | tuple[str, Mapping[str, Any]]]) -> np.ndarray:
    """Apply enhancement steps in order. Each step is a name from ``ENHANCEMENT_STEPS`` or a
    ``(name, options)`` pair, e.g. ``steps=["sharpen", ("binarize", {"threshold": "otsu"}), "dilate"]``.
    Returns float32 of the input's shape; an empty ``steps`` returns the image as float32."""
    result = to_float(image)
    if isinstance(steps, str):
        raise ValueError(f"steps must be a sequence of step names, got the string {steps!r}")
    for step in steps:
        name, options = (step, {}) if isinstance(step, str) else (tuple(step) + ({},))[:2]
        if name not in _STEP_FUNCTIONS or not isinstance(options, Mapping):
            raise ValueError(f"enhancement step must be one of {ENHANCEMENT_STEPS} or (name, options), got {step!r}")
        result = _STEP_FUNCTIONS[name](result, **options)
    return result


# --------------------------------------------------------------------------------------------------
# Augmentation


@dataclass(frozen=True)
class AugmentationDraw:
    """One scan's augmentation parameters: whether to flip left-right / up-down, the rotation ``angle`` in
    degrees (positive: counter-clockwise as displayed, rows down), the additive brightness ``offset`` and the
    contrast ``factor`` about the image mean."""

    flip_horizontal: bool
    flip_vertical: bool
    angle: float
    offset: float
    factor: float


#: The default augmentation ranges (`draw_augmentation`'s keywords), the batched path's too.
AUGMENTATION_RANGES = {"flip_horizontal": 0.5, "flip_vertical": 0.5, "max_rotation": 10.0, "brightness": 0.1,
                       "contrast": 0.1}


def draw_augmentation(
    rng: np.random.Generator,
    *,
    flip_horizontal: float = AUGMENTATION_RANGES["flip_horizontal"],
    flip_vertical: float = AUGMENTATION_RANGES["flip_vertical"],
    max_rotation: float = AUGMENTATION_RANGES["max_rotation"],
    brightness: float = AUGMENTATION_RANGES["brightness"],
    contrast: float = AUGMENTATION_RANGES["contrast"],
) -> AugmentationDraw:
    """Draw one scan's augmentation from ``rng``: exactly five uniform draws whatever the settings (so streams
    stay aligned across settings). The one definition of the ranges, shared by `augment` (numpy, one image)
    and `classeg.training.augment` (batched tensors on the training device).

    ``flip_horizontal``/``flip_vertical``: probabilities of each flip; the angle is uniform in
    [-max_rotation, max_rotation] degrees, the offset in [-brightness, brightness], the factor in
    [1 - contrast, 1 + contrast]."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    for name, value in (("flip_horizontal", flip_horizontal), ("flip_vertical", flip_vertical)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    for name, value, upper in (("max_rotation", max_rotation, 180), ("brightness", brightness, 1),
                               ("contrast", contrast, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= upper:
            raise ValueError(f"{name} must be in [0, {upper}], got {value!r}")
    values = augmentation_from_uniforms(rng.random(5), flip_horizontal=flip_horizontal,
                                        flip_vertical=flip_vertical, max_rotation=max_rotation,
                                        brightness=brightness, contrast=contrast)
    return AugmentationDraw(flip_horizontal=bool(values["flip_horizontal"]),
                            flip_vertical=bool(values["flip_vertical"]), angle=float(values["angle"]),
                            offset=float(values["offset"]), factor=float(values["factor"]))


def augmentation_from_uniforms(draws: np.ndarray, *, flip_horizontal: float, flip_vertical: float,
                               max_rotation: float, brightness: float, contrast: float) -> dict[str, np.ndarray]:
    """`draw_augmentation`'s parameters from its five uniform draws (the last axis of ``draws``: one scan's
    (5,) or a batch's (N, 5)) and the ranges (`AUGMENTATION_RANGES` by default), elementwise and so identical
    for one scan and for a batch: ``flip_horizontal`` and ``flip_vertical`` (bool), ``angle`` (degrees),
    ``offset`` and ``factor`` (float64)."""
    draws = np.asarray(draws, dtype=np.float64)
    return {"flip_horizontal": draws[..., 0] < flip_horizontal, "flip_vertical": draws[..., 1] < flip_vertical,
            "angle": (2 * draws[..., 2] - 1) * max_rotation, "offset": (2 * draws[..., 3] - 1) * brightness,
            "factor": 1 + (2 * draws[..., 4] - 1) * contrast}


def augment(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    rng: np.random.Generator,
    **ranges: float,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Random train-time augmentation, identical geometry for image and mask.

    Args:
        image: (H, W) or (H, W, C), uint8 or float in [0, 1].
        mask: optional (H, W) mask (any numeric/bool dtype), transformed with the same flips and rotation
            (nearest-neighbour, so it stays binary).
        rng: `numpy.random.Generator`; the same seed gives the same result (`draw_augmentation`).
        ranges: `draw_augmentation`'s ``flip_horizontal``, ``flip_vertical`` (probabilities),
            ``max_rotation`` (degrees; rotation about the centre, image bilinear, zeros filled in),
            ``brightness`` (additive offset, image only) and ``contrast`` (multiplicative factor about the
            image mean, image only).

    Returns:
        (float32 image in [0, 1] with the input's shape, mask of the mask's dtype or None).
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    image = to_float(image)
    if mask is not None:
        mask = _image(mask, "mask")
        if mask.shape[:2] != image.shape[:2] or mask.ndim != 2:
            raise ValueError(f"mask must be (H, W) matching image {image.shape[:2]}, got shape {mask.shape}")
    draw = draw_augmentation(rng, **ranges)

    def geometry(array: np.ndarray, order: int) -> np.ndarray:
        if draw.flip_horizontal:
            array = array[:, ::-1]
        if draw.flip_vertical:
            array = array[::-1, :]
        if draw.angle != 0:
            array = ndimage.rotate(array, draw.angle, axes=(1, 0), reshape=False, order=order, mode="constant",
                                   cval=0, prefilter=False)
        return np.ascontiguousarray(array)

    image = geometry(image, order=1)
    mean = image.mean()
    factor, offset = draw.factor, draw.offset
    # written as a*x + b so that factor 1 and offset 0 leave the image bit-identical
    image = np.clip(image * factor + (offset + mean * (1 - factor)), 0.0, 1.0).astype(np.float32)
    if mask is not None:
        mask_dtype = mask.dtype
        mask = geometry(mask.astype(np.uint8) if mask_dtype == bool else mask, order=0).astype(mask_dtype)
    return image, mask


# --------------------------------------------------------------------------------------------------
# The shared model preprocessing


def preprocess_for_model(
    image: np.ndarray,
    *,
    input_size: int | Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    zscore: bool = False,
    channels: int | None = None,
) -> np.ndarray:
    """Turn a decoded scan into model input: float32 (C, H, W). Used by training and scoring alike.

    Steps: scale uint8 to [0, 1] (floats must already be in [0, 1]); resize to ``input_size`` (bilinear,
    antialiased, in float32 whatever the input dtype); give it ``channels`` channels (a grayscale (H, W) or
    (H, W, 1) image is replicated; other mismatches raise); then either normalise with
    ``mean``/``std`` (classifiers; one value per channel, e.g. ``model.mean``/``model.std``) or, with
    ``zscore=True``, standardise per image (the segmenter; mean/std must then be None).

    ``channels`` defaults to ``len(mean)`` when given, else the image's own channel count.
    """
    image = _image(image)
    if zscore and (mean is not None or std is not None):
        raise ValueError("pass either mean/std (channel normalisation) or zscore=True, not both")
    if not zscore and (mean is None or std is None):
        raise ValueError("mean and std are required unless zscore=True")
    height, width = _size(input_size)
    values = to_float(image)
    if image.dtype != np.uint8 and values.size and (values.min() < 0 or values.max() > 1):
        raise ValueError(f"float images must be in [0, 1], got values in [{values.min():.4g}, {values.max():.4g}]")
    if values.ndim == 2:
        values = values[..., None]
    own = values.shape[2]
    if channels is None:
        channels = len(mean) if mean is not None else own
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if own != channels and own != 1:
        raise ValueError(f"image has {own} channels (shape {image.shape}) but the model expects {channels}")
    values = resize(values, size=(height, width), interpolation="bilinear")
    if own != channels:
        values = np.repeat(values, channels, axis=2)  # after resizing: one resize instead of `channels`
    if zscore:
        values = _zscore_image(values)
    else:
        values = normalize(values, mean=mean, std=std)
    return np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32)


def preprocess_mask(mask: np.ndarray, *, input_size: int | Sequence[int]) -> np.ndarray:
    """Mask for training targets: (H, W) any numeric/bool -> float32 (1, H', W') in {0, 1}, resized with
    nearest-neighbour to ``input_size``. Foreground: ``>= 0.5`` for float masks; for uint8 masks ``>= 128``
    when they use 0/255 (maximum > 1), else ``>= 1`` (0/1 masks)."""
    mask = _image(mask, "mask")
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if mask.dtype == np.uint8:
        foreground = mask >= (128 if mask.size and mask.max() > 1 else 1)
    else:
        foreground = mask >= 0.5
    resized = resize(foreground, size=input_size, interpolation="nearest")
    return resized[None].astype(np.float32)
