"""Subcommand bodies: parse nothing, validate what they need, build the SparkSession through the one factory
when Spark is needed, and call the library. `classeg.cli` and `jobs/*.py` route here; `classeg.cli.main` stops
the session a command started when the command ends."""
from __future__ import annotations

import logging

from classeg.config import Config

log = logging.getLogger(__name__)


def synth(args, cfg: Config) -> dict:
    from classeg import synthetic

    truth = synthetic.write_dataset(args.layout, args.output, patients=args.patients, seed=args.seed,
                                    image_size=args.image_size, anatomy=args.anatomy)
    summary = {"layout": args.layout, "anatomy": args.anatomy, "output": args.output, "files": truth["files"],
               "slices": len(truth["slices"]), "broken": len(truth.get("broken", []))}
    log.info("synth: wrote %(files)d files (%(slices)d slices) to %(output)s", summary)
    return summary


def ingest(args, cfg: Config) -> dict:
    from classeg.ingest.job import run_ingest
    from classeg.spark import get_spark

    if not cfg.ingest.input or not cfg.ingest.output:
        raise ValueError("ingest needs --input URI and --output URI")
    spark = get_spark(cfg, app_name=f"classeg-ingest-{cfg.ingest.dataset}")
    summary = run_ingest(spark, cfg)
    return {k: summary[k] for k in ("dataset", "output", "scans", "per_split", "files", "error_rate",
                                    "errors_by_reason", "patient_level_split")}


def report(args, cfg: Config) -> dict:
    """`classeg report --workdir DIR [--output DIR]`: report/index.html and its PNGs from a work directory."""
    from classeg.report import build_report

    summary = build_report(args.workdir, args.output)
    log.info("report: wrote %s", summary["index"])
    return {"report": summary["index"], "images": len(summary["images"]), "sections": summary["sections"],
            "key_numbers": summary["key_numbers"]}


def train(args, cfg: Config) -> dict:
    """`classeg train`: train a classifier or segmenter across Spark workers (Horovod or TorchDistributor).
    Returns rank 0's result; the artifact is ``<output>/runs/<run_id>/model`` (copied to ``<output>/model``)."""
    from classeg.spark import get_spark
    from classeg.training import run_training
    from classeg.training.engines import check_slots

    train = cfg.train
    if not train.scans or not train.output:
        raise ValueError("train needs --scans URI and --output URI")
    spark = get_spark(cfg, app_name=f"classeg-train-{train.task}")
    # Before any data is read or materialised: a cluster too small for --num-proc fails at once.
    check_slots(spark, engine=train.engine, num_proc=train.num_proc, torch_mode=train.torch_mode)
    result = run_training(spark, cfg)
    log.info("train: run id %s, artifact %s", result["run_id"], result["artifact"])
    return result


def _evaluate_mode(args) -> str:
    """"model" or "classseg", from the flags given; ValueError for a mixture or an incomplete pair."""
    pipeline = [flag for flag, value in (("--classifier", args.classifier), ("--segmenter", args.segmenter),
                                         ("--tumor-threshold", args.tumor_threshold)) if value is not None]
    if args.model is not None and pipeline:
        raise ValueError(f"evaluate takes --model (one model alone) or --classifier and --segmenter (the Class-Seg "
                         f"pipeline), not both: got --model with {', '.join(pipeline)}")
    if args.model is not None:
        return "model"
    missing = [flag for flag, value in (("--classifier", args.classifier), ("--segmenter", args.segmenter))
               if not value]
    if len(missing) == 2:
        raise ValueError("evaluate needs --model URI, or --classifier URI and --segmenter URI")
    if missing:
        raise ValueError(f"the Class-Seg evaluation needs --classifier URI and --segmenter URI; {missing[0]} is "
                         "missing")
    return "classseg"


def evaluate(args, cfg: Config) -> dict:
    """`classeg evaluate`, in the mode the flags choose:

    - ``--model URI --scans URI --output URI [--split test]``: one artifact alone; metrics.json and figures.
    - ``--classifier URI --segmenter URI --scans URI --output URI [--split test] [--tumor-threshold T]``: the
      Class-Seg pipeline at the classifier's operating point; classseg_metrics.json and classseg_slices/.
      The tasks' settings (mask threshold, batch size, device, ...) are scoring's (the ``score`` section).
    """
    from classeg.spark import get_spark

    if _evaluate_mode(args) == "model":
        from classeg.artifact import resolve_artifact
        from classeg.training import evaluate_artifact

        model = resolve_artifact(args.model, s3_cfg=cfg)  # a training output folder: its newest run's model
        spark = get_spark(cfg, app_name="classeg-evaluate")
        return evaluate_artifact(spark, model=model, scans=args.scans, output=args.output, split=args.split,
                                 batch_size=cfg.score.batch_size, s3_cfg=cfg)
    from classeg.evaluation import ClassSegEvaluation

    score = cfg.score
    settings = {"mask_threshold": score.mask_threshold, "batch_size": score.batch_size, "device": score.device,
                "amp": score.amp, "channels_last": score.channels_last, "torch_threads": score.torch_threads,
                "tumor_classes": tuple(score.tumor_classes)}
    # Planned before the SparkSession starts: a missing or wrong artifact fails at once.
    job = ClassSegEvaluation.plan(classifier=args.classifier, segmenter=args.segmenter, scans=args.scans,
                                  output=args.output, split=args.split,
                                  tumor_threshold_override=args.tumor_threshold, settings=settings, s3_cfg=cfg)
    result = job.run(get_spark(cfg, app_name="classeg-evaluate"))
    per_patient = result.get("per_patient") or {}
    summary = {key: result[key] for key in ("output", "split", "slices", "tumor_slices", "threshold",
                                            "threshold_source", "detection", "segmenter_dice_tumor",
                                            "pipeline_dice_tumor", "false_alarm_masks")}
    summary["per_patient_dice"] = {key: per_patient.get(key) for key in ("dice_mean", "dice_median")}
    return summary


def score(args, cfg: Config) -> dict:
    """`classeg score --archive URI --classifier URI [--segmenter URI] --output URI [--full] ...`: Class-Seg
    scoring of an archive into the scores table, incremental by default. Models and config are checked before
    the SparkSession starts; returns the run summary (the CLI prints it)."""
    from classeg.scoring import ScoreJob
    from classeg.spark import get_spark

    job = ScoreJob.from_config(cfg)
    spark = get_spark(cfg, app_name="classeg-score")
    return job.run(spark)
