"""Training throughput: images/s of the Horovod and TorchDistributor engines (2 processes x 1 thread) against a
single-process plain PyTorch loop (1 process x 2 threads) on the same model, image size and data, plus the
Petastorm loader alone (decode + preprocess + augment, no model). Writes benchmarks/results/train_throughput.json.

    .venv/bin/python benchmarks/train_throughput.py [--task classify] [--image-size 64] [--patients 12]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"


def plain_loop(frame, spec, train: dict, *, epochs: int, threads: int) -> float:
    """Images/s of one process: decode + augment + preprocess + forward/backward/step, like one rank does."""
    import torch

    from classeg.training.collectives import LocalCollectives
    from classeg.training.data import decode_example
    from classeg.training.loop import build_loss, build_model, train_step
    from classeg.training.optim import build_optimizer

    torch.set_num_threads(threads)
    task = spec.task
    rows = frame.toPandas()  # the benchmark's train split is small
    model = build_model(spec, load_weights=False)
    optimizer = build_optimizer(model, task=task, optimizer="adamw", lr=train["lr"], weight_decay=0.0,
                                momentum=0.9, backbone_lr_scale=train["backbone_lr_scale"])
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loss_fn = build_loss(spec, torch.device("cpu"))
    batch, seen, started = int(train["batch_size"]), 0, None
    for epoch in range(epochs):
        if epoch == 1:
            started, seen = time.time(), 0  # first epoch is warm-up
        for start in range(0, len(rows), batch):
            chunk = rows.iloc[start:start + batch]
            examples = [decode_example(r.image, getattr(r, "mask", None), task=task, input_spec=spec.input_spec,
                                       augment=True, seed=0, epoch=epoch, scan_id=r.scan_id) for r in chunk.itertuples()]
            images = torch.from_numpy(__import__("numpy").stack([e[0] for e in examples]))
            target = (torch.from_numpy(__import__("numpy").stack([e[1] for e in examples])) if task == "segment"
                      else torch.tensor(chunk["label"].to_numpy(), dtype=torch.int64))
            train_step(model, images, target, loss_fn=loss_fn, optimizer=optimizer, scaler=scaler,
                       coll=LocalCollectives(), use_amp=False, accum_steps=1, last_micro=True)
            seen += len(chunk)
    return seen / (time.time() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="classify", choices=["classify", "segment"])
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)

    from petastorm.spark import SparkDatasetConverter

    from classeg.config import load_config
    from classeg import synthetic
    from classeg.ingest.job import run_ingest
    from classeg.ingest.table import read_scan_table
    from classeg.spark import get_spark
    from classeg.training import run_training
    from classeg.training.data import open_loader, prepare_split, split_counts, task_frame
    from classeg.training.job import input_spec
    from classeg.training.plan import ModelSpec

    work = Path(args.workdir or tempfile.mkdtemp(prefix="classeg-train-throughput-"))
    synthetic.write_lgg(work / "data", patients=args.patients, seed=5, image_size=args.image_size)
    base = ["spark.master=local[2]", f"ingest.image_size={args.image_size}"]
    cfg = load_config(overrides=[*base, "ingest.dataset=lgg", f"ingest.input={work / 'data'}",
                                 f"ingest.output={work / 'table'}"])
    spark = get_spark(cfg)
    run_ingest(spark, cfg)
    train_over = [*base, f"train.task={args.task}", f"train.scans={work / 'table'}", f"train.epochs={args.epochs}",
                  f"train.image_size={args.image_size}", f"train.batch_size={args.batch_size}", "train.num_proc=2",
                  "train.threads_per_proc=1", "train.base_filters=16"]
    record = {"task": args.task, "image_size": args.image_size, "batch_size_per_process": args.batch_size,
              "patients": args.patients, "epochs": args.epochs}
    for engine in ("horovod", "torch"):
        result = run_training(spark, load_config(overrides=[*train_over, f"train.engine={engine}",
                                                            f"train.output={work / engine}"]))
        rates = [h["images_per_sec"] for h in result["history"]]
        record[f"{engine}_2x1_images_per_sec"] = round(sum(rates[1:]) / max(1, len(rates) - 1), 2)
        record[f"{engine}_seconds_total"] = result["driver_seconds"]
    train_cfg = load_config(overrides=train_over)
    frame, summary = read_scan_table(spark, str(work / "table"))
    spec = input_spec(args.task, image_size=args.image_size, channels=3)
    model_spec = ModelSpec.from_train_config(train_cfg.to_dict()["train"], class_names=summary["class_names"],
                                             input_spec=spec)
    tumor_only = args.task == "segment"
    rows = task_frame(frame, split="train", task=args.task, tumor_only=tumor_only)
    rate = plain_loop(rows, model_spec, train_cfg.to_dict()["train"], epochs=args.epochs, threads=2)
    record["plain_1x2_images_per_sec"] = round(rate, 2)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, f"file://{work / 'cache'}")
    counts = split_counts(frame)
    n = counts["train"]["tumor"] if tumor_only else counts["train"]["rows"]
    data = prepare_split(spark, frame, split="train", task=args.task, tumor_only=tumor_only, rows=n, processes=1, seed=0)
    started, seen = time.time(), 0
    with contextlib.ExitStack() as stack:
        loader = stack.enter_context(open_loader(data.shards, task=args.task, input_spec=spec,
                                                 batch_size=args.batch_size,
                                                 rank=0, size=1, seed=0, epoch=0, train=True, augment=True))
        for batch in loader:
            seen += batch["image"].shape[0]
    record["petastorm_loader_images_per_sec"] = round(seen / (time.time() - started), 2)
    data.delete()
    for engine in ("horovod", "torch"):
        record[f"{engine}_vs_plain"] = round(record[f"{engine}_2x1_images_per_sec"] / record["plain_1x2_images_per_sec"], 3)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2))
    print("| setup | images/s |\n|---|---|")
    for key in ("horovod_2x1_images_per_sec", "torch_2x1_images_per_sec", "plain_1x2_images_per_sec",
                "petastorm_loader_images_per_sec"):
        print(f"| {key} | {record[key]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
