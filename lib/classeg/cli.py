"""The `classeg` command. Each subcommand parses its flags, loads the config, builds the SparkSession through
the one factory when it needs Spark, and calls the library. `spark-submit jobs/<job>.py` runs the same code
with the same flags.

Flags are shorthands for config keys (``--epochs 3`` is ``--set train.epochs=3``); ``--conf FILE`` overlays a
YAML file and ``--set key=value`` (repeatable) sets any key. Precedence: default < --conf < flags < --set.

Exit status: 0 done, 1 the job failed (one line on stderr naming the root cause; ``--log-level DEBUG`` adds
the traceback), 2 a usage or config error, 130 interrupted. A command stops the SparkSession it started.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence

from classeg import __version__, redact
from classeg.config import CHOICES, load_config
from classeg.errors import ConfigError, root_cause
from classeg.spark import quiet_third_party_logs, stopping_started_session

log = logging.getLogger("classeg")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", action="append", default=[], metavar="FILE",
                        help="YAML config overlay (repeatable, later wins)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override any config key, e.g. --set train.lr=0.0003 (repeatable)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _key(parser, flag: str, key: str, **kw) -> None:
    """A flag that sets config key ``key``; a key with a closed set of values takes its choices from
    :data:`classeg.config.CHOICES` (read off the ``Literal`` fields of :mod:`classeg.sections`), so they are
    written once."""
    if key in CHOICES:
        kw.setdefault("choices", CHOICES[key])
    parser.add_argument(flag, dest=f"cfg:{key}", default=None, **kw)


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0.7,0.15,0.15, got {text!r}") from err


def _command(module: str, function: str) -> Callable:
    def run(args, cfg):
        return getattr(importlib.import_module(module), function)(args, cfg)
    return run


def invoke(argv: Sequence[str], *, conf_files: Sequence[str] = (), overrides: Sequence[str] = ()):
    """Run one ``classeg`` subcommand in this process with the CLI's own parsing and config precedence:
    ``conf_files`` under the command's own ``--conf`` files, ``overrides`` on top of its ``--set``."""
    args = build_parser().parse_args(list(argv))
    values = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
    cfg = load_config([*conf_files, *args.conf], [*overrides, *args.overrides], values)
    return args.run(args, cfg)


def _demo(args, cfg) -> dict:
    """`classeg demo [--workdir DIR]`: the whole pipeline locally on synthetic scans; re-runs reuse work.
    The demo's own config defaults sit under the user's --conf/--set (each stage rebuilds its config)."""
    return importlib.import_module("classeg.demo").run_demo(args.workdir, invoke=invoke, conf_files=args.conf,
                                                             overrides=args.overrides)


