"""Throughput of the scoring job (Spark local[2], mapInPandas) against a plain single-process PyTorch loop,
and the peak memory of its Python workers.

    python benchmarks/score.py [--scans 2000] [--rss-sizes 1000,4000] [--model-size 128] [--repeats 2]
                               [--quick] [--workdir DIR] [--json benchmarks/results/score.json]

Data: synthetic LGG-style 256x256 3-channel uint8 TIFFs (64 distinct phantoms, half with a lesion, each file a
slightly shifted copy so no two files are identical) in a local folder.

Models: a ResNet18 classifier (linear head) at ``--model-size`` input and the Class-Seg ResUNet (base 16
filters) at the same size, with untrained random weights saved as real artifacts: throughput does not depend
on what the weights are. Untrained, the classifier says about the same thing for every scan, so the benchmark
sets ``tumor_threshold`` to the median tumour probability of the first batches: about half the scans are
"tumour" and segmented, a realistic share. Both sides use that threshold, so they segment the same scans.

The job's summary gives its tasks' seconds per stage (``stage_seconds``: fetch, decode, preprocess, classify,
segment, encode, write, summed over tasks and threads) and the host's cost per image beside the models
(``host_ms_per_image``: fetch + decode + encode); they are recorded with each job run.

The plain loop is one Python process with torch using 2 threads (the machine's 2 cores): read each file,
decode (classeg.imaging), preprocess (Artifact.preprocess), classify each batch, segment the positives,
resize the masks to the original size and PNG-encode them, batch size as the job. The job is
``classeg.scoring.ScoreJob`` on a local[2] SparkSession (1 torch thread per task, 2 tasks), started and
warmed up (one small run: Python workers started, models cached) before timing; its time covers listing,
the manifest, scoring, writing Parquet, the read-back checks and the manifest record. Session start and the
cold first run are reported separately. The two sides run alternately ``--repeats`` times on the same scans
and the best run of each is compared (the median ratio is recorded too): on a shared machine the load of
other processes otherwise decides the ratio.

Peak RSS per Python worker: the job's Python worker processes are sampled every 0.2 s while it scores
``--rss-sizes`` scans; flat means the peak does not grow with the number of scans.

Results go to ``--json`` and a markdown table is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import classeg  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "lib"))

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # Spark's Python workers: torch threads are set per task

import numpy as np  # noqa: E402

THREADS = 2
DISTINCT_PHANTOMS = 64


# ---------------------------------------------------------------------------------------------- data and models
def write_scans(folder: Path, count: int, size: int) -> list[Path]:
    import tifffile

    from classeg import synthetic

    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.tif"))
    if len(existing) == count:
        return existing
    shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    phantoms = []
    for index in range(DISTINCT_PHANTOMS):
        lesion = synthetic.random_lesion(rng, kind="low_grade_glioma") if index % 2 == 0 else None
        image, _ = synthetic.phantom_slice(rng, size=size, anatomy=synthetic.random_anatomy(rng), slice_pos=0.5,
                                           lesion=lesion, contrasts=synthetic.LGG_CHANNELS)
        phantoms.append(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))
    paths = []
    for index in range(count):
        pixels = np.roll(phantoms[index % DISTINCT_PHANTOMS], shift=index // DISTINCT_PHANTOMS % 9, axis=1)
        path = folder / f"scan_{index:05d}.tif"
        tifffile.imwrite(path, pixels, photometric="rgb", metadata=None)
        paths.append(path)
    return paths


def subset(folder: Path, paths: list[Path], count: int) -> Path:
    """A folder holding hard links to the first ``count`` scans (archives of several sizes, one copy on disk)."""
    if folder.is_dir() and len(list(folder.iterdir())) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in paths[:count]:
        os.link(path, folder / path.name)
    return folder


def save_models(folder: Path, size: int) -> tuple[str, str]:
    import torch

    from classeg.artifact import save_artifact
    from classeg.models import build_classifier, build_resunet

    torch.manual_seed(0)
    classifier = build_classifier(arch="resnet18", num_classes=2, input_size=size).eval()
    segmenter = build_resunet(in_channels=3, base_filters=16).eval()
    classifier_uri, segmenter_uri = str(folder / "classifier"), str(folder / "segmenter")
    save_artifact(classifier_uri, model=classifier, task="classify", class_names=["no_tumor", "tumor"],
                  input_spec={"size": size, "channels": 3, "mean": list(classifier.mean),
                              "std": list(classifier.std), "zscore": False})
    save_artifact(segmenter_uri, model=segmenter, task="segment", class_names=["background", "tumor"],
                  input_spec={"size": size, "channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3, "zscore": True})
    return classifier_uri, segmenter_uri


# ---------------------------------------------------------------------------------------------- plain loop
class PlainLoop:
    """The baseline: read, decode, preprocess, classify a batch, segment the positives, masks to PNG."""

    def __init__(self, classifier_uri: str, segmenter_uri: str, *, channels_last: bool):
        import torch

        from classeg.artifact import load_artifact

        torch.set_num_threads(THREADS)
        self.torch = torch
        self.classifier = load_artifact(classifier_uri, expect_task="classify")
        self.segmenter = load_artifact(segmenter_uri, expect_task="segment")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for artifact in (self.classifier, self.segmenter):
            artifact.model.to(memory_format=self.memory_format)

    def _run(self, model, arrays):
        x = self.torch.from_numpy(np.stack(arrays)).contiguous(memory_format=self.memory_format)
        with self.torch.inference_mode():
            return model(x)

    def tumor_probabilities(self, paths: list[Path], batch_size: int) -> np.ndarray:
        from classeg import imaging

        out = []
        for start in range(0, len(paths), batch_size):
            scans = [imaging.to_uint8(imaging.decode_scan(p.read_bytes(), p.name)) for p in paths[start:start + batch_size]]
            logits = self._run(self.classifier.model, [self.classifier.preprocess(s) for s in scans])
            out.append(self.torch.softmax(logits, 1)[:, 1].numpy())
        return np.concatenate(out)

    def score(self, paths: list[Path], *, batch_size: int, tumor_threshold: float, mask_threshold: float = 0.5) -> dict:
        import torch.nn.functional as F

        from classeg import imaging

        torch = self.torch
        started = time.perf_counter()
        tumours = 0
        for start in range(0, len(paths), batch_size):
            scans = [imaging.to_uint8(imaging.decode_scan(p.read_bytes(), p.name)) for p in paths[start:start + batch_size]]
            logits = self._run(self.classifier.model, [self.classifier.preprocess(s) for s in scans])
            probability = torch.softmax(logits.float(), 1)[:, 1].numpy()
            positives = np.flatnonzero(probability >= tumor_threshold)
            tumours += positives.size
            if positives.size:
                maps = torch.sigmoid(self._run(self.segmenter.model, [self.segmenter.preprocess(scans[i])
                                                                      for i in positives]))
                for i, prob in zip(positives, maps):
                    height, width = scans[i].shape[:2]
                    prob = F.interpolate(prob[None], size=(height, width), mode="bilinear", align_corners=False)[0]
                    imaging.encode_png((prob[0] >= mask_threshold).numpy())
        seconds = time.perf_counter() - started
        return {"scans": len(paths), "tumor": int(tumours), "seconds": round(seconds, 3),
                "images_per_s": round(len(paths) / seconds, 3)}


# ---------------------------------------------------------------------------------------------- the job
class WorkerMemory:
    """Samples the RSS of the Spark Python worker processes (children of this driver) every ``interval`` s."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _workers(self):
        import psutil

        for process in psutil.Process().children(recursive=True):
            try:
                if "pyspark.daemon" in " ".join(process.cmdline()) and process.parent() is not None and \
                        "pyspark.daemon" in " ".join(process.parent().cmdline()):
                    yield process  # a worker forked by the daemon (not the daemon itself)
            except psutil.Error:
                continue

    def _sample(self):
        import psutil

        while not self._stop.is_set():
            for process in self._workers():
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self.peaks[process.pid] = max(self.peaks.get(process.pid, 0), rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        mib = {pid: round(rss / 2**20, 1) for pid, rss in self.peaks.items()}
        return {"workers": len(mib), "peak_rss_mib_max": max(mib.values(), default=None),
                "peak_rss_mib_by_worker": sorted(mib.values())}


def job_config(archive: Path, output: Path, classifier: str, segmenter: str, *, batch_size: int,
               tumor_threshold: float, channels_last: bool):
    from classeg.config import load_config

    return load_config(values={
        "score.archive": str(archive), "score.output": str(output), "score.classifier": classifier,
        "score.segmenter": segmenter, "score.batch_size": batch_size, "score.tumor_threshold": tumor_threshold,
        "score.full": True, "score.channels_last": channels_last, "score.fetch_threads": 4,
    }, overrides=["spark.master=local[2]", "spark.shuffle_partitions=4"])


def run_job(spark, cfg, output: Path) -> tuple[dict, float]:
    from classeg.scoring import ScoreJob

    shutil.rmtree(output, ignore_errors=True)
    job = ScoreJob.from_config(cfg)
    started = time.perf_counter()
    summary = job.run(spark)
    return summary, time.perf_counter() - started


def alternate_runs(spark, loop: PlainLoop, paths: list[Path], archive: Path, output: Path, config, *,
                   repeats: int, batch_size: int, tumor_threshold: float) -> dict:
    """Score the same scans with the plain loop (``paths``) and the job (``archive``, the folder holding them,
    written to ``output``; ``config(archive, output)`` builds the job's config) alternately ``repeats`` times,
    so that both see the same machine. Returns every run, the best of each side (on a shared machine the load
    of other processes otherwise decides the ratio) and the ratios of the best and of the medians."""
    plain_runs, job_runs = [], []
    for repeat in range(repeats):
        print(f"plain loop ({repeat + 1}/{repeats}) ...", flush=True)
        plain_runs.append(loop.score(paths, batch_size=batch_size, tumor_threshold=tumor_threshold))
        print(f"plain loop: {plain_runs[-1]}", flush=True)
        print(f"job ({repeat + 1}/{repeats}) ...", flush=True)
        with WorkerMemory() as memory:
            job_summary, job_seconds = run_job(spark, config(archive, output), output)
        job_runs.append({"scans": job_summary["scored"], "tumor": job_summary["tumor"],
                         "seconds": round(job_seconds, 3),
                         "images_per_s": round(job_summary["scored"] / job_seconds, 3),
                         "scoring_stage_images_per_s": job_summary["images_per_s"],
                         "partitions": job_summary["partitions"], "errors": job_summary["errors"],
                         "stage_seconds": job_summary["stage_seconds"],
                         "model_batches": job_summary["model_batches"], "largest_batch": job_summary["largest_batch"],
                         "host_ms_per_image": job_summary["host_ms_per_image"], **memory.summary()})
        print(f"job: {job_runs[-1]}", flush=True)
    plain = max(plain_runs, key=lambda run: run["images_per_s"])
    job = max(job_runs, key=lambda run: run["images_per_s"])
    median_ratio = float(np.median([r["images_per_s"] for r in job_runs]) /
                         np.median([r["images_per_s"] for r in plain_runs]))
    return {"plain_loop_runs": plain_runs, "job_runs": job_runs, "plain_loop": plain, "job": job,
            "job_vs_plain": job["images_per_s"] / plain["images_per_s"], "job_vs_plain_median": median_ratio}


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=2000, help="scans for the throughput comparison")
    parser.add_argument("--rss-sizes", default="1000,4000", help="archive sizes for the worker memory runs")
    parser.add_argument("--image-size", type=int, default=256, help="side of the scan files")
    parser.add_argument("--model-size", type=int, default=128, help="model input side (<= 224; multiple of 16)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side; best is reported")
    parser.add_argument("--no-channels-last", action="store_true", help="contiguous NCHW tensors on both sides")
    parser.add_argument("--quick", action="store_true", help="400 scans, RSS at 200 and 800, 64 px models")
    parser.add_argument("--workdir", default=None, help="data and outputs (default: a folder under /tmp)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "score.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.scans, args.rss_sizes, args.model_size = 400, "200,800", 64
    rss_sizes = [int(size) for size in args.rss_sizes.split(",") if size]
    channels_last = not args.no_channels_last
    work = Path(args.workdir or f"/tmp/classeg-bench-score-{args.image_size}")
    work.mkdir(parents=True, exist_ok=True)
    largest = max([args.scans, *rss_sizes])
    began = time.perf_counter()

    print(f"writing {largest} scans to {work}", flush=True)
    paths = write_scans(work / f"scans-{largest}", largest, args.image_size)
    classifier, segmenter = save_models(work / "models", args.model_size)

    loop = PlainLoop(classifier, segmenter, channels_last=channels_last)
    sample = loop.tumor_probabilities(paths[:4 * args.batch_size], args.batch_size)
    threshold = float(np.median(sample))
    print(f"tumor_threshold = {threshold:.6f} (median of {len(sample)} scans)", flush=True)
    throughput_paths = paths[:args.scans]
    loop.score(throughput_paths[:args.batch_size], batch_size=args.batch_size, tumor_threshold=threshold)  # warm-up

    from classeg.config import load_config
    from classeg.spark import get_spark

    started = time.perf_counter()
    spark = get_spark(load_config(overrides=["spark.master=local[2]", "spark.shuffle_partitions=4"]),
                      app_name="classeg-bench-score")
    session_seconds = time.perf_counter() - started

    def config(archive, output):
        return job_config(archive, output, classifier, segmenter, batch_size=args.batch_size,
                          tumor_threshold=threshold, channels_last=channels_last)

    warm = subset(work / "scans-warmup", paths, 2 * args.batch_size * 2)
    _, cold_seconds = run_job(spark, config(warm, work / "out-warmup"), work / "out-warmup")
    print(f"job cold start (workers + models): {cold_seconds:.1f}s", flush=True)

    archive = subset(work / f"scans-{args.scans}", paths, args.scans)
    compared = alternate_runs(spark, loop, throughput_paths, archive, work / "out-job", config,
                              repeats=args.repeats, batch_size=args.batch_size, tumor_threshold=threshold)
    del loop
    plain_runs, job_runs, plain, job = (compared[key] for key in ("plain_loop_runs", "job_runs", "plain_loop", "job"))

    rss = []
    for size in rss_sizes:
        folder = subset(work / f"scans-{size}", paths, size)
        with WorkerMemory() as memory:
            summary, seconds = run_job(spark, config(folder, work / f"out-rss-{size}"), work / f"out-rss-{size}")
        rss.append({"scans": size, "seconds": round(seconds, 3), "images_per_s": round(size / seconds, 3),
                    **memory.summary()})
        print(f"rss {size}: {rss[-1]}", flush=True)
    spark.stop()

    import torch

    ratio, median_ratio = compared["job_vs_plain"], compared["job_vs_plain_median"]
    result = {
        "benchmark": "score.job_vs_plain_loop",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "threads": THREADS, "quick": args.quick,
        "scan_files": f"{args.image_size}x{args.image_size}x3 uint8 TIFF", "model_size": args.model_size,
        "classifier": "resnet18 linear (random weights)", "segmenter": "resunet base_filters=16 (random weights)",
        "batch_size": args.batch_size, "channels_last": channels_last, "tumor_threshold": threshold,
        "spark_session_start_s": round(session_seconds, 3), "job_cold_start_s": round(cold_seconds, 3),
        "repeats": args.repeats, "plain_loop": plain, "job": job, "job_vs_plain": round(ratio, 3),
        "job_vs_plain_median": round(median_ratio, 3), "goal": 0.85,
        "plain_loop_runs": plain_runs, "job_runs": job_runs,
        "worker_rss": rss, "elapsed_s": round(time.perf_counter() - began, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print()
    print("| run | scans | tumour | seconds | images/s |")
    print("|---|---|---|---|---|")
    print(f"| plain PyTorch loop (1 process, {THREADS} threads) | {plain['scans']} | {plain['tumor']} | "
          f"{plain['seconds']} | {plain['images_per_s']} |")
    print(f"| scoring job (local[2], whole run) | {job['scans']} | {job['tumor']} | {job['seconds']} | "
          f"{job['images_per_s']} |")
    stages = job["stage_seconds"]
    print(f"\njob stage seconds (summed over tasks and threads): {stages}; host (fetch + decode + encode) "
          f"{job['host_ms_per_image']} ms per image, preprocess on the device (here the CPU) "
          f"{1000 * stages['preprocess'] / max(job['scans'], 1):.2f} ms per image")
    print(f"\njob / plain = **{ratio:.2f}x** best of {args.repeats} each ({median_ratio:.2f}x median; goal >= 0.85). "
          f"Spark session start {session_seconds:.1f}s, "
          f"cold first run {cold_seconds:.1f}s (not in the timings).\n")
    print("| archive scans | seconds | peak RSS per Python worker (MiB, max) | workers |")
    print("|---|---|---|---|")
    for entry in rss:
        print(f"| {entry['scans']} | {entry['seconds']} | {entry['peak_rss_mib_max']} | {entry['workers']} |")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
