"""Forward-pass throughput of the classeg models on this machine's CPU.

Measures images/s of ResNet18 and ResNet50 (linear head) and the Class-Seg ResUNet at 224 and 256 pixels,
eval mode, fp32 under ``torch.no_grad()``, batch 32, with contiguous (NCHW) and channels_last memory
formats, torch using every core. Each configuration runs warm-up batches, then timed batches; the
reported rate is ``batch * timed batches / elapsed``, plus the fastest single batch.

    python benchmarks/models.py [--quick] [--json benchmarks/results/models.json]

``--quick`` times one batch per configuration after one warm-up (about half the runtime). Numbers on a
loaded machine are noisy; compare runs made under the same conditions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import classeg  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "lib"))

import torch  # noqa: E402

from classeg.models.classifier import build_classifier  # noqa: E402
from classeg.models.resunet import build_resunet  # noqa: E402

MODELS = ("resnet18", "resnet50", "resunet")
SIZES = (224, 256)
FORMATS = ("contiguous", "channels_last")


def build(name: str) -> torch.nn.Module:
    if name == "resunet":
        return build_resunet(in_channels=3, base_filters=16).eval()
    return build_classifier(arch=name, num_classes=2, head="linear").eval()


def time_model(model: torch.nn.Module, *, size: int, memory_format: str, batch: int, warmup: int,
               reps: int) -> dict:
    x = torch.randn(batch, 3, size, size)
    if memory_format == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        model = model.to(memory_format=torch.contiguous_format)
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        for _ in range(reps):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    total = sum(times)
    return {
        "images_per_s": batch * reps / total,
        "best_images_per_s": batch / min(times),
        "seconds_per_batch": total / reps,
        "batch_times_s": times,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 1 timed batch per configuration")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "models.json"),
                        help="where to write the results (default: benchmarks/results/models.json)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=None, help="warm-up batches (default 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed batches (default 3, --quick 1)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    args = parser.parse_args(argv)
    warmup = 1 if args.warmup is None else args.warmup
    reps = (1 if args.quick else 3) if args.reps is None else args.reps
    if args.batch_size < 1 or reps < 1 or warmup < 0:
        parser.error(f"need batch-size >= 1, reps >= 1, warmup >= 0; got {args.batch_size}, {reps}, {warmup}")

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    results = []
    print(f"torch {torch.__version__}, {threads} threads, batch {args.batch_size}, warmup {warmup}, reps {reps}",
          flush=True)
    header = f"{'model':<10} {'size':>5} {'format':<14} {'images/s':>9} {'best/s':>8} {'s/batch':>8}"
    print(header)
    print("-" * len(header), flush=True)
    started = time.perf_counter()
    for name in args.models:
        model = build(name)
        for size in args.sizes:
            for memory_format in FORMATS:
                result = time_model(model, size=size, memory_format=memory_format, batch=args.batch_size,
                                    warmup=warmup, reps=reps)
                results.append({"model": name, "size": size, "format": memory_format, **result})
                print(f"{name:<10} {size:>5} {memory_format:<14} {result['images_per_s']:>9.1f} "
                      f"{result['best_images_per_s']:>8.1f} {result['seconds_per_batch']:>8.2f}", flush=True)
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s")

    report = {
        "benchmark": "models.forward",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": "cpu",
        "dtype": "float32",
        "batch_size": args.batch_size,
        "warmup": warmup,
        "reps": reps,
        "quick": args.quick,
        "elapsed_s": elapsed,
        "results": results,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
