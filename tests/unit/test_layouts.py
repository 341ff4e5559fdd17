"""Path rules of each dataset layout (pure: no files, no Spark)."""
import pandas as pd
import pytest

from classeg.datasets import figshare, folders, lgg
from classeg.etl import parse_listing, plan_files, relative_path


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
    from classeg.etl import spark_path

    assert spark_path(uri) == expected


def test_glob_escape():
    from classeg.etl import glob_escape

    assert glob_escape("file:/d/scan[1]{a}*?.tif") == "file:/d/scan\\[1\\]\\{a\\}\\*\\?.tif"
