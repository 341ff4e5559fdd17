"""The Class-Seg predictor without Spark: classeg.scoring.udf.score_frame on real files in every format, with
fixture models trained on synthetic phantoms (tests/scoring_models.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from classeg import imaging
from classeg.archive import list_archive, objects_frame
from classeg import synthetic
from classeg.labels import TumorClassError
from classeg.scoring.predictor import ClassSegPredictor, ScoreSettings, resolve_tumor_classes
from classeg.scoring.table import SCORE_COLUMNS
from classeg import volumes
from classeg.scoring.device import masks_at_sizes, model_inputs
from classeg.scoring.stages import STAGES, StageTimes
from classeg.scoring.udf import score_frame
from classeg.transforms import preprocess_for_model
from scoring_models import save_classifier, trained_models

ARCHIVE_SEED = 7


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trained_models(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(models):
    return ClassSegPredictor.load(models["classifier"], models["segmenter"])


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive") / "scans"
    truth = synthetic.write_archive(root, seed=ARCHIVE_SEED, count=24, image_size=64)
    return root, truth


@pytest.fixture(scope="module")
def scored(archive, predictor):
    root, _ = archive
    objects = objects_frame(list_archive(root))
    return objects, score_frame(objects, predictor, batch_size=5, fetch_threads=3)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * float((predicted & truth).sum()) / float(predicted.sum() + truth.sum())


def test_one_row_per_object_in_order_with_the_schema_columns(scored, archive):
    objects, rows = scored
    _, truth = archive
    assert len(objects) == len(truth["slices"]) + len(truth["broken"]) == 28
    assert list(rows.columns) == list(SCORE_COLUMNS)
    assert rows["source_uri"].tolist() == objects["uri"].tolist()
    assert rows["version"].tolist() == objects["version"].tolist()
    assert rows["size"].tolist() == objects["size"].tolist()
    assert set(rows["status"]) == {"ok", "error"}
    assert rows["classifier_id"].str.startswith("classify-resnet18-").all()
    assert rows["segmenter_id"].str.startswith("segment-resunet-").all()


def test_broken_files_become_error_rows_with_their_reason(scored):
    _, rows = scored
    errors = rows[rows["status"] == "error"].set_index("key")
    kinds = errors["error"].str.split(":").str[0].to_dict()
    assert kinds == {"corrupt.tif": "undecodable", "empty.png": "empty", "notes.txt": "unsupported",
                     "truncated.jpg": "truncated"}
    assert errors[["label", "label_name", "probabilities", "tumor", "mask", "height"]].isna().all().all()


def test_labels_match_the_phantom_truth(scored, archive):
    _, rows = scored
    _, truth = archive
    ok = rows[rows["status"] == "ok"].set_index("key")
    assert len(ok) == 24
    expected = {entry["path"]: entry["has_tumor"] for entry in truth["slices"]}
    correct = [bool(ok.at[key, "tumor"]) == has_tumor for key, has_tumor in expected.items()]
    assert np.mean(correct) >= 0.9, ok[["label_name", "tumor_probability"]]
    # The binary classifier: label_name agrees with the tumour flag at threshold 0.5.
    assert (ok["label_name"].eq("tumor") == ok["tumor"].astype(bool)).all()
    probabilities = np.stack(ok["probabilities"].to_numpy())
    assert probabilities.shape == (24, 2) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(ok["tumor_probability"].astype(float), probabilities[:, 1], atol=1e-6)
    assert (ok["height"] == 64).all() and (ok["width"] == 64).all()


def _bbox(mask: np.ndarray) -> list[int] | None:
    """Reference box on the host: half-open [x0, y0, x1, y1] of the non-zero pixels."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1] if rows.size else None


def test_tumour_scans_get_masks_at_original_size_and_others_none(scored, archive):
    _, rows = scored
    _, truth = archive
    ok = rows[rows["status"] == "ok"].set_index("key")
    tumour, other = ok[ok["tumor"] == True], ok[ok["tumor"] == False]  # noqa: E712
    assert len(tumour) and len(other)
    assert other[["mask", "mask_area_px", "mask_fraction", "bbox"]].isna().all().all()
    scores = []
    for key, row in tumour.iterrows():
        mask = imaging.decode_png(row["mask"]) > 0
        assert mask.shape == (row["height"], row["width"])
        assert row["mask_area_px"] == mask.sum()
        assert row["mask_fraction"] == pytest.approx(mask.sum() / mask.size)
        if mask.any():
            assert list(row["bbox"]) == _bbox(mask)
        entry = next(e for e in truth["slices"] if e["path"] == key)
        if entry["has_tumor"]:
            scores.append(dice(mask, entry["mask"]))
    assert len(scores) >= 8 and np.mean(scores) >= 0.5, scores


