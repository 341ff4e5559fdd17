"""The one S3 client factory and the retry loop every S3 request of classeg uses.

Settings come from the config's ``s3`` section as a frozen :class:`S3Settings` (endpoint, region, attempts,
backoff, timeouts, encryption, expected bucket owner). :func:`client` caches one boto3 client per process and
settings: clients do not pickle, so an executor builds its own from the (picklable) settings. botocore's own
retries are off (``total_max_attempts=1``): :func:`with_retries` retries transient failures itself, so
``s3.max_attempts`` is the exact number of requests per operation. Credentials come from boto3's usual chain
(environment, ``~/.aws``, instance profile).

Encryption and the bucket owner are added to the requests by the client itself (:func:`add_request_args`, which
:func:`client` applies), not by each caller, so no PUT, multipart upload or GET of classeg can go out without
them; :func:`spark_s3_conf` gives Spark's own S3 writes the same encryption.
"""
from __future__ import annotations

import dataclasses
import functools
import http.client
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from classeg import redact
from classeg.config import CHOICES, load_config
from classeg.errors import ArchiveError
from classeg.io.uri import Location, parse_uri
from classeg.sections import S3Section

logger = logging.getLogger(__name__)

__all__ = ["AttemptsFailed", "S3Settings", "SSE_CHOICES", "add_request_args", "call", "client", "error_code",
           "is_not_found", "is_transient", "list_pages", "owner_hint", "request_args", "spark_s3_conf", "storage_error",
           "with_retries"]

SSE_CHOICES = CHOICES["s3.sse"]  # from S3Section's annotation: none, AES256, aws:kms

_MAX_BACKOFF_SECONDS = 20.0


