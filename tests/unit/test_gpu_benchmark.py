"""benchmarks/gpu.py runs where there is no Spark: a --quick CPU run with pyspark and petastorm blocked reports
every measurement; without CUDA it skips; a missing boto3 (as on the GPU machine) is reported, not fatal."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "benchmarks/gpu.py"
NO_SPARK = ("pyspark", "petastorm")
CEILINGS = ("resnet18_forward", "resnet18_train_step", "resnet50_forward", "resnet50_train_step",
            "resunet_forward", "resunet_train_step")


def _run(*argv: str, blocked=NO_SPARK, timeout: int = 80) -> subprocess.CompletedProcess:
    """The script as the GPU machine would run it: these modules made unimportable first."""
    wrapper = (f"import sys, runpy\nfor name in {list(blocked)!r}: sys.modules[name] = None\n"
               f"runpy.run_path({SCRIPT!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", wrapper, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_quick_cpu_run_reports_every_measurement(tmp_path):
    out = tmp_path / "gpu.json"
    run = _run("--quick", "--device", "cpu", "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert json.loads(out.read_text()) == result
    assert "skipped" not in result
    assert (result["torch"], result["device"], result["device_type"]) == (torch.__version__, "cpu", "cpu")
    assert result["capability"] is None and result["bf16"] is None
    assert result["parts"] == ["checks", "ceilings", "predictor", "loader", "dispatch", "train_epoch",
                               "train_compiled"]
    assert result["torch_threads"] == 1  # --quick

    ceilings = result["ceilings"]
    assert sorted(ceilings) == sorted(CEILINGS)
    for name, part in ceilings.items():
        assert part["images_per_sec"] > 0 and part["seconds"] > 0, name
        assert part["iterations"] >= 2, name
        expected_batch = 2 if name.startswith("resunet") else 4  # the --quick sizes
        assert (part["batch"], part["image_size"]) == (expected_batch, 64), name
        assert part["images_per_sec"] == pytest.approx(part["batch"] * part["iterations"] / part["seconds"])
    assert ceilings["resunet_forward"]["base_filters"] == 16  # train.base_filters of the default config

    predictor = result["predictor"]
    assert (predictor["scans"], predictor["scans_requested"], predictor["stopped_early"]) == (24, 24, False)
    assert predictor["images_per_sec"] == pytest.approx(24 / predictor["seconds"])
    # tumor_threshold is the median of 8 distinct scans cycled 3 times: half of them, 12, are segmented
    assert predictor["segmented"] == 12 and predictor["segmented_fraction"] == 0.5
    assert 0 < predictor["tumor_threshold"] < 1
    assert 0 < predictor["prepare_seconds"] + predictor["predict_seconds"] <= predictor["seconds"]
    assert predictor["autocast_dtype"] == "float32"  # the predictor's own choice on CPU

    # the variants: the other memory format, and cudnn.benchmark (a no-op on the CPU)
    assert result["predictor_contiguous"]["channels_last"] is False and result["predictor"]["channels_last"] is True
    assert result["predictor_contiguous"]["scans"] == result["predictor_cudnn_benchmark"]["scans"] == 16

    # on the CPU the device is the CPU: the checks compare it with itself, and must find no difference
    checks = result["checks"]
    assert checks["augment"]["image_relative_error"] == 0 and checks["augment"]["mask_pixels_differing_fraction"] == 0
    assert checks["augment"]["finite"] is True and checks["augment"]["images"] == 4
    assert checks["predictor"]["probability_max_abs_error"] == 0 and checks["predictor"]["mask_iou"] == 1.0
    assert checks["predictor"]["labels_agree_fraction"] == 1.0 and checks["predictor"]["scans"] == 4

    loader = result["loader"]
    assert (loader["rows"], loader["batch"], loader["image_size"], loader["pinned"]) == (16, 4, 64, False)
    assert sorted(loader["host_by_threads"]) == ["1", "2"] and loader["threads"] in (1, 2)  # --quick's sweep
    assert loader["host"] == loader["host_by_threads"][str(loader["threads"])]
    for stage in ("host", "to_device_augmented"):
        assert loader[stage]["images"] == 16, stage  # one whole pass of the 16-row cache
        assert loader[stage]["images_per_sec"] == pytest.approx(16 / loader[stage]["seconds"])

    dispatch = result["dispatch"]
    assert (dispatch["device"], dispatch["batch_size"], dispatch["rows"], dispatch["image_size"]) == ("cpu", 4, 16, 64)
    assert dispatch["threads"] == loader["threads"] and len(dispatch["rounds"]) == 3
    # taken at the ResNet18 train step's batches/s (its ceiling), the same in both loader variants
    assert dispatch["rate_requested"] == pytest.approx(ceilings["resnet18_train_step"]["images_per_sec"] / 4)
    for variant in ("alone", "loader_threads", "loader_process"):
        assert dispatch["ops_per_sec"][variant] > 0, variant
    for variant in ("loader_threads", "loader_process"):
        assert dispatch["loader_batches_per_sec"][variant] > 0, variant  # the loader really ran beside it
    assert dispatch["threads_vs_process"] == pytest.approx(statistics.median(
        r["loader_threads"]["ops_per_sec"] / r["loader_process"]["ops_per_sec"] for r in dispatch["rounds"]))

    epoch = result["train_epoch"]
    assert epoch["images_per_sec"] > 0 and epoch["loss_finite"] is True
    assert (epoch["batch"], epoch["image_size"], epoch["steps"], epoch["rows"]) == (4, 64, 4, 16)
    assert epoch["measured_epochs"] == 1 and epoch["images_per_sec"] == pytest.approx(16 / epoch["seconds"])
    assert epoch["device"] == "cpu" and epoch["settings"].startswith("fp32, contiguous")
    assert epoch["loader_threads"] == loader["threads"]  # the sweep's fastest
    for name in ("augment_and_step", "step_only"):
        assert epoch["without_loader"][name]["images_per_sec"] > 0, name
    assert epoch["prepare_ahead"] is False  # the CPU makes the model input in line
    assert result["train_epoch_in_line"] == {"skipped": "the CPU makes the model input in line anyway"}
    assert epoch["switch_interval_s"] == pytest.approx(0.005)  # Python's default
    probed = result["train_epoch_switch_interval"]
    assert probed["switch_interval_s"] == pytest.approx(0.0005) and probed["loss_finite"] is True
    assert probed["images_per_sec"] == pytest.approx(16 / probed["seconds"])
    assert result["train_compiled"] == {"skipped": "train.compile applies to CUDA devices only"}

    ratios = result["ratios"]
    assert ratios["predictor_to_resnet18_forward"] == pytest.approx(
        predictor["images_per_sec"] / ceilings["resnet18_forward"]["images_per_sec"])
    assert ratios["train_epoch_to_resnet18_train_step"] == pytest.approx(
        epoch["images_per_sec"] / ceilings["resnet18_train_step"]["images_per_sec"])
    assert ratios["loader_to_resnet18_train_step"] == pytest.approx(
        loader["images_per_sec"] / ceilings["resnet18_train_step"]["images_per_sec"])
    # the predictor's own model work: a classifier forward per scan, a segmenter forward per segmented scan
    work = 1 / (1 / ceilings["resnet18_forward"]["images_per_sec"]
                + predictor["segmented_fraction"] / ceilings["resunet_forward"]["images_per_sec"])
    assert ratios["predictor_to_model_forward"] == pytest.approx(predictor["images_per_sec"] / work)
    assert ratios["train_compiled_to_resnet18_train_step"] is None
    assert ratios["train_epoch_in_line_to_resnet18_train_step"] is None
    assert ratios["train_epoch_switch_interval_to_resnet18_train_step"] == pytest.approx(
        probed["images_per_sec"] / ceilings["resnet18_train_step"]["images_per_sec"])


def test_models_limits_the_ceilings_and_the_json_is_saved_part_by_part(tmp_path):
    out = tmp_path / "gpu.json"
    run = _run("--quick", "--device", "cpu", "--parts", "ceilings,loader", "--models", "resnet18", "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert sorted(result["ceilings"]) == ["resnet18_forward", "resnet18_train_step"]
    assert "predictor" not in result and "train_epoch" not in result and result["loader"]["images_per_sec"] > 0
    assert result["ratios"]["predictor_to_model_forward"] is None  # no ResUNet ceiling, no predictor
    assert json.loads(out.read_text()) == result


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("argv", [(), ("--device", "cuda")])
def test_without_cuda_it_prints_skipped_and_exits_0(argv, tmp_path):
    out = tmp_path / "skipped.json"
    run = _run(*argv, "--out", str(out), timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["skipped"] == "no CUDA device" and result["cuda_available"] is False
    assert "ceilings" not in result and "predictor" not in result
    assert json.loads(out.read_text()) == result


def test_a_missing_boto3_is_reported_and_the_run_goes_on():
    run = _run("--quick", "--device", "cpu", "--parts", "predictor,loader,train_epoch",
               blocked=NO_SPARK + ("boto3", "botocore"))
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["ceilings"] == {}
    assert result["loader"]["images_per_sec"] > 0  # the loader needs neither Spark nor boto3
    for part in ("predictor", "train_epoch", "train_epoch_switch_interval"):
        assert result[part]["error"].startswith("ModuleNotFoundError"), result[part]
        assert "boto" in result[part]["error"], result[part]
    assert set(result["ratios"].values()) == {None}  # no ceilings measured


@pytest.mark.parametrize("argv, named", [
    (("--scans", "0"), "'0'"),
    (("--seconds", "-1"), "'-1'"),
    (("--parts", "ceilings,decoder"), "'ceilings,decoder'"),
    (("--models", "resnet34"), "'resnet34'"),
    (("--device", "tpu"), "'tpu'"),
])
def test_bad_arguments_exit_2_naming_the_value(argv, named):
    run = _run(*argv, timeout=60)
    assert run.returncode == 2
    assert named in run.stderr and not run.stdout
