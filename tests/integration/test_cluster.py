"""Every job by `spark-submit --master spark://...` (client mode) on a Spark standalone cluster on 127.0.0.1: one
master, one 2-core worker (tests/cluster.py), executors in their own processes and working directories. The
jobs are submitted from a working directory that is not the repo, with relative paths, as the README shows:
ingest, train with both engines (Horovod; TorchDistributor in barrier mode), evaluate and score with the
training output folders. Each must exit 0 within its time limit and write what it should."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from classeg import synthetic

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32
JOB_TIMEOUT = 420


def _submit(cluster, cwd: Path, job: str, *args: str, timeout: int = JOB_TIMEOUT) -> tuple[subprocess.CompletedProcess,
                                                                                            float]:
    started = time.monotonic()
    result = subprocess.run(cluster.submit_argv(ROOT / "jobs" / f"{job}.py", *args), cwd=cwd, env=cluster.env(),
                            capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started


def _tail(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr)[-4000:]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A user's folder outside the repo with a small LGG-layout dataset under ``data/``."""
    root = tmp_path_factory.mktemp("cluster-user")
    synthetic.write_lgg(root / "data", patients=8, seed=5, image_size=SIZE, slices_per_patient=(6, 8),
                        tumor_fraction=0.5, duplicate_copy=False)
    return root


@pytest.fixture(scope="module")
def ingested(standalone_cluster, workdir):
    result, seconds = _submit(standalone_cluster, workdir, "ingest", "--dataset", "lgg", "--input", "data",
                              "--output", "table", "--image-size", str(SIZE), "--set", "ingest.split=[0.5,0.25,0.25]")
    assert result.returncode == 0, _tail(result)
    return json.loads((workdir / "table" / "summary.json").read_text()), seconds


def test_ingest_on_the_cluster_with_relative_paths(ingested, workdir):
    summary, seconds = ingested
    slices = sum(1 for path in (workdir / "data").rglob("*.tif") if not path.name.endswith("_mask.tif"))
    assert summary["scans"] == slices and summary["files"]["errors"] == 0
    assert not list((workdir / "table").glob("_staging-*")), "ingest leaves no staging folders"


def _train(cluster, workdir, engine: str, task: str, output: str):
    return _submit(cluster, workdir, "train", "--scans", "table", "--task", task, "--engine", engine,
                   "--output", output, "--num-proc", "2", "--epochs", "1", "--batch-size", "4",
                   "--image-size", str(SIZE), "--set", "train.threads_per_proc=1", "--set", "train.lr=0.001")


@pytest.fixture(scope="module")
def trained(standalone_cluster, workdir, ingested):
    runs = {}
    for engine, task, output in (("horovod", "classify", "models/classifier"), ("torch", "segment",
                                                                                 "models/segmenter")):
        result, seconds = _train(standalone_cluster, workdir, engine, task, output)
        runs[engine] = (result, seconds, workdir / output)
    return runs


@pytest.mark.parametrize("engine", ["horovod", "torch"])
def test_training_on_the_cluster_exits_and_writes_an_artifact(trained, engine, standalone_cluster):
    result, seconds, output = trained[engine]
    assert result.returncode == 0, _tail(result)
    assert list(output.rglob("model.json")), f"no model.json under {output}"
    assert seconds < JOB_TIMEOUT
    assert standalone_cluster.running_apps() == [], "the application is gone when spark-submit returns"


def test_score_with_training_output_folders(standalone_cluster, workdir, trained):
    for engine in ("horovod", "torch"):
        assert trained[engine][0].returncode == 0, _tail(trained[engine][0])
    archive = workdir / "archive"
    truth = synthetic.write_archive(archive, seed=31, count=12, image_size=SIZE, broken=False)
    result, _ = _submit(standalone_cluster, workdir, "score", "--archive", "archive",
                        "--classifier", "models/classifier", "--segmenter", "models/segmenter",
                        "--output", "scores", "--set", "score.max_error_rate=0.5")
    assert result.returncode == 0, _tail(result)
    markers = list((workdir / "scores" / "_runs").glob("*.json"))
    assert len(markers) == 1
    summary = json.loads(markers[0].read_text())["summary"]
    assert summary["scored"] == summary["listed"] == len(truth["slices"])


def test_evaluate_with_the_training_output_folder(standalone_cluster, workdir, trained):
    assert trained["horovod"][0].returncode == 0, _tail(trained["horovod"][0])
    result, _ = _submit(standalone_cluster, workdir, "evaluate", "--model", "models/classifier", "--scans", "table",
                        "--output", "evaluation")
    assert result.returncode == 0, _tail(result)
    assert list((workdir / "evaluation").rglob("*.json"))


def test_more_processes_than_task_slots_fail_at_once(standalone_cluster, workdir, ingested):
    result, seconds = _submit(standalone_cluster, workdir, "train", "--scans", "table", "--task", "classify",
                              "--num-proc", "3", "--output", "models/too-many", timeout=180)
    assert result.returncode == 2, _tail(result)
    assert seconds < 60
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("classeg train: error:")]
    assert len(lines) == 1 and "train.num_proc=3 needs 3 task slots" in lines[0] and "has 2" in lines[0], lines
    assert not (workdir / "models" / "too-many").exists()
