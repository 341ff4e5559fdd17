"""Fixture models for the scoring tests: a tiny ResNet18 classifier (64 px input) and a tiny ResUNet
(base_filters 8, 64 px), trained in plain PyTorch on synthetic archive scans so that their predictions match
the phantom ground truth, and saved with classeg.artifact.save_artifact.

The training scans come from synthetic.write_archive with other seeds than the tests' archives (same formats,
contrasts and lesion kinds), decoded with classeg.imaging exactly as the scoring job decodes them. Training is
done once per pytest process (``trained_models`` memoises), about 40 s on 2 idle cores.
"""
from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 64
TRAIN_SEED = 101
TRAIN_COUNT = 900
CLASSIFIER_STEPS = 320
SEGMENTER_STEPS = 90


def decoded_archive(root: Path, *, seed: int, count: int, image_size: int = SIZE):
    """write_archive(root) without broken files, decoded: (uint8 scans, has_tumor labels, exact masks, truth)."""
    from classeg import imaging
    from classeg import synthetic

    truth = synthetic.write_archive(root, seed=seed, count=count, image_size=image_size, broken=False)
    scans = [imaging.to_uint8(imaging.decode_scan((root / entry["path"]).read_bytes(), entry["path"]))
             for entry in truth["slices"]]
    labels = np.array([int(entry["has_tumor"]) for entry in truth["slices"]])
    masks = [entry["mask"] for entry in truth["slices"]]
    return scans, labels, masks, truth


def _train_classifier(scans, labels):
    import torch

    from classeg.models import build_classifier
    from classeg.transforms import preprocess_for_model

    torch.manual_seed(0)
    model = build_classifier(arch="resnet18", num_classes=2, input_size=SIZE, in_channels=3)
    inputs = torch.from_numpy(np.stack([preprocess_for_model(scan, input_size=SIZE, mean=model.mean, std=model.std,
                                                             channels=3) for scan in scans]))
    targets = torch.from_numpy(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=CLASSIFIER_STEPS)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(CLASSIFIER_STEPS):
        index = torch.randint(0, len(inputs), (32,), generator=generator)
        batch = inputs[index]
        if step % 2:
            batch = batch.flip(-1)  # left-right flips: lesions sit in either hemisphere
        loss = torch.nn.functional.cross_entropy(model(batch), targets[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def _train_segmenter(scans, labels, masks):
    import torch

    from classeg import imaging
    from classeg.models import build_resunet
    from classeg.transforms import preprocess_for_model

    torch.manual_seed(0)
    model = build_resunet(in_channels=3, base_filters=8)
    positive = np.flatnonzero(labels)  # the Class-Seg recipe: the segmenter learns on tumour slices
    inputs = torch.from_numpy(np.stack([preprocess_for_model(scans[i], input_size=SIZE, zscore=True, channels=3)
                                        for i in positive]))
    targets = torch.from_numpy(np.stack([imaging.resize_mask(masks[i], SIZE) for i in positive])
                               .astype(np.float32))[:, None]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(SEGMENTER_STEPS):
        index = torch.randint(0, len(inputs), (16,), generator=generator)
        logits = model(inputs[index])
        target = targets[index]
        probability = torch.sigmoid(logits)
        dice = 1 - (2 * (probability * target).sum() + 1) / (probability.sum() + target.sum() + 1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + dice
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def save_classifier(uri, model, class_names, **kwargs) -> dict:
    from classeg.artifact import save_artifact

    spec = {"size": model.input_size, "channels": model.in_channels, "mean": list(model.mean),
            "std": list(model.std), "zscore": False}
    return save_artifact(str(uri), model=model, task="classify", class_names=class_names, input_spec=spec, **kwargs)


def save_segmenter(uri, model, size: int = SIZE) -> dict:
    from classeg.artifact import save_artifact

    spec = {"size": size, "channels": model.in_channels, "mean": [0.0] * model.in_channels,
            "std": [1.0] * model.in_channels, "zscore": True}
    return save_artifact(str(uri), model=model, task="segment", class_names=["background", "tumor"],
                         input_spec=spec)


def _cache_dir() -> Path | None:
    """``$CLASSEG_TEST_MODEL_CACHE/<hash of this file and torch's version>``, when that variable is set: a
    developer convenience for iterating on a loaded machine. Unset (the default, and in `make test`), the
    models are trained in every session."""
    import hashlib
    import os

    import torch

    base = os.environ.get("CLASSEG_TEST_MODEL_CACHE")
    if not base:
        return None
    digest = hashlib.sha256(Path(__file__).read_bytes() + torch.__version__.encode()).hexdigest()[:16]
    return Path(base) / digest


@functools.lru_cache(maxsize=1)
def _trained(root: str) -> dict:
    cache = _cache_dir()
    if cache is not None and (cache / "segmenter" / "model.json").is_file():
        return {"classifier": str(cache / "classifier"), "segmenter": str(cache / "segmenter"), "root": str(cache),
                "seconds": 0.0}
    models = _train_and_save(str(cache) if cache is not None else root)
    return models


def _train_and_save(root: str) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        started = time.perf_counter()
        root_path = Path(root)
        with tempfile.TemporaryDirectory(prefix="classeg-train-archive-") as scratch:
            scans, labels, masks, _ = decoded_archive(Path(scratch) / "archive", seed=TRAIN_SEED, count=TRAIN_COUNT)
        classifier = _train_classifier(scans, labels)
        segmenter = _train_segmenter(scans, labels, masks)
        classifier_uri = root_path / "classifier"
        segmenter_uri = root_path / "segmenter"
        save_classifier(classifier_uri, classifier, ["no_tumor", "tumor"])
        save_segmenter(segmenter_uri, segmenter)  # written last: its model.json marks a complete cache entry
        return {"classifier": str(classifier_uri), "segmenter": str(segmenter_uri), "root": root,
                "seconds": time.perf_counter() - started}
    finally:
        torch.set_num_threads(threads)


_ROOT: list[str] = []


def trained_models(tmp_path_factory) -> dict:
    """{"classifier": path, "segmenter": path, ...}: trained once per pytest process."""
    if not _ROOT:
        _ROOT.append(str(tmp_path_factory.mktemp("scoring-models")))
    return _trained(_ROOT[0])
