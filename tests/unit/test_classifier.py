"""ResNet classifiers: heads, transfer strategies (incl. frozen BatchNorm), parameter groups, weight loading
from files, S3 (a real moto server on loopback) and the torch hub cache, artifacts, bad input."""
import json
import os
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from classeg.models import classifier as C
from classeg.models.classifier import build_classifier, parameter_groups

# torchvision parameter counts with the 1000-class fc removed (fc = 512*1000+1000 / 2048*1000+1000).
BACKBONE_PARAMETERS = {"resnet18": 11_689_512 - 513_000, "resnet50": 25_557_032 - 2_049_000}
FEATURES = {"resnet18": 512, "resnet50": 2048}


def dense_head_parameters(features, classes):
    widths = [features, 1024, 1024, 1024, 256, classes]
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


@pytest.mark.parametrize("arch, head, classes", [
    ("resnet18", "linear", 2),
    ("resnet18", "dense", 4),
    ("resnet50", "linear", 3),
])
def test_heads_shapes_and_parameter_counts(arch, head, classes):
    torch.manual_seed(0)
    model = build_classifier(arch=arch, num_classes=classes, head=head).eval()
    head_parameters = (FEATURES[arch] * classes + classes if head == "linear"
                       else dense_head_parameters(FEATURES[arch], classes))
    assert sum(p.numel() for p in model.parameters()) == BACKBONE_PARAMETERS[arch] + head_parameters
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, classes)
    assert torch.allclose(model.predict_proba(torch.randn(2, 3, 32, 32)).sum(dim=1), torch.ones(2))


def test_dense_head_is_the_published_one():
    model = build_classifier(arch="resnet18", num_classes=2, head="dense", dropout=0.3)
    layers = list(model.head)
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [1024, 1024, 1024, 256, 2]
    assert [type(m) for m in layers[:3]] == [nn.Linear, nn.ReLU, nn.Dropout]
    assert [m.p for m in layers if isinstance(m, nn.Dropout)] == [0.3] * 4
    assert isinstance(model.backbone.fc, nn.Identity)


def test_attributes_and_describe():
    model = build_classifier(arch="resnet18", num_classes=2, head="dense", strategy="partial", input_size=256)
    assert (model.arch, model.num_classes, model.head_type, model.strategy, model.input_size) == (
        "resnet18", 2, "dense", "partial", 256)
    assert model.mean == C.IMAGENET_MEAN and model.std == C.IMAGENET_STD
    description = json.loads(json.dumps(model.describe()))
    assert description["head"] == "dense" and description["task"] == "classification"
    assert description["trainable_parameters"] < description["total_parameters"]
    assert description["config"]["input_size"] == 256


def _bn_layers(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_frozen_strategy_keeps_backbone_and_its_batchnorm_fixed():
    torch.manual_seed(1)
    model = build_classifier(arch="resnet18", num_classes=2, head="dense", strategy="frozen")
    model.train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert not any(bn.training for bn in _bn_layers(model.backbone))
    assert model.head.training  # dropout in the head still trains
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head[0].weight.detach().clone()
    optimizer = torch.optim.SGD(parameter_groups(model, lr=0.1), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32) * 3 + 1), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    for key, value in model.backbone.state_dict().items():  # running stats included
        assert torch.equal(value, backbone_before[key]), key
    assert not torch.equal(model.head[0].weight, head_before)


def test_partial_strategy_trains_layer4_only():
    model = build_classifier(arch="resnet18", num_classes=2, strategy="partial").train()
    for name in ("conv1", "bn1", "layer1", "layer2", "layer3"):
        stage = getattr(model.backbone, name)
        assert not any(p.requires_grad for p in stage.parameters()), name
        assert not any(bn.training for bn in _bn_layers(stage)), name
    assert all(p.requires_grad for p in model.backbone.layer4.parameters())
    assert all(bn.training for bn in _bn_layers(model.backbone.layer4))
    running_mean = model.backbone.layer3[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32) + 5)
    assert torch.equal(model.backbone.layer3[0].bn1.running_mean, running_mean)
    assert not torch.equal(model.backbone.layer4[0].bn1.running_mean, torch.zeros(512))


