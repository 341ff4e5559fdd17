"""Deterministic, patient-level, stratified train/val/test splits.

The unit of splitting is a *group*: a patient where the layout has patient ids, otherwise a single scan. Groups
are ordered by a seeded hash of their id within each stratum (a group's majority label), strata are laid end
to end, and each position is dealt to the split that is furthest behind its target share (a largest-deficit,
Bresenham-style deal). So every stratum, and the whole, gets each split's share to within one group, and the
same seed and groups always give the same split, whatever the row order or partitioning.

Hints from the layout (``Training/`` and ``Testing/`` folders) are honoured: a ``test`` hint stays test, a
``val`` hint stays val, and ``train`` hints are dealt between train and val in the configured proportion.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pandas as pd

SPLITS = ("train", "val", "test")


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, "
                         f"got {list(fractions)!r}")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def seeded_order(group_id: str, seed: int) -> str:
    """A stable pseudo-random sort key for ``group_id`` under ``seed``."""
    return hashlib.sha1(f"{seed}:{group_id}".encode()).hexdigest()


def deal(count: int, shares: Sequence[float]) -> list[int]:
    """Deal ``count`` positions to len(shares) bins: position i goes to the bin with the largest deficit
    ``share * (i + 1) - dealt`` (ties to the earlier bin). Returns the bin index of each position.

    >>> deal(5, [0.6, 0.2, 0.2])
    [0, 1, 0, 2, 0]
    """
    total = sum(shares)
    if total <= 0:
        raise ValueError(f"shares must have a positive sum, got {list(shares)!r}")
    shares = [s / total for s in shares]
    dealt = [0] * len(shares)
    out = []
    for i in range(count):
        deficits = [share * (i + 1) - got for share, got in zip(shares, dealt)]
        best = max(range(len(shares)), key=lambda b: (deficits[b], -b))
        dealt[best] += 1
        out.append(best)
    return out


def assign_splits(groups: pd.DataFrame, *, fractions: Sequence[float], seed: int) -> pd.DataFrame:
    """Assign each group a split.

    ``groups`` has columns ``group_id`` (str, unique), ``stratum`` (int) and optionally ``split_hint``
    (None, 'train', 'val' or 'test'). Returns a frame with ``group_id`` and ``split``.
    """
    train, val, test = _check_fractions(fractions)
    missing = {"group_id", "stratum"} - set(groups.columns)
    if missing:
        raise ValueError(f"groups lacks column(s) {sorted(missing)}; has {list(groups.columns)}")
    if groups["group_id"].duplicated().any():
        dup = groups.loc[groups["group_id"].duplicated(), "group_id"].iloc[0]
        raise ValueError(f"group_id must be unique, {dup!r} appears twice")
    frame = groups.copy()
    if "split_hint" not in frame:
        frame["split_hint"] = None
    bad = set(frame["split_hint"].dropna()) - set(SPLITS)
    if bad:
        raise ValueError(f"split_hint must be one of {SPLITS} or null, got {sorted(bad)}")
    frame["order"] = [seeded_order(str(g), seed) for g in frame["group_id"]]
    frame = frame.sort_values(["stratum", "order"], kind="mergesort").reset_index(drop=True)
    frame["split"] = None
    fixed = frame["split_hint"].isin(["val", "test"])
    frame.loc[fixed, "split"] = frame.loc[fixed, "split_hint"]
    pools = [(frame["split_hint"].isna(), ("train", "val", "test"), (train, val, test)),
             (frame["split_hint"] == "train", ("train", "val"), (train, val))]
    for selector, names, shares in pools:
        index = frame.index[selector]
        if len(index) == 0:
            continue
        if sum(shares) == 0:  # e.g. fractions (0, 0, 1) with train hints: everything hinted stays train
            frame.loc[index, "split"] = "train"
            continue
        frame.loc[index, "split"] = [names[b] for b in deal(len(index), shares)]
    return frame[["group_id", "split"]]


def split_counts(assigned: pd.DataFrame) -> dict[str, int]:
    """Number of groups per split (all three keys present)."""
    counts = assigned["split"].value_counts()
    return {name: int(counts.get(name, 0)) for name in SPLITS}
