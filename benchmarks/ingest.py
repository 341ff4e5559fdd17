"""Ingest throughput: the Spark job on local[2] against a single-process Python loop doing the same work.

Both sides decode each LGG slice and its mask (TIFF), resize to the canonical size, PNG-encode, and write
Parquet, on the same synthetic files. The Spark job is timed from an already started SparkSession; the
session start and a first (cold Python workers) run are reported separately, since both are paid once per
cluster job, not per slice. Ratio = job slices/s / loop slices/s, same process, same files.

    python benchmarks/ingest.py [--patients 110] [--image-size 256] [--json benchmarks/results/ingest.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from classeg import synthetic  # noqa: E402
from classeg.config import load_config  # noqa: E402
from classeg.datasets import lgg  # noqa: E402
from classeg.ingest.job import run_ingest  # noqa: E402
from classeg.ingest.write import write_parquet  # noqa: E402
from classeg.spark import get_spark  # noqa: E402


def plain_loop(root: Path, out: Path, image_size: int) -> int:
    """The single-process baseline: walk, pair, decode, resize, encode, write one Parquet file."""
    rows = []
    for folder in sorted((root / "kaggle_3m").iterdir()):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.tif")):
            if path.name.endswith("_mask.tif"):
                continue
            mask_path = path.with_name(path.stem + "_mask.tif")
            rel = path.relative_to(root).as_posix()
            image = lgg.decode(rel, path.read_bytes(), image_size=image_size)
            mask = lgg.decode(rel.replace(".tif", "_mask.tif"), mask_path.read_bytes(), image_size=image_size)
            rows.append({"source_uri": str(path), "image": image["image"], "mask": mask["mask"],
                         "has_tumor": mask["has_tumor"], "patient_id": lgg.patient_of(folder.name)})
    table = pa.Table.from_pandas(pd.DataFrame(rows))
    write_parquet(table, str(out / "part-0.parquet"))  # the job's writer and options
    return len(rows)


def cpu_seconds() -> dict[str, float]:
    """CPU-seconds used so far by this process ('driver': it runs the loop too), the Spark JVM and the Python
    workers (every other child), summed over the processes alive now."""
    import psutil

    totals = {"driver": 0.0, "jvm": 0.0, "workers": 0.0}
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            times, name = process.cpu_times(), process.name()
        except psutil.Error:  # a worker that just exited
            continue
        kind = "driver" if process.pid == me.pid else "jvm" if "java" in name else "workers"
        totals[kind] += times.user + times.system
    return totals


def _spent(before: dict, after: dict) -> dict:
    return {kind: round(after[kind] - before[kind], 2) for kind in before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=110)
    parser.add_argument("--slices", default="18,22", help="slices per patient range (min,max)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--attempts", type=int, default=5, help="alternating loop/job runs; the best of each counts")
    parser.add_argument("--json", default="benchmarks/results/ingest.json")
    args = parser.parse_args()
    low, high = (int(x) for x in args.slices.split(","))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="classeg-bench-ingest-"))
    data = work / "lgg"
    if not data.exists():
        synthetic.write_lgg(data, patients=args.patients, seed=0, image_size=256, slices_per_patient=(low, high),
                            duplicate_copy=False)
    warm = work / "lgg-warm"
    if not warm.exists():
        synthetic.write_lgg(warm, patients=3, seed=1, image_size=256, slices_per_patient=(4, 5),
                            duplicate_copy=False)

    def cfg(src, out):
        return load_config(overrides=["spark.master=local[2]", "spark.shuffle_partitions=4",
                                      "ingest.dataset=lgg", f"ingest.input={src}", f"ingest.output={out}",
                                      f"ingest.image_size={args.image_size}", "ingest.max_error_rate=0"])

    started = time.perf_counter()
    spark = get_spark(cfg(data, work / "t"), app_name="classeg-bench-ingest")
    session_seconds = time.perf_counter() - started

    started = time.perf_counter()
    run_ingest(spark, cfg(warm, work / "warm-table"))
    cold_seconds = time.perf_counter() - started

    results = {}
    for attempt in range(args.attempts):
        shutil.rmtree(work / "loop-table", ignore_errors=True)
        cpu_start, started = cpu_seconds(), time.perf_counter()
        slices = plain_loop(data, work / "loop-table", args.image_size)
        loop_seconds, cpu_loop = time.perf_counter() - started, cpu_seconds()
        started = time.perf_counter()
        summary = run_ingest(spark, cfg(data, work / "job-table"))
        job_seconds, cpu_job = time.perf_counter() - started, cpu_seconds()
        assert summary["scans"] == slices, (summary["scans"], slices)
        results[attempt] = (loop_seconds, job_seconds, summary["phase_seconds"],
                            _spent(cpu_start, cpu_loop)["driver"], _spent(cpu_loop, cpu_job))
    loop_seconds = min(r[0] for r in results.values())
    job_seconds = min(r[1] for r in results.values())
    report = {
        "benchmark": "ingest", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "slices": slices, "files": 2 * slices, "image_size": args.image_size,
        "session_start_seconds": round(session_seconds, 2), "first_small_job_seconds": round(cold_seconds, 2),
        "loop_seconds": round(loop_seconds, 2), "job_seconds": round(job_seconds, 2),
        "loop_slices_per_s": round(slices / loop_seconds, 1), "job_slices_per_s": round(slices / job_seconds, 1),
        "ratio": round(loop_seconds / job_seconds, 3), "goal": 1.6,
        "median_ratio": round(statistics.median(r[0] for r in results.values())
                              / statistics.median(r[1] for r in results.values()), 3),
        "runs": {str(k): {"loop_seconds": round(v[0], 2), "job_seconds": round(v[1], 2), "job_phase_seconds": v[2],
                          "loop_cpu_seconds": v[3], "job_cpu_seconds": v[4]}
                 for k, v in results.items()},
        "method": f"best of {args.attempts} alternating runs each; job timed from a started local[2] session after a "
                  "warm-up job; loop = one Python process doing the same decode/resize/PNG work and the same Parquet "
                  "write (the job's writer)",
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"| slices | loop slices/s | job slices/s | ratio (goal >= 1.6) | session start s |\n|---|---|---|---|---|\n"
          f"| {slices} | {report['loop_slices_per_s']} | {report['job_slices_per_s']} | {report['ratio']} | "
          f"{report['session_start_seconds']} |")
    spark.stop()


if __name__ == "__main__":
    main()
