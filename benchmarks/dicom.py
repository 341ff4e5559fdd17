"""DICOM: decode cost per transfer syntax, and scoring throughput on a 16-bit MR archive (Spark job vs. the
plain loop of benchmarks/score.py).

    python benchmarks/dicom.py [--scans 200] [--image-size 256] [--model-size 128] [--repeats 3]
                               [--decode-seconds 0.5] [--quick] [--workdir DIR] [--json benchmarks/results/dicom.json]

Part 1, decode cost. One synthetic 16-bit MR slice (``classeg.synthetic.formats.write_dicom``: uint16 stored
values, rescale slope/intercept, no window, so classeg windows it at the 0.5th-99.5th percentiles) is
re-encoded with pydicom into each transfer syntax it can write here: Explicit VR Little Endian (the file as
written, the baseline), Implicit VR Little Endian, Explicit VR Big Endian (pixel bytes swapped by hand:
``dcmwrite`` does not convert endianness), Deflated Explicit VR Little Endian, RLE Lossless, JPEG 2000
Lossless and JPEG 2000 lossy (``j2k_cr=[10]``), and JPEG-LS Lossless when an encoder is installed (otherwise
the row says why it is missing). Each encoding is decoded with ``classeg.imaging.decode_file`` (header, pixel
decode, rescale, window to uint8) and, for the share that is pydicom's own, ``dcmread(...).pixel_array``.
Timing is per call, interleaved: ``--decode-seconds`` per syntax split over five rounds, each round visiting
every syntax in turn, so that a change in the machine's load hits all syntaxes alike; the median call is
reported with its ratio to the uncompressed baseline measured in the same rounds. Lossless encodings must
decode to the same stored values and the same uint8 image as the baseline (asserted); lossy ones report
their largest and mean absolute differences.

Part 2, scoring throughput. An archive of ``--scans`` 256 px 16-bit MR slices written the same way (32
distinct phantoms, half with a lesion, each file a shifted copy with its own UIDs and scale), even-numbered
files uncompressed Explicit VR LE and odd-numbered ones JPEG 2000 Lossless, is scored by the plain loop and
by ``classeg.scoring.ScoreJob`` on a started and warmed-up ``local[2]`` session, alternately ``--repeats``
times, with benchmarks/score.py's models, loop, job config and comparison (:func:`score.alternate_runs`):
the same untrained ResNet18 and ResUNet artifacts (3-channel inputs: the grayscale slice is repeated by the
models' preprocessing), the median tumour probability of the first batches as the threshold. Ratio = job
images/s / loop images/s, best of each side (the median ratio is recorded too).

Results go to ``--json``; ``benchmarks/run_all.py`` renders them into BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/score.py, when imported from elsewhere

import numpy as np  # noqa: E402
from pydicom import uid  # noqa: E402

import score  # noqa: E402  (sets PYSPARK_PYTHON and OMP_NUM_THREADS for the Spark workers)

DISTINCT_PHANTOMS = 32
J2K_LOSSY_RATIO = 10
ROUNDS = 5
MIN_CALLS_PER_ROUND = 3

# name -> (transfer syntax, pydicom compress() options); explicit_le is the uncompressed baseline.
SYNTAXES = {
    "explicit_le": (uid.ExplicitVRLittleEndian, {}),
    "implicit_le": (uid.ImplicitVRLittleEndian, {}),
    "explicit_be": (uid.ExplicitVRBigEndian, {}),
    "deflated_le": (uid.DeflatedExplicitVRLittleEndian, {}),
    "rle_lossless": (uid.RLELossless, {}),
    "j2k_lossless": (uid.JPEG2000Lossless, {}),
    "j2k_lossy": (uid.JPEG2000, {"j2k_cr": [J2K_LOSSY_RATIO]}),
    "jpeg_ls_lossless": (uid.JPEGLSLossless, {}),
}
LOSSY = ("j2k_lossy",)


# ---------------------------------------------------------------------------------------------- encodings
def mr_image(rng: np.random.Generator, *, size: int, lesion: bool) -> np.ndarray:
    """A synthetic T2 MR slice, float32 (size, size) in [0, 1]."""
    from classeg import synthetic

    image, _ = synthetic.phantom_slice(rng, size=size, anatomy=synthetic.random_anatomy(rng), slice_pos=0.5,
                                       lesion=synthetic.random_lesion(rng, kind="low_grade_glioma") if lesion
                                       else None, contrasts=("T2",))
    return image[..., 0]


def write_slice(path: Path, rng: np.random.Generator, image: np.ndarray, *, index: int) -> None:
    """``image`` as a 16-bit (uint16 stored, rescaled) MR slice in Explicit VR Little Endian DICOM."""
    from classeg.synthetic.formats import write_dicom

    write_dicom(path, rng, image, seed=0, index=index, contrast="T2", signed=False)


def _encoded(ds) -> bytes:
    import pydicom

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def encode(data: bytes, syntax: str) -> bytes:
    """Re-encode Explicit VR Little Endian DICOM ``data`` in ``syntax`` (a key of :data:`SYNTAXES`).
    Raises RuntimeError naming the syntax and the missing dependency when no encoder is installed."""
    import pydicom
    from pydicom.pixels import get_encoder

    ds = pydicom.dcmread(io.BytesIO(data))
    transfer_syntax, options = SYNTAXES[syntax]
    if transfer_syntax in (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian,
                           uid.DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = transfer_syntax  # the writer re-encodes the data set (and deflates it)
    elif transfer_syntax == uid.ExplicitVRBigEndian:
        stored = ds.pixel_array
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.PixelData = stored.astype(stored.dtype.newbyteorder(">")).tobytes()  # OW values are not swapped
    else:
        encoder = get_encoder(transfer_syntax)
        if not encoder.is_available:
            raise RuntimeError(f"no {syntax} encoder installed ({'; '.join(encoder.missing_dependencies)})")
        ds.compress(transfer_syntax, **options)
    return _encoded(ds)


# ---------------------------------------------------------------------------------------------- part 1
def _stored(data: bytes) -> np.ndarray:
    import pydicom

    return pydicom.dcmread(io.BytesIO(data)).pixel_array


def _decoded(data: bytes) -> np.ndarray:
    from classeg import imaging

    return imaging.decode_file(data, "slice.dcm").images[0].pixels


def time_calls(encodings: dict[str, bytes], function, *, seconds: float) -> dict[str, list[float]]:
    """Per-call seconds of ``function(data)`` for each encoding: ``seconds`` per encoding in ROUNDS rounds,
    each round visiting every encoding in turn (at least MIN_CALLS_PER_ROUND calls each)."""
    calls: dict[str, list[float]] = {name: [] for name in encodings}
    for _ in range(ROUNDS):
        for name, data in encodings.items():
            deadline, done = time.perf_counter() + seconds / ROUNDS, 0
            while done < MIN_CALLS_PER_ROUND or time.perf_counter() < deadline:
                started = time.perf_counter()
                function(data)
                calls[name].append(time.perf_counter() - started)
                done += 1
    return calls


def decode_costs(work: Path, *, size: int, seconds: float) -> dict:
    import pydicom

    rng = np.random.default_rng(0)
    source = work / "decode-slice.dcm"
    write_slice(source, rng, mr_image(rng, size=size, lesion=True), index=0)
    baseline = source.read_bytes()
    encodings, skipped = {}, {}
    for name in SYNTAXES:
        try:
            encodings[name] = baseline if name == "explicit_le" else encode(baseline, name)
        except RuntimeError as err:
            skipped[name] = str(err)
    stored, image = _stored(baseline), _decoded(baseline)
    checks = {}
    for name, data in encodings.items():
        other_stored, other_image = _stored(data), _decoded(data)
        if name in LOSSY:
            stored_diff = np.abs(other_stored.astype(np.int64) - stored)
            image_diff = np.abs(other_image.astype(np.int64) - image)
            checks[name] = {"lossless": False, "max_abs_diff_stored": int(stored_diff.max()),
                            "mean_abs_diff_stored": round(float(stored_diff.mean()), 3),
                            "max_abs_diff_uint8": int(image_diff.max()),
                            "mean_abs_diff_uint8": round(float(image_diff.mean()), 3)}
        else:
            assert np.array_equal(other_stored, stored), f"{name}: stored values differ from explicit_le"
            assert np.array_equal(other_image, image), f"{name}: decoded uint8 image differs from explicit_le"
            checks[name] = {"lossless": True, "identical": True}
    print(f"timing decode_file on {len(encodings)} encodings ({seconds:g} s each) ...", flush=True)
    full = time_calls(encodings, _decoded, seconds=seconds)
    pixels = time_calls(encodings, _stored, seconds=seconds)
    base_ms = float(np.median(full["explicit_le"])) * 1e3
    base_pixels_ms = float(np.median(pixels["explicit_le"])) * 1e3
    rows = []
    for name, data in encodings.items():
        ms, pixel_ms = float(np.median(full[name])) * 1e3, float(np.median(pixels[name])) * 1e3
        rows.append({"syntax": name, "transfer_syntax": SYNTAXES[name][0].name, "uid": str(SYNTAXES[name][0]),
                     "bytes": len(data), "bytes_vs_uncompressed": round(len(data) / len(baseline), 4),
                     "decode_ms": round(ms, 3), "decode_vs_uncompressed": round(ms / base_ms, 3),
                     "calls": len(full[name]), "pydicom_pixel_array_ms": round(pixel_ms, 3),
                     "pydicom_vs_uncompressed": round(pixel_ms / base_pixels_ms, 3), **checks[name]})
        print(f"  {name}: {rows[-1]}", flush=True)
    rows += [{"syntax": name, "transfer_syntax": SYNTAXES[name][0].name, "uid": str(SYNTAXES[name][0]),
              "skipped": reason} for name, reason in skipped.items()]
    header = pydicom.dcmread(io.BytesIO(baseline), stop_before_pixels=True)
    return {"image": {"rows": int(header.Rows), "columns": int(header.Columns), "stored_dtype": str(stored.dtype),
                      "bits_allocated": int(header.BitsAllocated), "bits_stored": int(header.BitsStored),
                      "stored_min": int(stored.min()), "stored_max": int(stored.max())},
            "seconds_per_syntax": seconds, "rounds": ROUNDS, "j2k_lossy_options": {"j2k_cr": [J2K_LOSSY_RATIO]},
            "syntaxes": rows}


# ---------------------------------------------------------------------------------------------- part 2
def write_archive(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` 16-bit MR slices: even indices Explicit VR LE, odd ones JPEG 2000 Lossless."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    # Lesion on phantoms 0, 1, 4, 5, ...: both encodings get scans with and without one.
    phantoms = [mr_image(rng, size=size, lesion=index // 2 % 2 == 0) for index in range(DISTINCT_PHANTOMS)]
    paths = []
    for index in range(count):
        path = folder / f"slice_{index:05d}.dcm"
        image = np.roll(phantoms[index % DISTINCT_PHANTOMS], shift=index // DISTINCT_PHANTOMS % 9, axis=1)
        write_slice(path, rng, image, index=index)
        if index % 2:
            path.write_bytes(encode(path.read_bytes(), "j2k_lossless"))
        paths.append(path)
    return paths


def scoring_throughput(work: Path, *, scans: int, size: int, model_size: int, batch_size: int,
                       repeats: int) -> dict:
    from classeg.config import load_config
    from classeg.spark import get_spark

    print(f"writing {scans} DICOM slices to {work}", flush=True)
    paths = write_archive(work / f"dicom-{scans}", scans, size)
    classifier, segmenter = score.save_models(work / "models", model_size)
    loop = score.PlainLoop(classifier, segmenter, channels_last=True)
    sample = loop.tumor_probabilities(paths[:4 * batch_size], batch_size)
    threshold = float(np.median(sample))
    print(f"tumor_threshold = {threshold:.6f} (median of {len(sample)} scans)", flush=True)
    loop.score(paths[:batch_size], batch_size=batch_size, tumor_threshold=threshold)  # warm-up

    started = time.perf_counter()
    spark = get_spark(load_config(overrides=["spark.master=local[2]", "spark.shuffle_partitions=4"]),
                      app_name="classeg-bench-dicom")
    session_seconds = time.perf_counter() - started

    def config(archive, output):
        return score.job_config(archive, output, classifier, segmenter, batch_size=batch_size,
                                tumor_threshold=threshold, channels_last=True)

    warm = score.subset(work / "dicom-warmup", paths, min(len(paths), 2 * batch_size))
    _, cold_seconds = score.run_job(spark, config(warm, work / "out-warmup"), work / "out-warmup")
    print(f"job cold start (workers + models): {cold_seconds:.1f}s", flush=True)
    compared = score.alternate_runs(spark, loop, paths, paths[0].parent, work / "out-job", config,
                                    repeats=repeats, batch_size=batch_size, tumor_threshold=threshold)
    spark.stop()
    for run in compared["job_runs"]:
        assert run["scans"] == scans and run["errors"] == 0, f"the job did not score every slice: {run}"
    return {"scans": scans, "uncompressed": (scans + 1) // 2, "j2k_lossless": scans // 2,
            "archive_bytes": sum(path.stat().st_size for path in paths),
            "scan_files": f"{size}x{size} uint16 MR DICOM, even files Explicit VR LE, odd JPEG 2000 Lossless",
            "model_size": model_size, "batch_size": batch_size, "threads": score.THREADS, "repeats": repeats,
            "classifier": "resnet18 linear (random weights)", "segmenter": "resunet base_filters=16 (random weights)",
            "tumor_threshold": threshold, "spark_session_start_s": round(session_seconds, 3),
            "job_cold_start_s": round(cold_seconds, 3),
            **{key: (round(value, 3) if isinstance(value, float) else value) for key, value in compared.items()}}


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=200, help="slices in the scoring archive")
    parser.add_argument("--image-size", type=int, default=256, help="side of the DICOM slices")
    parser.add_argument("--model-size", type=int, default=128, help="model input side (<= 224; multiple of 16)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; best is reported")
    parser.add_argument("--decode-seconds", type=float, default=0.5, help="timed decoding per transfer syntax")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 px, 24 slices, 64 px models, 1 repeat")
    parser.add_argument("--workdir", default=None, help="data and outputs (default: a folder under /tmp)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "dicom.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.scans, args.image_size, args.model_size, args.repeats, args.decode_seconds = 24, 64, 64, 1, 0.05
        args.batch_size = min(args.batch_size, 8)
    for flag, value in (("--scans", args.scans), ("--repeats", args.repeats), ("--batch-size", args.batch_size)):
        if value < 1:
            raise SystemExit(f"{flag} must be >= 1, got {value}")
    work = Path(args.workdir or f"/tmp/classeg-bench-dicom-{args.image_size}")
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    import pydicom
    import torch

    decode = decode_costs(work, size=args.image_size, seconds=args.decode_seconds)
    scoring = scoring_throughput(work, scans=args.scans, size=args.image_size, model_size=args.model_size,
                                 batch_size=args.batch_size, repeats=args.repeats)
    versions = {}
    for module in ("pylibjpeg", "openjpeg", "rle", "libjpeg"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "not installed"
    result = {
        "benchmark": "dicom",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "python": platform.python_version(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "pydicom": pydicom.__version__, "torch": torch.__version__,
        "pixel_plugins": versions,
        "job_vs_plain": scoring["job_vs_plain"], "job_vs_plain_median": scoring["job_vs_plain_median"],
        "decode": decode, "score": scoring, "elapsed_s": round(time.perf_counter() - began, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\njob / plain = {scoring['job_vs_plain']:.3f}x best of {args.repeats} "
          f"({scoring['job_vs_plain_median']:.3f}x median); written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
