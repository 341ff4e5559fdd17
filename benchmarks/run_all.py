"""Run every benchmark under benchmarks/ and rewrite BENCHMARKS.md from their JSON results (`make bench`).

Each benchmark is a script writing one JSON file under benchmarks/results/. This runner starts them one after
another (never in parallel: they measure throughput on a shared 2-core machine), then renders BENCHMARKS.md:
the machine, the date, and per benchmark its headline ratio against its baseline, a table of its numbers and
the hand-written method note below. A benchmark whose JSON is missing is reported as "not run"; one whose run
failed keeps its previous JSON (if any, shown with its own date) and the failure is noted.

    python benchmarks/run_all.py                 # run all, then write BENCHMARKS.md
    python benchmarks/run_all.py --only ingest   # run some (repeatable), still rewrite the whole file
    python benchmarks/run_all.py --report-only   # just rewrite BENCHMARKS.md from the existing JSON
    python benchmarks/run_all.py --quick         # pass --quick to the benchmarks that support it
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
OUTPUT = ROOT / "BENCHMARKS.md"


@dataclass
class Benchmark:
    name: str
    script: str
    title: str
    baseline: str
    method: str                      # hand-written: what is measured, against what, how
    summarise: Callable[[dict], tuple[str, list[str]]] | None = None  # result -> (headline, markdown lines)
    quick_args: tuple[str, ...] = ()
    args: tuple[str, ...] = field(default_factory=tuple)
    device_only: bool = False        # needs a GPU: never run here (its stored result is rendered)

    @property
    def result_path(self) -> Path:
        return RESULTS_DIR / f"{self.name}.json"


# ---------------------------------------------------------------------------------------------- summarisers
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _scalars(result: dict, skip=("benchmark", "date", "created", "method", "machine")) -> list[list[Any]]:
    rows = []
    for key, value in result.items():
        if key in skip:
            continue
        if isinstance(value, (int, float, str, bool)) and not (isinstance(value, str) and len(value) > 120):
            rows.append([key, value])
    return rows


def _ratio(result: dict) -> float | None:
    """The headline ratio: ``ratio``, else the first top-level ``<x>_vs_<y>`` number."""
    if isinstance(result.get("ratio"), (int, float)):
        return result["ratio"]
    for key, value in result.items():
        if "_vs_" in key and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def _ratio_headline(result: dict) -> str:
    ratio = _ratio(result)
    if ratio is None:
        return "no single ratio recorded (see the table)"
    goal = result.get("goal")
    text = f"**{ratio:.3g}x** the baseline"
    if isinstance(goal, (int, float)):
        text += f" (goal {goal:g}x: {'met' if ratio >= goal else 'not met'})"
    return text


def summarise_generic(result: dict) -> tuple[str, list[str]]:
    return _ratio_headline(result), _table(["quantity", "value"], _scalars(result))


def summarise_ingest(result: dict) -> tuple[str, list[str]]:
    rows = [[result.get("slices"), result.get("image_size"), result.get("loop_slices_per_s"),
             result.get("job_slices_per_s"), result.get("ratio"), result.get("session_start_seconds"),
             result.get("first_small_job_seconds")]]
    lines = _table(["slices", "size px", "loop slices/s (baseline)", "job slices/s", "ratio", "session start s",
                    "first (cold) job s"], rows)
    runs = result.get("runs") or {}
    if runs:
        phases = sorted({name for run in runs.values() for name in (run.get("job_phase_seconds") or {})})
        kinds = sorted({kind for run in runs.values() for kind in (run.get("job_cpu_seconds") or {})})
        cpu_headers = (["loop CPU s", *[f"job {kind} CPU s" for kind in kinds]] if kinds else [])
        lines += ["", *_table(["attempt", "loop s", "job s", *[f"job {name} s" for name in phases], *cpu_headers], [
            [key, run.get("loop_seconds"), run.get("job_seconds"),
             *[(run.get("job_phase_seconds") or {}).get(name, "") for name in phases],
             *([run.get("loop_cpu_seconds", "")] + [(run.get("job_cpu_seconds") or {}).get(k, "") for k in kinds]
               if kinds else [])]
            for key, run in sorted(runs.items())])]
        if result.get("median_ratio") is not None:
            lines += ["", f"Ratio of the medians over the attempts: {_fmt(result['median_ratio'])}x."]
    return _ratio_headline(result), lines


def summarise_score(result: dict) -> tuple[str, list[str]]:
    plain, job = result["plain_loop"], result["job"]
    lines = _table(["run", "scans", "tumour", "seconds", "images/s"], [
        [f"plain PyTorch loop (baseline, 1 process, {result.get('threads')} threads)", plain.get("scans"),
         plain.get("tumor"), plain.get("seconds"), plain.get("images_per_s")],
        ["scoring job (local[2], whole run)", job.get("scans"), job.get("tumor"), job.get("seconds"),
         job.get("images_per_s")]])
    lines += ["", f"Spark session start {_fmt(result.get('spark_session_start_s'))} s and the cold first run "
                  f"{_fmt(result.get('job_cold_start_s'))} s are not in the timings. Models: "
                  f"{result.get('classifier')}, {result.get('segmenter')} at {result.get('model_size')} px; "
                  f"files: {result.get('scan_files')}" + (" (quick run)" if result.get("quick") else "") + "."]
    rss = result.get("worker_rss") or []
    if rss:
        lines += ["", *_table(["archive scans", "seconds", "peak RSS per Python worker (MiB, max)", "workers"],
                              [[e.get("scans"), e.get("seconds"), e.get("peak_rss_mib_max"), e.get("workers")]
                               for e in rss])]
    return _ratio_headline(result), lines


def summarise_dicom(result: dict) -> tuple[str, list[str]]:
    """Decode cost per transfer syntax (one table), then the scoring job against the plain loop on the DICOM
    archive (a second table)."""
    decode, scoring = result["decode"], result["score"]
    rows, j2k = [], None
    for entry in decode["syntaxes"]:
        if "skipped" in entry:
            rows.append([entry["syntax"], entry["transfer_syntax"], "", "", "", "", "", "",
                         f"not measured: {entry['skipped']}"])
            continue
        if entry["syntax"] == "j2k_lossless":
            j2k = entry["decode_vs_uncompressed"]
        check = ("identical to uncompressed" if entry.get("identical") else
                 f"lossy: max abs diff {entry.get('max_abs_diff_stored')} stored / {entry.get('max_abs_diff_uint8')} "
                 f"uint8 (mean {_fmt(entry.get('mean_abs_diff_stored'))} / {_fmt(entry.get('mean_abs_diff_uint8'))})")
        rows.append([entry["syntax"], entry["transfer_syntax"], entry["bytes"], entry["bytes_vs_uncompressed"],
                     entry["decode_ms"], entry["decode_vs_uncompressed"], entry["pydicom_pixel_array_ms"],
                     entry["pydicom_vs_uncompressed"], check])
    image = decode["image"]
    lines = _table(["syntax", "transfer syntax", "bytes", "size vs uncompressed", "decode_file ms (median)",
                    "vs uncompressed", "pydicom pixel_array ms", "vs uncompressed", "check"], rows)
    lines += ["", f"One {image['rows']}x{image['columns']} MR slice, {image['stored_dtype']} stored values "
                  f"({image['bits_stored']} bits stored, range {image['stored_min']}-{image['stored_max']}); "
                  f"{_fmt(decode['seconds_per_syntax'])} s of calls per syntax in {decode['rounds']} interleaved "
                  f"rounds; pydicom {result.get('pydicom')}, plugins {result.get('pixel_plugins')}."]
    plain, job = scoring["plain_loop"], scoring["job"]
    lines += ["", *_table(["run", "scans", "tumour", "seconds", "images/s"], [
        [f"plain PyTorch loop (baseline, 1 process, {scoring.get('threads')} threads)", plain.get("scans"),
         plain.get("tumor"), plain.get("seconds"), plain.get("images_per_s")],
        ["scoring job (local[2], whole run)", job.get("scans"), job.get("tumor"), job.get("seconds"),
         job.get("images_per_s")]])]
    lines += ["", f"Archive: {scoring.get('scans')} files ({scoring.get('scan_files')}; "
                  f"{_fmt(scoring.get('archive_bytes', 0) / 2**20)} MiB). The job's scoring stage alone ran at "
                  f"{_fmt(job.get('scoring_stage_images_per_s'))} images/s. Best of {scoring.get('repeats')} "
                  f"alternating runs each; ratio of the medians {_fmt(scoring.get('job_vs_plain_median'))}x. Spark "
                  f"session start {_fmt(scoring.get('spark_session_start_s'))} s and the cold first run "
                  f"{_fmt(scoring.get('job_cold_start_s'))} s are not in the timings. Models: "
                  f"{scoring.get('classifier')}, {scoring.get('segmenter')} at {scoring.get('model_size')} px"
                  + (" (quick run)" if result.get("quick") else "") + "."]
    headline = (f"scoring job **{scoring['job_vs_plain']:.3g}x** the plain loop on {scoring.get('scans')} 16-bit MR "
                f"slices (half JPEG 2000 Lossless)"
                + (f"; JPEG 2000 Lossless decodes at {j2k:.3g}x the cost of uncompressed" if j2k else ""))
    return headline, lines


def summarise_models(result: dict) -> tuple[str, list[str]]:
    by_key: dict[tuple, dict] = {}
    for entry in result.get("results", []):
        by_key.setdefault((entry["model"], entry["size"]), {})[entry["format"]] = entry["images_per_s"]
    rows, ratios = [], []
    for (model, size), formats in by_key.items():
        base, fast = formats.get("contiguous"), formats.get("channels_last")
        ratio = fast / base if base and fast else None
        if ratio:
            ratios.append(ratio)
        rows.append([model, size, base, fast, ratio if ratio is not None else "n/a"])
    headline = (f"channels_last is **{min(ratios):.3g}x-{max(ratios):.3g}x** contiguous (NCHW) across "
                f"{len(ratios)} model/size pairs" if ratios else "no paired results")
    lines = _table(["model", "size px", "contiguous images/s (baseline)", "channels_last images/s", "ratio"], rows)
    lines.append("")
    lines.append(f"Batch {result.get('batch_size')}, {result.get('threads')} threads, torch {result.get('torch')}, "
                 f"{result.get('reps')} timed batches after {result.get('warmup')} warm-up"
                 + (" (quick run)" if result.get("quick") else "") + ".")
    return headline, lines


def summarise_train_quality(result: dict) -> tuple[str, list[str]]:
    """Per anatomy: test accuracy, balanced accuracy, ROC AUC, tumour-slice Dice and the goals; the baseline
    recipe's numbers when the result records them."""
    modes = result["modes"]
    parts = []
    for anatomy, mode in modes.items():
        goals = mode.get("goals") or {}
        numbers = {k: "n/a" if mode.get(k) is None else f"{mode[k]:.3f}"
                   for k in ("accuracy", "balanced_accuracy", "roc_auc", "dice_tumor")}
        missed = [k for k, v in goals.items() if not v]
        parts.append(f"{anatomy}: accuracy **{numbers['accuracy']}**, balanced accuracy "
                     f"**{numbers['balanced_accuracy']}**, AUC **{numbers['roc_auc']}**, Dice "
                     f"**{numbers['dice_tumor']}** (goals {'not met: ' + ', '.join(missed) if missed else 'met'})")
    header = ["anatomy", "recipe", "patients", "size px", "accuracy", "balanced accuracy", "ROC AUC",
              "Dice (tumour slices)", "epochs (classifier / segmenter)", "wall s"]
    rows = []
    for anatomy, mode in modes.items():
        base = (result.get("baseline") or {}).get(anatomy)
        if base:
            rows.append([anatomy, f"baseline: {base.get('recipe', '')}", base.get("patients", ""),
                         base.get("image_size", ""), base["accuracy"], base["balanced_accuracy"], base["roc_auc"],
                         base["dice_tumor"], base.get("epochs", ""), base.get("wall_seconds", "")])
        rows.append([anatomy, result.get("recipe", "defaults"), mode["patients"], mode["image_size"],
                     mode["accuracy"], mode["balanced_accuracy"], mode["roc_auc"], mode["dice_tumor"],
                     f"{mode['classifier'].get('epochs')} / {mode['segmenter'].get('epochs')}",
                     mode.get("wall_seconds", "")])
    lines = _table(header, rows)
    lines += ["", f"Engine {result.get('engine')}, {result.get('processes')} processes x "
                  f"{result.get('threads_per_process')} thread, whole run {_fmt(result.get('wall_seconds'))} s."]
    if result.get("notes"):
        lines += ["", f"Notes: {result['notes']}"]
    return "; ".join(parts), lines


