"""The mask-supervised lesion map of binary classifiers: the model's two outputs, the loss, the data path,
the driver's on/off rule, and that the artifact round trip keeps the map."""
from __future__ import annotations

import io
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from classeg.losses import MaskSupervisedLoss
from classeg.models import build_classifier, classifier_from_description, load_classifier_state, parameter_groups
from classeg.training.collectives import LocalCollectives
from classeg.training.cache import cache_row
from classeg.training.cache import columns as cache_columns
from classeg.training.job import lesion_class
from classeg.training.loop import backbone_lr_scale, build_loss, build_model, train_step
from classeg.training.optim import build_optimizer
from classeg.training.plan import ModelSpec

SPEC = {"size": 32, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "zscore": False}


def _model(**kw):
    torch.manual_seed(0)
    return build_classifier(arch="resnet18", num_classes=2, input_size=32, lesion_class=1, **kw)


def test_lesion_map_outputs_and_logit_boost():
    model = _model()
    x = torch.randn(3, 3, 64, 64)
    model.eval()
    logits = model(x)
    assert logits.shape == (3, 2)
    model.train()
    model.emit_lesion_map = True
    logits_train, lesion = model(x)
    assert logits_train.shape == (3, 2) and lesion.shape == (3, 1, 8, 8)  # layer2: stride 8
    model.emit_lesion_map = False
    assert isinstance(model(x), torch.Tensor)
    # The map's maximum is added to the tumour class's logit only.
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.lesion.bias.add_(5.0)
        after = model(x)
    torch.testing.assert_close(after[:, 1] - before[:, 1], torch.full((3,), 5.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(after[:, 0], before[:, 0])


def test_lesion_map_survives_the_artifact_round_trip_and_is_a_head_parameter():
    model = _model()
    description = model.describe()
    assert description["lesion_class"] == 1 and description["config"]["lesion_class"] == 1
    rebuilt = classifier_from_description(description, weights=model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(rebuilt(x), model(x))
    plain = build_classifier(arch="resnet18", num_classes=2, input_size=32)
    assert plain.lesion is None and plain.describe()["config"]["lesion_class"] is None
    with pytest.raises(ValueError, match="lesion"):
        load_classifier_state(plain, model.state_dict())  # the strict load names the unexpected lesion keys
    groups = {g["name"]: g for g in parameter_groups(model, lr=1.0)}
    lesion_ids = {id(p) for p in model.lesion.parameters()}
    assert lesion_ids <= {id(p) for p in groups["head"]["params"]}
    assert not lesion_ids & {id(p) for p in groups["backbone"]["params"]}


@pytest.mark.parametrize("bad", [2, -1, True, "1"])
def test_lesion_class_must_be_a_class_index(bad):
    with pytest.raises(ValueError, match="lesion_class"):
        build_classifier(arch="resnet18", num_classes=2, lesion_class=bad)


def test_mask_supervised_loss_is_cross_entropy_plus_weighted_cell_bce():
    torch.manual_seed(0)
    logits, lesion = torch.randn(2, 2), torch.randn(2, 1, 4, 4)
    labels = torch.tensor([1, 0])
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, 0, 9, 17] = 1.0  # one pixel: cell (1, 2) of the 4x4 grid of 8x8 cells
    loss = MaskSupervisedLoss(torch.nn.CrossEntropyLoss(), weight=0.5, pos_weight=20.0)
    cells = torch.zeros(2, 1, 4, 4)
    cells[0, 0, 1, 2] = 1.0
    bce = F.binary_cross_entropy_with_logits(lesion, cells, pos_weight=torch.tensor(20.0))
    expected = F.cross_entropy(logits, labels) + 0.5 * bce
    torch.testing.assert_close(loss((logits, lesion), (labels, masks)), expected)
    # Evaluation: logits alone (the model in eval mode), labels alone or with masks.
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits, labels))
    torch.testing.assert_close(loss(logits, (labels, masks)), F.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match="pos_weight"):
        MaskSupervisedLoss(torch.nn.CrossEntropyLoss(), pos_weight=0)


def _spec(**kw):
    train = {"task": "classify", "arch": "resnet18", "head": "linear", "strategy": "finetune", "base_filters": 4,
             "label_smoothing": 0.0, "loss": "dice", "mask_loss_weight": 1.0}
    return ModelSpec.from_train_config(train, class_names=["no", "yes"], input_spec=SPEC, **kw)


