"""DICOM as scanners and PACS write it: the real files pydicom ships (pydicom.data), read in place, and a
NIfTI volume written here with nibabel."""
import io
import logging
import os

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from classeg import dicom, imaging, volumes
from classeg.decoded import ReadSettings
from classeg.errors import DECODE_ERROR_KINDS

TEST_DIR = os.path.dirname(get_testdata_file("MR_small.dcm"))
ALL_MODALITIES = ReadSettings(modalities=())
LOSSLESS_MR_SMALL = ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm",
                     "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm")
# Lossy colour variants of SC_rgb_rle.dcm (lossless RLE, the reference), with the mean absolute difference
# allowed per channel value, in grey levels of 255: JPEG baseline at dcmtk's and GDCM's default qualities and
# JPEG-LS near-lossless stay within it; the two "no colour transform" YBR encodings are the worst, near 2.8.
LOSSY_SC_RGB = ("SC_rgb_dcmtk_+eb+cy+n1.dcm", "SC_rgb_dcmtk_+eb+cy+n2.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm",
                "SC_rgb_dcmtk_+eb+cy+s2.dcm", "SC_rgb_dcmtk_+eb+cy+s4.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                "SC_rgb_jpeg_lossy_gdcm.dcm", "SC_rgb_jls_lossy_line.dcm", "SC_rgb_jls_lossy_sample.dcm")
LOSSY_TOLERANCE = 3.0


def _read(name, settings=ALL_MODALITIES):
    return imaging.decode_file(open(get_testdata_file(name), "rb").read(), name, settings)


def _outcome(path, settings):
    try:
        decoded = imaging.decode_file(open(path, "rb").read(), os.path.relpath(path, TEST_DIR), settings)
    except imaging.DecodeError as err:
        return "error", err.reason, str(err)
    if decoded.skipped:
        return "skipped", decoded.skipped, ""
    return "ok", len(decoded.images), ""


def test_every_bundled_file_is_accounted_for():
    paths = sorted(path for path in get_testdata_files() if os.path.isfile(path))
    assert len(paths) > 150
    outcomes = {os.path.relpath(path, TEST_DIR): _outcome(path, ALL_MODALITIES) for path in paths}
    for name, (status, detail, _) in outcomes.items():
        assert status in ("ok", "skipped", "error"), name
        if status == "error":
            assert detail in DECODE_ERROR_KINDS, (name, detail)
        if status == "skipped":
            assert detail.startswith("no pixel data ("), (name, detail)
    ok = [name for name, (status, _, _) in outcomes.items() if status == "ok"]
    assert {"MR_small.dcm", "CT_small.dcm", "JPGExtended.dcm", "JPEG2000.dcm", "examples_palette.dcm",
            "JPEGLSNearLossless_16.dcm", "image_dfl.dcm", *LOSSLESS_MR_SMALL} <= set(ok)
    assert outcomes["MR_truncated.dcm"][:2] == ("error", "truncated")
    assert outcomes["README.txt"][:2] == ("error", "unsupported")
    counts = {status: sum(1 for s, _, _ in outcomes.values() if s == status) for status in ("ok", "skipped", "error")}
    assert sum(counts.values()) == len(paths)
    assert counts["ok"] >= 85 and counts["skipped"] >= 60


@pytest.mark.parametrize("name", LOSSLESS_MR_SMALL)
def test_lossless_mr_small_variants_decode_to_the_same_pixels(name):
    reference = _read("MR_small.dcm").images[0]
    variant = _read(name).images[0]
    assert variant.pixels.dtype == np.uint8 and variant.pixels.shape == (64, 64)
    np.testing.assert_array_equal(variant.pixels, reference.pixels)
    assert variant.window == reference.window
    values = dicom.modality_frames(pydicom.dcmread(get_testdata_file(name)))
    np.testing.assert_array_equal(values[0], dicom.modality_frames(pydicom.dcmread(get_testdata_file("MR_small.dcm")))[0])


@pytest.mark.parametrize("name", LOSSY_SC_RGB)
def test_lossy_colour_variants_are_within_tolerance(name):
    reference = _read("SC_rgb_rle.dcm").images[0].pixels.astype(np.int32)
    lossy = _read(name).images[0].pixels.astype(np.int32)
    assert lossy.shape == reference.shape == (100, 100, 3)
    assert np.abs(lossy - reference).mean() <= LOSSY_TOLERANCE


def test_dual_personality_tiff_preamble_is_dicom():
    data = open(get_testdata_file("MR_small.dcm"), "rb").read()
    assert data[:4] in (b"II*\x00", b"MM\x00*")  # the preamble is a TIFF header
    assert imaging.sniff_format(data, "x.tif") == "dicom"


def test_window_center_width_is_applied_and_recorded():
    decoded = _read("MR_small.dcm")
    image = decoded.images[0]
    assert image.frame is None
    # Window Center 600, Width 1600, LINEAR: values <= 600 - 0.5 - 799.5 become 0, above 600 - 0.5 + 799.5 255.
    assert (image.window.source, image.window.low, image.window.high) == ("window", -200.0, 1399.0)
    values = dicom.modality_frames(pydicom.dcmread(get_testdata_file("MR_small.dcm")))[0]
    expected = np.clip(np.rint((values + 200.0) / 1599.0 * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(image.pixels, expected)


def test_percentile_window_without_window_tags():
    image = _read("CT_small.dcm").images[0]
    values = dicom.modality_frames(pydicom.dcmread(get_testdata_file("CT_small.dcm")))[0]
    low, high = np.percentile(values, dicom.PERCENTILES)
    assert image.window.source == "percentile"
    assert (image.window.low, image.window.high) == pytest.approx((low, high))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert float(ds.RescaleIntercept) == -1024.0  # applied: modality values are stored values - 1024
    np.testing.assert_array_equal(values, ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) - 1024.0)
    assert image.pixels.min() == 0 and image.pixels.max() == 255


def test_monochrome1_is_inverted():
    path = os.path.join(TEST_DIR, "dicomdirtests", "77654033", "CR1", "6154")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    inverted = imaging.decode_file(open(path, "rb").read(), "cr", ALL_MODALITIES).images[0].pixels
    ds.PhotometricInterpretation = "MONOCHROME2"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    plain = imaging.decode_file(buffer.getvalue(), "cr2", ALL_MODALITIES).images[0].pixels
    np.testing.assert_array_equal(inverted, 255 - plain)


def test_multi_frame_ybr_gives_30_rgb_frames():
    decoded = _read("examples_ybr_color.dcm")
    assert [image.frame for image in decoded.images] == list(range(30))
    assert all(image.pixels.shape == (240, 320, 3) and image.pixels.dtype == np.uint8 for image in decoded.images)
    reference = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm")).pixel_array  # RGB, pydicom's default
    np.testing.assert_array_equal(decoded.images[29].pixels, reference[29])


def test_palette_colour_is_looked_up():
    image = _read("examples_palette.dcm").images[0]
    assert image.pixels.shape == (350, 800, 3) and image.window.source == "stored_range"
    assert len(np.unique(image.pixels.reshape(-1, 3), axis=0)) > 2


@pytest.mark.parametrize("name, reason", [
    ("reportsi.dcm", "no pixel data (Basic Text SR)"), ("test-SR.dcm", "no pixel data (Comprehensive SR)"),
    ("rtplan.dcm", "no pixel data (RT Plan)"), ("waveform_ecg.dcm", "no pixel data (12-lead ECG Waveform)"),
    ("rtstruct.dcm", "no pixel data (RT Structure Set)"),
    ("CT_small.dcm", "modality CT not in score.modalities"), ("rtdose.dcm", "modality RTDOSE not in score.modalities"),
    ("examples_ybr_color.dcm", "modality US not in score.modalities"),
])
def test_non_images_and_other_modalities_are_skipped(name, reason):
    decoded = _read(name, ReadSettings())
    assert decoded.skipped == reason and decoded.images == ()


def test_identity_columns():
    decoded = _read("MR_small.dcm", ReadSettings(patient_key_secret=b"s3cret"))
    identity = decoded.identity
    assert set(identity) == set(dicom.IDENTITY_COLUMNS)
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert identity["study_uid"] == ds.StudyInstanceUID and identity["sop_uid"] == ds.SOPInstanceUID
    assert identity["series_uid"] == ds.SeriesInstanceUID and identity["modality"] == "MR"
    assert identity["pixel_spacing_mm"] == [0.3125, 0.3125] and identity["slice_thickness_mm"] == 0.8
    assert identity["patient_key"] == dicom.patient_key("4MR1", b"s3cret")
    assert len(identity["patient_key"]) == 64 and identity["patient_key"] != dicom.patient_key("4MR1", b"other")
    assert _read("MR_small.dcm").identity["patient_key"] is None  # no secret, no key


def test_truncated_pixel_data_is_an_error_of_kind_truncated():
    with pytest.raises(imaging.DecodeError) as err:
        _read("MR_truncated.dcm")
    assert err.value.reason == "truncated"


def test_file_cut_before_its_pixel_data_is_truncated_not_skipped():
    data = open(get_testdata_file("MR_small.dcm"), "rb").read()
    with pytest.raises(imaging.DecodeError) as err:
        imaging.decode_file(data[:1000], "cut.dcm")
    assert err.value.reason == "truncated" and "ends inside element" in str(err.value)


def test_file_without_preamble_or_meta_is_read():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(buffer, ds)  # no preamble, no DICM, no file meta: a bare dataset
    data = buffer.getvalue()
    assert data[128:132] != b"DICM"
    decoded = imaging.decode_file(data, "bare.dcm")
    np.testing.assert_array_equal(decoded.images[0].pixels, _read("MR_small.dcm").images[0].pixels)


PHI = {"PatientName": "Doe^Janet^Q", "PatientID": "MRN-00424242", "PatientBirthDate": "19610704"}


def _phi_file(truncate=False):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    del ds[0xFFFCFFFC]  # the trailing padding, so that cutting the end cuts pixel data
    buffer = io.BytesIO()
    ds.save_as(buffer)
    data = buffer.getvalue()
    return data[:-100] if truncate else data


def test_phi_never_appears_in_outputs_errors_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    decoded = imaging.decode_file(_phi_file(), "phi.dcm", ReadSettings(patient_key_secret=b"k"))
    with pytest.raises(imaging.DecodeError) as err:
        imaging.decode_file(_phi_file(truncate=True), "phi_truncated.dcm", ReadSettings(patient_key_secret=b"k"))
    assert err.value.reason == "truncated"
    texts = [repr(decoded.identity), repr(decoded), str(err.value), caplog.text,
             repr(ReadSettings(patient_key_secret=b"k"))]
    for value in PHI.values():
        for text in texts:
            assert value not in text and value.replace("^", " ") not in text
    assert decoded.identity["patient_key"] == dicom.patient_key(PHI["PatientID"], b"k")


def test_patient_key_secret_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.delenv(dicom.PATIENT_KEY_ENV, raising=False)
    assert dicom.load_patient_key_secret(None) is None
    monkeypatch.setenv(dicom.PATIENT_KEY_ENV, "from-env")
    assert dicom.load_patient_key_secret(None) == b"from-env"
    secret_file = tmp_path / "key.txt"
    secret_file.write_text("from-file\n")
    assert dicom.load_patient_key_secret(str(secret_file)) == b"from-file"
    secret_file.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        dicom.load_patient_key_secret(str(secret_file))


def test_nifti_volume_gives_one_image_per_axial_slice(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 10, size=(12, 10, 5)).astype(np.float32)  # (x, y, z) in RAS voxel order
    volume[3, 7, 2] = 1000  # one bright voxel: right-left index 3, anterior-posterior index 7, slice 2
    affine = np.diag([0.5, 0.75, 3.0, 1.0])
    for compress, name in ((False, "v.nii"), (True, "v.nii.gz")):
        data = volumes.nifti_bytes(volume, affine, compress=compress)
        assert imaging.sniff_format(data, "") == "nifti"
        decoded = imaging.decode_file(data, name)
        assert [image.frame for image in decoded.images] == [0, 1, 2, 3, 4]
        assert all(image.pixels.shape == (10, 12) and image.pixels.dtype == np.uint8 for image in decoded.images)
        assert decoded.identity["pixel_spacing_mm"] == [0.75, 0.5] and decoded.identity["slice_thickness_mm"] == 3.0
        # Radiological display: row = 9 - y (anterior at the top), column = 11 - x (patient right on the left).
        assert decoded.images[2].pixels[9 - 7, 11 - 3] == 255
        assert decoded.images[2].window.source == "percentile"


def test_nifti_truncated_is_an_error():
    data = volumes.nifti_bytes(np.ones((8, 8, 4), np.float32))
    with pytest.raises(imaging.DecodeError) as err:
        imaging.decode_file(data[:-64], "cut.nii")
    assert err.value.reason == "truncated"


def test_read_settings_rejects_a_bare_string():
    with pytest.raises(ValueError, match="modalities"):
        ReadSettings(modalities="MR")
