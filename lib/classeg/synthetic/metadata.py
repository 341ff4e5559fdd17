"""What the real datasets write besides pixels, reproduced by the layout writers: LGG patient folder names
and ``data.csv``, the figshare README, the tumour run of a stack, and what a folder class name shows."""
from __future__ import annotations

import csv
import re
import zlib
from pathlib import Path

import numpy as np

from classeg.synthetic.phantom import TUMOR_KINDS

LGG_INSTITUTIONS = ("CS", "DU", "EZ", "FG", "HT")
LGG_CSV_COLUMNS = (
    "Patient", "RNASeqCluster", "MethylationCluster", "miRNACluster", "CNCluster", "RPPACluster",
    "OncosignCluster", "COCCluster", "histological_type", "neoplasm_histologic_grade", "tumor_tissue_site",
    "laterality", "tumor_location", "gender", "age_at_initial_pathologic", "race", "ethnicity", "death01",
)

# Code ranges of data.csv columns (inclusive) and the chance that a cell is blank, as in the real file.
_LGG_CSV_CODES = {
    "RNASeqCluster": (1, 4, 0.25), "MethylationCluster": (1, 5, 0.05), "miRNACluster": (1, 4, 0.0),
    "CNCluster": (1, 3, 0.05), "RPPACluster": (1, 4, 0.3), "OncosignCluster": (1, 3, 0.1),
    "COCCluster": (1, 3, 0.0), "histological_type": (1, 3, 0.02), "neoplasm_histologic_grade": (1, 2, 0.02),
    "tumor_tissue_site": (1, 1, 0.02), "laterality": (1, 3, 0.05), "tumor_location": (1, 5, 0.05),
    "gender": (1, 2, 0.0), "age_at_initial_pathologic": (20, 75, 0.02), "race": (1, 3, 0.05),
    "ethnicity": (1, 2, 0.1), "death01": (0, 1, 0.02),
}


def unique_codes(rng: np.random.Generator, count: int, draw) -> list[str]:
    codes: list[str] = []
    while len(codes) < count:
        code = draw(rng)
        if code not in codes:
            codes.append(code)
    return codes


def lgg_folder_names(rng: np.random.Generator, patients: int) -> list[str]:
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))

    def draw(r: np.random.Generator) -> str:
        institution = str(r.choice(LGG_INSTITUTIONS))
        if r.random() < 0.6:
            code = f"{int(r.integers(1000, 10000))}"  # e.g. TCGA_CS_4941
        else:
            code = "A" + "".join(r.choice(alphabet, 3))  # e.g. TCGA_DU_A5TW
        return f"TCGA_{institution}_{code}"

    patient_ids = unique_codes(rng, patients, draw)
    folders = []
    for patient_id in patient_ids:
        year, month, day = int(rng.integers(1995, 2006)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        folders.append(f"{patient_id}_{year:04d}{month:02d}{day:02d}")
    return folders


def tumor_run(rng: np.random.Generator, count: int, tumor_fraction: float) -> range:
    if tumor_fraction <= 0.0:
        return range(0)
    length = int(round(tumor_fraction * count + rng.uniform(-1.0, 1.0)))
    length = min(count, max(1, length))
    middle = count / 2.0 + rng.uniform(-count / 8.0, count / 8.0)
    start = int(round(middle - length / 2.0))
    margin = 1 if count - length >= 2 else 0  # real runs start after the first slice and end before the last
    start = min(max(start, margin), count - length - margin)
    return range(start, start + length)


def write_lgg_csv(path: Path, rng: np.random.Generator, patient_ids: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LGG_CSV_COLUMNS)
        for patient_id in sorted(patient_ids):
            row = [patient_id]
            for column in LGG_CSV_COLUMNS[1:]:
                low, high, blank = _LGG_CSV_CODES[column]
                value = int(rng.integers(low, high + 1))
                # pandas wrote the real file, so columns with blanks hold floats ("2.0").
                row.append("" if rng.random() < blank else f"{float(value):.1f}")
            writer.writerow(row)


FIGSHARE_README = """\
Synthetic brain tumour dataset in the layout of the figshare T1-weighted CE-MRI set.

It contains {count} T1-weighted contrast-enhanced slices from {patients} synthetic patients. Every slice
has a tumour of one of three kinds: meningioma, glioma or pituitary tumour. Each slice is a MATLAB v7.3
file (HDF5) holding a struct cjdata with the fields:

cjdata.label: 1 for meningioma, 2 for glioma, 3 for pituitary tumour
cjdata.PID: patient ID
cjdata.image: image data
cjdata.tumorBorder: coordinates of points on the tumour border, [x1, y1, x2, y2, ...]
cjdata.tumorMask: binary image, 1 marks the tumour region

cvind.mat holds cvind, the patient-wise cross-validation fold of every file (file i has fold cvind(i)).
"""


def lesion_kind_for_class(class_name: str, rng: np.random.Generator | None = None) -> str | None:
    """Lesion kind shown by a folder class: None for normal/no/notumor, a random tumour kind for ``yes``
    (needs ``rng``), else from the tumour name (menin-, pitu-, glioblast-, glio/astro/oligo/ependi-);
    other tumour names get a fixed kind chosen by a stable hash of the name, so each class stays learnable."""
    tumor = _CONTRAST_SUFFIX.sub("", class_name).strip().lower()
    if tumor in ("no", "notumor", "no_tumor", "no tumor", "normal", "_normal", "healthy"):
        return None
    if "normal" in tumor:
        return None
    if tumor == "yes":
        if rng is None:
            raise ValueError(f"class {class_name!r} shows any tumour kind: pass rng to draw one")
        return str(rng.choice(TUMOR_KINDS))
    for key, kind in (("glioblast", "glioblastoma"), ("menin", "meningioma"), ("pitu", "pituitary"),
                      ("glio", "glioma"), ("astro", "glioma"), ("oligo", "glioma"), ("ependi", "glioma")):
        if key in tumor:
            return kind
    return TUMOR_KINDS[zlib.crc32(tumor.encode("utf-8")) % len(TUMOR_KINDS)]


_CONTRAST_SUFFIX = re.compile(r"(?:^|[\s_-])(T1C\+|T1|T2|FLAIR)$", re.IGNORECASE)


def contrast_for_class(class_name: str) -> str:
    """``'Meningioma T1C+'`` -> ``'T1C+'``; classes without a contrast suffix are T1C+ (as most of the
    4-class and yes/no sets are)."""
    match = _CONTRAST_SUFFIX.search(class_name.strip())
    return match.group(1).upper() if match else "T1C+"
