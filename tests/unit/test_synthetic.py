"""The synthetic scan generator writes the real layouts (names, dtypes, HDF5 structure, quirks) and
learnable, deterministic content."""
from __future__ import annotations

import csv
import filecmp
import importlib.util
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image

from classeg import synthetic
from classeg.synthetic import mni


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        padded = np.pad(out, 1)
        out = out | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return out


@pytest.fixture(scope="module")
def lgg(tmp_path_factory):
    root = tmp_path_factory.mktemp("lgg") / "data"
    truth = synthetic.write_lgg(root, patients=3, seed=1, image_size=64, slices_per_patient=(5, 7))
    return root, truth


@pytest.fixture(scope="module")
def figshare(tmp_path_factory):
    root = tmp_path_factory.mktemp("figshare") / "data"
    truth = synthetic.write_figshare(root, patients=3, seed=2, image_size=64, slices_per_patient=(2, 4),
                                     small_numbers=(2, 5))
    return root, truth


# ---------------------------------------------------------------------------------------------- LGG

def test_lgg_names_counts_and_duplicate_copy(lgg):
    root, truth = lgg
    folders = sorted(p.name for p in (root / "kaggle_3m").iterdir() if p.is_dir())
    assert len(folders) == 3
    assert all(re.fullmatch(r"TCGA_(CS|DU|EZ|FG|HT)_[A-Z0-9]{4}_(19|20)\d{6}", f) for f in folders)
    n_slices = len(truth["slices"])
    assert 3 * 5 <= n_slices <= 3 * 7
    # Per copy: an image and a mask per slice plus data.csv; two byte-identical copies.
    assert truth["files"] == len(_files(root)) == 2 * (2 * n_slices + 1)
    for folder in folders:
        names = {p.name for p in (root / "kaggle_3m" / folder).iterdir()}
        count = sum(1 for e in truth["slices"] if e["path"].split("/")[1] == folder)
        assert names == ({f"{folder}_{n}.tif" for n in range(1, count + 1)}
                         | {f"{folder}_{n}_mask.tif" for n in range(1, count + 1)})
        assert f"{folder}_01.tif" not in names  # unpadded numbers
    top, nested = root / "kaggle_3m", root / "lgg-mri-segmentation" / "kaggle_3m"
    top_files = _files(top)
    assert top_files == _files(nested)
    _, mismatch, errors = filecmp.cmpfiles(top, nested, top_files, shallow=False)
    assert mismatch == [] and errors == []
    assert all(e["path"].startswith("kaggle_3m/") for e in truth["slices"])  # each slice listed once


def test_lgg_tiffs_masks_and_truth_agree(lgg):
    root, truth = lgg
    for entry in truth["slices"]:
        with tifffile.TiffFile(root / entry["path"]) as tif:
            image = tif.asarray()
            assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        mask = tifffile.imread(root / entry["mask_path"])
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert entry["has_tumor"] == bool(mask.any()) == (entry["label"] == 1)
        assert entry["mask_area_px"] == int((mask > 0).sum())
        assert entry["patient_id"] == entry["path"].split("/")[1].rsplit("_", 1)[0]


def test_lgg_tumour_runs_are_contiguous_and_flair_bright(lgg):
    root, truth = lgg
    positives = [e for e in truth["slices"] if e["has_tumor"]]
    assert 0.15 <= len(positives) / len(truth["slices"]) <= 0.6
    for patient in truth["patients"]:
        numbers = [e["slice_index"] for e in positives if e["patient_id"] == patient["patient_id"]]
        assert numbers == patient["tumor_slices"]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # one contiguous run
        assert 1 not in numbers  # the run sits inside the stack
    for entry in positives:
        image = tifffile.imread(root / entry["path"]).astype(float)
        lesion = tifffile.imread(root / entry["mask_path"]) > 0
        ring = _dilate(lesion, 3) & ~lesion
        flair = image[..., 1]
        assert flair[lesion].mean() > flair[ring].mean() + 50
        if not entry["flair_copied_into"]:
            assert flair[lesion].mean() > image[..., 0][lesion].mean() + 50  # brightest in FLAIR


