"""classeg.io without network: locations, settings, atomic local writes, delete and list."""
from __future__ import annotations

import os

import pytest

from classeg.errors import ArchiveError
from classeg.io import files
from classeg.io.s3 import S3Settings
from classeg.io.uri import Location, as_s3, is_s3, join, parse_uri


@pytest.mark.parametrize("uri, spark_uri", [
    ("s3://bucket/out/scans", "s3://bucket/out/scans"),
    ("s3a://bucket/out/", "s3a://bucket/out"),
    ("file:///data/my%20scans", "file:///data/my scans"),
    ("file:/data/run_date=2026-01-02", "file:///data/run_date=2026-01-02"),
    ("/data/x", "file:///data/x"),
])
def test_spark_uri_keeps_the_users_filesystem(uri, spark_uri):
    assert parse_uri(uri).spark_uri == spark_uri


def test_location_forms():
    location = parse_uri("s3a://bucket/a/b.png")
    assert location == Location("s3", bucket="bucket", prefix="a/b.png")
    assert (location.uri, location.key, location.is_s3) == ("s3://bucket/a/b.png", "a/b.png", True)
    assert parse_uri(location) is location
    assert parse_uri("s3a://bucket/a").child("b").spark_uri == "s3a://bucket/a/b"
    assert parse_uri("relative/x").path == os.path.abspath("relative/x")
    assert join("s3://b/out/", "scans", "/part-0.parquet") == "s3://b/out/scans/part-0.parquet"
    assert (is_s3("s3n://b/k"), is_s3("/tmp/s3://x"), is_s3("file:///x")) == (True, False, False)
    assert as_s3("s3a://b/k") == "s3://b/k"
    with pytest.raises(ValueError, match="expected an s3://"):
        as_s3("/local")
    with pytest.raises(ValueError, match="unsupported URI scheme 'hdfs'"):
        parse_uri("hdfs://nn/x")


def test_settings_defaults_match_the_embedded_config():
    from classeg.config import load_config

    assert S3Settings() == S3Settings.of(None) == S3Settings.of(load_config())
    assert S3Settings.of({"max_attempts": 2}).max_attempts == 2
    assert S3Settings.of({"max_attempts": 2}).read_timeout == S3Settings().read_timeout
    with pytest.raises(ValueError, match=r"unknown s3 settings \['regoin'\]"):
        S3Settings.of({"regoin": "x"})
    with pytest.raises(ValueError, match="s3.connect_timeout"):
        S3Settings(connect_timeout=0)


def test_atomic_write_replaces_whole_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "deep" / "file.bin"
    files.write_bytes(target, b"one")
    files.write_bytes(str(target), b"two")
    assert files.read_bytes(target) == b"two"
    with pytest.raises(RuntimeError):
        with files.atomic_local_file(target) as temporary:
            with open(temporary, "wb") as handle:
                handle.write(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"two"
    assert sorted(os.listdir(target.parent)) == ["file.bin"]  # no temporary left behind


def test_read_missing_and_unwritable(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        files.read_bytes(tmp_path / "absent")
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file, not a folder")
    with pytest.raises(ArchiveError, match="cannot write"):
        files.write_bytes(blocker / "x", b"data")


def test_delete_and_list(tmp_path):
    for name in ("a/1.json", "a/b/2.json", "a/.hidden.json", "a/.tmp/3.json", "a/4.txt"):
        files.write_text(tmp_path / name, "{}")
    listed = [location.path for location in files.list_files(tmp_path / "a", suffix=".json")]
    assert listed == [str(tmp_path / "a/1.json"), str(tmp_path / "a/b/2.json")]
    assert files.list_files(tmp_path / "missing") == []
    assert files.exists(tmp_path / "a/4.txt")
    assert files.delete(tmp_path / "a/4.txt") == 1
    assert files.delete(tmp_path / "a") == 4
    assert files.delete(tmp_path / "a") == 0
    assert not files.exists(tmp_path / "a")