def test_masks_are_resized_back_to_a_non_square_original(predictor, tmp_path):
    rng = np.random.default_rng(3)
    image, truth_mask = synthetic.phantom_slice(rng, size=64, anatomy=synthetic.random_anatomy(rng), slice_pos=0.5,
                                                lesion=synthetic.random_lesion(rng, kind="glioma"),
                                                contrasts=("FLAIR",))
    wide = np.asarray(Image.fromarray(np.rint(image[..., 0] * 255).astype(np.uint8)).resize((96, 64)))
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    predictor.tumor_threshold = 0.0  # force segmentation whatever the classifier says
    try:
        row = score_frame(objects_frame(list_archive(tmp_path)), predictor).iloc[0]
    finally:
        predictor.tumor_threshold = 0.5
    assert row["status"] == "ok" and row["tumor"] and (row["height"], row["width"]) == (64, 96)
    mask = imaging.decode_png(row["mask"])
    assert mask.shape == (64, 96) and set(np.unique(mask)) <= {0, 255}


def test_threshold_one_segments_nothing(predictor, archive):
    root, _ = archive
    objects = objects_frame(list_archive(root)).head(8)
    predictor.tumor_threshold = 1.0
    try:
        rows = score_frame(objects, predictor)
    finally:
        predictor.tumor_threshold = 0.5
    ok = rows[rows["status"] == "ok"]
    assert (ok["tumor_probability"] < 1.0).all()  # a softmax never quite reaches 1 in float32 here
    assert not ok["tumor"].any() and ok["mask"].isna().all()


def test_fetch_errors_become_rows(predictor, archive, tmp_path):
    root, _ = archive
    objects = objects_frame(list_archive(root)).head(3).copy()
    objects.loc[0, "uri"] = (tmp_path / "gone.png").as_uri()
    rows = score_frame(objects, predictor, max_bytes=100)  # every real scan is larger than 100 bytes
    assert rows["error"].str.split(":").str[0].tolist() == ["not_found", "too_large", "too_large"]
    assert (rows["status"] == "error").all()


def test_classify_only_without_segmenter(models, archive):
    root, _ = archive
    predictor = ClassSegPredictor.load(models["classifier"])
    rows = score_frame(objects_frame(list_archive(root)).head(10), predictor)
    assert rows["segmenter_id"].isna().all() and rows["mask"].isna().all()
    assert rows.loc[rows["status"] == "ok", "tumor"].notna().all()


def test_empty_objects_give_an_empty_frame(predictor):
    rows = score_frame(objects_frame([]), predictor)
    assert rows.empty and list(rows.columns) == list(SCORE_COLUMNS)


def test_wrong_and_missing_artifacts_raise(models, tmp_path):
    with pytest.raises(ValueError, match="is a 'segment' model, expected a 'classify' model"):
        ClassSegPredictor.load(models["segmenter"])
    with pytest.raises(ValueError, match="expected a 'segment' model"):
        ClassSegPredictor.load(models["classifier"], models["classifier"])
    with pytest.raises(FileNotFoundError, match="no model artifact"):
        ClassSegPredictor.load(str(tmp_path / "nothing"))


def test_classes_without_tumour_meaning_need_a_mapping(tmp_path):
    from classeg.models import build_classifier

    model = build_classifier(arch="resnet18", num_classes=2, input_size=32)
    save_classifier(tmp_path / "pets", model, ["cat", "dog"])
    with pytest.raises(TumorClassError, match=r"no tumour / no-tumour meaning.*score.tumor_classes"):
        ClassSegPredictor.load(str(tmp_path / "pets"))
    predictor = ClassSegPredictor.load(str(tmp_path / "pets"), tumor_classes=["dog"])
    assert predictor.tumor_indices == [1]


@pytest.mark.parametrize("names, meta, override, expected", [
    (["no_tumor", "tumor"], ["tumor"], (), [1]),
    (["yes", "no"], ["yes"], (), [0]),
    (["glioma", "meningioma", "notumor", "pituitary"], ["glioma", "meningioma", "pituitary"], (), [0, 1, 3]),
    (["Astrocitoma T1", "_NORMAL T1"], ["Astrocitoma T1"], (), [0]),
    (["meningioma", "glioma", "pituitary"], ["meningioma", "glioma", "pituitary"], (), [0, 1, 2]),
    (["cat", "dog"], ["cat"], (), [0]),  # model.json chose a mapping that differs from the default: trusted
    (["cat", "dog"], ["cat", "dog"], ("dog",), [1]),
    (["no_tumor", "tumor"], ["tumor"], ("no_tumor", "tumor"), [0, 1]),
])
def test_resolve_tumor_classes(names, meta, override, expected):
    assert resolve_tumor_classes(names, meta, override) == expected


