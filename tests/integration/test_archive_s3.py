"""classeg.archive against a real S3-compatible server (moto, server mode, 127.0.0.1), directly and through a
proxy that injects S3 errors and dropped connections."""
from __future__ import annotations

import hashlib
import random
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from classeg.archive import list_archive, objects_frame
from classeg.errors import ArchiveError, FetchError
from classeg.io.files import fetch
from classeg.scoring.table import Manifest, mark_run_complete
from s3util import FaultProxy, put_objects, test_s3_cfg


# moto_endpoint and s3 (a moto S3 server on 127.0.0.1 and a client) come from tests/conftest.py.


def _bucket(s3, name: str) -> str:
    s3.create_bucket(Bucket=name)
    return name


def _payloads(count: int, *, seed: int, low: int = 1, high: int = 64 * 1024) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(low, high)) for _ in range(count)]


# --------------------------------------------------------------------------------------------- listing

def test_list_paginates_with_sizes_and_etags(s3, moto_endpoint):
    bucket = _bucket(s3, "archive-listing")
    objects = {f"scans/{index:05d}.png": bytes([index % 251]) * (index % 37) for index in range(1100)}
    extra = {"scans2/not-in-prefix.png": b"x", "other/x.png": b"y", "scans/folder/": b"",
             "scans/.DS_Store": b"mac", "scans/sub/.hidden/z.png": b"z", "scans/sub/deep.mat": b"mat"}
    put_objects(s3, bucket, {**objects, **extra}, threads=8)
    expected = {**objects, "scans/sub/deep.mat": b"mat"}

    # Through the proxy with faults on: listing requests are not object GETs and pass unharmed; counting them
    # shows the listing really took two pages.
    with FaultProxy(moto_endpoint, fail_rate=0.5, drop_rate=0.2) as proxy:
        listed = list(list_archive(f"s3a://{bucket}/scans", s3_cfg=test_s3_cfg(proxy.endpoint_url)))
        assert proxy.forwarded["GET"] == 2 and proxy.faults_injected == 0

    assert [info.key for info in listed] == sorted(key[len("scans/"):] for key in expected)
    for info in listed:
        data = expected["scans/" + info.key]
        assert info.uri == f"s3://{bucket}/scans/{info.key}"
        assert info.size == len(data)
        assert info.etag == hashlib.md5(data).hexdigest() == info.version
        assert info.mtime > 1.7e9
    frame = objects_frame(listed)
    assert len(frame) == 1101 and frame["size"].sum() == sum(len(data) for data in expected.values())

    pngs = list(list_archive(f"s3://{bucket}/scans/", s3_cfg=test_s3_cfg(moto_endpoint), suffixes=[".mat"]))
    assert [info.key for info in pngs] == ["sub/deep.mat"]
    (single,) = list_archive(f"s3://{bucket}/scans/00007.png", s3_cfg=test_s3_cfg(moto_endpoint))
    assert (single.key, single.size, single.uri) == ("00007.png", 7, f"s3://{bucket}/scans/00007.png")


def test_missing_bucket_and_empty_prefix_raise_before_any_work(s3, moto_endpoint):
    cfg = test_s3_cfg(moto_endpoint)
    with pytest.raises(ArchiveError, match="bucket 'no-such-bucket' does not exist") as info:
        list_archive("s3://no-such-bucket/scans", s3_cfg=cfg)  # not iterated
    assert "s3://no-such-bucket/scans" in str(info.value)
    bucket = _bucket(s3, "archive-empty")
    put_objects(s3, bucket, {"scans/a.png": b"a"})
    with pytest.raises(ArchiveError, match="no objects under this prefix") as info:
        list_archive(f"s3://{bucket}/scnas", s3_cfg=cfg)
    assert f"s3://{bucket}/scnas" in str(info.value)
    with pytest.raises(ArchiveError, match="no-such-bucket"):
        Manifest.load("s3://no-such-bucket/scores", s3_cfg=cfg)


def test_unreachable_endpoint_is_retried_then_raised(moto_endpoint):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = test_s3_cfg(f"http://127.0.0.1:{port}", max_attempts=2)
    with pytest.raises(ArchiveError, match="2 attempts.*EndpointConnectionError"):
        list_archive("s3://any-bucket/scans", s3_cfg=cfg)


