"""The README's documented local sequence, run verbatim: the fenced block between ``<!-- readme-test -->`` and
``<!-- /readme-test -->`` in README.md, one shell command line at a time (backslash continuations joined), in
an empty working directory with the venv's ``bin/`` first on ``PATH``, as a new user would paste it. Each line
must exit 0, and the outputs must be where the README says: the scan table's rows, both training outputs'
``model/``, the Class-Seg evaluation and a scores row for every archive file.

Also checked: README.md and docs/emr.md give every location of that sequence on S3 under the one scheme the
README states (the local path under ``s3://my-bucket/``, and under ``s3://my-bucket/classeg/`` for what
classeg writes)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EMR_DOC = ROOT / "docs" / "emr.md"
BLOCK = re.compile(r"<!-- readme-test -->\s*```(?:bash|sh|shell)?\n(.*?)```\s*<!-- /readme-test -->", re.S)
LINE_TIMEOUT = 240   # seconds per command line
TOTAL_LIMIT = 480    # the whole sequence: a guard against a hang (5.5 minutes on 2 busy cores)
# Where the README's sequence reads (inputs) and writes (outputs), relative to its working directory.
INPUTS = ("data/lgg", "archive")
OUTPUTS = ("tables/lgg", "models/classifier", "models/segmenter", "eval/classseg", "scores")
BUCKET = "s3://my-bucket"


def readme_commands(text: str) -> list[str]:
    """The command lines of the one readme-test block of ``text``: continuations joined, blank lines and
    comments dropped. AssertionError unless there is exactly one block and it has commands."""
    blocks = BLOCK.findall(text)
    assert len(blocks) == 1, f"README.md must hold exactly one <!-- readme-test --> fenced block, found {len(blocks)}"
    commands, pending = [], ""
    for raw in blocks[0].splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        commands.append(pending + line)
        pending = ""
    assert not pending, f"the readme-test block ends inside a continued line: {pending!r}"
    assert commands, "the readme-test block holds no commands"
    return commands


def test_block_parsing():
    text = ("x\n<!-- readme-test -->\n```bash\n# a comment\nclasseg a --x 1 \\\n    --y 2\n\nclasseg b\n```\n"
            "<!-- /readme-test -->\n")
    assert readme_commands(text) == ["classeg a --x 1 --y 2", "classeg b"]
    with pytest.raises(AssertionError, match="exactly one"):
        readme_commands(text + text)
    with pytest.raises(AssertionError, match="exactly one"):
        readme_commands("```bash\nclasseg a\n```\n")


def test_block_runs_the_whole_sequence():
    """Each step of ingest -> train (both tasks) -> evaluate -> score is in the block, on the documented paths."""
    commands = [shlex.split(line) for line in readme_commands(README.read_text(encoding="utf-8"))]
    assert all(argv[0] == "classeg" for argv in commands), commands
    steps = [(argv[1], argv[argv.index("--output") + 1]) for argv in commands]
    assert [step for step, _ in steps] == ["synth", "synth", "ingest", "train", "train", "evaluate", "score"], steps
    assert [output for _, output in steps] == [*INPUTS, *OUTPUTS], steps


def _s3(local: str) -> str:
    return f"{BUCKET}/{local}" if local in INPUTS else f"{BUCKET}/classeg/{local}"


@pytest.mark.parametrize("doc", [README, EMR_DOC], ids=lambda path: path.name)
def test_docs_use_one_set_of_s3_paths(doc):
    """Every location flag of the sequence's jobs in the doc's examples is an S3 path of the README's scheme, and
    each location of the sequence appears there."""
    text = doc.read_text(encoding="utf-8")
    flags = re.findall(r"--(input|output|scans|model|classifier|segmenter|archive) (s3://\S+)", text)
    assert flags, f"no s3:// locations in {doc.name}"
    sequence = {_s3(local) for local in (*INPUTS, *OUTPUTS)}
    # evaluate --model's output, and the wheelhouse docs/emr.md builds (classeg emr wheelhouse --output)
    allowed = sequence | {f"{BUCKET}/classeg/eval/classifier", f"{BUCKET}/classeg/wheelhouse"}
    wrong = sorted({uri for _, uri in flags if uri.rstrip("/") not in allowed})
    assert not wrong, f"{doc.name}: locations outside the README's scheme: {wrong}"
    used = {uri.rstrip("/") for _, uri in flags}
    missing = sorted(sequence - used)
    assert not missing, f"{doc.name} never uses {missing}"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYSPARK_PYTHON", None)  # as in a user's shell: classeg picks its own interpreter
    env.pop("PYSPARK_DRIVER_PYTHON", None)
    return env


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    """Runs the README's block line by line in a fresh folder; stops at the first failing line."""
    workdir = tmp_path_factory.mktemp("readme-user")
    assert (Path(sys.executable).parent / "classeg").is_file(), "the classeg console script is not installed"
    ran, started = [], time.monotonic()
    for line in readme_commands(README.read_text(encoding="utf-8")):
        line_started = time.monotonic()
        result = subprocess.run(["bash", "-c", line], cwd=workdir, env=_env(), capture_output=True, text=True,
                                timeout=LINE_TIMEOUT)
        ran.append({"line": line, "rc": result.returncode, "seconds": round(time.monotonic() - line_started, 1),
                    "tail": (result.stdout + result.stderr)[-3000:]})
        if result.returncode != 0:
            break
    return {"workdir": workdir, "ran": ran, "seconds": time.monotonic() - started}


