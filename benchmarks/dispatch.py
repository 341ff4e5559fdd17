"""What the training loader's threads cost the thread that dispatches the training step (issue 17).

    .venv/bin/python benchmarks/dispatch.py [--device cpu|cuda] [--image-size 224] [--batch-size 256]
                                            [--scans 2048] [--threads 2] [--rate R] [--seconds 3] [--rounds 5]
                                            [--out PATH]

A training step's host side is one thread issuing many small operations (on a GPU, kernel launches), each
releasing and retaking the GIL; beside it the cache loader (`classeg.training.cache.open_pass`: reader and
gather threads) reads and collates batches. On the H200 the training epoch reached 0.77x the train-step
ceiling with the loader and 0.91x without it (BENCHMARKS.md, GPU). This measures how much of such a gap the
interpreter lock makes, apart from the cores: a stand-in for the dispatching thread, a loop of in-place adds
on a one-element tensor on ``--device``, is timed

- ``alone``;
- ``loader_threads``: beside the loader running on threads of this process;
- ``loader_process``: beside the same loader in a child process (forked; it never touches CUDA),

the loader taking its batches at the same ``--rate`` batches/s in both (default: half of what it delivers
alone here). Both put the same work on the machine's cores; only ``loader_threads`` shares the interpreter.
``threads_vs_process`` (the median over ``--rounds`` of their ratio, each round measuring all three in turn)
is the GIL's share: 1 means the threads cost the dispatching thread nothing a process would not;
``process_vs_alone`` is the cores'. On a machine with cores to spare (the GPU machine has 16) the second is
about 1 and the first is the whole of it. ``benchmarks/gpu.py`` runs this with the launches on the GPU.

The cache: synthetic 256 px scans (``benchmarks/gpu.py``'s phantom pool) decoded to the input size, as
`prepare_split` writes it, in Parquet files of 128 rows. Writes benchmarks/results/dispatch.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

RESULTS = ROOT / "benchmarks" / "results" / "dispatch.json"
#: The dispatching stand-in issues its operations in chunks of this many between clock reads.
CHUNK = 1000
#: Seconds the loader runs before a measurement starts (its first files read, its queue filled).
LOADER_WARMUP = 0.5
VARIANTS = ("alone", "loader_threads", "loader_process")
log = logging.getLogger("benchmarks.dispatch")


def paced_passes(urls, *, rows: int, input_spec: dict, batch_size: int, threads: int, rate: float | None,
                 stop, delivered) -> None:
    """Shuffled loader passes over ``urls``, their batches taken at ``rate`` per second (None: as fast as they
    come), until ``stop`` (an Event) is set; ``delivered`` (a shared integer) counts the batches taken."""
    from classeg.training.cache import open_pass

    due, seed = time.perf_counter(), 0
    while not stop.is_set():
        seed += 1
        with open_pass(urls, rank=0, size=1, expected_rows=rows, what="the dispatch benchmark's cache",
                       task="classify", input_spec=input_spec, batch_size=batch_size, threads=threads,
                       shuffle=True, seed=seed, pin=False) as batches:
            for _ in batches:
                with delivered.get_lock():
                    delivered.value += 1
                if rate is not None:  # the next batch 1/rate after this one, or at once if late (no catching up)
                    now = time.perf_counter()
                    due = max(due + 1 / rate, now)
                    stop.wait(due - now)
                if stop.is_set():
                    return


def dispatch_rate(torch, device, seconds: float) -> float:
    """Operations per second of the dispatching stand-in over about ``seconds``."""
    value = torch.zeros(1, device=device)
    for _ in range(CHUNK):  # warm-up (on CUDA the first launch loads the kernel)
        value.add_(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ops, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(CHUNK):
            value.add_(1)
        ops += CHUNK
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return ops / (time.perf_counter() - started)


@contextlib.contextmanager
def _loader_running(loader: dict, *, in_process: bool):
    """`paced_passes` of ``loader`` on a thread of this process or in a forked child; yields a function giving
    the batches taken so far. Stopped and joined on leaving."""
    context = multiprocessing.get_context("fork")
    stop, delivered = context.Event(), context.Value("q", 0)
    runner = (context.Process if in_process else threading.Thread)(
        target=paced_passes, kwargs={**loader, "stop": stop, "delivered": delivered}, daemon=True)
    runner.start()
    try:
        time.sleep(LOADER_WARMUP)
        yield lambda: delivered.value
    finally:
        stop.set()
        runner.join(timeout=60)
    if in_process and runner.exitcode not in (0, None):
        raise RuntimeError(f"the loader process exited with {runner.exitcode}")


def _beside(variant: str, loader: dict, torch, device, seconds: float) -> dict:
    """The dispatch rate with the loader beside it as ``variant`` says, and the batches/s the loader took."""
    if variant == "alone":
        return {"ops_per_sec": dispatch_rate(torch, device, seconds)}
    with _loader_running(loader, in_process=variant == "loader_process") as taken:
        before, started = taken(), time.perf_counter()
        rate = dispatch_rate(torch, device, seconds)
        batches = (taken() - before) / (time.perf_counter() - started)
    return {"ops_per_sec": rate, "loader_batches_per_sec": batches}


def loader_rate(loader: dict, seconds: float) -> float:
    """Batches per second the loader delivers alone, taken as fast as they come, on a thread of this process."""
    with _loader_running({**loader, "rate": None}, in_process=False) as taken:
        before, started = taken(), time.perf_counter()
        time.sleep(seconds)
        return (taken() - before) / (time.perf_counter() - started)


def measure(urls, *, rows: int, input_spec: dict, batch_size: int, threads: int, device, seconds: float,
            rounds: int, rate: float | None = None) -> dict:
    """The three variants ``rounds`` times (their order rotated each round); medians and ratios."""
    import torch

    loader = {"urls": list(urls), "rows": rows, "input_spec": input_spec, "batch_size": batch_size,
              "threads": threads}
    alone_rate = loader_rate(loader, seconds)
    if rate is None:
        rate = alone_rate / 2
    loader["rate"] = rate
    log.info("loader alone %.1f batches/s; paced at %.1f", alone_rate, rate)
    per_round = []
    for index in range(rounds):
        order = VARIANTS[index % 3:] + VARIANTS[:index % 3]
        measured = {variant: _beside(variant, loader, torch, device, seconds) for variant in order}
        log.info("round %d: %s", index + 1, ", ".join(f"{v} {measured[v]['ops_per_sec']:,.0f} ops/s"
                                                      for v in VARIANTS))
        per_round.append(measured)

    def median(variant: str, field: str) -> float:
        return statistics.median(r[variant][field] for r in per_round)

    return {"device": str(device), "batch_size": batch_size, "threads": threads, "rows": rows,
            "image_size": input_spec["size"], "seconds": seconds, "rounds": per_round,
            "loader_alone_batches_per_sec": alone_rate, "rate_requested": rate,
            "ops_per_sec": {variant: median(variant, "ops_per_sec") for variant in VARIANTS},
            "loader_batches_per_sec": {variant: median(variant, "loader_batches_per_sec")
                                       for variant in VARIANTS[1:]},
            "threads_vs_process": statistics.median(r["loader_threads"]["ops_per_sec"]
                                                    / r["loader_process"]["ops_per_sec"] for r in per_round),
            "process_vs_alone": statistics.median(r["loader_process"]["ops_per_sec"] / r["alone"]["ops_per_sec"]
                                                  for r in per_round)}


def write_cache(folder: Path, *, scans: int, image_size: int) -> tuple[list[str], dict]:
    """``scans`` rows of decoded synthetic scans at ``image_size`` (gpu.py's phantom pool, cycled), 128 rows a
    file. Returns (the file URLs, the input spec)."""
    import dataclasses

    import gpu  # benchmarks/gpu.py, beside this script
    sizes = dataclasses.replace(gpu.Sizes(), classifier_size=image_size, train_rows=scans, phantoms=64)
    shards, input_spec = gpu.write_train_cache(folder, gpu.phantom_pool(sizes.phantoms, sizes.scan_size), sizes)
    return list(shards.file_urls), input_spec


def _parser() -> argparse.ArgumentParser:
    def positive(kind):
        def parse(text: str):
            value = kind(text)
            if not value > 0:
                raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
            return value
        return parse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the dispatching stand-in's operations run (default cpu)")
    parser.add_argument("--image-size", type=positive(int), default=224, help="cache pixels' side (default 224)")
    parser.add_argument("--batch-size", type=positive(int), default=256, help="images per batch (default 256)")
    parser.add_argument("--scans", type=positive(int), default=2048, help="rows in the cache (default 2048)")
    parser.add_argument("--threads", type=positive(int), default=2, help="loader reader threads (default 2)")
    parser.add_argument("--rate", type=positive(float), default=None,
                        help="batches/s the loader is taken at (default: half its rate alone)")
    parser.add_argument("--seconds", type=positive(float), default=3.0, help="each measurement's span (default 3)")
    parser.add_argument("--rounds", type=positive(int), default=5, help="rounds of the three variants (default 5)")
    parser.add_argument("--out", default=str(RESULTS), help=f"JSON output (default {RESULTS})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="classeg-dispatch-bench-") as folder:
        log.info("writing a cache of %d rows at %d px", args.scans, args.image_size)
        urls, spec = write_cache(Path(folder), scans=args.scans, image_size=args.image_size)
        result = measure(urls, rows=args.scans, input_spec=spec, batch_size=args.batch_size, threads=args.threads,
                         device=torch.device(args.device), seconds=args.seconds, rounds=args.rounds, rate=args.rate)
    result = {"benchmark": "dispatch", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **result}
    text = json.dumps(result, indent=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
