"""Training throughput: images/s of the Horovod and TorchDistributor engines (2 processes x 1 thread) against the
same per-rank loop in one plain process (1 process x 2 threads, no engine, no Spark in the loop) on the same
model, data and decoded training cache, at each image size. Writes benchmarks/results/train_throughput.json.

    .venv/bin/python benchmarks/train_throughput.py [--task classify] [--image-sizes 64,128] [--patients 12]
                                                    [--epochs 3] [--batch-size 16] [--rounds 3]
                                                    [--variants horovod,torch,horovod_fp16,torch_fp16]
                                                    (also horovod_cycle<N>: HOROVOD_CYCLE_TIME=N ms)

Per size, each measurement repeated ``--rounds`` times interleaved (the median counts; each ratio also as the
median of the rounds' own ratios, a run against the plain loop's run of its round): a synthetic LGG table
at that size (ingest on local[2]); ``classeg train`` with each engine (the
job's own cache, split and loop; images/s as the loop reports it, the mean over epochs after the first), with the
default fp32 gradient allreduce (the goal's) and with ``train.grad_compression=fp16``; and
the plain process: the train split cached by `prepare_split` for one process, then
`classeg.training.loop.setup` + `train_one_epoch` with `LocalCollectives` and torch on 2 threads (the
first epoch a warm-up, not counted). The loader alone (read, collate; no model) over that cache is reported
too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
GOAL = 0.85
ENGINES = ("horovod", "torch")  # the goal's: the default train.grad_compression (none)
#: Also measured, outside the goal: each engine with ``train.grad_compression=fp16`` (not the default).
VARIANTS = {"horovod": ("horovod", "none"), "torch": ("torch", "none"), "horovod_fp16": ("horovod", "fp16"),
            "torch_fp16": ("torch", "fp16")}
#: And ``horovod_cycle<N>`` (any N, e.g. horovod_cycle5): Horovod with HOROVOD_CYCLE_TIME=N ms in the driver's
#: environment, which the engine passes to the ranks instead of its own choice. Every other variant runs without
#: one (a HOROVOD_CYCLE_TIME in this script's environment is set aside), so ``horovod`` is the library's default.
CYCLE_PREFIX = "horovod_cycle"


def variant(name: str) -> tuple[str, str, str | None]:
    """(engine, train.grad_compression, HOROVOD_CYCLE_TIME or None) of a variant's name; ValueError if unknown."""
    if name in VARIANTS:
        return (*VARIANTS[name], None)
    cycle = name.removeprefix(CYCLE_PREFIX)
    if name.startswith(CYCLE_PREFIX) and cycle.isdigit() and int(cycle) > 0:
        return "horovod", "none", cycle
    raise ValueError(name)


def plain_loop(plan, *, epochs: int, threads: int) -> float:
    """Images/s of the per-rank loop in this process (epochs after the first)."""
    import torch

    from classeg.training.collectives import LocalCollectives
    from classeg.training.loop import setup, train_one_epoch

    torch.set_num_threads(threads)
    ctx, state = setup(plan, LocalCollectives())
    rates = [train_one_epoch(ctx, state, epoch)[1] for epoch in range(epochs)]
    return sum(rates[1:]) / max(1, len(rates) - 1)


def loader_rate(shards, spec: dict, *, task: str, batch_size: int, threads: int) -> float:
    """Images/s of one shuffled pass of the cache reader alone (after a warm-up pass)."""
    from classeg.training.data import open_loader

    rate = 0.0
    for epoch in range(2):
        started, seen = time.time(), 0
        with open_loader(shards, task=task, input_spec=spec, batch_size=batch_size, rank=0, size=1, seed=0,
                         epoch=epoch, train=True, threads=threads) as loader:
            for batch in loader:
                seen += len(batch["scan_key"])
        rate = seen / (time.time() - started)
    return rate


