"""Transforms: hand-computed small images, determinism of augmentation, the shared preprocessing path."""
import numpy as np
import pytest
import torch

from classeg import transforms as T

MEAN, STD = T.IMAGENET_MEAN, T.IMAGENET_STD


def test_resize_nearest_replicates_pixels_and_keeps_dtype():
    image = np.array([[0, 255], [128, 64]], dtype=np.uint8)
    out = T.resize(image, size=4, interpolation="nearest")
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 255, 255], [0, 0, 255, 255], [128, 128, 64, 64], [128, 128, 64, 64]]
    mask = T.resize(image > 100, size=(4, 2), interpolation="nearest")
    assert mask.dtype == bool and mask[:, 1].tolist() == [True, True, False, False]


@pytest.mark.parametrize("image", [
    np.full((6, 10, 3), 77, dtype=np.uint8),
    np.full((6, 10), 0.25, dtype=np.float64),
    np.full((6, 10, 2), 0.5, dtype=np.float32),
])
def test_resize_bilinear_keeps_constants(image):
    out = T.resize(image, size=(3, 4))
    assert out.shape == (3, 4) + image.shape[2:]
    assert out.dtype == (np.uint8 if image.dtype == np.uint8 else np.float32)
    assert np.allclose(out, image.flat[0], atol=1e-6)


def test_resize_downscale_averages_like_torch_antialias():
    rng = np.random.default_rng(0)
    image = np.kron(rng.random((8, 8)), np.ones((4, 4))).astype(np.float32)  # 32x32, smooth blocks
    ours = T.resize(image, size=16)
    theirs = T.resize_tensor(torch.from_numpy(image)[None], size=16)[0].numpy()
    assert np.abs(ours - theirs).max() < 0.05
    # 2x2 block average of a checkerboard is its mean.
    checker = (np.indices((8, 8)).sum(axis=0) % 2).astype(np.float32)
    assert np.allclose(T.resize(checker, size=4)[1:-1, 1:-1], 0.5, atol=1e-6)


