"""``classeg demo``: the whole pipeline on one machine, on synthetic scans, with no cloud account.

Stages, all in one process sharing one local SparkSession, each through the same command code as the CLI:

1. ``synth``: a Kaggle-LGG-layout dataset (``data/lgg``) and an unlabelled archive of mixed formats with a
   few broken files (``data/archive``), whose ground truth goes to ``data/archive_truth.json`` (masks as PNG
   files in ``data/archive_truth/``) so the report can compare against it;
2. ``ingest``: the scan table (``scans/``) at a small canonical size;
3. ``train_classifier`` / ``train_segmenter``: ResNet18 classifier and ResUNet segmenter with the Horovod
   engine on local Spark, 2 processes (``models/classifier``, ``models/segmenter``);
4. ``evaluate``: the two models as one Class-Seg pipeline on the scan table's test split, at the classifier's
   operating point (``evaluation/``: ``classseg_metrics.json`` and ``classseg_slices/``);
5. ``score``: Class-Seg scoring of the archive, incremental (``scores/``);
6. ``report``: ``report/index.html`` and its PNGs.

Re-running reuses finished work: each stage records a fingerprint of its inputs and settings in
``<workdir>/pipeline.json``; a stage whose fingerprint is unchanged and whose output is still complete is not
run again (scoring always runs, and scores only files it has not scored yet). A stage whose code is not in
this checkout yet is reported as ``unavailable`` and its dependants as ``skipped``.

Settings: :class:`DemoSettings` (dataset sizes) and the demo's config defaults (:func:`demo_config_overlay`,
written to ``<workdir>/demo-config.yaml``); ``--conf`` files and ``--set key=value`` given to ``classeg demo``
override the latter, e.g. ``--set train.epochs=5``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

log = logging.getLogger(__name__)

PIPELINE_NAME = "pipeline.json"
DEMO_CONFIG_NAME = "demo-config.yaml"
LOCATIONS = {"lgg": "data/lgg", "archive": "data/archive", "archive_truth": "data/archive_truth.json",
             "scans": "scans", "classifier": "models/classifier", "segmenter": "models/segmenter",
             "evaluation": "evaluation", "scores": "scores", "report": "report"}
STAGES = ("synth", "ingest", "train_classifier", "train_segmenter", "evaluate", "score", "report")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo's synthetic data. The default takes about 10 minutes on 2 cores; :meth:`tiny` is
    for tests."""

    patients: int = 14
    slices_per_patient: tuple[int, int] = (12, 20)
    synth_image_size: int = 256
    archive_count: int = 24
    archive_image_size: int = 128
    seed: int = 0
    canonical_size: int = 64     # ingest.image_size
    epochs: int = 8              # train.epochs (classifier)
    segmenter_epochs: int = 25   # the segmenter's epochs are cheap (tumour slices only)
    batch_size: int = 16
    base_filters: int = 8
    num_proc: int = 2

    @classmethod
    def tiny(cls) -> "DemoSettings":
        return cls(patients=6, slices_per_patient=(5, 7), synth_image_size=48, archive_count=8,
                   archive_image_size=40, canonical_size=32, epochs=1, segmenter_epochs=1, batch_size=8,
                   base_filters=4)


def demo_config_overlay(settings: DemoSettings) -> dict:
    """The demo's config defaults (a ``--conf`` overlay under the user's own ``--conf``/``--set``)."""
    return {
        "spark": {"master": f"local[{max(2, settings.num_proc)}]", "shuffle_partitions": 4},
        "ingest": {"dataset": "lgg", "image_size": settings.canonical_size, "seed": settings.seed,
                   "split": [0.6, 0.2, 0.2]},
        "train": {"engine": "horovod", "num_proc": settings.num_proc, "arch": "resnet18", "head": "linear",
                  "strategy": "finetune", "epochs": settings.epochs, "batch_size": settings.batch_size,
                  "image_size": settings.canonical_size, "base_filters": settings.base_filters,
                  "lr": 0.001, "warmup_epochs": 0 if settings.epochs <= 2 else 1, "seed": settings.seed},
        "score": {"batch_size": 32, "max_error_rate": 0.5},
    }


