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


# ------------------------------------------------------------------------------- encryption, bucket owner

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def test_encryption_settings_are_checked_where_the_config_is_loaded():
    from classeg.config import load_config
    from classeg.errors import ConfigError

    cfg = load_config(overrides=["s3.sse=aws:kms", f"s3.kms_key_id={KEY_ARN}",
                                 "s3.expected_bucket_owner=012345678901"])
    assert S3Settings.of(cfg) == S3Settings(sse="aws:kms", kms_key_id=KEY_ARN, expected_bucket_owner="012345678901")
    assert load_config(overrides=["s3.sse=aws:kms"]).s3.kms_key_id is None  # the AWS managed key aws/s3
    with pytest.raises(ConfigError, match=r"s3.kms_key_id is set but s3.sse is 'AES256'"):
        load_config(overrides=["s3.sse=AES256", f"s3.kms_key_id={KEY_ARN}"])
    with pytest.raises(ConfigError, match=r"s3.kms_key_id is set but s3.sse is 'none'"):
        load_config(overrides=[f"s3.kms_key_id={KEY_ARN}"])
    with pytest.raises(ConfigError, match=r"s3.sse must be one of \['none', 'AES256', 'aws:kms'\], got 'SSE-KMS'"):
        load_config(overrides=["s3.sse=SSE-KMS"])
    with pytest.raises(ConfigError, match=r"s3.expected_bucket_owner must be null or a 12-digit .* got '1234'"):
        load_config(overrides=["s3.expected_bucket_owner=1234"])


@pytest.mark.parametrize("kwargs, message", [
    ({"sse": "aws:kms:dsse"}, r"s3.sse must be one of \['none', 'AES256', 'aws:kms'\], got 'aws:kms:dsse'"),
    ({"sse": "AES256", "kms_key_id": KEY_ARN}, r"s3.kms_key_id is set but s3.sse is 'AES256'"),
    ({"sse": "aws:kms", "kms_key_id": " "}, r"s3.kms_key_id must be null or a KMS key id, ARN or alias, got ' '"),
    ({"expected_bucket_owner": 123456789012}, r"12-digit AWS account id .* got 123456789012"),
    ({"expected_bucket_owner": "12345678901a"}, r"12-digit AWS account id .* got '12345678901a'"),
])
def test_bad_encryption_settings_name_the_keys(kwargs, message):
    with pytest.raises(ValueError, match=message):
        S3Settings(**kwargs)


def _operation(name: str):
    import botocore.session

    return botocore.session.get_session().get_service_model("s3").operation_model(name)


OWNER = "111122223333"


@pytest.mark.parametrize("settings, operation, expected", [
    (S3Settings(), "PutObject", {}),
    (S3Settings(sse="AES256"), "PutObject", {"ServerSideEncryption": "AES256"}),
    (S3Settings(sse="aws:kms"), "CreateMultipartUpload", {"ServerSideEncryption": "aws:kms"}),
    (S3Settings(sse="aws:kms", kms_key_id=KEY_ARN), "PutObject",
     {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KEY_ARN}),
    (S3Settings(sse="aws:kms", kms_key_id=KEY_ARN), "UploadPart", {}),  # parts take the upload's encryption
    (S3Settings(sse="AES256"), "GetObject", {}),
    (S3Settings(expected_bucket_owner=OWNER), "GetObject", {"ExpectedBucketOwner": OWNER}),
    (S3Settings(expected_bucket_owner=OWNER), "HeadObject", {"ExpectedBucketOwner": OWNER}),
    (S3Settings(expected_bucket_owner=OWNER), "ListObjectsV2", {"ExpectedBucketOwner": OWNER}),
    (S3Settings(expected_bucket_owner=OWNER), "DeleteObjects", {"ExpectedBucketOwner": OWNER}),
    (S3Settings(sse="AES256", expected_bucket_owner=OWNER), "UploadPart", {"ExpectedBucketOwner": OWNER}),
    (S3Settings(sse="AES256", expected_bucket_owner=OWNER), "CopyObject",
     {"ServerSideEncryption": "AES256", "ExpectedBucketOwner": OWNER, "ExpectedSourceBucketOwner": OWNER}),
])
def test_request_args_follow_the_service_model(settings, operation, expected):
    from classeg.io.s3 import request_args

    assert request_args(settings, _operation(operation)) == expected