@pytest.mark.parametrize("names, meta, override, message", [
    (["cat", "dog"], ["cat", "dog"], (), "no tumour / no-tumour meaning"),
    (["no_tumor", "tumor"], ["tumor"], ("tumour",), "names classes the classifier does not have"),
    (["no", "normal"], [], (), "no class of"),
    (["no_tumor", "tumor"], ["tumor", "other"], (), "model.json tumor_classes"),
])
def test_resolve_tumor_classes_rejects(names, meta, override, message):
    with pytest.raises(TumorClassError, match=message):
        resolve_tumor_classes(names, meta, override)


@pytest.mark.parametrize("mask, expected", [
    (np.zeros((4, 5), bool), (0, None)),
    (np.pad(np.ones((1, 1), bool), ((2, 1), (3, 1))), (1, [3, 2, 4, 3])),
    (np.pad(np.ones((2, 3), bool), ((0, 2), (1, 1))), (6, [1, 0, 4, 2])),
    (np.eye(3, dtype=bool)[::-1], (3, [0, 0, 3, 3])),
])
def test_device_masks_area_and_bbox_are_half_open_x0_y0_x1_y1(mask, expected):
    import torch

    probabilities = torch.from_numpy(mask.astype(np.float32))[None, None]
    found = masks_at_sizes(probabilities, [mask.shape], 0.5)
    assert (found.areas[0], found.bboxes[0]) == expected
    assert np.array_equal(found.masks[0], mask)


def test_device_masks_are_resized_back_per_size_in_input_order():
    import torch

    probabilities = torch.zeros((3, 1, 8, 8))
    probabilities[:, :, 2:6, 2:6] = 1.0
    found = masks_at_sizes(probabilities, [(16, 16), (8, 12), (16, 16)], 0.5)
    assert [mask.shape for mask in found.masks] == [(16, 16), (8, 12), (16, 16)]
    assert found.bboxes[0] == found.bboxes[2] == [4, 4, 12, 12] and found.areas[0] == 64
    assert found.bboxes[1] == [3, 2, 9, 6] and found.areas[1] == 24
    with pytest.raises(ValueError, match="3 probability maps for 2 sizes"):
        masks_at_sizes(probabilities, [(8, 8), (8, 8)], 0.5)


_SPECS = {
    "imagenet rgb": {"size": 32, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                     "zscore": False},
    "grayscale": {"size": 24, "channels": 1, "mean": [0.5], "std": [0.25], "zscore": False},
    "zscore": {"size": 32, "channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3, "zscore": True},
}


@pytest.mark.parametrize("shapes", ["mixed", "one"])
@pytest.mark.parametrize("name", sorted(_SPECS))
def test_device_inputs_match_the_training_preprocessing(name, shapes):
    """A batch of mixed sizes and channel counts (down- and upscaled, one constant scan), or of one shape (the
    whole batch in one piece), against preprocess_for_model, one scan at a time on the host."""
    import torch

    spec = _SPECS[name]
    rng = np.random.default_rng(5)
    if shapes == "mixed":
        scans = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), rng.integers(0, 256, (50, 50), dtype=np.uint8),
                 rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), np.full((20, 20), 7, np.uint8)]
    else:
        scans = [rng.integers(0, 256, (40, 40), dtype=np.uint8) for _ in range(3)] + [np.full((40, 40), 9, np.uint8)]
    batch = model_inputs(scans, spec, torch.device("cpu")).numpy()
    assert batch.shape == (4, spec["channels"], spec["size"], spec["size"]) and batch.dtype == np.float32
    for scan, computed in zip(scans, batch):
        if spec["channels"] == 1 and scan.ndim == 3:
            scan = np.rint(scan.mean(axis=2)).astype(np.uint8)
        zscore = spec["zscore"]
        expected = preprocess_for_model(scan, input_size=spec["size"], mean=None if zscore else spec["mean"],
                                        std=None if zscore else spec["std"], zscore=zscore,
                                        channels=spec["channels"])
        np.testing.assert_allclose(computed, expected, atol=1e-4)


