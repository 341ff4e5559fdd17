"""Paths handed to executors and ranks: `classeg.io.uri.absolute`, and `classeg.artifact.resolve_artifact` on
artifact folders and on training output folders laid out as `classeg.training.outputs.write_outputs` writes them
(``runs/<run_id>/model/``, ``runs/<run_id>/result.json`` last, the ``model/`` copy), locally and on an S3 server
on loopback."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from classeg.artifact import load_artifact, read_meta, resolve_artifact
from classeg.io.uri import absolute
from scoring_models import save_classifier, save_segmenter


# ---------------------------------------------------------------------------------------------- absolute
@pytest.mark.parametrize("given, expected", [
    ("models/cls", "{cwd}/models/cls"),
    ("./models/../models/seg/", "{cwd}/models/seg"),
    ("scan:1.png", "{cwd}/scan:1.png"),          # a colon in a file name is no scheme
    ("~/weights.pt", "{home}/weights.pt"),
    ("~", "{home}"),
    ("/abs/models/cls", "/abs/models/cls"),
    ("file:///abs/my%20models", "file:///abs/my%20models"),
    ("file:/abs/models", "file:/abs/models"),     # Hadoop's spelling
    ("s3://bucket/models/cls", "s3://bucket/models/cls"),
    ("s3a://bucket/models/cls/", "s3a://bucket/models/cls/"),
    ("s3n://bucket/k", "s3n://bucket/k"),
    ("hdfs://namenode:8020/models", "hdfs://namenode:8020/models"),
])
def test_absolute_resolves_local_paths_against_the_drivers_directory_and_keeps_uris(given, expected, tmp_path,
                                                                                   monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert absolute(given) == expected.format(cwd=work, home=home)


def test_absolute_takes_path_objects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute(Path("models") / "cls") == str(tmp_path / "models" / "cls")


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_absolute_rejects_what_is_no_location(bad):
    with pytest.raises(ValueError, match="expected an s3:// URI, a file:// URI or a local path, got"):
        absolute(bad)


# ---------------------------------------------------------------------------------- training output folders
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """One real classifier and one real segmenter artifact (untrained: resolution never runs them)."""
    from classeg.models import build_classifier, build_resunet

    root = tmp_path_factory.mktemp("artifacts")
    save_classifier(root / "classifier", build_classifier(arch="resnet18", num_classes=2, input_size=32),
                    ["no_tumor", "tumor"])
    save_segmenter(root / "segmenter", build_resunet(in_channels=1, base_filters=4), size=32)
    return {"classify": root / "classifier", "segment": root / "segmenter"}


def write_run(output: Path, run_id: str, artifact: Path, *, created_at: str, complete: bool = True) -> Path:
    """Lay out one training run of ``artifact`` under ``output`` in write_outputs' order: the run's model/,
    (complete runs:) the output's model/ copy, then result.json. ``created_at`` is the moment the artifact
    was saved. Returns the run's model folder."""
    model = output / "runs" / run_id / "model"
    model.mkdir(parents=True)
    meta = json.loads((artifact / "model.json").read_text())
    meta.update(created_at=created_at, training={"run_id": run_id})
    (model / "model.json").write_text(json.dumps(meta))
    os.link(artifact / "weights.pt", model / "weights.pt")  # the same bytes as a copy, without the copying
    (model / "metrics.json").write_text("{}")
    checkpoints = output / "runs" / run_id / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "last.pt").write_bytes(b"not read by the resolver")
    if complete:
        shutil.rmtree(output / "model", ignore_errors=True)
        shutil.copytree(model, output / "model")
        (output / "runs" / run_id / "result.json").write_text(json.dumps(
            {"run_id": run_id, "task": meta["task"], "artifact": str(model), "latest_artifact": str(output / "model"),
             "model_id": meta["model_id"]}))
    return model


def test_an_artifact_folder_is_itself(artifacts, tmp_path, monkeypatch):
    monkeypatch.chdir(artifacts["segment"].parent)
    assert resolve_artifact("segmenter") == str(artifacts["segment"])
    # an artifact folder is taken as it is: loading it checks its task ("expected a 'classify' model")
    assert resolve_artifact(str(artifacts["segment"]) + "/", task="classify") == str(artifacts["segment"])


