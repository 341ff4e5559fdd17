"""The ingest job on a folder-per-class dataset of DICOM files, NIfTI volumes and a PNG (issue 15), on local
Spark, both ways of reading the files. The DICOM files are pydicom's own bundled test files (copied into the
test's folder); pydicom ships no multi-frame MR, so the test writes one from MR_small.dcm with pydicom. The
expected pixels come from :func:`classeg.imaging.decode_file` on the same bytes, the slice counts and sizes from
the volumes the test wrote."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest

from classeg import imaging, volumes
from classeg.config import load_config
from classeg.ingest.job import run_ingest
from classeg.ingest.table import SCAN_COLUMNS, read_errors, read_scan_table

SIZE = 64  # MR_small's own size: its scans are stored unresized, so the pixels compare exactly
VOLUME = (20, 24, 5)  # NIfTI voxels (x, y, z): 5 axial slices of 24 rows (y) by 20 columns (x)
SMALL_VOLUME = (8, 10, 2)


def _testdata(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    with open(get_testdata_file(name), "rb") as handle:
        return handle.read()


def _multiframe_mr() -> bytes:
    """MR_small.dcm as a 3-frame MR (the frame, half of it, upside down), written by pydicom."""
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(_testdata("MR_small.dcm")))
    pixels = dataset.pixel_array
    dataset.NumberOfFrames = 3
    dataset.PixelData = np.stack([pixels, pixels // 2, pixels[::-1]]).astype(pixels.dtype).tobytes()
    out = io.BytesIO()
    dataset.save_as(out)
    return out.getvalue()


def _dataset(root) -> dict[str, bytes]:
    rng = np.random.default_rng(15)
    files = {
        "glioma/MR_small.dcm": _testdata("MR_small.dcm"),
        "glioma/MR_3frames.dicom": _multiframe_mr(),
        "glioma/CT_small.dcm": _testdata("CT_small.dcm"),  # a CT: not ingested (modality MR only)
        "glioma/small.nii": volumes.nifti_bytes(rng.normal(100, 20, SMALL_VOLUME).astype(np.float32)),
        "notumor/brain.nii.gz": volumes.nifti_bytes(rng.integers(0, 900, VOLUME).astype(np.int16), compress=True),
        "notumor/slice.png": imaging.encode_png(rng.integers(0, 256, (40, 40), dtype=np.uint8)),
        "notumor/rtplan.dcm": _testdata("rtplan.dcm"),  # no pixel data
    }
    for relpath, data in files.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(data)
    return files


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, spark):
    """{read mode: (summary, scan rows, errors rows)} for the same dataset, plus the files written."""
    root = tmp_path_factory.mktemp("volumes")
    files = _dataset(root / "data")
    runs = {}
    for mode in ("tasks", "binaryfile"):
        out = root / mode
        cfg = load_config(overrides=["ingest.dataset=folders", f"ingest.input={root / 'data'}",
                                     f"ingest.output={out}", f"ingest.image_size={SIZE}", f"ingest.read={mode}",
                                     "spark.master=local[2]"])
        summary = run_ingest(spark, cfg)
        frame, _ = read_scan_table(spark, str(out))
        rows = frame.toPandas()
        rows["relpath"] = rows["source_uri"].str.split("/data/", n=1).str[1]
        runs[mode] = (summary, rows, read_errors(spark, str(out)).toPandas(), out)
    yield runs, files
    shutil.rmtree(root, ignore_errors=True)


MODES = ("tasks", "binaryfile")


@pytest.mark.parametrize("mode", MODES)
def test_every_file_is_scans_or_an_errors_row(ingested, mode):
    (summary, rows, errors, _), files = ingested[0][mode], ingested[1]
    slices = {"glioma/MR_small.dcm": 1, "glioma/MR_3frames.dicom": 3, "glioma/small.nii": SMALL_VOLUME[2],
              "notumor/brain.nii.gz": VOLUME[2], "notumor/slice.png": 1}
    assert rows.groupby("relpath").size().to_dict() == slices
    assert summary["scans"] == len(rows) == sum(slices.values())
    assert summary["files"] == {"listed": len(files), "scans": len(rows), "scan_files": len(slices), "masks": 0,
                                "errors": 0, "skipped": 2}
    by_file = {relpath: (severity, reason) for relpath, severity, reason in
               zip(errors.relpath, errors.severity, errors.reason)}
    assert by_file == {"notumor/rtplan.dcm": ("skipped", "no pixel data (RT Plan)"),
                       "glioma/CT_small.dcm": ("skipped", "modality CT not in score.modalities")}
    assert set(slices) | set(by_file) == set(files) and len(slices) + len(errors) == len(files)
    assert summary["error_rate"] == 0.0 and summary["skipped_by_reason"] == {
        "no pixel data (RT Plan)": 1, "modality CT not in score.modalities": 1}


@pytest.mark.parametrize("mode", MODES)
def test_one_scan_per_slice_with_its_own_key_and_index(ingested, mode):
    summary, rows, _, _ = ingested[0][mode]
    assert list(rows.columns[:-1]) == SCAN_COLUMNS  # the scan table's schema, unchanged
    assert rows.scan_id.is_unique
    volume = rows[rows.relpath == "notumor/brain.nii.gz"].sort_values("slice_index")
    assert volume.slice_index.tolist() == list(range(VOLUME[2]))
    # RAS axial slices: rows run along y, columns along x (classeg.volumes' convention)
    assert set(zip(volume.orig_height, volume.orig_width)) == {(VOLUME[1], VOLUME[0])}
    assert set(volume.label_name) == {"notumor"} and set(volume.has_tumor) == {False}
    assert volume.split.nunique() == 1  # one volume is never in two splits
    frames = rows[rows.relpath == "glioma/MR_3frames.dicom"]
    assert sorted(frames.slice_index) == [0, 1, 2] and frames.split.nunique() == 1
    assert set(frames.label_name) == {"glioma"} and set(frames.has_tumor) == {True}
    two_d = rows[rows.relpath.isin(["glioma/MR_small.dcm", "notumor/slice.png"])]
    assert two_d.slice_index.isna().all() and len(two_d) == 2
    assert summary["class_names"] == ["glioma", "notumor"]


@pytest.mark.parametrize("mode", MODES)
def test_stored_pixels_are_decode_file_pixels(ingested, mode):
    (_, rows, _, _), files = ingested[0][mode], ingested[1]
    for row in rows.itertuples():
        decoded = imaging.decode_file(files[row.relpath], row.relpath)
        frame = 0 if pd.isna(row.slice_index) else int(row.slice_index)
        expected = decoded.images[frame].pixels
        assert decoded.images[frame].frame == (None if pd.isna(row.slice_index) else frame)
        if row.relpath.endswith((".dcm", ".dicom")):
            assert expected.shape == (SIZE, SIZE)  # stored as decoded, no resampling in between
        np.testing.assert_array_equal(imaging.decode_png(row.image), imaging.canonical(expected, SIZE))
        assert row.mask is None


def test_both_read_modes_write_the_same_table(ingested):
    tables = [ingested[0][mode][1].sort_values("scan_id").reset_index(drop=True) for mode in MODES]
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_no_patient_identifier_reaches_the_output(ingested):
    import pydicom

    header = pydicom.dcmread(io.BytesIO(_testdata("MR_small.dcm")), stop_before_pixels=True)
    identifiers = [str(header.PatientName).encode(), str(header.PatientID).encode()]
    assert all(len(value) >= 4 for value in identifiers)
    for mode in MODES:
        out = ingested[0][mode][3]
        written = [path for path in out.rglob("*") if path.is_file()]
        assert written
        for path in written:
            content = path.read_bytes()
            assert not [value for value in identifiers if value in content], path
