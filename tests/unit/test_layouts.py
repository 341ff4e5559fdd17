"""Path rules of each dataset layout (pure: no files, no Spark)."""
import pandas as pd
import pytest

from classeg.datasets import figshare, folders, lgg
from classeg.ingest.listing import glob_escape, parse_listing, plan_files, relative_path, spark_path


@pytest.mark.parametrize("relpath, kind, key, patient, index", [
    ("kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_12.tif", "image", "TCGA_CS_4941_19960909/12",
     "TCGA_CS_4941", 12),
    ("kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_2_mask.tif", "mask", "TCGA_CS_4941_19960909/2",
     "TCGA_CS_4941", 2),
    ("lgg-mri-segmentation/kaggle_3m/TCGA_HT_A61A_20000127/TCGA_HT_A61A_20000127_1.tif", "image",
     "TCGA_HT_A61A_20000127/1", "TCGA_HT_A61A", 1),
    ("kaggle_3m/data.csv", "meta", None, None, None),
    ("kaggle_3m/TCGA_CS_4941_19960909/scan.tif", "error", None, None, None),
    ("kaggle_3m/notes.txt", "error", None, None, None),
])
def test_lgg_paths(relpath, kind, key, patient, index):
    parsed = lgg.parse_path(relpath)
    assert (parsed["kind"], parsed["key"], parsed["patient_id"], parsed["slice_index"]) == (kind, key, patient, index)


def test_lgg_patient_of_rejects_other_names():
    with pytest.raises(ValueError, match="not an LGG patient folder name: 'patient7'"):
        lgg.patient_of("patient7")


@pytest.mark.parametrize("relpath, kind, key", [
    ("1.mat", "image", "1"), ("brainTumorDataPublic_1-766/766.mat", "image", "766"),
    ("cvind.mat", "folds", None), ("README.txt", "meta", None), ("x.mat", "error", None),
])
def test_figshare_paths(relpath, kind, key):
    parsed = figshare.parse_path(relpath)
    assert (parsed["kind"], parsed["key"]) == (kind, key)


@pytest.mark.parametrize("relpath, kind, label, sequence, hint", [
    ("Astrocitoma T1C+/a.jpeg", "image", "Astrocitoma T1C+", "T1C+", None),
    ("_NORMAL T2/b.png", "image", "_NORMAL T2", "T2", None),
    ("Training/glioma/c.jpg", "image", "glioma", None, "train"),
    ("Testing/notumor/d.webp", "image", "notumor", None, "test"),
    ("e.jpg", "error", None, None, None),
    ("glioma/readme.pdf", "error", None, None, None),
])
def test_folder_paths(relpath, kind, label, sequence, hint):
    parsed = folders.parse_path(relpath)
    assert (parsed["kind"], parsed["label_name"], parsed["sequence"], parsed["split_hint"]) == (
        kind, label, sequence, hint)


@pytest.mark.parametrize("relpath, kind, key, label, reason", [
    ("glioma/IM0001.dcm", "image", "glioma/IM0001.dcm", "glioma", None),
    ("Training/notumor/IM-0001-0007.DCM", "image", "Training/notumor/IM-0001-0007.DCM", "notumor", None),
    ("Meningioma T2/enhanced.dicom", "image", "Meningioma T2/enhanced.dicom", "Meningioma T2", None),
    ("glioma/BraTS20_001_flair.nii", "image", "glioma/BraTS20_001_flair.nii", "glioma", None),
    ("glioma/sub-01_T1w.NII.GZ", "image", "glioma/sub-01_T1w.NII.GZ", "glioma", None),
    ("glioma/IM0001", "error", None, None, "not_a_scan"),  # DICOM without an extension is not sought out
    ("glioma/sub-01_T1w.nii.bz2", "error", None, None, "not_a_scan"),
    ("glioma/archive.gz", "error", None, None, "not_a_scan"),
    ("IM0001.dcm", "error", None, None, "no_class_folder"),
    ("volume.nii.gz", "error", None, None, "no_class_folder"),
])
def test_folder_paths_of_dicom_and_nifti_files(relpath, kind, key, label, reason):
    parsed = folders.parse_path(relpath)
    assert (parsed["kind"], parsed["key"], parsed["label_name"], parsed["reason"]) == (kind, key, label, reason)
    assert parsed["slice_index"] is None  # known only once the file is decoded


def _mr_small() -> bytes:
    from pydicom.data import get_testdata_file

    with open(get_testdata_file("MR_small.dcm"), "rb") as handle:
        return handle.read()