def test_a_mask_supervised_train_step_learns_the_lesion_map():
    spec = _spec(lesion_class=1)
    assert spec.mask_supervised and spec.mask_loss_weight == 1.0
    assert not _spec().mask_supervised and _spec().mask_loss_weight == 0.0
    torch.manual_seed(0)
    model = build_model(spec, load_weights=False)
    assert model.emit_lesion_map
    loss_fn = build_loss(spec, torch.device("cpu"))
    optimizer = build_optimizer(model, task="classify", optimizer="sgd", lr=0.05, weight_decay=0.0, momentum=0.0,
                                backbone_lr_scale=1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([1, 0, 1, 0])
    masks = torch.zeros(4, 1, 32, 32)
    masks[0, 0, 4:10, 4:10] = masks[2, 0, 20:26, 20:26] = 1.0
    bias = model.lesion.bias.detach().clone()
    loss = train_step(model, images, (labels, masks), loss_fn=loss_fn, optimizer=optimizer, scaler=scaler,
                      coll=LocalCollectives(), use_amp=False, accum_steps=1, last_micro=True)
    assert np.isfinite(loss) and loss > 0
    assert not torch.equal(model.lesion.bias, bias)  # the mask loss reached the map


def test_a_negative_mask_loss_weight_is_refused_naming_the_key():
    train = {"task": "classify", "arch": "resnet18", "head": "linear", "strategy": "finetune", "base_filters": 4,
             "label_smoothing": 0.0, "loss": "dice", "mask_loss_weight": -1.0}
    with pytest.raises(ValueError, match="train.mask_loss_weight must be >= 0, got -1.0"):
        ModelSpec.from_train_config(train, class_names=["no", "yes"], input_spec=SPEC, lesion_class=1)


def test_backbone_lr_scale_applies_to_trained_backbones_only():
    recipe = types.SimpleNamespace(backbone_lr_scale=0.1)
    scratch = types.SimpleNamespace(model=_spec(), recipe=recipe)
    pretrained = types.SimpleNamespace(model=_spec(weights={"kind": "backbone", "uri": "/w.pth"}), recipe=recipe)
    assert backbone_lr_scale(scratch) == 1.0 and backbone_lr_scale(pretrained) == 0.1


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_cache_gives_a_classifier_labels_and_masks():
    rng = np.random.default_rng(0)
    mask = np.zeros((48, 48), np.uint8)
    mask[10:20, 10:20] = 255
    image = _png(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    rows = [{"scan_id": "00000000000000aa", "image": image, "label": 1, "mask": _png(mask)},
            {"scan_id": "00000000000000bb", "image": image, "label": 0, "mask": None}]
    out = [cache_row(row, task="classify", input_spec=SPEC, with_mask=True) for row in rows]
    assert cache_columns("classify", with_mask=True) == ["scan_id", "scan_key", "image", "mask", "label"]
    assert [o[4] for o in out] == [1, 0]
    first = np.frombuffer(out[0][3], np.uint8).reshape(32, 32)
    assert set(np.unique(first)) == {0, 1} and first.sum() == 6 * 6  # rows 10-19 at 32/48, nearest: outputs 7-12 (1.5 i + 0.75 in 10..19)
    assert np.frombuffer(out[1][3], np.uint8).sum() == 0  # a row without a mask: no tumour anywhere


def _counts(masks: int) -> dict:
    return {"train": {"masks": masks}}


def _train(**kw):
    return types.SimpleNamespace(task=kw.pop("task", "classify"), mask_supervision=kw.pop("on", True))


@pytest.mark.parametrize("class_names, masks, train, weights, expected", [
    (["no", "yes"], 10, _train(), {"kind": "none"}, 1),
    (["tumour", "no_tumour"], 10, _train(), {"kind": "none"}, 0),
    (["no", "yes"], 0, _train(), {"kind": "none"}, None),  # a table without masks
    (["glioma", "meningioma", "pituitary"], 10, _train(), {"kind": "none"}, None),  # not binary
    (["glioma", "notumor"], 10, _train(on=False), {"kind": "none"}, None),  # switched off
    (["no", "yes"], 10, _train(task="segment"), {"kind": "none"}, None),
    (["no", "yes"], 10, _train(), {"kind": "full", "lesion_map": False}, None),  # --weights without the map
    (["no", "yes"], 10, _train(on=False), {"kind": "full", "lesion_map": True}, 1),  # --weights with it
])
def test_driver_rule_for_the_lesion_map(class_names, masks, train, weights, expected):
    assert lesion_class(train, _counts(masks), class_names, weights) == expected


def test_weights_with_a_lesion_map_need_masks():
    with pytest.raises(ValueError, match="no masks"):
        lesion_class(_train(), _counts(0), ["no", "yes"], {"kind": "full", "lesion_map": True})