def test_device_inputs_reject_bad_batches():
    import torch

    with pytest.raises(ValueError, match="at least one scan"):
        model_inputs([], _SPECS["grayscale"], torch.device("cpu"))
    with pytest.raises(ValueError, match="expects 2"):
        model_inputs([np.zeros((4, 4, 3), np.uint8)], {**_SPECS["grayscale"], "channels": 2}, torch.device("cpu"))


def test_a_volume_longer_than_a_batch_is_cut_into_bounded_batches_across_files(predictor, archive, tmp_path):
    """A 13-slice NIfTI volume between two small files, batch_size 4: every slice is scored, in order, in
    batches of at most 4 images that also take the neighbouring files' images (15 images: 4 batches)."""
    root, truth = archive
    volume = np.zeros((40, 36, 13), np.float32)
    volume[10:30, 8:24, 3:9] = 100.0
    (tmp_path / "b_volume.nii.gz").write_bytes(volumes.nifti_bytes(volume, np.diag([1.0, 1.0, 2.0, 1.0]),
                                                                   compress=True))
    small = sorted(root / entry["path"] for entry in truth["slices"] if entry["path"].endswith(".png"))[:2]
    for name, path in zip(("a_first.png", "c_last.png"), small):
        (tmp_path / name).write_bytes(path.read_bytes())
    objects = objects_frame(list_archive(tmp_path))
    stages = StageTimes()
    rows = score_frame(objects, predictor, batch_size=4, fetch_threads=2, stages=stages)
    assert rows["key"].tolist() == ["a_first.png", *["b_volume.nii.gz"] * 13, "c_last.png"]
    assert (rows["status"] == "ok").all()
    assert rows["frame"].tolist()[1:14] == list(range(13))
    assert rows["frame"].iloc[0] is None and rows["frame"].iloc[-1] is None
    counts = stages.as_dict()
    assert (counts["images"], counts["batches"], counts["largest_batch"]) == (15, 4, 4)


def test_stage_seconds_are_counted(scored, predictor, archive):
    root, _ = archive
    stages = StageTimes()
    predictor.tumor_threshold = 0.0  # every scan segmented, so every stage runs
    try:
        rows = score_frame(objects_frame(list_archive(root)), predictor, batch_size=5, fetch_threads=2,
                           stages=stages)
    finally:
        predictor.tumor_threshold = 0.5
    values = stages.as_dict()
    assert set(values) == {*STAGES, "images", "batches", "largest_batch"}
    assert all(values[name] > 0 for name in STAGES if name != "write"), values
    assert values["write"] >= 0
    assert (values["images"], values["batches"], values["largest_batch"]) == (24, 5, 5)
    assert rows["mask"].notna().sum() == 24


def test_stage_clock_adds_the_time_between_marks_to_each_stage():
    """On the CPU the clock is the host's: each mark's stage gets the time since the previous mark."""
    import time

    import torch

    from classeg.scoring.device import StageClock

    stages = StageTimes()
    started = time.perf_counter()
    clock = StageClock(torch.device("cpu"), stages)
    time.sleep(0.02)
    clock.mark("preprocess")
    time.sleep(0.05)
    clock.mark("classify")
    wall = time.perf_counter() - started
    clock.close()
    values = stages.as_dict()
    assert values["preprocess"] >= 0.02 and values["classify"] >= 0.05, values
    assert values["preprocess"] + values["classify"] <= wall
    assert values["segment"] == 0
    clock.close()  # closing again adds nothing
    assert stages.as_dict() == values
    with pytest.raises(ValueError, match="stage must be one of"):
        StageClock(torch.device("cpu"), stages).mark("preprocessing")


def test_stage_times_reject_unknown_stages():
    with pytest.raises(ValueError, match="stage must be one of"):
        StageTimes().add("fetching", 1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"tumor_threshold": 1.5}, "tumor_threshold must be a number in"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"device": "tpu"}, "device must be one of"),
    ({"classifier": ""}, "classifier must be an artifact URI"),
])
def test_score_settings_reject_bad_values(kwargs, message):
    values = {"classifier": "/models/c", **kwargs}
    with pytest.raises(ValueError, match=message):
        ScoreSettings(**values)


def test_score_frame_rejects_frames_without_object_columns(predictor):
    with pytest.raises(ValueError, match="objects lack columns"):
        score_frame(pd.DataFrame({"uri": ["file:///x.png"]}), predictor)


def test_every_archive_format_is_scored(scored):
    _, rows = scored
    ok = rows[rows["status"] == "ok"]
    formats = {key.rsplit(".", 1)[1] for key in ok["key"]}
    assert formats == set(synthetic.ARCHIVE_FORMATS)
