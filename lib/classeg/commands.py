"""Subcommand bodies: parse nothing, validate what they need, build the SparkSession through the one factory
when Spark is needed, and call the library. `classeg.cli` and `jobs/*.py` route here."""
from __future__ import annotations

import logging

from classeg.config import Config

log = logging.getLogger(__name__)


def synth(args, cfg: Config) -> dict:
    from classeg.datasets import synthetic

    truth = synthetic.write_dataset(args.layout, args.output, patients=args.patients, seed=args.seed,
                                    image_size=args.image_size)
    summary = {"layout": args.layout, "output": args.output, "files": truth["files"],
               "slices": len(truth["slices"]), "broken": len(truth.get("broken", []))}
    log.info("synth: wrote %(files)d files (%(slices)d slices) to %(output)s", summary)
    return summary


def ingest(args, cfg: Config) -> dict:
    from classeg.etl import run_ingest
    from classeg.spark import get_spark

    if not cfg.ingest.input or not cfg.ingest.output:
        raise ValueError("ingest needs --input URI and --output URI")
    spark = get_spark(cfg, app_name=f"classeg-ingest-{cfg.ingest.dataset}")
    summary = run_ingest(spark, cfg)
    return {k: summary[k] for k in ("dataset", "output", "scans", "per_split", "files", "error_rate",
                                    "errors_by_reason", "patient_level_split")}
