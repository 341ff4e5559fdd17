"""Training quality benchmark: synthetic LGG -> ingest (patient-level split) -> classifier (ResNet18 from
scratch) and segmenter (ResUNet) trained with the DEFAULT recipe on 2 processes -> test accuracy, balanced
accuracy, ROC AUC and tumour-slice Dice, per anatomy. Writes benchmarks/results/train_quality.json and prints a
markdown table.

Two anatomies (``--anatomy both``, the default): ``phantom`` (the fast shapes, 20 patients at 64 px) and
``mni`` (lesions on the MNI152 template, 24 patients at 128 px; needs the synth extra). Only the model input size,
the engine and the process count are set; every other ``train`` value is the shipped default, so the numbers
measure the default recipe. A ``baseline`` entry already in the result file (the numbers before a recipe change,
with how they were measured) is kept as it is.

    .venv/bin/python benchmarks/train_quality.py [--anatomy both|phantom|mni] [--engine horovod] [--workdir DIR]
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

os.environ.setdefault("OMP_NUM_THREADS", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "train_quality.json"
#: Per anatomy: dataset size and model input side.
MODES = {"phantom": {"patients": 20, "image_size": 64}, "mni": {"patients": 24, "image_size": 128}}
#: Goals per anatomy (metric -> lowest acceptable test value).
GOALS = {"phantom": {"accuracy": 0.90, "dice_tumor": 0.75},
         "mni": {"balanced_accuracy": 0.90, "roc_auc": 0.95, "dice_tumor": 0.85}}
PROCESSES = 2
SEED = 11


def run_mode(spark, anatomy: str, *, work: Path, engine: str, epochs: int | None) -> dict:
    """Synthesise, ingest and train both tasks for one anatomy; returns the mode's record."""
    from classeg import synthetic
    from classeg.config import load_config
    from classeg.ingest.job import run_ingest
    from classeg.training import run_training

    mode = MODES[anatomy]
    started = time.time()
    synthetic.write_lgg(work / "data", patients=mode["patients"], seed=SEED, image_size=mode["image_size"],
                        anatomy=anatomy)
    base = ["spark.master=local[2]", f"ingest.image_size={mode['image_size']}"]
    summary = run_ingest(spark, load_config(overrides=[*base, "ingest.dataset=lgg", f"ingest.input={work / 'data'}",
                                                       f"ingest.output={work / 'table'}"]))
    ingest_seconds = time.time() - started
    common = [*base, f"train.scans={work / 'table'}", f"train.engine={engine}", f"train.num_proc={PROCESSES}",
              "train.threads_per_proc=1", f"train.image_size={mode['image_size']}",
              *([f"train.epochs={epochs}"] if epochs else [])]
    runs = {}
    for task in ("classify", "segment"):
        t0 = time.time()
        result = run_training(spark, load_config(overrides=[*common, f"train.task={task}",
                                                            f"train.output={work / task}"]))
        runs[task] = {"seconds": round(time.time() - t0, 1), "test": result["test"],
                      "best_epoch": result["best_epoch"], "epochs": len(result["history"]),
                      "history": result["history"], "artifact": result["artifact"]}
    test_cls, test_seg = runs["classify"]["test"], runs["segment"]["test"]
    metrics = {"accuracy": test_cls["accuracy"], "balanced_accuracy": test_cls["balanced_accuracy"],
               "roc_auc": test_cls["roc_auc"], "dice_tumor": test_seg["dice_tumor"]}
    return {"patients": mode["patients"], "image_size": mode["image_size"], "scans": summary["scans"],
            "per_split": summary["per_split"], "ingest_seconds": round(ingest_seconds, 1), **metrics,
            "goals": {f"{k}>={v:.2f}": metrics[k] >= v for k, v in GOALS[anatomy].items()},
            "wall_seconds": round(time.time() - started, 1), "classifier": runs["classify"],
            "segmenter": runs["segment"]}


def table(record: dict) -> list[str]:
    """The markdown table of a result: one row per anatomy (and its baseline when recorded)."""
    lines = ["| anatomy | recipe | accuracy | balanced accuracy | ROC AUC | Dice (tumour slices) | epochs run "
             "(classifier / segmenter) | wall s | goals met |", "|---|---|---|---|---|---|---|---|---|"]
    baseline = record.get("baseline") or {}
    for anatomy, mode in record.get("modes", {}).items():
        rows = [("baseline", baseline.get(anatomy)), ("default", mode)]
        for recipe, entry in rows:
            if not entry:
                continue
            goals = entry.get("goals") or {}
            epochs = (f"{entry['classifier']['epochs']} / {entry['segmenter']['epochs']}"
                      if "classifier" in entry else entry.get("epochs", ""))
            value = {k: "n/a" if entry.get(k) is None else f"{entry[k]:.3f}"
                     for k in ("accuracy", "balanced_accuracy", "roc_auc", "dice_tumor")}
            met = ", ".join(k for k, v in goals.items() if v) or "-"
            missed = [k for k, v in goals.items() if not v]
            lines.append(f"| {anatomy} | {recipe} | {value['accuracy']} | {value['balanced_accuracy']} | "
                         f"{value['roc_auc']} | {value['dice_tumor']} | {epochs} | "
                         f"{entry.get('wall_seconds', '')} | {met}"
                         f"{' (not met: ' + ', '.join(missed) + ')' if missed else ''} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anatomy", default="both", choices=["both", *MODES])
    parser.add_argument("--engine", default="horovod", choices=["horovod", "torch"])
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the recipe's)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    # per-epoch lines from rank 0 (the ranks log at the driver's level)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    from classeg.config import load_config
    from classeg.spark import get_spark

    work = Path(args.workdir or tempfile.mkdtemp(prefix="classeg-train-quality-"))
    anatomies = list(MODES) if args.anatomy == "both" else [args.anatomy]
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    spark = get_spark(load_config(overrides=["spark.master=local[2]"]))
    started = time.time()
    modes = dict(previous.get("modes") or {}) if args.anatomy != "both" else {}
    for anatomy in anatomies:
        modes[anatomy] = run_mode(spark, anatomy, work=work / anatomy, engine=args.engine, epochs=args.epochs)
    record = {
        "benchmark": "train_quality", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "engine": args.engine, "processes": PROCESSES, "threads_per_process": 1,
        "recipe": "defaults" if not args.epochs else f"defaults, epochs {args.epochs}",
        "wall_seconds": round(time.time() - started, 1), "modes": modes,
        **({"baseline": previous["baseline"]} if "baseline" in previous else {}),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2, default=str))
    print("\n".join(table(record)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
