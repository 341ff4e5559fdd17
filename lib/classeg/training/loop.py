"""The per-rank training function: one function, both engines (`train_rank(plan, engine)`).

Every training process runs `train_rank`; the engine (Horovod or torch.distributed) only changes how the
process was launched and the `Collectives` it talks through. Everything the function needs arrives in
``plan`` (a picklable dict built on the driver by `classeg.training.job`): the ``train`` config section, the
Petastorm split converters, class names and weights, the input spec, where the run lives, whether to resume.
No module-level state: imports of torch and friends happen inside.

Per epoch: seed every generator from (seed, epoch, rank); read exactly ``steps`` batches of this rank's shard
(the same count on every rank); optimizer steps every ``grad_accum_steps`` batches with the learning rate
from `LRSchedule`; average BatchNorm statistics over ranks; validate every rank's shard and merge the
meters' state vectors with one allreduce; rank 0 logs, checkpoints ``last.pt`` (and ``best.pt`` when the
monitored metric improved). At the end the best weights are tested on the test split the same way, and rank 0
writes the model artifact, ``metrics.json`` and figures.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import sys
import time
import numpy as np

from classeg.artifact import join
from classeg.training import checkpoints
from classeg.training.collectives import Collectives, for_engine

log = logging.getLogger("classeg.training")

#: Progress lines per epoch on rank 0 (when there is no tqdm bar).
PROGRESS_LINES = 10
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
    """(validation metric name, higher is better). ``auto``: accuracy (classify) or dice_tumour (segment)."""
    if monitor == "auto":
        monitor = "accuracy" if task == "classify" else "dice_tumour"
    return monitor, monitor != "loss"


def state_checksum(module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, values): equal on ranks holding the same model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(name.encode())
        digest.update(str(array.dtype).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def build_model(plan: dict, *, load_weights: bool):
    """The task's model from the plan, with the requested initial weights when ``load_weights`` (rank 0;
    the other ranks receive rank 0's weights through the engine's broadcast)."""
    from classeg.models import build_classifier, build_resunet, load_classifier_state, read_state_dict

    train = plan["train"]
    weights = plan.get("weights") or {"kind": "none"}
    endpoint = (plan.get("s3") or {}).get("endpoint_url")
    kind = weights["kind"] if load_weights else "none"
    if plan["task"] == "classify":
        model = build_classifier(arch=train["arch"], num_classes=len(plan["class_names"]), head=train["head"],
                                 strategy=train["strategy"], weights=weights["uri"] if kind == "backbone" else None,
                                 input_size=plan["input_spec"]["size"], in_channels=plan["input_spec"]["channels"],
                                 mean=plan["input_spec"]["mean"], std=plan["input_spec"]["std"],
                                 endpoint_url=endpoint)
        if kind == "full":
            load_classifier_state(model, read_state_dict(weights["uri"], endpoint_url=endpoint))
        return model
    return build_resunet(in_channels=plan["input_spec"]["channels"], base_filters=train["base_filters"],
                         weights=weights["uri"] if kind in ("full", "backbone") else None, endpoint_url=endpoint)


def build_loss_for(task: str, train: dict, *, num_classes: int, class_weights=None):
    """Cross entropy with ``class_weights`` and ``train.label_smoothing`` (classify) or ``train.loss`` on
    logits (segment; focal Tversky when the config does not say)."""
    from classeg import losses

    if task == "classify":
        return losses.cross_entropy_loss(class_weights=class_weights,
                                         label_smoothing=float(train.get("label_smoothing", 0.0)),
                                         num_classes=num_classes)
    return losses.build_loss(train.get("loss", "focal_tversky"), from_logits=True)


def build_loss(plan: dict, device):
    """The training loss of the plan's task, on ``device``."""
    return build_loss_for(plan["task"], plan["train"], num_classes=len(plan["class_names"]),
                          class_weights=plan.get("class_weights")).to(device)


def _batch_to_device(batch: dict, task: str, device, channels_last: bool):
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
    target = batch["label"] if task == "classify" else batch["mask"]
    return images, target.to(device, non_blocking=True)