def test_every_line_exits_0_in_time(sequence):
    for step in sequence["ran"]:
        assert step["rc"] == 0, f"README line failed (exit {step['rc']}): {step['line']}\n{step['tail']}"
    assert len(sequence["ran"]) == len(readme_commands(README.read_text(encoding="utf-8")))
    assert sequence["seconds"] < TOTAL_LIMIT, [(step["line"], step["seconds"]) for step in sequence["ran"]]


def _completed(sequence) -> Path:
    if any(step["rc"] != 0 for step in sequence["ran"]):
        pytest.fail("a README line failed (see test_every_line_exits_0_in_time)")
    return sequence["workdir"]


def test_the_scan_table_has_a_row_per_slice(sequence):
    work = _completed(sequence)
    slices = [path for path in (work / "data" / "lgg" / "kaggle_3m").rglob("*.tif")
              if not path.name.endswith("_mask.tif")]
    summary = json.loads((work / "tables" / "lgg" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["scans"] == len(slices) > 0
    rows = ds.dataset(str(work / "tables" / "lgg" / "scans"), format="parquet", partitioning="hive").count_rows()
    assert rows == len(slices)


@pytest.mark.parametrize("output, task", [("models/classifier", "classify"), ("models/segmenter", "segment")])
def test_training_outputs_hold_the_model(sequence, output, task):
    work = _completed(sequence)
    model = work / output / "model"
    assert (model / "weights.pt").is_file()
    assert json.loads((model / "model.json").read_text())["task"] == task
    runs = list((work / output / "runs").glob("*/result.json"))
    assert len(runs) == 1


def test_the_class_seg_evaluation(sequence):
    work = _completed(sequence)
    metrics = json.loads((work / "eval" / "classseg" / "classseg_metrics.json").read_text())
    summary = json.loads((work / "tables" / "lgg" / "summary.json").read_text())
    assert metrics["split"] == "test" and metrics["slices"] == summary["per_split"]["test"] > 0


def test_every_archive_file_has_a_scores_row(sequence):
    work = _completed(sequence)
    files = [path for path in (work / "archive").rglob("*") if path.is_file()]
    rows = sum(ds.dataset(str(folder), format="parquet").count_rows()
               for folder in (work / "scores").glob("run_date=*"))
    assert rows == len(files) > 0
    markers = list((work / "scores" / "_runs").glob("*.json"))
    assert len(markers) == 1
    summary = json.loads(markers[0].read_text())["summary"]
    assert summary["scored"] == summary["listed"] == len(files) and summary["ok"] > 0