def test_finetune_strategy_trains_everything():
    model = build_classifier(arch="resnet18", num_classes=2, strategy="finetune").train()
    assert all(p.requires_grad for p in model.parameters())
    assert all(bn.training for bn in _bn_layers(model))
    model.eval()
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("strategy, groups", [
    ("finetune", {"backbone": 1e-4, "head": 1e-3}),
    ("partial", {"backbone": 1e-4, "head": 1e-3}),
    ("frozen", {"head": 1e-3}),
])
def test_parameter_groups(strategy, groups):
    model = build_classifier(arch="resnet18", num_classes=2, strategy=strategy)
    result = parameter_groups(model, lr=1e-3, backbone_lr_scale=0.1, weight_decay=1e-4)
    assert {g["name"]: g["lr"] for g in result} == pytest.approx(groups)
    grouped = {id(p) for g in result for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    if strategy == "partial":
        backbone = next(g for g in result if g["name"] == "backbone")
        assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.layer4.parameters()}
    optimizer = torch.optim.AdamW(result)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4] * len(groups)


def test_grayscale_input_is_replicated():
    torch.manual_seed(2)
    rgb = build_classifier(arch="resnet18", num_classes=2).eval()
    gray = build_classifier(arch="resnet18", num_classes=2, in_channels=1).eval()
    gray.load_state_dict(rgb.state_dict())
    assert gray.mean == (0.449,) and gray.std == (0.226,)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(gray(x), rgb(x.repeat(1, 3, 1, 1)))


def _torchvision_resnet_file(tmp_path, arch="resnet18", name="resnet18-f37072fd.pth"):
    """A stand-in for the published file: a torchvision ResNet state dict incl. its 1000-class fc."""
    torch.manual_seed(3)
    reference = getattr(torchvision.models, arch)(weights=None)
    path = tmp_path / name
    torch.save(reference.state_dict(), path)
    return reference, path


def _assert_backbone_equals(model, reference):
    state = model.backbone.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key


def test_backbone_weights_from_local_file_ignore_fc(tmp_path):
    reference, path = _torchvision_resnet_file(tmp_path)
    for source in (str(path), path, f"file://{path}"):
        model = build_classifier(arch="resnet18", num_classes=2, weights=source)
        _assert_backbone_equals(model, reference)
    # Old checkpoints lack num_batches_tracked; that is tolerated.
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    _assert_backbone_equals(build_classifier(arch="resnet18", num_classes=2, weights=state), reference)


