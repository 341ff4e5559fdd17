"""classeg.labels: the one tumour vocabulary, on class-name sets that real brain-MRI datasets ship."""
from __future__ import annotations

import pytest

from classeg.labels import TumorClassError, class_meaning, is_tumor_class, tumor_class_names

# The 44-class figshare/Kaggle "Brain Tumor MRI Images 44c" folder names (sequence suffixes T1, T1C+, T2).
_44C = [f"{name} {sequence}" for name in (
    "Astrocitoma", "Carcinoma", "Ependimoma", "Ganglioglioma", "Germinoma", "Glioblastoma", "Granuloma",
    "Meduloblastoma", "Meningioma", "Neurocitoma", "Oligodendroglioma", "Papiloma", "Schwannoma", "Tuberculoma",
) for sequence in ("T1", "T1C+", "T2")] + ["_NORMAL T1", "_NORMAL T2"]


@pytest.mark.parametrize("names, expected", [
    # LGG (Buda 2019) as classeg ingests it, and the spellings users rename it to.
    (["no_tumor", "tumor"], ["tumor"]),
    (["no_tumour", "tumour"], ["tumour"]),
    (["No Tumour", "Tumour"], ["Tumour"]),
    (["non-tumor", "tumor"], ["tumor"]),
    (["notumour", "tumour"], ["tumour"]),
    # figshare (Cheng 2015): three tumour types, no normal class.
    (["meningioma", "glioma", "pituitary"], ["meningioma", "glioma", "pituitary"]),
    # Kaggle "Brain Tumor MRI Dataset" (Nickparvar): Training/Testing folders.
    (["glioma", "meningioma", "notumor", "pituitary"], ["glioma", "meningioma", "pituitary"]),
    # Kaggle "Brain Tumor Classification (MRI)" (Bhuvaji).
    (["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"],
     ["glioma_tumor", "meningioma_tumor", "pituitary_tumor"]),
    # Kaggle "Brain MRI Images for Brain Tumor Detection" and Br35H: yes/no folders.
    (["no", "yes"], ["yes"]),
    (["yes", "no"], ["yes"]),
    (["NO", "YES"], ["YES"]),
    # Binary sets from papers and tutorials.
    (["negative", "positive"], ["positive"]),
    (["control", "glioma"], ["glioma"]),
    (["Healthy", "Tumor"], ["Tumor"]),
    (["normal", "abnormal"], ["abnormal"]),
    (["Normal", "Brain Tumor"], ["Brain Tumor"]),
    (["healthy", "lesion"], ["lesion"]),
    (["benign", "malignant"], ["benign", "malignant"]),
    (["LGG", "HGG"], ["LGG", "HGG"]),
    (["normal", "glioblastoma", "metastasis"], ["glioblastoma", "metastasis"]),
    (["no-tumor", "tumor-present"], ["tumor-present"]),
    (["without_tumor", "with_tumor"], ["with_tumor"]),
    (["healthy", "cancer"], ["cancer"]),
    (["Normal", "Pituitary Adenoma"], ["Pituitary Adenoma"]),
    # The 44-class set: every tumour type, never the two _NORMAL classes.
    (_44C, [name for name in _44C if not name.startswith("_NORMAL")]),
    # classeg's own synthetic folder layout (44c-style names with spaces and +).
    (["_NORMAL T1", "Glioma T1C+", "Meningioma T2"], ["Glioma T1C+", "Meningioma T2"]),
])
def test_tumor_class_names_of_real_datasets(names, expected):
    assert tumor_class_names(names) == expected
    assert [name for name in names if is_tumor_class(name)] == expected


@pytest.mark.parametrize("name, meaning", [
    ("_NORMAL T1", "no_tumor"), ("NORMAL T2", "no_tumor"), ("no tumour", "no_tumor"), ("Non_Tumour", "no_tumor"),
    ("notumor", "no_tumor"), ("control", "no_tumor"), ("Glioma T1C+", "tumor"), ("yes", "tumor"),
    ("tumors", "tumor"), ("cat", None), ("0", None), ("T1", None), ("", None), ("__", None),
])
def test_class_meaning(name, meaning):
    assert class_meaning(name) == meaning


@pytest.mark.parametrize("names, message", [
    (["cat", "dog"], r"\['cat', 'dog'\].*no tumour / no-tumour meaning.*score.tumor_classes"),
    (["0", "1"], r"no tumour / no-tumour meaning"),
    (["no_tumor", "tumor", "other"], r"\['other'\]"),
    (["no", "normal"], r"no class of \['no', 'normal'\] means tumour.*score.tumor_classes"),
    ([], r"no class names"),
])
def test_tumor_class_names_refuses_what_it_cannot_map(names, message):
    with pytest.raises(TumorClassError, match=message):
        tumor_class_names(names)


def test_tumor_class_names_bad_input():
    with pytest.raises(TypeError, match="string"):
        tumor_class_names("tumor")
    with pytest.raises(TypeError, match="class name must be a string"):
        class_meaning(3)