# ---------------------------------------------------------------------------------------------- ground truth
def save_archive_truth(truth: dict, path: str | os.PathLike) -> dict:
    """Write the archive's ground truth (from ``synthetic.write_archive``) as JSON at ``path``, with each exact
    mask as a PNG in ``<stem>/`` beside it (``mask_png``, relative to the JSON). Returns the JSON dict:
    ``scans`` (path = archive key, format, label, label_name, has_tumor, mask_area_px, height, width, kind,
    mask_png) and ``broken`` (path, kind)."""
    from classeg.imaging import encode_png

    path = Path(path)
    mask_dir = path.parent / path.stem
    if mask_dir.exists():
        shutil.rmtree(mask_dir)
    mask_dir.mkdir(parents=True)
    scans = []
    for entry in truth["slices"]:
        record = {k: entry.get(k) for k in ("path", "format", "label", "label_name", "has_tumor", "mask_area_px",
                                            "height", "width", "kind", "contrast")}
        record["has_tumor"] = bool(record["has_tumor"])
        if entry.get("mask") is not None:
            name = entry["path"].replace("/", "__") + ".png"
            (mask_dir / name).write_bytes(encode_png(entry["mask"].astype(bool)))
            record["mask_png"] = f"{mask_dir.name}/{name}"
        scans.append(record)
    data = {"root": truth["root"], "scans": scans, "broken": list(truth.get("broken", []))}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)  # last: its presence marks a complete archive
    return data


