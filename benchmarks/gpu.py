"""GPU ceilings of the classeg models, and how close the predictor and the per-rank training step get (issue 17).

    python benchmarks/gpu.py [--device auto|cpu|cuda] [--quick] [--scans 20000] [--seconds 12]
                             [--parts checks,ceilings,predictor,loader,dispatch,train_epoch,train_compiled]
                             [--models resnet18,resnet50,resunet] [--out PATH]

Prints one JSON object on stdout (also written to ``--out``, after each part, so a run stopped at a time limit
leaves its finished parts); progress goes to stderr. Without a CUDA device (and without ``--device cpu``) it
prints ``{"skipped": "no CUDA device", ...}`` and exits 0 at once. BENCHMARKS.md renders
benchmarks/results/gpu.json (`benchmarks/run_all.py` never runs this script: it needs a GPU).

Made to run where there is no Spark: Python, torch, numpy and classeg's model, predictor, artifact and training
step modules only (no pyspark, no petastorm, nothing downloaded); every scan is generated here, in memory.

Parts, in the order they run (images/s, each time-based: warm-up iterations, a few probe iterations to
estimate the step time, then enough timed iterations for about ``--seconds``, ``torch.cuda.synchronize()``
around the timed span):

- ``checks``, first: the device's answers against the CPU's on the same inputs: the batched training
  augmentation (fp32 on both; relative error, mask pixels that differ) and the predictor (fp32 on the CPU,
  the library's autocast on the device, every scan segmented; probability error, label agreement, mask IoU).
- ``ceilings``, the models alone: ResNet18 and ResNet50 (``build_classifier``, 2 classes, linear head) at
  224 px and batch 256, the ResUNet (``build_resunet``, ``train.base_filters`` of the default config) at
  256 px and batch 64 (``--models`` picks some); each forward under ``torch.inference_mode`` and a train step
  (forward, backward, AdamW step) on random tensors already on the device; bf16 autocast where
  ``torch.cuda.is_bf16_supported()`` (else fp16 with a GradScaler), channels_last, cudnn.benchmark. On CPU:
  fp32.
- ``predictor``: untrained models saved with ``classeg.artifact.save_artifact`` in a temporary folder, loaded
  by ``ClassSegPredictor.load``; ``--scans`` synthetic 256x256 uint8 grayscale scans (phantom slices from
  ``classeg.synthetic.phantom``, a pool of distinct ones cycled) through ``prepare`` (one thread) and
  ``predict`` in batches of 256. Untrained, the classifier says about the same thing for every scan, so
  ``tumor_threshold`` is the median tumour probability of the pool: about half the scans are segmented
  (``segmented_fraction`` says how many were). Ratios: to the ResNet18 forward ceiling, and to the model-only
  rate of the predictor's own work (``predictor_to_model_forward``: one ResNet18 forward per scan and one
  ResUNet forward per segmented scan, at their forward ceilings). Two variants over fewer scans:
  ``predictor_contiguous`` (NCHW tensors) and ``predictor_cudnn_benchmark``.
- ``loader``: a training cache of decoded 224 px pixels (`classeg.training.cache`, written here with pyarrow
  as Spark writes it on a cluster; the phantom pool cycled, ``Sizes.train_rows`` rows) read by
  `classeg.training.data.open_loader` (batches collated into pinned memory): ``host`` alone at each reader
  thread count of ``Sizes.loader_thread_sweep``, and ``to_device_augmented`` at the fastest, with the copy to
  the device and the batched augmentation and normalisation there (`classeg.training.augment.model_inputs`).
- ``dispatch``: `benchmarks/dispatch.py` over that cache, its stand-in for the step's host side launching
  tiny kernels on the device: beside the loader's threads against beside the same loader in a child process
  (``threads_vs_process``: what the GIL costs the dispatching thread), the loader taken at the ResNet18
  train-step ceiling's batches/s.
- ``train_epoch``: `classeg.training.loop.train_one_epoch` of the per-rank loop (``loop.setup`` with
  ``LocalCollectives``, the default config's ResNet18 recipe, augmentation on, the loader's fastest thread
  count) over that cache, the epochs after the first; then ``without_loader``: a few batches kept on the
  device, timed through ``ctx.inputs`` + ``train_step`` and through ``train_step`` alone (what the loader and
  the augmentation each cost). Ratios to the ResNet18 train-step ceiling. On CUDA also
  ``train_epoch_in_line``: the same epoch with the model input made on the training stream, only the copy on
  the side stream (the library prepares it a batch ahead on the side stream: what that gains); everywhere
  ``train_epoch_switch_interval``: the epoch with a tenth of Python's thread switch interval (what the
  loader threads' hold on the GIL costs the thread that dispatches the step).
- ``train_compiled``: the epoch again with ``train.compile`` (CUDA only; only if the run is not already late).

The predictor and the training step run with the settings the library itself chooses (its own autocast,
memory format and cudnn flags): those are what is measured. ``autocast_dtype`` is read off the first
convolution's output during the run. Each part that cannot import what it needs reports ``{"error": ...}``
and the others still run: the GPU machine has no boto3, and ``classeg.io.files`` (under ``classeg.artifact``
and the training loop) imports botocore at module level, so the predictor and the training step need boto3,
botocore, s3transfer and jmespath carried there as wheels.

``--quick``: tiny sizes and iterations and one torch thread, a CPU smoke test (well under a minute on 2 cores).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import classeg  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .` (the GPU machine)
    sys.path.insert(0, str(ROOT / "lib"))

log = logging.getLogger("benchmarks.gpu")

DEVICES = ("auto", "cpu", "cuda")
PARTS = ("checks", "ceilings", "predictor", "loader", "dispatch", "train_epoch", "train_compiled")
#: The dispatch part (benchmarks/dispatch.py): its span per measurement at most, and its rounds.
DISPATCH_SECONDS, DISPATCH_ROUNDS = 2.0, 3
MODELS = ("resnet18", "resnet50", "resunet")
#: Goals from issue 17: the training step against the train-step ceiling, scoring against the model-only forward
#: rate of the predictor's work (classifier on every scan, segmenter on the segmented ones).
GOALS = {"train_epoch_to_resnet18_train_step": 0.85, "predictor_to_model_forward": 0.80}
#: The predictor's prepare runs on one CPU thread; this cap keeps the whole run well under 8 minutes if the
#: machine's CPU is slower than expected (the scans it got through are reported).
PREDICTOR_MAX_SECONDS = 90.0
#: The interpreter's thread switch interval (seconds) of the train_epoch_switch_interval variant, a tenth of
#: Python's default: a thread waiting for the GIL asks its holder to drop it after this long.
PROBE_SWITCH_INTERVAL = 0.0005
#: train_compiled (torch.compile's first epoch can take minutes) starts only this early into the run.
COMPILE_START_BY = 240.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything that --quick shrinks."""

    classifier_size: int = 224
    classifier_batch: int = 256
    segmenter_size: int = 256
    segmenter_batch: int = 64
    scan_size: int = 256
    predictor_batch: int = 256
    scans: int = 20000
    phantoms: int = 128        # distinct synthetic scans, cycled
    seconds: float = 12.0      # timed span per measurement
    warmup: int = 10           # the first iterations include cudnn's autotuning
    probe: int = 3
    min_iterations: int = 5
    train_rows: int = 7680     # training cache rows: 30 steps of classifier_batch per epoch
    rows_per_file: int = 128   # one row group per file, as prepare_split writes them
    loader_threads: int = 4    # the training epoch's reader threads when the loader part did not choose
    loader_thread_sweep: tuple = (4, 8, 16)
    check_scans: int = 32      # scans in the device-against-CPU checks
    variant_scans: int = 5000  # predictor scans of each variant (memory format, cudnn.benchmark)
    measured_epochs: int = 2   # training epochs timed after the first
    resident_batches: int = 8  # cache batches kept on the device for the loader-free diagnosis


