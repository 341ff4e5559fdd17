"""classeg.archive without network: URI parsing, local listing and fetching, the manifest on local folders."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from classeg.archive import OBJECT_COLUMNS, ObjectInfo, list_archive, objects_frame
from classeg.errors import ArchiveError, FetchError, error_kind
from classeg.io.files import fetch
from classeg.io.s3 import client as s3_client
from classeg.io.uri import Location as ArchiveLocation, parse_uri
from classeg.scoring.table import Manifest, mark_run_complete


# --------------------------------------------------------------------------------------------- parse_uri

@pytest.mark.parametrize("uri, expected", [
    ("s3://bucket/scans/2024", ArchiveLocation("s3", bucket="bucket", prefix="scans/2024")),
    ("s3://bucket/scans/", ArchiveLocation("s3", bucket="bucket", prefix="scans/")),
    ("s3://bucket", ArchiveLocation("s3", bucket="bucket", prefix="")),
    ("s3://bucket/", ArchiveLocation("s3", bucket="bucket", prefix="")),
    ("s3a://bucket/a b/c?d#e.png", ArchiveLocation("s3", bucket="bucket", prefix="a b/c?d#e.png")),
    ("S3://bucket/x", ArchiveLocation("s3", bucket="bucket", prefix="x")),
    ("file:///data/scans", ArchiveLocation("file", path="/data/scans")),
    ("file:///data/scans/", ArchiveLocation("file", path="/data/scans")),
    ("file://localhost/data/scans", ArchiveLocation("file", path="/data/scans")),
    ("file:///data/my%20scans/a%23b.png", ArchiveLocation("file", path="/data/my scans/a#b.png")),
    ("/data/scans/../scans", ArchiveLocation("file", path="/data/scans")),
    ("/data/scan:1.png", ArchiveLocation("file", path="/data/scan:1.png")),
    (Path("/data/scans"), ArchiveLocation("file", path="/data/scans")),
])
def test_parse_uri(uri, expected):
    assert parse_uri(uri) == expected


def test_parse_uri_relative_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_uri("scans/a") == ArchiveLocation("file", path=str(tmp_path / "scans" / "a"))


@pytest.mark.parametrize("uri", ["", "   ", "http://example.com/scans", "https://bucket.s3.amazonaws.com/x",
                                 "hdfs:///data", "gs://bucket/x", "s3:/bucket/x", "s3://", "s3:///key",
                                 "file://otherhost/data", "file:relative", None, 42])
def test_parse_uri_rejects(uri):
    with pytest.raises(ValueError) as info:
        parse_uri(uri)
    assert repr(uri) in str(info.value)


def test_location_uri_round_trip():
    for uri in ["s3://bucket/a b/c.png", "file:///data/my%20scans/a%23b.png"]:
        assert parse_uri(uri).uri == uri
    assert parse_uri("s3a://bucket/x").uri == "s3://bucket/x"
    assert parse_uri("s3://bucket/out").child("_manifest/a.parquet").uri == "s3://bucket/out/_manifest/a.parquet"
    assert parse_uri("s3://bucket").child("_runs/r.json").uri == "s3://bucket/_runs/r.json"
    assert parse_uri("/out").child("_runs/r.json").path == "/out/_runs/r.json"


# --------------------------------------------------------------------------------------------- local listing

def _write(path: Path, data: bytes, mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.fixture()
def archive(tmp_path) -> Path:
    root = tmp_path / "archive"
    _write(root / "b.png", b"bb", 1_700_000_000_000_000_000)
    _write(root / "a" / "x.mat", b"x" * 5, 1_700_000_001_000_000_000)
    _write(root / "a" / "deeper" / "y.tif", b"y" * 7, 1_700_000_002_500_000_000)
    _write(root / "a.png", b"a", 1_700_000_003_000_000_000)
    _write(root / "notes.txt", b"not an image")  # listed: it becomes an error row
    _write(root / ".DS_Store", b"hidden")
    _write(root / "a" / ".hidden.png", b"hidden")
    _write(root / ".git" / "config", b"hidden folder")
    return root


def test_local_listing_keys_in_s3_order_without_hidden_files(archive):
    objects = list(list_archive(archive))
    # S3 lists in binary key order: "a.png" < "a/..." because "." < "/".
    assert [info.key for info in objects] == ["a.png", "a/deeper/y.tif", "a/x.mat", "b.png", "notes.txt"]
    by_key = {info.key: info for info in objects}
    assert by_key["a/deeper/y.tif"] == ObjectInfo(
        uri=(archive / "a" / "deeper" / "y.tif").as_uri(), key="a/deeper/y.tif", size=7, etag=None,
        mtime=1_700_000_002.5, version="7-1700000002500000000")
    assert by_key["notes.txt"].size == len(b"not an image")


def test_local_listing_file_uri_and_suffixes(archive):
    keys = [info.key for info in list_archive(archive.as_uri(), suffixes=[".PNG", ".tif"])]
    assert keys == ["a.png", "a/deeper/y.tif", "b.png"]
    assert [info.key for info in list_archive(str(archive), suffixes=".mat")] == ["a/x.mat"]


def test_local_listing_single_file(archive):
    (info,) = list_archive(archive / "a" / "x.mat")
    assert (info.key, info.size, info.uri) == ("x.mat", 5, (archive / "a" / "x.mat").as_uri())


def test_local_version_changes_when_file_changes(archive):
    before = {info.key: info.version for info in list_archive(archive)}
    _write(archive / "b.png", b"bb", 1_700_000_009_000_000_000)  # same size, new mtime
    _write(archive / "a.png", b"a-longer", 1_700_000_003_000_000_000)  # same mtime, new size
    after = {info.key: info.version for info in list_archive(archive)}
    assert {key for key in before if before[key] != after[key]} == {"a.png", "b.png"}
    assert after["a.png"] == "8-1700000003000000000"


def test_local_listing_follows_symlinks_but_not_loops(tmp_path, archive):
    os.symlink(archive / "a", archive / "linked")
    os.symlink(archive, archive / "a" / "loop")  # a -> loop -> archive root: must not recurse forever
    os.symlink(tmp_path / "gone", archive / "broken.png")
    keys = [info.key for info in list_archive(archive)]
    assert keys == ["a.png", "a/deeper/y.tif", "a/x.mat", "b.png", "linked/deeper/y.tif", "linked/x.mat",
                    "notes.txt"]


def test_local_listing_errors_are_raised_at_call_time(tmp_path):
    with pytest.raises(ArchiveError, match="no such file or directory") as info:
        list_archive(tmp_path / "missing")  # not iterated: raised before any work
    assert str(tmp_path / "missing") in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert list(list_archive(empty)) == []


@pytest.mark.parametrize("suffixes", [[], [""], [".png", 3], 5])
def test_list_archive_rejects_bad_suffixes(archive, suffixes):
    with pytest.raises(ValueError, match="suffixes"):
        list_archive(archive, suffixes=suffixes)


def test_objects_frame(archive):
    frame = objects_frame(list_archive(archive))
    assert list(frame.columns) == list(OBJECT_COLUMNS)
    assert frame["key"].tolist() == ["a.png", "a/deeper/y.tif", "a/x.mat", "b.png", "notes.txt"]
    assert frame["size"].tolist()[:4] == [1, 7, 5, 2]
    assert frame["etag"].isna().all()
    assert str(frame["size"].dtype) == "int64" and str(frame["mtime"].dtype) == "float64"
    empty = objects_frame([])
    assert list(empty.columns) == list(OBJECT_COLUMNS) and len(empty) == 0
    assert str(empty["size"].dtype) == "int64"


# --------------------------------------------------------------------------------------------- local fetch

def test_fetch_local(archive):
    assert fetch(archive / "a" / "x.mat") == b"xxxxx"
    assert fetch((archive / "a" / "x.mat").as_uri(), max_bytes=5) == b"xxxxx"


def test_fetch_local_too_large_and_not_found(archive):
    with pytest.raises(FetchError) as info:
        fetch(archive / "a" / "x.mat", max_bytes=4)
    assert info.value.kind == "too_large"
    assert str(info.value) == "too_large: 5 bytes, more than max_bytes=4"
    with pytest.raises(FetchError) as info:
        fetch(archive / "missing.png")
    assert info.value.kind == "not_found" and error_kind(str(info.value)) == "not_found"
    with pytest.raises(FetchError) as info:
        fetch(archive / "a")
    assert info.value.kind == "not_found"


@pytest.mark.parametrize("max_bytes", [-1, 1.5, "10", True])
def test_fetch_rejects_bad_max_bytes(archive, max_bytes):
    with pytest.raises(ValueError, match="max_bytes"):
        fetch(archive / "b.png", max_bytes=max_bytes)


def test_fetch_error_kind_is_checked():
    with pytest.raises(ValueError, match="'timeout'"):
        FetchError("timeout", "x")
    assert error_kind("fetch_failed: 6 attempts, last error ...") == "fetch_failed"
    assert error_kind("undecodable: cannot identify image") == "undecodable"
    assert error_kind(None) is None


# --------------------------------------------------------------------------------------------- s3 settings

@pytest.fixture()
def offline_aws(monkeypatch):
    """Building a client resolves credentials: take dummy ones from the environment, never probe the network."""
    from s3util import aws_test_env

    for name, value in aws_test_env().items():
        monkeypatch.setenv(name, value)


def test_s3_client_settings_are_validated_and_cached(offline_aws):
    cfg = {"endpoint_url": "http://127.0.0.1:9", "max_attempts": 3}
    client = s3_client(cfg)
    assert client is s3_client(dict(cfg))
    assert client is not s3_client({**cfg, "read_timeout": 7})
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert client.meta.config.read_timeout == 30 and client.meta.config.connect_timeout == 5
    assert s3_client({"s3": cfg}) is client  # a whole config's dict works too


@pytest.mark.parametrize("cfg, message", [
    ({"max_attempts": 0}, "s3.max_attempts"),
    ({"max_attempts": 2.5}, "s3.max_attempts"),
    ({"backoff_seconds": -1}, "s3.backoff_seconds"),
    ({"read_timeout": 0}, "s3.read_timeout"),
    ({"endpoint_url": "127.0.0.1:5000"}, "s3.endpoint_url"),
    ({"endpont_url": "http://x"}, "endpont_url"),
    (["endpoint_url"], "s3 settings must be a mapping"),
])
def test_s3_client_rejects_bad_settings(cfg, message):
    with pytest.raises(ValueError, match=message):
        s3_client(cfg)


def test_s3_client_accepts_config_object(offline_aws):
    from classeg.config import load_config

    cfg = load_config(overrides=["s3.endpoint_url=http://127.0.0.1:9", "s3.max_attempts=2"])
    assert s3_client(cfg).meta.endpoint_url == "http://127.0.0.1:9"
    assert s3_client(cfg.s3) is s3_client(cfg)


# --------------------------------------------------------------------------------------------- manifest

def _scored(objects, *, errors: dict[str, str] | None = None) -> pd.DataFrame:
    """A minimal scores frame: every object ok except keys mapped to an error text."""
    errors = errors or {}
    return pd.DataFrame({
        "uri": [info.uri for info in objects],
        "version": [info.version for info in objects],
        "status": ["error" if info.key in errors else "ok" for info in objects],
        "error": [errors.get(info.key) for info in objects],
        "label": [0] * len(objects),
    })


def test_manifest_incremental_runs(tmp_path, archive):
    output = tmp_path / "scores"
    manifest = Manifest.load(output)
    assert len(manifest) == 0
    first = list(list_archive(archive))
    assert manifest.pending(first) == first

    written = manifest.record("run-1", _scored(first))
    assert written.startswith((output / "_manifest").as_uri() + "/run-1-") and written.endswith(".parquet")
    assert Manifest.load(output).pending(list_archive(archive)) == []
    assert manifest.pending(first) == []  # the in-memory manifest knows too

    _write(archive / "new1.png", b"1")
    _write(archive / "a" / "new2.png", b"22")
    _write(archive / "b.png", b"bbb")  # changed: new size, so new version
    second = list(list_archive(archive))
    pending = Manifest.load(output).pending(second)
    assert [info.key for info in pending] == ["a/new2.png", "b.png", "new1.png"]

    # The DataFrame form gives the same rows.
    frame = Manifest.load(output).pending(objects_frame(second))
    assert frame["key"].tolist() == ["a/new2.png", "b.png", "new1.png"]
    assert list(frame.index) == [0, 1, 2]


def test_manifest_retries_fetch_failed_but_not_permanent_errors(tmp_path, archive):
    output = tmp_path / "scores"
    objects = list(list_archive(archive))
    errors = {"notes.txt": "undecodable: cannot identify image file",
              "a.png": "fetch_failed: 6 attempts, last error ClientError: SlowDown",
              "b.png": "too_large: 70000000 bytes, more than max_bytes=67108864"}
    Manifest.load(output).record("run-1", _scored(objects, errors=errors))
    pending = Manifest.load(output).pending(list_archive(archive))
    assert [info.key for info in pending] == ["a.png"]
    table = pq.read_table(next((output / "_manifest").glob("*.parquet")))
    assert table.column_names == ["uri", "version", "status", "run_id", "recorded_at"]
    assert table.num_rows == 4 and set(table.column("run_id").to_pylist()) == {"run-1"}

    # The retry succeeds in run 2: nothing is pending afterwards.
    Manifest.load(output).record("run-2", _scored(pending))
    assert Manifest.load(output).pending(list_archive(archive)) == []
    assert len(list((output / "_manifest").glob("*.parquet"))) == 2


def test_manifest_error_rows_without_reason_are_retried(tmp_path, archive):
    objects = list(list_archive(archive))[:2]
    scored = _scored(objects)
    scored.loc[0, "status"] = "error"
    manifest = Manifest.load(tmp_path / "out")
    manifest.record("r1", scored)
    assert manifest.pending(objects) == objects[:1]


def test_manifest_record_nothing_done_writes_nothing(tmp_path, archive):
    objects = list(list_archive(archive))[:1]
    output = tmp_path / "out"
    assert Manifest.load(output).record("r1", _scored(objects, errors={"a.png": "fetch_failed: x"})) is None
    assert not (output / "_manifest").exists()


@pytest.mark.parametrize("run_id, scored, message", [
    ("bad/id", None, "run_id"),
    ("", None, "run_id"),
    ("r1", pd.DataFrame({"uri": ["u"], "version": ["v"]}), "status"),
    ("r1", pd.DataFrame({"uri": ["u"], "version": ["v"], "status": ["failed"]}), "'failed'"),
    ("r1", pd.DataFrame({"uri": ["u"], "version": ["v"], "status": ["error"]}), "'error' column"),
    ("r1", pd.DataFrame({"uri": ["u"], "version": [None], "status": ["ok"]}), "null"),
    ("r1", [("u", "v", "ok")], "DataFrame"),
])
def test_manifest_record_rejects(tmp_path, run_id, scored, message):
    if scored is None:
        scored = pd.DataFrame({"uri": ["u"], "version": ["v"], "status": ["ok"]})
    with pytest.raises(ValueError, match=message):
        Manifest.load(tmp_path / "out").record(run_id, scored)
    assert not (tmp_path / "out" / "_manifest").exists()


def test_manifest_pending_rejects_bad_input(tmp_path):
    manifest = Manifest.load(tmp_path / "out")
    with pytest.raises(ValueError, match="version"):
        manifest.pending(pd.DataFrame({"uri": ["u"]}))
    with pytest.raises(ValueError, match="ObjectInfo"):
        manifest.pending(["file:///x"])


def test_manifest_ignores_hidden_temporaries_and_names_corrupt_files(tmp_path, archive):
    output = tmp_path / "out"
    objects = list(list_archive(archive))
    Manifest.load(output).record("r1", _scored(objects))
    _write(output / "_manifest" / ".r2-partial.parquet.tmp", b"half a file")  # a crashed write
    assert len(Manifest.load(output)) == len(objects)
    _write(output / "_manifest" / "r3-broken.parquet", b"not parquet")
    with pytest.raises(ArchiveError, match="r3-broken.parquet"):
        Manifest.load(output)


def test_manifest_pending_scales_to_many_rows(tmp_path):
    """pending and record are vectorised: 300k listed objects against 200k recorded (about a second)."""
    count = 300_000
    frame = pd.DataFrame({"uri": [f"s3://b/scans/{index:07d}.png" for index in range(count)],
                          "version": [f"{index:032x}" for index in range(count)]})
    manifest = Manifest.load(tmp_path / "out")
    manifest.record("r1", frame.iloc[:200_000].assign(status="ok"))
    pending = Manifest.load(tmp_path / "out").pending(frame)
    assert len(pending) == 100_000 and pending["uri"].iloc[0] == "s3://b/scans/0200000.png"


def test_mark_run_complete(tmp_path):
    import numpy as np

    output = tmp_path / "scores"
    assert Manifest.load(output).completed_runs() == {}
    uri = mark_run_complete(output, run_date="2024-05-01", run_id="r1",
                            summary={"scored": np.int64(10), "errors": 1, "error_rate": np.float32(0.1)})
    assert uri == (output / "_runs" / "r1.json").as_uri()
    marker = json.loads((output / "_runs" / "r1.json").read_text())
    assert marker["summary"] == {"scored": 10, "errors": 1, "error_rate": pytest.approx(0.1)}
    assert marker["run_date"] == "2024-05-01"
    import datetime as dt
    mark_run_complete(output.as_uri(), run_date=dt.date(2024, 5, 2), run_id="r2", summary={})
    runs = Manifest.load(output).completed_runs()
    assert list(runs) == ["r1", "r2"] and runs["r2"]["run_date"] == "2024-05-02"


@pytest.mark.parametrize("kwargs, message", [
    ({"run_date": "2024-13-01"}, "run_date"),
    ({"run_date": "20240501"}, "run_date"),
    ({"run_id": "../escape"}, "run_id"),
    ({"summary": {"bad": object()}}, "JSON"),
    ({"summary": ["x"]}, "summary"),
])
def test_mark_run_complete_rejects(tmp_path, kwargs, message):
    arguments = {"run_date": "2024-05-01", "run_id": "r1", "summary": {}} | kwargs
    with pytest.raises(ValueError, match=message):
        mark_run_complete(tmp_path / "out", **arguments)
    assert not (tmp_path / "out" / "_runs" / "r1.json").exists()


def test_inventory_csv_keys_are_url_decoded_as_unquote_plus_decodes_them():
    """AWS URL-encodes CSV inventory keys (a space as +): every chunk, plain keys, encoded ones and nulls."""
    from urllib.parse import quote_plus, unquote_plus

    import pyarrow as pa

    from classeg.inventory import _decoded_keys

    names = ["scans/p0/s000.png", "scans/with space+plus.png", "scans/100%/ünïcode.dcm", "a/b%2Fc", None, "x+y"]
    encoded = [quote_plus(name, safe="/") if name is not None and "%2F" not in name else name for name in names]
    chunks = pa.chunked_array([encoded[:2], encoded[2:4], encoded[4:]], type=pa.string())
    assert _decoded_keys(chunks).to_pylist() == [None if e is None else unquote_plus(e) for e in encoded]
    assert _decoded_keys(chunks).to_pylist()[:3] == names[:3]
    plain = pa.chunked_array([["a/b.png", "c/d.dcm"]])
    assert _decoded_keys(plain).to_pylist() == ["a/b.png", "c/d.dcm"]