def test_the_client_sends_them_and_a_caller_value_wins(monkeypatch):
    """The factory's client adds the parameters before botocore serialises the request (checked on the signed
    request botocore would send, stopped before it leaves)."""
    from classeg.io.s3 import client
    from s3util import aws_test_env

    for name, value in aws_test_env().items():
        monkeypatch.setenv(name, value)

    class Stop(Exception):
        pass

    sent = []

    def capture(request, **_):
        sent.append(dict(request.headers))
        raise Stop

    s3 = client(S3Settings(endpoint_url="http://127.0.0.1:9", sse="aws:kms", kms_key_id=KEY_ARN,
                           expected_bucket_owner=OWNER, max_attempts=1))
    s3.meta.events.register("before-send.s3", capture, unique_id="test-capture")
    try:
        for call in (lambda: s3.put_object(Bucket="b", Key="k", Body=b"x"),
                     lambda: s3.put_object(Bucket="b", Key="k", Body=b"x", ServerSideEncryption="AES256"),
                     lambda: s3.get_object(Bucket="b", Key="k")):
            with pytest.raises(Stop):
                call()
    finally:
        s3.meta.events.unregister("before-send.s3", unique_id="test-capture")
    put, put_aes, get = ({k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in headers.items()}
                         for headers in sent)
    assert (put["x-amz-server-side-encryption"], put["x-amz-server-side-encryption-aws-kms-key-id"],
            put["x-amz-expected-bucket-owner"]) == ("aws:kms", KEY_ARN, OWNER)
    assert put_aes["x-amz-server-side-encryption"] == "AES256"
    assert get["x-amz-expected-bucket-owner"] == OWNER and "x-amz-server-side-encryption" not in get


@pytest.mark.parametrize("settings, expected", [
    (S3Settings(), {}),
    (S3Settings(expected_bucket_owner=OWNER), {}),
    (S3Settings(sse="AES256"), {"spark.hadoop.fs.s3a.encryption.algorithm": "AES256",
                                "spark.hadoop.fs.s3.enableServerSideEncryption": "true"}),
    (S3Settings(sse="aws:kms", kms_key_id=KEY_ARN), {
        "spark.hadoop.fs.s3a.encryption.algorithm": "SSE-KMS", "spark.hadoop.fs.s3a.encryption.key": KEY_ARN,
        "spark.hadoop.fs.s3.enableServerSideEncryption": "true",
        "spark.hadoop.fs.s3.serverSideEncryption.kms.keyId": KEY_ARN}),
    # S3A leaves the key out for aws/s3; EMRFS would fall back to SSE-S3 without one, so it names aws/s3.
    (S3Settings(sse="aws:kms"), {"spark.hadoop.fs.s3a.encryption.algorithm": "SSE-KMS",
                                 "spark.hadoop.fs.s3.enableServerSideEncryption": "true",
                                 "spark.hadoop.fs.s3.serverSideEncryption.kms.keyId": "alias/aws/s3"}),
])
def test_spark_s3_conf(settings, expected):
    from classeg.io.s3 import spark_s3_conf

    assert spark_s3_conf(settings) == expected


def test_spark_s3_conf_takes_a_config():
    from classeg.config import load_config
    from classeg.io.s3 import spark_s3_conf

    conf = spark_s3_conf(load_config(overrides=["s3.sse=AES256"]))
    assert conf["spark.hadoop.fs.s3a.encryption.algorithm"] == "AES256"
    with pytest.raises(ValueError, match="unknown s3 settings"):
        spark_s3_conf({"sse": "AES256", "encryption": "yes"})


def test_access_denied_names_the_expected_owner():
    import botocore.exceptions

    from classeg.io.s3 import storage_error

    denied = botocore.exceptions.ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
        "GetObject")
    plain = str(storage_error("s3://b/k", denied))
    hinted = str(storage_error("s3://b/k", denied, settings=S3Settings(expected_bucket_owner=OWNER)))
    assert plain == "cannot use s3://b/k: access denied (AccessDenied); check the credentials and the bucket policy"
    assert hinted == plain + (f"; or the bucket is not owned by account {OWNER} (s3.expected_bucket_owner), "
                              "which S3 also answers with access denied")


def test_spark_sessions_get_the_s3_encryption_and_extra_still_wins():
    from classeg.config import load_config
    from classeg.spark import session_settings

    assert not any("encryption" in key.lower() for key in session_settings(load_config()))
    kms = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    settings = session_settings(load_config(overrides=["s3.sse=aws:kms", f"s3.kms_key_id={kms}"]))
    assert settings["spark.hadoop.fs.s3a.encryption.algorithm"] == "SSE-KMS"
    assert settings["spark.hadoop.fs.s3.serverSideEncryption.kms.keyId"] == kms
    overridden = session_settings(load_config(overrides=[
        "s3.sse=AES256", "spark.extra.spark.hadoop.fs.s3a.encryption.algorithm=SSE-KMS"]))
    assert overridden["spark.hadoop.fs.s3a.encryption.algorithm"] == "SSE-KMS"
