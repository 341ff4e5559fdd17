"""The one S3 client factory and the retry loop every S3 request of classeg uses.

Settings come from the config's ``s3`` section as a frozen :class:`S3Settings` (endpoint, region, attempts,
backoff, timeouts). :func:`client` caches one boto3 client per process and settings: clients do not pickle, so
an executor builds its own from the (picklable) settings. botocore's own retries are off
(``total_max_attempts=1``): :func:`with_retries` retries transient failures itself, so ``s3.max_attempts`` is
the exact number of requests per operation. Credentials come from boto3's usual chain (environment,
``~/.aws``, instance profile).
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

from classeg.errors import ArchiveError
from classeg.io.uri import Location, parse_uri

logger = logging.getLogger(__name__)

__all__ = ["AttemptsFailed", "S3Settings", "call", "client", "error_code", "is_not_found", "is_transient",
           "list_pages", "storage_error", "with_retries"]

_MAX_BACKOFF_SECONDS = 20.0


@dataclass(frozen=True)
class S3Settings:
    """How classeg talks to S3 (the config's ``s3`` section). ``S3Settings.of(None)`` takes the defaults from the
    embedded ``conf/local.yaml``; the field defaults here match it (a unit test keeps them equal).

    ``endpoint_url``: None for AWS, or an ``http(s)://`` URL of any S3-compatible store. ``region``: the
    client's region. ``max_attempts``: requests per operation (>= 1), transient failures retried with
    exponential backoff from ``backoff_seconds``. ``connect_timeout``/``read_timeout``: seconds (> 0).
    """

    endpoint_url: str | None = None
    region: str | None = "us-east-1"
    max_attempts: int = 6
    backoff_seconds: float = 0.2
    connect_timeout: float = 5
    read_timeout: float = 30

    def __post_init__(self):
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
    from classeg.config import load_config  # the embedded default config fixes the defaults

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
            cached = session.client("s3", endpoint_url=settings.endpoint_url, config=config)
            _CLIENTS[cache_key] = cached
    return cached


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
            logger.info("%s: attempt %d/%d failed (%s: %s); retrying in %.2fs", what, attempt,
                        settings.max_attempts, type(err).__name__, err, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def storage_error(uri: str, err: BaseException, attempts: int | None = None) -> ArchiveError:
    """An ArchiveError naming ``uri`` with a reason a user can act on."""
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
    elif attempts is not None and is_transient(err):
        reason = f"S3 kept failing, {attempts} attempts, last error {type(err).__name__}: {err}"
    else:
        reason = f"{type(err).__name__}: {err}"
    return ArchiveError(f"cannot use {uri}: {reason}")


def call(operation: Callable[[], _T], *, uri: str, what: str, settings: S3Settings) -> _T:
    """One S3 request retried by :func:`with_retries`; failures raised as ArchiveError naming ``uri``."""
    try:
        return with_retries(operation, what=what, settings=settings)
    except AttemptsFailed as failed:
        raise storage_error(uri, failed.error, failed.attempts) from failed.error
    except botocore.exceptions.BotoCoreError as err:  # no credentials, bad parameters: not retried
        raise storage_error(uri, err) from err


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