def train_step(train_model, images, target, *, loss_fn, optimizer, scaler, coll: Collectives, use_amp: bool,
               accum_steps: int, last_micro: bool) -> float:
    """One micro-batch: forward, backward (loss / accum_steps, gradients synchronised only on the group's last
    micro-batch), and the optimizer step on the last one. Returns the micro-batch's mean loss."""
    import contextlib

    import torch

    sync = contextlib.nullcontext() if last_micro else coll.no_sync(train_model)
    with sync:
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
            output = train_model(images)
            loss = loss_fn(output.float(), target)
        scaler.scale(loss / accum_steps).backward()
    if last_micro:
        coll.optimizer_step(optimizer, scaler)
        optimizer.zero_grad()
    return float(loss.detach())


def make_meter(task: str, num_classes: int):
    from classeg.metrics import ClassificationMeter, SegmentationMeter

    return ClassificationMeter(num_classes) if task == "classify" else SegmentationMeter()


def evaluate_batches(model, batches, *, task: str, loss_fn, device, meter, use_amp: bool = False,
                     channels_last: bool = False, keys: set | None = None, dice: list | None = None,
                     samples: list | None = None) -> None:
    """Run ``model`` (a plain module, not the DDP wrapper: evaluation needs no collectives) over ``batches``
    and update ``meter``; optionally record scan keys, per-tumour-slice Dice and a few gallery samples."""
    import torch

    from classeg.metrics import dice_per_image

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                images, target = _batch_to_device(batch, task, device, channels_last)
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                    output = model(images).float()
                loss = float(loss_fn(output, target))
                if keys is not None:
                    keys.update(int(k) for k in batch["scan_key"])
                if task == "classify":
                    meter.update(target.cpu(), logits=output.cpu(), loss=loss)
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


def _merged(coll: Collectives, meter) -> dict:
    """Meter state summed over ranks (one allreduce) -> metrics dict (identical on every rank)."""
    meter.load_state(coll.allreduce_sum(meter.state()))
    return meter.compute()


