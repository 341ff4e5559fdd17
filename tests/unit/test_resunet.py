"""Class-Seg ResUNet: exact parameter count, shapes, layer structure, state-dict round trips, bad input."""
import json

import pytest
import torch
from torch import nn

from classeg.models.resunet import PUBLISHED_PARAMETER_COUNT, ResUNet, build_resunet, count_parameters, \
    resunet_from_description


def residual_block_parameters(cin, f):
    # conv1x1 (cin*f + f) + BN (2f) + conv3x3 (9f^2 + f) + BN (2f) + shortcut conv1x1 (cin*f + f) + BN (2f)
    return 2 * cin * f + 9 * f * f + 9 * f


def test_published_parameter_count():
    model = build_resunet()
    assert count_parameters(model) == 1_206_129 == PUBLISHED_PARAMETER_COUNT
    # The same count from the Keras layer list, computed independently of the module code.
    stem = (27 * 16 + 16) + 32 + (144 * 16 + 16) + 32
    blocks = [(16, 32), (32, 64), (64, 128), (128, 256), (384, 128), (192, 64), (96, 32), (48, 16)]
    assert stem + sum(residual_block_parameters(c, f) for c, f in blocks) + 17 == 1_206_129


@pytest.mark.parametrize("in_channels, base_filters, expected", [
    (3, 16, 1_206_129),
    (1, 16, 1_206_129 - 2 * 9 * 16),                      # stem conv loses 2 input channels x 9 x 16 weights
    (3, 8, (27 * 8 + 8) + 16 + (72 * 8 + 8) + 16
     + sum(residual_block_parameters(c, f) for c, f in
           [(8, 16), (16, 32), (32, 64), (64, 128), (192, 64), (96, 32), (48, 16), (24, 8)]) + 9),
])
def test_parameter_count_table(in_channels, base_filters, expected):
    assert count_parameters(build_resunet(in_channels=in_channels, base_filters=base_filters)) == expected


def test_structure_matches_the_published_model():
    model = build_resunet()
    assert [m.out_channels for m in model.stem if isinstance(m, nn.Conv2d)] == [16, 16]
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    block = model.enc2
    assert [type(m) for m in block.main] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d]
    assert [m.kernel_size for m in block.main if isinstance(m, nn.Conv2d)] == [(1, 1), (3, 3)]
    assert [type(m) for m in block.shortcut] == [nn.Conv2d, nn.BatchNorm2d]
    decoder_inputs = [model.dec4.main[0].in_channels, model.dec3.main[0].in_channels,
                      model.dec2.main[0].in_channels, model.dec1.main[0].in_channels]
    assert decoder_inputs == [256 + 128, 128 + 64, 64 + 32, 32 + 16]
    assert model.up.mode == "nearest" and model.head.kernel_size == (1, 1) and model.head.out_channels == 1


def test_residual_block_is_post_activation():
    block = build_resunet().enc2.eval()
    x = torch.randn(1, 16, 4, 4)
    expected = torch.relu(block.main(x) + block.shortcut(x))
    assert torch.equal(block(x), expected)
    assert (block(x) >= 0).all()


def test_forward_returns_logits_and_predict_proba_sigmoid():
    torch.manual_seed(0)
    model = build_resunet().eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 1, 32, 48)
    assert (logits < 0).any()  # logits, not probabilities
    probabilities = model.predict_proba(x)
    assert torch.allclose(probabilities, torch.sigmoid(logits))
    assert not probabilities.requires_grad


def test_training_step_updates_weights():
    torch.manual_seed(1)
    model = build_resunet(base_filters=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.head.weight.detach().clone()
    loss = nn.functional.binary_cross_entropy_with_logits(model(torch.randn(2, 3, 16, 16)),
                                                          torch.ones(2, 1, 16, 16))
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.head.weight)


def test_state_dict_round_trip_through_a_file_and_description(tmp_path):
    torch.manual_seed(2)
    model = build_resunet(in_channels=1, base_filters=8).eval()
    path = tmp_path / "segmenter.pt"
    torch.save(model.state_dict(), path)
    description = json.loads(json.dumps(model.describe()))
    assert description["config"] == {"in_channels": 1, "base_filters": 8, "out_channels": 1}
    assert description["normalization"] == "zscore"
    rebuilt = resunet_from_description(description, weights=str(path))
    assert not rebuilt.training
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_strict_loading_lists_the_bad_keys():
    state = build_resunet().state_dict()
    del state["head.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["stem.0.weight"] = torch.zeros(16, 1, 3, 3)
    with pytest.raises(ValueError) as error:
        build_resunet(weights=state)
    message = str(error.value)
    assert "missing keys: head.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "stem.0.weight (file (16, 1, 3, 3), model (16, 3, 3, 3))" in message


@pytest.mark.parametrize("shape, message", [
    ((1, 3, 40, 32), r"multiples of 16, got shape \(1, 3, 40, 32\)"),
    ((1, 3, 32, 8), r"got shape \(1, 3, 32, 8\)"),
    ((1, 1, 32, 32), r"3 input channels, got shape \(1, 1, 32, 32\)"),
    ((3, 32, 32), r"\(N, C, H, W\), got shape \(3, 32, 32\)"),
])
def test_bad_input_shapes(shape, message):
    model = build_resunet(base_filters=4)
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


@pytest.mark.parametrize("call, message", [
    (lambda: build_resunet(in_channels=0), "in_channels"),
    (lambda: build_resunet(base_filters=16.0), "base_filters"),
    (lambda: build_resunet(out_channels=True), "out_channels"),
    (lambda: build_resunet(weights="/nonexistent/resunet.pt"), None),
    (lambda: resunet_from_description({"arch": "resunet"}), "config"),
    (lambda: ResUNet(in_channels=3).predict_proba(torch.zeros(1, 3, 20, 20)), "multiples of 16"),
])
def test_bad_arguments(call, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        call()
