"""What two 1-thread CPU ranks can reach against one 2-thread process, with the loader, Spark and the engines
taken away: the ceiling under `benchmarks/train_throughput.py`'s engine ratios (issue 17). Writes
benchmarks/results/cpu_scaling.json.

    .venv/bin/python benchmarks/cpu_scaling.py [--image-sizes 64,128] [--steps 30] [--rounds 2]

Per image size, the default classifier (ResNet18, 2 classes, linear head) trains on one random batch of 16 per
process (AdamW), in these modes, each ``--rounds`` times interleaved (the median counts):

- ``plain``: one process, torch on 2 threads (the baseline of train_throughput.py);
- ``independent``: two processes at once, 1 thread each, no communication (what 2x1 gives at best);
- ``ddp``: the same two processes averaging gradients with DistributedDataParallel over Gloo (bucket
  `classeg.training.collectives.DDP_BUCKET_MB`), as the torch engine's ranks do on the CPU;
- ``ddp_fp16``: the same with DDP's ``fp16_compress_hook`` (``train.grad_compression=fp16``).

Images/s is over all processes; per mode the mean forward, backward (with DDP's allreduce inside it) and
optimizer milliseconds per step of rank 0. Also the time of one Gloo allreduce of a tensor the size of the
model's gradients (fp32 and bf16) between two 1-thread processes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cpu_scaling.json"
MODES = (("plain", 1, 2), ("independent", 2, 1), ("ddp", 2, 1), ("ddp_fp16", 2, 1))
BATCH = 16


def _lib() -> None:
    try:
        import classeg  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT / "lib"))


def _rank(rank: int, world: int, mode: str, size: int, steps: int, threads: int, port: int, out) -> None:
    _lib()
    import torch

    from classeg.models import build_classifier
    from classeg.training.collectives import DDP_BUCKET_MB

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_classifier(arch="resnet18", num_classes=2, head="linear", input_size=size)
    if mode.startswith("ddp"):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=DDP_BUCKET_MB,
                                                          gradient_as_bucket_view=True)
        if mode == "ddp_fp16":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, labels = torch.randn(BATCH, 3, size, size), torch.randint(0, 2, (BATCH,))
    phases = dict.fromkeys(("forward", "backward", "optimizer"), 0.0)
    warmup = 3
    for step in range(warmup + steps):
        if step == warmup:
            phases = dict.fromkeys(phases, 0.0)
            started = time.perf_counter()
        tick = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        tock = time.perf_counter()
        loss.backward()
        tack = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        phases["forward"] += tock - tick
        phases["backward"] += tack - tock
        phases["optimizer"] += time.perf_counter() - tack
    seconds = time.perf_counter() - started
    if mode.startswith("ddp"):
        torch.distributed.destroy_process_group()
    out.put({"rank": rank, "images_per_sec": BATCH * steps / seconds,
             "ms_per_step": {name: round(value / steps * 1e3, 1) for name, value in phases.items()}})


def _allreduce(rank: int, port: int, numel: int, out) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    result = {}
    for dtype in (torch.float32, torch.bfloat16):
        tensor = torch.randn(numel).to(dtype)
        for _ in range(2):
            torch.distributed.all_reduce(tensor)
        started = time.perf_counter()
        for _ in range(10):
            torch.distributed.all_reduce(tensor)
        result[str(dtype).replace("torch.", "")] = round((time.perf_counter() - started) / 10 * 1e3, 1)
    torch.distributed.destroy_process_group()
    out.put(result)


def _spawn(target, count: int, *args) -> list:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    processes = [ctx.Process(target=target, args=(rank, *args, out)) for rank in range(count)]
    for process in processes:
        process.start()
    results = [out.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode:
            raise RuntimeError(f"a {target.__name__} process exited with {process.exitcode}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-sizes", default="64,128")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        sizes = [int(size) for size in args.image_sizes.split(",") if size.strip()]
    except ValueError:
        parser.error(f"--image-sizes must be comma-separated integers, got {args.image_sizes!r}")
    if not sizes or min(sizes) < 32 or args.steps < 1 or args.rounds < 1:
        parser.error(f"--image-sizes must be >= 32, --steps and --rounds >= 1, got {args.image_sizes!r}, "
                     f"{args.steps}, {args.rounds}")
    _lib()
    from classeg.models import build_classifier

    numel = sum(p.numel() for p in build_classifier(arch="resnet18", num_classes=2, head="linear",
                                                    input_size=64).parameters())
    port = 29600
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": "resnet18",
              "batch_per_process": BATCH, "steps": args.steps, "rounds": args.rounds, "gradient_values": numel,
              "sizes": []}
    for size in sizes:
        runs: dict[str, list] = {mode: [] for mode, _, _ in MODES}
        for round_index in range(args.rounds):
            for mode, world, threads in MODES:
                port += 1
                results = sorted(_spawn(_rank, world, world, mode, size, args.steps, threads, port),
                                 key=lambda r: r["rank"])
                runs[mode].append({"images_per_sec": sum(r["images_per_sec"] for r in results),
                                   "ms_per_step": results[0]["ms_per_step"]})
                print(f"{size} px round {round_index + 1}: {mode} {runs[mode][-1]['images_per_sec']:.1f} images/s",
                      file=sys.stderr, flush=True)
        entry = {"image_size": size}
        for mode, _, _ in MODES:
            rates = [run["images_per_sec"] for run in runs[mode]]
            entry[mode] = {"images_per_sec": round(statistics.median(rates), 2), "runs": [round(r, 2) for r in rates],
                           "ms_per_step": runs[mode][-1]["ms_per_step"]}
        plain = entry["plain"]["images_per_sec"]
        entry["independent_vs_plain"] = round(entry["independent"]["images_per_sec"] / plain, 3)
        for mode, _, _ in MODES[1:]:
            entry[f"{mode}_vs_plain"] = round(entry[mode]["images_per_sec"] / plain, 3)
        record["sizes"].append(entry)
    port += 1
    record["gloo_allreduce_ms"] = _spawn(_allreduce, 2, port, numel)[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