def test_a_training_output_resolves_to_its_newest_completed_run(artifacts, tmp_path, monkeypatch):
    output = tmp_path / "models" / "classifier"
    write_run(output, "20260101-000000-aaaaaa", artifacts["classify"], created_at="2026-01-01T10:00:00+00:00")
    # resumed later: started first (smallest id), finished last: the newest
    newest = write_run(output, "20251231-000000-bbbbbb", artifacts["classify"],
                       created_at="2026-01-02T09:00:00+00:00")
    write_run(output, "custom-run", artifacts["classify"], created_at="2026-01-01T12:00:00+00:00")
    # a later run that crashed before its result.json: not complete, never chosen
    write_run(output, "20260103-000000-cccccc", artifacts["classify"], created_at="2026-01-03T00:00:00+00:00",
              complete=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_artifact("models/classifier") == str(newest)
    assert resolve_artifact(str(output), task="classify") == str(newest)
    assert load_artifact(resolve_artifact("models/classifier")).meta["training"]["run_id"] == "20251231-000000-bbbbbb"


def test_equal_artifact_times_go_to_the_greater_run_id(artifacts, tmp_path):
    output = tmp_path / "out"
    write_run(output, "run-b", artifacts["segment"], created_at="2026-01-01T10:00:00+00:00")
    write_run(output, "run-a", artifacts["segment"], created_at="2026-01-01T10:00:00+00:00")
    assert resolve_artifact(str(output)) == str(output / "runs" / "run-b" / "model")


def test_one_output_with_both_tasks_resolves_per_task(artifacts, tmp_path):
    output = tmp_path / "shared"
    classifier = write_run(output, "run-1", artifacts["classify"], created_at="2026-01-01T10:00:00+00:00")
    segmenter = write_run(output, "run-2", artifacts["segment"], created_at="2026-01-01T11:00:00+00:00")
    assert resolve_artifact(str(output)) == str(segmenter)
    assert resolve_artifact(str(output), task="classify") == str(classifier)
    assert resolve_artifact(str(output), task="segment") == str(segmenter)
    only_segment = tmp_path / "segment-only"
    write_run(only_segment, "run-1", artifacts["segment"], created_at="2026-01-01T10:00:00+00:00")
    with pytest.raises(ValueError, match=r"completed runs of task \['segment'\], none of task 'classify'"):
        resolve_artifact(str(only_segment), task="classify")
    with pytest.raises(ValueError, match="task must be one of"):
        resolve_artifact(str(output), task="detect")


def test_without_completed_runs_the_model_copy_is_used(artifacts, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(artifacts["segment"], output / "model")
    write_run(output, "crashed", artifacts["segment"], created_at="2026-01-01T10:00:00+00:00", complete=False)
    assert resolve_artifact(str(output)) == str(output / "model")


def test_a_completed_run_without_a_usable_artifact_is_an_error(artifacts, tmp_path):
    output = tmp_path / "out"
    model = write_run(output, "broken", artifacts["segment"], created_at="2026-01-01T10:00:00+00:00")
    (model / "model.json").unlink()
    with pytest.raises(ValueError, match=r"run 'broken' is complete \(result.json\) but its model/ is not a usable"):
        resolve_artifact(str(output))


def test_a_missing_artifact_names_the_uri_and_what_was_looked_for(artifacts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for given in ("nowhere", "empty", str(artifacts["segment"] / "weights.pt")):
        with pytest.raises(FileNotFoundError) as caught:
            resolve_artifact(given)
        message = str(caught.value)
        assert message.startswith(f"no model artifact at {absolute(given)!r}")
        assert "model.json" in message and "runs/<run_id>/result.json" in message and "model/model.json" in message


def test_train_weights_take_a_relative_training_output(artifacts, tmp_path, monkeypatch):
    from classeg.training.job import resolve_weights

    output = tmp_path / "models" / "segmenter"
    newest = write_run(output, "run-2", artifacts["segment"], created_at="2026-02-01T00:00:00+00:00")
    write_run(output, "run-1", artifacts["segment"], created_at="2026-01-01T00:00:00+00:00")
    monkeypatch.chdir(tmp_path)
    weights = resolve_weights("models/segmenter", task="segment", arch="resnet18", head="linear", base_filters=4,
                              class_names=["background", "tumor"])
    assert weights == {"kind": "full", "uri": f"{newest}/weights.pt", "lesion_map": False}
    torch_file = tmp_path / "backbone.pth"
    torch_file.write_bytes((artifacts["segment"] / "weights.pt").read_bytes())
    assert resolve_weights("backbone.pth", task="segment", arch="resnet18", head="linear", base_filters=4,
                           class_names=["background", "tumor"]) == {"kind": "full", "uri": str(torch_file)}


# ---------------------------------------------------------------------------------------------- S3
def test_a_training_output_on_s3_resolves_in_the_users_spelling(artifacts, tmp_path, s3, s3_cfg):
    from s3util import put_objects

    output = tmp_path / "out"
    write_run(output, "run-old", artifacts["segment"], created_at="2026-01-01T10:00:00+00:00")
    write_run(output, "run-new", artifacts["segment"], created_at="2026-01-02T10:00:00+00:00")
    write_run(output, "run-crashed", artifacts["segment"], created_at="2026-01-03T10:00:00+00:00", complete=False)
    s3.create_bucket(Bucket="resolve")
    put_objects(s3, "resolve", {f"models/segmenter/{path.relative_to(output).as_posix()}": path.read_bytes()
                                for path in output.rglob("*") if path.is_file()})
    assert resolve_artifact("s3://resolve/models/segmenter", s3_cfg=s3_cfg) == \
        "s3://resolve/models/segmenter/runs/run-new/model"
    assert resolve_artifact("s3a://resolve/models/segmenter/", task="segment", s3_cfg=s3_cfg) == \
        "s3a://resolve/models/segmenter/runs/run-new/model"
    chosen = resolve_artifact("s3://resolve/models/segmenter/runs/run-old/model", s3_cfg=s3_cfg)
    assert chosen == "s3://resolve/models/segmenter/runs/run-old/model"
    assert read_meta(chosen, s3_cfg=s3_cfg)["training"]["run_id"] == "run-old"
    with pytest.raises(FileNotFoundError, match="no model artifact at 's3://resolve/models/nothing'"):
        resolve_artifact("s3://resolve/models/nothing", s3_cfg=s3_cfg)
