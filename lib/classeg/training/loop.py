"""The per-rank training function: one function, both engines (`train_rank(plan, engine)`).

Every training process runs `train_rank`; the engine (Horovod or torch.distributed) only changes how the
process was launched and the `Collectives` it talks through. Everything the function needs arrives in
``plan``, a frozen `classeg.training.plan.TrainPlan` built on the driver by `classeg.training.job`: the model
spec, the recipe (config values), each split's shards, where the run lives, whether to resume. No
module-level state: imports of torch and friends happen inside.

The loop reads like torchvision's references: `setup` builds this rank's live objects (`RankContext`:
model, optimizer, schedule, loss) and its `TrainState` (fresh, or restored from ``last.pt``); each epoch is
`train_one_epoch`, `validate` and `save_checkpoint`; `finish` tests the best weights and has rank 0 write
the outputs (`classeg.training.outputs`).

Per epoch: seed every generator from (seed, epoch, rank); read exactly ``micro_steps`` batches of this
rank's shard (the same count on every rank); optimizer steps every ``grad_accum_steps`` batches with the
learning rate from `LRSchedule`; average BatchNorm statistics over ranks; validate every rank's shard and
merge the meters' state vectors with one allreduce; rank 0 logs, checkpoints ``last.pt`` (and ``best.pt``
when the monitored metric improved). With ``train.checkpoint_every_steps`` N > 0, ``last.pt`` is also written
every N optimizer steps within an epoch; a run resumed from such a checkpoint reads that epoch's batches from the
start, trains only those after it, and ends with the weights of an uninterrupted run (on CPU). At the end the
best weights are tested on the test split the same way, a classifier's validation scores are gathered for its
operating point, and rank 0 writes the model artifact, ``metrics.json``, figures and ``result.json``.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from classeg.training import accel, checkpoints
from classeg.training.accel import DeviceSettings
from classeg.training.checkpoints import TrainState
from classeg.training.collectives import Collectives, for_engine
from classeg.training.optim import LRSchedule
from classeg.training.plan import ModelSpec, TrainPlan

log = logging.getLogger("classeg.training")

#: Segmentation overlays kept for the gallery figure.
GALLERY_SIZE = 8


# ---------------------------------------------------------------------------------------------- small pieces
def seed_everything(seed: int, *, rank: int, epoch: int) -> None:
    """Seed torch, numpy and python from (seed, epoch, rank): data order and dropout of an epoch depend on
    nothing else, which is what makes a resumed run match an uninterrupted one."""
    import torch

    entropy = np.random.SeedSequence([seed, epoch + 1, rank]).generate_state(2)
    torch.manual_seed(int(entropy[0]))
    np.random.seed(int(entropy[1]))
    random.seed(int(entropy[0]) ^ int(entropy[1]))


def monitor_spec(task: str, monitor: str) -> tuple[str, bool]:
    """(validation metric name, higher is better). ``auto``: balanced_accuracy (classify: accuracy rewards
    predicting the majority class; roc_auc saturates early and is undefined on a one-class split) or
    dice_tumor (segment)."""
    if monitor == "auto":
        monitor = "balanced_accuracy" if task == "classify" else "dice_tumor"
    return monitor, monitor != "loss"


def build_model(spec: ModelSpec, *, load_weights: bool):
    """The task's model from ``spec``, with the requested initial weights when ``load_weights`` (rank 0;
    the other ranks receive rank 0's weights through the engine's broadcast)."""
    from classeg.models import build_classifier, build_resunet, load_classifier_state, read_state_dict

    weights, endpoint, input_spec = spec.weights, spec.endpoint_url, spec.input_spec
    kind = weights["kind"] if load_weights else "none"
    if spec.task == "classify":
        model = build_classifier(arch=spec.arch, num_classes=len(spec.class_names), head=spec.head,
                                 strategy=spec.strategy, weights=weights["uri"] if kind == "backbone" else None,
                                 input_size=input_spec["size"], in_channels=input_spec["channels"],
                                 mean=input_spec["mean"], std=input_spec["std"], endpoint_url=endpoint,
                                 lesion_class=spec.lesion_class)
        if kind == "full":
            load_classifier_state(model, read_state_dict(weights["uri"], endpoint_url=endpoint))
        model.emit_lesion_map = spec.mask_supervised
        return model
    return build_resunet(in_channels=input_spec["channels"], base_filters=spec.base_filters,
                         weights=weights["uri"] if kind in ("full", "backbone") else None, endpoint_url=endpoint)


def build_loss_for(task: str, *, num_classes: int, loss: str = "focal_tversky", label_smoothing: float = 0.0,
                   class_weights=None):
    """Cross entropy with ``class_weights`` and ``label_smoothing`` (classify) or the segmentation ``loss``
    on logits (segment; focal Tversky unless said otherwise, as for artifacts that recorded no loss)."""
    from classeg import losses

    if task == "classify":
        return losses.cross_entropy_loss(class_weights=class_weights, label_smoothing=float(label_smoothing),
                                         num_classes=num_classes)
    return losses.build_loss(loss, from_logits=True)


def build_loss(spec: ModelSpec, device):
    """The training loss of ``spec``'s task, on ``device`` (with the lesion map's mask loss when
    ``spec.mask_supervised``)."""
    from classeg import losses

    loss = build_loss_for(spec.task, num_classes=len(spec.class_names), loss=spec.loss,
                          label_smoothing=spec.label_smoothing, class_weights=spec.class_weights)
    if spec.mask_supervised:
        loss = losses.MaskSupervisedLoss(loss, weight=spec.mask_loss_weight)
    return loss.to(device)


def _batch_to_device(batch: dict, task: str, device, channels_last: bool, *, with_mask: bool = False):
    """(images, target): labels (classify), masks (segment), or (labels, masks) for a mask-supervised
    classifier's training step (``with_mask``)."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
    if task == "classify" and with_mask:
        return images, (batch["label"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True))
    target = batch["label"] if task == "classify" else batch["mask"]
    return images, target.to(device, non_blocking=True)


