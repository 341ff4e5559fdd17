"""Training checks the cluster before it starts processes (classeg.training.engines.check_slots): more processes
than task slots fail at once with a message naming them, for both engines, from the CLI and from the library;
and a training process's own failure reaches the driver as one line naming the rank and its cause.

On the session fixture's local[2]: 2 task slots. The scan table is test_train's tiny one."""
from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import pytest

from classeg.cli import main
from classeg.errors import ConfigError, JobFailed, root_cause
from classeg.training import run_training
from classeg.training.engines import check_slots, first_failure, launch, task_slots
from test_train import _cfg, table  # noqa: F401  (table: the module-scoped scan table fixture)

SLOT_MESSAGE = ("train.num_proc=3 needs 3 task slots at once, the cluster has 2 (local[2]: 2 cores, "
                "spark.task.cpus=1): lower --num-proc to 2, or use a larger local[N] master")
ENGINES = [("horovod", []), ("torch", ["--set", "train.torch_mode=barrier"])]


def test_local_slots(spark):
    assert task_slots(spark) == (2, "local[2]: 2 cores, spark.task.cpus=1")
    check_slots(spark, engine="horovod", num_proc=2)
    check_slots(spark, engine="torch", num_proc=3, torch_mode="local")  # torchrun on the driver: no slots
    check_slots(spark, engine="torch", num_proc=3, torch_mode="auto")  # auto is local mode on local[2]
    with pytest.raises(ConfigError, match=r"^train\.num_proc=3 needs 3 task slots at once, the cluster has 2 "):
        check_slots(spark, engine="torch", num_proc=3, torch_mode="barrier")


@pytest.mark.parametrize("engine, extra", ENGINES, ids=[engine for engine, _ in ENGINES])
def test_cli_train_with_more_processes_than_slots_fails_at_once(engine, extra, table, spark, tmp_path,  # noqa: F811
                                                                 capsys):
    scans, rows, summary = table
    started = time.monotonic()
    code = main(["train", "--task", "classify", "--engine", engine, "--num-proc", "3", "--scans", str(scans),
                 "--output", str(tmp_path / "out"), "--image-size", "32", "--set", "spark.master=local[2]", *extra])
    seconds = time.monotonic() - started
    assert code == 2, "a cluster too small for --num-proc is a config error"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"classeg train: error: {SLOT_MESSAGE}")
    assert seconds < 60
    assert not (tmp_path / "out" / "runs").exists(), "nothing was read or written"


def test_library_training_checks_slots_before_launching(table, spark, tmp_path):  # noqa: F811
    scans, rows, summary = table
    started = time.monotonic()
    with pytest.raises(ConfigError, match=re.escape(SLOT_MESSAGE)):
        run_training(spark, _cfg(scans, tmp_path, "train.task=classify", "train.engine=horovod",
                                 "train.num_proc=3", "train.run_id=slots"))
    assert time.monotonic() - started < 60
    assert not list((tmp_path / "runs" / "slots").glob("checkpoints")), "no process started"


@pytest.mark.parametrize("engine, torch_mode", [("horovod", "auto"), ("torch", "local"), ("torch", "barrier")])
def test_a_failed_training_process_is_named_with_its_cause(engine, torch_mode, spark, tmp_path):
    """Each process gets a plan it cannot use (no training recipe), so both fail in classeg's own loop code;
    no engine says why by itself."""
    plan = SimpleNamespace(run_uri=str(tmp_path / "run"), s3=None)
    with pytest.raises(JobFailed) as caught:
        launch(spark, plan, engine=engine, num_proc=2, threads=1, torch_mode=torch_mode)
    cause = "AttributeError: 'types.SimpleNamespace' object has no attribute 'recipe'"
    message = str(caught.value)
    assert message.startswith("training failed on rank ") and message.endswith(f": {cause}")
    assert message.split()[4].rstrip(":") in ("0", "1")
    assert root_cause(caught.value) == message
    records = [json.loads(path.read_text()) for path in (tmp_path / "run" / "failures").rglob("rank-*.json")]
    assert sorted(record["rank"] for record in records) == ["0", "1"]
    assert {record["error"] for record in records} == {cause}
    folder = next((tmp_path / "run" / "failures").iterdir())
    assert first_failure(str(folder))["time"] == min(record["time"] for record in records)