QUICK = Sizes(classifier_size=64, classifier_batch=4, segmenter_size=64, segmenter_batch=2, scan_size=64,
              predictor_batch=8, scans=24, phantoms=8, seconds=0.3, warmup=1, probe=1, min_iterations=2,
              train_rows=16, rows_per_file=4, loader_threads=2, loader_thread_sweep=(1, 2), check_scans=4,
              variant_scans=16, measured_epochs=1, resident_batches=2)


# ---------------------------------------------------------------------------------------------- timing
class Runner:
    """The device and the precision the ceilings use, and the time-based measurement loop."""

    def __init__(self, torch, device: str, sizes: Sizes):
        self.torch, self.sizes = torch, sizes
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.amp_dtype = None  # CPU: fp32, the reference the library's CPU paths use

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def scaler(self):
        # bf16 has fp32's exponent range: only fp16 needs loss scaling.
        return self.torch.amp.GradScaler("cuda", enabled=self.amp_dtype == self.torch.float16)

    def measure(self, step, *, batch: int, image_size: int) -> dict:
        """Run ``step`` (one batch) for warm-up, probe and timed iterations; images/s over the timed span."""
        sizes = self.sizes
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)
        for _ in range(sizes.warmup):
            step()
        self.sync()
        started = time.perf_counter()
        for _ in range(sizes.probe):
            step()
        self.sync()
        per_step = (time.perf_counter() - started) / sizes.probe
        iterations = max(sizes.min_iterations, math.ceil(sizes.seconds / max(per_step, 1e-6)))
        started = time.perf_counter()
        for _ in range(iterations):
            step()
        self.sync()
        seconds = time.perf_counter() - started
        result = {"images_per_sec": batch * iterations / seconds, "batch": batch, "image_size": image_size,
                  "seconds": seconds, "iterations": iterations, "warmup_iterations": sizes.warmup + sizes.probe}
        if self.cuda:
            result["peak_memory_gib"] = self.torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        return result

    def release(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


class DtypeProbe:
    """Records the dtype of a module's output the first time it runs (what autocast really chose)."""

    def __init__(self, module):
        self.dtype = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.dtype is None:
            self.dtype = str(output.dtype).replace("torch.", "")

    def close(self) -> str | None:
        self._handle.remove()
        return self.dtype


# ---------------------------------------------------------------------------------------------- ceilings
def ceiling(runner: Runner, model, *, kind: str, batch: int, image_size: int) -> tuple[dict, dict]:
    """(forward, train step) of ``model`` ("classify": 2-class logits, "segment": 1-channel logits)."""
    torch = runner.torch
    F = torch.nn.functional
    fmt = torch.channels_last
    model = model.to(runner.device, memory_format=fmt)
    images = torch.randn(batch, 3, image_size, image_size, device=runner.device).contiguous(memory_format=fmt)
    if kind == "classify":
        target = torch.randint(0, 2, (batch,), device=runner.device)
        loss_of = F.cross_entropy
    else:
        target = (torch.rand(batch, 1, image_size, image_size, device=runner.device) > 0.9).float()
        loss_of = F.binary_cross_entropy_with_logits

    def forward():
        with torch.inference_mode(), runner.autocast():
            model(images)

    model.eval()
    forward_result = runner.measure(forward, batch=batch, image_size=image_size)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = runner.scaler()

    def train():
        with runner.autocast():
            loss = loss_of(model(images).float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    model.train()
    train_result = runner.measure(train, batch=batch, image_size=image_size)
    return forward_result, train_result


def run_ceilings(runner: Runner, base_filters: int, models=MODELS) -> dict:
    from classeg.models import build_classifier, build_resunet

    sizes, results = runner.sizes, {}
    runner.torch.manual_seed(0)
    for arch in [name for name in ("resnet18", "resnet50") if name in models]:
        log.info("ceiling: %s forward and train step, batch %d at %d px", arch, sizes.classifier_batch,
                 sizes.classifier_size)
        model = build_classifier(arch=arch, num_classes=2, head="linear", input_size=sizes.classifier_size)
        results[f"{arch}_forward"], results[f"{arch}_train_step"] = ceiling(
            runner, model, kind="classify", batch=sizes.classifier_batch, image_size=sizes.classifier_size)
        del model
        runner.release()
    if "resunet" not in models:
        return results
    log.info("ceiling: resunet (base_filters %d) forward and train step, batch %d at %d px", base_filters,
             sizes.segmenter_batch, sizes.segmenter_size)
    model = build_resunet(in_channels=3, base_filters=base_filters)
    results["resunet_forward"], results["resunet_train_step"] = ceiling(
        runner, model, kind="segment", batch=sizes.segmenter_batch, image_size=sizes.segmenter_size)
    results["resunet_forward"]["base_filters"] = results["resunet_train_step"]["base_filters"] = base_filters
    del model
    runner.release()
    return results


# ---------------------------------------------------------------------------------------------- synthetic scans
def phantom_pool(count: int, size: int, seed: int = 0, *, with_masks: bool = False) -> list:
    """``count`` distinct uint8 (size, size) FLAIR phantom slices, every other one with a lesion (with
    ``with_masks``: (scan, lesion mask bool) pairs)."""
    import numpy as np

    from classeg.synthetic.phantom import LESION_KINDS, phantom_slice, random_anatomy, random_lesion

    rng = np.random.default_rng(seed)
    scans = []
    for index in range(count):
        anatomy = random_anatomy(rng)
        lesion = random_lesion(rng, kind=LESION_KINDS[index // 2 % len(LESION_KINDS)]) if index % 2 else None
        image, mask = phantom_slice(rng, size=size, anatomy=anatomy, slice_pos=float(rng.uniform(0.3, 0.7)),
                                    lesion=lesion)
        scan = np.rint(image[..., 0] * 255).astype(np.uint8)
        scans.append((scan, mask) if with_masks else scan)
    return scans


# ---------------------------------------------------------------------------------------------- predictor
def _save_untrained_models(folder: Path, sizes: Sizes, base_filters: int) -> tuple[str, str]:
    """An untrained ResNet18 classifier and ResUNet saved as real artifacts (as tests/scoring_models.py
    saves its trained ones): throughput does not depend on what the weights are."""
    import torch

    from classeg.artifact import save_artifact
    from classeg.models import build_classifier, build_resunet

    torch.manual_seed(0)
    classifier = build_classifier(arch="resnet18", num_classes=2, head="linear", input_size=sizes.classifier_size)
    segmenter = build_resunet(in_channels=3, base_filters=base_filters)
    classifier_uri, segmenter_uri = str(folder / "classifier"), str(folder / "segmenter")
    save_artifact(classifier_uri, model=classifier, task="classify", class_names=["no_tumor", "tumor"],
                  input_spec={"size": sizes.classifier_size, "channels": classifier.in_channels,
                              "mean": list(classifier.mean), "std": list(classifier.std), "zscore": False})
    save_artifact(segmenter_uri, model=segmenter, task="segment", class_names=["background", "tumor"],
                  input_spec={"size": sizes.segmenter_size, "channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3,
                              "zscore": True})
    return classifier_uri, segmenter_uri


def run_predictor(runner: Runner, pool: list, *, scans: int, base_filters: int, channels_last: bool = True) -> dict:
    """``ClassSegPredictor`` over ``scans`` scans (``channels_last``: the predictor's memory format option,
    on by default)."""
    import numpy as np

    from classeg.scoring.predictor import ClassSegPredictor

    sizes, batch = runner.sizes, runner.sizes.predictor_batch
    device = str(runner.device)
    options = dict(device=device, channels_last=channels_last)
    with tempfile.TemporaryDirectory(prefix="classeg-gpu-bench-") as folder:
        classifier_uri, segmenter_uri = _save_untrained_models(Path(folder), sizes, base_filters)
        # Calibration (and the classifier's warm-up): the pool's tumour probabilities, nothing segmented.
        calibrate = ClassSegPredictor.load(classifier_uri, segmenter_uri, tumor_threshold=1.0, **options)
        probabilities = [p.tumor_probability for start in range(0, len(pool), batch)
                         for p in calibrate.predict(pool[start:start + batch])]
        threshold = float(np.median(probabilities))
        del calibrate
        predictor = ClassSegPredictor.load(classifier_uri, segmenter_uri, tumor_threshold=threshold, **options)
    log.info("predictor: %d scans of %d px in batches of %d, tumor_threshold %.6g (median of %d), %s", scans,
             sizes.scan_size, batch, threshold, len(pool), "channels_last" if channels_last else "contiguous")
    predictor.predict(pool[:batch])  # warm-up of both models
    probe = DtypeProbe(predictor.classifier.model.backbone.conv1)
    runner.sync()
    done = segmented = 0
    prepare_seconds = predict_seconds = 0.0
    started = time.perf_counter()
    while done < scans and time.perf_counter() - started < PREDICTOR_MAX_SECONDS:
        count = min(batch, scans - done)
        batch_scans = [pool[(done + i) % len(pool)] for i in range(count)]
        tick = time.perf_counter()
        prepared = [predictor.prepare(scan) for scan in batch_scans]
        tock = time.perf_counter()
        predictions = predictor.predict(prepared)  # prepare gives canonical uint8 scans; inputs are made on the device
        predict_seconds += time.perf_counter() - tock
        prepare_seconds += tock - tick
        segmented += sum(p.mask is not None for p in predictions)
        done += count
    runner.sync()  # predict returns numpy results, so this only closes the span
    seconds = time.perf_counter() - started
    last = [predictor.prepare(scan) for scan in pool[:batch]]
    syncs = host_syncs(runner, lambda: predictor.predict(last), steps=2)
    return {"images_per_sec": done / seconds, "batch": batch, "image_size": sizes.scan_size,
            "classifier_input_size": sizes.classifier_size, "segmenter_input_size": sizes.segmenter_size,
            "seconds": seconds, "scans": done, "scans_requested": scans, "stopped_early": done < scans,
            "distinct_scans": len(pool), "segmented": segmented, "segmented_fraction": segmented / max(done, 1),
            "tumor_threshold": threshold, "prepare_seconds": prepare_seconds, "predict_seconds": predict_seconds,
            "prepare_threads": 1, "autocast_dtype": probe.close(), "channels_last": channels_last,
            "cudnn_benchmark": bool(runner.torch.backends.cudnn.benchmark), "host_syncs": syncs}


# ---------------------------------------------------------------------------------------------- checks
def _relative_error(value, reference) -> float:
    return float((value.double() - reference.double()).norm() / reference.double().norm().clamp_min(1e-30))


def run_checks(runner: Runner, pairs: list, sizes: Sizes, base_filters: int) -> dict:
    """The device's answers against the CPU's on the same inputs, before any timing counts: the batched
    training augmentation (`classeg.training.augment.model_inputs`, one segmentation batch with masks, fp32
    on both) and the predictor (fp32 on the CPU, the library's autocast on the device; tumor_threshold 0 so
    every scan is segmented). Relative errors are ||device - cpu|| / ||cpu||; masks are compared pixel by pixel
    (nearest sampling and a 0.5 threshold can flip a pixel that sits on the boundary within rounding)."""
    import numpy as np
    import torch

    from classeg.scoring.predictor import ClassSegPredictor
    from classeg.training.augment import model_inputs
    from classeg.training.cache import cache_pixels
    from classeg.transforms import IMAGENET_MEAN, IMAGENET_STD

    cpu, size = torch.device("cpu"), sizes.classifier_size
    count = min(len(pairs), sizes.check_scans)
    cached = [cache_pixels(scan, mask, size=size, channels=3) for scan, mask in pairs[:count]]
    batch = {"image": torch.from_numpy(np.stack([image for image, _ in cached])),
             "mask": torch.from_numpy(np.stack([mask for _, mask in cached])),
             "label": torch.arange(count) % 2, "scan_key": torch.arange(count, dtype=torch.int64) * 7919 + 11}
    spec = {"size": size, "channels": 3, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "zscore": False}
    outputs = {}
    for device in (cpu, runner.device):
        images, masks = model_inputs(batch, task="segment", input_spec=spec, device=device, augment=True, seed=3,
                                     epoch=2)
        outputs[device.type] = (images.float().cpu(), masks.float().cpu())
    (cpu_images, cpu_masks), (dev_images, dev_masks) = outputs["cpu"], outputs[runner.device.type]
    augment = {"images": count, "image_size": size,
               "image_relative_error": _relative_error(dev_images, cpu_images),
               "image_max_abs_error": float((dev_images - cpu_images).abs().max()),
               "mask_pixels_differing_fraction": float((dev_masks != cpu_masks).float().mean()),
               "mask_foreground_fraction": float(cpu_masks.mean()), "finite": bool(torch.isfinite(dev_images).all())}

    scans = [scan for scan, _ in pairs[:count]]
    with tempfile.TemporaryDirectory(prefix="classeg-gpu-bench-check-") as folder:
        classifier_uri, segmenter_uri = _save_untrained_models(Path(folder), sizes, base_filters)
        predictions = {}
        for device in ("cpu", str(runner.device)):
            predictor = ClassSegPredictor.load(classifier_uri, segmenter_uri, device=device, tumor_threshold=0.0)
            predictions[device] = predictor.predict(scans)
            del predictor
    reference, answer = predictions["cpu"], predictions[str(runner.device)]
    ref_p = torch.from_numpy(np.stack([p.probabilities for p in reference]))
    dev_p = torch.from_numpy(np.stack([p.probabilities for p in answer]))
    ref_m = np.stack([p.mask for p in reference])
    dev_m = np.stack([p.mask for p in answer])
    both, either = (ref_m & dev_m).sum(), (ref_m | dev_m).sum()
    predictor = {"scans": count, "scan_size": int(scans[0].shape[0]),
                 "probability_relative_error": _relative_error(dev_p, ref_p),
                 "probability_max_abs_error": float((dev_p - ref_p).abs().max()),
                 "labels_agree_fraction": float(np.mean([a.label == r.label for a, r in zip(answer, reference)])),
                 "mask_pixels_differing_fraction": float((ref_m != dev_m).mean()),
                 "mask_iou": float(both / either) if either else 1.0,
                 "mask_foreground_fraction": float(ref_m.mean())}
    return {"augment": augment, "predictor": predictor}


# ---------------------------------------------------------------------------------------------- training cache
def write_train_cache(folder: Path, pool: list, sizes: Sizes) -> tuple:
    """A training cache of ``sizes.train_rows`` rows at the classifier's input size, written here with pyarrow
    as `classeg.training.data.prepare_split` has Spark write it (`classeg.training.cache`): the pool's scans
    cycled under distinct ids, labels alternating, ``sizes.rows_per_file`` rows per file. Returns (the split's
    `Shards` for one rank, the input spec)."""
    import numpy as np
    import pyarrow.parquet as pq

    from classeg.training.cache import cache_pixels, cache_table
    from classeg.training.data import Shards
    from classeg.transforms import IMAGENET_MEAN, IMAGENET_STD

    size, rows = sizes.classifier_size, sizes.train_rows
    spec = {"size": size, "channels": 3, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "zscore": False}
    pixels = np.stack([cache_pixels(scan, None, size=size, channels=3)[0] for scan in pool])
    urls = []
    for start in range(0, rows, sizes.rows_per_file):
        index = np.arange(start, min(rows, start + sizes.rows_per_file))
        table = cache_table([format(0xB000000000000000 + int(i), "016x") for i in index],
                            pixels[index % len(pool)], labels=index % 2)
        path = folder / f"part-{len(urls):05d}.parquet"
        pq.write_table(table, path)
        urls.append(path.as_uri())
    return Shards(split="train", file_urls=tuple(urls), rows=rows, row_groups=len(urls), shard_rows=(rows,)), spec


def run_loader(runner: Runner, shards, spec: dict, sizes: Sizes) -> dict:
    """The loader alone (read, collate into pinned memory on CUDA), then the same passes with the copy to the
    device and the device augmentation and normalisation (`classeg.training.augment.model_inputs`)."""
    from classeg.training.augment import model_inputs
    from classeg.training.data import open_loader

    options = dict(task="classify", input_spec=spec, batch_size=sizes.classifier_batch, rank=0, size=1, seed=0,
                   train=True)

    def one_pass(epoch: int, to_device: bool) -> int:
        images = 0
        with open_loader(shards, epoch=epoch, **options) as loader:
            for batch in loader:
                if to_device:
                    model_inputs(batch, task="classify", input_spec=spec, device=runner.device,
                                 channels_last=runner.cuda, augment=True, seed=0, epoch=epoch)
                images += len(batch["scan_key"])
        runner.sync()
        return images

    def timed(to_device: bool) -> dict:
        one_pass(0, to_device)  # warm-up
        started = time.perf_counter()
        images = one_pass(1, to_device)
        seconds = time.perf_counter() - started
        return {"images_per_sec": images / seconds, "seconds": seconds, "images": images}

    result = {"rows": shards.rows, "batch": sizes.classifier_batch, "image_size": sizes.classifier_size,
              "pinned": runner.cuda}
    # The host loader at each reader-thread count; the fastest count is what the device passes and the
    # training epoch use.
    sweep = {}
    for threads in sizes.loader_thread_sweep:
        options["threads"] = threads
        sweep[str(threads)] = timed(False)
    best = max(sweep, key=lambda threads: sweep[threads]["images_per_sec"])
    options["threads"] = int(best)
    result.update(threads=int(best), host_by_threads=sweep, host=sweep[best], to_device_augmented=timed(True))
    result["images_per_sec"] = result["to_device_augmented"]["images_per_sec"]
    return result


# ---------------------------------------------------------------------------------------------- training epoch
def run_train_epoch(runner: Runner, shards, spec: dict, sizes: Sizes, *, loader_threads: int,
                    compile_model: bool = False, diagnose: bool = False, prepare_ahead: bool | None = None,
                    switch_interval: float | None = None) -> dict:
    """`classeg.training.loop.train_one_epoch` of the per-rank loop (``setup`` with ``LocalCollectives``, the
    default config's ResNet18 recipe with augmentation, the library's own device settings) over the cache:
    epoch 1 warms up (cuDNN autotuning, compilation), the next ``sizes.measured_epochs`` are measured (images
    over their seconds). ``diagnose``: then where the time goes, with the same model and optimizer
    (`_resident_steps`). ``prepare_ahead``: overrides the device settings' choice of where the model input is
    made (`classeg.training.accel.prepared_ahead`); None keeps the library's. ``switch_interval``: the
    interpreter's thread switch interval during the epochs (``sys.setswitchinterval``; restored after)."""
    import torch

    from classeg.config import load_config
    from classeg.training.collectives import LocalCollectives
    from classeg.training.loop import setup, train_one_epoch
    from classeg.training.plan import ModelSpec, Recipe, TrainPlan

    train = load_config().to_dict()["train"]
    epochs = 1 + sizes.measured_epochs
    recipe = {**train, "batch_size": sizes.classifier_batch, "epochs": epochs, "warmup_epochs": 0, "augment": True,
              "loader_threads": loader_threads, "record_shards": False, "compile": compile_model}
    model = ModelSpec.from_train_config(train, class_names=["no_tumor", "tumor"], input_spec=spec)
    with tempfile.TemporaryDirectory(prefix="classeg-gpu-bench-run-") as run_dir:
        plan = TrainPlan(model=model, recipe=Recipe.from_train_config(recipe), splits={"train": shards},
                         run_id="gpu-bench", run_uri=run_dir, output=run_dir, resume=False, s3=None, config={},
                         fingerprint={})
        ctx, state = setup(plan, LocalCollectives())
        if prepare_ahead is not None:
            ctx.settings = dataclasses.replace(ctx.settings, prepare_ahead=prepare_ahead)
        log.info("train epoch: train_one_epoch, %d steps of %d at %d px on %s (%s)", ctx.micro_steps,
                 sizes.classifier_batch, sizes.classifier_size, ctx.device, ctx.settings.describe())
        probe = DtypeProbe(ctx.model.backbone.conv1)
        default_interval = sys.getswitchinterval()
        sys.setswitchinterval(switch_interval or default_interval)
        try:
            started = time.perf_counter()
            train_one_epoch(ctx, state, 0)
            runner.sync()
            first_epoch_seconds = time.perf_counter() - started  # with cuDNN's autotuning (and compilation)
            started = time.perf_counter()
            losses, rates = zip(*(train_one_epoch(ctx, state, epoch) for epoch in range(1, epochs)))
            runner.sync()
            seconds = time.perf_counter() - started
            interval = sys.getswitchinterval()
        finally:
            sys.setswitchinterval(default_interval)
        result = {"images_per_sec": shards.rows * (epochs - 1) / seconds, "epoch_images_per_sec": list(rates),
                  "seconds": seconds, "measured_epochs": epochs - 1, "steps": ctx.micro_steps,
                  "batch": sizes.classifier_batch, "image_size": sizes.classifier_size, "rows": shards.rows,
                  "first_epoch_seconds": first_epoch_seconds, "compile": compile_model,
                  "loader_threads": loader_threads, "device": str(ctx.device), "settings": ctx.settings.describe(),
                  "prepare_ahead": ctx.settings.prepare_ahead, "switch_interval_s": interval,
                  "autocast_dtype": probe.close(), "loss_finite": all(map(math.isfinite, losses)),
                  "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}
        if diagnose:
            result["without_loader"] = _resident_steps(runner, ctx, shards, spec, sizes, loader_threads)
    return result


def run_dispatch(runner: Runner, shards, spec: dict, sizes: Sizes, *, threads: int, ceilings: dict) -> dict:
    """`benchmarks/dispatch.py` over the training cache, its dispatching stand-in launching on the device: the
    loader's threads against the same loader in a child process, beside a thread that only dispatches. The
    loader is taken at the rate the ResNet18 train step consumes batches (its ceiling) where that was
    measured, else at half its own rate."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:  # run with runpy, as the tests do, the script's folder is not on the path
        sys.path.insert(0, here)
    import dispatch
    step = ceilings.get("resnet18_train_step", {}).get("images_per_sec")
    return dispatch.measure(shards.file_urls, rows=shards.rows, input_spec=spec, batch_size=sizes.classifier_batch,
                            threads=threads, device=runner.device, seconds=min(sizes.seconds, DISPATCH_SECONDS),
                            rounds=DISPATCH_ROUNDS, rate=step / sizes.classifier_batch if step else None)


def _resident_steps(runner: Runner, ctx, shards, spec: dict, sizes: Sizes, threads: int) -> dict:
    """The loop's work with the loader taken away: a few cache batches collated once and kept on the device
    as uint8, then (a) ``ctx.inputs`` (the copy-free device augmentation and normalisation) plus the library's
    ``train_step`` per batch, and (b) ``train_step`` alone on inputs made once. Against the train-step ceiling
    these split the gap into loader, augmentation and the step's own overhead."""
    from classeg.training.data import open_loader
    from classeg.training.loop import train_step

    batches = []
    with open_loader(shards, task="classify", input_spec=spec, batch_size=sizes.classifier_batch, rank=0, size=1,
                     seed=0, epoch=0, train=True, threads=threads) as loader:
        for batch in loader:
            # scan_key stays on the host: the augmentation draws come from it there
            batches.append({k: v if k == "scan_key" else v.to(runner.device) for k, v in batch.items()})
            if len(batches) == sizes.resident_batches:
                break
    prepared = [ctx.inputs(batch, split="train", epoch=1) for batch in batches]

    def step(images, target):
        return train_step(ctx.train_model, images, target, loss_fn=ctx.loss_fn, optimizer=ctx.optimizer,
                          scaler=ctx.scaler, coll=ctx.coll, use_amp=ctx.use_amp, accum_steps=1, last_micro=True,
                          amp_dtype=ctx.settings.amp_dtype)

    cycle = {"index": 0}

    def with_augmentation():
        batch = batches[cycle["index"] % len(batches)]
        cycle["index"] += 1
        step(*ctx.inputs(batch, split="train", epoch=1))

    def step_only():
        images, target = prepared[cycle["index"] % len(prepared)]
        cycle["index"] += 1
        step(images, target)

    out = {"batches": len(batches)}
    for name, function in (("augment_and_step", with_augmentation), ("step_only", step_only)):
        out[name] = runner.measure(function, batch=sizes.classifier_batch, image_size=sizes.classifier_size)
    out["host_syncs"] = host_syncs(runner, with_augmentation, steps=len(batches))
    return out


def host_syncs(runner: Runner, function, *, steps: int) -> dict | None:
    """How often ``steps`` calls of ``function`` made the host wait for the device (CUDA's sync debug mode
    warns at each such call: a copy from pageable memory, ``.item()``, a data-dependent shape): each one
    drains the queue of kernels the host had run ahead with. The places (file:line) of the first few.
    None on the CPU."""
    if not runner.cuda:
        return None
    import warnings

    torch = runner.torch
    runner.sync()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                function()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    runner.sync()
    syncs = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    return {"steps": steps, "per_step": len(syncs) / steps, "places": sorted(set(syncs))[:8]}


# ---------------------------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    def positive_int(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
        return value

    def positive_float(text: str) -> float:
        value = float(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
        return value

    def subset(choices: tuple[str, ...]):
        def parse(text: str) -> tuple[str, ...]:
            names = tuple(name.strip() for name in text.split(",") if name.strip())
            if not names or any(name not in choices for name in names):
                raise argparse.ArgumentTypeError(f"must be a comma-separated subset of {choices}, got {text!r}")
            return names
        return parse

    parts, models = subset(PARTS), subset(MODELS)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: CUDA if present, else print skipped; cpu: run on the CPU anyway")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and iterations, one torch thread (a CPU smoke test)")
    parser.add_argument("--scans", type=positive_int, default=None,
                        help=f"predictor scans (default {Sizes.scans}, --quick {QUICK.scans})")
    parser.add_argument("--seconds", type=positive_float, default=None,
                        help=f"timed span per measurement (default {Sizes.seconds}, --quick {QUICK.seconds})")
    parser.add_argument("--parts", type=parts, default=PARTS,
                        help=f"comma-separated subset of {','.join(PARTS)} (default: all; ratios need ceilings)")
    parser.add_argument("--models", type=models, default=MODELS,
                        help=f"the ceilings measured: a comma-separated subset of {','.join(MODELS)} (default: all)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    return parser


def _save(result: dict, out: str | None) -> None:
    """Write what has been measured so far to ``out`` (after each part, so a run stopped at a time limit
    still leaves its finished parts)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


def _emit(result: dict, out: str | None) -> None:
    _save(result, out)
    print(json.dumps(result, indent=2), flush=True)


def _part(name: str, function, *args, **kwargs) -> dict:
    """``function``'s result, or {"error": ...} when a module it needs is missing on this machine."""
    try:
        return function(*args, **kwargs)
    except ImportError as err:
        log.warning("%s not measured: %s", name, err)
        return {"error": f"{type(err).__name__}: {err}"}


def _training_parts(runner: Runner, pool: list, sizes: Sizes, parts, started: float, results: dict,
                    save) -> None:
    """The loader and training-epoch parts over one training cache written in a temporary folder, into
    ``results`` (``save()`` after each)."""
    with tempfile.TemporaryDirectory(prefix="classeg-gpu-bench-cache-") as folder:
        log.info("training cache: %d rows at %d px", sizes.train_rows, sizes.classifier_size)
        written = _part("training cache", lambda: write_train_cache(Path(folder), pool, sizes))
        if isinstance(written, dict):  # an import failed: every part reports it
            results.update({part: written for part in ("loader", "dispatch", "train_epoch", "train_compiled")
                            if part in parts})
            if "train_epoch" in parts:
                results["train_epoch_in_line"] = results["train_epoch_switch_interval"] = written
            return
        shards, spec = written
        threads = sizes.loader_threads
        if "loader" in parts:
            results["loader"] = _part("loader", run_loader, runner, shards, spec, sizes)
            threads = results["loader"].get("threads", threads)
            runner.release()
            save()
        if "dispatch" in parts:
            results["dispatch"] = _part("dispatch", run_dispatch, runner, shards, spec, sizes, threads=threads,
                                        ceilings=results.get("ceilings", {}))
            save()
        if "train_epoch" in parts:
            results["train_epoch"] = _part("train_epoch", run_train_epoch, runner, shards, spec, sizes,
                                           loader_threads=threads, diagnose=True)
            runner.release()
            save()
            # The same epoch with the model input made on the training stream (only the copy on the side
            # stream): what preparing it ahead on the side stream gains.
            results["train_epoch_in_line"] = (
                _part("train_epoch", run_train_epoch, runner, shards, spec, sizes, loader_threads=threads,
                      prepare_ahead=False) if runner.cuda
                else {"skipped": "the CPU makes the model input in line anyway"})
            runner.release()
            save()
            # ... and with a tenth of the thread switch interval: if the loader's threads holding the GIL keep
            # the thread that dispatches the step waiting, this epoch is faster.
            results["train_epoch_switch_interval"] = _part("train_epoch", run_train_epoch, runner, shards, spec,
                                                           sizes, loader_threads=threads,
                                                           switch_interval=PROBE_SWITCH_INTERVAL)
            runner.release()
            save()
        if "train_compiled" in parts:
            results["train_compiled"] = _compiled_part(runner, shards, spec, sizes, threads, started)
            runner.release()
            save()


def _compiled_part(runner: Runner, shards, spec: dict, sizes: Sizes, threads: int, started: float) -> dict:
    """The training epoch again with ``train.compile`` (CUDA only), unless the run is already late; any error
    (an inductor or Triton failure on that machine) is reported and the run goes on."""
    if not runner.cuda:
        return {"skipped": "train.compile applies to CUDA devices only"}
    elapsed = time.perf_counter() - started
    if elapsed > COMPILE_START_BY:
        return {"skipped": f"{elapsed:.0f} s into the run (compiling starts only before {COMPILE_START_BY:.0f} s)"}
    try:
        return run_train_epoch(runner, shards, spec, sizes, loader_threads=threads, compile_model=True)
    except Exception as err:  # noqa: BLE001 - reported in the JSON, the other parts stand
        log.warning("train_compiled failed: %s", err)
        return {"error": f"{type(err).__name__}: {str(err)[:2000]}"}


def _ratio(part: dict, ceiling_part: dict) -> float | None:
    if "images_per_sec" not in part or "images_per_sec" not in ceiling_part:
        return None
    return part["images_per_sec"] / ceiling_part["images_per_sec"]


def _predictor_ceiling(result: dict, ceilings: dict, name: str = "predictor") -> dict:
    """The model-only rate of the predictor's work: one ResNet18 forward per scan and one ResUNet forward per
    segmented scan, each at its forward ceiling (scans/s = 1 / (1/classify + fraction/segment))."""
    part = result.get(name, {})
    if "segmented_fraction" not in part or not {"resnet18_forward", "resunet_forward"} <= set(ceilings):
        return {}
    seconds = (1 / ceilings["resnet18_forward"]["images_per_sec"]
               + part["segmented_fraction"] / ceilings["resunet_forward"]["images_per_sec"])
    return {"images_per_sec": 1 / seconds}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import numpy as np
    import torch

    started = time.perf_counter()
    result = {"benchmark": "gpu", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "quick": args.quick, "requested_device": args.device, "torch": torch.__version__,
              "numpy": np.__version__, "python": platform.python_version(),
              "cuda_available": torch.cuda.is_available()}
    if args.device != "cpu" and not torch.cuda.is_available():
        result["skipped"] = "no CUDA device"
        _emit(result, args.out)
        return 0

    sizes = QUICK if args.quick else Sizes()
    scans = args.scans or sizes.scans
    if args.seconds:
        sizes = dataclasses.replace(sizes, seconds=args.seconds)
    if args.quick:
        # A smoke test on shared cores: torch's spinning worker threads, competing with another process's,
        # slow every step many times over; one thread does not.
        torch.set_num_threads(1)
    device = "cpu" if args.device == "cpu" else "cuda"
    runner = Runner(torch, device, sizes)
    if runner.cuda:
        props = torch.cuda.get_device_properties(runner.device)
        result.update({"device": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gib": props.total_memory / 2 ** 30, "bf16": torch.cuda.is_bf16_supported()})
    else:
        result.update({"device": "cpu", "capability": None, "bf16": None})
    result.update({"device_type": runner.device.type, "cpu_count": os.cpu_count(),
                   "torch_threads": torch.get_num_threads(),
                   "ceiling_settings": {"autocast_dtype": str(runner.amp_dtype).replace("torch.", "")
                                        if runner.amp_dtype else None,
                                        "grad_scaler": runner.amp_dtype == torch.float16,
                                        "channels_last": True, "cudnn_benchmark": runner.cuda}})

    from classeg.config import load_config

    base_filters = load_config().train.base_filters
    result["parts"] = list(args.parts)
    ceilings = result["ceilings"] = {}
    pairs = pool = []
    if set(args.parts) - {"ceilings"}:
        log.info("synthetic scans: %d distinct phantoms of %d px", sizes.phantoms, sizes.scan_size)
        pairs = phantom_pool(sizes.phantoms, sizes.scan_size, with_masks=True)
        pool = [scan for scan, _ in pairs]
    # The library paths run with cudnn as they leave it: the ceilings' flag is reset here, and the training
    # loop's setup sets its own (classeg.training.accel).
    torch.backends.cudnn.benchmark = False
    if "checks" in args.parts:
        log.info("checks: the device's augmentation and predictions against the CPU's")
        result["checks"] = _part("checks", run_checks, runner, pairs, sizes, base_filters)
        runner.release()
        _save(result, args.out)
    if "ceilings" in args.parts:  # after the checks, which leave cudnn.benchmark as they found it
        torch.backends.cudnn.benchmark = runner.cuda
        result["ceilings"] = ceilings = run_ceilings(runner, base_filters, args.models)
        torch.backends.cudnn.benchmark = False
        _save(result, args.out)
    if "predictor" in args.parts:
        result["predictor"] = _part("predictor", run_predictor, runner, pool, scans=scans,
                                    base_filters=base_filters)
        runner.release()
        # The other memory format over fewer scans: which one the predictor should default to on this device.
        result["predictor_contiguous"] = _part("predictor", run_predictor, runner, pool,
                                               scans=min(scans, sizes.variant_scans), base_filters=base_filters,
                                               channels_last=False)
        runner.release()
        # ... and with cuDNN autotuning (the library leaves it off for scoring: the segmenter's batch, the
        # tumour scans of a batch, changes size from batch to batch, and each new size is tuned again).
        torch.backends.cudnn.benchmark = runner.cuda
        result["predictor_cudnn_benchmark"] = _part("predictor", run_predictor, runner, pool,
                                                    scans=min(scans, sizes.variant_scans), base_filters=base_filters)
        torch.backends.cudnn.benchmark = False
        runner.release()
        _save(result, args.out)
    if set(args.parts) & {"loader", "dispatch", "train_epoch", "train_compiled"}:
        _training_parts(runner, pool, sizes, args.parts, started, result, lambda: _save(result, args.out))
    result["ratios"] = {
        "predictor_to_resnet18_forward": _ratio(result.get("predictor", {}), ceilings.get("resnet18_forward", {})),
        "train_epoch_to_resnet18_train_step": _ratio(result.get("train_epoch", {}),
                                                     ceilings.get("resnet18_train_step", {})),
        # above 1: the loader (to the device, augmented) outruns the model, which then sets the pace
        "loader_to_resnet18_train_step": _ratio(result.get("loader", {}), ceilings.get("resnet18_train_step", {})),
        "train_epoch_in_line_to_resnet18_train_step": _ratio(result.get("train_epoch_in_line", {}),
                                                             ceilings.get("resnet18_train_step", {})),
        "train_epoch_switch_interval_to_resnet18_train_step": _ratio(result.get("train_epoch_switch_interval", {}),
                                                                     ceilings.get("resnet18_train_step", {})),
        "train_compiled_to_resnet18_train_step": _ratio(result.get("train_compiled", {}),
                                                        ceilings.get("resnet18_train_step", {})),
        # the predictor's own model work: every scan classified, its segmented fraction segmented
        "predictor_to_model_forward": _ratio(result.get("predictor", {}), _predictor_ceiling(result, ceilings)),
        "predictor_contiguous_to_model_forward": _ratio(result.get("predictor_contiguous", {}),
                                                        _predictor_ceiling(result, ceilings, "predictor_contiguous")),
        "predictor_cudnn_benchmark_to_model_forward": _ratio(
            result.get("predictor_cudnn_benchmark", {}),
            _predictor_ceiling(result, ceilings, "predictor_cudnn_benchmark")),
    }
    diagnosis = result.get("train_epoch", {}).get("without_loader", {})
    for name in ("augment_and_step", "step_only"):
        result["ratios"][f"train_{name}_to_resnet18_train_step"] = _ratio(
            diagnosis.get(name, {}), ceilings.get("resnet18_train_step", {}))
    result["goals"] = GOALS
    result["seconds_total"] = time.perf_counter() - started
    _emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
