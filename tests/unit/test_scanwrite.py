"""The pieces of ingest's task-side path that need no Spark: plan chunking, write targets, the file reader,
and the staging/finalize round trip on local files."""
from __future__ import annotations

import random

import pandas as pd
import pyarrow.parquet as pq
import pytest

from classeg import etl, imaging, scanwrite
from classeg.datasets import synthetic


def test_chunk_plan_keeps_keys_together_and_covers_every_row():
    rng = random.Random(3)
    keys = []
    for index in range(400):  # LGG-like: most keys twice (slice + mask), some once
        keys += [f"p{index // 20}/{index}"] * rng.choice([1, 2, 2, 2])
    rng.shuffle(keys)
    series = pd.Series(keys)
    for count in (1, 2, 3, 7, 64, 5000):
        chunks = scanwrite.chunk_plan(series, count)
        flat = [i for chunk in chunks for i in chunk]
        assert sorted(flat) == list(range(len(keys)))  # every row once
        owner = {}
        for number, chunk in enumerate(chunks):
            for i in chunk:
                assert owner.setdefault(keys[i], number) == number, f"key {keys[i]} split across chunks"
        assert len(chunks) <= max(count, 1)
        target = -(-len(keys) // count)
        assert all(len(chunk) <= target + 1 for chunk in chunks)  # at most one extra row (a pair's partner)
    assert scanwrite.chunk_plan(pd.Series([], dtype=object), 4) == []


@pytest.mark.parametrize("uri, expected", [
    ("/data/out", "/data/out"), ("file:///data/a%20b", "/data/a b"), ("file:/data/x", "/data/x"),
    ("s3://bucket/tables/lgg/", "s3://bucket/tables/lgg"), ("s3a://bucket/t", "s3://bucket/t"),
    ("hdfs://namenode/tables", None), ("gs://bucket/t", None)])
def test_writable_base(uri, expected):
    assert scanwrite.writable_base(uri) == expected


def test_read_mode_by_scheme_and_a_clear_error_for_tasks_on_hdfs():
    assert etl.read_mode(["file:/a/b.tif", "s3://bucket/c.tif"]) == "tasks"
    assert etl.read_mode(["hdfs://nn/a.tif"]) == "binaryfile"
    assert etl.read_mode(["file:/a.tif"], "binaryfile") == "binaryfile"
    with pytest.raises(ValueError, match=r"ingest\.read=tasks .* the input has hdfs"):
        etl.read_mode(["file:/a.tif", "hdfs://nn/a.tif"], "tasks")


def test_source_reader_local_forms_and_unreadable_rows(tmp_path):
    folder = tmp_path / "a b+c"
    folder.mkdir()
    (folder / "x.bin").write_bytes(b"payload")
    read = etl.source_reader()
    assert read(f"file:{folder}/x.bin") == b"payload"  # the form Spark's listing uses
    assert read(f"file://{folder}/x.bin") == b"payload"
    assert read(str(folder / "x.bin")) == b"payload"
    with pytest.raises(ValueError, match="hdfs"):
        read("hdfs://nn/x.bin")

    plan = pd.DataFrame([{**{name: None for name, _ in etl.PARSED_FIELDS}, "path": f"file:{folder}/gone.tif",
                          "relpath": "p/gone.tif", "kind": "image", "key": "p/1"}])
    decoded = etl.decode_frame(plan, dataset="lgg", image_size=16, read=read)
    assert decoded.loc[0, "reason"] == "unreadable"
    assert "gone.tif" in decoded.loc[0, "detail"] and decoded.loc[0, "image"] is None


def test_staged_parts_round_trip_into_split_folders(tmp_path):
    """write_staged then finalize_part: each scan lands once, in its split's folder, pixels intact; writing a
    part twice (a retried task) replaces it."""
    data = tmp_path / "lgg"
    synthetic.write_lgg(data, patients=3, seed=2, image_size=32, slices_per_patient=(3, 4), duplicate_copy=False)
    root, paths = etl.list_local(str(data))
    parsed = etl.parse_listing(pd.DataFrame({"path": paths}), dataset="lgg", root=root)
    to_decode, _ = etl.plan_files(parsed)
    decoded = etl.decode_frame(to_decode, dataset="lgg", image_size=16, read=etl.source_reader())
    meta = decoded.drop(columns=["image", "mask"])
    units, _, _ = etl.resolve(meta, dataset="lgg", fractions=[0.5, 0.25, 0.25], seed=0)
    sizes = meta.loc[meta["kind"] == "image", ["path", "orig_height", "orig_width"]].rename(
        columns={"path": "image_path"})
    units = units.merge(sizes, on="image_path")
    staging, scans = str(tmp_path / "out" / "_staging-x"), str(tmp_path / "out" / "scans")
    keys = to_decode["key"]
    chunks = scanwrite.chunk_plan(keys, 2)
    for part, chunk in enumerate(chunks):
        scanwrite.write_staged(decoded.iloc[chunk], staging=staging, partition=part)
    scanwrite.write_staged(decoded.iloc[chunks[0]], staging=staging, partition=0)  # a retried task
    written = sum(scanwrite.finalize_part(scanwrite.part_name(part), units, staging=staging, scans=scans,
                                          dataset="lgg") for part in range(len(chunks)))
    assert written == len(units)
    table = pq.read_table(scans).to_pandas()  # hive-style split=... folders become the split column
    assert len(table) == len(units) and set(table["scan_id"]) == set(units["scan_id"])
    merged = table.merge(units[["scan_id", "split", "mask_path"]], on="scan_id", suffixes=("", "_unit"))
    assert (merged["split"].astype(str) == merged["split_unit"]).all()
    by_path = decoded.set_index("path")
    for row in merged.itertuples():
        assert row.image == by_path.loc[row.source_uri, "image"]
        assert row.mask == by_path.loc[row.mask_path, "mask"]
        assert imaging.decode_png(row.image).shape == (16, 16, 3)