def train_step(train_model, images, target, *, loss_fn, optimizer, scaler, coll: Collectives, use_amp: bool,
               accum_steps: int, last_micro: bool, amp_dtype=None) -> float:
    """One micro-batch: forward, backward (loss / accum_steps, gradients synchronised only on the group's last
    micro-batch), and the optimizer step on the last one. ``use_amp``: CUDA autocast to ``amp_dtype``
    (default float16; `classeg.training.accel` picks bfloat16 where supported). Returns the micro-batch's mean
    loss as a detached 0-dim tensor on the device: reading it (``float``) waits for the device, so the loop
    reads it only when it reports."""
    import torch

    sync = contextlib.nullcontext() if last_micro else coll.no_sync(train_model)
    with sync, _batch_norm_for(train_model, images.shape[0]):
        with torch.autocast(device_type="cuda", dtype=amp_dtype or torch.float16, enabled=use_amp):
            output = train_model(images)
            loss = loss_fn(tuple(o.float() for o in output) if isinstance(output, tuple) else output.float(), target)
        scaler.scale(loss / accum_steps).backward()
    if last_micro:
        coll.optimizer_step(optimizer, scaler)
        optimizer.zero_grad()
    return loss.detach()


@contextlib.contextmanager
def _batch_norm_for(model, rows: int):
    """A batch of one row has no batch statistics (BatchNorm raises where a layer's output is 1x1, as in
    ResNet's last stage on small images). The last batch of a rank's shard can be one row, and every rank
    must take the same steps, so that batch trains with BatchNorm on its running statistics instead."""
    import torch

    if rows != 1:  # every step but such a last one: no walk over the modules
        yield
        return
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    if not layers:
        yield
        return
    for layer in layers:
        layer.eval()
    try:
        yield
    finally:
        for layer in layers:
            layer.train()


def make_meter(task: str, num_classes: int):
    from classeg.metrics import ClassificationMeter, SegmentationMeter

    return ClassificationMeter(num_classes) if task == "classify" else SegmentationMeter()


