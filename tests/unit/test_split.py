import pandas as pd
import pytest

from classeg.split import assign_splits, deal, split_counts


@pytest.mark.parametrize("count, shares, expected", [
    (5, [0.6, 0.2, 0.2], [0, 1, 0, 2, 0]),
    (4, [0.5, 0.5], [0, 1, 0, 1]),
    (3, [1, 0, 0], [0, 0, 0]),
    (0, [0.7, 0.15, 0.15], []),
])
def test_deal_table(count, shares, expected):
    assert deal(count, shares) == expected


def test_deal_bad_shares():
    with pytest.raises(ValueError, match="positive sum"):
        deal(3, [0, 0])


def _groups(n_per_stratum, hints=None):
    rows = []
    for stratum, n in enumerate(n_per_stratum):
        rows += [{"group_id": f"P{stratum}-{i:03d}", "stratum": stratum} for i in range(n)]
    frame = pd.DataFrame(rows)
    if hints is not None:
        frame["split_hint"] = hints
    return frame


def test_proportions_within_one_group_per_stratum_and_overall():
    groups = _groups([40, 27, 9])
    out = assign_splits(groups, fractions=[0.7, 0.15, 0.15], seed=3).merge(groups, on="group_id")
    for stratum, n in enumerate([40, 27, 9]):
        counts = split_counts(out[out.stratum == stratum])
        for name, frac in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
            assert abs(counts[name] - frac * n) <= 1.0, (stratum, counts)
    total = split_counts(out)
    assert sum(total.values()) == 76
    for name, frac in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
        assert abs(total[name] - frac * 76) <= 1.0


def test_same_seed_same_split_any_row_order_different_seed_differs():
    groups = _groups([30, 30])
    a = assign_splits(groups, fractions=[0.6, 0.2, 0.2], seed=1).set_index("group_id")["split"]
    b = assign_splits(groups.sample(frac=1, random_state=7), fractions=[0.6, 0.2, 0.2],
                      seed=1).set_index("group_id")["split"]
    c = assign_splits(groups, fractions=[0.6, 0.2, 0.2], seed=2).set_index("group_id")["split"]
    assert a.sort_index().equals(b.sort_index())
    assert not a.sort_index().equals(c.sort_index())


def test_hints_are_honoured():
    groups = _groups([10], hints=["test"] * 3 + ["train"] * 7)
    out = assign_splits(groups, fractions=[0.7, 0.15, 0.15], seed=0).merge(groups, on="group_id")
    assert set(out.loc[out.split_hint == "test", "split"]) == {"test"}
    trained = out.loc[out.split_hint == "train", "split"].value_counts().to_dict()
    assert trained == {"train": 6, "val": 1}  # 7 dealt 0.7:0.15 -> 82%/18%


@pytest.mark.parametrize("kwargs, message", [
    ({"fractions": [0.5, 0.5]}, "three non-negative numbers"),
    ({"fractions": [0.7, 0.2, 0.2]}, "summing to 1"),
])
def test_bad_fractions(kwargs, message):
    with pytest.raises(ValueError, match=message):
        assign_splits(_groups([3]), seed=0, **kwargs)


def test_bad_groups():
    with pytest.raises(ValueError, match="lacks column"):
        assign_splits(pd.DataFrame({"group_id": ["a"]}), fractions=[1, 0, 0], seed=0)
    with pytest.raises(ValueError, match="'a' appears twice"):
        assign_splits(pd.DataFrame({"group_id": ["a", "a"], "stratum": [0, 0]}), fractions=[1, 0, 0], seed=0)
    with pytest.raises(ValueError, match="split_hint must be one of"):
        assign_splits(pd.DataFrame({"group_id": ["a"], "stratum": [0], "split_hint": ["dev"]}),
                      fractions=[1, 0, 0], seed=0)