# ---------------------------------------------------------------------------------------------- bookkeeping
def _fingerprint(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Pipeline:
    """``pipeline.json``: where each stage's output is, its fingerprint, status and timing."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.path = workdir / PIPELINE_NAME
        previous = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        self.previous: dict = previous.get("stages", {})
        self.stages: dict[str, dict] = {}
        self.locations = {name: str(workdir / rel) for name, rel in LOCATIONS.items()}

    def reusable(self, stage: str, fingerprint: str) -> dict | None:
        """The previous record of ``stage`` if it finished with the same fingerprint."""
        record = self.previous.get(stage)
        if record and record.get("fingerprint") == fingerprint and record.get("status") in ("ran", "reused"):
            return record
        return None

    def record(self, stage: str, *, status: str, seconds: float, output: str | None = None,
               fingerprint: str | None = None, note: str = "", **extra: Any) -> dict:
        entry = {"status": status, "seconds": round(seconds, 1), "output": output, "fingerprint": fingerprint,
                 "note": note, **extra}
        self.stages[stage] = entry
        log.info("demo: %-16s %-11s %6.1fs  %s%s", stage, status, seconds, output or "",
                 f"  ({note})" if note else "")
        self.save()
        return entry

    def save(self) -> None:
        stages = {**{k: v for k, v in self.previous.items() if k not in self.stages}, **self.stages}
        data = {"updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "locations": self.locations, "stages": stages}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self.path)


def stage_available(name: str) -> tuple[bool, str]:
    """Whether this checkout has the code for a pipeline stage ("train", "evaluate", "score"); (ok, why not)."""
    import importlib.util

    module = {"train": "classeg.training", "evaluate": "classeg.evaluation", "score": "classeg.scoring"}.get(name)
    if module and importlib.util.find_spec(module) is None:
        return False, f"{module} is not in this checkout"
    return True, ""


# ---------------------------------------------------------------------------------------------- the demo
def run_demo(workdir: str | os.PathLike, *, invoke: Callable[..., Any], settings: DemoSettings | None = None,
             conf_files: Sequence[str] = (), overrides: Sequence[str] = ()) -> dict:
    """Run (or resume) the demo pipeline in ``workdir``; return a summary: ``workdir``, ``seconds``,
    ``stages`` (name -> status ran/reused/skipped/unavailable, seconds, output, note), ``outputs`` (name ->
    location), ``report`` (index.html) and ``key_numbers`` (from the report).

    ``invoke(argv, conf_files=, overrides=)`` runs one ``classeg`` subcommand in this process (the CLI passes
    :func:`classeg.cli.invoke`: the library does not import the CLI). ``conf_files``/``overrides`` are the
    user's ``--conf``/``--set``; they win over the demo's defaults.
    The SparkSession is built by the first stage that needs one (an active session, e.g. a test's, is
    shared), so a re-run with everything reused starts no Spark at all."""
    from classeg.config import load_config

    started = time.time()
    settings = settings or DemoSettings()
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    demo_conf = root / DEMO_CONFIG_NAME
    demo_conf.write_text("# written by `classeg demo`: the demo's defaults, under your --conf/--set\n"
                         + yaml.safe_dump(demo_config_overlay(settings), sort_keys=False), encoding="utf-8")
    conf = [str(demo_conf), *conf_files]
    cfg = load_config(conf, overrides)
    pipe = Pipeline(root)
    loc = pipe.locations
    log.info("demo: work directory %s", root)

    def call(argv):
        return invoke(argv, conf_files=conf, overrides=overrides)

    synth_fp = _synth(pipe, settings)
    ingest_fp = _ingest(pipe, cfg, synth_fp, call)
    models = {}
    for task, stage in (("classify", "train_classifier"), ("segment", "train_segmenter")):
        models[task] = _train(pipe, cfg, settings, task, stage, ingest_fp, call)
    _evaluate(pipe, cfg, models, ingest_fp, call)
    _score(pipe, models, call)
    report = _report(pipe, call)
    total = time.time() - started
    summary = {"workdir": str(root), "seconds": round(total, 1),
               "stages": {name: {k: v for k, v in pipe.stages[name].items() if k != "fingerprint"}
                          for name in STAGES if name in pipe.stages},
               "outputs": {name: loc[name] for name in ("lgg", "archive", "archive_truth", "scans", "classifier",
                                                        "segmenter", "evaluation", "scores")},
               "report": report.get("index") if report else None,
               "key_numbers": (report or {}).get("key_numbers", {})}
    summary["outputs"].update({k: v["output"] for k, v in pipe.stages.items() if v.get("output")
                               and k in ("train_classifier", "train_segmenter")})
    reused = [n for n, s in summary["stages"].items() if s["status"] == "reused"]
    missing = [n for n, s in summary["stages"].items() if s["status"] in ("skipped", "unavailable")]
    log.info("demo: finished in %.1fs; reused: %s; not run: %s; report: %s", total, ", ".join(reused) or "none",
             ", ".join(missing) or "none", summary["report"])
    return summary


def _synth(pipe: Pipeline, settings: DemoSettings) -> str:
    from classeg import synthetic

    started = time.time()
    fp = _fingerprint("synth", settings.patients, settings.slices_per_patient, settings.synth_image_size,
                      settings.archive_count, settings.archive_image_size, settings.seed)
    loc = pipe.locations
    lgg, archive, truth_json = Path(loc["lgg"]), Path(loc["archive"]), Path(loc["archive_truth"])
    if pipe.reusable("synth", fp) and lgg.is_dir() and truth_json.is_file() and archive.is_dir():
        previous = pipe.previous["synth"]
        pipe.record("synth", status="reused", seconds=time.time() - started, output=str(lgg.parent), fingerprint=fp,
                    note=f"{previous.get('slices')} LGG slices, {previous.get('archive_files')} archive files",
                    slices=previous.get("slices"), archive_files=previous.get("archive_files"))
        return fp
    for path in (lgg, archive, truth_json, truth_json.with_suffix("")):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    lgg_truth = synthetic.write_lgg(lgg, patients=settings.patients, seed=settings.seed,
                                    image_size=settings.synth_image_size,
                                    slices_per_patient=tuple(settings.slices_per_patient))
    archive_truth = synthetic.write_archive(archive, seed=settings.seed + 1, count=settings.archive_count,
                                            image_size=settings.archive_image_size, style="lgg")
    save_archive_truth(archive_truth, truth_json)
    pipe.record("synth", status="ran", seconds=time.time() - started, output=str(lgg.parent), fingerprint=fp,
                note=f"{len(lgg_truth['slices'])} LGG slices of {settings.patients} patients; archive of "
                     f"{archive_truth['files']} files ({len(archive_truth['broken'])} broken)",
                slices=len(lgg_truth["slices"]), archive_files=archive_truth["files"])
    return fp


def _ingest(pipe: Pipeline, cfg, synth_fp: str, call: Callable) -> str:
    started = time.time()
    scans = Path(pipe.locations["scans"])
    job = cfg.ingest
    fp = _fingerprint("ingest", synth_fp, job.image_size, job.seed, job.split, job.max_error_rate)
    summary_path = scans / "summary.json"
    previous = pipe.reusable("ingest", fp)
    if previous and summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if summary.get("status") == "complete" and summary.get("run_id") == previous.get("run_id"):
            pipe.record("ingest", status="reused", seconds=time.time() - started, output=str(scans), fingerprint=fp,
                        note=f"complete table: {summary['scans']} scans {summary['per_split']}",
                        run_id=summary["run_id"])
            return fp
    result = call(["ingest", "--dataset", "lgg", "--input", pipe.locations["lgg"], "--output", str(scans)])
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    pipe.record("ingest", status="ran", seconds=time.time() - started, output=str(scans), fingerprint=fp,
                note=f"{result['scans']} scans {result['per_split']}, {summary['files']['errors']} errors",
                run_id=summary["run_id"])
    return fp


def _train(pipe: Pipeline, cfg, settings: DemoSettings, task: str, stage: str, ingest_fp: str,
           call: Callable) -> str | None:
    """Train (or reuse) one model; returns the artifact location or None."""
    from classeg.report import find_artifact

    started = time.time()
    role = "classifier" if task == "classify" else "segmenter"
    output = pipe.workdir / LOCATIONS[role]
    available, why = stage_available("train")
    if not available:
        pipe.record(stage, status="unavailable", seconds=0, note=why)
        return None
    train = cfg.to_dict()["train"]
    epochs = train["epochs"] if task == "classify" else max(train["epochs"], settings.segmenter_epochs)
    settings_fp = {k: v for k, v in train.items() if k not in ("task", "scans", "output", "run_id", "cache_dir")}
    fp = _fingerprint("train", task, ingest_fp, settings_fp, epochs)
    run_id = f"demo-{task}-{fp[:8]}"
    previous = pipe.reusable(stage, fp)
    if previous and previous.get("artifact") and find_artifact(previous["artifact"], task):
        pipe.locations[role] = previous["artifact"]
        pipe.record(stage, status="reused", seconds=time.time() - started, output=previous["artifact"],
                    fingerprint=fp, note=f"artifact of run {run_id}", artifact=previous["artifact"],
                    model_id=previous.get("model_id"), run_id=run_id)
        return previous["artifact"]
    result = call(["train", "--task", task, "--scans", pipe.locations["scans"], "--output", str(output),
                   "--run-id", run_id, "--epochs", str(epochs)])
    artifact = _artifact_location(result, output, task)
    pipe.locations[role] = artifact  # the report shows this run's artifact, not whichever is newest
    meta = json.loads((Path(artifact) / "model.json").read_text(encoding="utf-8"))
    resumed = isinstance(result, dict) and (result.get("resumed") or result.get("reused") or result.get("skipped"))
    pipe.record(stage, status="ran", seconds=time.time() - started, output=artifact, fingerprint=fp,
                note=f"run {run_id}, model {meta.get('model_id')}" + (" (resumed/reused by train)" if resumed else ""),
                artifact=artifact, model_id=meta.get("model_id"), run_id=run_id)
    return artifact


def _artifact_location(result: Any, output: Path, task: str) -> str:
    from classeg.report import find_artifact

    if isinstance(result, dict):
        for key in ("artifact", "model", "artifact_uri", "model_uri"):
            value = result.get(key)
            if isinstance(value, str) and find_artifact(value.removeprefix("file://"), task):
                return str(find_artifact(value.removeprefix("file://"), task))
    found = find_artifact(output, task)
    if found is None:
        raise FileNotFoundError(f"training finished but no {task} model.json was found under {output}")
    return str(found)


def _evaluate(pipe: Pipeline, cfg, models: dict, ingest_fp: str, call: Callable) -> None:
    """The trained pair as one Class-Seg pipeline on the test split (or reuse the last evaluation of the same
    models, table and settings)."""
    from classeg.evaluation import METRICS_NAME

    started = time.time()
    available, why = stage_available("evaluate")
    if not available:
        pipe.record("evaluate", status="unavailable", seconds=0, note=why)
        return
    if not models.get("classify") or not models.get("segment"):
        pipe.record("evaluate", status="skipped", seconds=0,
                    note="needs both a classifier and a segmenter artifact (training did not run)")
        return
    output = Path(pipe.locations["evaluation"])
    ids = {task: json.loads((Path(uri) / "model.json").read_text())["model_id"] for task, uri in models.items()}
    fp = _fingerprint("evaluate", ingest_fp, ids, cfg.score.mask_threshold, cfg.score.tumor_classes)
    previous = pipe.reusable("evaluate", fp)
    if previous and (output / METRICS_NAME).is_file():
        pipe.record("evaluate", status="reused", seconds=time.time() - started, output=str(output), fingerprint=fp,
                    note=previous.get("note", ""))
        return
    result = call(["evaluate", "--classifier", models["classify"], "--segmenter", models["segment"],
                   "--scans", pipe.locations["scans"], "--output", str(output), "--split", "test"])
    detection = result["detection"]
    note = (f"test split, {result['slices']} slices ({result['tumor_slices']} tumour) at tumour threshold "
            f"{result['threshold']:.3f}: sensitivity {detection['sensitivity']:.3f}, specificity "
            f"{detection['specificity']:.3f}, pipeline Dice {result['pipeline_dice_tumor']:.3f}")
    pipe.record("evaluate", status="ran", seconds=time.time() - started, output=str(output), fingerprint=fp,
                note=note)


def _score(pipe: Pipeline, models: dict, call: Callable) -> None:
    started = time.time()
    available, why = stage_available("score")
    if not available:
        pipe.record("score", status="unavailable", seconds=0, note=why)
        return
    if not models.get("classify"):
        pipe.record("score", status="skipped", seconds=0, note="no classifier artifact (training did not run)")
        return
    scores = pipe.locations["scores"]
    ids = {task: json.loads((Path(uri) / "model.json").read_text())["model_id"] for task, uri in models.items() if uri}
    previous = pipe.previous.get("score", {})
    changed = bool(previous.get("model_ids")) and previous.get("model_ids") != ids
    argv = ["score", "--archive", pipe.locations["archive"], "--classifier", models["classify"],
            "--output", scores]
    if models.get("segment"):
        argv += ["--segmenter", models["segment"]]
    if changed:
        argv.append("--full")  # new models: the manifest would otherwise skip every file
    result = call(argv) or {}
    scored = _first(result, "scored", "new", "pending", "rows")
    status = "ran" if scored else "reused"
    count = scored if scored is not None else "?"
    note = (f"models changed: all {count} files rescored" if changed else f"{count} new files scored") + \
        (f", {result['already_scored']} already scored" if isinstance(result.get("already_scored"), int) else "")
    pipe.record("score", status=status, seconds=time.time() - started, output=scores, note=note, model_ids=ids,
                run_id=result.get("run_id"), scored=scored)


def _first(result: dict, *names: str):
    for name in names:
        if isinstance(result.get(name), int):
            return result[name]
    return None


def _report(pipe: Pipeline, call: Callable) -> dict | None:
    started = time.time()
    result = call(["report", "--workdir", str(pipe.workdir), "--output", pipe.locations["report"]])
    pipe.record("report", status="ran", seconds=time.time() - started, output=result["report"],
                note=f"{result['images']} images")
    return {"index": result["report"], "key_numbers": result.get("key_numbers", {})}
