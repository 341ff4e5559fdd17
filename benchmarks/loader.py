"""One rank's training loader: images/s it delivers from the decoded cache (read, collate, pinned where CUDA
is), per core used, with the batched augmentation timed apart, against the old per-image path in the same
process (issue 17). Writes benchmarks/results/loader.json.

    .venv/bin/python benchmarks/loader.py --image-size 224 [--augment] [--threads N] [--scans 1024]
                                          [--batch-size 64] [--passes 3] [--out PATH]

Synthetic LGG-style scans (256 px, 3 channels: FLAIR/T1/T1C+ phantom slices, half with a lesion, distinct
ones cycled) are PNG-encoded as the scan table stores them, turned into cache rows by
`classeg.training.cache.cache_row` (what Spark's executors run in `prepare_split`) and written as Parquet
files of 128 rows, one row group each, as the Petastorm converter writes them. Then, in this process:

- loader: ``--passes`` shuffled passes of `classeg.training.cache.open_pass` over every file (``--threads``
  reader threads, batches of ``--batch-size``; the first pass warms up and is not counted). Images/s over the
  wall clock; per core = images / CPU seconds of the whole process over the same span (all its threads).
- augment (``--augment``): `classeg.training.augment.model_inputs` with augmentation on the CPU (uint8 to
  float, flips, rotation, intensity, normalisation) over those batches, torch on one thread; per core the same
  way. The device path on a GPU is `benchmarks/gpu.py`'s.
- baseline: `classeg.training.data.decode_example` per image (PNG decode, preprocess, and with ``--augment``
  the numpy augmentation), one thread: what every rank did per image per epoch before the cache.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import classeg  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "lib"))

RESULTS = ROOT / "benchmarks" / "results" / "loader.json"
#: Issue 17's goals: loader images/s per core, and batched CPU augmentation against the old per-core rate.
GOALS = {"images_per_sec_per_core": 2000.0, "augment_vs_old_per_core": 4.0}
#: The old path's augmented rate per core that issue 17 measured (the goal is 4x this).
ISSUE_OLD_AUGMENTED_PER_CORE = 92.0
SCAN_SIZE = 256
ROWS_PER_FILE = 128
log = logging.getLogger("benchmarks.loader")


def scan_pngs(count: int, *, distinct: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """``count`` (image PNG, mask PNG) pairs of 256 px 3-channel phantom slices (``distinct`` ones, cycled)."""
    import numpy as np

    from classeg import imaging
    from classeg.synthetic.layouts import LGG_CHANNELS
    from classeg.synthetic.phantom import LESION_KINDS, phantom_slice, random_anatomy, random_lesion

    rng = np.random.default_rng(seed)
    pool = []
    for index in range(distinct):
        lesion = random_lesion(rng, kind=LESION_KINDS[index // 2 % len(LESION_KINDS)]) if index % 2 else None
        image, mask = phantom_slice(rng, size=SCAN_SIZE, anatomy=random_anatomy(rng),
                                    slice_pos=float(rng.uniform(0.3, 0.7)), lesion=lesion, contrasts=LGG_CHANNELS)
        pool.append((imaging.encode_png(np.rint(image * 255).astype(np.uint8)),
                     imaging.encode_png(mask.astype(np.uint8) * 255)))
    return [pool[i % distinct] for i in range(count)]


def write_cache(folder: Path, pngs: list, *, task: str, input_spec: dict) -> list[str]:
    """The scans as cache files of ``ROWS_PER_FILE`` rows (via `cache_row`), their URLs in order."""
    import numpy as np
    import pyarrow.parquet as pq

    from classeg.training import cache

    names = cache.columns(task)
    size, channels = input_spec["size"], input_spec["channels"]
    urls = []
    for start in range(0, len(pngs), ROWS_PER_FILE):
        rows = [cache.cache_row({"scan_id": format(0xA000000000000000 + i, "016x"), "image": image, "mask": mask,
                                 "label": i % 2}, task=task, input_spec=input_spec)
                for i, (image, mask) in enumerate(pngs[start:start + ROWS_PER_FILE], start=start)]
        images = np.stack([np.frombuffer(r[2], np.uint8).reshape(channels, size, size) for r in rows])
        table = cache.cache_table([r[0] for r in rows], images, labels=[r[names.index("label")] for r in rows])
        path = folder / f"part-{start // ROWS_PER_FILE:05d}.parquet"
        pq.write_table(table, path)
        urls.append(path.as_uri())
    return urls


class Clock:
    """Wall and process CPU seconds (all threads) over a span."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def measure_loader(urls: list[str], *, rows: int, input_spec: dict, batch_size: int, threads: int, passes: int,
                   augment: bool) -> dict:
    """Loader passes (the first one warms up), and with ``augment`` the batched CPU augmentation of the
    batches the last pass delivered, timed apart."""
    import torch

    from classeg.training.augment import model_inputs
    from classeg.training.cache import open_pass

    pin = torch.cuda.is_available()
    delivered, kept = 0, []
    loader_clock = None
    for index in range(passes):
        with Clock() as clock, open_pass(urls, rank=0, size=1, expected_rows=rows, what="the benchmark cache",
                                         task="classify", input_spec=input_spec, batch_size=batch_size,
                                         threads=threads, shuffle=True, seed=index + 1, pin=pin) as shard:
            batches = list(shard)
        if index == 0:
            continue
        delivered += sum(len(b["scan_key"]) for b in batches)
        loader_clock = clock if loader_clock is None else _add(loader_clock, clock)
        kept = batches
    result = {"images": delivered, "seconds": loader_clock.wall, "cpu_seconds": loader_clock.cpu,
              "images_per_sec": delivered / loader_clock.wall,
              "images_per_sec_per_core": delivered / loader_clock.cpu, "pinned": pin,
              "cores_used": loader_clock.cpu / loader_clock.wall}
    if augment:
        torch.set_num_threads(1)
        device = torch.device("cpu")
        for batch in kept[:2]:  # warm-up
            model_inputs(batch, task="classify", input_spec=input_spec, device=device, augment=True, seed=0, epoch=0)
        with Clock() as clock:
            for epoch in range(2):
                for batch in kept:
                    model_inputs(batch, task="classify", input_spec=input_spec, device=device, augment=True,
                                 seed=0, epoch=epoch)
        images = 2 * sum(len(b["scan_key"]) for b in kept)
        result.update({"augment_images": images, "augment_seconds": clock.wall,
                       "augment_images_per_sec": images / clock.wall,
                       "augment_images_per_sec_per_core": images / clock.cpu})
    return result