# --------------------------------------------------------------------------------------------- fetching

def test_fetch_through_faults_returns_identical_bytes(s3, moto_endpoint):
    bucket = _bucket(s3, "archive-faults")
    objects = {f"scans/{index:02d}.mat": data for index, data in enumerate(_payloads(30, seed=1))}
    put_objects(s3, bucket, objects)
    with FaultProxy(moto_endpoint, fail_rate=0.3, drop_rate=0.1, seed=0, max_faults_per_key=3) as proxy:
        cfg = test_s3_cfg(proxy.endpoint_url, max_attempts=6)
        listed = list(list_archive(f"s3://{bucket}/scans", s3_cfg=cfg))
        with ThreadPoolExecutor(max_workers=4) as pool:  # tasks share the per-process client
            fetched = list(pool.map(lambda info: fetch(info.uri, s3_cfg=cfg), listed))
        injected = dict(proxy.injected)
        attempts = sum(proxy.get_attempts.values())
    assert {f"scans/{info.key}": data for info, data in zip(listed, fetched)} == objects
    assert set(injected) == {"slowdown", "internal_error", "drop_before_response", "drop_mid_body"}
    # Every fault cost exactly one more request; the exact attempt count is checked in the next test.
    assert attempts == len(objects) + sum(injected.values())


def test_always_failing_key_gives_fetch_failed_after_max_attempts(s3, moto_endpoint):
    bucket = _bucket(s3, "archive-always-fail")
    put_objects(s3, bucket, {"scans/bad.png": b"bad", "scans/good.png": b"good"})
    with FaultProxy(moto_endpoint, fail_rate=0, drop_rate=0, always_fail_keys={"scans/bad.png"}) as proxy:
        cfg = test_s3_cfg(proxy.endpoint_url, max_attempts=4)
        with pytest.raises(FetchError) as info:
            fetch(f"s3://{bucket}/scans/bad.png", s3_cfg=cfg)
        assert fetch(f"s3://{bucket}/scans/good.png", s3_cfg=cfg) == b"good"
        assert proxy.attempts(bucket, "scans/bad.png") == 4
        assert proxy.attempts(bucket, "scans/good.png") == 1
    error = info.value
    assert (error.kind, error.attempts, error.uri) == ("fetch_failed", 4, f"s3://{bucket}/scans/bad.png")
    assert str(error).startswith("fetch_failed: 4 attempts, last error ClientError")
    assert "SlowDown" in str(error)


def test_dropped_connections_and_read_timeouts_are_retried(s3, moto_endpoint):
    bucket = _bucket(s3, "archive-drops")
    put_objects(s3, bucket, {"a.png": b"a" * 50_000, "slow.png": b"s"})
    with FaultProxy(moto_endpoint, fail_rate=0, drop_rate=1.0, stall_keys={"slow.png"},
                    stall_seconds=2.0) as proxy:
        cfg = test_s3_cfg(proxy.endpoint_url, max_attempts=3, read_timeout=0.3)
        with pytest.raises(FetchError) as dropped:
            fetch(f"s3://{bucket}/a.png", s3_cfg=cfg)
        with pytest.raises(FetchError) as stalled:
            fetch(f"s3://{bucket}/slow.png", s3_cfg=cfg)
        assert proxy.attempts(bucket, "a.png") == 3 and proxy.attempts(bucket, "slow.png") == 3
    assert dropped.value.kind == "fetch_failed" and "3 attempts" in str(dropped.value)
    assert stalled.value.kind == "fetch_failed" and "ReadTimeoutError" in str(stalled.value)


def test_not_found_and_too_large_are_not_retried(s3, moto_endpoint):
    bucket = _bucket(s3, "archive-permanent")
    put_objects(s3, bucket, {"big.png": b"b" * 1000})
    with FaultProxy(moto_endpoint, fail_rate=0, drop_rate=0) as proxy:
        cfg = test_s3_cfg(proxy.endpoint_url)
        with pytest.raises(FetchError) as missing:
            fetch(f"s3://{bucket}/gone.png", s3_cfg=cfg)
        with pytest.raises(FetchError) as big:
            fetch(f"s3://{bucket}/big.png", s3_cfg=cfg, max_bytes=999)
        assert fetch(f"s3://{bucket}/big.png", s3_cfg=cfg, max_bytes=1000) == b"b" * 1000
        assert proxy.attempts(bucket, "gone.png") == 1 and proxy.attempts(bucket, "big.png") == 2
    assert missing.value.kind == "not_found" and "NoSuchKey" in str(missing.value)
    assert big.value.kind == "too_large" and "1000 bytes" in str(big.value)


