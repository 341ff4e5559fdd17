"""Planning a scoring run at archive scale (issue 16): listing, the manifest read, the pending anti-join, the
tasks and the record of a run, with the manifest 90% full, at growing object counts; seconds and the driver's
peak RSS (its Python process and the Spark JVM).

    python benchmarks/plan_scale.py [--sizes 100000,1000000] [--with-1e7] [--quick] [--workdir DIR]
                                    [--driver-memory 1g] [--memory-max 1000000]
                                    [--local-max 1000000]
                                    [--json benchmarks/results/plan_scale.json]

Per size N (ascending), on a local[2] session whose driver JVM has ``--driver-memory`` (in local mode the
executors run inside the driver JVM, so its peak includes the tasks' joins, sorts and cached blocks):

* inventory (the listing at scale): an S3 Inventory report of N objects of ``s3://bench-archive/scans/`` in
  AWS's layout on local disk (CSV, gzip, current versions; one data file per million objects, at least two),
  written by a separate process (not timed, so the driver's own memory stays that of the plan);
* local: a local tree of N empty files (100 per series folder, 10,000 per study), written the same way;
* manifest: for each source, 0.9 N objects recorded at their listed version and 0.05 N at an older one
  (changed since), as 16 Parquet files in the layout earlier runs leave (written with pyarrow, not timed);
* plan (timed, what ``ScoreJob`` does, with ``score.plan_only``'s changed count):
  :func:`classeg.scoring.listing.archive_listing` (the report's manifest read, or the tree's parts found, on the
  driver; the data files parsed, or the parts listed, in Spark tasks) and :func:`plan_pending` from
  ``Manifest.open``: the listing counted and cached, the left anti-join with the manifest on (uri, version), its
  count, the changed objects' count, the tasks at ``score.objects_per_task`` = 2000;
* partition (timed): the pending objects shuffled into those tasks (a ``noop`` write: no Python worker);
* record (timed): :meth:`Manifest.record_frame` of the run's 0.1 N rows read back from Parquet;
* memory (sizes up to ``--memory-max``, the earlier measurement kept for comparison): an ``objects_frame``-shaped
  pandas listing made up in the driver, planned the same way, then record, compact (the 17 files rewritten into
  a few) and the in-memory baseline (``Manifest.load`` then ``pending`` of the pandas listing).

Peak RSS: ``VmHWM`` of this process and of the Spark JVM (``/proc/<pid>/status``; the JVM's pid from py4j's
gateway, else psutil over this process's children), both reset before each step through
``/proc/<pid>/clear_refs`` where the kernel allows it (``peak_reset`` says whether it did; without it peaks are
lifetime peaks, which ascending sizes keep meaningful), and ``resource.getrusage`` for this process. The Python
workers that run the listing tasks are executors' processes, not the driver's: their peak is reported apart.
Growth exponent between sizes: log(seconds ratio) / log(size ratio); 1 is linear.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
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
ARCHIVE = "s3://bench-archive/scans/"
INVENTORY_ROWS_PER_FILE = 1_000_000
TREE_MTIME_NS = 1_700_000_000_123_456_789
STAMP = "2026-12-01T00-00Z"


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


# ---------------------------------------------------------------------------------------------- inventory and tree
# Run in a separate (spawned) process: the driver's peaks are those of the plan, not of making the data.

def object_key(index: int) -> str:
    return f"study{index // 10_000:05d}/series{index // 100:07d}/slice{index:09d}.dcm"


def object_etag(index: int) -> str:
    return f"{(index * 2654435761) % 2**64:016x}{index:016x}"


def write_pairs(output: Path, count: int, uri_and_version) -> int:
    """The manifest of earlier runs: 0.9 N pairs at the listed version and 0.05 N at an older one (changed since),
    as SETUP_FILES files, made in ranges so that no process holds all N."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scored, changed = int(count * SCORED_SHARE), int(count * CHANGED_SHARE)
    rows = scored + changed
    folder = output / "_manifest"
    folder.mkdir(parents=True)
    step = -(-rows // SETUP_FILES)
    now = pa.scalar(datetime.now(timezone.utc), pa.timestamp("us", "UTC"))
    for part, start in enumerate(range(0, rows, step)):
        stop = min(rows, start + step)
        pairs = [uri_and_version(index) for index in range(start, stop)]
        versions = [version if index < scored else "old-" + version
                    for index, (_, version) in zip(range(start, stop), pairs)]
        table = pa.table({"uri": pa.array([uri for uri, _ in pairs], type=pa.string()),
                          "version": pa.array(versions, type=pa.string()),
                          "status": pa.repeat(pa.scalar("ok"), stop - start),
                          "run_id": pa.repeat(pa.scalar(f"setup-{part:02d}"), stop - start),
                          "recorded_at": pa.repeat(now, stop - start)})
        pq.write_table(table, folder / f"setup-{part:02d}-000000000000.parquet")
    return rows


def _inventory_pair(index: int) -> tuple[str, str]:
    return f"{ARCHIVE}{object_key(index)}", object_etag(index)


def write_inventory(root: str, output: str, count: int) -> dict:
    """An S3 Inventory report of ``count`` objects of ARCHIVE in AWS's layout (CSV, gzip, no header, quoted
    fields, current-versions schema) under ``root``, and the manifest of earlier runs under ``output``."""
    base = Path(root) / "inventory" / "bench-archive" / "daily"
    (base / "data").mkdir(parents=True)
    files_count = max(2, -(-count // INVENTORY_ROWS_PER_FILE))
    step = -(-count // files_count)
    entries = []
    for part, start in enumerate(range(0, count, step)):
        lines = [f'"bench-archive","scans/{object_key(index)}","{520_000 + index % 4096}",'
                 f'"2026-11-30T{index % 24:02d}:00:00.000Z","{object_etag(index)}","STANDARD"\n'
                 for index in range(start, min(count, start + step))]
        data = gzip.compress("".join(lines).encode("ascii"), compresslevel=1)
        key = f"inventory/bench-archive/daily/data/{part:08x}-bench.csv.gz"
        (Path(root) / key).write_bytes(data)
        entries.append({"key": key, "size": len(data), "MD5checksum": hashlib.md5(data).hexdigest()})
    manifest = {"sourceBucket": "bench-archive", "destinationBucket": "arn:aws:s3:::bench-inventory",
                "version": "2016-11-30", "creationTimestamp": "1796083200000", "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass", "files": entries}
    body = json.dumps(manifest, indent=4).encode("utf-8")
    (base / STAMP).mkdir()
    (base / STAMP / "manifest.json").write_bytes(body)
    (base / STAMP / "manifest.checksum").write_text(hashlib.md5(body).hexdigest())
    recorded = write_pairs(Path(output), count, _inventory_pair)
    return {"manifest": str(base / STAMP / "manifest.json"), "data_files": len(entries),
            "data_mib": round(sum(entry["size"] for entry in entries) / 2**20, 1), "manifest_rows": recorded}


def write_tree(root: str, output: str, count: int) -> dict:
    """``count`` empty files under ``root`` (100 per series folder), every mtime TREE_MTIME_NS so that their
    versions are known without listing them, and the manifest of earlier runs under ``output``."""
    folder = None
    for index in range(count):
        if index % 100 == 0:
            folder = os.path.join(root, *object_key(index).split("/")[:2])
            os.makedirs(folder, exist_ok=True)
        descriptor = os.open(os.path.join(folder, f"slice{index:09d}.dcm"), os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.utime(descriptor, ns=(TREE_MTIME_NS, TREE_MTIME_NS))
        finally:
            os.close(descriptor)
    prefix = "file://" + os.path.abspath(root) + "/"
    recorded = write_pairs(Path(output), count, lambda index: (prefix + object_key(index), f"0-{TREE_MTIME_NS}"))
    return {"manifest_rows": recorded}


def in_subprocess(function, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def python_workers_peak_mib(jvm: int | None) -> float | None:
    """The largest VmHWM among the JVM's Python worker processes (the executors' side in local mode)."""
    if not jvm:
        return None
    import psutil

    peaks = [peak_mib(child.pid) for child in psutil.Process(jvm).children(recursive=True)
             if "python" in child.name()]
    return max((peak for peak in peaks if peak), default=None)


def measure_source(spark, count: int, work: Path, source: str) -> dict:
    """Plan, partition and record with the listing from an inventory report or a local tree (see the docstring)."""
    from classeg.scoring.job import plan_pending
    from classeg.scoring.listing import archive_listing
    from classeg.scoring.table import Manifest

    data, output = work / f"{source}-{count}", work / f"out-{source}-{count}"
    for path in (data, output):
        shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    if source == "inventory":
        made = in_subprocess(write_inventory, str(data), str(output), count)
        archive, inventory = ARCHIVE, made["manifest"]
    else:
        made = in_subprocess(write_tree, str(data), str(output), count)
        archive, inventory = str(data), None
    made["setup_seconds"] = round(time.perf_counter() - started, 1)
    jvm = jvm_pid(spark)
    seconds, peaks, reset = {}, {}, []

    def make_plan():
        listing = archive_listing(spark, archive, inventory=inventory)
        plan = plan_pending(spark, listing.frame, Manifest.open(output), objects_per_task=OBJECTS_PER_TASK,
                            count_changed=True)
        return listing, plan

    (listing, plan), seconds["plan"] = timed(make_plan, jvm=jvm, peaks=peaks, name="plan", reset=reset)
    _, seconds["partition"] = timed(lambda: plan.frame.write.format("noop").mode("overwrite").save(), jvm=jvm,
                                    peaks=peaks, name="partition", reset=reset)
    run_rows = work / f"run-{source}-{count}"
    plan.frame.selectExpr("uri", "version", "'ok' as status", "cast(null as string) as error") \
        .write.mode("overwrite").parquet(str(run_rows))
    summary = {"source": source, "objects": count, "listed": plan.listed, "already_scored": plan.already_scored,
               "changed": plan.changed, "new": plan.new, "pending": plan.pending, "tasks": plan.tasks,
               "listing_tasks": listing.tasks, "discovery_seconds": listing.seconds, **made}
    plan.release()
    assert plan.listed == count and plan.already_scored == int(count * SCORED_SHARE), summary
    manifest = Manifest.open(output)
    written, seconds["record"] = timed(lambda: manifest.record_frame("bench-run", spark.read.parquet(str(run_rows)),
                                                                     rows=summary["pending"]),
                                       jvm=jvm, peaks=peaks, name="record", reset=reset)
    summary["manifest_files_written"] = len(written)
    summary["python_workers_peak_mib"] = python_workers_peak_mib(jvm)
    for path in (data, output, run_rows):
        shutil.rmtree(path, ignore_errors=True)
    steps = ("plan", "partition", "record")
    summary.update(
        seconds=seconds, planning_seconds=round(seconds["plan"] + seconds["partition"], 3), peaks_mib=peaks,
        driver_peak_rss_mib={"python": max(peaks[step]["python"] or 0 for step in steps),
                             "jvm": max(peaks[step]["jvm"] or 0 for step in steps)},
        peak_reset=all(reset))
    summary["driver_peak_rss_mib"]["total"] = round(summary["driver_peak_rss_mib"]["python"]
                                                    + summary["driver_peak_rss_mib"]["jvm"], 1)
    return summary


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


def goal(runs: list[dict]) -> dict | None:
    """Issue 16's goal on local[2]: 10^7 objects planned in <= 180 s with the driver's peak <= 2 GB."""
    largest = [run for run in runs if run["objects"] >= 10_000_000]
    if not largest:
        return None
    run = largest[-1]
    return {"objects": run["objects"], "seconds": run["planning_seconds"], "seconds_goal": 180,
            "driver_peak_rss_mib": run["driver_peak_rss_mib"]["total"], "rss_goal_mib": 2048,
            "met": run["planning_seconds"] <= 180 and run["driver_peak_rss_mib"]["total"] <= 2048}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="object counts, ascending")
    parser.add_argument("--with-1e7", action="store_true", help="also 10^7 objects (slow on 2 cores)")
    parser.add_argument("--quick", action="store_true", help="10^4 and 10^5 objects")
    parser.add_argument("--sources", default="inventory,local,memory",
                        help="listings measured: inventory, local, memory (comma-separated)")
    parser.add_argument("--memory-max", type=int, default=1_000_000,
                        help="largest size for the in-driver (memory) listing and its baseline")
    parser.add_argument("--local-max", type=int, default=1_000_000,
                        help="largest size for the local tree (10^7 empty files take minutes and 10^7 inodes)")
    parser.add_argument("--driver-memory", default="1g", help="spark.driver.memory of the local session (its -Xmx)")
    parser.add_argument("--workdir", default=None, help="outputs (default: a folder under /tmp)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "plan_scale.json"))
    args = parser.parse_args(argv)
    sizes = [10_000, 100_000] if args.quick else [int(float(size)) for size in args.sizes.split(",")]
    if args.with_1e7:
        sizes.append(10_000_000)
    sizes = sorted(set(sizes))
    sources = [name.strip() for name in args.sources.split(",") if name.strip()]
    unknown = sorted(set(sources) - {"inventory", "local", "memory"})
    if unknown:
        parser.error(f"--sources: unknown {unknown}")
    work = Path(args.workdir or "/tmp/classeg-bench-plan-scale")
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    from classeg.config import load_config
    from classeg.spark import get_spark

    os.environ["CLASSEG_DRIVER_MEMORY"] = args.driver_memory  # read by get_spark for a local master
    spark = get_spark(load_config(overrides=["spark.master=local[2]", "spark.shuffle_partitions=4"]),
                      app_name="classeg-bench-plan-scale")
    measure(spark, 2_000, work)  # warm-up: JVM classes, the first joins' code generation
    for source in ("inventory", "local"):
        if source in sources:
            measure_source(spark, 2_000, work, source)
    by_source: dict[str, list[dict]] = {source: [] for source in sources}
    for count in sizes:
        for source in sources:
            if source == "memory":
                if count > args.memory_max:
                    continue
                run = measure(spark, count, work)
            else:
                if source == "local" and count > args.local_max:
                    continue
                run = measure_source(spark, count, work, source)
            by_source[source].append(run)
            print(json.dumps({"source": source, **run}), flush=True)
    pyspark_version = spark.version
    spark.stop()

    headline = by_source.get("inventory") or by_source.get("local") or by_source.get("memory") or []
    result = {
        "benchmark": "plan_scale",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "pyspark": pyspark_version, "cpu_count": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "master": "local[2]", "driver_memory": args.driver_memory, "scored_share": SCORED_SHARE,
        "changed_share": CHANGED_SHARE, "objects_per_task": OBJECTS_PER_TASK, "setup_files": SETUP_FILES,
        "quick": args.quick, "headline_source": headline[0]["source"] if headline and "source" in headline[0]
        else "memory",
        "objects": [run["objects"] for run in headline],
        "seconds": [run["planning_seconds"] for run in headline],
        "driver_peak_rss_mib": [run["driver_peak_rss_mib"]["total"] for run in headline],
        "goal": {source: goal(runs) for source, runs in by_source.items() if source != "memory"},
        "sources": {source: runs for source, runs in by_source.items() if source != "memory"},
        "growth_exponent": {
            **{f"{source}_planning": exponents(runs, lambda run: run["planning_seconds"])
               for source, runs in by_source.items() if source != "memory"},
            **{f"{source}_record": exponents(runs, lambda run: run["seconds"]["record"])
               for source, runs in by_source.items() if source != "memory"},
            **{f"{source}_driver_peak_rss": exponents(runs, lambda run: run["driver_peak_rss_mib"]["total"])
               for source, runs in by_source.items() if source != "memory"},
            "memory_planning": exponents(by_source.get("memory", []), lambda run: run["planning_seconds"]),
            "baseline_in_memory": exponents(by_source.get("memory", []),
                                            lambda run: run["seconds"]["baseline_in_memory"])},
        "runs": by_source.get("memory", []), "elapsed_s": round(time.perf_counter() - began, 1),
        "method": "manifest 90% full (5% of the listing changed since); plan = archive_listing + plan_pending "
                  "with the changed count (inventory: CSV report on local disk; local: a tree of empty files; "
                  "memory: a made-up pandas listing); partition = noop write of the pending objects in their "
                  "tasks; record = record_frame of the run's rows read back; peaks reset per step with "
                  "clear_refs where allowed",
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