def summarise_plan_scale(result: dict) -> tuple[str, list[str]]:
    """Per listing source (inventory report, local tree) and size: the plan's counts, seconds per step and the
    driver's peaks, the goal at 10^7; then the in-driver (memory) listing with the in-memory baseline; the growth
    exponents."""
    lines: list[str] = []
    sources = result.get("sources") or {}
    for source, runs in sources.items():
        if not runs:
            continue
        lines += [f"**Listing from {'an S3 Inventory report (CSV, gzip)' if source == 'inventory' else 'a local tree'}**"
                  " (listed in Spark tasks):", ""]
        rows = [[run["objects"], run["listing_tasks"], run["already_scored"], run["changed"], run["new"],
                 run["tasks"], run["discovery_seconds"], run["seconds"]["plan"], run["seconds"]["partition"],
                 run["planning_seconds"], run["seconds"]["record"], run["driver_peak_rss_mib"]["python"],
                 run["driver_peak_rss_mib"]["jvm"], run["driver_peak_rss_mib"]["total"],
                 run.get("python_workers_peak_mib")] for run in runs]
        lines += _table(["objects", "listing tasks", "already scored", "changed", "new", "tasks",
                         "discovery s (driver)", "plan s", "partition s", "planning s", "record s",
                         "Python peak MiB", "JVM peak MiB", "driver peak MiB", "worker peak MiB"], rows)
        goal = (result.get("goal") or {}).get(source)
        if goal:
            lines += ["", f"Goal (10^7 objects planned in <= {goal['seconds_goal']} s, driver peak <= "
                          f"{goal['rss_goal_mib']} MiB): {_fmt(goal['seconds'])} s, "
                          f"{_fmt(goal['driver_peak_rss_mib'])} MiB: **{'met' if goal['met'] else 'not met'}**."]
        lines.append("")
    runs = result["runs"]
    if runs:
        lines += ["**In-driver listing** (a pandas listing made up in the driver, as the job did before the listing "
                  "moved into tasks) and the in-memory baseline:", ""]
        rows = [[run["objects"], run["already_scored"], run["changed"], run["new"], run["tasks"],
                 run["seconds"]["plan"], run["seconds"]["partition"], run["seconds"]["record"],
                 run["seconds"]["compact"],
                 f"{run['manifest_files_before']} -> {run['manifest_files_after']} -> {run['manifest_files_compacted']}",
                 run["driver_peak_rss_mib"]["python"], run["driver_peak_rss_mib"]["jvm"], run["listing_frame_mib"],
                 run["seconds"]["baseline_in_memory"], run["peaks_mib"]["baseline_in_memory"]["python"]]
                for run in runs]
        lines += _table(["objects", "already scored", "changed", "new", "tasks", "plan s", "partition s", "record s",
                         "compact s", "manifest files (before, after record, compacted)", "Python peak MiB",
                         "JVM peak MiB", "listing frame MiB", "in-memory baseline s", "baseline Python peak MiB"],
                        rows)
    exponents = result.get("growth_exponent") or {}
    parts = [f"{name.replace('_', ' ')} " + ", ".join(f"{e['exponent']:.2f} ({e['from']:.0e}->{e['to']:.0e})"
                                                      for e in entries)
             for name, entries in exponents.items() if entries]
    if parts:
        lines += ["", "Growth exponents (1 = linear): " + "; ".join(parts) + "."]
    headline_runs = sources.get(result.get("headline_source")) or runs
    largest = headline_runs[-1]
    headline = (f"{largest['objects']:.0e} objects planned in **{_fmt(largest['planning_seconds'])} s** (listing to "
                f"tasks, from {result.get('headline_source', 'memory')}), driver peak "
                f"{_fmt(largest['driver_peak_rss_mib']['total'])} MiB (Python + JVM); recording its "
                f"{largest['pending']:,} new rows {_fmt(largest['seconds']['record'])} s")
    goal = (result.get("goal") or {}).get(result.get("headline_source"))
    if goal:
        headline += f" (goal 180 s and 2 GiB at 10^7: {'met' if goal['met'] else 'not met'})"
    return headline, lines


