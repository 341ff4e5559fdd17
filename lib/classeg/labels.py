"""The one tumour vocabulary: which class names mean "tumour" and which mean "no tumour".

Every caller that needs to know asks :func:`tumor_class_names`: ingest (``has_tumor`` of folder-per-class
datasets), the model artifact (``tumor_classes`` in model.json) and scoring (which scans to segment).

How a class name is read
------------------------
The name is lower-cased and cut into words at anything that is not a letter, digit or ``+``
(``"_NORMAL T1"`` -> ``normal t1``, ``"glioma_tumor"`` -> ``glioma tumor``, ``"No Tumour"`` -> ``no tumour``).

* **No tumour** when its first word is a no-tumour word (``no``, ``non``, ``not``, ``without``, ``normal``,
  ``healthy``, ``control``, ``negative``, ``neg``, ``none``) or the name run together is one
  (``notumor``, ``notumour``, ``nontumor``, ``nontumour``, ``healthy``...). This is checked first, so
  ``no_tumor`` and ``non-tumour`` are no-tumour names although they contain "tumor".
* **Tumour** when any word is a tumour word (``tumor``/``tumour`` and plurals, ``yes``, ``positive``, ``pos``,
  ``abnormal``, ``lesion``, ``malignant``, ``benign``, ``cancer``, ``neoplasm``, ``mass``, ``metastasis``,
  ``metastases``, ``mets``, ``lgg``, ``hgg``, ``gbm``, ``pituitary``, ``adenoma``) or ends in ``oma``
  (glioma, meningioma, astrocitoma, schwannoma, ... as in the figshare, Kaggle and 44-class datasets).
* Anything else (``cat``, ``0``, ``t1``) has no meaning here: a class-name set that contains such a name
  cannot be mapped and the user must say which classes mean tumour (``score.tumor_classes``).

American and British spellings are both understood; identifiers in classeg use ``tumor``.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["TumorClassError", "class_meaning", "is_tumor_class", "tumor_class_names"]

_NO_TUMOR_FIRST_WORDS = frozenset({
    "no", "non", "not", "without", "normal", "healthy", "control", "controls", "negative", "neg", "none",
})
_NO_TUMOR_JOINED = frozenset({
    "notumor", "notumour", "nontumor", "nontumour", "nottumor", "notumors", "notumours", "normal", "healthy",
    "negative", "control", "none",
})
_TUMOR_WORDS = frozenset({
    "tumor", "tumour", "tumors", "tumours", "yes", "positive", "pos", "abnormal", "lesion", "lesions",
    "malignant", "benign", "cancer", "neoplasm", "neoplasms", "mass", "metastasis", "metastases", "mets", "lgg",
    "hgg", "gbm", "pituitary", "adenoma",
})
_SPLIT = re.compile(r"[^a-z0-9+]+")

TUMOR, NO_TUMOR = "tumor", "no_tumor"


class TumorClassError(ValueError):
    """Class names cannot be mapped to tumour / no tumour; the message names them and says what to set."""


def _words(name: str) -> list[str]:
    return [word for word in _SPLIT.split(name.lower()) if word]


def class_meaning(name: str) -> str | None:
    """``"tumor"``, ``"no_tumor"`` or None (no meaning) for one class name, by the rules in the module
    docstring. ``"_NORMAL T1"`` -> ``"no_tumor"``, ``"Glioma T1C+"`` -> ``"tumor"``, ``"cat"`` -> None."""
    if not isinstance(name, str):
        raise TypeError(f"a class name must be a string, got {name!r}")
    words = _words(name)
    if not words:
        return None
    if words[0] in _NO_TUMOR_FIRST_WORDS or "".join(words) in _NO_TUMOR_JOINED:
        return NO_TUMOR
    if any(word in _TUMOR_WORDS or word.endswith("oma") or word.startswith("metasta") for word in words):
        return TUMOR
    return None


def is_tumor_class(name: str) -> bool:
    """Whether ``name`` means tumour (False for no-tumour names and for names without a meaning)."""
    return class_meaning(name) == TUMOR


def tumor_class_names(class_names: Sequence[str] | Iterable[str]) -> list[str]:
    """The class names that mean tumour, in their order: ``["no_tumour", "tumour"]`` -> ``["tumour"]``,
    ``["glioma", "meningioma", "notumor", "pituitary"]`` -> ``["glioma", "meningioma", "pituitary"]``.

    A set in which every class is a tumour type (figshare's three) returns them all. Raises
    :class:`TumorClassError` naming the classes when any name has no meaning (``["cat", "dog"]``) or when no
    class means tumour (``["no", "normal"]``); the message says how to set ``score.tumor_classes``.
    """
    if isinstance(class_names, str):
        raise TypeError(f"class_names must be a sequence of names, got the string {class_names!r}")
    names = list(class_names)
    if not names:
        raise TumorClassError("no class names given: a classifier has at least one class")
    meanings = {name: class_meaning(name) for name in names}
    unknown = [name for name in names if meanings[name] is None]
    example = ",".join(name for name in names if meanings[name] != NO_TUMOR)[:80] or names[-1]
    if unknown:
        raise TumorClassError(
            f"class names {unknown} (of {names}) have no tumour / no-tumour meaning: say which classes mean "
            f"tumour with score.tumor_classes, e.g. --set score.tumor_classes={example}")
    tumor = [name for name in names if meanings[name] == TUMOR]
    if not tumor:
        raise TumorClassError(f"no class of {names} means tumour: nothing would ever be segmented; set "
                              f"score.tumor_classes, e.g. --set score.tumor_classes={names[-1]}")
    return tumor