def evaluate_batches(model, batches, *, task: str, loss_fn, device, meter, use_amp: bool = False,
                     channels_last: bool = False, keys: set | None = None, dice: list | None = None,
                     samples: list | None = None, scores: list | None = None, prepare=None, amp_dtype=None) -> None:
    """Run ``model`` (a plain module, not the DDP wrapper: evaluation needs no collectives) over ``batches``
    and update ``meter``; optionally record scan keys, per-tumour-slice Dice and a few gallery samples
    (segment), or per batch the labels (B,) and softmax probabilities (B, K) as numpy arrays (classify).
    ``prepare(batch) -> (images, target)`` on the device: default, batches of float32 model input
    (`classeg.training.evaluate`); the loop passes `classeg.training.augment.model_inputs` for cache batches."""
    import torch

    from classeg.metrics import dice_per_image

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                images, target = (prepare(batch) if prepare is not None
                                  else _batch_to_device(batch, task, device, channels_last))
                with torch.autocast(device_type="cuda", dtype=amp_dtype or torch.float16, enabled=use_amp):
                    output = model(images).float()
                loss = float(loss_fn(output, target))
                if keys is not None:
                    keys.update(int(k) for k in batch["scan_key"])
                if task == "classify":
                    meter.update(target.cpu(), logits=output.cpu(), loss=loss)
                    if scores is not None:
                        scores.append((target.cpu().numpy(), torch.softmax(output, dim=1).cpu().numpy()))
                    continue
                probabilities = torch.sigmoid(output).cpu()
                meter.update(probabilities, target.cpu(), loss=loss)
                if dice is not None or samples is not None:
                    per_image = dice_per_image(probabilities, target.cpu())
                    tumour = target.cpu().flatten(1).amax(dim=1) > 0.5
                    if dice is not None:
                        dice.extend(float(d) for d, t in zip(per_image, tumour) if t)
                    if samples is not None:
                        for i in range(images.shape[0]):
                            if len(samples) < GALLERY_SIZE and bool(tumour[i]):
                                samples.append({"image": images[i].float().cpu().numpy(),
                                                "mask": target[i, 0].cpu().numpy(),
                                                "prediction": (probabilities[i, 0] >= 0.5).numpy().astype(np.uint8),
                                                "dice": float(per_image[i])})
    finally:
        model.train(was_training)


def _merged(coll: Collectives, meter):
    """``meter`` with its state summed over ranks (one allreduce): its metrics are then identical on every rank."""
    meter.load_state(coll.allreduce_sum(meter.state()))
    return meter


def _setup_logging(log_level: str, rank: int) -> None:
    level = getattr(logging, log_level) if rank == 0 else logging.WARNING
    root = logging.getLogger("classeg")
    if not root.handlers:  # a fresh rank process: nothing configured logging yet
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
                                               "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)