@dataclass(frozen=True)
class S3Settings:
    """How classeg talks to S3 (the config's ``s3`` section). ``S3Settings.of(None)`` takes the defaults from the
    embedded ``conf/local.yaml``; the field defaults here match it (a unit test keeps them equal).

    ``endpoint_url``: None for AWS, or an ``http(s)://`` URL of any S3-compatible store. ``region``: the
    client's region. ``max_attempts``: requests per operation (>= 1), transient failures retried with
    exponential backoff from ``backoff_seconds``. ``connect_timeout``/``read_timeout``: seconds (> 0).

    ``sse``: ``"none"`` (ask for nothing: the bucket's default encryption applies), ``"AES256"`` (SSE-S3) or
    ``"aws:kms"`` (SSE-KMS) on every object written. ``kms_key_id``: with ``aws:kms`` only, the KMS key (id,
    ARN or alias; an ARN for a key in another account); None: S3 uses the AWS managed key ``aws/s3``.
    ``expected_bucket_owner``: a 12-digit account id sent with every request, so S3 refuses (403) a bucket
    that another account owns, e.g. after a typo or a deleted and re-registered bucket name; it applies to
    every bucket classeg touches, archives included. The rules are
    :meth:`classeg.sections.S3Section.check_encryption` (a ConfigError, which is a ValueError).
    """

    endpoint_url: str | None = None
    region: str | None = "us-east-1"
    max_attempts: int = 6
    backoff_seconds: float = 0.2
    connect_timeout: float = 5
    read_timeout: float = 30
    sse: str = "none"
    kms_key_id: str | None = None
    expected_bucket_owner: str | None = None

    def __post_init__(self):
        if self.sse not in SSE_CHOICES:
            raise ValueError(f"s3.sse must be one of {list(SSE_CHOICES)}, got {self.sse!r}")
        S3Section.check_encryption(self.sse, self.kms_key_id, self.expected_bucket_owner)
        endpoint = self.endpoint_url
        if endpoint is not None and (not isinstance(endpoint, str) or not re.match(r"^https?://", endpoint)):
            raise ValueError(f"s3.endpoint_url must be null or an http(s):// URL, got {endpoint!r}")
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"s3.max_attempts must be an integer >= 1, got {attempts!r}")
        for name in ("backoff_seconds", "connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                    value == 0 and name != "backoff_seconds"):
                limit = ">= 0" if name == "backoff_seconds" else "> 0"
                raise ValueError(f"s3.{name} must be a number {limit}, got {value!r}")

    @classmethod
    def of(cls, value: Any = None) -> "S3Settings":
        """The settings for ``value``: None (defaults), an S3Settings, a whole ``Config`` or its ``s3``
        section, or a mapping of ``s3`` keys. The one place that accepts these shapes; unknown keys are an
        error naming them."""
        if isinstance(value, S3Settings):
            return value
        if value is None:
            return _defaults()
        values = value.to_dict() if hasattr(value, "to_dict") else value
        if not isinstance(values, Mapping):
            raise ValueError(f"s3 settings must be a mapping of s3 keys or a Config, got {type(value).__name__}")
        if isinstance(values.get("s3"), Mapping):
            values = values["s3"]
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown s3 settings {unknown}; known: {sorted(known)}")
        return dataclasses.replace(_defaults(), **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=1)
def _defaults() -> S3Settings:
    """The embedded default config's ``s3`` section: the one place defaults are written down."""
    return S3Settings(**load_config().s3.to_dict())


_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def client(settings: S3Settings | None = None):
    """A boto3 S3 client for ``settings``, cached per process (a forked worker builds its own)."""
    settings = S3Settings.of(settings)
    cache_key = (os.getpid(), settings)
    with _CLIENTS_LOCK:
        cached = _CLIENTS.get(cache_key)
        if cached is None:
            config = botocore.config.Config(
                region_name=settings.region,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                # total_max_attempts, not max_attempts: botocore's max_attempts counts retries, so
                # max_attempts=1 would still send each request twice.
                retries={"mode": "standard", "total_max_attempts": 1},
                max_pool_connections=32,
            )
            session = boto3.session.Session()  # not the default session: that one is not thread-safe
            cached = add_request_args(session.client("s3", endpoint_url=settings.endpoint_url, config=config),
                                      settings)
            _CLIENTS[cache_key] = cached
    return cached


# ------------------------------------------------------------------------------- encryption, bucket owner

def request_args(settings: S3Settings, operation_model) -> dict[str, str]:
    """The parameters ``settings`` add to one S3 operation (a botocore ``OperationModel``), for those of its
    input members the operation has, as botocore's S3 service model says:

    - ``ServerSideEncryption`` (and ``SSEKMSKeyId`` with a key): PutObject, CreateMultipartUpload, CopyObject,
      the requests that create objects; never UploadPart, which takes no encryption of its own.
    - ``ExpectedBucketOwner`` (and ``ExpectedSourceBucketOwner`` for copies): nearly every operation, reads,
      listings and deletes as well as writes.
    """
    members = operation_model.input_shape.members if operation_model.input_shape is not None else {}
    args = {}
    if settings.sse != "none" and "ServerSideEncryption" in members:
        args["ServerSideEncryption"] = settings.sse
        if settings.kms_key_id is not None:
            args["SSEKMSKeyId"] = settings.kms_key_id
    if settings.expected_bucket_owner is not None:
        for name in ("ExpectedBucketOwner", "ExpectedSourceBucketOwner"):
            if name in members:
                args[name] = settings.expected_bucket_owner
    return args


def add_request_args(s3_client, settings: S3Settings):
    """Make ``s3_client`` (any boto3 S3 client) send :func:`request_args` with every request, including the
    ones boto3's managed transfers (``upload_file``, ``upload_fileobj``) make for it; returns the client.
    Parameters a caller passes itself are kept. :func:`client` does this to every client it builds; a module
    that needs a client with other retries (``classeg.emr.aws``) calls it on its own."""
    settings = S3Settings.of(settings)
    if settings.sse == "none" and settings.expected_bucket_owner is None:
        return s3_client

    def add(params, model, **_):
        for name, value in request_args(settings, model).items():
            params.setdefault(name, value)

    # provide-client-params runs before botocore validates and serialises the parameters.
    s3_client.meta.events.register("provide-client-params.s3", add, unique_id="classeg-s3-request-args")
    return s3_client


def spark_s3_conf(settings: S3Settings | None = None) -> dict[str, str]:
    """The ``spark.*`` settings that give Spark's own S3 writes (tables, scores, the series table) the
    encryption of ``settings``, for a SparkSession builder; empty for ``sse: none`` (the bucket's default
    encryption, or an EMR security configuration, then decides).

    Both filesystems are configured, since which one a URI reaches depends on its scheme and the cluster:

    - S3A (hadoop-aws; ``s3a://``, and ``s3://`` where ``fs.s3.impl`` is S3A): ``fs.s3a.encryption.algorithm``
      ``AES256`` (SSE-S3) or ``SSE-KMS``, and ``fs.s3a.encryption.key`` (the KMS key; unset: ``aws/s3``). These
      are the names of Hadoop 3.3 (Spark 3.5 ships 3.3.4); ``fs.s3a.server-side-encryption-*`` are their
      deprecated older spellings.
    - EMRFS (``s3://`` on EMR): ``fs.s3.enableServerSideEncryption=true``, and
      ``fs.s3.serverSideEncryption.kms.keyId`` for SSE-KMS. EMRFS uses SSE-S3 when no key is given, so
      ``aws:kms`` without ``kms_key_id`` names the AWS managed key by its alias, ``alias/aws/s3``. An EMR
      security configuration with S3 encryption overrides these.

    Neither filesystem has a setting for the expected bucket owner: Spark's own requests go without it.
    """
    settings = S3Settings.of(settings)
    if settings.sse == "none":
        return {}
    kms = settings.sse == "aws:kms"
    conf = {
        "spark.hadoop.fs.s3a.encryption.algorithm": "SSE-KMS" if kms else "AES256",
        "spark.hadoop.fs.s3.enableServerSideEncryption": "true",
    }
    if kms:
        conf["spark.hadoop.fs.s3.serverSideEncryption.kms.keyId"] = settings.kms_key_id or "alias/aws/s3"
        if settings.kms_key_id is not None:
            conf["spark.hadoop.fs.s3a.encryption.key"] = settings.kms_key_id
    return conf


# --------------------------------------------------------------------------------------------- retries

_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequests", "TooManyRequestsException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete",
})
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
# Network failures: connection refused/reset/closed, timeouts, bodies cut short (botocore does not retry
# errors raised while streaming a body, and its request retries are off).
_TRANSIENT_EXCEPTIONS = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ...
    botocore.exceptions.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    botocore.exceptions.IncompleteReadError,
    urllib3.exceptions.HTTPError,  # ProtocolError, ReadTimeoutError raised from a raw body read
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected
    ConnectionError,  # builtin: ConnectionResetError, BrokenPipeError, ...
    TimeoutError,
)
_RETRY_CATCH = (botocore.exceptions.ClientError, *_TRANSIENT_EXCEPTIONS)