def _add(first: Clock, second: Clock) -> Clock:
    total = Clock()
    total.wall, total.cpu = first.wall + second.wall, first.cpu + second.cpu
    return total


def measure_baseline(pngs: list, *, input_spec: dict, augment: bool, count: int) -> dict:
    """``decode_example`` per image, one thread, ``count`` images (after a few warm-up ones)."""
    from classeg.training.data import decode_example

    def one(i: int) -> None:
        image, _ = pngs[i % len(pngs)]
        decode_example(image, None, task="classify", input_spec=input_spec, augment=augment, seed=0, epoch=0,
                       scan_id=format(0xA000000000000000 + i, "016x"))

    for i in range(4):
        one(i)
    with Clock() as clock:
        for i in range(count):
            one(i)
    return {"images_per_sec": count / clock.wall, "images_per_sec_per_core": count / clock.cpu}


def _parser() -> argparse.ArgumentParser:
    def positive_int(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
        return value

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=positive_int, default=224, help="model input side (default 224)")
    parser.add_argument("--augment", action="store_true", help="also time the batched augmentation on the CPU")
    parser.add_argument("--threads", type=positive_int, default=2, help="reader threads (default 2)")
    parser.add_argument("--scans", type=positive_int, default=1024, help="scans in the cache (default 1024)")
    parser.add_argument("--distinct", type=positive_int, default=64, help="distinct phantom slices (default 64)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default 64)")
    parser.add_argument("--passes", type=positive_int, default=3,
                        help="loader passes, the first a warm-up (default 3; at least 2)")
    parser.add_argument("--baseline-images", type=positive_int, default=200,
                        help="images through the old per-image path (default 200)")
    parser.add_argument("--out", default=str(RESULTS), help=f"JSON output (default {RESULTS})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.passes < 2:
        raise SystemExit(f"--passes must be at least 2 (the first is a warm-up), got {args.passes}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from classeg.training.job import input_spec

    spec = input_spec("classify", image_size=args.image_size, channels=3)
    log.info("%d synthetic scans (%d distinct) at %d px", args.scans, args.distinct, SCAN_SIZE)
    pngs = scan_pngs(args.scans, distinct=args.distinct)
    with tempfile.TemporaryDirectory(prefix="classeg-loader-bench-") as folder:
        log.info("writing the cache at %d px", args.image_size)
        urls = write_cache(Path(folder), pngs, task="classify", input_spec=spec)
        cache_bytes = sum(os.path.getsize(url[len("file://"):]) for url in urls)
        log.info("loader: %d passes, %d threads, batch %d", args.passes, args.threads, args.batch_size)
        loader = measure_loader(urls, rows=args.scans, input_spec=spec, batch_size=args.batch_size,
                                threads=args.threads, passes=args.passes, augment=args.augment)
    log.info("baseline: decode_example x %d", args.baseline_images)
    old = measure_baseline(pngs, input_spec=spec, augment=False, count=args.baseline_images)
    result = {"benchmark": "loader", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "image_size": args.image_size, "augment": args.augment, "threads": args.threads,
              "batch_size": args.batch_size, "scans": args.scans, "scan_size": SCAN_SIZE,
              "cache_mib": round(cache_bytes / 2 ** 20, 1),
              "images_per_sec": loader["images_per_sec"], "images_per_sec_per_core": loader["images_per_sec_per_core"],
              "cores_used": loader["cores_used"], "pinned": loader["pinned"],
              "old_images_per_sec_per_core": old["images_per_sec_per_core"],
              "loader_vs_old_per_core": loader["images_per_sec_per_core"] / old["images_per_sec_per_core"],
              "augment_images_per_sec_per_core": None, "goals": GOALS}
    if args.augment:
        old_augmented = measure_baseline(pngs, input_spec=spec, augment=True, count=args.baseline_images)
        result.update({"augment_images_per_sec_per_core": loader["augment_images_per_sec_per_core"],
                       "augment_images_per_sec": loader["augment_images_per_sec"],
                       "old_augmented_images_per_sec_per_core": old_augmented["images_per_sec_per_core"],
                       "augment_vs_old_per_core": (loader["augment_images_per_sec_per_core"]
                                                   / old_augmented["images_per_sec_per_core"]),
                       "augment_vs_issue_92_per_core": (loader["augment_images_per_sec_per_core"]
                                                        / ISSUE_OLD_AUGMENTED_PER_CORE)})
    text = json.dumps(result, indent=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
