"""A failed command is one line naming its root cause (classeg.errors.root_cause, classeg.cli.main), the full
traceback at --log-level DEBUG, exit status 1 (2 for a bad config, 130 interrupted); a command stops the
SparkSession it started and leaves one that was already running alone.

The executor failures are real: a local Spark job (the session fixture) whose Python function raises."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from classeg import cli, commands, synthetic
from classeg.config import load_config
from classeg.errors import MAX_CAUSE_CHARS, ConfigError, JobFailed, python_failures, root_cause

ROOT = Path(__file__).resolve().parents[2]


def _failure(action) -> Exception:
    with pytest.raises(Exception) as caught:
        action()
    return caught.value


def _udf_failure(spark, error: Exception) -> Exception:
    """What the driver sees when a mapInPandas function raises ``error`` on an executor."""
    def score_batches(batches):
        for batch in batches:
            raise error
            yield batch

    return _failure(lambda: spark.range(4, numPartitions=1).mapInPandas(score_batches, "id long").collect())


def _rdd_failure(spark, error: Exception) -> Exception:
    def load_model(_):
        raise error

    return _failure(lambda: spark.sparkContext.parallelize([1], 1).map(load_model).collect())


# ---------------------------------------------------------------------------------------------- root causes
def test_pandas_udf_failure_is_the_workers_exception_line(spark):
    err = _udf_failure(spark, ValueError("boom /x"))
    assert type(err).__name__ == "PythonException"
    assert "Traceback (most recent call last)" in str(err)
    assert root_cause(err) == "ValueError: boom /x"


def test_rdd_failure_is_the_workers_exception_line_not_the_java_trace(spark):
    err = _rdd_failure(spark, FileNotFoundError("model.json not found in /x"))
    assert type(err).__name__ == "Py4JJavaError"
    assert len(str(err).splitlines()) > 50, "the text the CLI used to print"
    assert root_cause(err) == "FileNotFoundError: model.json not found in /x"
    # Spark prints the worker's traceback twice (the stage failure and its cause): both are found.
    assert [name for name, _, _ in python_failures(str(err))] == ["FileNotFoundError", "FileNotFoundError"]


def test_chained_worker_exception_gives_the_outermost(spark):
    def chained():
        try:
            {}["label"]
        except KeyError as err:
            raise ValueError("scan s1: no label column") from err

    def score_batches(batches):
        for batch in batches:
            chained()
            yield batch

    err = _failure(lambda: spark.range(2, numPartitions=1).mapInPandas(score_batches, "id long").collect())
    # PySpark's simplified worker traceback keeps the raised exception's frames only, not its cause's.
    assert [name for name, _, _ in python_failures(str(err))] == ["ValueError"]
    assert root_cause(err) == "ValueError: scan s1: no label column"


def test_analysis_exception_is_its_first_line(spark):
    err = _failure(lambda: spark.sql("SELECT nope FROM range(1)").collect())
    assert type(err).__name__ == "AnalysisException" and "\n" in str(err)
    cause = root_cause(err)
    assert cause.startswith("AnalysisException: [UNRESOLVED_COLUMN.WITH_SUGGESTION] A column or function "
                            "parameter with name `nope` cannot be resolved.")
    assert "Project" not in cause


def test_classeg_error_raised_from_an_executor_failure_names_both(spark):
    executor = _udf_failure(spark, FileNotFoundError("model.json not found in /x"))
    try:
        raise JobFailed("score run r1 failed") from executor
    except JobFailed as err:
        assert root_cause(err) == "score run r1 failed: FileNotFoundError: model.json not found in /x"


def test_runtime_error_wrapping_an_executor_failure(spark):
    """Raised while handling it (``__context__``, as a ``finally`` or a careless ``except`` does) or from it."""
    executor = _rdd_failure(spark, ValueError("boom /x"))
    try:
        try:
            raise executor
        except Exception:
            raise RuntimeError("training failed")
    except RuntimeError as err:
        assert err.__cause__ is None and err.__context__ is executor
        assert root_cause(err) == "RuntimeError: training failed: ValueError: boom /x"
    try:
        raise RuntimeError("training failed: ValueError: boom /x") from executor
    except RuntimeError as err:
        assert root_cause(err) == "RuntimeError: training failed: ValueError: boom /x", "said once"


def test_chain_gives_the_outermost_and_where_classeg_called_the_library(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1\n")
    err = _failure(lambda: load_config([str(bad)]))
    assert type(err).__name__ == "ParserError"  # raised inside PyYAML, called by classeg.config
    cause = root_cause(err)
    assert cause.startswith("ParserError: while parsing a flow sequence in ")
    assert cause.endswith(" in load_config)") and " (at classeg/config.py:" in cause
    try:
        try:
            {}["scans"]
        except KeyError as inner:
            raise ConfigError("train.scans is missing") from inner
    except ConfigError as err:
        assert root_cause(err) == "train.scans is missing", "classeg's own errors: the message alone"


@pytest.mark.parametrize("error, expected", [
    (ValueError("first line\n  second line"), "ValueError: first line second line"),
    (KeyError("label"), "KeyError: 'label'"),
    (RuntimeError(), "RuntimeError"),
    (JobFailed("error rate 0.5 is above --max-error-rate 0.01"), "error rate 0.5 is above --max-error-rate 0.01"),
])
def test_one_line_per_exception(error, expected):
    assert root_cause(error) == expected


def test_long_causes_are_capped():
    cause = root_cause(ValueError("x" * 5000))
    assert len(cause) == MAX_CAUSE_CHARS and cause.endswith(" ...")
    assert root_cause(ValueError("y" * 50), limit=20) == "ValueError: yyyy ..."


# ---------------------------------------------------------------------------------------------- the CLI
def _synth_argv(tmp_path) -> list[str]:
    return ["synth", "--layout", "folders", "--output", str(tmp_path / "unused")]


def test_cli_prints_one_line_for_an_executor_failure_and_keeps_the_callers_session(spark, tmp_path, capsys,
                                                                                  monkeypatch):
    from pyspark.sql import SparkSession

    monkeypatch.setattr(commands, "synth", lambda args, cfg: _raise(_udf_failure(spark, ValueError("boom /x"))))
    assert cli.main(_synth_argv(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["classeg synth: error: ValueError: boom /x"]
    assert SparkSession.getActiveSession() is spark, "the fixture's session was running before: not stopped"
    assert spark.range(3).count() == 3


def _raise(error: BaseException):
    raise error


def test_cli_failure_before_spark_is_one_line(tmp_path, capsys):
    # The archive beside the models, not above them: a path below the archive would be a redacted key.
    code = cli.main(["score", "--archive", str(tmp_path / "archive"), "--classifier", str(tmp_path / "missing"),
                     "--output", str(tmp_path / "out")])
    assert code == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("classeg score: error: ")
    assert str(tmp_path / "missing") in lines[0]


def test_cli_traceback_at_debug(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr(commands, "synth", lambda args, cfg: _raise(KeyError("label")))
    with caplog.at_level(logging.DEBUG, logger="classeg"):
        assert cli.main([*_synth_argv(tmp_path), "--log-level", "DEBUG"]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("classeg synth: error: KeyError: 'label' (at ")
    failed = [record for record in caplog.records if record.message == "classeg synth failed"]
    assert failed and failed[0].exc_info[1].args == ("label",)
    assert "Traceback (most recent call last)" in caplog.text


@pytest.mark.parametrize("error, status", [(KeyboardInterrupt(), 130), (ConfigError("train.lr must be positive"), 2),
                                           (JobFailed("no usable scans found"), 1)])
def test_cli_exit_status(error, status, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(commands, "synth", lambda args, cfg: _raise(error))
    assert cli.main(_synth_argv(tmp_path)) == status
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_cli_bad_config_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1\n")
    with pytest.raises(SystemExit) as caught:
        cli.main([*_synth_argv(tmp_path), "--conf", str(bad)])
    assert caught.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("classeg synth: config error: ParserError: ")


def _run_cli(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib"), "PYSPARK_PYTHON": sys.executable}
    return subprocess.run([sys.executable, "-m", "classeg.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_cli_process_shows_the_traceback_only_at_debug(tmp_path):
    argv = ["score", "--archive", str(tmp_path), "--classifier", str(tmp_path / "missing"), "--output",
            str(tmp_path / "out")]
    quiet, loud = _run_cli(*argv), _run_cli(*argv, "--log-level", "DEBUG")
    assert quiet.returncode == loud.returncode == 1
    assert "Traceback" not in quiet.stderr and quiet.stderr.splitlines()[-1].startswith("classeg score: error: ")
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.splitlines()[-1] == quiet.stderr.splitlines()[-1]


# ---------------------------------------------------------------------------------------------- sessions
def _folders(tmp_path) -> Path:
    synthetic.write_folders(tmp_path / "data", seed=2, images_per_class=2, classes=["glioma", "notumor"])
    return tmp_path / "data"


def test_ingest_in_a_fresh_process_stops_the_session_it_started(tmp_path):
    """No session before: `classeg ingest` starts one and stops it, after success and after a failure that
    happens once Spark runs (the input folder does not exist)."""
    source = _folders(tmp_path)
    script = f"""
