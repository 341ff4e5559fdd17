"""`classeg score` with relative paths, run from a working directory that is not the one Spark's Python workers
run in, with training output folders (not model folders) as --classifier and --segmenter.

In local mode the JVM and the Python workers it starts keep the directory the test process started in, so a
chdir in the test leaves the workers elsewhere, as executors on a cluster are: a relative artifact path that
reached them would name nothing there. The test checks that this is so before relying on it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from classeg import synthetic
from classeg.cli import main
from classeg.config import load_config
from classeg.scoring import ScoreJob, read_scores
from scoring_models import trained_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trained_models(tmp_path_factory)


def training_output(output: Path, artifact: str, run_id: str) -> Path:
    """``output`` as `classeg train --output` leaves it after one run of ``artifact``: the run's model/, the
    output's model/ copy, then the run's result.json. Returns the run's model folder."""
    model = output / "runs" / run_id / "model"
    shutil.copytree(artifact, model)
    shutil.copytree(model, output / "model")
    meta = json.loads((model / "model.json").read_text())
    (output / "runs" / run_id / "result.json").write_text(json.dumps(
        {"run_id": run_id, "task": meta["task"], "artifact": str(model), "latest_artifact": str(output / "model"),
         "model_id": meta["model_id"]}))
    return model


def test_score_with_relative_paths_and_training_output_folders(spark, models, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    classifier = training_output(work / "models" / "classifier", models["classifier"], "20260101-000000-aaaaaa")
    segmenter = training_output(work / "models" / "segmenter", models["segmenter"], "20260101-010000-bbbbbb")
    truth = synthetic.write_archive(work / "archive", seed=41, count=8, image_size=64, broken=False)
    monkeypatch.chdir(work)
    worker_cwd = spark.sparkContext.parallelize([0], 1).map(lambda _: os.getcwd()).collect()[0]
    assert Path(worker_cwd).resolve() != work.resolve()  # what makes a relative path fail on a worker

    relative = {"score.archive": "archive", "score.classifier": "models/classifier",
                "score.segmenter": "models/segmenter", "score.output": "scores"}
    job = ScoreJob.from_config(load_config(values=relative))
    assert (job.settings.classifier, job.settings.segmenter) == (str(classifier), str(segmenter))
    assert (job.archive, job.output) == (str(work / "archive"), str(work / "scores"))
    assert not (work / "scores").exists()  # planning writes nothing

    assert main(["score", "--archive", "archive", "--classifier", "models/classifier", "--segmenter",
                 "models/segmenter", "--output", "scores", "--batch-size", "4", "--set", "score.fetch_threads=2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["listed"], summary["scored"], summary["ok"], summary["errors"]) == (8, 8, 8, 0)
    assert summary["classifier_id"] == json.loads((classifier / "model.json").read_text())["model_id"]
    assert summary["segmenter_id"] == json.loads((segmenter / "model.json").read_text())["model_id"]
    assert summary["archive"] == str(work / "archive") and summary["output"] == str(work / "scores")
    assert (work / "scores" / "_runs" / f"{summary['run_id']}.json").is_file()
    rows = read_scores(spark, str(work / "scores")).toPandas()
    assert sorted(rows["key"]) == sorted(entry["path"] for entry in truth["slices"])
    assert (rows["status"] == "ok").all() and rows["source_uri"].str.startswith((work / "archive").as_uri()).all()
    tumour = rows[rows["tumor"]]
    assert len(tumour) and tumour["mask"].notna().all()  # the segmenter ran in the tasks


def test_plan_only_flag_plans_the_new_objects_and_scores_nothing(spark, models, tmp_path, capsys):
    archive, output = tmp_path / "archive", tmp_path / "scores"
    synthetic.write_archive(archive, seed=43, count=6, image_size=64, broken=False)
    common = ["--archive", str(archive), "--classifier", models["classifier"], "--output", str(output),
              "--set", "score.fetch_threads=2"]
    assert main(["score", *common]) == 0
    capsys.readouterr()
    extra = synthetic.write_archive(tmp_path / "extra", seed=44, count=2, image_size=64, broken=False)
    for entry in extra["slices"]:
        target = archive / f"new_{Path(entry['path']).name}"
        shutil.copyfile(tmp_path / "extra" / entry["path"], target)
    runs_before = sorted((output / "_runs").glob("*.json"))
    assert main(["score", *common, "--plan-only"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["plan_only"] is True
    assert (plan["listed"], plan["new"], plan["changed"], plan["already_scored"]) == (8, 2, 0, 6)
    assert plan["pending"] == 2 and plan["tasks"] >= 1
    assert sorted((output / "_runs").glob("*.json")) == runs_before  # nothing scored or marked
    assert json.loads((output / "_plans" / f"{plan['run_id']}.json").read_text())["new"] == 2
