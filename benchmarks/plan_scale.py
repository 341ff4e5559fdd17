"""Planning a scoring run at archive scale (issue 16): the manifest read, the pending anti-join, the tasks and
the record of a run, with the manifest 90% full, at growing object counts; seconds and the driver's peak RSS
(its Python process and the Spark JVM).

    python benchmarks/plan_scale.py [--sizes 100000,1000000] [--with-1e7] [--quick] [--workdir DIR]
                                    [--json benchmarks/results/plan_scale.json]

Per size N (ascending), on a local[2] session:

* listing: an ``objects_frame``-shaped pandas frame of N made-up S3 objects (no file is created; the listing
  itself is not timed: listing S3 or an inventory is another measurement);
* manifest: 0.9 N objects recorded at their listed version and 0.05 N at an older one (changed since), as
  16 Parquet files in the layout earlier runs leave (written with pyarrow, not timed);
* plan (timed, what ``ScoreJob`` does, with ``score.plan_only``'s changed count): :func:`plan_pending` from
  ``Manifest.open``: the listing into Spark, the left anti-join with the manifest on (uri, version), its
  count, the changed objects' count, the tasks at ``score.objects_per_task`` = 2000;
* partition (timed): the pending objects shuffled into those tasks (a ``noop`` write: no Python worker);
* record (timed): :meth:`Manifest.record_frame` of the run's 0.1 N rows read back from Parquet, as the job
  records them; the files under ``_manifest/`` before and after;
* compact (timed): the 17 files rewritten into a few (:meth:`Manifest.compact`);
* baseline (timed): the in-memory path on the same manifest (``Manifest.load`` then ``pending`` of the pandas
  listing), the way every run planned before.

Peak RSS: ``VmHWM`` of this process and of the Spark JVM (``/proc/<pid>/status``; the JVM's pid from py4j's
gateway, else psutil over this process's children), both reset before each step through
``/proc/<pid>/clear_refs`` where the kernel allows it (``peak_reset`` says whether it did; without it peaks are
lifetime peaks, which ascending sizes keep meaningful), and ``resource.getrusage`` for this process. The
listing frame's own size is reported beside them: it is the job's input, not the planning's doing.
Growth exponent between sizes: log(seconds ratio) / log(size ratio); 1 is linear.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import classeg  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "lib"))

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

SCORED_SHARE = 0.9
CHANGED_SHARE = 0.05
SETUP_FILES = 16
OBJECTS_PER_TASK = 2000


# ---------------------------------------------------------------------------------------------- data
def synthetic_listing(count: int):
    """An objects_frame-shaped listing of ``count`` made-up S3 objects, slices of 100 per 'series' folder."""
    import numpy as np
    import pandas as pd

    index = np.arange(count)
    etags = [f"{(i * 2654435761) % 2**64:016x}{i:016x}" for i in range(count)]
    keys = [f"study{i // 10_000:05d}/series{i // 100:07d}/slice{i:09d}.dcm" for i in range(count)]
    frame = pd.DataFrame({"uri": [f"s3://bench-archive/scans/{key}" for key in keys], "key": keys,
                          "size": 520_000 + index % 4096, "etag": etags, "mtime": 1.7e9 + index.astype("float64"),
                          "version": etags})
    return frame.astype({"size": "int64", "mtime": "float64"})


def write_manifest(output: Path, objects) -> int:
    """0.9 N pairs at the listed version and 0.05 N at an older one, as SETUP_FILES earlier runs' files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = len(objects)
    scored, changed = int(count * SCORED_SHARE), int(count * CHANGED_SHARE)
    uris = objects["uri"].iloc[:scored + changed]
    versions = pa.array(list(objects["version"].iloc[:scored]) + ["old-" + v for v in objects["version"].iloc[
        scored:scored + changed]], type=pa.string())
    folder = output / "_manifest"
    folder.mkdir(parents=True)
    rows = len(uris)
    step = -(-rows // SETUP_FILES)
    now = pa.scalar(datetime.now(timezone.utc), pa.timestamp("us", "UTC"))
    for part, start in enumerate(range(0, rows, step)):
        stop = min(rows, start + step)
        table = pa.table({"uri": pa.array(uris.iloc[start:stop], type=pa.string()), "version": versions[start:stop],
                          "status": pa.repeat(pa.scalar("ok"), stop - start),
                          "run_id": pa.repeat(pa.scalar(f"setup-{part:02d}"), stop - start),
                          "recorded_at": pa.repeat(now, stop - start)})
        pq.write_table(table, folder / f"setup-{part:02d}-000000000000.parquet")
    return rows


# ---------------------------------------------------------------------------------------------- memory
def jvm_pid(spark) -> int | None:
    """The Spark JVM's pid: py4j's gateway process when it is java (spark-submit execs it), else a java child."""
    gateway = spark.sparkContext._gateway
    for name in ("java_process", "proc"):
        process = getattr(gateway, name, None)
        pid = getattr(process, "pid", None)
        if pid and Path(f"/proc/{pid}/comm").is_file() and Path(f"/proc/{pid}/comm").read_text().strip() == "java":
            return pid
    import psutil

    for child in psutil.Process().children(recursive=True):
        if "java" in child.name():
            return child.pid
    return None


def peak_mib(pid: int | str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def reset_peaks(*pids) -> bool:
    """Reset the peak RSS of these processes (clear_refs 5); False where the kernel refuses."""
    done = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            done = False
    return done


def timed(step, *, jvm: int | None, peaks: dict, name: str, reset: list):
    reset.append(reset_peaks("self", *([jvm] if jvm else [])))
    started = time.perf_counter()
    value = step()
    seconds = round(time.perf_counter() - started, 3)
    peaks[name] = {"python": peak_mib("self"), "jvm": peak_mib(jvm) if jvm else None}
    return value, seconds


# ---------------------------------------------------------------------------------------------- one size
def measure(spark, count: int, work: Path) -> dict:
    from classeg.scoring.job import plan_pending
    from classeg.scoring.table import Manifest

    output = work / f"out-{count}"
    shutil.rmtree(output, ignore_errors=True)
    objects = synthetic_listing(count)
    recorded = write_manifest(output, objects)
    jvm = jvm_pid(spark)
    seconds, peaks, reset = {}, {}, []

    def make_plan():
        return plan_pending(spark, objects, Manifest.open(output), objects_per_task=OBJECTS_PER_TASK,
                            count_changed=True)

    plan, seconds["plan"] = timed(make_plan, jvm=jvm, peaks=peaks, name="plan", reset=reset)
    _, seconds["partition"] = timed(lambda: plan.frame.write.format("noop").mode("overwrite").save(), jvm=jvm,
                                    peaks=peaks, name="partition", reset=reset)
    run_rows = work / f"run-{count}"
    plan.frame.selectExpr("uri", "version", "'ok' as status", "cast(null as string) as error") \
        .write.mode("overwrite").parquet(str(run_rows))
    summary = {"objects": count, "manifest_rows": recorded, "already_scored": plan.already_scored,
               "changed": plan.changed, "new": plan.new, "pending": plan.pending, "tasks": plan.tasks}
    plan.release()
    read_back = spark.read.parquet(str(run_rows))
    manifest = Manifest.open(output)
    files_before = len(manifest.files)
    written, seconds["record"] = timed(lambda: manifest.record_frame("bench-run", read_back, rows=summary["pending"]),
                                       jvm=jvm, peaks=peaks, name="record", reset=reset)
    summary.update(manifest_files_before=files_before, manifest_files_written=len(written),
                   manifest_files_after=len(Manifest.open(output).files))
    _, seconds["compact"] = timed(lambda: Manifest.open(output).compact(spark, max_files=SETUP_FILES // 2), jvm=jvm,
                                  peaks=peaks, name="compact", reset=reset)
    summary["manifest_files_compacted"] = len(Manifest.open(output).files)
    # The same answer from the in-memory path (the baseline) on the compacted manifest.
    baseline, seconds["baseline_in_memory"] = timed(lambda: len(Manifest.load(output).pending(objects)), jvm=jvm,
                                                    peaks=peaks, name="baseline_in_memory", reset=reset)
    summary.update(baseline_pending=baseline, listing_frame_mib=round(objects.memory_usage(deep=True).sum() / 2**20, 1))
    assert baseline == 0, baseline  # the run's objects were recorded: nothing is pending any more
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(run_rows, ignore_errors=True)
    planning = ("plan", "partition", "record", "compact")
    summary.update(
        seconds=seconds, planning_seconds=round(seconds["plan"] + seconds["partition"], 3), peaks_mib=peaks,
        driver_peak_rss_mib={
            "python": max(peaks[step]["python"] or 0 for step in planning),
            "jvm": max(peaks[step]["jvm"] or 0 for step in planning),
            "python_getrusage": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
        peak_reset=all(reset))
    summary["driver_peak_rss_mib"]["total"] = round(summary["driver_peak_rss_mib"]["python"]
                                                    + summary["driver_peak_rss_mib"]["jvm"], 1)
    return summary


def exponents(runs: list[dict], key) -> list[dict]:
    found = []
    for small, large in zip(runs, runs[1:]):
        a, b = key(small), key(large)
        if a and b and a > 0 and b > 0:
            found.append({"from": small["objects"], "to": large["objects"],
                          "exponent": round(math.log(b / a) / math.log(large["objects"] / small["objects"]), 3)})
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="object counts, ascending")
    parser.add_argument("--with-1e7", action="store_true", help="also 10^7 objects (slow on 2 cores)")
    parser.add_argument("--quick", action="store_true", help="10^4 and 10^5 objects")
    parser.add_argument("--workdir", default=None, help="outputs (default: a folder under /tmp)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "plan_scale.json"))
    args = parser.parse_args(argv)
    sizes = [10_000, 100_000] if args.quick else [int(float(size)) for size in args.sizes.split(",")]
    if args.with_1e7:
        sizes.append(10_000_000)
    sizes = sorted(set(sizes))
    work = Path(args.workdir or "/tmp/classeg-bench-plan-scale")
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    from classeg.config import load_config
    from classeg.spark import get_spark

    spark = get_spark(load_config(overrides=["spark.master=local[2]", "spark.shuffle_partitions=4"]),
                      app_name="classeg-bench-plan-scale")
    measure(spark, 2_000, work)  # warm-up: JVM classes, the first joins' code generation
    runs = []
    for count in sizes:
        runs.append(measure(spark, count, work))
        print(json.dumps(runs[-1]), flush=True)
    pyspark_version = spark.version
    spark.stop()

    result = {
        "benchmark": "plan_scale",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "pyspark": pyspark_version, "cpu_count": os.cpu_count(),
        "master": "local[2]", "scored_share": SCORED_SHARE, "changed_share": CHANGED_SHARE,
        "objects_per_task": OBJECTS_PER_TASK, "setup_files": SETUP_FILES, "quick": args.quick,
        "objects": [run["objects"] for run in runs],
        "seconds": [run["planning_seconds"] for run in runs],
        "driver_peak_rss_mib": [run["driver_peak_rss_mib"]["total"] for run in runs],
        "growth_exponent": {
            "planning": exponents(runs, lambda run: run["planning_seconds"]),
            "record": exponents(runs, lambda run: run["seconds"]["record"]),
            "driver_peak_rss": exponents(runs, lambda run: run["driver_peak_rss_mib"]["total"]),
            "baseline_in_memory": exponents(runs, lambda run: run["seconds"]["baseline_in_memory"])},
        "runs": runs, "elapsed_s": round(time.perf_counter() - began, 1),
        "method": "manifest 90% full (5% of the listing changed since); plan = plan_pending with the changed "
                  "count; partition = noop write of the pending objects in their tasks; record = record_frame "
                  "of the run's rows read back; peaks reset per step with clear_refs where allowed",
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