# The flags that set config keys, per command: (flag, key, argparse keywords). Choices come from config.CHOICES,
# i.e. from the Literal annotations in classeg.sections.
_CONFIG_FLAGS: dict[str, list[tuple[str, str, dict]]] = {
    "ingest": [
        ("--dataset", "ingest.dataset", {"help": "dataset layout"}),
        ("--input", "ingest.input", {"help": "dataset root: local path, file:// or s3:// URI"}),
        ("--output", "ingest.output", {"help": "scan table location (replaced whole on success)"}),
        ("--image-size", "ingest.image_size", {"type": int, "help": "canonical image side in pixels (default 256)"}),
        ("--seed", "ingest.seed", {"type": int, "help": "split seed (default 0)"}),
        ("--split", "ingest.split", {"type": _floats, "help": "train,val,test fractions (default 0.7,0.15,0.15)"}),
        ("--max-error-rate", "ingest.max_error_rate", {"type": float, "help": "fail when more than this fraction of files are bad (default 0.01)"}),
    ],
    "train": [
        ("--task", "train.task", {}),
        ("--scans", "train.scans", {"help": "scan table (ingest output)"}),
        ("--output", "train.output", {"help": "where runs, checkpoints and the model artifact go"}),
        ("--engine", "train.engine", {"help": "default horovod"}),
        ("--num-proc", "train.num_proc", {"type": int, "help": "training processes (default 2)"}),
        ("--arch", "train.arch", {}),
        ("--head", "train.head", {}),
        ("--strategy", "train.strategy", {}),
        ("--weights", "train.weights", {"help": "torchvision state dict path/s3 URI, or imagenet"}),
        ("--epochs", "train.epochs", {"type": int}),
        ("--batch-size", "train.batch_size", {"type": int, "help": "per process"}),
        ("--image-size", "train.image_size", {"type": int, "help": "model input side"}),
        ("--lr", "train.lr", {"type": float}),
        ("--run-id", "train.run_id", {"help": "same id resumes from the last checkpoint"}),
        ("--cache", "train.cache_dir", {"help": "where Spark writes the Petastorm cache: a local path or file:// "
                                                "(one machine, or storage every node mounts) or hdfs://, not s3://; "
                                                "default <output>/runs/<run_id>/cache for a local output, for an "
                                                "s3:// output a folder under spark.local.dir on a local[N] master "
                                                "and hdfs:///tmp/classeg/cache/<run_id> on a cluster"}),
    ],
    "score": [
        ("--archive", "score.archive", {"help": "s3://bucket/prefix or a local folder"}),
        ("--classifier", "score.classifier", {"help": "classifier artifact"}),
        ("--segmenter", "score.segmenter", {"help": "segmenter artifact (optional)"}),
        ("--output", "score.output", {"help": "scores table root (partitioned by run date)"}),
        ("--batch-size", "score.batch_size", {"type": int}),
        ("--tumor-threshold", "score.tumor_threshold", {"type": float, "help": "default: the classifier's operating point (model.json), else 0.5"}),
        ("--mask-threshold", "score.mask_threshold", {"type": float}),
        ("--max-error-rate", "score.max_error_rate", {"type": float}),
        ("--modalities", "score.modalities", {"help": "DICOM modalities scored, comma-separated (default MR; others "
                                                      "are skipped rows); '' for all"}),
        ("--patient-key-secret", "score.patient_key_secret", {"help": "file or s3:// URI holding the patient_key "
                                                                      "HMAC secret (default: "
                                                                      "$CLASSEG_PATIENT_KEY_SECRET)"}),
    ],
}


def _config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    for flag, key, keywords in _CONFIG_FLAGS[command]:
        _key(parser, flag, key, **keywords)