def test_resize_tensor_nearest_and_batch():
    mask = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.uint8)
    out = T.resize_tensor(mask, size=4, interpolation="nearest")
    assert out.dtype == torch.uint8 and out[0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert T.resize_tensor(torch.zeros(2, 3, 8, 8), size=(4, 6)).shape == (2, 3, 4, 6)


def test_normalize_hand_values():
    pixel = np.array([[MEAN, [1.0, 1.0, 1.0]]], dtype=np.float32)  # (1, 2, 3)
    out = T.normalize(pixel, mean=MEAN, std=STD)
    assert np.allclose(out[0, 0], 0.0, atol=1e-6)
    assert np.allclose(out[0, 1], [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], atol=1e-5)
    white = np.full((1, 1, 3), 255, dtype=np.uint8)
    assert np.allclose(T.imagenet_normalize(white), out[0, 1], atol=1e-5)
    assert np.allclose(T.normalize(np.array([[0.5]]), mean=[0.25], std=[0.5]), [[0.5]])


def test_zscore_hand_values():
    image = np.array([[0, 1], [2, 3]], dtype=np.float32)  # mean 1.5, population std sqrt(1.25)
    assert np.allclose(T.zscore(image).ravel(), [-1.341641, -0.447214, 0.447214, 1.341641], atol=1e-6)
    assert np.array_equal(T.zscore(np.full((3, 3), 0.7)), np.zeros((3, 3), dtype=np.float32))
    two = np.stack([image, 10 * image], axis=-1)
    per_channel = T.zscore(two, per_channel=True)
    assert np.allclose(per_channel[..., 0], per_channel[..., 1], atol=1e-6)
    assert not np.allclose(T.zscore(two)[..., 0], T.zscore(two)[..., 1])


def test_sharpen_hand_values():
    image = np.full((3, 3), 0.5, dtype=np.float32)
    image[1, 1] = 0.6
    out = T.sharpen(image)
    # centre: 0.6 - (4*0.5 - 4*0.6) = 1.0; edge: 0.5 - (0.6 + 3*0.5 - 4*0.5) = 0.4; corner unchanged.
    assert np.allclose(out, [[0.5, 0.4, 0.5], [0.4, 1.0, 0.4], [0.5, 0.4, 0.5]], atol=1e-6)
    assert np.array_equal(T.sharpen(image, amount=0.0), image)


def test_equalize_histogram_hand_values():
    channel = np.array([[0.0, 0.0], [1 / 3, 1.0]], dtype=np.float32)
    # bins 4: levels [0,0,1,3], cdf [2,3,3,4], cdf_min 2 -> [0, 0, 1/2, 1]
    assert T.equalize_histogram(channel, bins=4).tolist() == [[0.0, 0.0], [0.5, 1.0]]
    constant = np.full((2, 2, 3), 0.3, dtype=np.float32)
    assert np.array_equal(T.equalize_histogram(constant), constant)


@pytest.mark.parametrize("threshold, expected", [
    (0.5, [[0, 1], [1, 1]]),
    (0.75, [[0, 0], [0, 1]]),
    (0.0, [[1, 1], [1, 1]]),
])
def test_binarize_table(threshold, expected):
    image = np.array([[0.2, 0.5], [0.6, 0.9]], dtype=np.float32)
    assert T.binarize(image, threshold=threshold).tolist() == expected


def test_otsu_separates_two_modes():
    image = np.array([[0.2] * 8, [0.8] * 8] * 4, dtype=np.float32)
    threshold = T.otsu_threshold(image)
    assert 0.2 < threshold <= 0.8
    assert T.binarize(image, threshold="otsu").sum() == 32


def test_dilate_and_erode_hand_values():
    dot = np.zeros((5, 5), dtype=np.float32)
    dot[2, 2] = 1
    block = np.zeros((5, 5), dtype=np.float32)
    block[1:4, 1:4] = 1
    assert np.array_equal(T.dilate(dot), block)
    assert np.array_equal(T.erode(block), dot)
    assert np.array_equal(T.dilate(dot, iterations=2), np.ones((5, 5), dtype=np.float32))
    assert np.array_equal(T.dilate(dot, iterations=0), dot)


def test_enhance_chains_steps_in_order():
    rng = np.random.default_rng(1)
    image = rng.random((12, 12, 3)).astype(np.float32)
    expected = T.dilate(T.binarize(T.sharpen(image), threshold="otsu"))
    out = T.enhance(image, steps=["sharpen", ("binarize", {"threshold": "otsu"}), "dilate"])
    assert np.array_equal(out, expected)
    assert np.array_equal(T.enhance(image, steps=[]), image)


def _phantom():
    image = np.zeros((32, 32, 3), dtype=np.float32)
    image[8:20, 10:26] = 0.8
    return image, (image[..., 0] > 0.5).astype(np.uint8)


def test_augment_is_deterministic_for_a_seed():
    image, mask = _phantom()
    first = T.augment(image, mask, rng=np.random.default_rng(7))
    second = T.augment(image, mask, rng=np.random.default_rng(7))
    other = T.augment(image, mask, rng=np.random.default_rng(8))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_augment_flips_image_and_mask_together():
    image, mask = _phantom()
    out_image, out_mask = T.augment(image, mask, rng=np.random.default_rng(0), flip_horizontal=1.0,
                                    flip_vertical=1.0, max_rotation=0, brightness=0, contrast=0)
    assert np.array_equal(out_image, image[::-1, ::-1])
    assert np.array_equal(out_mask, mask[::-1, ::-1]) and out_mask.dtype == np.uint8


def test_augment_rotation_keeps_mask_aligned_and_binary():
    image, mask = _phantom()
    for seed in range(5):
        out_image, out_mask = T.augment(image, mask.astype(bool), rng=np.random.default_rng(seed),
                                        max_rotation=15, brightness=0, contrast=0)
        assert out_mask.dtype == bool
        predicted = out_image[..., 0] > 0.4
        overlap = (predicted & out_mask).sum() / (predicted | out_mask).sum()
        assert overlap > 0.9
        assert out_image.min() >= 0 and out_image.max() <= 1


def test_augment_intensity_jitter_touches_image_only():
    image, mask = _phantom()
    out_image, out_mask = T.augment(image, mask, rng=np.random.default_rng(3), flip_horizontal=0,
                                    flip_vertical=0, max_rotation=0, brightness=0.1, contrast=0.1)
    assert np.array_equal(out_mask, mask)
    assert not np.array_equal(out_image, image)
    # an affine map of intensities: the two levels stay distinct and ordered
    assert out_image[10, 12, 0] > out_image[0, 0, 0]


def test_preprocess_for_model_classifier_path():
    gray = np.full((8, 8), 255, dtype=np.uint8)
    out = T.preprocess_for_model(gray, input_size=4, mean=MEAN, std=STD)
    assert out.shape == (3, 4, 4) and out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    expected = [(1 - m) / s for m, s in zip(MEAN, STD)]
    assert np.allclose(out.mean(axis=(1, 2)), expected, atol=1e-5)
    one_channel = T.preprocess_for_model(gray, input_size=(4, 6), mean=[0.5], std=[0.5])
    assert one_channel.shape == (1, 4, 6) and np.allclose(one_channel, 1.0)


def test_preprocess_for_model_is_identical_for_uint8_and_float_input():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    from_uint8 = T.preprocess_for_model(image, input_size=16, mean=MEAN, std=STD)
    from_float = T.preprocess_for_model(image.astype(np.float32) / 255, input_size=16, mean=MEAN, std=STD)
    assert np.allclose(from_uint8, from_float, atol=1e-6)


def test_preprocess_for_model_zscore_path():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = T.preprocess_for_model(image, input_size=16, zscore=True)
    assert out.shape == (3, 16, 16)
    assert out.mean() == pytest.approx(0.0, abs=1e-5) and out.std() == pytest.approx(1.0, abs=1e-4)


def test_preprocess_mask():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:4, :4] = 255
    out = T.preprocess_mask(mask, input_size=4)
    assert out.shape == (1, 4, 4) and out.dtype == np.float32
    assert out[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert np.array_equal(T.preprocess_mask((mask > 0).astype(np.uint8), input_size=4), out)  # 0/1 masks
    assert np.array_equal(T.preprocess_mask(mask > 0, input_size=4), out)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: T.to_float([[1, 2]]), "numpy array"),
        (lambda: T.to_float(np.zeros((2, 2), dtype=np.int32)), "int32"),
        (lambda: T.resize(np.zeros((4, 4)), size=0), "size"),
        (lambda: T.resize(np.zeros((4, 4)), size=4, interpolation="lanczos"), "'lanczos'"),
        (lambda: T.resize(np.zeros((4, 4, 7)), size=2), r"\(4, 4, 7\)"),
        (lambda: T.resize_tensor(np.zeros((1, 4, 4)), size=2), "torch tensor"),
        (lambda: T.resize_tensor(torch.zeros(1, 4, 4, dtype=torch.uint8), size=2), "floating"),
        (lambda: T.normalize(np.zeros((2, 2, 3)), mean=[0.5], std=[0.5, 0.5, 0.5]), "one value per channel"),
        (lambda: T.imagenet_normalize(np.zeros((2, 2))), "one value per channel"),
        (lambda: T.normalize(np.zeros((2, 2)), mean=[0.5], std=[0.0]), "std"),
        (lambda: T.zscore(np.zeros((2, 2)), eps=0), "eps"),
        (lambda: T.sharpen(np.zeros((2, 2)), amount=-1), "amount"),
        (lambda: T.equalize_histogram(np.zeros((2, 2)), bins=1), "bins"),
        (lambda: T.otsu_threshold(np.zeros((2, 2)), bins=0), "bins"),
        (lambda: T.binarize(np.zeros((2, 2)), threshold=1.5), "1.5"),
        (lambda: T.binarize(np.zeros((2, 2)), threshold="median"), "'median'"),
        (lambda: T.dilate(np.zeros((2, 2)), size=0), "size"),
        (lambda: T.erode(np.zeros((2, 2)), iterations=-1), "iterations"),
        (lambda: T.enhance(np.zeros((2, 2)), steps=["blur"]), "'blur'"),
        (lambda: T.enhance(np.zeros((2, 2)), steps="sharpen"), "string"),
        (lambda: T.augment(np.zeros((4, 4)), rng=np.random.RandomState(0)), "Generator"),
        (lambda: T.augment(np.zeros((4, 4)), np.zeros((3, 3)), rng=np.random.default_rng()), "mask"),
        (lambda: T.augment(np.zeros((4, 4)), rng=np.random.default_rng(), flip_vertical=2), "flip_vertical"),
        (lambda: T.augment(np.zeros((4, 4)), rng=np.random.default_rng(), max_rotation=-5), "max_rotation"),
        (lambda: T.preprocess_for_model(np.zeros((4, 4, 3), np.uint8), input_size=4, mean=[0.5], std=[0.5]),
         "3 channels"),
        (lambda: T.preprocess_for_model(np.zeros((4, 4), np.uint8), input_size=4, mean=MEAN, std=STD,
                                        zscore=True), "not both"),
        (lambda: T.preprocess_for_model(np.zeros((4, 4), np.uint8), input_size=4), "required"),
        (lambda: T.preprocess_for_model(np.full((4, 4), 3.0), input_size=4, zscore=True), r"\[0, 1\]"),
        (lambda: T.preprocess_for_model(np.zeros((4, 4)), input_size=(4,), zscore=True), "size"),
        (lambda: T.preprocess_mask(np.zeros((4, 4, 3)), input_size=4), r"\(H, W\)"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