def test_lgg_data_csv(lgg):
    root, truth = lgg
    with open(root / "kaggle_3m" / "data.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == synthetic.LGG_CSV_COLUMNS
    assert sorted(r[0] for r in rows[1:]) == sorted(p["patient_id"] for p in truth["patients"])
    for row in rows[1:]:
        assert len(row) == len(synthetic.LGG_CSV_COLUMNS)
        assert all(cell == "" or float(cell) == int(float(cell)) for cell in row[1:])


def test_lgg_without_copy_or_csv_or_tumours(tmp_path):
    truth = synthetic.write_lgg(tmp_path / "d", patients=2, image_size=32, slices_per_patient=(3, 3),
                                tumor_fraction=0.0, duplicate_copy=False, data_csv=False)
    assert truth["files"] == 2 * 3 * 2
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["kaggle_3m"]
    assert not any(e["has_tumor"] for e in truth["slices"])


# ----------------------------------------------------------------------------------------- figshare

def test_figshare_mat_structure(figshare):
    root, truth = figshare
    n = len(truth["slices"])
    assert 6 <= n <= 12
    assert _files(root) == sorted([f"{k}.mat" for k in range(1, n + 1)] + ["cvind.mat", "README.txt"])
    assert truth["files"] == n + 2
    for entry in truth["slices"]:
        path = root / entry["path"]
        assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
        with h5py.File(path, "r") as handle:
            group = handle["cjdata"]
            image, mask = group["image"][()].T, group["tumorMask"][()].T
            side = 256 if entry["file_number"] in (2, 5) else 64
            assert image.shape == mask.shape == (side, side) == (entry["height"], entry["width"])
            assert image.dtype == np.int16 and 0 <= image.min() and 500 < image.max() < 2100
            assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
            assert group["label"].shape == (1, 1) and group["label"].dtype == np.float64
            assert int(group["label"][0, 0]) == entry["label"]
            pid = group["PID"]
            assert pid.dtype == np.uint16 and pid.shape == (len(entry["patient_id"]), 1)
            assert pid.attrs["MATLAB_class"] == b"char"
            assert "".join(chr(c) for c in pid[()].ravel()) == entry["patient_id"]
            border = group["tumorBorder"][()]
            assert border.shape[0] == 1 and border.shape[1] % 2 == 0 and border.shape[1] > 0
            xs, ys = border[0, 0::2].astype(int), border[0, 1::2].astype(int)
            assert mask[ys - 1, xs - 1].all()  # x = column, y = row, 1-based points on the mask
        assert entry["has_tumor"] and entry["mask_area_px"] == int(mask.sum())
    assert {e["label"] for e in truth["slices"]} == {1, 2, 3}


def test_figshare_transposed_storage_keeps_pituitary_at_the_bottom(figshare):
    root, truth = figshare
    for entry in truth["slices"]:
        with h5py.File(root / entry["path"], "r") as handle:
            mask = handle["cjdata"]["tumorMask"][()].T.astype(bool)
        rows, cols = np.nonzero(mask)
        side = mask.shape[0]
        centre_offset = np.hypot(rows.mean() - side / 2, cols.mean() - side / 2) / (side / 2)
        if entry["label_name"] == "pituitary":  # sellar region: centre-bottom of the image
            assert rows.mean() > side * 0.55 and abs(cols.mean() - side / 2) < side * 0.15
        if entry["label_name"] == "meningioma":  # against the skull
            assert centre_offset > 0.45


def test_figshare_cvind_is_patient_wise(figshare):
    root, truth = figshare
    with h5py.File(root / "cvind.mat", "r") as handle:
        cvind = handle["cvind"][()]
    n = len(truth["slices"])
    assert cvind.shape == (1, n) and cvind.dtype == np.float64
    assert set(np.unique(cvind)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    for patient in truth["patients"]:
        folds = {cvind[0, k - 1] for k in patient["files"]}
        assert folds == {patient["fold"]}
        assert patient["files"] == list(range(patient["files"][0], patient["files"][-1] + 1))
    assert len({p["fold"] for p in truth["patients"]}) == 3  # 3 patients, 3 distinct folds


def test_figshare_default_small_numbers_do_not_apply_below_955(tmp_path):
    truth = synthetic.write_figshare(tmp_path / "d", patients=1, image_size=32, slices_per_patient=(2, 2))
    assert [(e["height"], e["width"]) for e in truth["slices"]] == [(32, 32), (32, 32)]


# ------------------------------------------------------------------------------------------ folders

def test_folders_44c_classes_formats_and_modes(tmp_path):
    root = tmp_path / "d"
    truth = synthetic.write_folders(root, seed=3, images_per_class=2, size_range=(40, 60))
    assert sorted(p.name for p in root.iterdir()) == sorted(synthetic.FOLDER_CLASSES_44C)
    assert "Astrocitoma T1C+" in truth["classes"] and "_NORMAL T2" in truth["classes"]
    assert truth["files"] == len(_files(root)) == 22
    extensions = {Path(e["path"]).suffix for e in truth["slices"]}
    assert extensions == {".jpeg", ".jpg", ".png", ".webp"}
    modes = []
    for entry in truth["slices"]:
        assert entry["path"].split("/")[0] == entry["label_name"]
        assert entry["path"].endswith("_big_gallery" + Path(entry["path"]).suffix)
        with Image.open(root / entry["path"]) as img:
            img.load()
            assert img.size == (entry["width"], entry["height"])
            modes.append(img.mode)
        assert 40 <= entry["height"] <= 60 and 40 <= entry["width"] <= 60
        assert entry["has_tumor"] == (not entry["label_name"].startswith("_NORMAL"))
        assert entry["patient_id"] is None
    assert "L" in modes and modes.count("RGB") > len(modes) / 2


def test_folders_binary_split_dirs(tmp_path):
    root = tmp_path / "d"
    truth = synthetic.write_folders(root, classes=["yes", "no"], images_per_class=5, split_dirs=True)
    assert sorted(p.name for p in root.iterdir()) == ["Testing", "Training"]
    for split, count in (("Training", 4), ("Testing", 1)):
        for name in ("yes", "no"):
            assert len(list((root / split / name).iterdir())) == count
    for entry in truth["slices"]:
        assert entry["has_tumor"] == (entry["label_name"] == "yes")
        assert entry["path"].startswith(entry["split"] + "/" + entry["label_name"] + "/")


def test_folders_four_class_kinds(tmp_path):
    truth = synthetic.write_folders(tmp_path / "d", classes=list(synthetic.FOLDER_CLASSES_4), images_per_class=1)
    kinds = {e["label_name"]: e["kind"] for e in truth["slices"]}
    assert kinds == {"glioma": "glioma", "meningioma": "meningioma", "pituitary": "pituitary", "notumor": None}


@pytest.mark.parametrize("name, kind, contrast", [
    ("Astrocitoma T1C+", "glioma", "T1C+"), ("Glioblastoma T2", "glioblastoma", "T2"),
    ("Meningioma T1", "meningioma", "T1"), ("_NORMAL T2", None, "T2"), ("notumor", None, "T1C+"),
    ("no", None, "T1C+"), ("pituitary", "pituitary", "T1C+"),
])
def test_class_name_parsing(name, kind, contrast):
    assert synthetic.lesion_kind_for_class(name) == kind
    assert synthetic.contrast_for_class(name) == contrast


def test_contrasts_differ_in_csf():
    rng = np.random.default_rng(0)
    anatomy = synthetic.random_anatomy(rng)
    image, mask = synthetic.phantom_slice(rng, size=96, anatomy=anatomy, slice_pos=0.5, contrasts=("T1", "T2"))
    t1, t2 = image[..., 0], image[..., 1]
    yy, xx = np.mgrid[:96, :96]
    central = np.hypot(yy - 48, xx - 48) < 20
    csf = central & (t2 > 0.8 * anatomy.gain ** anatomy.gamma)  # ventricles: bright in T2 ...
    assert csf.sum() > 15
    assert t1[csf].mean() < 0.3 < t2[csf].mean()  # ... and dark in T1
    assert not mask.any()


# ------------------------------------------------------------------------------------------ archive

def test_archive_formats_dicom_and_broken_files(tmp_path):
    root = tmp_path / "d"
    truth = synthetic.write_archive(root, seed=4, count=12, image_size=48)
    assert truth["files"] == len(_files(root)) == 12 + 4
    assert {e["format"] for e in truth["slices"]} == set(synthetic.ARCHIVE_FORMATS)
    assert 0.3 <= np.mean([e["has_tumor"] for e in truth["slices"]]) <= 0.7
    assert max(len(Path(e["path"]).parts) for e in truth["slices"]) == 2  # one subfolder level
    for entry in truth["slices"]:
        path = root / entry["path"]
        assert entry["has_tumor"] == bool(entry["mask"].any())
        assert entry["mask"].shape == (48, 48)
        if entry["format"] == "tif":
            assert tifffile.imread(path).shape == (48, 48, 3)
        elif entry["format"] == "mat":
            with h5py.File(path, "r") as handle:
                assert np.array_equal(handle["cjdata"]["tumorMask"][()].T.astype(bool), entry["mask"])
        elif entry["format"] == "dcm":
            ds = pydicom.dcmread(path)
            assert ds.Modality == "MR" and ds.PhotometricInterpretation == "MONOCHROME2"
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            assert (slope, intercept) == (entry["rescale_slope"], entry["rescale_intercept"]) != (1.0, 0.0)
            values = ds.pixel_array.astype(float) * slope + intercept
            assert ds.pixel_array.dtype == np.dtype(entry["stored_dtype"])
            assert values.max() > 500 and abs(values.min()) < 60  # scanner units after rescale
        else:
            with Image.open(path) as img:
                img.load()
                assert img.mode == ("L" if entry["format"] == "jpg" else "RGB") and img.size == (48, 48)
    kinds = {b["path"]: b["kind"] for b in truth["broken"]}
    assert kinds == {"corrupt.tif": "corrupt_tiff", "empty.png": "empty", "notes.txt": "text",
                     "truncated.jpg": "truncated_jpeg"}
    assert (root / "empty.png").stat().st_size == 0
    assert (root / "notes.txt").read_text().strip()
    assert (root / "corrupt.tif").read_bytes()[:4] == b"II*\x00"
    with pytest.raises(Exception):
        tifffile.imread(root / "corrupt.tif")
    with pytest.raises(OSError, match="truncated"):
        with Image.open(root / "truncated.jpg") as img:
            img.load()


def test_archive_without_broken_and_subset_of_formats(tmp_path):
    truth = synthetic.write_archive(tmp_path / "d", count=4, image_size=32, broken=False, formats=("png", "dcm"))
    assert truth["files"] == 4 and truth["broken"] == []
    assert sorted(e["format"] for e in truth["slices"]) == ["dcm", "dcm", "png", "png"]


# ------------------------------------------------------------------------------- determinism, API

def test_same_seed_same_bytes_different_seed_different(tmp_path):
    def sample(name, seed, layout, **options):
        root = tmp_path / name
        truth = synthetic.write_dataset(layout, root, seed=seed, **options)
        return {rel: (root / rel).read_bytes() for rel in _files(root)}, truth

    lgg_options = dict(patients=2, image_size=32, slices_per_patient=(3, 3))
    first, _ = sample("a", 5, "lgg", **lgg_options)
    second, _ = sample("b", 5, "lgg", **lgg_options)
    other, _ = sample("c", 6, "lgg", **lgg_options)
    assert first == second
    assert {Path(rel).parent.name for rel in first} != {Path(rel).parent.name for rel in other}  # new ids
    images = [{data for rel, data in files.items() if not rel.endswith(("_mask.tif", ".csv"))}
              for files in (first, other)]
    assert len(images[0]) == 6 and images[0].isdisjoint(images[1])  # empty masks may coincide, scans do not
    archive = dict(count=6, image_size=32)
    first, _ = sample("d", 5, "archive", **archive)
    second, _ = sample("e", 5, "archive", **archive)
    other, _ = sample("f", 6, "archive", **archive)
    assert first == second  # includes .mat (HDF5) and .dcm
    scans_first = {data for rel, data in first.items() if Path(rel).name.startswith("scan_")}
    scans_other = {data for rel, data in other.items() if Path(rel).name.startswith("scan_")}
    assert len(scans_first) == 6 and scans_first.isdisjoint(scans_other)


def test_write_dataset_dispatch(tmp_path):
    truth = synthetic.write_dataset("folders", tmp_path / "f", image_size=40, images_per_class=1,
                                    classes=["yes", "no"])
    assert truth["layout"] == "folders" and {(e["height"], e["width"]) for e in truth["slices"]} == {(40, 40)}
    truth = synthetic.write_dataset("figshare", tmp_path / "g", patients=1, image_size=32,
                                    slices_per_patient=(1, 1))
    assert truth["layout"] == "figshare" and len(truth["slices"]) == 1 and truth["slices"][0]["height"] == 32


def test_refuses_non_empty_output(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.write_archive(tmp_path / "d", count=1)


@pytest.mark.parametrize("call, bad", [
    (lambda out: synthetic.write_dataset("nifti", out), "'nifti'"),
    (lambda out: synthetic.write_dataset("archive", out, patients=3), "3"),
    (lambda out: synthetic.write_lgg(out, patients=0), "patients.*0"),
    (lambda out: synthetic.write_lgg(out, tumor_fraction=1.5), "tumor_fraction.*1.5"),
    (lambda out: synthetic.write_figshare(out, slices_per_patient=(5, 2)), r"slices_per_patient.*\(5, 2\)"),
    (lambda out: synthetic.write_figshare(out, small_numbers=(0,)), r"small_numbers.*\(0,\)"),
    (lambda out: synthetic.write_folders(out, classes=["a/b"]), "a/b"),
    (lambda out: synthetic.write_folders(out, size_range=(80, 40)), r"size_range.*\(80, 40\)"),
    (lambda out: synthetic.write_archive(out, formats=("gif",)), "gif"),
    (lambda out: synthetic.write_archive(out, image_size=8), "image_size.*8"),
    (lambda out: synthetic.write_dataset("lgg", out, anatomy="atlas"), "anatomy.*'atlas'"),
    (lambda out: synthetic.write_folders(out, anatomy="MNI"), "anatomy.*'MNI'"),
])
def test_bad_arguments_raise_value_error_naming_the_value(tmp_path, call, bad):
    with pytest.raises(ValueError, match=bad):
        call(tmp_path / "d")
    assert not (tmp_path / "d").exists()  # validated before anything is written


def test_phantom_slice_bad_arguments():
    rng = np.random.default_rng(0)
    anatomy = synthetic.random_anatomy(rng)
    with pytest.raises(ValueError, match="slice_pos.*1.5"):
        synthetic.phantom_slice(rng, size=32, anatomy=anatomy, slice_pos=1.5)
    with pytest.raises(ValueError, match="PD"):
        synthetic.phantom_slice(rng, size=32, anatomy=anatomy, slice_pos=0.5, contrasts=("PD",))
    with pytest.raises(ValueError, match="'tumour'"):
        synthetic.random_lesion(rng, kind="tumour")


def test_folders_hidden_subjects_have_no_patient_id(tmp_path):
    truth = synthetic.write_dataset("folders", tmp_path / "d", patients=2, classes=["yes", "no"],
                                    images_per_class=4)
    assert {e["subject"] for e in truth["slices"]} <= {0, 1}
    assert len({e["subject"] for e in truth["slices"]}) == 2
    assert all(e["patient_id"] is None for e in truth["slices"])


def test_archive_lgg_style_matches_the_lgg_training_data(tmp_path):
    truth = synthetic.write_archive(tmp_path / "a", seed=3, count=12, image_size=32, style="lgg", broken=False)
    for entry in truth["slices"]:
        path = tmp_path / "a" / entry["path"]
        if entry["format"] in ("tif", "png", "webp"):
            array = tifffile.imread(path) if entry["format"] == "tif" else np.asarray(Image.open(path))
            assert array.shape == (32, 32, 3) and array.dtype == np.uint8
        assert entry["kind"] in (None, "low_grade_glioma") and entry["has_tumor"] == bool(entry["mask"].any())
    assert {e["has_tumor"] for e in truth["slices"]} == {True, False}
    with pytest.raises(ValueError, match="style must be 'mixed' or 'lgg', got 'x'"):
        synthetic.write_archive(tmp_path / "b", style="x")


# ------------------------------------------------------------------------------ mni anatomy (real template)

@pytest.fixture(scope="module")
def mni_lgg(tmp_path_factory):
    root = tmp_path_factory.mktemp("mni") / "data"
    truth = synthetic.write_lgg(root, patients=3, seed=7, image_size=64, slices_per_patient=(8, 10),
                                anatomy="mni")
    return root, truth


def _feret_mm(mask: np.ndarray, pixel_mm: float) -> float:
    """Largest distance between two mask pixels, edge to edge (centre distance plus one pixel), in mm."""
    points = np.argwhere(mask).astype(float)
    gaps = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    return (gaps.max() + 1.0) * pixel_mm


def test_mni_template_is_the_one_nilearn_ships():
    path = mni.template_path()
    assert path.name == "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    assert path.parent.as_posix().endswith("nilearn/datasets/data")
    template = mni.load_template()
    assert template.t1.shape == template.gm.shape == template.wm.shape and template.t1.ndim == 3
    assert template.voxel_mm == (1.0, 1.0, 1.0)
    assert len(template.deep_centres) > 1000 and len(template.surface_centres) > 1000


def test_mni_lgg_layout_runs_and_masks(mni_lgg):
    root, truth = mni_lgg
    assert truth["anatomy"] == "mni" and truth["layout"] == "lgg"
    n_slices = len(truth["slices"])
    assert truth["files"] == len(_files(root)) == 2 * (2 * n_slices + 1)
    for patient in truth["patients"]:
        numbers = [e["slice_index"] for e in truth["slices"]
                   if e["patient_id"] == patient["patient_id"] and e["has_tumor"]]
        assert numbers == patient["tumor_slices"]
        assert 2 <= len(numbers) < patient["slices"]  # tumour and non-tumour slices in every patient
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # one contiguous run
        assert 1 not in numbers and patient["slices"] not in numbers
    for entry in truth["slices"]:
        image = tifffile.imread(root / entry["path"])
        mask = tifffile.imread(root / entry["mask_path"])
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert entry["has_tumor"] == bool(mask.any()) and entry["mask_area_px"] == int((mask > 0).sum())
        assert 200.0 / 64 <= entry["pixel_mm"] <= 220.0 / 64
        if entry["has_tumor"]:
            flair = image[..., 1].astype(float)
            lesion = mask > 0
            ring = _dilate(lesion, 2) & ~lesion
            assert flair[lesion].mean() > flair[ring].mean() + 50  # FLAIR-hyperintense
            if not entry["flair_copied_into"]:
                assert flair[lesion].mean() > image[..., 0][lesion].mean() + 50  # dark in T1
    # Slices of one patient are evenly spaced planes in the scanner frame.
    for patient in truth["patients"]:
        heights = [e["plane_z_mm"] for e in truth["slices"] if e["patient_id"] == patient["patient_id"]]
        steps = np.diff(heights)
        assert np.allclose(steps, steps[0]) and 1.0 - 1e-9 <= steps[0] <= 6.0 + 1e-9


def test_mni_same_seed_same_bytes_different_seed_different(tmp_path):
    def sample(name, seed):
        root = tmp_path / name
        synthetic.write_dataset("lgg", root, seed=seed, patients=2, image_size=32, slices_per_patient=(4, 4),
                                anatomy="mni", duplicate_copy=False)
        return {rel: (root / rel).read_bytes() for rel in _files(root)}

    first, second, other = sample("a", 5), sample("b", 5), sample("c", 6)
    assert first == second
    scans = [{data for rel, data in files.items() if not rel.endswith(("_mask.tif", ".csv"))}
             for files in (first, other)]
    assert len(scans[0]) == 8 and scans[0].isdisjoint(scans[1])


@pytest.mark.parametrize("kind", synthetic.LESION_KINDS)
def test_mni_mask_is_exactly_where_the_lesion_changes_intensity(kind):
    model = synthetic.anatomy_model("mni")
    rng = np.random.default_rng(11)
    head = model.random_head(rng)
    lesion = model.random_lesion(rng, kind=kind)
    [plane] = model.plan(head, lesion, [synthetic.SliceSpec(0.5, 1.0)])
    contrasts = synthetic.CONTRASTS
    with_lesion, mask = model.render(np.random.default_rng(3), size=96, head=head, lesion=lesion, plane=plane,
                                     contrasts=contrasts)
    without, no_mask = model.render(np.random.default_rng(3), size=96, head=head, lesion=None, plane=plane,
                                    contrasts=contrasts)
    assert mask.sum() >= 5 and not no_mask.any()
    for channel in range(len(contrasts)):
        assert np.array_equal(with_lesion[..., channel] != without[..., channel], mask)
    flair = contrasts.index("FLAIR")
    if kind == "low_grade_glioma":  # FLAIR-hyperintense everywhere in the mask
        assert (with_lesion[..., flair][mask] > without[..., flair][mask] + 0.1).all()


@pytest.mark.parametrize("kind", synthetic.LESION_KINDS)
def test_mni_lesions_measure_9_to_22_mm_on_the_template_grid(kind):
    model = synthetic.anatomy_model("mni")
    template = model.template
    rng = np.random.default_rng(5)
    for _ in range(8):
        lesion = model.random_lesion(rng, kind=kind)
        # The template voxels whose centres fall inside the lesion, measured with the template's voxel size.
        centre_voxel = np.round(template.world_to_voxel[:3, :3] @ lesion.centre_mm + template.world_to_voxel[:3, 3])
        offsets = np.stack(np.meshgrid(*[np.arange(-12, 13)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
        voxels = centre_voxel + offsets
        world = voxels * np.asarray(template.voxel_mm) + np.linalg.inv(template.world_to_voxel)[:3, 3]
        offset = world - np.asarray(lesion.centre_mm)
        distance = np.linalg.norm(offset, axis=1)
        inside = distance < lesion.radius_along(offset / np.maximum(distance, 1e-9)[:, None])
        points = world[inside]
        assert (np.linalg.norm(points - lesion.centre_mm, axis=1) <= 11.0).all()  # within a 22 mm ball
        for axis in range(3):
            assert np.ptp(points[:, axis]) + template.voxel_mm[axis] >= 9.0  # holds a 9 mm ball
        volume = inside.sum() * float(np.prod(template.voxel_mm))
        assert 9.0 <= 2 * (3 * volume / (4 * np.pi)) ** (1 / 3) <= 22.0


def test_mni_written_masks_are_at_most_22_mm_across(mni_lgg):
    root, truth = mni_lgg
    widest = {}
    for entry in truth["slices"]:
        if entry["has_tumor"]:
            mask = tifffile.imread(root / entry["mask_path"]) > 0
            width = _feret_mm(mask, entry["pixel_mm"])
            assert width <= 22.0 + entry["pixel_mm"]
            widest[entry["patient_id"]] = max(widest.get(entry["patient_id"], 0.0), width)
    assert len(widest) == 3 and min(widest.values()) >= 9.0 - 2 * truth["slices"][0]["pixel_mm"]


def test_mni_slices_look_like_the_template():
    model = synthetic.anatomy_model("mni")
    template = model.template
    for seed in range(4):
        rng = np.random.default_rng(seed)
        head = model.random_head(rng)
        [plane] = model.plan(head, None, [synthetic.SliceSpec(float(rng.uniform(0.35, 0.65)))])
        image, mask = model.render(rng, size=128, head=head, lesion=None, plane=plane, contrasts=("T1",))
        assert not mask.any()
        pixels = mni._plane_points(128, head.fov_mm, plane.z_mm)
        posed = mni._sample(template.t1, template.world_to_voxel, head.to_template(pixels), outside=0.0)
        straight = mni._sample(template.t1, template.world_to_voxel, pixels + np.asarray(mni.HEAD_CENTRE_MM),
                               outside=0.0)
        t1 = image[..., 0].ravel()
        brain = posed > 15
        assert brain.sum() > 0.3 * t1.size  # most of the image is brain
        assert np.corrcoef(t1[brain], posed[brain])[0, 1] > 0.8  # the template, through the patient's pose
        assert np.corrcoef(t1, straight)[0, 1] > 0.5  # and the unjittered template slice at that height


def test_mni_all_layouts(tmp_path):
    figshare = synthetic.write_figshare(tmp_path / "f", patients=3, seed=2, image_size=64, slices_per_patient=(2, 3),
                                        anatomy="mni")
    assert {e["label"] for e in figshare["slices"]} == {1, 2, 3}
    for entry in figshare["slices"]:
        with h5py.File(tmp_path / "f" / entry["path"], "r") as handle:
            assert int(handle["cjdata"]["tumorMask"][()].sum()) == entry["mask_area_px"]
    assert np.mean([e["has_tumor"] for e in figshare["slices"]]) >= 0.8
    folders = synthetic.write_folders(tmp_path / "g", seed=1, classes=["yes", "no"], images_per_class=3,
                                      size_range=(64, 64), anatomy="mni")
    for entry in folders["slices"]:
        assert entry["has_tumor"] == (entry["label_name"] == "yes")
    archive = synthetic.write_archive(tmp_path / "a", seed=3, count=6, image_size=64, broken=False, anatomy="mni")
    assert archive["files"] == 6 and {e["has_tumor"] for e in archive["slices"]} == {True, False}
    assert all(e["mask_area_px"] == int(e["mask"].sum()) for e in archive["slices"])


def test_synth_cli_anatomy_flag(tmp_path, capsys):
    from classeg import cli

    out = tmp_path / "d"
    assert cli.main(["synth", "--layout", "folders", "--output", str(out), "--image-size", "32",
                     "--anatomy", "mni"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["anatomy"] == "mni" and summary["files"] == len(_files(out)) == 66
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synth", "--layout", "lgg", "--output", str(tmp_path / "e"), "--anatomy", "atlas"])
    assert exit_info.value.code == 2 and "atlas" in capsys.readouterr().err


def test_mni_bad_arguments():
    model = synthetic.anatomy_model("mni")
    rng = np.random.default_rng(0)
    head = model.random_head(rng)
    with pytest.raises(ValueError, match="'tumour'"):
        model.random_lesion(rng, kind="tumour")
    [plane] = model.plan(head, None, [synthetic.SliceSpec(0.5)])
    with pytest.raises(ValueError, match="PD"):
        model.render(rng, size=32, head=head, lesion=None, plane=plane, contrasts=("PD",))
    with pytest.raises(ValueError, match="size.*8"):
        model.render(rng, size=8, head=head, lesion=None, plane=plane, contrasts=("T1",))
    with pytest.raises(ValueError, match="'atlas'"):
        synthetic.anatomy_model("atlas")


def test_mni_without_the_synth_extra_names_it_and_writes_nothing(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nilearn" else real_find_spec(name, *a))
    monkeypatch.setattr(mni, "load_template", mni.load_template.__wrapped__)  # bypass the loaded copy
    with pytest.raises(ImportError, match=r"classeg\[synth\]"):
        synthetic.write_lgg(tmp_path / "d", patients=1, anatomy="mni")
    assert not (tmp_path / "d").exists()