def _redact_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redact-keys", dest="cfg:score.redact_keys_in_logs", action=argparse.BooleanOptionalAction,
                        default=None, help="logs, progress and error messages show object keys as key#<hash> "
                                           "(score.redact_keys_in_logs, default on; the tables keep the real URIs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="classeg", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"classeg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic dataset in a real on-disk layout")
    from classeg.synthetic.layouts import ANATOMIES, LAYOUTS

    p.add_argument("--layout", required=True, choices=LAYOUTS)
    p.add_argument("--output", required=True, help="folder to write (created)")
    p.add_argument("--patients", type=int, default=None, help="number of patients (lgg, figshare)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=None, help="side of generated images (default: the layout's)")
    p.add_argument("--anatomy", default=ANATOMIES[0], choices=ANATOMIES,
                   help="phantom (default, shapes) or mni (the MNI152 template; needs the synth extra)")
    _common(p)
    p.set_defaults(run=_command("classeg.commands", "synth"))

    p = sub.add_parser("ingest", help="convert a scan dataset to the Parquet scan table")
    _config_flags(p, "ingest")
    _redact_flag(p)
    _common(p)
    p.set_defaults(run=_command("classeg.commands", "ingest"))

    p = sub.add_parser("train", help="train a classifier or segmenter across Spark workers")
    _config_flags(p, "train")
    _common(p)
    p.set_defaults(run=_command("classeg.commands", "train"))

    p = sub.add_parser("evaluate", help="evaluate a model artifact, or the Class-Seg pipeline, on a scan table",
                       description="Either --model (one artifact alone: metrics.json and plots) or --classifier "
                                   "and --segmenter (the Class-Seg pipeline: classseg_metrics.json and "
                                   "classseg_slices/).")
    p.add_argument("--model", default=None, help="model artifact directory (local or s3://), evaluated alone")
    p.add_argument("--classifier", default=None, help="classifier artifact of the Class-Seg pipeline")
    p.add_argument("--segmenter", default=None, help="segmenter artifact of the Class-Seg pipeline")
    p.add_argument("--tumor-threshold", type=float, default=None,
                   help="Class-Seg: classifier tumour threshold (default: model.json's operating point, else 0.5)")
    p.add_argument("--scans", required=True, help="scan table")
    p.add_argument("--output", required=True, help="where the metrics (and plots or per-slice table) go")
    p.add_argument("--split", default="test", help="split to evaluate (default test; 'all' for every row)")
    _common(p)
    p.set_defaults(run=_command("classeg.commands", "evaluate"))

    p = sub.add_parser("score", help="classify every scan in an archive and segment the tumours")
    _config_flags(p, "score")
    p.add_argument("--full", dest="cfg:score.full", action="store_const", const=True, default=None,
                   help="rescore everything, ignoring the manifest")
    p.add_argument("--plan-only", dest="cfg:score.plan_only", action="store_const", const=True, default=None,
                   help="list and plan only: write <output>/_plans/<run_id>.json (objects, new, changed, already "
                        "scored, tasks) and score nothing")
    p.add_argument("--inventory", dest="cfg:score.inventory", default=None, metavar="URI",
                   help="list the s3:// archive from an S3 Inventory report: its manifest.json, or the inventory "
                        "configuration's folder <dest-prefix>/<source-bucket>/<config-id>/ (the newest report); "
                        "CSV, ORC or Parquet")
    _redact_flag(p)
    _common(p)
    p.set_defaults(run=_command("classeg.commands", "score"))

    p = sub.add_parser("report", help="write report/index.html from pipeline outputs")
    p.add_argument("--workdir", required=True, help="the demo/pipeline work directory")
    p.add_argument("--output", default=None, help="report folder (default WORKDIR/report)")
    _common(p)
    p.set_defaults(run=_command("classeg.commands", "report"))

    p = sub.add_parser("demo", help="run the whole pipeline locally on synthetic scans")
    p.add_argument("--workdir", default="demo-output", help="work directory (default ./demo-output)")
    _common(p)
    p.set_defaults(run=_demo)

    try:
        emr = importlib.import_module("classeg.emr")
    except ImportError:  # boto3 missing: the EMR commands are simply unavailable
        emr = None
    if emr is not None and hasattr(emr, "add_cli"):
        emr.add_cli(sub, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``classeg`` command (``jobs/*.py`` call this too) and return its exit status: 0 when it
    succeeded, 1 when it failed, 2 for a usage or config error, 130 when interrupted. A failure is one line on
    stderr, ``classeg <command>: error: <root cause>`` (:func:`classeg.errors.root_cause`); ``--log-level
    DEBUG`` also logs the whole traceback. The SparkSession the command started is stopped when it ends,
    whatever the outcome; one already running in this process (a notebook's ``spark``) is left running."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_third_party_logs(debug=args.log_level == "DEBUG")
    values = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
    try:
        cfg = load_config(args.conf, args.overrides, values)
    except Exception as err:  # a config file that is missing, unreadable or wrong: a usage error
        log.debug("classeg %s: bad config", args.command, exc_info=err)
        parser.exit(2, f"classeg {args.command}: config error: {root_cause(err)}\n")
    redact.activate(redact.from_config(cfg))
    redact.install_log_filter()
    try:
        with stopping_started_session():
            result = args.run(args, cfg)
    except KeyboardInterrupt:
        print(f"classeg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # any failure ends the command: one line naming its cause, the trace at DEBUG
        log.debug("classeg %s failed", args.command, exc_info=err)
        print(f"classeg {args.command}: error: {redact.scrub(root_cause(err))}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    if isinstance(result, dict):
        print(json.dumps(redact.current().value(result), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
