"""The scoring job on DICOM as scanners and PACS write it: every file pydicom ships in its wheel
(pydicom.data, copied into a local archive by the test), a NIfTI volume written with nibabel, and a DICOM
carrying patient identifiers. Local Spark (local[2]); fixture models from tests/scoring_models.py."""
from __future__ import annotations

import io
import json
import logging
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from classeg import dicom, imaging, volumes
from classeg.config import load_config
from classeg.decoded import ReadSettings
from classeg.scoring import read_scores, run_score
from classeg.scoring.series import SERIES_COLUMNS, read_series, series_frame
from classeg.scoring.table import SCORE_COLUMNS, SCORES_SCHEMA_DDL
from scoring_models import trained_models

TEST_DIR = os.path.dirname(get_testdata_file("MR_small.dcm"))
PHI = {"PatientName": "Doe^Janet^Q", "PatientID": "MRN-00424242", "PatientBirthDate": "19610704"}
SECRET = "test-secret-not-for-production"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trained_models(tmp_path_factory)


def _phi_dicom() -> bytes:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """pydicom's bundled files under pydicom/ (as shipped), a NIfTI volume and a DICOM with identifiers."""
    root = tmp_path_factory.mktemp("dicom-archive") / "archive"
    bundled = sorted(path for path in get_testdata_files() if os.path.isfile(path))
    for path in bundled:
        target = root / "pydicom" / os.path.relpath(path, TEST_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    volume = np.zeros((20, 16, 6), np.float32)
    volume[4:12, 3:9, 1:5] = 100.0  # a bright block on slices 1-4
    (root / "volumes").mkdir()
    (root / "volumes" / "block.nii.gz").write_bytes(volumes.nifti_bytes(volume, np.diag([0.8, 0.8, 2.5, 1.0]),
                                                                       compress=True))
    (root / "phi").mkdir()
    (root / "phi" / "patient.dcm").write_bytes(_phi_dicom())
    keys = {f"pydicom/{os.path.relpath(path, TEST_DIR)}" for path in bundled}
    return {"root": root, "keys": keys | {"volumes/block.nii.gz", "phi/patient.dcm"}, "bundled": len(bundled)}


def _config(archive, output, models, **values):
    settings = {"score.archive": str(archive["root"]), "score.output": str(output),
                "score.classifier": models["classifier"], "score.segmenter": models["segmenter"],
                "score.max_error_rate": 0.5, "score.batch_size": 16, "score.fetch_threads": 4}
    settings.update({f"score.{key}": value for key, value in values.items()})
    return load_config(values=settings)


@pytest.fixture(scope="module")
def mr_run(spark, archive, models, tmp_path_factory):
    """The default settings (score.modalities [MR]) with a patient key secret from the environment."""
    output = tmp_path_factory.mktemp("dicom-scores") / "scores"
    previous = os.environ.get(dicom.PATIENT_KEY_ENV)
    os.environ[dicom.PATIENT_KEY_ENV] = SECRET
    try:
        summary = run_score(spark, _config(archive, output, models))
    finally:
        if previous is None:
            os.environ.pop(dicom.PATIENT_KEY_ENV)
        else:
            os.environ[dicom.PATIENT_KEY_ENV] = previous
    rows = read_scores(spark, str(output)).toPandas()
    return {"output": output, "summary": summary, "rows": rows}


def _by_key(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {key: group.sort_values("frame", na_position="first") for key, group in rows.groupby("key")}


def test_every_file_is_accounted_for_once(mr_run, archive):
    rows, summary = mr_run["rows"], mr_run["summary"]
    assert set(rows["key"]) == archive["keys"]
    assert set(rows["status"]) <= {"ok", "error", "skipped"}
    per_object = rows.groupby("key")["status"].agg(lambda s: tuple(sorted(set(s))))
    assert per_object.isin([("ok",), ("error",), ("skipped",)]).all()
    not_ok = rows[rows["status"] != "ok"]
    assert not not_ok["key"].duplicated().any()  # one error or skipped row per object
    assert summary["listed"] == summary["scored"] == len(archive["keys"])
    assert summary["ok"] + summary["errors"] + summary["skipped"] == summary["scored"]
    assert summary["rows"] == len(rows) and summary["ok_rows"] == int((rows["status"] == "ok").sum())
    assert sum(summary["skipped_by_reason"].values()) <= summary["skipped"]


def test_mr_small_variants_score_the_same(mr_run):
    groups = _by_key(mr_run["rows"])
    reference = groups["pydicom/MR_small.dcm"].iloc[0]
    assert reference["status"] == "ok" and pd.isna(reference["frame"])
    assert (reference["window_source"], reference["window_low"], reference["window_high"]) == ("window", -200.0,
                                                                                                1399.0)
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm",
                 "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"):
        row = groups[f"pydicom/{name}"].iloc[0]
        assert row["status"] == "ok", (name, row["error"])
        assert row["tumor_probability"] == pytest.approx(reference["tumor_probability"], abs=1e-6), name
        assert (row["height"], row["width"]) == (64, 64)


def test_errors_and_skips_have_their_reasons(mr_run):
    groups = _by_key(mr_run["rows"])
    truncated = groups["pydicom/MR_truncated.dcm"].iloc[0]
    assert truncated["status"] == "error" and truncated["error"].startswith("truncated: ")
    readme = groups["pydicom/README.txt"].iloc[0] if "pydicom/README.txt" in groups else None
    if readme is not None:
        assert readme["status"] == "error" and readme["error"].startswith("unsupported: ")
    expected = {"pydicom/reportsi.dcm": "no pixel data (Basic Text SR)", "pydicom/rtplan.dcm": "no pixel data (RT Plan)",
                "pydicom/waveform_ecg.dcm": "no pixel data (12-lead ECG Waveform)",
                "pydicom/CT_small.dcm": "modality CT not in score.modalities",
                "pydicom/examples_ybr_color.dcm": "modality US not in score.modalities"}
    for key, reason in expected.items():
        row = groups[key].iloc[0]
        assert (row["status"], row["error"]) == ("skipped", reason), key
        assert row["tumor_probability"] is None or pd.isna(row["tumor_probability"])
    assert mr_run["summary"]["skipped_by_reason"]["modality CT not in score.modalities"] >= 1


def test_identity_columns_and_patient_key(mr_run):
    groups = _by_key(mr_run["rows"])
    row = groups["pydicom/MR_small.dcm"].iloc[0]
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert (row["study_uid"], row["series_uid"], row["sop_uid"]) == (ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                                     ds.SOPInstanceUID)
    assert row["modality"] == "MR" and list(row["pixel_spacing_mm"]) == [0.3125, 0.3125]
    assert row["slice_thickness_mm"] == 0.8
    assert row["patient_key"] == dicom.patient_key(str(ds.PatientID), SECRET.encode())
    phi_row = groups["phi/patient.dcm"].iloc[0]
    assert phi_row["patient_key"] == dicom.patient_key(PHI["PatientID"], SECRET.encode())


def test_nifti_volume_gives_one_row_per_slice(mr_run):
    volume = _by_key(mr_run["rows"])["volumes/block.nii.gz"]
    assert list(volume["frame"]) == list(range(6)) and set(volume["status"]) == {"ok"}
    assert set(volume["window_source"]) == {"percentile"}
    assert set(zip(volume["height"], volume["width"])) == {(16, 20)}
    assert all(list(spacing) == pytest.approx([0.8, 0.8]) for spacing in volume["pixel_spacing_mm"])
    assert volume["slice_thickness_mm"].tolist() == pytest.approx([2.5] * 6)


def test_all_modalities_multi_frame_gives_one_row_per_frame(spark, archive, models, tmp_path):
    output = tmp_path / "scores"
    summary = run_score(spark, _config(archive, output, models, modalities=[]))
    rows = read_scores(spark, str(output)).toPandas()
    ybr = rows[rows["key"] == "pydicom/examples_ybr_color.dcm"].sort_values("frame")
    assert list(ybr["frame"]) == list(range(30)) and set(ybr["status"]) == {"ok"}
    assert set(ybr["modality"]) == {"US"}
    ct = rows[rows["key"] == "pydicom/CT_small.dcm"]
    assert list(ct["status"]) == ["ok"] and ct.iloc[0]["window_source"] == "percentile"
    assert summary["scored"] == len(archive["keys"]) and set(rows["key"]) == archive["keys"]
    skipped = rows[rows["status"] == "skipped"]
    assert skipped["error"].str.startswith("no pixel data (").all()
    assert (read_series(str(output))["run_id"] == summary["run_id"]).all()


def test_series_table_is_written_for_the_run(mr_run):
    series = read_series(str(mr_run["output"]))
    assert list(series.columns) == [*SERIES_COLUMNS, "run_id"]
    ok = mr_run["rows"][mr_run["rows"]["status"] == "ok"]
    assert series["slices_scored"].sum() == len(ok)
    volume = series[series["series_key"].str.endswith("volumes/block.nii.gz")]
    assert len(volume) == 1 and volume.iloc[0]["slices_scored"] == 6 and volume.iloc[0]["objects"] == 1
    assert (series["max_tumor_probability"] >= series["mean_tumor_probability"] - 1e-9).all()


def test_series_volume_from_known_areas_and_spacing(spark):
    base = {"source_uri": "file:/a/1.dcm", "key": "1.dcm", "etag": "e", "size": 1, "version": "v", "status": "ok",
            "series_uid": "1.2.3", "study_uid": "1.2", "modality": "MR", "pixel_spacing_mm": [0.5, 0.8],
            "slice_thickness_mm": 3.0, "tumor_probability": 0.2, "tumor": False}
    rows = [
        {**base, "source_uri": "file:/a/1.dcm", "instance_number": 1},
        {**base, "source_uri": "file:/a/2.dcm", "instance_number": 2, "tumor": True, "tumor_probability": 0.9,
         "mask_area_px": 100},
        {**base, "source_uri": "file:/a/3.dcm", "instance_number": 3, "tumor": True, "tumor_probability": 0.7,
         "mask_area_px": 40},
        {**base, "source_uri": "file:/a/4.dcm", "instance_number": 4, "status": "error", "tumor": None,
         "tumor_probability": None},
        {**base, "source_uri": "file:/b/vol.nii", "series_uid": None, "frame": 0, "tumor": True, "mask_area_px": 10,
         "tumor_probability": 0.6, "pixel_spacing_mm": None},
        {**base, "source_uri": "file:/b/vol.nii", "series_uid": None, "frame": 1, "tumor": False},
    ]
    frame = spark.createDataFrame([{name: row.get(name) for name in SCORE_COLUMNS} for row in rows], SCORES_SCHEMA_DDL)
    series = {row["series_key"]: row for row in (r.asDict() for r in series_frame(frame).collect())}
    dicom_series = series["1.2.3"]
    assert (dicom_series["objects"], dicom_series["slices_scored"], dicom_series["tumor_slices"]) == (3, 3, 2)
    assert (dicom_series["tumor_first_slice"], dicom_series["tumor_last_slice"]) == (2, 3)
    assert dicom_series["tumor_volume_mm3"] == pytest.approx((100 + 40) * 0.5 * 0.8 * 3.0)
    assert dicom_series["max_tumor_probability"] == pytest.approx(0.9)
    assert dicom_series["mean_tumor_probability"] == pytest.approx((0.2 + 0.9 + 0.7) / 3)
    volume = series["file:/b/vol.nii"]
    assert volume["series_uid"] is None and volume["slices_scored"] == 2 and volume["tumor_volume_mm3"] is None
    assert (volume["tumor_first_slice"], volume["tumor_last_slice"]) == (0, 0)


def test_patient_identifiers_appear_in_no_output_or_log(spark, archive, models, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    output = tmp_path / "scores"
    run_score(spark, _config(archive, output, models, patient_key_secret=str(_secret_file(tmp_path))))
    texts = [caplog.text, *capfd.readouterr()]
    for path in output.rglob("*"):
        if path.is_file() and path.suffix == ".parquet":
            texts.append(pq.read_table(path).to_pandas().to_string())
            texts.append(path.read_bytes().decode("latin-1"))
        elif path.is_file() and not path.name.endswith(".crc"):
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
    assert len(texts) > 5
    for value in PHI.values():
        for variant in (value, value.replace("^", " ")):
            assert not any(variant in text for text in texts), variant
    rows = read_scores(spark, str(output)).toPandas()
    assert rows.loc[rows["key"] == "phi/patient.dcm", "patient_key"].iloc[0] == dicom.patient_key(
        PHI["PatientID"], b"from-a-file")


def _secret_file(tmp_path):
    path = tmp_path / "patient-key.txt"
    path.write_text("from-a-file\n")
    return path


def test_decoded_pixels_match_what_the_job_scored(mr_run):
    """The job's heights/widths and windows are the decoder's (no second decoding path in the tasks)."""
    groups = _by_key(mr_run["rows"])
    for key in ("pydicom/JPEG2000.dcm", "pydicom/JPGExtended.dcm"):
        data = open(get_testdata_file(key.split("/", 1)[1]), "rb").read()
        decoded = imaging.decode_file(data, key, ReadSettings(modalities=()))
        row = groups[key].iloc[0]
        if row["status"] == "skipped":  # another modality than MR
            assert row["error"] == f"modality {decoded.identity['modality']} not in score.modalities"
            continue
        image = decoded.images[0]
        assert (row["height"], row["width"]) == image.pixels.shape[:2]
        assert row["window_source"] == image.window.source
    assert json.loads((mr_run["output"] / "_runs" / f"{mr_run['summary']['run_id']}.json").read_text())