def test_folders_decode_gives_one_dict_per_slice_of_a_volume():
    import numpy as np

    from classeg import imaging, volumes

    volume = np.arange(6 * 5 * 3, dtype=np.int16).reshape(6, 5, 3)
    decoded = folders.decode("glioma/v.nii.gz", volumes.nifti_bytes(volume, compress=True), image_size=8)
    assert [(d["key"], d["slice_index"], d["orig_height"], d["orig_width"]) for d in decoded] == [
        ("glioma/v.nii.gz#0", 0, 5, 6), ("glioma/v.nii.gz#1", 1, 5, 6), ("glioma/v.nii.gz#2", 2, 5, 6)]
    assert all(imaging.decode_png(d["image"]).shape == (8, 8) for d in decoded)
    single = folders.decode("glioma/MR_small.dcm", _mr_small(), image_size=64)
    assert isinstance(single, dict) and "key" not in single
    assert (single["orig_height"], single["orig_width"]) == (64, 64)
    expected = imaging.decode_file(_mr_small(), "MR_small.dcm").images[0].pixels
    np.testing.assert_array_equal(imaging.decode_png(single["image"]), expected)


def test_folders_decode_skips_dicom_without_images_and_rejects_bad_bytes():
    from pydicom.data import get_testdata_file

    from classeg.datasets.common import SKIPPED
    from classeg.imaging import DecodeError

    with open(get_testdata_file("rtplan.dcm"), "rb") as handle:
        skipped = folders.decode("glioma/rtplan.dcm", handle.read(), image_size=8)
    assert skipped == {SKIPPED: "no pixel data (RT Plan)"}
    with pytest.raises(DecodeError) as caught:
        folders.decode("glioma/half.dcm", _mr_small()[:5000], image_size=8)  # cut inside the pixel data
    assert caught.value.reason == "truncated"


def test_relative_path_and_bad_root():
    assert relative_path("file:/data/x/a b+c.tif", "file:/data/x/") == "a b+c.tif"
    with pytest.raises(ValueError, match="is not under the dataset root"):
        relative_path("file:/other/a.tif", "file:/data/x")


def test_plan_keeps_shortest_copy_and_accounts_for_every_file():
    root = "file:/d"
    names = ["kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1.tif",
             "kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1_mask.tif",
             "lgg-mri-segmentation/kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1.tif",
             "lgg-mri-segmentation/kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1_mask.tif",
             "kaggle_3m/data.csv", ".DS_Store", "kaggle_3m/junk.bin"]
    parsed = parse_listing(pd.DataFrame({"path": [f"{root}/{n}" for n in names]}), dataset="lgg", root=root)
    to_decode, issues = plan_files(parsed)
    assert sorted(to_decode.relpath) == sorted(names[:2])
    assert dict(zip(issues.relpath, issues.reason)) == {
        names[2]: "duplicate", names[3]: "duplicate", "kaggle_3m/data.csv": "metadata", ".DS_Store": "metadata",
        "kaggle_3m/junk.bin": "not_a_scan"}
    assert len(to_decode) + len(issues) == len(names)


@pytest.mark.parametrize("uri, expected", [
    ("file:///tmp/Astro%20T1C+/a%20b+c%25.jpg", "file:/tmp/Astro T1C+/a b+c%.jpg"),
    ("s3://bucket/raw/_NORMAL%20T1/x.jpeg", "s3://bucket/raw/_NORMAL T1/x.jpeg"),
    ("hdfs://nn:8020/data/a.tif", "hdfs://nn:8020/data/a.tif"),
])
def test_spark_path_matches_binaryfile_form(uri, expected):
    assert spark_path(uri) == expected


def test_glob_escape():
    assert glob_escape("file:/d/scan[1]{a}*?.tif") == "file:/d/scan\\[1\\]\\{a\\}\\*\\?.tif"


def _decoded_folders(classes, per_class=2):
    """META_FIELDS rows as the decode tasks return them for a folder-per-class set (every image decoded)."""
    from classeg.ingest.fields import META_FIELDS, names

    rows = [{**{name: None for name in names(META_FIELDS)}, "path": f"file:/d/{c}/{i}.png",
             "relpath": f"{c}/{i}.png", "kind": "image", "key": f"{c}/{i}.png", "label_name": c,
             "orig_height": 40, "orig_width": 40} for c in classes for i in range(per_class)]
    return pd.DataFrame(rows, columns=names(META_FIELDS))