def _device(coll: Collectives):
    import torch

    if torch.cuda.is_available():
        # One process per GPU: the local rank picks the device.
        device = torch.device("cuda", coll.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------- the loop
@dataclass
class RankContext:
    """One rank's live training objects, built by `setup`. Not checkpointed: a restart rebuilds them from
    the plan and ``last.pt``."""

    plan: TrainPlan
    coll: Collectives
    device: Any
    model: Any  # the plain module: evaluation, checkpoints and the artifact use it
    train_model: Any  # what the training forward pass runs (the DDP wrapper under torch.distributed)
    optimizer: Any
    scaler: Any
    schedule: LRSchedule
    loss_fn: Any
    micro_steps: int  # micro-batches per epoch: a multiple of grad_accum_steps, equal on every rank
    monitor: str
    higher_is_better: bool
    started: float
    settings: DeviceSettings  # autocast, memory format, cudnn, compile (classeg.training.accel)
    scan_keys: dict[str, set] = field(default_factory=dict)  # record_shards: scan keys each split's pass read
    # From a last.pt written within an epoch (`setup`): where this rank's epoch resumes; used once.
    resume_within: dict | None = None

    @property
    def use_amp(self) -> bool:
        return self.settings.use_amp

    @property
    def channels_last(self) -> bool:
        return self.settings.channels_last

    def inputs(self, batch: dict, *, split: str, epoch: int = 0):
        """A cache batch as (images, target) on the device: augmented for the training split when
        ``train.augment``, normalised as the model expects (`classeg.training.augment.model_inputs`)."""
        from classeg.training.augment import model_inputs

        plan = self.plan
        return model_inputs(batch, task=plan.task, input_spec=plan.model.input_spec, device=self.device,
                            channels_last=self.channels_last, augment=split == "train" and plan.recipe.augment,
                            seed=plan.recipe.seed, epoch=epoch,
                            with_mask=split == "train" and plan.model.mask_supervised)

    @property
    def steps_per_epoch(self) -> int:
        return self.micro_steps // self.plan.recipe.grad_accum_steps


def train_rank(plan: TrainPlan, engine: str) -> dict | None:
    """Train on this rank. Returns the result dict on rank 0 and None elsewhere (the engines return one
    process's value; rank 0 also writes it as ``result.json`` in the run folder)."""
    import warnings

    import torch

    # Petastorm 0.13 on pyarrow 14 warns about every legacy-dataset call, per reader, per epoch.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?")
    warnings.filterwarnings("ignore", message=".*A value is trying to be set on a copy.*")
    torch.set_num_threads(plan.recipe.threads_per_proc)
    coll = for_engine(engine)
    _setup_logging(plan.log_level, coll.rank)
    try:
        result = run(plan, coll)
    finally:
        coll.shutdown()
    return result if coll.rank == 0 else None


def run(plan: TrainPlan, coll: Collectives) -> dict | None:
    """The training loop on one rank (see the module docstring); ``coll`` connects it to the other ranks.
    Returns rank 0's result (None on the other ranks)."""
    ctx, state = setup(plan, coll)
    recipe, rank, monitor = plan.recipe, coll.rank, ctx.monitor
    if recipe.eval_before_training and not plan.resume:
        state.initial_val = validate(ctx, "val", epoch=0).compute()
        if rank == 0:
            log.info("before training: val loss %.4f, %s %.4f", state.initial_val["loss"], monitor,
                     state.initial_val.get(monitor, math.nan))
    if rank == 0:
        log.info("training %s on %d process(es) (%s, %s: %s%s): %d epochs x %d steps of %d images per process, "
                 "lr %.3g (x%d processes), start at epoch %d", plan.task, coll.size, coll.name, ctx.device,
                 ctx.settings.describe(), ", fp16 gradient allreduce" if recipe.grad_compression == "fp16"
                 and coll.size > 1 else "",
                 recipe.epochs, ctx.steps_per_epoch, recipe.batch_size * recipe.grad_accum_steps, recipe.lr,
                 coll.size, state.epoch + 1)
    epoch_seconds: list[float] = []
    for epoch in range(state.epoch, recipe.epochs):
        epoch_started = time.time()
        train_loss, images_per_sec = train_one_epoch(ctx, state, epoch)
        coll.average_buffers(ctx.model)
        val = validate(ctx, "val", epoch=epoch).compute()
        value = val.get(monitor, math.nan)
        ctx.schedule.epoch_end(value)
        entry = {"epoch": epoch + 1, "train_loss": train_loss, "lr": ctx.optimizer.param_groups[-1]["lr"],
                 "images_per_sec": images_per_sec, "seconds": round(time.time() - epoch_started, 2),
                 **{f"val_{k}": float(v) for k, v in val.items() if isinstance(v, (int, float))}}
        improved = state.complete_epoch(entry, value=value, higher_is_better=ctx.higher_is_better)
        epoch_seconds.append(time.time() - epoch_started)
        save_checkpoint(ctx, state, improved=improved)
        if rank == 0:
            remaining = (recipe.epochs - state.epoch) * float(np.mean(epoch_seconds))
            log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val %s %.4f%s, %.1f images/s, %.1fs, ETA %.0fs",
                     state.epoch, recipe.epochs, train_loss, entry.get("val_loss", math.nan), monitor, value,
                     " (best)" if improved else "", images_per_sec, entry["seconds"], remaining)
        patience = recipe.early_stopping_patience
        if patience and state.bad_epochs >= patience:
            state.stopped_early = True
            if rank == 0:
                log.info("early stopping after epoch %d: no %s improvement for %d epochs (best %.4f at epoch %s)",
                         state.epoch, monitor, patience, state.best if state.best is not None else math.nan,
                         state.best_epoch)
            break
    return finish(ctx, state)


def backbone_lr_scale(plan: TrainPlan) -> float:
    """``train.backbone_lr_scale`` for a backbone that starts from trained weights, 1 for one trained from
    scratch: a slower backbone protects what pretrained features know, and a random one knows nothing."""
    return plan.recipe.backbone_lr_scale if plan.model.weights.get("kind", "none") != "none" else 1.0