def summarise_train_throughput(result: dict) -> tuple[str, list[str]]:
    """Per image size: each engine's images/s against the plain loop's, and the loader alone."""
    if "sizes" not in result:  # the format before issue 17
        return summarise_generic(result)
    rows = [[run["image_size"], run["horovod_2x1_images_per_sec"], run["torch_2x1_images_per_sec"],
             run["plain_1x2_images_per_sec"], run["loader_images_per_sec"], run["horovod_vs_plain"],
             run["torch_vs_plain"]] for run in result["sizes"]]
    lines = _table(["image px", "Horovod 2x1 images/s", "torch 2x1 images/s", "plain loop 1x2 images/s",
                    "loader alone images/s", "Horovod / plain", "torch / plain"], rows)
    if all("torch_fp16_vs_plain" in run for run in result["sizes"]):
        lines += ["", "With `train.grad_compression=fp16` (not the default; gradients averaged in fp16): "
                  + "; ".join(f"{run['image_size']} px Horovod {_fmt(run['horovod_fp16_vs_plain'])}x, torch "
                              f"{_fmt(run['torch_fp16_vs_plain'])}x the plain loop" for run in result["sizes"]) + "."]
    shown = {"horovod", "torch", "horovod_fp16", "torch_fp16"}
    others = [f"{run['image_size']} px {key.removesuffix('_vs_plain')} {_fmt(value)}x"
              + (f" (per-round median {_fmt(run[key + '_paired'])}x)" if key + "_paired" in run else "")
              for run in result["sizes"] for key, value in run.items()
              if key.endswith("_vs_plain") and key.removesuffix("_vs_plain") not in shown]
    if others:
        lines += ["", "Other variants against the plain loop (outside the goal): " + "; ".join(others) + "."]
    goal = result.get("goal", 0.85)
    low_h, low_t = result["min_horovod_vs_plain"], result["min_torch_vs_plain"]
    met = low_h >= goal and low_t >= goal
    paired = ""
    if "min_horovod_vs_plain_paired" in result:  # since 2026-12-07: each round's runs against its own plain run
        low_hp, low_tp = result["min_horovod_vs_plain_paired"], result["min_torch_vs_plain_paired"]
        met = met and low_hp >= goal and low_tp >= goal
        paired = f"; per-round ratios' median Horovod {_fmt(low_hp)}x, TorchDistributor {_fmt(low_tp)}x"
        lines += ["", "Per round (each engine's run against the plain loop's run of the same round): "
                  + "; ".join(f"{run['image_size']} px Horovod "
                              f"{', '.join(_fmt(r) for r in run['horovod_vs_plain_per_round'])}, torch "
                              f"{', '.join(_fmt(r) for r in run['torch_vs_plain_per_round'])}"
                              for run in result["sizes"]) + "."]
    headline = (f"Horovod **{_fmt(low_h)}x**, TorchDistributor **{_fmt(low_t)}x** the plain loop (lowest over "
                f"{', '.join(str(run['image_size']) for run in result['sizes'])} px{paired}; goal {goal}x"
                f"{', by both' if paired else ''}: {'met' if met else 'not met'})")
    return headline, lines


def summarise_dispatch(result: dict) -> tuple[str, list[str]]:
    """A dispatching thread's rate alone, beside the loader's threads, beside the same loader in a process."""
    ops, batches = result["ops_per_sec"], result["loader_batches_per_sec"]
    labels = {"alone": "alone", "loader_threads": "beside the loader on threads of its process",
              "loader_process": "beside the same loader in a child process"}
    rows = [[labels[name], _fmt(ops[name]), _fmt(batches.get(name, "-")), _fmt(ops[name] / ops["alone"])]
            for name in labels]
    lines = _table(["dispatching thread", "operations/s (median)", "loader batches/s", "to alone"], rows)
    lines += ["", f"Per round (median of {len(result['rounds'])}): threads / process "
                  f"{_fmt(result['threads_vs_process'])}x, process / alone {_fmt(result['process_vs_alone'])}x; "
                  f"the loader taken at {_fmt(result['rate_requested'])} batches/s of {result['batch_size']} at "
                  f"{result['image_size']} px ({_fmt(result['loader_alone_batches_per_sec'])} alone), "
                  f"{result['threads']} reader threads."]
    headline = (f"beside the loader's threads the dispatching thread runs at **{_fmt(result['threads_vs_process'])}x** "
                f"its rate beside the same loader in a process (the GIL's share); the cores' share "
                f"{_fmt(result['process_vs_alone'])}x")
    return headline, lines


def summarise_loader(result: dict) -> tuple[str, list[str]]:
    """One rank's loader from the decoded cache, per core, against the old per-image path; the batched
    augmentation on the CPU against the old numpy augmentation."""
    rows = [["loader (decoded cache, reader threads)", result["threads"], _fmt(result["images_per_sec"]),
             _fmt(result["images_per_sec_per_core"]), _fmt(result["old_images_per_sec_per_core"]),
             _fmt(result["loader_vs_old_per_core"])]]
    if result.get("augment_images_per_sec_per_core"):
        rows.append(["batched augmentation on the CPU (1 torch thread)", 1, _fmt(result.get("augment_images_per_sec")),
                     _fmt(result["augment_images_per_sec_per_core"]),
                     _fmt(result.get("old_augmented_images_per_sec_per_core")),
                     _fmt(result.get("augment_vs_old_per_core"))])
    lines = _table(["stage", "threads", "images/s", "images/s per core", "old path images/s per core", "ratio"], rows)
    goals = result.get("goals") or {}
    met = result["images_per_sec_per_core"] >= goals.get("images_per_sec_per_core", 2000)
    headline = (f"loader **{_fmt(result['images_per_sec_per_core'])} images/s per core** at {result['image_size']} px "
                f"(goal {_fmt(goals.get('images_per_sec_per_core', 2000))}: {'met' if met else 'not met'}), "
                f"{_fmt(result['loader_vs_old_per_core'])}x the old decode path")
    if result.get("augment_vs_old_per_core"):
        aug_met = result["augment_vs_old_per_core"] >= goals.get("augment_vs_old_per_core", 4.0)
        headline += (f"; batched CPU augmentation {_fmt(result['augment_vs_old_per_core'])}x the old numpy "
                     f"augmentation (goal {_fmt(goals.get('augment_vs_old_per_core', 4.0))}x: "
                     f"{'met' if aug_met else 'not met'})")
    return headline, lines


def summarise_cpu_scaling(result: dict) -> tuple[str, list[str]]:
    """Model-only 2x1 against 1x2 on the CPU: without communication and with DDP's allreduce."""
    rows = []
    for entry in result["sizes"]:
        for mode in ("plain", "independent", "ddp", "ddp_fp16"):
            if mode not in entry:
                continue
            ms = entry[mode]["ms_per_step"]
            rows.append([entry["image_size"], mode, entry[mode]["images_per_sec"],
                         _fmt(entry[mode]["images_per_sec"] / entry["plain"]["images_per_sec"]),
                         ms["forward"], ms["backward"], ms["optimizer"]])
    lines = _table(["image px", "mode", "images/s (all processes)", "vs plain", "forward ms", "backward ms",
                    "optimizer ms"], rows)
    allreduce = result.get("gloo_allreduce_ms", {})
    lines += ["", f"One Gloo allreduce of the model's {result['gradient_values']:,} gradient values between two "
                  f"1-thread processes: {allreduce.get('float32')} ms in fp32, {allreduce.get('bfloat16')} ms in "
                  f"bf16."]
    headline = "; ".join(f"{entry['image_size']} px: 2x1 without communication {_fmt(entry['independent_vs_plain'])}x, "
                         f"with DDP {_fmt(entry['ddp_vs_plain'])}x"
                         + (f" (fp16 allreduce {_fmt(entry['ddp_fp16_vs_plain'])}x)" if "ddp_fp16_vs_plain" in entry
                            else "") + " the 1x2 process" for entry in result["sizes"])
    return headline, lines