@pytest.mark.parametrize("classes, tumor", [
    (["no_tumour", "tumour"], {"no_tumour": False, "tumour": True}),
    (["negative", "positive"], {"negative": False, "positive": True}),
    (["yes", "no"], {"yes": True, "no": False}),
    (["control", "glioma"], {"control": False, "glioma": True}),
    (["glioma", "meningioma", "notumor", "pituitary"],
     {"glioma": True, "meningioma": True, "notumor": False, "pituitary": True}),
    (["Astrocitoma T1C+", "Meningioma T2", "_NORMAL T1"],
     {"Astrocitoma T1C+": True, "Meningioma T2": True, "_NORMAL T1": False}),
    (["glioma", "meningioma", "pituitary"], {"glioma": True, "meningioma": True, "pituitary": True}),
])
def test_folders_has_tumor_from_the_tumour_vocabulary(classes, tumor):
    resolution = folders.resolve(_decoded_folders(classes))
    assert resolution.class_names == sorted(classes)
    assert dict(zip(resolution.units["label_name"], resolution.units["has_tumor"])) == tumor
    assert dict(zip(resolution.units["label_name"], resolution.units["label"])) == {
        name: i for i, name in enumerate(sorted(classes))}
    assert resolution.issues == [] and resolution.units["mask_path"].isna().all()
    assert resolution.tumor_note == (f"has_tumor from the class names (classeg.labels): tumour classes "
                                     f"{[name for name in sorted(classes) if tumor[name]]}")


def test_folders_class_names_without_a_tumour_meaning_leave_has_tumor_null_with_a_note():
    resolution = folders.resolve(_decoded_folders(["cat", "dog"]))
    assert resolution.units["has_tumor"].isna().all() and len(resolution.units) == 4
    assert resolution.tumor_note.startswith("has_tumor is null: class names ['cat', 'dog']")


def test_ingest_resolve_numbers_the_folder_classes_and_carries_the_note():
    from classeg.ingest.resolve import UNIT_COLUMNS, resolve

    resolved = resolve(_decoded_folders(["tumour", "no_tumour"], per_class=3), dataset="folders",
                       fractions=[1, 0, 0], seed=0)
    assert list(resolved.units.columns) == UNIT_COLUMNS and len(resolved.units) == 6
    assert resolved.class_names == ["no_tumour", "tumour"]
    assert sorted(zip(resolved.units["label_name"], resolved.units["label"], resolved.units["has_tumor"])) == [
        ("no_tumour", 0, False)] * 3 + [("tumour", 1, True)] * 3
    assert set(resolved.units["split"]) == {"train"} and resolved.issues.empty
    assert "tumour classes ['tumour']" in resolved.tumor_note


def test_lgg_resolve_pairs_by_key_and_accounts_for_orphans_and_failed_partners():
    from classeg.ingest.fields import META_FIELDS, names

    def row(key, kind, reason=None, has_tumor=None):
        suffix = "_mask" if kind == "mask" else ""
        path = f"file:/d/P_A_1_20000101/P_A_1_20000101_{key}{suffix}.tif"
        return {**{name: None for name in names(META_FIELDS)}, "path": path, "relpath": path[len("file:/d/"):],
                "kind": kind, "key": f"P/{key}", "patient_id": "P_A_1", "reason": reason, "has_tumor": has_tumor}

    meta = pd.DataFrame([row(1, "image"), row(1, "mask", has_tumor=True), row(2, "image"),
                         row(2, "mask", has_tumor=False), row(3, "image"), row(4, "mask", has_tumor=False),
                         row(5, "image", reason="undecodable"), row(5, "mask", has_tumor=True),
                         row(6, "image"), row(6, "mask", reason="undecodable")], columns=names(META_FIELDS))
    resolution = lgg.resolve(meta)
    assert sorted(zip(resolution.units["key"], resolution.units["has_tumor"], resolution.units["label_name"])) == [
        ("P/1", True, "tumor"), ("P/2", False, "no_tumor")]
    assert (resolution.units["mask_path"].str.endswith("_mask.tif")).all()
    issues = pd.concat(resolution.issues)
    stem = "P_A_1_20000101/P_A_1_20000101_"
    assert dict(zip(issues["relpath"], zip(issues["severity"], issues["reason"]))) == {
        f"{stem}3.tif": ("error", "image_without_mask"), f"{stem}4_mask.tif": ("error", "mask_without_image"),
        f"{stem}5_mask.tif": ("skipped", "partner_failed"), f"{stem}6.tif": ("skipped", "partner_failed")}
    assert resolution.class_names == ["no_tumor", "tumor"] and resolution.tumor_note is None


def test_every_layout_is_registered_once_and_config_offers_exactly_them():
    from classeg.config import CHOICES
    from classeg.datasets.registry import LAYOUTS, get_layout

    assert LAYOUTS == {"lgg": lgg, "figshare": figshare, "folders": folders}
    assert tuple(CHOICES["ingest.dataset"]) == tuple(LAYOUTS)
    for layout in LAYOUTS.values():
        assert callable(layout.parse_path) and callable(layout.decode) and callable(layout.resolve)
    with pytest.raises(ValueError, match=r"dataset must be one of \['figshare', 'folders', 'lgg'\], got 'kaggle'"):
        get_layout("kaggle")