def _progress(total: int, enabled: bool, description: str):
    """A tqdm bar on rank 0 when tqdm is installed and stderr is a terminal, else None (log lines instead)."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=description, leave=False, file=sys.stderr)


def _setup_logging(plan: dict, rank: int) -> None:
    level = getattr(logging, plan.get("log_level", "INFO")) if rank == 0 else logging.WARNING
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


# ---------------------------------------------------------------------------------------------- the function
def train_rank(plan: dict, engine: str) -> dict | None:
    """Train on this rank. Returns the result dict on rank 0 and None elsewhere (the engines return one
    process's value; rank 0 also writes it as ``result.json`` in the run folder)."""
    import warnings

    import torch

    # Petastorm 0.13 on pyarrow 14 warns about every legacy-dataset call, per reader, per epoch.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?")
    warnings.filterwarnings("ignore", message=".*A value is trying to be set on a copy.*")
    torch.set_num_threads(int(plan["train"]["threads_per_proc"]))
    coll = for_engine(engine)
    _setup_logging(plan, coll.rank)
    try:
        result = run(plan, coll)
    finally:
        coll.shutdown()
    return result if coll.rank == 0 else None


def run(plan: dict, coll: Collectives) -> dict:
    """The training loop on one rank (see the module docstring); ``coll`` connects it to the other ranks."""
    import torch

    from classeg.training.optim import LRSchedule, build_optimizer

    started = time.time()
    train, task = plan["train"], plan["task"]
    rank, size = coll.rank, coll.size
    seed = int(train["seed"])
    s3_cfg = plan.get("s3")
    device = _device(coll)
    use_amp = device.type == "cuda"
    channels_last = device.type == "cuda"
    batch_size, accum = int(train["batch_size"]), int(train["grad_accum_steps"])
    monitor, higher_is_better = monitor_spec(task, train["monitor"])
    data = plan["data"]
    record = bool(plan.get("record_shards"))
    ckpt_dir = checkpoints.checkpoint_dir(plan["run_uri"])
    last_uri, best_uri = join(ckpt_dir, checkpoints.LAST), join(ckpt_dir, checkpoints.BEST)

    seed_everything(seed, rank=rank, epoch=-1)
    resume = plan.get("resume", False)
    model = build_model(plan, load_weights=(rank == 0 and not resume))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, task=task, optimizer=train["optimizer"], lr=train["lr"] * size,
                                weight_decay=train["weight_decay"], momentum=train["momentum"],
                                backbone_lr_scale=train["backbone_lr_scale"])
    micro_steps = math.ceil(data["train"].steps(batch_size) / accum) * accum
    steps_per_epoch = micro_steps // accum
    schedule = LRSchedule(kind=train["schedule"], warmup_steps=int(train["warmup_epochs"]) * steps_per_epoch,
                          total_steps=max(1, int(train["epochs"]) * steps_per_epoch),
                          higher_is_better=higher_is_better)
    history: list[dict] = []
    start_epoch, step, best, best_epoch, bad_epochs = 0, 0, None, None, 0
    if resume:
        # Every rank reads the checkpoint itself (shared storage); the engine's broadcast makes rank 0's copy win.
        checkpoint = checkpoints.load(last_uri, s3_cfg=s3_cfg)
        model.load_state_dict(checkpoint["model"])
        schedule.load_state_dict(checkpoint["schedule"])
        history = list(checkpoint["history"])
        start_epoch, step = int(checkpoint["epoch"]), int(checkpoint["step"])
        best, best_epoch, bad_epochs = checkpoint["best"], checkpoint["best_epoch"], int(checkpoint["bad_epochs"])
        rng = checkpoint.get("rng") or []
        if len(rng) == size:
            checkpoints.set_rng_state(rng[rank])
        if rank == 0:
            log.info("resuming run %s after epoch %d of %d", plan["run_id"], start_epoch, train["epochs"])
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    train_model, optimizer = coll.wrap(model, optimizer, accum_steps=accum, device=device)
    if resume:
        # After wrapping: Horovod's DistributedOptimizer is a new optimizer over the same parameter groups.
        optimizer.load_state_dict(checkpoint["optimizer"])
        coll.broadcast_optimizer_state(optimizer)
    loss_fn = build_loss(plan, device)
    num_classes = len(plan["class_names"])
    shards: dict[str, set] = {}

    def validate(split: str, *, epoch: int, return_meter: bool = False, **collect):
        meter = make_meter(task, num_classes)
        keys = set() if record else None
        with _open(plan, split, rank=rank, size=size, epoch=epoch, train=False) as loader:
            evaluate_batches(model, loader, task=task, loss_fn=loss_fn, device=device, meter=meter,
                             use_amp=use_amp, channels_last=channels_last, keys=keys, **collect)
        if keys is not None and split not in shards:
            shards[split] = keys
        return meter if return_meter else _merged(coll, meter)

    initial = None
    if plan.get("eval_before_training") and not resume:
        initial = validate("val", epoch=0)
        if rank == 0:
            log.info("before training: val loss %.4f, %s %.4f", initial["loss"], monitor, initial.get(monitor, math.nan))

    epochs = int(train["epochs"])
    patience = int(train["early_stopping_patience"])
    epoch_seconds: list[float] = []
    stopped_early = False
    if rank == 0:
        log.info("training %s on %d process(es) (%s, %s): %d epochs x %d steps of %d images per process, "
                 "lr %.3g (x%d processes), start at epoch %d", task, size, coll.name, device, epochs,
                 steps_per_epoch, batch_size * accum, train["lr"], size, start_epoch + 1)
    for epoch in range(start_epoch, epochs):
        seed_everything(seed, rank=rank, epoch=epoch)
        model.train()
        epoch_started = time.time()
        loss_sum, seen = 0.0, 0
        keys = set() if record and "train" not in shards else None
        bar = _progress(micro_steps, rank == 0, f"epoch {epoch + 1}/{epochs}")
        every = max(1, micro_steps // PROGRESS_LINES)
        with contextlib.closing(_train_batches(plan, rank=rank, size=size, epoch=epoch, steps=micro_steps)) as batches:
            for micro, batch in enumerate(batches):
                if keys is not None:
                    keys.update(int(k) for k in batch["scan_key"])
                images, target = _batch_to_device(batch, task, device, channels_last)
                last_micro = (micro + 1) % accum == 0
                if micro % accum == 0:
                    schedule.apply(optimizer, step)
                loss = train_step(train_model, images, target, loss_fn=loss_fn, optimizer=optimizer,
                                  scaler=scaler, coll=coll, use_amp=use_amp, accum_steps=accum,
                                  last_micro=last_micro)
                step += int(last_micro)
                loss_sum += loss * images.shape[0]
                seen += images.shape[0]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
                elif rank == 0 and ((micro + 1) % every == 0) and micro + 1 < micro_steps:
                    elapsed = time.time() - epoch_started
                    log.info("epoch %d/%d %3d%% (%d/%d steps) loss %.4f, %.1f images/s", epoch + 1, epochs,
                             100 * (micro + 1) // micro_steps, micro + 1, micro_steps, loss_sum / seen,
                             seen * size / max(elapsed, 1e-9))
        if bar is not None:
            bar.close()
        if keys is not None:
            shards["train"] = keys
        train_seconds = time.time() - epoch_started
        totals = coll.allreduce_sum(np.array([loss_sum, seen], dtype=np.float64))
        coll.average_buffers(model)
        val = validate("val", epoch=epoch)
        value = val.get(monitor, math.nan)
        schedule.epoch_end(value)
        improved = not math.isnan(value) and (best is None or (value > best if higher_is_better else value < best))
        if improved:
            best, best_epoch, bad_epochs = float(value), epoch + 1, 0
        else:
            bad_epochs += 1
        entry = {"epoch": epoch + 1, "train_loss": float(totals[0] / max(totals[1], 1)),
                 "lr": optimizer.param_groups[-1]["lr"], "images_per_sec": float(totals[1] / max(train_seconds, 1e-9)),
                 "seconds": round(time.time() - epoch_started, 2),
                 **{f"val_{k}": float(v) for k, v in val.items() if isinstance(v, (int, float))}}
        history.append(entry)
        epoch_seconds.append(time.time() - epoch_started)
        rng_states = coll.allgather_object(checkpoints.rng_state())
        if rank == 0:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            common = {"task": task, "class_names": plan["class_names"], "epoch": epoch + 1, "model": state}
            if improved:
                checkpoints.save(best_uri, {**common, "best": best, "best_epoch": best_epoch, "monitor": monitor},
                                 s3_cfg=s3_cfg)
            checkpoints.save(last_uri, {**common, "optimizer": optimizer.state_dict(),
                                        "schedule": schedule.state_dict(), "history": history, "best": best,
                                        "best_epoch": best_epoch, "bad_epochs": bad_epochs, "step": step,
                                        "world_size": size, "monitor": monitor, "rng": rng_states}, s3_cfg=s3_cfg)
            remaining = (epochs - epoch - 1) * float(np.mean(epoch_seconds))
            log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val %s %.4f%s, %.1f images/s, %.1fs, ETA %.0fs",
                     epoch + 1, epochs, entry["train_loss"], entry.get("val_loss", math.nan), monitor, value,
                     " (best)" if improved else "", entry["images_per_sec"], entry["seconds"], remaining)
        if patience and bad_epochs >= patience:
            stopped_early = True
            if rank == 0:
                log.info("early stopping after epoch %d: no %s improvement for %d epochs (best %.4f at epoch %s)",
                         epoch + 1, monitor, patience, best if best is not None else math.nan, best_epoch)
            break

    # ------------------------------------------------------------------------------------------ test
    coll.barrier()  # distributed: best.pt is complete before anyone reads it
    if best_epoch is not None and checkpoints.exists(best_uri, s3_cfg=s3_cfg):
        model.load_state_dict(checkpoints.load(best_uri, s3_cfg=s3_cfg)["model"])
    dice: list[float] = []
    samples: list[dict] = []
    test_meter = validate("test", epoch=0, return_meter=True,
                          **({"dice": dice, "samples": samples} if task == "segment" else {}))
    test_meter.load_state(coll.allreduce_sum(test_meter.state()))
    test = test_meter.compute()
    if task == "classify":
        report = test_meter.report(plan["class_names"])
        test.update(confusion_matrix=report["confusion_matrix"], per_class=report["per_class"])
    else:
        dice = [d for part in coll.allgather_object(dice) for d in part]
    checksums = coll.allgather_object(state_checksum(model))
    shard_lists = None
    if record:
        from classeg.training.data import scan_id_from_key

        gathered = coll.allgather_object({k: sorted(v) for k, v in shards.items()})
        shard_lists = {split: [[scan_id_from_key(k) for k in part[split]] for part in gathered]
                       for split in gathered[0]}
    result = None
    if rank == 0:
        result = _finish(plan, model=model, history=history, test=test, dice=dice, samples=samples,
                         best=best, best_epoch=best_epoch, monitor=monitor, start_epoch=start_epoch,
                         stopped_early=stopped_early, initial=initial, checksums=checksums, shards=shard_lists,
                         steps_per_epoch=steps_per_epoch, seconds=time.time() - started, engine=coll.name,
                         world_size=size)
    coll.barrier()  # distributed: nobody exits (tearing down the group) while rank 0 still writes
    return result