# --------------------------------------------------------------------------------------------- manifest

def test_manifest_on_s3(s3, moto_endpoint):
    archive = _bucket(s3, "archive-incremental")
    output = _bucket(s3, "scores-out")
    cfg = test_s3_cfg(moto_endpoint)
    put_objects(s3, archive, {f"scans/{index}.png": bytes([index]) * (index + 1) for index in range(5)})
    output_uri = f"s3://{output}/scores"

    manifest = Manifest.load(output_uri, s3_cfg=cfg)
    first = objects_frame(list_archive(f"s3://{archive}/scans", s3_cfg=cfg))
    assert len(manifest) == 0 and len(manifest.pending(first)) == 5
    scored = first.assign(status="ok", error=None)
    scored.loc[scored["key"] == "4.png", ["status", "error"]] = ["error", "fetch_failed: 6 attempts, last error x"]
    written = manifest.record("2024-05-01T03-00Z", scored[["uri", "version", "status", "error"]])
    assert written.startswith(f"s3://{output}/scores/_manifest/2024-05-01T03-00Z-")
    mark_run_complete(output_uri, run_date="2024-05-01", run_id="2024-05-01T03-00Z", summary={"ok": 4},
                      s3_cfg=cfg)

    put_objects(s3, archive, {"scans/1.png": b"changed", "scans/9.png": b"new"})
    second = objects_frame(list_archive(f"s3://{archive}/scans", s3_cfg=cfg))
    reloaded = Manifest.load(output_uri, s3_cfg=cfg)
    assert len(reloaded) == 4
    assert reloaded.pending(second)["key"].tolist() == ["1.png", "4.png", "9.png"]
    assert reloaded.completed_runs()["2024-05-01T03-00Z"]["summary"] == {"ok": 4}

    keys = sorted(item["Key"] for item in s3.list_objects_v2(Bucket=output)["Contents"])
    assert keys[0].startswith("scores/_manifest/2024-05-01T03-00Z-") and keys[0].endswith(".parquet")
    assert keys[1:] == ["scores/_runs/2024-05-01T03-00Z.json"]

    s3.put_object(Bucket=output, Key="scores/_manifest/broken.parquet", Body=b"not parquet")
    with pytest.raises(ArchiveError, match="scores/_manifest/broken.parquet"):
        Manifest.load(output_uri, s3_cfg=cfg)



# --------------------------------------------------------------------------------------------- writes

def test_put_object_and_delete_objects_under_a_prefix_only(s3, moto_endpoint):
    """files.delete removes the object and everything below it as a folder, in batches of 1000, and nothing
    that merely shares the prefix as a string; files.write_bytes writes through the same retried calls."""
    from classeg.io.files import delete, write_bytes

    bucket = _bucket(s3, "archive-deletes")
    cfg = test_s3_cfg(moto_endpoint)
    doomed = {f"tables/lgg/scans/split=train/part-{index:05d}.parquet": b"p" for index in range(1003)}
    kept = {"tables/lgg-old/summary.json": b"{}", "tables/lgg.json": b"{}", "tables/other/x": b"x"}
    put_objects(s3, bucket, {**doomed, **kept}, threads=8)
    write_bytes(f"s3://{bucket}/tables/lgg", b"an object named like the folder", s3_cfg=cfg)
    assert fetch(f"s3://{bucket}/tables/lgg", s3_cfg=cfg) == b"an object named like the folder"

    assert delete(f"s3://{bucket}/tables/lgg/", s3_cfg=cfg) == len(doomed) + 1
    left = sorted(item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                  for item in page.get("Contents", ()))
    assert left == sorted(kept)
    assert delete(f"s3://{bucket}/tables/lgg", s3_cfg=cfg) == 0  # nothing there: no error
    with pytest.raises(ValueError, match="below the bucket"):
        delete(f"s3://{bucket}", s3_cfg=cfg)
    with pytest.raises(ValueError, match="one object"):
        write_bytes(f"s3://{bucket}/tables/", b"x", s3_cfg=cfg)