def summarise_gpu(result: dict) -> tuple[str, list[str]]:
    """Model-only ceilings, the library's paths against them, and the device-against-CPU checks."""
    if "skipped" in result:
        return f"skipped ({result['skipped']})", ["Not measured: no CUDA device where it ran."]
    ceilings, ratios = result["ceilings"], result["ratios"]
    rows = [[f"ceiling: {name.replace('_', ' ')}", part["batch"], part["image_size"], part["images_per_sec"], "-"]
            for name, part in ceilings.items()]
    epoch, compiled = result.get("train_epoch", {}), result.get("train_compiled", {})
    diagnosis = epoch.get("without_loader", {})
    train_ceiling = ceilings.get("resnet18_train_step", {}).get("images_per_sec")

    def row(label, part, ratio):
        if part and "images_per_sec" in part:
            rows.append([label, part.get("batch", "-"), part.get("image_size", "-"), part["images_per_sec"],
                         _fmt(ratio) if ratio is not None else "-"])

    row("loader alone (host, pinned)", result.get("loader", {}).get("host"), None)
    row("loader to the device, augmented", result.get("loader"), ratios.get("loader_to_resnet18_train_step"))
    row("training epoch (per-rank loop)", epoch, ratios.get("train_epoch_to_resnet18_train_step"))
    row("training epoch, input made on the training stream", result.get("train_epoch_in_line"),
        ratios.get("train_epoch_in_line_to_resnet18_train_step"))
    row("training epoch, a tenth of the thread switch interval", result.get("train_epoch_switch_interval"),
        ratios.get("train_epoch_switch_interval_to_resnet18_train_step"))
    row("training epoch, train.compile", compiled, ratios.get("train_compiled_to_resnet18_train_step"))
    row("loop without the loader: augmentation + step", diagnosis.get("augment_and_step"),
        ratios.get("train_augment_and_step_to_resnet18_train_step"))
    row("loop without the loader: step only", diagnosis.get("step_only"),
        ratios.get("train_step_only_to_resnet18_train_step"))
    row("predictor (channels_last, the default)", result.get("predictor"), ratios.get("predictor_to_model_forward"))
    row("predictor, contiguous", result.get("predictor_contiguous"),
        ratios.get("predictor_contiguous_to_model_forward"))
    row("predictor, cudnn.benchmark on", result.get("predictor_cudnn_benchmark"),
        ratios.get("predictor_cudnn_benchmark_to_model_forward"))
    lines = _table(["measurement", "batch", "px", "images/s", "ratio to its ceiling"], rows)
    lines += ["", "Ratios: training rows against the ResNet18 train-step ceiling"
              + (f" ({_fmt(train_ceiling)} images/s)" if train_ceiling else "")
              + "; predictor rows against the model-only forward rate of the predictor's own work (a ResNet18 "
              "forward per scan plus a ResUNet forward per segmented scan, at the forward ceilings)."]
    checks = result.get("checks") or {}
    if "augment" in checks:
        augment, predictor = checks["augment"], checks["predictor"]
        lines += ["", f"Device against CPU on the same inputs: batched augmentation relative error "
                      f"{augment['image_relative_error']:.2g} (masks: {augment['mask_pixels_differing_fraction']:.2g} "
                      f"of pixels differ); predictor probabilities max abs error "
                      f"{predictor['probability_max_abs_error']:.2g}, labels agree "
                      f"{predictor['labels_agree_fraction']:.0%}, mask IoU {predictor['mask_iou']:.4f}."]
    syncs = diagnosis.get("host_syncs")
    if syncs:
        lines += ["", f"Host waits for the device per training step (augmentation + step, CUDA sync debug mode): "
                      f"{_fmt(syncs['per_step'])}" + (f", at {', '.join(syncs['places'])}" if syncs["places"] else "")
                  + "."]
    syncs = (result.get("predictor") or {}).get("host_syncs")
    if syncs:
        lines += ["", "Host waits for the device per predictor batch (CUDA sync debug mode): "
                      f"{_fmt(syncs['per_step'])}" + (f", at {', '.join(syncs['places'])}" if syncs["places"] else "")
                  + "."]
    goals = result.get("goals", {})
    train_ratio = ratios.get("train_epoch_to_resnet18_train_step")
    score_ratio = ratios.get("predictor_to_model_forward")
    goal_t = goals.get("train_epoch_to_resnet18_train_step", 0.85)
    goal_s = goals.get("predictor_to_model_forward", goals.get("predictor_to_resnet18_forward", 0.8))
    headline = (f"{result.get('device')}: training epoch **{_fmt(train_ratio)}x** the train-step ceiling "
                f"(train.compile {_fmt(ratios.get('train_compiled_to_resnet18_train_step'))}x; goal {goal_t}x: "
                f"{'met' if train_ratio and train_ratio >= goal_t else 'not met'}), predictor **{_fmt(score_ratio)}x** "
                f"the model-only forward rate of its work (goal {goal_s}x: "
                f"{'met' if score_ratio and score_ratio >= goal_s else 'not met'}; "
                f"{_fmt(ratios.get('predictor_to_resnet18_forward'))}x the ResNet18 forward alone)")
    return headline, lines