import json
from pyspark import SparkContext
from pyspark.sql import SparkSession
from classeg.cli import main

def state(code):
    return {{"code": code, "session": SparkSession.getActiveSession() is not None,
             "context": SparkContext._active_spark_context is not None}}

common = ["--image-size", "32", "--set", "spark.master=local[1]", "--set", "spark.shuffle_partitions=2"]
ok = main(["ingest", "--dataset", "folders", "--input", {str(source)!r}, "--output", {str(tmp_path / "t")!r},
           *common])
print("STATE", json.dumps(state(ok)))
bad = main(["ingest", "--dataset", "lgg", "--input", {str(tmp_path / "missing")!r}, "--output",
            {str(tmp_path / "t2")!r}, *common])
print("STATE", json.dumps(state(bad)))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib"), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    states = [json.loads(line[len("STATE "):]) for line in result.stdout.splitlines() if line.startswith("STATE ")]
    assert states == [{"code": 0, "session": False, "context": False}, {"code": 1, "session": False, "context": False}]
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["scans"] == 4
    assert "classeg ingest: error: " in result.stderr and "does not exist" in result.stderr


def test_ingest_in_a_notebook_keeps_its_session(spark, tmp_path, capsys):
    from pyspark.sql import SparkSession

    source = _folders(tmp_path)
    assert SparkSession.getActiveSession() is spark
    assert cli.main(["ingest", "--dataset", "folders", "--input", str(source), "--output", str(tmp_path / "t"),
                     "--image-size", "32", "--set", "spark.master=local[2]"]) == 0
    assert json.loads(capsys.readouterr().out)["scans"] == 4
    assert SparkSession.getActiveSession() is spark
    assert spark.read.parquet(str(tmp_path / "t" / "scans")).count() == 4
