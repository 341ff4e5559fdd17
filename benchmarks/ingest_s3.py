"""Ingest from S3: the decode tasks' read-ahead (``ingest.fetch_threads``) against reading each object when the
decoder asks for it (``ingest.fetch_threads=1``), same job, same objects, same process.

The objects live on a moto S3 server (server mode, 127.0.0.1) started by this script; the job runs on
local[2] from an already started SparkSession after a warm-up run, reading ``s3://`` through boto3 in its
tasks and writing the table to a local folder. The two settings run alternately ``--attempts`` times; the best
of each is compared. Ratio = seconds with fetch_threads=1 / seconds with the read-ahead, so > 1 means the
read-ahead is faster.

    python benchmarks/ingest_s3.py [--patients 25] [--threads 8] [--attempts 3]
                                   [--json benchmarks/results/ingest_s3.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "tests"))  # s3util: the moto server helpers the tests use

from classeg.config import load_config  # noqa: E402
from classeg import synthetic  # noqa: E402
from classeg.ingest.job import run_ingest  # noqa: E402
from classeg.spark import get_spark  # noqa: E402
from s3util import aws_test_env, direct_client, put_objects, start_moto, stop_moto  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=25)
    parser.add_argument("--threads", type=int, default=8, help="fetch_threads of the read-ahead runs")
    parser.add_argument("--attempts", type=int, default=3, help="alternating runs of each setting")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ingest_s3.json"))
    args = parser.parse_args()
    os.environ.update(aws_test_env())  # dummy credentials, before the JVM (and so the Python workers) start
    work = Path(args.workdir or tempfile.mkdtemp(prefix="classeg-bench-ingest-s3-"))
    data = work / "lgg"
    if not data.exists():
        synthetic.write_lgg(data, patients=args.patients, seed=0, image_size=256, slices_per_patient=(18, 22),
                            duplicate_copy=False)
    server, endpoint = start_moto()
    try:
        client = direct_client(endpoint)
        client.create_bucket(Bucket="bench")
        objects = {"lgg/" + path.relative_to(data).as_posix(): path.read_bytes()
                   for path in sorted(data.rglob("*")) if path.is_file()}
        put_objects(client, "bench", objects, threads=8)

        def cfg(threads: int, out: Path):
            return load_config(overrides=[
                "spark.master=local[2]", "ingest.dataset=lgg", "ingest.input=s3://bench/lgg", f"ingest.output={out}",
                "ingest.max_error_rate=0", f"ingest.fetch_threads={threads}", f"s3.endpoint_url={endpoint}"])

        spark = get_spark(cfg(1, work / "unused"), app_name="classeg-bench-ingest-s3")
        run_ingest(spark, cfg(args.threads, work / "warm"))
        seconds: dict[int, list[float]] = {1: [], args.threads: []}
        for attempt in range(args.attempts):
            for threads in seconds:
                started = time.perf_counter()
                summary = run_ingest(spark, cfg(threads, work / f"table-{threads}"))
                seconds[threads].append(round(time.perf_counter() - started, 3))
                print(f"attempt {attempt}, fetch_threads={threads}: {seconds[threads][-1]:.2f} s, "
                      f"{summary['scans']} scans", flush=True)
        spark.stop()
    finally:
        stop_moto(server)
    plain, ahead = min(seconds[1]), min(seconds[args.threads])
    report = {
        "benchmark": "ingest_s3", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "objects": len(objects), "slices": summary["scans"], "fetch_threads": args.threads,
        "seconds_fetch_threads_1": plain, f"seconds_fetch_threads_{args.threads}": ahead,
        "ratio": round(plain / ahead, 3),
        "median_ratio": round(statistics.median(seconds[1]) / statistics.median(seconds[args.threads]), 3),
        "runs": {str(k): v for k, v in seconds.items()},
        "method": f"best of {args.attempts} alternating runs; moto S3 server on 127.0.0.1, job on local[2]",
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"read-ahead ({args.threads} threads) vs one read at a time: {report['ratio']}x best, "
          f"{report['median_ratio']}x medians ({plain:.2f} s vs {ahead:.2f} s)")


if __name__ == "__main__":
    main()