BENCHMARKS = [
    Benchmark(
        name="ingest", script="ingest.py", title="Ingest throughput (Spark job vs. a plain Python loop)",
        baseline="one Python process decoding, resizing, PNG-encoding and writing the same slices to Parquet",
        summarise=summarise_ingest,
        method=(
            "Synthetic Kaggle-LGG dataset (default 110 patients, 18-22 slices each, 256 px TIFF slices and masks). "
            "The ingest job runs on `local[2]` from an already started SparkSession after one small warm-up job "
            "(session start and the cold first job are reported separately: they are paid once per cluster job). "
            "The baseline walks the same folder in one process and does the same decode / resize / PNG work and "
            "writes the same Parquet with the job's own writer (`scanwrite.write_parquet`). Best of five "
            "alternating runs each (`--attempts`); the ratio of the medians is recorded too. Ratio = job slices/s / "
            "loop slices/s, so > 1 means the job is faster. CPU-seconds per process kind (this process, which runs "
            "the loop and the job's driver; the Spark JVM; the Python workers) are sampled around each run with "
            "psutil. History on this machine: 0.76x in the first session (bytes through binaryFile's `content` "
            "column, rows cached and written by Spark); 1.56x in the second (tasks read their files, stage pixels "
            "as Parquet, a finalize job rewrites them into the split folders). Third session, 2026-12-01: three "
            "changes took it to 1.82x (medians 1.70x; every one of the five pairs above 1.6x); the run recorded here, "
            "made after the S3 read-ahead went in (local reads are not read ahead), gives 1.77x best of 5 and 1.70x "
            "on the medians (pairs 1.68x-1.77x, plus one 3.4x where the loop stalled: 47 s of wall for 25 CPU-s). (1) Staging is Arrow "
            "IPC appended batch by batch, and finalize writes zero-copy slices of the memory-mapped staging file "
            "instead of gathering rows into new buffers: on this VM first touches of fresh memory cost about "
            "2.6 ms per MB, so the old staging write, read-back and `take` cost the workers about 4.5 CPU-s per run, "
            "now about 1. (2) The PNG columns are stored without snappy, dictionary or statistics (already "
            "compressed; snappy alone cost ~0.7 CPU-s per 300 MB); the loop writes with the same options. (3) The "
            "local driver JVM runs C1-only (`spark.local_java_options`): its C2 compiler used 1.1-1.5 CPU-s of every "
            "run, now 0.1-0.2, and the JVM's total is 0.5-1.0 CPU-s. The errors table is written by pyarrow on "
            "the driver (no Spark job). What is left: the workers use about 1 CPU-s more than the loop (staging, "
            "metadata batches through Arrow), the JVM 0.5-1 CPU-s, and the decode tasks' tail. For comparison, "
            "two plain processes each decoding half the folders take 10.6 s against 21.6 s for one (2.03x): the "
            "decode itself scales with cores on this machine.")),
    Benchmark(
        name="ingest_s3", script="ingest_s3.py", title="Ingest from S3: read-ahead in the decode tasks",
        baseline="the same job reading each S3 object when the decoder asks for it (`ingest.fetch_threads=1`)",
        summarise=summarise_generic,
        method=(
            "About 1000 synthetic LGG objects (25 patients, 256 px TIFF slices and masks) on a moto S3 server in "
            "server mode on 127.0.0.1, started by the script; the ingest job on `local[2]` reads them with boto3 "
            "in its tasks and writes the table to a local folder, from a started session after a warm-up run. "
            "The read-ahead submits the next batch's GETs (64 files) to `ingest.fetch_threads` threads while the "
            "current batch decodes. Best of three alternating runs each. Ratio = seconds with fetch_threads=1 / "
            "seconds with the read-ahead. Recorded run (2026-12-01), seconds without / with the read-ahead per "
            "attempt: 8.10 / 7.02, 8.13 / 7.53, 8.51 / 5.88, so 1.38x best of 3 and 1.16x on the medians: noisy, "
            "but faster in every pair. moto answers from the same 2 cores the job decodes on, with almost no "
            "network latency; against real S3, where each GET waits tens of milliseconds on the network and "
            "costs the machine little CPU, the gain should be larger (not measured here: no S3 to measure).")),
    Benchmark(
        name="models", script="models.py", title="Model forward throughput (CPU)",
        baseline="the same model in PyTorch's default contiguous (NCHW) memory format",
        summarise=summarise_models, quick_args=("--quick",),
        method=(
            "ResNet18 and ResNet50 (linear head) and the Class-Seg ResUNet (base 16) at 224 and 256 px, eval mode, "
            "fp32 under `torch.no_grad()`, batch 32, random input, torch using every core. Each configuration runs "
            "warm-up batches, then timed batches; images/s = batch x timed batches / elapsed. Ratio = channels_last "
            "images/s / contiguous images/s for the same model and size. Noisy on a shared machine: compare runs "
            "made under the same load.")),
    Benchmark(
        name="train_throughput", script="train_throughput.py",
        title="Distributed training throughput (Horovod on local Spark)",
        baseline="the same per-rank training loop in a single process (no Horovod, no Spark)",
        summarise=summarise_train_throughput,
        method=(
            "Issue 17, 2026-12-07, second session (the table): `train_throughput.py --patients 8 --rounds 5 "
            "--variants horovod,torch,horovod_cycle5`, after Horovod's ranks on the CPU moved from a 5 ms to a "
            "25 ms cycle (`HOROVOD_CYCLE_MS`); `horovod_cycle5` is the previous default measured in the same run. "
            "Horovod 0.92x / 0.91x at 64 / 128 px (the median of the rounds' own ratios 0.91x / 0.91x), torch "
            "1.07x / 0.98x, the 5 ms cycle 0.91x / 0.93x: in this run the cycle moved Horovod by +1.3% / -1.8%. "
            "Two interleaved A/Bs of Horovod alone before it (3 rounds each, medians, images/s): 64 px 5 ms 66.2 "
            "and 63.6, 12 ms 67.0, 25 ms 71.8 and 64.2, 100 ms 57.6; 128 px 5 ms 29.3 and 28.0, 12 ms 30.0, 25 "
            "ms 28.9 and 30.5, 100 ms 30.6; paired round by round 25 ms was at or above 5 ms in 10 of 12 rounds "
            "and at most 2.4% below in the others. So 25 ms is no slower and sometimes faster, and 100 ms too long "
            "at 64 px (a step of about 0.45 s waits up to a cycle for its last gradients). A run with the 5 ms "
            "default just before the change (`--variants horovod,torch`, 5 rounds) gave Horovod 0.865x / 0.877x "
            "(per-round 0.849x / 0.843x) and torch 1.03x / 0.99x, the plain loop at 71 / 30 images/s: most of the "
            "difference between the two runs is the VM, whose plain loop ran at 72 / 31 in the table's run. "
            "Horovod stays about 0.86x-0.92x torch's rate at 64 px in every run; Horovod's `groups=1` (one fused "
            "allreduce after the backward pass, as DDP's 50 MiB bucket does) was no faster in an A/B (64 px "
            "65.4 / 73.3 against 40.3 / 62.8 images/s; 128 px equal), so it was not adopted. Both estimators "
            "count: the ratio of the medians, and the median of each round's runs against that round's plain "
            "run, which a VM drifting within a run moves less. "
            "Issue 17, 2026-12-07 (first session): the same command on this session's VM, which ran the plain loop at "
            "59 / 26 images/s (64 / 128 px) against 105-109 at 64 px in the previous two sessions' runs, now "
            "also measuring each engine with `train.grad_compression=fp16` (outside the goal). Defaults: 64 px "
            "Horovod 0.89x, torch 1.04x (under the goal on 2026-12-04 at 0.71x / 0.70x; an unrecorded run of "
            "the previous session, after the side-stream copy and the batched draws, gave 0.86x / 0.96x); 128 px "
            "Horovod 0.84x, torch 0.85x, so Horovod at 128 px is under the goal in this run. The plain loop "
            "fell from 30 to 22 images/s between this run's first and third 128 px rounds; a second run of 128 "
            "px alone right after (same command, `--image-sizes 128`) gave Horovod "
            "1.015x and torch 0.991x (plain 21.1, Horovod 21.5, torch 21.0 images/s), and on 2026-12-04 Horovod "
            "0.98x, torch 1.06x: on this 2-core VM the noise decides whether 128 px lands above or below 0.85. "
            "fp16 gradients: Horovod 0.64x / 0.72x (slower than fp32 in every round of both runs), torch 0.95x / "
            "0.82x in this run and 1.04x at 128 px in the second, against +19% at 64 px in an A/B of the previous "
            "session: no reliable gain on the CPU, so the default stays fp32. "
            "Issue 17, 2026-12-04: `train_throughput.py --patients 8 --rounds 3`, every measurement "
            "three times interleaved with the order rotated per round, the median counts, because single runs "
            "on this 2-core VM moved by 15-20% (the plain loop at 64 px gave 101-122 images/s within one run, "
            "Horovod 55-79); the rounds are in the JSON. Horovod's ranks now negotiate every 5 ms on the CPU "
            "instead of every 1 ms (an interleaved A/B at 64 px: 58 and 67 images/s at 1 ms, 74 and 74 at 5 ms; "
            "Horovod's own allreduce of ResNet18's gradients took about 120 ms at 1 ms and 50 ms at 5 ms). At "
            "128 px both engines meet the goal (Horovod 0.98x, torch 1.06x); at 64 px neither does (0.71x, 0.70x). "
            "The model-only ceiling (`benchmarks/cpu_scaling.py`, below) says why 64 px is hard here: two "
            "1-thread processes with no communication give 1.11x the 2-thread process, with DDP's allreduce of "
            "45 MB of gradients every 16 images 0.89x, so communication alone takes most of the margin; the "
            "further drop to 0.70x in the pipeline (loader, CPU augmentation, Spark's processes beside the "
            "ranks) was not pinned down. A run with 24 patients (3x longer epochs, 2 rounds, 64 px only) gave "
            "0.68x / 0.76x, so per-epoch start-up is not it. "
            "Issue 17 (2026-12-03, the decoded training cache and batched augmentation): per image size (64 and "
            "128 px), a synthetic LGG table of 8 patients, `classeg train` with each engine (2 processes x 1 "
            "thread, batch 16 per process, 3 epochs, images/s as the loop reports it, mean over the epochs after "
            "the first), against `classeg.training.loop.setup` + `train_one_epoch` in one plain process with torch "
            "on 2 threads over the same cache, the first epoch a warm-up (`benchmarks/train_throughput.py`). "
            "Recorded on the quiet machine after make test: Horovod 0.81x / 0.80x and torch 0.98x / 0.83x at 64 / "
            "128 px, the plain loop at 55 / 21 images/s, the loader alone at 17,265 / 10,830 images/s, so the "
            "input path is no longer what the ranks wait on. A helper's run of the same script while other "
            "tests ran gave a plain loop of 2-3 images/s: compare only quiet runs. Earlier recordings (Petastorm "
            "reader, PNG decode per epoch; the lines below): "
            "Training images/s of the classifier (and segmenter) with `engine: horovod` on `local[2]` (2 processes, "
            "1 thread each, Petastorm readers sharded by rank) against one process running the same loop with the "
            "same per-process batch. Epoch time excludes session and Horovod start-up, which are reported "
            "separately. Ratio = distributed images/s / single-process images/s; 2 is the ideal on 2 cores. Rerun "
            "2026-12-01 (after the rank reader moved to `classeg.training.shards`): 0.40x. In that run the "
            "single-process loop ran at 73 images/s; the first recording (2.05x) had it at 17 images/s. The "
            "distributed rates moved much less (Horovod 34.9 -> 29.6, torch 46.5 -> 46.8 images/s). Why the "
            "baseline ran 4x faster was not investigated. At 64 px and 16 images per step, two 1-thread ranks "
            "do not beat one 2-thread process on this machine. Rerun 2026-12-02 after the issue-13 moves and the "
            "mask-supervised classifier (whose loader also decodes masks): Horovod 0.60x, torch 0.76x, the "
            "single-process loop again at 72 images/s, so no step backwards from the moves.")),
    Benchmark(
        name="cpu_scaling", script="cpu_scaling.py",
        title="CPU scaling ceiling under the engines (model only)",
        baseline="the same model and batch in one process with torch on 2 threads (train_throughput's plain loop, "
                 "with no loader)",
        summarise=summarise_cpu_scaling,
        method=(
            "Rerun 2026-12-07 (the table) with a `ddp_fp16` mode, DDP's `fp16_compress_hook` "
            "(`train.grad_compression=fp16`), default arguments: at 64 px two 1-thread processes without "
            "communication gave 1.59x the 2-thread process, with DDP 1.33x, with the fp16 allreduce 1.28x; at 128 "
            "px 1.17x, 1.00x and 0.94x. On this session's VM the 2-thread process did worse against two 1-thread "
            "ones than on 2026-12-04's (1.11x and 0.89x at 64 px then), so the ceiling moves with the machine. "
            "Halving the allreduce's bytes did not pay here: Gloo's allreduce of the 45 MB took 44.5 ms in fp32 "
            "and 23.6 ms in bf16, yet rank 0's backward (the allreduce inside it) took 321 ms a step with the hook "
            "against 305 ms without at 64 px, 878 against 822 at 128 px: the hook's casts and per-bucket work "
            "cost more than the halved transfer saves on these cores. "
            "`benchmarks/cpu_scaling.py`: ResNet18 (2 classes) trains on one random batch of 16 per process with "
            "AdamW, no loader, no Spark, no engine: one process on 2 threads; two 1-thread processes at once "
            "with no communication; the same two averaging gradients with DistributedDataParallel over Gloo "
            "(the torch engine's CPU path). Each mode twice, interleaved, the median counts; the phase times are "
            "rank 0's of the last round. It bounds what `train_throughput.py` can show: two 1-thread ranks "
            "match or beat one 2-thread process when they do not talk, and the allreduce of ResNet18's 45 MB of "
            "gradients every 16 images takes most of that margin at 64 px, less at 128 px, where a step "
            "computes four times as much. "
            "Horovod's own allreduce of the same gradients (62 tensors, fused) took about 50 ms at a 5 ms "
            "cycle and about 120 ms at 1 ms in a separate measurement (horovod.runner, two 1-thread ranks), "
            "against 28 ms for one torch.distributed Gloo allreduce of one tensor that size.")),
    Benchmark(
        name="loader", script="loader.py", title="Training loader: the decoded cache and batched augmentation",
        baseline="the per-image path every rank ran before the cache (`training.data.decode_example`: PNG decode, "
                 "preprocess, numpy augmentation), in the same process",
        summarise=summarise_loader, args=("--image-size", "224", "--augment"),
        method=(
            "1024 synthetic LGG-style 256 px 3-channel scans, PNG-encoded as the scan table stores them, turned "
            "into cache rows by `classeg.training.cache.cache_row` (what the executors run in `prepare_split`: "
            "decoded uint8 at the 224 px input size) and written as Parquet files of 128 rows. Loader: shuffled "
            "passes of `classeg.training.cache.open_pass` (2 reader threads, batches of 64; the first pass "
            "warms up) in one process; images/s over the wall clock, per core = images / CPU seconds of the "
            "whole process over the same span. Augmentation: `classeg.training.augment.model_inputs` with "
            "augmentation (flips and rotation as one affine grid_sample, intensity, normalisation) on the CPU "
            "with torch on one thread, the fallback without a GPU; on a GPU it runs on the device "
            "(`benchmarks/gpu.py`). Baseline: `decode_example` per image on one thread, with and without the "
            "numpy augmentation, in the same process. Goals (issue 17): loader >= 2,000 images/s per core, "
            "batched augmentation >= 4x the old augmented path per core. Rerun 2026-12-04 after `collate` "
            "gathered each row group's rows in one call and the augmentation draws became array arithmetic "
            "(the GPU section says why): 3,937 images/s per core (2,662 on 2026-12-03), the batched CPU "
            "augmentation 4.93x the old path in the same process (6.37x before: the old path measured 108 "
            "images/s per core this time against 45), 5.78x the issue's 92.")),
    Benchmark(
        name="dispatch", script="dispatch.py",
        title="The loader's threads beside the thread that dispatches the step (the GIL's share)",
        baseline="the same loader, taken at the same batches/s, in a child process (and no loader at all)",
        summarise=summarise_dispatch,
        method=(
            "`benchmarks/dispatch.py` with its defaults: a stand-in for a training step's host side (in-place "
            "adds on a one-element CPU tensor, each releasing and retaking the GIL as a kernel launch does) "
            "timed alone, beside `classeg.training.cache.open_pass` (2 reader threads, batches of 256 at 224 px "
            "from 2,048 decoded synthetic rows in files of 128) running on threads of the same process, and "
            "beside the same loader in a forked child process; the loader is taken at half the batches/s it "
            "delivers alone, without catching up when late, so both variants put the same work on the cores. "
            "Five rounds of 3 s per variant, the order rotated each round; medians. threads / process is what "
            "sharing the interpreter costs, apart from the cores: the part of the GPU epoch's gap (0.77x with "
            "the loader, 0.91x without, GPU section) that reader processes could take back; on this 2-core VM "
            "the cores' share is large, on the 16-core GPU machine it should be about 1 "
            "(`benchmarks/gpu.py` runs the same measurement there with the launches on the GPU). Noisy here: the "
            "recorded run's per-round threads / process ratios were 1.02, 0.90, 0.91, 0.93 and 0.89, and "
            "ad-hoc runs of the loader's parts alone on threads (file reads only, collation only) ranged from "
            "0.67x to 1.47x round to round, so this VM cannot say which part holds the interpreter.")),
    Benchmark(
        name="train_quality", script="train_quality.py", title="Training quality (synthetic data)",
        baseline="the training recipe before the 12.4 change (the `baseline` rows; mni on another seed's table)",
        summarise=summarise_train_quality,
        method=(
            "Test-split accuracy, balanced accuracy and ROC AUC of a ResNet18 classifier trained from scratch (no "
            "ImageNet weights) and tumour-slice Dice of the ResUNet segmenter, both with the DEFAULT `train` recipe "
            "(only image size, engine `horovod`, 2 processes x 1 thread are set), on synthetic LGG-layout data with "
            "a patient-level split, in two anatomies: `phantom` (20 patients, 64 px; goals accuracy >= 0.90, Dice "
            ">= 0.75) and `mni` (lesions of 9-22 mm on the MNI152 template, 24 patients, 128 px, `classeg synth "
            "--anatomy mni`; goals balanced accuracy >= 0.90, AUC >= 0.95, Dice >= 0.85). Baseline rows: the recipe "
            "before issue 12.4 (10 epochs, lr 0.001, no early stopping, best epoch by validation accuracy), mni "
            "measured on 2026-12-02 with the CLI on a `classeg synth --anatomy mni --patients 24 --image-size 128` "
            "table (seed 0); phantom is the previous recording of this benchmark, which overrode the recipe "
            "(classifier 20 epochs at lr 0.0005, segmenter 30 epochs at lr 0.002). The new recipe: lr 0.002, up to "
            "30 epochs with early stopping (patience 10) on validation balanced accuracy (classifier) or tumour "
            "Dice (segmenter), the best epoch's weights tested and saved; the classifier's backbone at the full "
            "lr when it starts from scratch, and a mask-supervised lesion map (`train.mask_supervision`, a 1x1 "
            "convolution on layer2 whose maximum is added to the tumour logit, trained on the masks) because "
            "both tables have masks. The recipe was tuned on a seed-0 mni table (see the result's notes); the "
            "benchmark's tables use seed 11, so the test split is data the tuning never saw. Synthetic data are "
            "easier than patients: these numbers say the recipe finds small lesions on real anatomy, not what "
            "it scores on hospital scans.")),
    Benchmark(
        name="score", script="score.py", title="Bulk scoring throughput (Class-Seg pandas-UDF job)",
        baseline="one Python process (torch on both cores) reading, decoding, classifying and segmenting the same "
                 "archive with the same models",
        summarise=summarise_score, quick_args=("--quick",),
        method=(
            "Rerun 2026-12-07 (the table; default arguments: 2,000 scans, worker memory at 1,000 and 4,000) after "
            "the model stages came to be timed with CUDA events on a GPU (the host clock on the CPU, as before) "
            "and model inputs stopped making index and normalisation tensors per batch: 0.98x the plain loop best "
            "of 2, 1.06x on the medians; the host's fetch + decode + encode 4.3 ms per image; worker peak RSS "
            "1,445 and 1,522 MiB. "
            "A local folder of synthetic LGG-style 256 px 3-channel TIFFs (distinct files, about half with a lesion), "
            "scored by `classeg.scoring.ScoreJob` on a started and warmed-up `local[2]` session (mapInPandas, models "
            "loaded once per task, 1 torch thread per task) against a single-process loop doing the same read / "
            "decode / preprocess / classify / segment-the-positives / PNG-encode work with torch on 2 threads. Both "
            "use the same untrained ResNet18 and ResUNet artifacts and the same tumour threshold (the median "
            "probability), so they segment the same scans; throughput does not depend on the weights. The job's "
            "time covers listing, the manifest, scoring, the Parquet write and read-back checks. Ratio = job "
            "images/s / loop images/s. Peak RSS of the Python workers is sampled at two archive sizes: flat means "
            "memory does not grow with the archive. Default model input 128 px. Second session, 2026-11-22: the job "
            "now runs one task per core (whole waves of at most 2000 scans a task) instead of 4 per core, and small "
            "runs read the written table back once instead of twice. Before: 0.83x at 96 px (the recorded result "
            "of the first session). After, same machine, same session: 1.14x at 128 px (recorded here) and 0.98x "
            "at 96 px (`--model-size 96`); with 4 tasks per core the 128 px run gave 1.06x. Smaller models expose "
            "the job's fixed per-scan costs more, which is why the 96 px ratio is lower. Worker memory: the peak "
            "at 4000 scans is about 8% above the one at 1000 (each task now scores 4x the scans); scoring 4000 "
            "scans in one process with the same loop, sampled every 400 scans, the RSS stays between 1100 and "
            "1255 MiB and the peak (1349 MiB) is reached by scan 2400 and does not move after: no growth with "
            "the number of scans. Third session, 2026-12-01: the scoring code is unchanged; the local driver JVM "
            "now runs C1-only (`spark.local_java_options`, for ingest). Three runs of this script that day: 1.10x "
            "with C1-only and 1.08x with the full JIT (one after the other, `--rss-sizes 1000`), then the recorded "
            "run, 0.99x best of 2 and 1.14x on the medians: its two plain-loop runs took 36.4 s and 24.4 s on the "
            "same scans, so the machine's noise, not the JVM option, decides the ratio between 1.0x and 1.15x. "
            "Issue 17 (2026-12-03), after scoring moved resizing, normalisation and the masks' resize onto the "
            "device and cut batches by image count: `--scans 1000 --rss-sizes 500,1000`, on the quiet machine "
            "after make test: 1.00x the plain loop (best and median of 2); the job's stage seconds (summed over "
            "tasks and threads) were fetch 3.6, decode 0.5, preprocess 2.9, classify 20.5, segment 12.2, encode "
            "1.7, write 0.5: the host's fetch + decode + encode cost 5.8 ms per image beside the models, and "
            "preprocessing on the device (here the CPU) 2.9 ms per image.")),
    Benchmark(
        name="dicom", script="dicom.py",
        title="DICOM: decode cost per transfer syntax, and scoring a 16-bit MR archive",
        baseline="decode: the same slice uncompressed (Explicit VR Little Endian); scoring: the plain loop of the "
                 "scoring benchmark on the same DICOM archive",
        summarise=summarise_dicom, quick_args=("--quick",),
        method=(
            "Decode cost: one synthetic 256 px MR slice with 16-bit (uint16) stored values and a rescale, written "
            "by `classeg.synthetic.formats.write_dicom` (no window in the file, so classeg windows it at the "
            "0.5th-99.5th percentiles), re-encoded with pydicom into every transfer syntax it can write in this "
            "environment: Implicit VR LE, Explicit VR Big Endian (pixel bytes swapped by the script: `dcmwrite` "
            "does not convert endianness), Deflated Explicit VR LE, RLE Lossless, JPEG 2000 Lossless and JPEG "
            "2000 lossy (`j2k_cr=[10]`); JPEG-LS is listed but not measured when no encoder is installed (its "
            "decoder, pylibjpeg-libjpeg, is). Per syntax the file size and the median time of one call of "
            "`classeg.imaging.decode_file` (header, pixel decode, rescale, window to uint8), and of pydicom's "
            "own `dcmread(...).pixel_array`, 0.5 s of calls per syntax in five rounds that visit every syntax "
            "in turn, so that load changes hit all alike; ratios are to the uncompressed file measured in the "
            "same rounds. Lossless encodings are checked to give the same stored values and the same uint8 "
            "image as the uncompressed file (the script fails otherwise); lossy rows give the differences. "
            "Scoring: 200 such slices (32 distinct phantoms, half with a lesion, each file shifted, with its own "
            "UIDs and scale), even files uncompressed and odd files JPEG 2000 Lossless, scored by "
            "`classeg.scoring.ScoreJob` on a started, warmed-up `local[2]` session against the single-process "
            "loop of `benchmarks/score.py`, with that benchmark's models (untrained ResNet18 and ResUNet at "
            "128 px, 3-channel inputs: the slice is repeated by their preprocessing), threshold rule and "
            "alternating best-of-3 comparison (`score.alternate_runs`). Ratio = job images/s / loop images/s. "
            "The archive is small (a few seconds per run), so the job's fixed per-run costs (listing, manifest, "
            "Parquet write and read-back) weigh more than in the 2000-scan TIFF benchmark. Recorded run "
            "(2026-12-03): job 0.82x the loop over the whole run, while its scoring stage alone (48.9 images/s) "
            "matches the loop (47.8): about 1 s of the job's 5.1 s is the fixed cost. Decoding: uncompressed, "
            "pydicom's pixel read is about a quarter of `decode_file`; the rest is classeg's header read, "
            "rescale and percentile window. JPEG 2000 Lossless costs about 5x the uncompressed decode (its "
            "pixel decode 17x pydicom's native read), the lossy one 2x. A first attempt that day ran while "
            "another process kept one core busy: loop 10.9 images/s, job 20.6 (1.88x); a 2-thread torch loop "
            "loses most from a busy core, so compare only runs made on a quiet machine.")),
    Benchmark(
        name="plan_scale", script="plan_scale.py",
        title="Planning a scoring run at archive scale (manifest anti-join in Spark)",
        baseline="the in-memory manifest path every run used before (Manifest.load, then pending of the listing)",
        summarise=summarise_plan_scale, quick_args=("--quick",),
        method=(
            "Per size N, a manifest 90% full: 90% of the objects recorded at their listed version and 5% at an "
            "older one (changed since), in 16 Parquet files as earlier runs leave them (written with pyarrow, not "
            "timed). Two listing sources, as `classeg score` lists (`classeg.scoring.listing.archive_listing`): "
            "an S3 Inventory report of N objects in AWS's layout on local disk (CSV, gzip, one data file per "
            "million objects, at least two; its manifest read on the driver, the data files parsed in Spark "
            "tasks), and a local tree of N empty files (100 per folder; its parts found on the driver, listed in "
            "tasks; up to `--local-max`, 10^6 by default: 10^7 files take minutes to make and 10^7 inodes). Both "
            "are written by a separate process so that the driver's memory is the plan's own. On a started "
            "`local[2]` session with `spark.driver.memory` 1g (in local mode the executors run inside the driver "
            "JVM, so its peak includes the tasks' joins, sorts and cached blocks), per size: plan = "
            "`archive_listing` + `classeg.scoring.job.plan_pending` with the changed count (what `score "
            "--plan-only` does: the listing listed and cached, the left anti-join with the manifest on (uri, "
            "version), its count, the changed objects' count, the tasks at `score.objects_per_task` = 2000); "
            "partition = the pending objects shuffled into those tasks (a `noop` write); record = "
            "`Manifest.record_frame` of the run's 0.1 N rows read back from Parquet (new files only). The "
            "seconds headline is plan + partition. Peak RSS is VmHWM of the driver's Python process and of the "
            "Spark JVM, reset before each step through /proc/<pid>/clear_refs where allowed; the JVM's hardly "
            "drops after a reset because its heap, once grown, stays resident, so it is an upper bound set by "
            "the heap's growth as much as by the data. The Python workers that parse the report are executors' "
            "processes (on a cluster they are on the workers): their peak is shown apart. The in-driver rows "
            "are the earlier measurement's method (a made-up pandas listing in the driver, then the same plan, "
            "record and compaction) with the in-memory baseline (Manifest.load, then pending of the listing), "
            "up to `--memory-max`. Projection to 10^8 on a cluster: listing and the anti-join are Spark tasks "
            "and shuffles that spread over the executors; the driver keeps the report's manifest (one entry per "
            "data file) and counts. Not measured here: listing S3 itself (tests/integration/test_listing.py "
            "checks it on moto) and a real cluster. Recorded run (2026-12-03, `--sizes 100000,1000000 --with-1e7 "
            "--sources inventory,local`, so no in-driver rows this time; load average 1.9 at the end): 10^7 objects "
            "from the report in 118 s with the driver at 1.58 GB, the goal met; planning grew 8.8x for 10x objects "
            "(exponent 0.94), so 10^8 on this local[2] driver would take about 17 minutes, and on a cluster the "
            "listing tasks and the join's shuffle divide over the executors' cores while the driver's memory "
            "stays flat (exponent 0.05). The local tree's 10^5 row is dominated by its 109 listing tasks' start-up "
            "(about 0.2 s each on 2 cores). Before the listing was cached on disk (DISK_ONLY), the 10^7 run ran "
            "the 1 GB driver heap out of memory caching 1M-row listing tasks.")),
    Benchmark(
        name="gpu", script="gpu.py", title="GPU: model ceilings, the training loop and the predictor (NVIDIA H200)",
        baseline="model-only ceilings measured in the same run: ResNet18/50 at 224 px and batch 256, the ResUNet "
                 "at 256 px and batch 64, forward and train step on random tensors already on the device, bf16 "
                 "autocast, channels_last, cudnn.benchmark",
        summarise=summarise_gpu, device_only=True,
        method=(
            "`benchmarks/gpu.py` on the lent GPU machine (one H200, 16 cores, Python 3.12, torch 2.11, numpy 2.5; "
            "no Spark there, boto3 carried as wheels), `--seconds 5`, every part: model-only ceilings; checks of "
            "the device against the CPU on the same inputs (the batched augmentation, fp32 on both; the "
            "predictor, fp32 on the CPU and float16 autocast on the device); `ClassSegPredictor` over 20,000 "
            "synthetic 256 px scans in batches of 256 (untrained models, tumor_threshold the median so half are "
            "segmented) and two 5,000-scan variants (contiguous tensors; cudnn.benchmark on); the cache loader "
            "alone (7,680 rows at 224 px, reader threads 4 / 8 / 16, batches of 256 into pinned memory) and with "
            "the copy and augmentation on the device; `train_one_epoch` of the per-rank loop (ResNet18, the "
            "default recipe with augmentation, the library's bf16 / channels_last / cudnn settings, 30 steps of "
            "256, the first epoch a warm-up, two timed) with the loader's fastest thread count; the same loop "
            "without the loader (8 batches kept on the device: augmentation + `train_step`, and `train_step` "
            "alone); and the epoch again with `train.compile`. Four runs on 2026-12-04, each after a change "
            "that the one before pointed at (15 minutes of device time in all). Run 1, the code as it was: "
            "epoch 8,389 images/s (0.64x), compiled 8,743 (0.67x), loader to the device 12,973, predictor 6,208 "
            "(0.75x of its work) and 4,889 with contiguous tensors (the predictor then used NHWC only on the CPU: "
            "now on CUDA too). Run 2, after the per-row pixel copy in `collate` became one gather per row group "
            "(a per-row copy releases and retakes the GIL 256 times a batch, and beside the thread dispatching "
            "CUDA kernels each retake waits) and the augmentation draws became array arithmetic "
            "(`classeg.training.seeded`, bit for bit numpy's default_rng, 0.5 ms instead of 4.7 ms of Python per "
            "256 scans): epoch 9,728 (0.75x); without the loader 0.91x, the library's step alone 1.006x, so the "
            "step itself is at the ceiling; predictor 0.79x, and 0.15x with cudnn.benchmark (every new number "
            "of tumour scans in a batch is tuned again), so scoring leaves it off. Run 3, the row-group gathers "
            "on their own threads: loader alone 24,405, epoch unchanged (9,772): the batch copy waited in line "
            "on the training stream. Run 4 (the table), batches copied one ahead on a side stream "
            "(now `classeg.training.accel.prepared_ahead`): epoch 10,117 (0.77x), compiled 11,134 (0.85x), "
            "predictor 0.80x. What is left of the training gap: the augmentation on the training stream (0.91x "
            "without the loader) and the host threads' share of the GIL beside the dispatching thread (0.77x with "
            "it); `train.compile` (24 s to compile) takes most of it back. Since then (2026-12-07, not yet run on "
            "a GPU) the model input is made a batch ahead on the side stream too, so its augmentation kernels "
            "can run beside the step's; the row 'training epoch, input made on the training stream' is the "
            "placement of run 4, measured in the same run, and the row 'a tenth of the thread switch interval' "
            "tells whether the loader threads' hold on the GIL keeps the dispatching thread waiting. Published "
            "anchors for scale (NVIDIA "
            "DeepLearningExamples, ResNet50 v1.5 for PyTorch, pytorch-21.03 container): training on one A100 80GB "
            "with mixed precision 2,470 images/s, inference on one V100 at batch 256 with mixed precision 3,382 "
            "images/s; the ceilings here (ResNet50 train step 4,694, forward 15,574 on the H200) sit where an "
            "H100-class chip should. The issue's figures for scoring are about 43-49 images/s per GPU for a Spark "
            "pandas-UDF ResNet50 recipe and about 166 per T4 for Ray Data; here the predictor scores 6,651 "
            "scans/s, half of them also segmented.")),
]


