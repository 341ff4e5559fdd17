"""The shared-storage check (`classeg.spark.check_shared_folder`): on a cluster, a local output or cache must be
the same folder for the driver and every executor, or the job fails at once naming the folder and what to use
instead.

On the standalone cluster of tests/cluster.py the worker runs on this host, so its executors see the driver's
folders and the check passes (test_cluster.py runs every job through it). For the failing case the driver runs
in a private mount namespace (``unshare``) where the output folder is a tmpfs only the driver sees, as a local
disk of another node would be: the executors find the driver's token missing. On local[2] the probe job itself
runs for real against a token that is absent."""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest

from classeg import synthetic
from classeg.spark import SHARED_STORAGE_HINT, check_shared_folder, probe_executors, unshared

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32


def test_the_probe_job_reports_executors_that_do_not_see_the_token(spark, tmp_path):
    token = tmp_path / ".classeg-shared-test"
    missing = probe_executors(spark, str(token))
    assert len(missing) == spark.sparkContext.defaultParallelism
    assert [seen for _, _, seen in missing] == [False] * len(missing)
    assert unshared(missing) and all(":" in where for where in unshared(missing))
    token.write_text("x")
    seen = probe_executors(spark, str(token))
    assert [answer[2] for answer in seen] == [True] * len(seen) and unshared(seen) == []


def test_a_local_master_is_not_checked(spark, tmp_path):
    folder = tmp_path / "out"
    check_shared_folder(spark, str(folder), what="ingest.output")
    assert not folder.exists(), "nothing to check on local[N]: the executors are the driver"


def _namespaces_work(tmp_path: Path) -> bool:
    mount = tmp_path / "probe-mount"
    mount.mkdir()
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs tmpfs {shlex.quote(str(mount))}"],
                           capture_output=True)
    return probe.returncode == 0


def _submit_privately(cluster, cwd: Path, private: Path, job: str, *args: str) -> tuple[subprocess.CompletedProcess,
                                                                                        float]:
    """spark-submit of ``job`` with the driver in its own mount namespace, where ``private`` is a tmpfs."""
    argv = cluster.submit_argv(ROOT / "jobs" / f"{job}.py", *args)
    script = f"mount -t tmpfs tmpfs {shlex.quote(str(private))} && exec {shlex.join(argv)}"
    started = time.monotonic()
    result = subprocess.run(["unshare", "-Urm", "sh", "-c", script], cwd=cwd, env=cluster.env(),
                            capture_output=True, text=True, timeout=300)
    return result, time.monotonic() - started


def _error_lines(result: subprocess.CompletedProcess, job: str) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith(f"classeg {job}: error:")]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared-storage")
    if not _namespaces_work(root):
        pytest.skip("unprivileged mount namespaces (unshare -Urm) are not available here")
    synthetic.write_lgg(root / "data", patients=4, seed=9, image_size=SIZE, slices_per_patient=(4, 5),
                        tumor_fraction=0.5, duplicate_copy=False)
    (root / "private").mkdir()
    return root


def test_ingest_to_a_folder_the_executors_do_not_see_fails_at_once(standalone_cluster, user_dir):
    result, seconds = _submit_privately(standalone_cluster, user_dir, user_dir / "private", "ingest", "--dataset",
                                        "lgg", "--input", "data", "--output", "private/table", "--image-size",
                                        str(SIZE))
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    lines = _error_lines(result, "ingest")
    assert len(lines) == 1, (result.stdout + result.stderr)[-3000:]
    folder = str(user_dir / "private" / "table")
    assert lines[0] == (f"classeg ingest: error: ingest.output {folder!r} is a local folder the executors do not "
                        f"share with the driver (the driver's test file is missing on {socket.gethostname()}): use "
                        f"{SHARED_STORAGE_HINT}")
    assert seconds < 90
    assert not list((user_dir / "private").iterdir()), "the executors wrote nothing into their own folder"
    assert standalone_cluster.running_apps() == []


def test_train_with_a_cache_the_executors_do_not_see_fails_before_materialising(standalone_cluster, user_dir, spark):
    from classeg.config import load_config
    from classeg.ingest.job import run_ingest

    run_ingest(spark, load_config(overrides=[  # on local[2]: the cluster's worker reads the same folder
        "ingest.dataset=lgg", f"ingest.input={user_dir / 'data'}", f"ingest.output={user_dir / 'table'}",
        f"ingest.image_size={SIZE}", "ingest.split=[0.5, 0.25, 0.25]", "spark.master=local[2]"]))
    result, seconds = _submit_privately(standalone_cluster, user_dir, user_dir / "private", "train", "--scans",
                                        "table", "--task", "classify", "--output", "models", "--cache",
                                        "private/cache", "--num-proc", "2", "--epochs", "1", "--image-size", str(SIZE))
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    lines = _error_lines(result, "train")
    assert len(lines) == 1, (result.stdout + result.stderr)[-3000:]
    assert lines[0].startswith(f"classeg train: error: train.cache_dir {str(user_dir / 'private' / 'cache')!r} is a "
                               "local folder the executors do not share with the driver")
    assert lines[0].endswith(f"use {SHARED_STORAGE_HINT}; or no --cache (an s3:// output then caches in "
                             "hdfs:///tmp/classeg/cache/<run_id>)")
    assert not list((user_dir / "models").rglob("*.parquet")), "no split was materialised"
    assert seconds < 120
    assert os.listdir(user_dir / "private") == []
