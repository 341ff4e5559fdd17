"""Layout writers: synthetic scans in the exact on-disk layouts of the real datasets (see DATASETS.md).

Each writer draws its patients from an anatomy model (``anatomy``: see :mod:`classeg.synthetic.anatomies`),
refuses a non-empty output folder, writes no extra files into the tree and returns the ground truth
(see :mod:`classeg.synthetic`).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from classeg.synthetic import formats as file_formats
from classeg.synthetic import metadata
from classeg.synthetic.anatomies import AnatomyModel, SliceSpec
from classeg.synthetic.checks import check_bool, check_classes, check_int, check_numbers, check_range
from classeg.synthetic.phantom import CONTRASTS, MIN_IMAGE_SIZE, TUMOR_KINDS, PhantomModel
from classeg.synthetic.pixels import to_uint8

log = logging.getLogger(__name__)

LAYOUTS = ("lgg", "figshare", "folders", "archive")
ANATOMIES = ("phantom", "mni")
FIGSHARE_LABELS = {1: "meningioma", 2: "glioma", 3: "pituitary"}
FIGSHARE_SMALL_NUMBERS = (955, 956, 957, 1070, 1071, 1072, 1073, 1074, 1075, 1076, 1203, 1204, 1205, 1206, 1207)
FOLDER_CLASSES_44C = (
    "Astrocitoma T1", "Astrocitoma T1C+", "Astrocitoma T2",
    "Glioblastoma T1", "Glioblastoma T1C+", "Glioblastoma T2",
    "Meningioma T1", "Meningioma T1C+", "Meningioma T2",
    "_NORMAL T1", "_NORMAL T2",
)
FOLDER_CLASSES_BINARY = ("yes", "no")
FOLDER_CLASSES_4 = ("glioma", "meningioma", "pituitary", "notumor")
ARCHIVE_FORMATS = ("tif", "jpg", "png", "webp", "mat", "dcm")
LGG_CHANNELS = ("T1", "FLAIR", "T1C+")  # pre-contrast, FLAIR, post-contrast: the real channel order


def write_dataset(layout: str, output: str | os.PathLike, *, patients: int | None = None, seed: int = 0,
                  image_size: int | None = None, anatomy: str = "phantom", **options: Any) -> dict:
    """Write a synthetic dataset of ``layout`` (one of LAYOUTS) into the empty or new folder ``output``.

    ``patients`` and ``image_size`` left as None take the layout's default. For ``folders``, ``image_size``
    sets ``size_range=(image_size, image_size)``; ``patients`` does not apply to ``archive``. ``anatomy`` is
    one of ANATOMIES. Other ``options`` go to the layout's writer (write_lgg, write_figshare, write_folders,
    write_archive). Returns the ground truth (see the package docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    kwargs = dict(options, seed=seed, anatomy=anatomy)
    if patients is not None:
        if layout == "archive":
            raise ValueError(f"patients does not apply to the archive layout (it has none), got {patients!r}")
        kwargs["patients"] = patients
    if image_size is not None:
        if layout == "folders":
            if "size_range" in options:
                raise ValueError(f"give image_size or size_range for folders, not both: got {image_size!r} "
                                 f"and {options['size_range']!r}")
            kwargs["size_range"] = (image_size, image_size)
        else:
            kwargs["image_size"] = image_size
    writer = {"lgg": write_lgg, "figshare": write_figshare, "folders": write_folders,
              "archive": write_archive}[layout]
    return writer(output, **kwargs)


def anatomy_model(name: str) -> AnatomyModel:
    """The model called ``name`` (one of ANATOMIES). ``mni`` loads the template here, so a missing ``synth``
    extra fails before anything is written."""
    if name not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {name!r}")
    if name == "phantom":
        return PhantomModel()
    from classeg.synthetic.mni import MniModel  # needs the synth extra: imported only when asked for

    return MniModel()


def write_lgg(output: str | os.PathLike, *, patients: int = 12, seed: int = 0, image_size: int = 256,
              slices_per_patient: tuple[int, int] = (12, 20), tumor_fraction: float = 0.35,
              duplicate_copy: bool = True, data_csv: bool = True, anatomy: str = "phantom") -> dict:
    """Write the Kaggle LGG layout: ``kaggle_3m/TCGA_<inst>_<pid>_<YYYYMMDD>/<folder>_<n>.tif`` (n from 1,
    unpadded; (H, W, 3) uint8 RGB TIFF: pre-contrast T1, FLAIR, post-contrast T1) with ``<folder>_<n>_mask.tif``
    ((H, W) uint8 {0, 255}), ``kaggle_3m/data.csv`` and, with ``duplicate_copy``, a byte-identical copy of the
    tree at ``lgg-mri-segmentation/kaggle_3m/``.

    Each patient has ``slices_per_patient`` (inclusive range) slices; the tumour is one contiguous run of
    about ``tumor_fraction`` of them around the middle of the stack (none when 0). Some patients lack a
    sequence and have FLAIR copied into its channel, as in the real data. Truth slices list each slice once
    (the top-level copy); label 1 = tumour; a patient's ``tumor_slices`` are the numbers of its slices with a
    non-empty mask."""
    check_int("patients", patients, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("image_size", image_size, minimum=MIN_IMAGE_SIZE)
    lo, hi = check_range("slices_per_patient", slices_per_patient, minimum=1)
    if isinstance(tumor_fraction, bool) or not isinstance(tumor_fraction, (int, float)) \
            or not 0.0 <= tumor_fraction <= 1.0:
        raise ValueError(f"tumor_fraction must be a number in [0, 1], got {tumor_fraction!r}")
    check_bool("duplicate_copy", duplicate_copy)
    check_bool("data_csv", data_csv)
    model = anatomy_model(anatomy)

    root = _prepare_output(output)
    base = root / "kaggle_3m"
    base.mkdir()
    rng = np.random.default_rng(seed)
    folders = metadata.lgg_folder_names(rng, patients)
    slices: list[dict] = []
    patient_truth: list[dict] = []
    for index, folder in enumerate(folders):
        patient_slices, truth = _write_lgg_patient(root, folder, np.random.default_rng([seed, index]), model,
                                                   image_size=image_size, slices_range=(lo, hi),
                                                   tumor_fraction=tumor_fraction)
        slices.extend(patient_slices)
        patient_truth.append(truth)
    if data_csv:
        metadata.write_lgg_csv(base / "data.csv", rng, [p["patient_id"] for p in patient_truth])
    if duplicate_copy:
        shutil.copytree(base, root / "lgg-mri-segmentation" / "kaggle_3m")
    return _finish("lgg", model, root, slices, [], patients=patient_truth)


def _write_lgg_patient(root: Path, folder: str, prng: np.random.Generator, model: AnatomyModel, *,
                       image_size: int, slices_range: tuple[int, int],
                       tumor_fraction: float) -> tuple[list[dict], dict]:
    patient_id = folder.rsplit("_", 1)[0]
    head = model.random_head(prng)
    lesion = model.random_lesion(prng, kind="low_grade_glioma")
    count = int(prng.integers(slices_range[0], slices_range[1] + 1))
    run = metadata.tumor_run(prng, count, tumor_fraction)
    copied = []  # a missing sequence is replaced by FLAIR, as in the real stacks
    if prng.random() < 0.15:
        copied = [str(prng.choice(("T1", "T1C+")))]
    specs = []
    for position in range(count):
        lesion_scale = None
        if position in run:
            lesion_scale = 1.0
            if len(run) > 1:  # the lesion narrows towards both ends of its run
                t = 2.0 * (position - run.start) / (len(run) - 1) - 1.0
                lesion_scale = 0.55 + 0.45 * math.sqrt(1.0 - t * t)
        specs.append(SliceSpec(slice_pos=(position + 0.5) / count, lesion_scale=lesion_scale))
    (root / "kaggle_3m" / folder).mkdir()
    slices = []
    for position, plane in enumerate(model.plan(head, lesion, specs)):
        number = position + 1
        image, mask = model.render(prng, size=image_size, head=head, lesion=lesion, plane=plane,
                                   contrasts=LGG_CHANNELS)
        pixels = to_uint8(image)
        for name in copied:
            pixels[..., LGG_CHANNELS.index(name)] = pixels[..., 1]
        image_rel = f"kaggle_3m/{folder}/{folder}_{number}.tif"
        mask_rel = f"kaggle_3m/{folder}/{folder}_{number}_mask.tif"
        file_formats.write_tiff(root / image_rel, pixels)
        file_formats.write_tiff(root / mask_rel, mask.astype(np.uint8) * 255)
        area = int(mask.sum())
        slices.append({"path": image_rel, "mask_path": mask_rel, "patient_id": patient_id,
                       "slice_index": number, "label": int(area > 0),
                       "label_name": "tumor" if area else "no_tumor", "has_tumor": area > 0,
                       "height": image_size, "width": image_size, "mask_area_px": area,
                       "flair_copied_into": list(copied), **model.slice_info(head, plane, image_size)})
    truth = {"patient_id": patient_id, "folder": folder, "slices": count,
             "tumor_slices": [s["slice_index"] for s in slices if s["has_tumor"]], "flair_copied_into": copied}
    return slices, truth


def write_figshare(output: str | os.PathLike, *, patients: int = 12, seed: int = 0, image_size: int = 512,
                   slices_per_patient: tuple[int, int] = (6, 14),
                   small_numbers: Sequence[int] = FIGSHARE_SMALL_NUMBERS, folds: int = 5,
                   anatomy: str = "phantom") -> dict:
    """Write the figshare layout: ``1.mat`` ... ``N.mat`` (MATLAB v7.3 = HDF5 with a 512-byte MATLAB userblock,
    struct ``cjdata``: ``label`` (1, 1) float64 1/2/3, ``PID`` (len, 1) uint16 char codes, ``image`` int16
    stored transposed, ``tumorBorder`` (1, 2k) float64 ``[x1, y1, ...]`` with x = column, y = row, 1-based
    MATLAB pixel coordinates of the mask's border pixels, ``tumorMask`` uint8 stored transposed), ``cvind.mat``
    (``cvind`` (1, N) float64, the patient-wise fold 1..``folds``) and ``README.txt``.

    Each patient has one class (classes cycle over patients, so 3 patients cover all three); files are
    numbered consecutively patient by patient in a shuffled patient order. Numbers in ``small_numbers`` get a
    256x256 image instead of ``image_size`` (the real dataset's quirk). Every slice is meant to show the
    tumour (``has_tumor`` says whether its mask is non-empty)."""
    check_int("patients", patients, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("image_size", image_size, minimum=MIN_IMAGE_SIZE)
    lo, hi = check_range("slices_per_patient", slices_per_patient, minimum=1)
    check_int("folds", folds, minimum=2)
    small = check_numbers("small_numbers", small_numbers)
    model = anatomy_model(anatomy)
    import h5py

    root = _prepare_output(output)
    rng = np.random.default_rng(seed)
    labels = rng.permutation([(i % 3) + 1 for i in range(patients)])
    pids = metadata.unique_codes(rng, patients, lambda r: str(int(r.integers(100000, 1000000))))
    order = rng.permutation(patients)
    fold_of = {int(p): (rank % folds) + 1 for rank, p in enumerate(rng.permutation(patients))}
    slices: list[dict] = []
    patient_truth: list[dict] = []
    for p in order:
        p = int(p)
        label = int(labels[p])
        patient_slices = _write_figshare_patient(root, np.random.default_rng([seed, p]), model, h5py,
                                                 label=label, patient_id=pids[p], fold=fold_of[p],
                                                 first_number=len(slices) + 1, slices_range=(lo, hi),
                                                 image_size=image_size, small=small)
        slices.extend(patient_slices)
        patient_truth.append({"patient_id": pids[p], "label": label, "label_name": FIGSHARE_LABELS[label],
                              "fold": fold_of[p], "files": [s["file_number"] for s in patient_slices]})
    with h5py.File(root / "cvind.mat", "w", userblock_size=512) as handle:
        folds_column = np.asarray([[float(s["fold"]) for s in slices]], dtype=np.float64)
        file_formats.mat_dataset(handle, "cvind", folds_column, "double")
    file_formats.stamp_matlab_header(root / "cvind.mat", file_formats.matlab_date(rng))
    (root / "README.txt").write_text(metadata.FIGSHARE_README.format(count=len(slices), patients=patients),
                                     encoding="utf-8")
    return _finish("figshare", model, root, slices, [], patients=patient_truth,
                   classes=[FIGSHARE_LABELS[k] for k in (1, 2, 3)], folds=folds)


def _write_figshare_patient(root: Path, prng: np.random.Generator, model: AnatomyModel, h5py, *, label: int,
                            patient_id: str, fold: int, first_number: int, slices_range: tuple[int, int],
                            image_size: int, small: frozenset[int]) -> list[dict]:
    head = model.random_head(prng)
    lesion = model.random_lesion(prng, kind=FIGSHARE_LABELS[label])
    count = int(prng.integers(slices_range[0], slices_range[1] + 1))
    scale = float(prng.uniform(900, 2000))  # scanner units of full scale
    start = float(prng.uniform(0.35, 0.5))
    specs = []
    for position in range(count):
        t = 0.0 if count == 1 else 2.0 * position / (count - 1) - 1.0
        specs.append(SliceSpec(slice_pos=min(1.0, start + 0.03 * position),
                               lesion_scale=0.6 + 0.4 * math.sqrt(1.0 - t * t)))
    slices = []
    for number, plane in enumerate(model.plan(head, lesion, specs), start=first_number):
        side = 256 if number in small else image_size
        image, mask = model.render(prng, size=side, head=head, lesion=lesion, plane=plane, contrasts=("T1C+",))
        rel = f"{number}.mat"
        file_formats.write_figshare_mat(h5py, root / rel, label=label, patient_id=patient_id,
                                        image=np.round(image[..., 0] * scale).astype(np.int16), mask=mask,
                                        created=file_formats.matlab_date(prng))
        area = int(mask.sum())
        slices.append({"path": rel, "mask_path": None, "mask_key": "cjdata/tumorMask",
                       "patient_id": patient_id, "slice_index": number, "file_number": number, "label": label,
                       "label_name": FIGSHARE_LABELS[label], "has_tumor": area > 0, "height": side,
                       "width": side, "mask_area_px": area, "fold": fold, **model.slice_info(head, plane, side)})
    return slices


def write_folders(output: str | os.PathLike, *, patients: int | None = None, seed: int = 0,
                  images_per_class: int = 6, classes: Sequence[str] | None = None, split_dirs: bool = False,
                  size_range: tuple[int, int] = (40, 80), anatomy: str = "phantom") -> dict:
    """Write a folder-per-class JPEG set: ``<class>/<id>_big_gallery.jpeg`` (about 1 in 10 files each
    ``.jpg``, ``.png``, ``.webp``), with ``split_dirs`` under ``Training/`` (about 80%) and ``Testing/``.

    ``classes`` defaults to FOLDER_CLASSES_44C (kept verbatim: spaces, ``+``); FOLDER_CLASSES_BINARY and
    FOLDER_CLASSES_4 work too. The lesion kind comes from the class name (see lesion_kind_for_class), the
    contrast from its suffix (T1/T1C+/T2/FLAIR, default T1C+). Image sides are drawn from ``size_range``
    (inclusive; square or not, the head centred on a black canvas); about 1 in 5 images is saved grayscale
    (mode L), the rest RGB. The files carry no patient id (truth ``patient_id`` None); with ``patients`` set,
    the images are nevertheless drawn from that many hidden subjects (truth ``subject``), as in the real sets
    where one patient gives several images and image-level splits leak."""
    if patients is not None:
        check_int("patients", patients, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("images_per_class", images_per_class, minimum=1)
    check_bool("split_dirs", split_dirs)
    size_lo, size_hi = check_range("size_range", size_range, minimum=MIN_IMAGE_SIZE)
    class_names = list(FOLDER_CLASSES_44C if classes is None else check_classes(classes))
    model = anatomy_model(anatomy)
    from PIL import Image

    root = _prepare_output(output)
    rng = np.random.default_rng(seed)
    subjects = None
    if patients is not None:
        subjects = [model.random_head(np.random.default_rng([seed, 1_000_000 + s])) for s in range(patients)]
    items = [(label, k) for label in range(len(class_names)) for k in range(images_per_class)]
    slot = rng.permutation(len(items))  # spreads extensions and grayscale evenly over the set
    extensions = ("jpeg",) * 7 + ("jpg", "png", "webp")
    slices: list[dict] = []
    for index, (label, k) in enumerate(items):
        name = class_names[label]
        irng = np.random.default_rng([seed, label, k])
        subject = None
        if subjects is None:
            head = model.random_head(irng)
        else:
            subject = int(irng.integers(len(subjects)))
            head = model.jitter(subjects[subject], irng)
        kind = metadata.lesion_kind_for_class(name, irng)
        contrast = metadata.contrast_for_class(name)
        height = int(irng.integers(size_lo, size_hi + 1))
        width = height if irng.random() < 0.5 else int(irng.integers(size_lo, size_hi + 1))
        side = min(height, width)
        lesion = model.random_lesion(irng, kind=kind) if kind else None
        slice_pos = float(irng.uniform(0.35, 0.65))
        lesion_scale = float(irng.uniform(0.7, 1.0))
        [plane] = model.plan(head, lesion, [SliceSpec(slice_pos, lesion_scale if lesion else None)])
        image, mask = model.render(irng, size=side, head=head, lesion=lesion, plane=plane, contrasts=(contrast,))
        canvas = np.zeros((height, width), dtype=np.uint8)
        top, left = (height - side) // 2, (width - side) // 2
        canvas[top:top + side, left:left + side] = to_uint8(image[..., 0])
        grayscale = slot[index] % 5 == 4
        ext = extensions[slot[index] % len(extensions)]
        pixels = canvas if grayscale else np.repeat(canvas[..., None], 3, axis=-1)
        split = None
        folder = name
        if split_dirs:
            n_test = int(round(0.2 * images_per_class)) if images_per_class >= 2 else 0
            split = "Testing" if k >= images_per_class - n_test else "Training"
            folder = f"{split}/{name}"
        (root / folder).mkdir(parents=True, exist_ok=True)
        rel = f"{folder}/{irng.bytes(12).hex()}_big_gallery.{ext}"
        file_formats.save_pil(Image, root / rel, pixels, ext)
        area = int(mask.sum())
        slices.append({"path": rel, "mask_path": None, "patient_id": None, "slice_index": None, "label": label,
                       "label_name": name, "has_tumor": area > 0, "height": height, "width": width,
                       "mask_area_px": area, "split": split, "contrast": contrast, "kind": kind,
                       "mode": "L" if grayscale else "RGB", "subject": subject,
                       **model.slice_info(head, plane, side)})
    return _finish("folders", model, root, slices, [], classes=class_names)


def write_archive(output: str | os.PathLike, *, seed: int = 0, count: int = 24, image_size: int = 64,
                  broken: bool = True, formats: Sequence[str] = ARCHIVE_FORMATS, style: str = "mixed",
                  anatomy: str = "phantom") -> dict:
    """Write an unlabelled folder of ``count`` scans for the scoring job, ``scan_<i>.<ext>`` in the root and
    (every third) in ``batch_02/``, cycling over ``formats``: ``tif`` LGG-style (H, W, 3) uint8, ``jpg``
    grayscale JPEG, ``png`` and ``webp`` RGB, ``mat`` figshare-style v7.3 (always with a tumour, as in
    figshare), ``dcm`` DICOM MR MONOCHROME2 (uint16 or int16 stored values with a non-trivial
    RescaleSlope/RescaleIntercept; modality values = stored * slope + intercept). About half the scans have a
    lesion; the truth entry keeps its exact ``mask``. With ``broken``, adds ``corrupt.tif`` (valid TIFF header,
    then garbage), ``empty.png`` (0 bytes), ``notes.txt`` (text) and ``truncated.jpg`` (first half of a JPEG),
    listed under ``broken`` with kinds corrupt_tiff, empty, text, truncated_jpeg.

    ``style="lgg"`` makes every scan an LGG-style low-grade-glioma slice (pre-contrast, FLAIR, post-contrast):
    3-channel for tif/png/webp/jpg, the FLAIR channel alone for the single-channel formats (mat, dcm), so a
    model trained on LGG data scores an archive of its own kind of scans (the demo's archive)."""
    if style not in ("mixed", "lgg"):
        raise ValueError(f"style must be 'mixed' or 'lgg', got {style!r}")
    check_int("seed", seed, minimum=0)
    check_int("count", count, minimum=1)
    check_int("image_size", image_size, minimum=MIN_IMAGE_SIZE)
    check_bool("broken", broken)
    scan_formats = tuple(formats) if not isinstance(formats, str) else (formats,)
    bad = [f for f in scan_formats if f not in ARCHIVE_FORMATS]
    if bad or not scan_formats or len(set(scan_formats)) != len(scan_formats):
        raise ValueError(f"formats must be distinct values from {ARCHIVE_FORMATS}, got {scan_formats!r}")
    model = anatomy_model(anatomy)
    from PIL import Image

    root = _prepare_output(output)
    rng = np.random.default_rng(seed)
    slot = rng.permutation(count)
    tumor_slot = rng.permutation(count)
    slices: list[dict] = []
    for index in range(count):
        fmt = scan_formats[slot[index] % len(scan_formats)]
        has_lesion = (fmt == "mat" and style == "mixed") or tumor_slot[index] % 2 == 0
        slices.append(_write_archive_scan(root, np.random.default_rng([seed, index]), model, Image, index=index,
                                          fmt=fmt, has_lesion=has_lesion, style=style, image_size=image_size,
                                          seed=seed))
    broken_files = file_formats.write_broken(root, rng, Image) if broken else []
    return _finish("archive", model, root, slices, broken_files)


def _write_archive_scan(root: Path, irng: np.random.Generator, model: AnatomyModel, Image, *, index: int,
                        fmt: str, has_lesion: bool, style: str, image_size: int, seed: int) -> dict:
    head = model.random_head(irng)
    folder = "batch_02/" if index % 3 == 2 else ""
    rel = f"{folder}scan_{index:04d}.{fmt}"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    entry: dict[str, Any] = {"path": rel, "format": fmt}
    slice_pos = float(irng.uniform(0.35, 0.65))
    if fmt == "mat":
        label = int(irng.integers(1, 4))
    if fmt == "tif" or style == "lgg":
        kind, contrasts = "low_grade_glioma", LGG_CHANNELS
    elif fmt == "mat":
        kind, contrasts = FIGSHARE_LABELS[label], ("T1C+",)
    else:
        kind, contrasts = str(irng.choice(TUMOR_KINDS)), (str(irng.choice(CONTRASTS)),)
    lesion = model.random_lesion(irng, kind=kind) if has_lesion else None
    [plane] = model.plan(head, lesion, [SliceSpec(slice_pos, 1.0 if lesion else None)])
    image, mask = model.render(irng, size=image_size, head=head, lesion=lesion, plane=plane, contrasts=contrasts)
    single = image[..., 1] if style == "lgg" else image[..., 0]  # lgg: the FLAIR channel
    if fmt == "tif":
        file_formats.write_tiff(root / rel, to_uint8(image))
    elif fmt == "mat":
        import h5py

        scale = float(irng.uniform(900, 2000))
        patient_id = str(int(irng.integers(100000, 1000000)))
        file_formats.write_figshare_mat(h5py, root / rel, label=label, patient_id=patient_id,
                                        image=np.round(single * scale).astype(np.int16), mask=mask,
                                        created=file_formats.matlab_date(irng))
        entry["figshare_label"] = label
    elif fmt == "dcm":
        entry.update(file_formats.write_dicom(root / rel, irng, single, seed=seed, index=index,
                                              contrast=contrasts[1] if style == "lgg" else contrasts[0],
                                              signed=index % 2 == 1))
    elif style == "lgg":
        file_formats.save_pil(Image, root / rel, to_uint8(image), fmt)
    else:
        gray = to_uint8(image[..., 0])
        pixels = gray if fmt == "jpg" else np.repeat(gray[..., None], 3, axis=-1)
        file_formats.save_pil(Image, root / rel, pixels, fmt)
    area = int(mask.sum())
    entry.update({"mask_path": None, "patient_id": None, "slice_index": None, "label": int(area > 0),
                  "label_name": "tumor" if area else "no_tumor", "has_tumor": area > 0,
                  "height": image_size, "width": image_size, "mask_area_px": area,
                  "contrast": "+".join(contrasts), "kind": kind if area else None, "mask": mask,
                  **model.slice_info(head, plane, image_size)})
    return entry


def _prepare_output(output: Any) -> Path:
    if not isinstance(output, (str, os.PathLike)) or not str(output):
        raise ValueError(f"output must be a folder path, got {output!r}")
    root = Path(output)
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"output {str(root)!r} exists and is not a folder")
        if any(root.iterdir()):
            raise FileExistsError(f"output folder {str(root)!r} is not empty: refusing to mix datasets")
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def _finish(layout: str, model: AnatomyModel, root: Path, slices: list[dict], broken: list[dict],
            **extra: Any) -> dict:
    files = sum(1 for path in root.rglob("*") if path.is_file())
    log.info("wrote synthetic %s dataset (%s anatomy): %d files, %d slices (%d with tumour) to %s", layout,
             model.name, files, len(slices), sum(s["has_tumor"] for s in slices), root)
    return {"layout": layout, "anatomy": model.name, "root": str(root), "files": files, "slices": slices,
            "broken": broken, **extra}