# ---------------------------------------------------------------------------------------------- machine
def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    for module in ("torch", "pyspark", "pyarrow", "horovod"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = "not installed"
    return info


# ---------------------------------------------------------------------------------------------- running
def run(bench: Benchmark, *, quick: bool) -> dict:
    """Run one benchmark script; returns {status, seconds, detail}."""
    script = BENCH_DIR / bench.script
    if not script.is_file():
        return {"status": "missing", "seconds": 0.0, "detail": f"benchmarks/{bench.script} does not exist yet"}
    command = [sys.executable, str(script), *bench.args, *(bench.quick_args if quick else ())]
    print(f"== {bench.name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, text=True, stdout=sys.stdout, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
        print(f"== {bench.name} FAILED (exit {completed.returncode}) after {seconds:.0f}s:\n{tail}", flush=True)
        return {"status": "failed", "seconds": seconds, "detail": f"exit {completed.returncode}: {tail}"}
    print(f"== {bench.name} done in {seconds:.0f}s", flush=True)
    return {"status": "ok", "seconds": seconds, "detail": ""}


def render(runs: dict[str, dict], info: dict) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/run_all.py` (`make bench`) from the JSON files in `benchmarks/results/`; edit the "
        "method notes in that script, not here.",
        "",
        f"Rendered {now}.",
        "",
        "## Machine",
        "",
        f"- CPU: {info.get('cpu', 'unknown')} ({info.get('cpus')} logical cores)",
        f"- Memory: {info.get('memory_gb', '?')} GB",
        f"- OS: {info.get('platform')}",
        f"- Python {info.get('python')}, torch {info.get('torch')}, pyspark {info.get('pyspark')}, "
        f"pyarrow {info.get('pyarrow')}, horovod {info.get('horovod')}",
        "",
        "## Summary",
        "",
        "| benchmark | result | baseline | measured |",
        "|---|---|---|---|",
    ]
    sections = []
    for bench in BENCHMARKS:
        result = _load(bench.result_path)
        outcome = runs.get(bench.name)
        note = ""
        if outcome and outcome["status"] == "failed":
            note = (f"\n\n**The last run failed** ({outcome['detail'].splitlines()[0] if outcome['detail'] else ''}); "
                    + ("the numbers below are from an earlier run." if result else "no result."))
        if result is None:
            headline, body, when = "not run", [f"Not run: no `benchmarks/results/{bench.name}.json`"
                                               + (f" ({outcome['detail']})" if outcome and outcome["status"] ==
                                                  "missing" else "") + "."], "-"
        else:
            summarise = bench.summarise or summarise_generic
            try:
                headline, body = summarise(result)
            except (KeyError, TypeError, ValueError) as err:  # a result format this template does not know yet
                headline, body = summarise_generic(result)
                body = [f"(unrecognised result layout: {type(err).__name__}: {err})", ""] + body
            when = str(result.get("date") or result.get("created") or "?")
        lines.append(f"| [{bench.title}](#{bench.name}) | {headline} | {bench.baseline} | {when} |")
        sections += ["", f"<a id='{bench.name}'></a>", f"## {bench.title}", "",
                     f"**Result:** {headline}. **Baseline:** {bench.baseline}. Measured: {when}. "
                     f"Script: `benchmarks/{bench.script}`; result: `benchmarks/results/{bench.name}.json`.{note}",
                     "", *body, "", f"**Method.** {bench.method}"]
        if result and isinstance(result.get("method"), str):
            sections += ["", f"Recorded with the result: {result['method']}"]
    return "\n".join(lines + sections) + "\n"


def _load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [b.name for b in BENCHMARKS]
    parser.add_argument("--only", action="append", choices=names, help="run only these (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="do not run; rewrite BENCHMARKS.md only")
    parser.add_argument("--quick", action="store_true", help="pass --quick where a benchmark supports it")
    parser.add_argument("--output", default=str(OUTPUT), help="markdown file to write (default BENCHMARKS.md)")
    args = parser.parse_args(argv)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONPATH", str(ROOT / "lib"))  # for checkouts without `pip install -e .`
    runs: dict[str, dict] = {}
    if not args.report_only:
        for bench in BENCHMARKS:
            if args.only and bench.name not in args.only:
                continue
            if bench.device_only:
                print(f"== {bench.name}: not run here (needs a GPU); its stored result is rendered", flush=True)
                continue
            runs[bench.name] = run(bench, quick=args.quick)
    Path(args.output).write_text(render(runs, machine()), encoding="utf-8")
    print(f"wrote {args.output}")
    failed = [name for name, outcome in runs.items() if outcome["status"] == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