def one_size(spark, work: Path, *, task: str, size: int, patients: int, epochs: int, batch_size: int,
             rounds: int, variants: tuple[str, ...]) -> dict:
    """Every measurement ``rounds`` times, interleaved (plain, then each variant, the order rotated per round),
    over one ingested table and one plain-loop cache; each rate is the median of its rounds, and each ratio is
    given both as the ratio of the medians and as the median of the rounds' own ratios (each variant's run against
    the plain loop's run of the same round, which a machine drifting within the run moves less)."""
    import statistics

    from petastorm.spark import SparkDatasetConverter

    from classeg import synthetic
    from classeg.config import load_config
    from classeg.ingest.job import run_ingest
    from classeg.ingest.table import read_scan_table
    from classeg.training import run_training
    from classeg.training.data import prepare_split, split_counts
    from classeg.training.job import input_spec
    from classeg.training.plan import ModelSpec, Recipe, TrainPlan

    root = work / f"{size}px"
    synthetic.write_lgg(root / "data", patients=patients, seed=5, image_size=size)
    base = ["spark.master=local[2]", f"ingest.image_size={size}"]
    run_ingest(spark, load_config(overrides=[*base, "ingest.dataset=lgg", f"ingest.input={root / 'data'}",
                                             f"ingest.output={root / 'table'}"]))
    train_over = [*base, f"train.task={task}", f"train.scans={root / 'table'}", f"train.epochs={epochs}",
                  f"train.image_size={size}", f"train.batch_size={batch_size}", "train.num_proc=2",
                  "train.threads_per_proc=1", "train.base_filters=16", "train.early_stopping_patience=0"]
    train_cfg = load_config(overrides=train_over).to_dict()["train"]
    frame, summary = read_scan_table(spark, str(root / "table"))
    spec = input_spec(task, image_size=size, channels=3)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, f"file://{root / 'cache'}")
    tumor_only = task == "segment"
    counts = split_counts(frame)
    rows = counts["train"]["tumor"] if tumor_only else counts["train"]["rows"]
    data = prepare_split(spark, frame, split="train", task=task, tumor_only=tumor_only, rows=rows, processes=1,
                         seed=0, input_spec=spec)
    runs: dict[str, list[float]] = {name: [] for name in ("plain", *variants)}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    try:
        model = ModelSpec.from_train_config(train_cfg, class_names=summary["class_names"], input_spec=spec)
        plan = TrainPlan(model=model, recipe=Recipe.from_train_config(train_cfg), splits={"train": data.shards},
                         run_id="plain", run_uri=str(root / "plain"), output=str(root / "plain"), resume=False,
                         s3=None, config={}, fingerprint={})
        order = ["plain", *variants]
        for round_index in range(rounds):
            for name in order[round_index % len(order):] + order[:round_index % len(order)]:
                if name == "plain":
                    runs[name].append(plain_loop(plan, epochs=epochs, threads=2))
                    continue
                engine, compression, cycle = variant(name)
                preset = os.environ.pop("HOROVOD_CYCLE_TIME", None)
                if cycle is not None:
                    os.environ["HOROVOD_CYCLE_TIME"] = cycle
                try:
                    result = run_training(spark, load_config(overrides=[
                        *train_over, f"train.engine={engine}", f"train.grad_compression={compression}",
                        f"train.output={root / f'{name}-{round_index}'}"]))
                finally:
                    os.environ.pop("HOROVOD_CYCLE_TIME", None)
                    if preset is not None:
                        os.environ["HOROVOD_CYCLE_TIME"] = preset
                rates = [h["images_per_sec"] for h in result["history"]]
                runs[name].append(sum(rates[1:]) / max(1, len(rates) - 1))
                seconds[name].append(result["driver_seconds"])
                print(f"{size} px round {round_index + 1}/{rounds}: {name} {runs[name][-1]:.1f} images/s",
                      file=sys.stderr, flush=True)
        loader = loader_rate(data.shards, spec, task=task, batch_size=batch_size,
                             threads=int(train_cfg["loader_threads"]))
    finally:
        data.delete()
    record = {"image_size": size, "rounds": rounds,
              "runs_images_per_sec": {name: [round(rate, 2) for rate in rates] for name, rates in runs.items()}}
    plain = statistics.median(runs["plain"])
    record["plain_1x2_images_per_sec"] = round(plain, 2)
    for name in variants:
        record[f"{name}_2x1_images_per_sec"] = round(statistics.median(runs[name]), 2)
        record[f"{name}_seconds_total"] = round(statistics.median(seconds[name]), 1)
        record[f"{name}_vs_plain"] = round(statistics.median(runs[name]) / plain, 3)
        per_round = [rate / base for rate, base in zip(runs[name], runs["plain"])]
        record[f"{name}_vs_plain_per_round"] = [round(ratio, 3) for ratio in per_round]
        record[f"{name}_vs_plain_paired"] = round(statistics.median(per_round), 3)
    record["loader_images_per_sec"] = round(loader, 2)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="classify", choices=["classify", "segment"])
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--image-sizes", default="64,128", help="comma-separated sizes (default 64,128)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats of every measurement (median)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated engine variants to measure beside the plain loop (default: "
                             f"{', '.join(VARIANTS)}; the goal's are {', '.join(ENGINES)}; also {CYCLE_PREFIX}<N>, "
                             f"Horovod with HOROVOD_CYCLE_TIME=N ms)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    variants = tuple(name.strip() for name in args.variants.split(",") if name.strip())
    for name in variants:
        try:
            variant(name)
        except ValueError:
            parser.error(f"--variants: unknown variant {name!r} (known: {', '.join(VARIANTS)}, {CYCLE_PREFIX}<N>)")
    if not set(ENGINES) <= set(variants):
        parser.error(f"--variants must include {', '.join(ENGINES)} (the goal's), got {args.variants!r}")
    try:
        sizes = [int(size) for size in args.image_sizes.split(",") if size.strip()]
    except ValueError:
        parser.error(f"--image-sizes must be comma-separated integers, got {args.image_sizes!r}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if not sizes or min(sizes) < 32 or args.epochs < 2:
        parser.error(f"--image-sizes must be >= 32 and --epochs >= 2, got {args.image_sizes!r}, {args.epochs}")

    from classeg.config import load_config
    from classeg.spark import get_spark

    work = Path(args.workdir or tempfile.mkdtemp(prefix="classeg-train-throughput-"))
    spark = get_spark(load_config(overrides=["spark.master=local[2]"]))
    runs = [one_size(spark, work, task=args.task, size=size, patients=args.patients, epochs=args.epochs,
                     batch_size=args.batch_size, rounds=args.rounds, variants=variants) for size in sizes]
    from datetime import datetime, timezone

    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_average_at_end":
              list(os.getloadavg()), "task": args.task, "batch_size_per_process": args.batch_size,
              "rounds": args.rounds,
              "patients": args.patients,
              "epochs": args.epochs, "goal": GOAL, "sizes": runs}
    for suffix in ("vs_plain", "vs_plain_paired"):
        record.update({f"min_{engine}_{suffix}": min(run[f"{engine}_{suffix}"] for run in runs) for engine in ENGINES})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2))
    names = ["plain_1x2", *(f"{name}_2x1" for name in variants)]
    print("| size | " + " | ".join(names) + " | " + " | ".join(f"{name}/plain" for name in variants) + " |")
    print("|---" * (1 + len(names) + len(variants)) + "|")
    for run in runs:
        print(f"| {run['image_size']} | " + " | ".join(str(run[f"{name}_images_per_sec"]) for name in names) + " | "
              + " | ".join(str(run[f"{name}_vs_plain"]) for name in variants) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
