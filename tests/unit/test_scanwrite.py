"""The pieces of ingest's task-side path that need no Spark: plan chunking, write targets, the file reader,
and the staging/finalize round trip on local files."""
from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from classeg import imaging, synthetic
from classeg.ingest import decode, listing, resolve, write
from classeg.ingest.fields import PARSED_FIELDS


def test_chunk_plan_keeps_keys_together_and_covers_every_row():
    rng = random.Random(3)
    keys = []
    for index in range(400):  # LGG-like: most keys twice (slice + mask), some once
        keys += [f"p{index // 20}/{index}"] * rng.choice([1, 2, 2, 2])
    rng.shuffle(keys)
    series = pd.Series(keys)
    for count in (1, 2, 3, 7, 64, 5000):
        chunks = decode.chunk_plan(series, count)
        flat = [i for chunk in chunks for i in chunk]
        assert sorted(flat) == list(range(len(keys)))  # every row once
        owner = {}
        for number, chunk in enumerate(chunks):
            for i in chunk:
                assert owner.setdefault(keys[i], number) == number, f"key {keys[i]} split across chunks"
        assert len(chunks) <= max(count, 1)
        target = -(-len(keys) // count)
        assert all(len(chunk) <= target + 1 for chunk in chunks)  # at most one extra row (a pair's partner)
    assert decode.chunk_plan(pd.Series([], dtype=object), 4) == []


@pytest.mark.parametrize("uri, expected", [
    ("/data/out", "/data/out"), ("file:///data/a%20b", "/data/a b"), ("file:/data/x", "/data/x"),
    ("s3://bucket/tables/lgg/", "s3://bucket/tables/lgg"), ("s3a://bucket/t", "s3://bucket/t"),
    ("hdfs://namenode/tables", None), ("gs://bucket/t", None)])
def test_writable_base(uri, expected):
    assert write.writable_base(uri) == expected


def test_read_mode_by_scheme_and_a_clear_error_for_tasks_on_hdfs():
    assert decode.read_mode(["file:/a/b.tif", "s3://bucket/c.tif"]) == "tasks"
    assert decode.read_mode(["hdfs://nn/a.tif"]) == "binaryfile"
    assert decode.read_mode(["file:/a.tif"], "binaryfile") == "binaryfile"
    with pytest.raises(ValueError, match=r"ingest\.read=tasks .* the input has hdfs"):
        decode.read_mode(["file:/a.tif", "hdfs://nn/a.tif"], "tasks")


def test_source_reader_local_forms_and_unreadable_rows(tmp_path):
    folder = tmp_path / "a b+c"
    folder.mkdir()
    (folder / "x.bin").write_bytes(b"payload")
    read = decode.source_reader()
    assert read(f"file:{folder}/x.bin") == b"payload"  # the form Spark's listing uses
    assert read(f"file://{folder}/x.bin") == b"payload"
    assert read(str(folder / "x.bin")) == b"payload"
    with pytest.raises(ValueError, match="hdfs"):
        read("hdfs://nn/x.bin")

    plan = pd.DataFrame([{**{name: None for name, _ in PARSED_FIELDS}, "path": f"file:{folder}/gone.tif",
                          "relpath": "p/gone.tif", "kind": "image", "key": "p/1"}])
    decoded = decode.decode_frame(plan, dataset="lgg", image_size=16, read=read)
    assert decoded.loc[0, "reason"] == "unreadable"
    assert "gone.tif" in decoded.loc[0, "detail"] and decoded.loc[0, "image"] is None


def test_staged_parts_round_trip_into_split_folders(tmp_path):
    """write_staged then finalize_part: each scan lands once, in its split's folder, pixels intact; writing a
    part twice (a retried task) replaces it."""
    data = tmp_path / "lgg"
    synthetic.write_lgg(data, patients=3, seed=2, image_size=32, slices_per_patient=(3, 4), duplicate_copy=False)
    root, paths = listing.list_local(str(data))
    parsed = listing.parse_listing(pd.DataFrame({"path": paths}), dataset="lgg", root=root)
    to_decode, _ = listing.plan_files(parsed)
    decoded = decode.decode_frame(to_decode, dataset="lgg", image_size=16, read=decode.source_reader())
    meta = decoded.drop(columns=["image", "mask"])
    units = resolve.resolve(meta, dataset="lgg", fractions=[0.5, 0.25, 0.25], seed=0).units
    sizes = meta.loc[meta["kind"] == "image", ["path", "orig_height", "orig_width"]].rename(
        columns={"path": "image_path"})
    units = units.merge(sizes, on="image_path")
    staging, scans = str(tmp_path / "out" / "_staging-x"), str(tmp_path / "out" / "scans")
    keys = to_decode["key"]
    chunks = decode.chunk_plan(keys, 2)
    for part, chunk in enumerate(chunks):
        write.write_staged(decoded.iloc[chunk], staging=staging, partition=part)
    write.write_staged(decoded.iloc[chunks[0]], staging=staging, partition=0)  # a retried task
    written = sum(write.finalize_part(part, units, staging=staging, scans=scans, dataset="lgg")
                  for part in range(len(chunks)))
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


def _pixels(paths, size):
    return pd.DataFrame({"path": paths, "image": [bytes([i % 251]) * size for i in range(len(paths))],
                         "mask": [None if i % 3 == 0 else b"m%d" % i for i in range(len(paths))]})


def test_staging_writer_appends_batches_and_publishes_whole(tmp_path):
    staging = str(tmp_path / "_staging-r")
    first, second = _pixels([f"file:/a/{i}.tif" for i in range(5)], 100), _pixels(["file:/b/0.tif"], 7)
    empty = first.iloc[:0]
    nothing = pd.DataFrame({"path": ["file:/c/bad.tif"], "image": [None], "mask": [None]})  # a failed decode
    writer = write.StagingWriter(staging, 3)
    for frame in (first, empty, nothing, second):
        writer.write(frame)
    assert sorted(p.name for p in (tmp_path / "_staging-r").iterdir())[0].startswith(".part-00003.arrow.")  # hidden temporary
    assert not (tmp_path / "_staging-r" / "part-00003.arrow").exists()  # not visible before close
    writer.close()
    assert [p.name for p in (tmp_path / "_staging-r").iterdir()] == ["part-00003.arrow"]
    table = write.read_staged(staging, 3)
    assert table.schema == write.STAGED_SCHEMA
    assert table.column("path").to_pylist() == [*first["path"], *second["path"]]
    assert table.column("image").to_pylist() == [*first["image"], *second["image"]]
    assert table.column("mask").to_pylist() == [*first["mask"], *second["mask"]]


def test_staging_writer_abort_and_exception_leave_nothing(tmp_path):
    staging = str(tmp_path / "_staging-r")
    writer = write.StagingWriter(staging, 0)
    writer.write(_pixels(["file:/a.tif"], 10))
    writer.abort()
    writer.abort()  # idempotent
    assert list((tmp_path / "_staging-r").iterdir()) == []
    with pytest.raises(RuntimeError, match="decode died"):
        with write.StagingWriter(staging, 1) as writer:
            writer.write(_pixels(["file:/a.tif"], 10))
            raise RuntimeError("decode died")
    assert list((tmp_path / "_staging-r").iterdir()) == []
    with pytest.raises(FileNotFoundError, match="part-00001.arrow"):
        write.read_staged(staging, 1)


def test_scan_files_store_pixels_plain_and_the_rest_snappy(tmp_path):
    table = pa.table({"scan_id": ["a", "b"], "image": [b"\x89PNG" * 50, b"\x89PNG" * 60], "mask": [None, b"m"]})
    target = tmp_path / "split=train" / "part-00000.parquet"
    write.write_parquet(table, str(target))
    assert [p.name for p in target.parent.iterdir()] == ["part-00000.parquet"]  # no temp file left
    metadata = pq.ParquetFile(target).metadata.row_group(0)
    chunks = {metadata.column(i).path_in_schema: metadata.column(i) for i in range(metadata.num_columns)}
    assert chunks["scan_id"].compression == "SNAPPY" and chunks["scan_id"].statistics is not None
    assert chunks["image"].compression == chunks["mask"].compression == "UNCOMPRESSED"
    assert chunks["image"].statistics is None
    assert pq.read_table(target).equals(table)


@pytest.mark.parametrize("positions, runs", [
    ([], []), ([4], [(4, 1)]), ([0, 1, 2], [(0, 3)]), ([0, 2, 3, 4, 9], [(0, 1), (2, 3), (9, 1)]),
    ([5, 6, 8, 9, 11], [(5, 2), (8, 2), (11, 1)])])
def test_runs_of_consecutive_rows(positions, runs):
    assert write._runs(np.array(positions, dtype="int64")) == runs


def test_read_ahead_reads_submitted_paths_concurrently_and_raises_their_errors():
    import threading
    import time

    lock, state = threading.Lock(), {"now": 0, "peak": 0, "calls": []}

    def read(path):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            state["calls"].append(path)
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        if path == "gone":
            raise FileNotFoundError(path)
        return path.encode()

    with decode.ReadAhead(read, threads=4) as reader:
        reader.submit(["a", "b", "c", "d", "gone"])
        reader.submit(["a"])  # already in flight: not read twice
        assert [reader.read(p) for p in "abcd"] == [b"a", b"b", b"c", b"d"]
        with pytest.raises(FileNotFoundError, match="gone"):
            reader.read("gone")
        assert reader.read("e") == b"e"  # never submitted: read when asked
    assert sorted(state["calls"]) == ["a", "b", "c", "d", "e", "gone"] and state["peak"] >= 3

    state["calls"].clear()
    with decode.ReadAhead(read, threads=1) as reader:  # no threads: submit is a no-op
        reader.submit(["x"])
        assert state["calls"] == [] and reader.read("x") == b"x"
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        decode.ReadAhead(read, threads=0)


def test_decode_frame_through_read_ahead_turns_a_failed_read_into_an_unreadable_row(tmp_path):
    data = tmp_path / "lgg"
    synthetic.write_lgg(data, patients=1, seed=4, image_size=24, slices_per_patient=(2, 2), duplicate_copy=False)
    root, paths = listing.list_local(str(data))
    parsed = listing.parse_listing(pd.DataFrame({"path": paths}), dataset="lgg", root=root)
    to_decode, _ = listing.plan_files(parsed)
    gone = to_decode["path"].iloc[0]
    (data / listing.relative_path(gone, root)).unlink()
    with decode.ReadAhead(decode.source_reader(), threads=3) as reader:
        reader.submit(to_decode["path"])
        decoded = decode.decode_frame(to_decode, dataset="lgg", image_size=16, read=reader.read)
    assert decoded.loc[decoded["path"] == gone, "reason"].tolist() == ["unreadable"]
    assert decoded.loc[decoded["path"] != gone, "reason"].isna().all()