def setup(plan: TrainPlan, coll: Collectives) -> tuple[RankContext, TrainState]:
    """This rank's model (rank 0's initial weights everywhere), optimizer, schedule, loss and state; when the
    plan resumes, all restored from ``last.pt`` (every rank reads it from the shared storage itself; the
    engine's broadcast makes rank 0's copy win)."""
    from classeg.training.optim import build_optimizer

    started = time.time()
    recipe, rank = plan.recipe, coll.rank
    device = _device(coll)
    seed_everything(recipe.seed, rank=rank, epoch=-1)
    model = build_model(plan.model, load_weights=(rank == 0 and not plan.resume))
    model.to(device)
    settings = accel.settings_for(device, compile_model=recipe.compile)
    accel.apply(settings, model)
    optimizer = build_optimizer(model, task=plan.task, optimizer=recipe.optimizer, lr=recipe.lr * coll.size,
                                weight_decay=recipe.weight_decay, momentum=recipe.momentum,
                                backbone_lr_scale=backbone_lr_scale(plan))
    accum = recipe.grad_accum_steps
    micro_steps = math.ceil(plan.splits["train"].steps(recipe.batch_size) / accum) * accum
    monitor, higher_is_better = monitor_spec(plan.task, recipe.monitor)
    schedule = LRSchedule(kind=recipe.schedule, warmup_steps=recipe.warmup_epochs * (micro_steps // accum),
                          total_steps=max(1, recipe.epochs * (micro_steps // accum)),
                          higher_is_better=higher_is_better)
    state, checkpoint = TrainState(), None
    if plan.resume:
        checkpoint = checkpoints.load(plan.last_uri, s3_cfg=plan.s3)
        model.load_state_dict(checkpoint["model"])
        schedule.load_state_dict(checkpoint["schedule"])
        state = TrainState.from_checkpoint(checkpoint)
        rng = checkpoint.get("rng") or []
        if len(rng) == coll.size:
            checkpoints.set_rng_state(rng[rank])
        if rank == 0:
            log.info("resuming run %s after epoch %d of %d", plan.run_id, state.epoch, recipe.epochs)
    train_model, optimizer = coll.wrap(model, optimizer, accum_steps=accum, device=device,
                                       compression=recipe.grad_compression)
    train_model = accel.compiled(settings, train_model)
    if checkpoint is not None:
        # After wrapping: Horovod's DistributedOptimizer is a new optimizer over the same parameter groups.
        optimizer.load_state_dict(checkpoint["optimizer"])
        coll.broadcast_optimizer_state(optimizer)
    resume_within = None if checkpoint is None else checkpoints.resume_within_epoch(
        checkpoint, model=model, rank=rank, size=coll.size, micro_steps=micro_steps, uri=plan.last_uri)
    if resume_within is not None and rank == 0:
        log.info("resuming epoch %d after %d of its %d micro-batches (step %d)", state.epoch + 1, state.micro,
                 micro_steps, state.step)
    ctx = RankContext(plan=plan, coll=coll, device=device, model=model, train_model=train_model,
                      optimizer=optimizer, scaler=accel.grad_scaler(settings), schedule=schedule,
                      loss_fn=build_loss(plan.model, device), micro_steps=micro_steps, monitor=monitor,
                      higher_is_better=higher_is_better, started=started, settings=settings,
                      resume_within=resume_within)
    return ctx, state


def train_one_epoch(ctx: RankContext, state: TrainState, epoch: int) -> tuple[float, float]:
    """Epoch ``epoch`` (0-based): ``ctx.micro_steps`` micro-batches of this rank's shard, advancing
    ``state.step`` per optimizer step. Returns (mean training loss, images per second), over all ranks."""
    import torch

    from classeg.training.progress import EpochProgress

    plan, coll = ctx.plan, ctx.coll
    recipe = plan.recipe
    accum = recipe.grad_accum_steps
    seed_everything(recipe.seed, rank=coll.rank, epoch=epoch)
    within, ctx.resume_within = ctx.resume_within, None
    if within is not None:  # resumed within this epoch: the generators as they were after its micro-batch
        checkpoints.set_rng_state(within["rng"])
    first = within["micro"] if within is not None else 0
    every = recipe.checkpoint_every_steps
    ctx.model.train()
    started = time.time()
    loss_sum, seen = torch.zeros((), dtype=torch.float64, device=ctx.device), 0
    if within is not None:
        loss_sum += within["loss_sum"]
        seen = within["seen"]
    resumed_seen = seen
    keys = set() if recipe.record_shards and "train" not in ctx.scan_keys else None
    progress = EpochProgress(rank0=coll.rank == 0, total=ctx.micro_steps, epoch=epoch, epochs=recipe.epochs)
    source = _train_batches(plan, rank=coll.rank, size=coll.size, epoch=epoch, steps=ctx.micro_steps)
    ahead = accel.prepared_ahead(source, ctx.device, functools.partial(ctx.inputs, split="train", epoch=epoch),
                                 skip=first, on_side_stream=ctx.settings.prepare_ahead)
    with contextlib.closing(ahead) as batches:
        for micro, (batch, inputs) in enumerate(batches):
            if keys is not None:
                keys.update(int(k) for k in batch["scan_key"])
            if micro < first:
                continue  # trained before the restart (the epoch's batch order depends on the seed alone)
            images, target = inputs
            last_micro = (micro + 1) % accum == 0
            if micro % accum == 0:
                ctx.schedule.apply(ctx.optimizer, state.step)
            loss = train_step(ctx.train_model, images, target, loss_fn=ctx.loss_fn, optimizer=ctx.optimizer,
                              scaler=ctx.scaler, coll=coll, use_amp=ctx.use_amp, accum_steps=accum,
                              last_micro=last_micro, amp_dtype=ctx.settings.amp_dtype)
            state.step += int(last_micro)
            loss_sum += loss.double() * images.shape[0]
            seen += images.shape[0]
            progress.update(micro, lambda: float(loss_sum) / seen,
                            images_per_sec=(seen - resumed_seen) * coll.size / max(time.time() - started, 1e-9))
            if last_micro and every and state.step % every == 0 and micro + 1 < ctx.micro_steps:
                state.micro = micro + 1
                save_checkpoint(ctx, state, improved=False, within_epoch={"loss_sum": float(loss_sum), "seen": seen})
    progress.close()
    if keys is not None:
        ctx.scan_keys["train"] = keys
    seconds = time.time() - started
    totals = coll.allreduce_sum(np.array([float(loss_sum), seen, seen - resumed_seen], dtype=np.float64))
    return float(totals[0] / max(totals[1], 1)), float(totals[2] / max(seconds, 1e-9))


def validate(ctx: RankContext, split: str, *, epoch: int = 0, **collect):
    """Evaluate ``ctx.model`` on this rank's shard of ``split`` (in a fixed order) and return the task's
    meter with its state summed over ranks (``compute()`` then gives the same metrics on every rank).
    ``collect``: `evaluate_batches`' ``dice``/``samples``/``scores`` lists, filled from this rank's shard."""
    plan, coll = ctx.plan, ctx.coll
    meter = make_meter(plan.task, len(plan.class_names))
    keys = set() if plan.recipe.record_shards else None
    with _open(plan, split, rank=coll.rank, size=coll.size, epoch=epoch, train=False) as loader:
        evaluate_batches(ctx.model, loader, task=plan.task, loss_fn=ctx.loss_fn, device=ctx.device, meter=meter,
                         use_amp=ctx.use_amp, channels_last=ctx.channels_last, keys=keys,
                         prepare=functools.partial(ctx.inputs, split=split), amp_dtype=ctx.settings.amp_dtype,
                         **collect)
    if keys is not None and split not in ctx.scan_keys:
        ctx.scan_keys[split] = keys
    return _merged(coll, meter)


def save_checkpoint(ctx: RankContext, state: TrainState, *, improved: bool,
                    within_epoch: dict | None = None) -> None:
    """Rank 0 writes ``last.pt`` (the state, model, optimizer, schedule and every rank's generator states)
    and, when the epoch ``improved`` on the best, ``best.pt``. Every rank must call it (one allgather; two
    within an epoch). ``within_epoch``: this rank's ``loss_sum`` and ``seen`` of the epoch so far, for a
    checkpoint after ``state.micro`` micro-batches of epoch ``state.epoch + 1``; with every rank's buffers,
    they go into ``last.pt`` (`classeg.training.checkpoints`)."""
    plan, coll = ctx.plan, ctx.coll
    rng_states = coll.allgather_object(checkpoints.rng_state())  # distributed: every rank's generators
    extra = {}
    if within_epoch is not None:  # distributed: every rank's epoch so far and its own BatchNorm statistics
        extra = {"micro_steps": ctx.micro_steps,
                 "within_epoch": coll.allgather_object(checkpoints.rank_progress(ctx.model, **within_epoch))}
    if coll.rank != 0:
        return
    weights = {k: v.detach().cpu() for k, v in ctx.model.state_dict().items()}
    common = {"task": plan.task, "class_names": plan.class_names, "epoch": state.epoch, "model": weights,
              "monitor": ctx.monitor}
    if improved:
        checkpoints.save(plan.best_uri, {**common, "best": state.best, "best_epoch": state.best_epoch},
                         s3_cfg=plan.s3)
    checkpoints.save(plan.last_uri, {**common, **state.to_checkpoint(), "optimizer": ctx.optimizer.state_dict(),
                                     "schedule": ctx.schedule.state_dict(), "world_size": coll.size,
                                     "rng": rng_states, **extra}, s3_cfg=plan.s3)


def finish(ctx: RankContext, state: TrainState) -> dict | None:
    """After the last epoch, on every rank: test the best weights on the test split, gather what rank 0
    reports (weight checksums, shard lists, a classifier's validation scores for its operating point), and
    have rank 0 write the outputs. Returns rank 0's result (None elsewhere)."""
    from classeg.io import files
    from classeg.training.outputs import Evaluation, write_outputs

    plan, coll = ctx.plan, ctx.coll
    coll.barrier()  # distributed: best.pt is complete before anyone reads it
    if state.best_epoch is not None and files.exists(plan.best_uri, s3_cfg=plan.s3):
        ctx.model.load_state_dict(checkpoints.load(plan.best_uri, s3_cfg=plan.s3)["model"])
    segment = plan.task == "segment"
    dice: list[float] = []
    samples: list[dict] = []
    test_meter = validate(ctx, "test", **({"dice": dice, "samples": samples} if segment else {}))
    test = test_meter.compute()
    if segment:
        dice = [d for part in coll.allgather_object(dice) for d in part]
    else:
        report = test_meter.report(plan.class_names)
        test.update(confusion_matrix=report["confusion_matrix"], per_class=report["per_class"])
    evaluation = Evaluation(test=test, dice=dice, samples=samples,
                            checksums=coll.allgather_object(checkpoints.state_checksum(ctx.model)),
                            shards=_gathered_shards(ctx) if plan.recipe.record_shards else None,
                            validation=None if segment else _validation_scores(ctx))
    result = write_outputs(ctx, state, evaluation) if coll.rank == 0 else None
    coll.barrier()  # distributed: nobody exits (tearing down the group) while rank 0 still writes
    return result


def _gathered_shards(ctx: RankContext) -> dict[str, list[list[str]]]:
    """Per split, per rank: the scan ids its passes read (``train.record_shards``)."""
    from classeg.training.data import scan_id_from_key

    gathered = ctx.coll.allgather_object({k: sorted(v) for k, v in ctx.scan_keys.items()})
    return {split: [[scan_id_from_key(k) for k in part[split]] for part in gathered] for split in gathered[0]}


def _validation_scores(ctx: RankContext) -> tuple[np.ndarray, np.ndarray]:
    """Every validation scan's label (N,) and class probabilities (N, K) under ``ctx.model``, from all ranks."""
    scores: list = []
    validate(ctx, "val", scores=scores)
    batches = [batch for part in ctx.coll.allgather_object(scores) for batch in part]
    labels = np.concatenate([b[0] for b in batches]) if batches else np.zeros(0, dtype=np.int64)
    probabilities = (np.concatenate([b[1] for b in batches]) if batches
                     else np.zeros((0, len(ctx.plan.class_names))))
    return labels.astype(np.int64), probabilities.astype(np.float64)


def _open(plan: TrainPlan, split: str, *, rank: int, size: int, epoch: int, train: bool):
    from classeg.training.data import open_loader

    return open_loader(plan.splits[split], task=plan.task, input_spec=plan.model.input_spec,
                       batch_size=plan.recipe.batch_size, rank=rank, size=size, seed=plan.recipe.seed, epoch=epoch,
                       train=train, threads=plan.recipe.loader_threads)


def _train_batches(plan: TrainPlan, *, rank: int, size: int, epoch: int, steps: int):
    from classeg.training.data import epoch_batches

    return epoch_batches(plan.splits["train"], steps=steps, task=plan.task, input_spec=plan.model.input_spec,
                         batch_size=plan.recipe.batch_size, rank=rank, size=size, seed=plan.recipe.seed,
                         epoch=epoch, threads=plan.recipe.loader_threads)