def _open(plan: dict, split: str, *, rank: int, size: int, epoch: int, train: bool):
    from classeg.training.data import open_loader

    return open_loader(plan["data"][split], task=plan["task"], input_spec=plan["input_spec"],
                       batch_size=int(plan["train"]["batch_size"]), rank=rank, size=size,
                       seed=int(plan["train"]["seed"]), epoch=epoch, train=train,
                       augment=bool(plan["train"]["augment"]))


def _train_batches(plan: dict, *, rank: int, size: int, epoch: int, steps: int):
    from classeg.training.data import epoch_batches

    return epoch_batches(plan["data"]["train"], steps=steps, task=plan["task"], input_spec=plan["input_spec"],
                         batch_size=int(plan["train"]["batch_size"]), rank=rank, size=size,
                         seed=int(plan["train"]["seed"]), epoch=epoch, augment=bool(plan["train"]["augment"]))


def _finish(plan: dict, *, model, history, test, dice, samples, best, best_epoch, monitor, start_epoch,
            stopped_early, initial, checksums, shards, steps_per_epoch, seconds, engine, world_size) -> dict:
    """Rank 0: the model artifact (in the run folder and the output's ``model/``), metrics.json, figures and
    ``result.json``."""
    import json

    from classeg.artifact import read_bytes, save_artifact, write_bytes
    from classeg.training.plots import write_evaluation

    s3_cfg = plan.get("s3")
    artifact_uri = join(plan["run_uri"], "model")
    training = {"config": plan["config"], "run_id": plan["run_id"], "engine": engine, "world_size": world_size,
                "best_epoch": best_epoch, "monitor": monitor, "best_value": best, "stopped_early": stopped_early,
                "steps_per_epoch": steps_per_epoch, "class_weights": plan.get("class_weights")}
    meta = save_artifact(artifact_uri, model=model, task=plan["task"], class_names=plan["class_names"],
                         input_spec=plan["input_spec"], training=training, history=history,
                         metrics={"split": "test", **test}, data=plan["fingerprint"], s3_cfg=s3_cfg)
    written = write_evaluation(artifact_uri, task=plan["task"], metrics=test, class_names=plan["class_names"],
                               history=history, dice=dice, samples=samples, s3_cfg=s3_cfg,
                               extra={"split": "test", "model_id": meta["model_id"], "run_id": plan["run_id"],
                                      "scans": plan["fingerprint"]["scans"]})
    latest = join(plan["output"], "model")
    for name in ["weights.pt", "model.json", *written]:  # the output's model/ is a copy of the latest run's
        write_bytes(join(latest, name), read_bytes(join(artifact_uri, name), s3_cfg=s3_cfg), s3_cfg=s3_cfg)
    result = {"run_id": plan["run_id"], "task": plan["task"], "artifact": artifact_uri, "latest_artifact": latest,
              "model_id": meta["model_id"], "resumed": bool(plan.get("resume")), "start_epoch": start_epoch + 1,
              "epochs_completed": history[-1]["epoch"] if history else 0, "best_epoch": best_epoch,
              "monitor": monitor, "best_value": best, "stopped_early": stopped_early, "history": history,
              "test": test, "initial_val": initial, "rank_checksums": checksums, "steps_per_epoch": steps_per_epoch,
              "engine": engine, "world_size": world_size, "seconds": round(seconds, 1)}
    if shards is not None:
        result["shards"] = shards
    from classeg.metrics import as_mapping

    write_bytes(join(plan["run_uri"], "result.json"), json.dumps(as_mapping(result), indent=2, default=str).encode(),
                s3_cfg=s3_cfg)
    log.info("test %s: %s; artifact %s", plan["task"],
             ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float) and k in (
                 "accuracy", "balanced_accuracy", "roc_auc", "dice_tumour", "dice", "iou_tumour", "loss")),
             artifact_uri)
    return result