def test_backbone_key_problems_are_listed(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer1.0.conv1.weight"]
    state["layer9.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    with pytest.raises(ValueError) as error:
        build_classifier(arch="resnet18", num_classes=2, weights=state)
    message = str(error.value)
    assert "missing keys: layer1.0.conv1.weight" in message
    assert "unexpected keys: layer9.weight" in message
    assert "conv1.weight (file (64, 1, 7, 7), model (64, 3, 7, 7))" in message
    assert "fc." not in message


def test_resnet50_weights_do_not_fit_resnet18(tmp_path):
    _, path = _torchvision_resnet_file(tmp_path, arch="resnet50", name="resnet50-11ad3fa6.pth")
    with pytest.raises(ValueError, match=r"resnet18 backbone.*unexpected keys: .*more\)"):
        build_classifier(arch="resnet18", num_classes=2, weights=path)


def test_imagenet_offline_names_the_file_to_stage(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    with pytest.raises(C.WeightsUnavailableError, match=r"resnet18-f37072fd\.pth.*weights='/path/to/"):
        build_classifier(arch="resnet18", num_classes=2, weights="imagenet")
    with pytest.raises(C.WeightsUnavailableError, match=r"resnet50-11ad3fa6\.pth"):
        build_classifier(arch="resnet50", num_classes=2, weights="imagenet")
    with pytest.raises(C.WeightsUnavailableError, match=r"resnet50-0676ba61\.pth"):
        build_classifier(arch="resnet50", num_classes=2, weights="imagenet:IMAGENET1K_V1")


def test_imagenet_uses_a_staged_file_in_the_hub_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    reference, _ = _torchvision_resnet_file(tmp_path / "hub" / "checkpoints")
    model = build_classifier(arch="resnet18", num_classes=2, weights="imagenet")
    _assert_backbone_equals(model, reference)


def test_backbone_weights_from_s3(monkeypatch, tmp_path):
    pytest.importorskip("moto")
    from tests.s3util import aws_test_env, direct_client, start_moto, stop_moto

    for key, value in aws_test_env().items():
        monkeypatch.setenv(key, value)
    reference, path = _torchvision_resnet_file(tmp_path)
    server, endpoint = start_moto()
    try:
        client = direct_client(endpoint)
        client.create_bucket(Bucket="weights")
        client.upload_file(str(path), "weights", "torchvision/resnet18-f37072fd.pth")
        uri = "s3://weights/torchvision/resnet18-f37072fd.pth"
        _assert_backbone_equals(build_classifier(arch="resnet18", num_classes=2, weights=uri,
                                                 endpoint_url=endpoint), reference)
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # honoured by boto3 itself
        _assert_backbone_equals(build_classifier(arch="resnet18", num_classes=2, weights=uri), reference)
        with pytest.raises(FileNotFoundError, match="s3://weights/missing.pth"):
            C.read_state_dict("s3://weights/missing.pth")
    finally:
        stop_moto(server)


def test_full_classifier_state_round_trip(tmp_path):
    torch.manual_seed(4)
    model = build_classifier(arch="resnet18", num_classes=3, head="dense", strategy="partial").eval()
    path = tmp_path / "classifier.pt"
    # DDP-wrapped state dicts carry a module. prefix; it is stripped.
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    description = json.loads(json.dumps(model.describe()))
    rebuilt = C.classifier_from_description(description, weights=str(path))
    assert not rebuilt.training and rebuilt.head_type == "dense"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    wrong = build_classifier(arch="resnet18", num_classes=2)
    with pytest.raises(ValueError, match=r"head.weight \(file \(3, 512\), model \(2, 512\)\)"):
        C.load_classifier_state(wrong, {k: v for k, v in model.state_dict().items()
                                        if k.startswith("backbone.")} | {"head.weight": torch.zeros(3, 512),
                                                                         "head.bias": torch.zeros(3)})


def test_forward_rejects_wrong_channels():
    model = build_classifier(arch="resnet18", num_classes=2)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) input, got shape \(1, 1, 32, 32\)"):
        model(torch.zeros(1, 1, 32, 32))


@pytest.mark.parametrize("kwargs, message", [
    ({"arch": "resnet34"}, "'resnet34'"),
    ({"head": "mlp"}, "'mlp'"),
    ({"strategy": "half"}, "'half'"),
    ({"num_classes": 1}, "num_classes"),
    ({"dropout": 1.0}, "dropout"),
    ({"in_channels": 2}, "in_channels"),
    ({"input_size": 16}, "input_size"),
    ({"mean": [0.5, 0.5]}, "mean must have 3 values"),
    ({"std": [0.2, 0.0, 0.2]}, "std values must be > 0"),
    ({"weights": 12}, "path or s3://"),
    ({"weights": "imagenet:IMAGENET1K_V9"}, "'IMAGENET1K_V9'"),
    ({"weights": "s3://bucket-only"}, "s3://bucket/key"),
])
def test_build_classifier_bad_arguments(kwargs, message):
    arguments = {"arch": "resnet18", "num_classes": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        build_classifier(**arguments)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: parameter_groups(m, lr=0), ValueError, "lr must be"),
    (lambda m: parameter_groups(m, lr=1e-3, backbone_lr_scale=-1), ValueError, "backbone_lr_scale"),
    (lambda m: parameter_groups(m, lr=1e-3, weight_decay=-1), ValueError, "weight_decay"),
    (lambda m: parameter_groups(nn.Linear(2, 2), lr=1e-3), ValueError, "ClassifierNet"),
    (lambda m: C.load_classifier_state(nn.Linear(2, 2), {}), ValueError, "ClassifierNet"),
    (lambda m: C.classifier_from_description({"arch": "resnet18"}), ValueError, "config"),
    (lambda m: C.read_state_dict("/nonexistent/weights.pth"), FileNotFoundError, "/nonexistent/weights.pth"),
    (lambda m: C.imagenet_state_dict("vgg16"), ValueError, "'vgg16'"),
    (lambda m: C.load_backbone_state(m.backbone, [1, 2]), ValueError, "mapping"),
])
def test_helper_bad_arguments(call, error, message):
    model = build_classifier(arch="resnet18", num_classes=2)
    with pytest.raises(error, match=message):
        call(model)


def test_read_state_dict_rejects_non_state_dict_files(tmp_path):
    path = tmp_path / "not-weights.pt"
    torch.save({"epoch": 3}, path)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        C.read_state_dict(path)
    assert os.path.exists(path)
