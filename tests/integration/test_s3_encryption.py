"""``s3.sse``/``s3.kms_key_id`` and ``s3.expected_bucket_owner`` on the S3 requests classeg makes itself, against a
real S3-compatible server (moto, server mode, 127.0.0.1; fixtures ``s3`` and ``moto_endpoint`` from
tests/conftest.py). moto keeps the encryption a PUT or multipart upload asked for and reports it on HEAD, so
each test lists the bucket and checks every object in it."""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from classeg.errors import ArchiveError
from classeg.io import files
from classeg.io import s3 as s3io
from s3util import test_s3_cfg

MOTO_ACCOUNT = "123456789012"  # the account moto's buckets belong to
OTHER_ACCOUNT = "111122223333"
KEY_ARN = f"arn:aws:kms:us-east-1:{MOTO_ACCOUNT}:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
RUN_ID = "2026-01-02T03-00Z"


def _bucket(s3, name: str) -> str:
    s3.create_bucket(Bucket=name)
    return name


def _encryption_of_every_object(s3, bucket: str) -> dict[str, tuple[str | None, str | None]]:
    keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", ())]
    heads = {key: s3.head_object(Bucket=bucket, Key=key) for key in keys}
    return {key: (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")) for key, head in heads.items()}


def _tiny_model():
    import torch

    class Tiny(torch.nn.Linear):
        def describe(self) -> dict:
            return {"arch": "tiny"}

    return Tiny(4, 2)


def _write_what_a_run_writes(output: str, cfg: dict) -> None:
    """One object of each kind classeg writes through classeg.io: a summary, a model artifact (weights and
    model.json), a training checkpoint, a manifest file and a run marker."""
    from classeg.artifact import save_artifact
    from classeg.scoring.table import Manifest, mark_run_complete
    from classeg.training import checkpoints

    files.write_text(f"{output}/tables/scans/_summary.json", '{"rows": 1}', s3_cfg=cfg)
    spec = {"size": 2, "channels": 1, "mean": [0.0], "std": [1.0], "zscore": False}
    save_artifact(f"{output}/model", model=_tiny_model(), task="classify", class_names=["no_tumor", "tumor"],
                  input_spec=spec, s3_cfg=cfg)
    checkpoints.save(f"{output}/runs/r1/checkpoints/last.pt", {"epoch": 1}, s3_cfg=cfg)
    scored = pd.DataFrame({"uri": ["s3://archive/scans/a.dcm"], "version": ["etag-1"], "status": ["ok"]})
    Manifest.load(f"{output}/scores", s3_cfg=cfg).record(RUN_ID, scored)
    mark_run_complete(f"{output}/scores", run_date=dt.date(2026, 1, 2), run_id=RUN_ID, summary={"ok": 1},
                      s3_cfg=cfg)


@pytest.mark.parametrize("sse, key, expected", [
    pytest.param("none", None, (None, None), id="none"),  # moto adds none itself: what is seen comes from classeg
    pytest.param("AES256", None, ("AES256", None), id="sse-s3"),
    pytest.param("aws:kms", KEY_ARN, ("aws:kms", KEY_ARN), id="sse-kms-key"),
    pytest.param("aws:kms", None, ("aws:kms", None), id="sse-kms-aws-managed"),
])
def test_every_object_classeg_writes_has_the_configured_encryption(s3, moto_endpoint, sse, key, expected):
    bucket = _bucket(s3, f"encrypted-{sse.replace(':', '-').lower()}-{'key' if key else 'nokey'}")
    _write_what_a_run_writes(f"s3://{bucket}/out", test_s3_cfg(moto_endpoint, sse=sse, kms_key_id=key))

    found = _encryption_of_every_object(s3, bucket)
    manifest = [name for name in found if name.startswith(f"out/scores/_manifest/{RUN_ID}-")]
    assert len(manifest) == 1 and manifest[0].endswith(".parquet")
    assert sorted(set(found) - set(manifest)) == [
        "out/model/model.json", "out/model/weights.pt", "out/runs/r1/checkpoints/last.pt",
        f"out/scores/_runs/{RUN_ID}.json", "out/tables/scans/_summary.json"]
    assert found == {name: expected for name in found}


def test_wheelhouse_uploads_single_and_multipart_are_encrypted(s3, moto_endpoint, tmp_path):
    """`classeg emr wheelhouse` uploads with boto3's managed transfer through classeg.emr.aws's client: a
    small file is one PutObject, one over 8 MiB a multipart upload whose CreateMultipartUpload carries it."""
    from classeg.config import load_config
    from classeg.emr import aws, wheelhouse

    bucket = _bucket(s3, "encrypted-wheelhouse")
    cfg = load_config(overrides=[f"s3.endpoint_url={moto_endpoint}", "s3.sse=aws:kms", f"s3.kms_key_id={KEY_ARN}",
                                 f"s3.expected_bucket_owner={MOTO_ACCOUNT}"])
    (tmp_path / "MANIFEST.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "torch-0-py3-none-any.whl").write_bytes(b"\0" * (9 * 1024 * 1024))
    uploaded = wheelhouse.upload(tmp_path, f"s3://{bucket}/wheelhouse", aws.client(cfg, "s3"))

    assert uploaded == [f"s3://{bucket}/wheelhouse/MANIFEST.json",
                        f"s3://{bucket}/wheelhouse/torch-0-py3-none-any.whl"]
    assert s3.head_object(Bucket=bucket, Key="wheelhouse/torch-0-py3-none-any.whl")["ETag"].endswith('-2"')
    assert _encryption_of_every_object(s3, bucket) == {
        "wheelhouse/MANIFEST.json": ("aws:kms", KEY_ARN), "wheelhouse/torch-0-py3-none-any.whl": ("aws:kms", KEY_ARN)}


class _Headers:
    """A botocore ``before-send`` hook on one client recording each request's operation and headers."""

    def __init__(self, client):
        self.client, self.sent = client, []

    def __enter__(self):
        self.client.meta.events.register("before-send.s3", self._record, unique_id="test-record-headers")
        return self

    def __exit__(self, *exc):
        self.client.meta.events.unregister("before-send.s3", unique_id="test-record-headers")

    def _record(self, request, event_name, **_):
        headers = {name.lower(): value.decode() if isinstance(value, bytes) else value
                   for name, value in request.headers.items()}
        self.sent.append((event_name.rsplit(".", 1)[-1], headers))


def test_every_request_carries_the_expected_bucket_owner(s3, moto_endpoint):
    """moto does not check x-amz-expected-bucket-owner (AWS answers a mismatch with 403): the test checks that
    every request classeg sends carries it, and that with the right owner everything works."""
    from classeg.archive import list_archive

    bucket = _bucket(s3, "owner-headers")
    settings = s3io.S3Settings.of(test_s3_cfg(moto_endpoint, sse="AES256", expected_bucket_owner=MOTO_ACCOUNT))
    with _Headers(s3io.client(settings)) as recorded:
        files.write_bytes(f"s3://{bucket}/scans/a.png", b"png", s3_cfg=settings)
        assert files.read_bytes(f"s3://{bucket}/scans/a.png", s3_cfg=settings) == b"png"
        assert files.exists(f"s3://{bucket}/scans/a.png", s3_cfg=settings)
        uri = f"s3://{bucket}/scans/a.png"
        assert [item.uri for item in list_archive(uri, s3_cfg=settings)] == [uri]
        assert [item.uri for item in files.list_files(f"s3://{bucket}/scans", s3_cfg=settings)] == [uri]
        assert files.delete(f"s3://{bucket}/scans", s3_cfg=settings) == 1

    operations = [operation for operation, _ in recorded.sent]
    assert set(operations) == {"PutObject", "GetObject", "HeadObject", "ListObjectsV2", "DeleteObjects"}
    assert [headers.get("x-amz-expected-bucket-owner") for _, headers in recorded.sent] == [MOTO_ACCOUNT] * len(
        operations)
    encrypted = {operation for operation, headers in recorded.sent if "x-amz-server-side-encryption" in headers}
    assert encrypted == {"PutObject"}


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data


def test_a_bucket_of_another_account_is_a_clear_error(s3, moto_endpoint):
    """AWS refuses a request whose x-amz-expected-bucket-owner is not the bucket's owner with 403 AccessDenied.
    moto does not, so a hook in front of the moto server answers as AWS does, for requests naming another
    account than moto's; the requests themselves are classeg's, unchanged."""
    import botocore.awsrequest

    bucket = _bucket(s3, "owner-mismatch")
    s3.put_object(Bucket=bucket, Key="scans/a.png", Body=b"png")
    denied = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"

    def as_aws_answers(request, **_):
        if request.headers.get("x-amz-expected-bucket-owner", MOTO_ACCOUNT.encode()) not in (
                MOTO_ACCOUNT, MOTO_ACCOUNT.encode()):
            return botocore.awsrequest.AWSResponse(request.url, 403, {"Content-Type": "application/xml"},
                                                   _Body(denied))
        return None

    settings = s3io.S3Settings.of(test_s3_cfg(moto_endpoint, expected_bucket_owner=OTHER_ACCOUNT))
    client = s3io.client(settings)
    client.meta.events.register("before-send.s3", as_aws_answers, unique_id="test-as-aws-answers")
    hint = rf"not owned by account {OTHER_ACCOUNT} \(s3.expected_bucket_owner\)"
    try:
        with pytest.raises(ArchiveError, match=rf"cannot read s3://{bucket}/scans/a.png: fetch_failed: 1 attempt, "
                                               rf"last error AccessDenied: .*{hint}"):
            files.read_bytes(f"s3://{bucket}/scans/a.png", s3_cfg=settings)
        with pytest.raises(ArchiveError, match=rf"cannot use s3://{bucket}/out.json: access denied \(AccessDenied\)"
                                               rf".*{hint}"):
            files.write_bytes(f"s3://{bucket}/out.json", b"{}", s3_cfg=settings)
        with pytest.raises(ArchiveError, match=rf"cannot use s3://{bucket}/scans: access denied.*{hint}"):
            files.list_files(f"s3://{bucket}/scans", s3_cfg=settings)
    finally:
        client.meta.events.unregister("before-send.s3", unique_id="test-as-aws-answers")
    right = s3io.S3Settings.of(test_s3_cfg(moto_endpoint, expected_bucket_owner=MOTO_ACCOUNT))
    assert files.read_bytes(f"s3://{bucket}/scans/a.png", s3_cfg=right) == b"png"
    assert "out.json" not in {item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]}

