"""Training quality benchmark: synthetic LGG (>= 12 patients) -> ingest -> classifier and segmenter trained with
Horovod on 2 processes -> test accuracy (goal >= 0.90), segmenter test Dice on tumour slices (goal >= 0.75) and
wall time (goal <= 15 min). Writes benchmarks/results/train_quality.json and prints a markdown table.

    .venv/bin/python benchmarks/train_quality.py [--patients 20] [--image-size 64] [--epochs 20] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "train_quality.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--segmenter-epochs", type=int, default=30)
    parser.add_argument("--engine", default="horovod", choices=["horovod", "torch"])
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)

    from classeg.config import load_config
    from classeg import synthetic
    from classeg.ingest.job import run_ingest
    from classeg.spark import get_spark
    from classeg.training import run_training

    work = Path(args.workdir or tempfile.mkdtemp(prefix="classeg-train-quality-"))
    started = time.time()
    synthetic.write_lgg(work / "data", patients=args.patients, seed=11, image_size=args.image_size)
    base = ["spark.master=local[2]", f"ingest.image_size={args.image_size}"]
    cfg = load_config(overrides=[*base, "ingest.dataset=lgg", f"ingest.input={work / 'data'}",
                                 f"ingest.output={work / 'table'}"])
    spark = get_spark(cfg)
    summary = run_ingest(spark, cfg)
    ingest_seconds = time.time() - started
    common = [*base, f"train.scans={work / 'table'}", f"train.engine={args.engine}", "train.num_proc=2",
              "train.threads_per_proc=1", f"train.image_size={args.image_size}", "train.batch_size=16"]
    runs = {}
    for task, extra in (("classify", [f"train.epochs={args.epochs}", "train.lr=0.0005"]),
                        ("segment", [f"train.epochs={args.segmenter_epochs}", "train.base_filters=16",
                                     "train.lr=0.002", "train.loss=focal_tversky"])):
        t0 = time.time()
        result = run_training(spark, load_config(overrides=[*common, f"train.task={task}",
                                                            f"train.output={work / task}", *extra]))
        runs[task] = {"seconds": round(time.time() - t0, 1), "test": result["test"], "best_epoch": result["best_epoch"],
                      "epochs": len(result["history"]), "artifact": result["artifact"],
                      "images_per_sec": [round(h["images_per_sec"], 1) for h in result["history"]]}
    total = time.time() - started
    record = {
        "patients": args.patients, "image_size": args.image_size, "engine": args.engine, "processes": 2,
        "scans": summary["scans"], "per_split": summary["per_split"], "ingest_seconds": round(ingest_seconds, 1),
        "classifier": {"test_accuracy": runs["classify"]["test"]["accuracy"],
                       "test_roc_auc": runs["classify"]["test"]["roc_auc"], **runs["classify"]},
        "segmenter": {"test_dice_tumour": runs["segment"]["test"]["dice_tumour"],
                      "test_dice_mean": runs["segment"]["test"]["dice"], **runs["segment"]},
        "wall_seconds": round(total, 1),
        "goals": {"accuracy>=0.90": runs["classify"]["test"]["accuracy"] >= 0.90,
                  "dice_tumour>=0.75": runs["segment"]["test"]["dice_tumour"] >= 0.75,
                  "wall<=900s": total <= 900},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2, default=str))
    print("| metric | value | goal | met |\n|---|---|---|---|")
    print(f"| classifier test accuracy | {record['classifier']['test_accuracy']:.3f} | >= 0.90 | {record['goals']['accuracy>=0.90']} |")
    print(f"| segmenter test Dice (tumour slices) | {record['segmenter']['test_dice_tumour']:.3f} | >= 0.75 | {record['goals']['dice_tumour>=0.75']} |")
    print(f"| wall time (synth + ingest + both trainings) | {total:.0f} s | <= 900 s | {record['goals']['wall<=900s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