def error_code(err: BaseException) -> tuple[str, int | None]:
    """(S3 error code, HTTP status) of a botocore ClientError; ``("", None)`` for anything else."""
    if isinstance(err, botocore.exceptions.ClientError):
        response = err.response or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code, status
    return "", None


def is_transient(err: BaseException) -> bool:
    """Whether retrying could help: throttling, 5xx, network failures."""
    if isinstance(err, botocore.exceptions.ClientError):
        code, status = error_code(err)
        return code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS
    return isinstance(err, _TRANSIENT_EXCEPTIONS)


def is_not_found(err: BaseException) -> bool:
    code, status = error_code(err)
    return code in _NOT_FOUND_CODES or status == 404


class AttemptsFailed(Exception):
    """The last error of :func:`with_retries` and how many attempts were made."""

    def __init__(self, attempts: int, error: BaseException):
        super().__init__(attempts, error)
        self.attempts = attempts
        self.error = error


def _backoff_delay(attempt: int, base: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): ``base * 2**(attempt-1)`` capped at 20 s,
    half of it fixed and half random ("equal jitter"), so tasks throttled together do not retry in lockstep."""
    ceiling = min(_MAX_BACKOFF_SECONDS, base * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


_T = TypeVar("_T")


def with_retries(operation: Callable[[], _T], *, what: str, settings: S3Settings) -> _T:
    """Call ``operation()`` until it succeeds, at most ``settings.max_attempts`` times, sleeping with exponential
    backoff between attempts. Only transient S3/network errors are retried; the last error, or the first
    permanent one, is raised as :class:`AttemptsFailed` (errors outside S3/network propagate unchanged)."""
    for attempt in range(1, settings.max_attempts + 1):
        try:
            return operation()
        except _RETRY_CATCH as err:
            if not is_transient(err) or attempt == settings.max_attempts:
                raise AttemptsFailed(attempt, err) from err
            delay = _backoff_delay(attempt, settings.backoff_seconds)
            # redact.scrub: ``what`` names the object, and a task's log has no filter to hide its key
            logger.info("%s: attempt %d/%d failed (%s: %s); retrying in %.2fs", redact.scrub(what), attempt,
                        settings.max_attempts, type(err).__name__, redact.scrub(err), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def storage_error(uri: str, err: BaseException, attempts: int | None = None, *,
                  settings: S3Settings | None = None) -> ArchiveError:
    """An ArchiveError naming ``uri`` with a reason a user can act on (with ``settings``, an access denied
    names the expected bucket owner, the usual cause when one is set)."""
    code, status = error_code(err)
    if isinstance(err, botocore.exceptions.NoCredentialsError):
        reason = "no AWS credentials found (environment variables, ~/.aws or an instance profile)"
    elif code == "NoSuchBucket":
        bucket = (err.response.get("Error", {}).get("BucketName") or parse_uri(uri).bucket)
        reason = f"bucket {bucket!r} does not exist"
    elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        reason = f"credentials rejected ({code})"
    elif code in ("AccessDenied", "AllAccessDisabled") or status == 403:
        reason = f"access denied ({code or status}); check the credentials and the bucket policy"
        reason += owner_hint(err, settings)
    elif attempts is not None and is_transient(err):
        reason = f"S3 kept failing, {attempts} attempts, last error {type(err).__name__}: {err}"
    else:
        reason = f"{type(err).__name__}: {err}"
    return ArchiveError(f"cannot use {uri}: {reason}")


def owner_hint(err: BaseException, settings: S3Settings | None) -> str:
    """For a 403 while ``s3.expected_bucket_owner`` is set: a clause saying the bucket may belong to another
    account (S3 answers a wrong owner with a plain AccessDenied); otherwise ``""``."""
    code, status = error_code(err)
    owner = settings.expected_bucket_owner if settings is not None else None
    if owner is None or not (code in ("AccessDenied", "AllAccessDisabled") or status == 403):
        return ""
    return (f"; or the bucket is not owned by account {owner} (s3.expected_bucket_owner), which S3 also "
            "answers with access denied")


def call(operation: Callable[[], _T], *, uri: str, what: str, settings: S3Settings) -> _T:
    """One S3 request retried by :func:`with_retries`; failures raised as ArchiveError naming ``uri``."""
    try:
        return with_retries(operation, what=what, settings=settings)
    except AttemptsFailed as failed:
        raise storage_error(uri, failed.error, failed.attempts, settings=settings) from failed.error
    except botocore.exceptions.BotoCoreError as err:  # no credentials, bad parameters: not retried
        raise storage_error(uri, err, settings=settings) from err


def list_pages(location: Location, prefix: str, settings: S3Settings) -> Iterator[dict]:
    """``list_objects_v2`` pages of ``location``'s bucket under ``prefix``. The continuation-token loop is the
    paginator's, written out so each page request is retried on its own."""
    s3 = client(settings)
    token = None
    while True:
        request = {"Bucket": location.bucket, "Prefix": prefix}
        if token:
            request["ContinuationToken"] = token
        page = call(functools.partial(s3.list_objects_v2, **request), uri=location.uri,
                    what=f"listing {location.uri}", settings=settings)
        yield page
        if not page.get("IsTruncated"):
            return
        token = page["NextContinuationToken"]
