"""Scan archives to score: listing (``s3://`` with boto3, local folders), fetching object bytes with retries,
and the manifest of finished work that makes scheduled re-runs score only what is new.

No Spark here. The scoring job calls :func:`list_archive`, :func:`objects_frame` and :class:`Manifest` on the
driver, and :func:`fetch` inside its pandas-UDF tasks. boto3 clients do not pickle, so a task builds its own
with :func:`s3_client` (cached per process, keyed by the settings).

Conventions
-----------
* An archive is a folder: ``s3://bucket/prefix`` (``s3a://`` accepted, written back as ``s3://``),
  ``file:///abs/path`` or a plain local path. It may also name a single object or file.
* Every object has a ``version`` string that changes when its content changes: the ETag on S3 (quotes
  stripped), ``f"{size}-{mtime_ns}"`` locally. The manifest remembers (uri, version) pairs.
* Keys with a path component starting with ``.`` (``.DS_Store``, ``.git/``, editor droppings) are hidden
  and never listed, locally and on S3 alike, so an archive synced from a laptop lists the same on both.
  S3 "folder" marker keys (ending in ``/``) are skipped. Every other file is listed, including non-images:
  they become ``error`` rows of the scores table, not silent gaps.
* Error rows carry an ``error`` text of the form ``"<kind>: <detail>"`` (``str(FetchError)`` has that form).
  A row whose kind is in :data:`RETRYABLE_ERROR_KINDS` (``fetch_failed``: the bytes could not be read, e.g.
  S3 kept failing or access was denied) is retried by the next run; every other error (``not_found``,
  ``too_large``, undecodable, unsupported type, empty file, ...) is permanent for that object version and is
  recorded as done, like an ``ok`` row. A new version of the object is scored again.

Output layout (beside the scores table, under names Spark's Parquet reader ignores)::

    <output>/_manifest/<run_id>-<uuid>.parquet   one file per Manifest.record call, never rewritten
    <output>/_runs/<run_id>.json                 written by mark_run_complete: the run's summary

Both are written with boto3 ``put_object`` on S3 (atomic per object) and by rename from a hidden temporary
file locally, so a run that crashes leaves the manifest as it was.
"""
from __future__ import annotations

import datetime as dt
import functools
import http.client
import json
import logging
import os
import random
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote

import boto3
import botocore.config
import botocore.exceptions
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import urllib3.exceptions

logger = logging.getLogger(__name__)

__all__ = [
    "ArchiveError", "ArchiveLocation", "FetchError", "FETCH_ERROR_KINDS", "Manifest", "OBJECT_COLUMNS",
    "OBJECTS_SCHEMA_DDL", "ObjectInfo", "RETRYABLE_ERROR_KINDS", "error_kind", "fetch", "list_archive",
    "mark_run_complete", "objects_frame", "parse_uri", "s3_client",
]

FETCH_ERROR_KINDS = ("not_found", "too_large", "fetch_failed")
RETRYABLE_ERROR_KINDS = frozenset({"fetch_failed"})
OBJECT_COLUMNS = ("uri", "key", "size", "etag", "mtime", "version")
# Spark schema of objects_frame(); pass it to createDataFrame (an all-null etag column cannot be inferred).
OBJECTS_SCHEMA_DDL = "uri string, key string, size long, etag string, mtime double, version string"

MANIFEST_DIR = "_manifest"
RUNS_DIR = "_runs"
_MANIFEST_COLUMNS = ("uri", "version", "status", "run_id", "recorded_at")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_MAX_BACKOFF_SECONDS = 20.0
_LIST_PROGRESS_EVERY = 100_000
_MANIFEST_READ_THREADS = 8


class ArchiveError(ValueError):
    """An archive or output location cannot be used (missing, access denied, unreachable); names URI and reason."""


class FetchError(Exception):
    """One object could not be read. ``kind`` is one of :data:`FETCH_ERROR_KINDS`:

    * ``not_found``: the object (or its bucket) no longer exists;
    * ``too_large``: it is larger than ``max_bytes``;
    * ``fetch_failed``: reading failed (transient errors on every attempt, access denied, ...). Retried by
      the next run, see :data:`RETRYABLE_ERROR_KINDS`.

    ``str(err)`` is ``"<kind>: <message>"``, ready for the ``error`` column of the scores table.
    """

    def __init__(self, kind: str, message: str, *, uri: str | None = None, attempts: int | None = None):
        if kind not in FETCH_ERROR_KINDS:
            raise ValueError(f"FetchError kind must be one of {FETCH_ERROR_KINDS}, got {kind!r}")
        super().__init__(kind, message)
        self.kind = kind
        self.message = message
        self.uri = uri
        self.attempts = attempts

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def error_kind(error: str | None) -> str | None:
    """The kind of an ``error`` text ``"<kind>: <detail>"``: ``"fetch_failed: 6 attempts..."`` -> ``"fetch_failed"``."""
    if error is None:
        return None
    return str(error).split(":", 1)[0].strip()


# --------------------------------------------------------------------------------------------- locations

@dataclass(frozen=True)
class ArchiveLocation:
    """A parsed archive, output or object location.

    ``scheme`` is ``'s3'`` (with ``bucket`` and ``prefix``: the key, or key prefix, exactly as given, without
    the leading ``/``; ``path`` is None) or ``'file'`` (``path``: absolute, normalised; ``bucket`` and
    ``prefix`` are None).
    """

    scheme: str
    bucket: str | None = None
    prefix: str | None = None
    path: str | None = None

    @property
    def uri(self) -> str:
        """Canonical URI: ``s3://bucket/prefix`` or ``file:///abs/path`` (percent-encoded)."""
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}"
        return Path(self.path).as_uri()

    @property
    def dir_prefix(self) -> str:
        """S3 only: the prefix as a folder (``''`` or ending with ``/``), so ``scans`` does not match ``scans2/``."""
        return self.prefix if not self.prefix or self.prefix.endswith("/") else self.prefix + "/"

    def child(self, relative: str) -> "ArchiveLocation":
        """The location of ``relative`` (``/``-separated) inside this folder."""
        relative = relative.lstrip("/")
        if self.scheme == "s3":
            return ArchiveLocation("s3", bucket=self.bucket, prefix=self.dir_prefix + relative)
        return ArchiveLocation("file", path=os.path.join(self.path, *relative.split("/")))


def parse_uri(uri: str | os.PathLike) -> ArchiveLocation:
    """Parse ``s3://bucket/prefix``, ``s3a://bucket/prefix``, ``file:///abs/path`` or a plain local path.

    Relative local paths are made absolute against the current directory. ``file://`` URIs are
    percent-decoded (as :attr:`ArchiveLocation.uri` encodes them); S3 keys are taken verbatim.
    Anything else (``http://``, ``hdfs://``, ``s3:/one-slash``, an empty string) raises ValueError naming it.
    """
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"expected an s3://bucket/prefix URI, a file:// URI or a local path, got {uri!r}")
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else None
    if scheme in ("s3", "s3a"):
        rest = uri[match.end():]
        if not rest.startswith("//"):
            raise ValueError(f"S3 URIs look like s3://bucket/prefix, got {uri!r}")
        bucket, _, prefix = rest[2:].partition("/")
        if not bucket or any(ch.isspace() for ch in bucket) or ":" in bucket:
            raise ValueError(f"S3 URI {uri!r} has no valid bucket name (expected s3://bucket/prefix)")
        return ArchiveLocation("s3", bucket=bucket, prefix=prefix)
    if scheme == "file":
        rest = uri[match.end():]
        if rest.startswith("//localhost/"):
            rest = rest[len("//localhost"):]
        elif rest.startswith("///"):
            rest = rest[2:]
        else:
            raise ValueError(f"file URIs must be absolute, file:///abs/path, got {uri!r}")
        return ArchiveLocation("file", path=os.path.normpath(unquote(rest)))
    if scheme is not None and uri[match.end():].startswith("/"):
        # Another scheme (http:, hdfs:, gs:); a colon inside a plain file name ("scan:1.png") is fine.
        raise ValueError(f"unsupported URI scheme {scheme!r} in {uri!r}: expected s3://, s3a://, file:// "
                         "or a local path")
    return ArchiveLocation("file", path=os.path.abspath(os.path.expanduser(uri)))


# --------------------------------------------------------------------------------------------- S3 client

@functools.lru_cache(maxsize=1)
def _default_s3_settings() -> tuple[tuple[str, Any], ...]:
    from classeg.config import load_config  # the embedded default config fixes the keys and defaults

    return tuple(sorted(load_config().s3.to_dict().items()))


def _s3_settings(s3_cfg: Any = None) -> dict[str, Any]:
    """The ``s3`` settings: defaults from the embedded config overlaid with ``s3_cfg``, validated.

    ``s3_cfg`` may be None, a mapping of the ``s3`` section, or a whole ``Config`` (its ``s3`` section is used).
    """
    settings = dict(_default_s3_settings())
    if s3_cfg is None:
        return settings
    values = s3_cfg.to_dict() if hasattr(s3_cfg, "to_dict") else s3_cfg
    if not isinstance(values, Mapping):
        raise ValueError(f"s3_cfg must be a mapping of s3 settings or a Config, got {type(s3_cfg).__name__}")
    if isinstance(values.get("s3"), Mapping):
        values = values["s3"]
    unknown = sorted(set(values) - set(settings))
    if unknown:
        raise ValueError(f"unknown s3 settings {unknown}; known: {sorted(settings)}")
    settings.update(values)
    endpoint = settings["endpoint_url"]
    if endpoint is not None and (not isinstance(endpoint, str) or not re.match(r"^https?://", endpoint)):
        raise ValueError(f"s3.endpoint_url must be null or an http(s):// URL, got {endpoint!r}")
    attempts = settings["max_attempts"]
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"s3.max_attempts must be an integer >= 1, got {attempts!r}")
    for key in ("backoff_seconds", "connect_timeout", "read_timeout"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                value == 0 and key != "backoff_seconds"):
            limit = ">= 0" if key == "backoff_seconds" else "> 0"
            raise ValueError(f"s3.{key} must be a number {limit}, got {value!r}")
    return settings


_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def s3_client(s3_cfg: Any = None):
    """A boto3 S3 client for the config's ``s3`` section (``endpoint_url``, ``region``, ``connect_timeout``,
    ``read_timeout`` in seconds), cached per process and settings.

    botocore's own retries are off (``retries={'mode': 'standard', 'total_max_attempts': 1}``): :func:`fetch` and
    the listing retry by themselves, so ``s3.max_attempts`` is the exact number of requests per object.
    Credentials come from boto3's usual chain (environment, ``~/.aws``, instance profile).
    """
    settings = _s3_settings(s3_cfg)
    cache_key = (os.getpid(), tuple(sorted(settings.items())))  # a forked worker builds its own
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(cache_key)
        if client is None:
            config = botocore.config.Config(
                region_name=settings["region"],
                connect_timeout=settings["connect_timeout"],
                read_timeout=settings["read_timeout"],
                # total_max_attempts, not max_attempts: botocore's max_attempts counts retries, so
                # max_attempts=1 would still send each request twice.
                retries={"mode": "standard", "total_max_attempts": 1},
                max_pool_connections=32,
            )
            session = boto3.session.Session()  # not the default session: that one is not thread-safe
            client = session.client("s3", endpoint_url=settings["endpoint_url"], config=config)
            _CLIENTS[cache_key] = client
    return client


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
# errors raised while streaming a body, and we turned its request retries off).
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


def _error_code(err: BaseException) -> tuple[str, int | None]:
    if isinstance(err, botocore.exceptions.ClientError):
        response = err.response or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code, status
    return "", None


def _is_transient(err: BaseException) -> bool:
    if isinstance(err, botocore.exceptions.ClientError):
        code, status = _error_code(err)
        return code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS
    return isinstance(err, _TRANSIENT_EXCEPTIONS)


class _AttemptsFailed(Exception):
    """Internal: the last error of :func:`_with_retries` and how many attempts were made."""

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


def _with_retries(operation: Callable[[], _T], *, what: str, max_attempts: int, backoff_seconds: float) -> _T:
    """Call ``operation()`` until it succeeds, at most ``max_attempts`` times, sleeping with exponential backoff
    between attempts. Only transient S3/network errors are retried; the last error, or the first permanent
    one, is raised as ``_AttemptsFailed`` (errors outside :data:`_RETRY_CATCH` propagate unchanged)."""
    for attempt in range(1, max_attempts + 1):
        try:
            return operation()
        except _RETRY_CATCH as err:
            if not _is_transient(err) or attempt == max_attempts:
                raise _AttemptsFailed(attempt, err) from err
            delay = _backoff_delay(attempt, backoff_seconds)
            logger.info("%s: attempt %d/%d failed (%s: %s); retrying in %.2fs", what, attempt, max_attempts,
                        type(err).__name__, err, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


# --------------------------------------------------------------------------------------------- listing

class ObjectInfo(NamedTuple):
    """One object of an archive.

    ``uri``: full ``s3://bucket/key`` or ``file:///abs/path``; ``key``: relative to the archive root,
    ``/``-separated; ``size``: bytes; ``etag``: S3 ETag without quotes (None locally); ``mtime``: modification
    time, float epoch seconds (S3 LastModified); ``version``: the ETag on S3, ``f"{size}-{mtime_ns}"`` locally.
    """

    uri: str
    key: str
    size: int
    etag: str | None
    mtime: float
    version: str


def _is_hidden(relative_key: str) -> bool:
    return any(part.startswith(".") for part in relative_key.split("/"))


def _normalise_suffixes(suffixes: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if suffixes is None:
        return None
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    try:
        normalised = tuple(suffixes)
    except TypeError:
        raise ValueError(f"suffixes must be None or an iterable of strings like ['.png', '.mat'], "
                         f"got {suffixes!r}") from None
    bad = [item for item in normalised if not isinstance(item, str) or not item]
    if bad or not normalised:
        raise ValueError(f"suffixes must be non-empty strings like ['.png', '.mat'], got {suffixes!r}")
    return tuple(item.lower() for item in normalised)


def list_archive(uri: str | os.PathLike, *, s3_cfg: Any = None,
                 suffixes: Iterable[str] | None = None) -> Iterator[ObjectInfo]:
    """All objects of an archive, as :class:`ObjectInfo`, in key order (UTF-8 binary order, as S3 lists).

    ``uri``: ``s3://bucket/prefix`` (listed with ``list_objects_v2``, 1000 keys per request, each page
    retried like :func:`fetch`), or a local folder (walked recursively; symlinks followed, loops skipped).
    A URI naming a single object or file lists just that object, with its file name as key.
    ``suffixes``: keep only keys ending with one of these (case-insensitive), e.g. ``['.png', '.mat']``;
    None keeps every file, so unreadable ones become error rows.

    Problems that make the whole archive unusable are raised as :class:`ArchiveError`, naming the URI and
    the reason, when this function is called (before any object is yielded): a missing folder or bucket,
    access denied, an unreachable endpoint, or an S3 prefix with no objects (S3 has no empty folders, so
    that is almost always a typo). An existing empty local folder lists nothing.
    """
    location = parse_uri(uri)
    wanted = _normalise_suffixes(suffixes)
    if location.scheme == "file":
        objects = _local_objects(location)
    else:
        objects = _s3_archive_objects(location, _s3_settings(s3_cfg))
    if wanted is not None:
        objects = (info for info in objects if info.key.lower().endswith(wanted))
    return _with_progress(objects, location.uri)


def _with_progress(objects: Iterator[ObjectInfo], uri: str) -> Iterator[ObjectInfo]:
    count = 0
    for count, info in enumerate(objects, start=1):
        if count % _LIST_PROGRESS_EVERY == 0:
            logger.info("listing %s: %d objects so far", uri, count)
        yield info
    logger.info("listed %s: %d objects", uri, count)


def _local_objects(location: ArchiveLocation) -> Iterator[ObjectInfo]:
    root = location.path
    try:
        root_stat = os.stat(root)
    except FileNotFoundError:
        raise ArchiveError(f"cannot list {location.uri}: no such file or directory") from None
    except OSError as err:
        raise ArchiveError(f"cannot list {location.uri}: {err.strerror or err}") from err
    if stat.S_ISREG(root_stat.st_mode):
        return iter([_local_info(root, os.path.basename(root), root_stat)])
    if not stat.S_ISDIR(root_stat.st_mode):
        raise ArchiveError(f"cannot list {location.uri}: neither a folder nor a regular file")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ArchiveError(f"cannot list {location.uri}: permission denied")
    return _walk_local(root, "", {(root_stat.st_dev, root_stat.st_ino)})


def _local_info(path: str, key: str, file_stat: os.stat_result) -> ObjectInfo:
    return ObjectInfo(uri=Path(path).as_uri(), key=key, size=file_stat.st_size, etag=None,
                      mtime=file_stat.st_mtime, version=f"{file_stat.st_size}-{file_stat.st_mtime_ns}")


def _walk_local(directory: str, key_prefix: str, seen: set[tuple[int, int]]) -> Iterator[ObjectInfo]:
    """Depth-first walk yielding files in the order S3 would list their keys (a folder sorts as ``name/``)."""
    try:
        with os.scandir(directory) as scan:
            entries = [entry for entry in scan if not entry.name.startswith(".")]
    except OSError as err:
        raise ArchiveError(f"cannot list {Path(directory).as_uri()}: {err.strerror or err}") from err
    items: list[tuple[str, os.DirEntry, os.stat_result]] = []
    for entry in entries:
        try:
            entry_stat = entry.stat()  # follows symlinks
        except OSError as err:
            logger.warning("skipping %s: %s (broken symlink?)", entry.path, err.strerror or err)
            continue
        if stat.S_ISDIR(entry_stat.st_mode):
            items.append((entry.name + "/", entry, entry_stat))
        elif stat.S_ISREG(entry_stat.st_mode):
            items.append((entry.name, entry, entry_stat))
        else:
            logger.warning("skipping %s: not a regular file (fifo, socket or device)", entry.path)
    items.sort(key=lambda item: item[0])
    for sort_name, entry, entry_stat in items:
        if sort_name.endswith("/"):
            identity = (entry_stat.st_dev, entry_stat.st_ino)
            if identity in seen:
                logger.warning("skipping %s: symlink loop", entry.path)
                continue
            yield from _walk_local(entry.path, key_prefix + sort_name, seen | {identity})
        else:
            yield _local_info(entry.path, key_prefix + entry.name, entry_stat)


def _archive_error(uri: str, err: BaseException, attempts: int | None = None) -> ArchiveError:
    """An ArchiveError naming ``uri`` with a reason a user can act on."""
    code, status = _error_code(err)
    if isinstance(err, botocore.exceptions.NoCredentialsError):
        reason = "no AWS credentials found (environment variables, ~/.aws or an instance profile)"
    elif code == "NoSuchBucket":
        bucket = (err.response.get("Error", {}).get("BucketName") or parse_uri(uri).bucket)
        reason = f"bucket {bucket!r} does not exist"
    elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        reason = f"credentials rejected ({code})"
    elif code in ("AccessDenied", "AllAccessDisabled") or status == 403:
        reason = f"access denied ({code or status}); check the credentials and the bucket policy"
    elif attempts is not None and _is_transient(err):
        reason = f"S3 kept failing, {attempts} attempts, last error {type(err).__name__}: {err}"
    else:
        reason = f"{type(err).__name__}: {err}"
    return ArchiveError(f"cannot use {uri}: {reason}")


def _s3_call(operation: Callable[[], _T], *, uri: str, what: str, settings: Mapping[str, Any]) -> _T:
    """One S3 request for the listing/manifest code: retried like fetch, failures raised as ArchiveError."""
    try:
        return _with_retries(operation, what=what, max_attempts=settings["max_attempts"],
                             backoff_seconds=settings["backoff_seconds"])
    except _AttemptsFailed as failed:
        raise _archive_error(uri, failed.error, failed.attempts) from failed.error
    except botocore.exceptions.BotoCoreError as err:  # no credentials, bad parameters: not retried
        raise _archive_error(uri, err) from err


def _s3_pages(location: ArchiveLocation, prefix: str, settings: Mapping[str, Any]) -> Iterator[dict]:
    """``list_objects_v2`` pages under ``prefix``. The continuation-token loop is the paginator's, written out
    so each page request is retried on its own (botocore's retries are off, see :func:`s3_client`)."""
    client = s3_client(settings)
    token = None
    while True:
        request = {"Bucket": location.bucket, "Prefix": prefix}
        if token:
            request["ContinuationToken"] = token
        page = _s3_call(functools.partial(client.list_objects_v2, **request), uri=location.uri,
                        what=f"listing {location.uri}", settings=settings)
        yield page
        if not page.get("IsTruncated"):
            return
        token = page["NextContinuationToken"]


def _s3_infos(location: ArchiveLocation, prefix: str, pages: Iterable[dict]) -> Iterator[ObjectInfo]:
    for page in pages:
        for item in page.get("Contents", ()):
            key = item["Key"]
            relative = key[len(prefix):]
            if not relative or key.endswith("/") or _is_hidden(relative):
                continue
            yield ObjectInfo(uri=f"s3://{location.bucket}/{key}", key=relative, size=int(item["Size"]),
                             etag=item["ETag"].strip('"'), mtime=item["LastModified"].timestamp(),
                             version=item["ETag"].strip('"'))


def _s3_archive_objects(location: ArchiveLocation, settings: Mapping[str, Any]) -> Iterator[ObjectInfo]:
    prefix = location.dir_prefix
    pages = _s3_pages(location, prefix, settings)
    first = next(pages)  # now, not lazily: a missing bucket or denied access fails before any work
    if not first.get("Contents") and not first.get("IsTruncated"):
        single = _s3_single_object(location, settings)
        if single is None:
            raise ArchiveError(f"cannot use {location.uri}: no objects under this prefix "
                               "(S3 has no empty folders: check the bucket and prefix)")
        return iter([single])
    return _s3_infos(location, prefix, chain([first], pages))


def _s3_single_object(location: ArchiveLocation, settings: Mapping[str, Any]) -> ObjectInfo | None:
    """The archive URI names one object (``s3://bucket/scans/a.png``): that object, or None."""
    if not location.prefix or location.prefix.endswith("/"):
        return None
    client = s3_client(settings)
    try:
        head = _with_retries(functools.partial(client.head_object, Bucket=location.bucket, Key=location.prefix),
                             what=f"head {location.uri}", max_attempts=settings["max_attempts"],
                             backoff_seconds=settings["backoff_seconds"])
    except _AttemptsFailed as failed:
        code, status = _error_code(failed.error)
        if code in _NOT_FOUND_CODES or status == 404:
            return None
        raise _archive_error(location.uri, failed.error, failed.attempts) from failed.error
    etag = head["ETag"].strip('"')
    return ObjectInfo(uri=location.uri, key=location.prefix.rsplit("/", 1)[-1], size=int(head["ContentLength"]),
                      etag=etag, mtime=head["LastModified"].timestamp(), version=etag)


def objects_frame(objects: Iterable[ObjectInfo]) -> pd.DataFrame:
    """The objects as a DataFrame with columns :data:`OBJECT_COLUMNS` (uri, key, size int64, etag, mtime float64,
    version), for the scoring job's Spark DataFrame (use :data:`OBJECTS_SCHEMA_DDL` as its schema)."""
    frame = pd.DataFrame.from_records(list(objects), columns=list(OBJECT_COLUMNS))
    return frame.astype({"uri": object, "key": object, "size": "int64", "etag": object, "mtime": "float64",
                         "version": object})


# --------------------------------------------------------------------------------------------- fetching

def _check_max_bytes(max_bytes: int | None) -> None:
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
        raise ValueError(f"max_bytes must be None or an integer >= 0, got {max_bytes!r}")


class _TooLarge(Exception):
    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


def fetch(uri: str | os.PathLike, *, s3_cfg: Any = None, max_bytes: int | None = None, client: Any = None) -> bytes:
    """The bytes of one object (``s3://bucket/key``, ``file:///abs/path`` or a local path).

    S3: at most ``s3.max_attempts`` GET requests, retrying transient failures (HTTP 429/500/502/503/504,
    SlowDown and other throttling, connection refused/reset/closed, timeouts, bodies cut short) after
    ``s3.backoff_seconds * 2**(attempt-1)`` seconds with jitter. ``client``: an S3 client to use instead of
    ``s3_client(s3_cfg)`` (``s3_cfg`` still sets attempts and backoff). ``max_bytes``: larger objects are not
    downloaded (checked against the response's Content-Length, or the file size first).

    Raises :class:`FetchError` with kind ``not_found`` (no such key, bucket or file), ``too_large``, or
    ``fetch_failed`` (the message says how many attempts were made and the last error).
    """
    _check_max_bytes(max_bytes)
    location = parse_uri(uri)
    if location.scheme == "file":
        return _fetch_local(location, max_bytes)
    if not location.prefix or location.prefix.endswith("/"):
        raise ValueError(f"fetch needs the URI of one object, got the folder {location.uri!r}")
    settings = _s3_settings(s3_cfg)
    client = client if client is not None else s3_client(settings)
    max_attempts = settings["max_attempts"]

    def get_object() -> bytes:
        response = client.get_object(Bucket=location.bucket, Key=location.prefix)
        body = response["Body"]
        length = response.get("ContentLength")
        if max_bytes is not None and length is not None and length > max_bytes:
            body.close()  # drop the connection rather than download what we will not use
            raise _TooLarge(length)
        try:
            data = body.read()
        except BaseException:
            body.close()
            raise
        if length is not None and len(data) != length:
            raise botocore.exceptions.IncompleteReadError(actual_bytes=len(data), expected_bytes=length)
        return data

    try:
        return _with_retries(get_object, what=f"fetching {location.uri}", max_attempts=max_attempts,
                             backoff_seconds=settings["backoff_seconds"])
    except _TooLarge as err:
        raise FetchError("too_large", f"{err.size} bytes, more than max_bytes={max_bytes}", uri=location.uri,
                         attempts=1) from None
    except _AttemptsFailed as failed:
        err = failed.error
        code, status = _error_code(err)
        if code in _NOT_FOUND_CODES or status == 404:
            raise FetchError("not_found", f"{code or status}: {location.uri}", uri=location.uri,
                             attempts=failed.attempts) from err
        plural = "attempt" if failed.attempts == 1 else "attempts"
        detail = f"{code}: {err}" if code and code not in str(err) else str(err)
        message = f"{failed.attempts} {plural}, last error {type(err).__name__}: {detail}"
        logger.warning("fetching %s failed: %s", location.uri, message)
        raise FetchError("fetch_failed", message, uri=location.uri, attempts=failed.attempts) from err
    except botocore.exceptions.BotoCoreError as err:  # no credentials, invalid parameters: not retried
        raise FetchError("fetch_failed", f"1 attempt, {type(err).__name__}: {err}", uri=location.uri,
                         attempts=1) from err


def _fetch_local(location: ArchiveLocation, max_bytes: int | None) -> bytes:
    path = location.path
    try:
        file_stat = os.stat(path)
        if not stat.S_ISREG(file_stat.st_mode):
            raise FetchError("not_found", f"not a regular file: {location.uri}", uri=location.uri, attempts=1)
        if max_bytes is not None and file_stat.st_size > max_bytes:
            raise FetchError("too_large", f"{file_stat.st_size} bytes, more than max_bytes={max_bytes}",
                             uri=location.uri, attempts=1)
        with open(path, "rb") as handle:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise FetchError("not_found", f"no such file: {location.uri}", uri=location.uri, attempts=1) from None
    except OSError as err:
        raise FetchError("fetch_failed", f"1 attempt, {type(err).__name__}: {err.strerror or err}",
                         uri=location.uri, attempts=1) from err
    if max_bytes is not None and len(data) > max_bytes:  # the file grew since stat
        raise FetchError("too_large", f"more than max_bytes={max_bytes} bytes", uri=location.uri, attempts=1)
    return data


# --------------------------------------------------------------------------------------------- writing

def _put_bytes(location: ArchiveLocation, data: bytes, settings: Mapping[str, Any]) -> None:
    """Write ``data`` whole: one ``put_object`` on S3; locally a hidden temporary file renamed into place."""
    if location.scheme == "s3":
        client = s3_client(settings)
        _s3_call(functools.partial(client.put_object, Bucket=location.bucket, Key=location.prefix, Body=data),
                 uri=location.uri, what=f"writing {location.uri}", settings=settings)
        return
    directory, name = os.path.split(location.path)
    try:
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, location.path)
    except OSError as err:
        raise ArchiveError(f"cannot write {location.uri}: {err.strerror or err}") from err


def put_object(uri: str, data: bytes, *, s3_cfg: Any = None) -> None:
    """Write ``data`` as the S3 object ``uri`` (``s3://bucket/key``) with one PUT, transient failures retried
    as in :func:`fetch`; raises ArchiveError naming the URI when it cannot."""
    location = parse_uri(uri)
    if location.scheme != "s3" or not location.prefix or location.prefix.endswith("/"):
        raise ValueError(f"put_object needs the s3:// URI of one object, got {uri!r}")
    _put_bytes(location, data, _s3_settings(s3_cfg))


def delete_objects(uri: str, *, s3_cfg: Any = None) -> int:
    """Delete the S3 object ``uri`` and every object below it as a folder (``uri`` + ``/``), each list page and
    delete batch retried as in :func:`fetch`. Returns how many were deleted; nothing there is not an error."""
    location = parse_uri(uri)
    key = location.prefix.rstrip("/")
    if location.scheme != "s3" or not key:
        raise ValueError(f"delete_objects needs an s3://bucket/prefix URI below the bucket, got {uri!r}")
    settings = _s3_settings(s3_cfg)
    doomed = [item["Key"] for page in _s3_pages(location, key, settings) for item in page.get("Contents", ())
              if item["Key"] == key or item["Key"].startswith(key + "/")]
    client = s3_client(settings)
    for start in range(0, len(doomed), 1000):  # delete_objects takes at most 1000 keys a request
        batch = {"Objects": [{"Key": name} for name in doomed[start:start + 1000]], "Quiet": True}
        response = _s3_call(functools.partial(client.delete_objects, Bucket=location.bucket, Delete=batch),
                            uri=location.uri, what=f"deleting under {location.uri}", settings=settings)
        if response.get("Errors"):
            first = response["Errors"][0]
            raise ArchiveError(f"cannot delete {len(response['Errors'])} objects under {location.uri}, e.g. "
                               f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")
    return len(doomed)


def _list_files(folder: ArchiveLocation, suffix: str, settings: Mapping[str, Any]) -> list[ArchiveLocation]:
    """Visible files directly or deeper under ``folder`` ending with ``suffix``; none if it does not exist."""
    if folder.scheme == "file":
        if not os.path.isdir(folder.path):
            return []
        objects = _walk_local(folder.path, "", set())
        return [parse_uri(info.uri) for info in objects if info.key.endswith(suffix)]
    prefix = folder.dir_prefix
    infos = _s3_infos(folder, prefix, _s3_pages(folder, prefix, settings))
    return [parse_uri(info.uri) for info in infos if info.key.endswith(suffix)]


def _read_bytes(location: ArchiveLocation, settings: Mapping[str, Any]) -> bytes:
    try:
        return fetch(location.uri, s3_cfg=settings)
    except FetchError as err:
        raise ArchiveError(f"cannot read {location.uri}: {err}") from err


# --------------------------------------------------------------------------------------------- manifest

def _check_run_id(run_id: str) -> None:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError(f"run_id must be 1-200 characters from A-Z a-z 0-9 . _ = - (not starting with . _ = -), "
                         f"got {run_id!r}")


def _pair_keys(uris: Any, versions: Any) -> pa.Array:
    """One string per (uri, version) pair, for set lookups. NUL cannot occur in S3 keys or file names."""
    uri_array = pa.array(uris, type=pa.string(), from_pandas=True)
    version_array = pa.array(versions, type=pa.string(), from_pandas=True)
    return pc.binary_join_element_wise(uri_array, version_array, "\x00")


class Manifest:
    """The (uri, version) pairs already scored into an output, for incremental runs.

    Stored as Parquet files under ``<output>/_manifest/``, one per :meth:`record` call (columns uri, version,
    status, run_id, recorded_at), never rewritten; completed runs as ``<output>/_runs/<run_id>.json``.
    Build with :meth:`load`. What counts as done: ``ok`` rows and error rows with a permanent kind; errors of
    a kind in :data:`RETRYABLE_ERROR_KINDS` (``fetch_failed``) are not recorded, so the next run retries them.
    """

    def __init__(self, output_uri: str, done_keys: pa.Array, file_count: int, settings: Mapping[str, Any]):
        self._output = parse_uri(output_uri)
        self._done = done_keys
        self._file_count = file_count
        self._settings = dict(settings)

    @classmethod
    def load(cls, output_uri: str | os.PathLike, *, s3_cfg: Any = None) -> "Manifest":
        """The manifest of ``output_uri`` (a local path or ``s3://``); empty if nothing was recorded yet.

        Raises :class:`ArchiveError` if the output's bucket is missing or unreadable, or a manifest file cannot
        be read (the message names it; deleting that file only makes its objects be scored again).
        """
        output = parse_uri(output_uri)
        settings = _s3_settings(s3_cfg)
        files = _list_files(output.child(MANIFEST_DIR), ".parquet", settings)

        def read(location: ArchiveLocation) -> pa.Array:
            data = _read_bytes(location, settings)
            try:
                table = pq.read_table(pa.BufferReader(data), columns=["uri", "version"])
            except (pa.ArrowException, OSError) as err:
                raise ArchiveError(f"cannot read manifest file {location.uri}: {err}") from err
            return _pair_keys(table.column("uri"), table.column("version"))

        with ThreadPoolExecutor(max_workers=_MANIFEST_READ_THREADS) as pool:
            parts = list(pool.map(read, files))
        done = pa.concat_arrays([_as_array(part) for part in parts]) if parts else pa.array([], type=pa.string())
        manifest = cls(output.uri, pc.unique(done), len(files), settings)
        logger.info("manifest of %s: %d scored (uri, version) pairs in %d files", output.uri, len(manifest),
                    len(files))
        return manifest

    def __len__(self) -> int:
        return len(self._done)

    def __repr__(self) -> str:
        return f"Manifest({self._output.uri!r}, pairs={len(self)}, files={self._file_count})"

    def pending(self, objects: Iterable[ObjectInfo] | pd.DataFrame) -> list[ObjectInfo] | pd.DataFrame:
        """The objects whose (uri, version) pair is not recorded yet, in their order: a list of
        :class:`ObjectInfo` for an iterable of them, a DataFrame (index reset) for a DataFrame with ``uri`` and
        ``version`` columns. A changed object has a new version, so it is pending again."""
        if isinstance(objects, pd.DataFrame):
            missing = [column for column in ("uri", "version") if column not in objects.columns]
            if missing:
                raise ValueError(f"objects DataFrame lacks columns {missing}; has {list(objects.columns)}")
            keys = _pair_keys(objects["uri"], objects["version"])
            done = pc.is_in(keys, value_set=self._done).to_numpy(zero_copy_only=False)
            return objects.loc[~done].reset_index(drop=True)
        items = list(objects)
        bad = [item for item in items[:1] if not isinstance(item, ObjectInfo)]
        if bad:
            raise ValueError(f"pending expects ObjectInfo items or a DataFrame, got {type(bad[0]).__name__}")
        if not items:
            return []
        keys = _pair_keys([item.uri for item in items], [item.version for item in items])
        done = pc.is_in(keys, value_set=self._done).to_numpy(zero_copy_only=False)
        return [item for item, is_done in zip(items, done) if not is_done]

    def record(self, run_id: str, scored: pd.DataFrame) -> str | None:
        """Append the finished objects of ``scored`` as one new manifest file; returns its URI (None when no row
        counts as done).

        ``scored`` has columns ``uri``, ``version``, ``status`` (``ok`` | ``error``) and, when there are error
        rows, ``error`` (``"<kind>: <detail>"``). Rows with status ``ok`` and errors of a permanent kind are
        recorded; ``fetch_failed`` errors and error rows without a reason are not (they are retried next run).
        Call it only after the scores themselves are written: what is recorded is never scored again.
        """
        _check_run_id(run_id)
        if not isinstance(scored, pd.DataFrame):
            raise ValueError(f"scored must be a pandas DataFrame, got {type(scored).__name__}")
        missing = [column for column in ("uri", "version", "status") if column not in scored.columns]
        if missing:
            raise ValueError(f"scored lacks columns {missing}; has {list(scored.columns)}")
        statuses = set(scored["status"].unique()) - {"ok", "error"}
        if statuses:
            raise ValueError(f"scored.status must be 'ok' or 'error', got {sorted(map(repr, statuses))}")
        is_error = (scored["status"] == "error").to_numpy()
        if is_error.any() and "error" not in scored.columns:
            raise ValueError("scored has error rows but no 'error' column: it is needed to tell fetch_failed "
                             "errors (retried next run) from permanent ones")
        if scored["uri"].isna().any() or scored["version"].isna().any():
            raise ValueError("scored has rows with a null uri or version")
        done = ~is_error
        if is_error.any():
            kinds = scored["error"].map(error_kind)
            unexplained = is_error & kinds.isna().to_numpy()
            if unexplained.any():
                logger.warning("%d error rows have no error text; they are not recorded and will be retried",
                               int(unexplained.sum()))
            done |= is_error & kinds.notna().to_numpy() & ~kinds.isin(RETRYABLE_ERROR_KINDS).to_numpy()
        rows = scored.loc[done, ["uri", "version", "status"]]
        retried = int(is_error.sum() - (done & is_error).sum())
        if rows.empty:
            logger.info("run %s: nothing to record in the manifest (%d rows to retry)", run_id, retried)
            return None
        table = pa.table({
            "uri": pa.array(rows["uri"], type=pa.string()),
            "version": pa.array(rows["version"].astype(str), type=pa.string()),
            "status": pa.array(rows["status"], type=pa.string()),
            "run_id": pa.repeat(pa.scalar(run_id, pa.string()), len(rows)),
            "recorded_at": pa.repeat(pa.scalar(dt.datetime.now(dt.timezone.utc), pa.timestamp("us", "UTC")),
                                     len(rows)),
        })
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        target = self._output.child(f"{MANIFEST_DIR}/{run_id}-{uuid.uuid4().hex[:12]}.parquet")
        _put_bytes(target, sink.getvalue().to_pybytes(), self._settings)
        new_keys = _as_array(_pair_keys(table.column("uri"), table.column("version")))
        self._done = pc.unique(pa.concat_arrays([self._done, new_keys]))
        self._file_count += 1
        logger.info("run %s: recorded %d objects in %s (%d error rows left to retry)", run_id, len(rows),
                    target.uri, retried)
        return target.uri

    def completed_runs(self) -> dict[str, dict]:
        """The runs marked complete by :func:`mark_run_complete`: run_id -> its marker (run_id, run_date,
        completed_at, summary), oldest first. Read when called."""
        folder = self._output.child(RUNS_DIR)
        markers = []
        for location in _list_files(folder, ".json", self._settings):
            data = _read_bytes(location, self._settings)
            try:
                markers.append(json.loads(data))
            except ValueError as err:
                raise ArchiveError(f"cannot read run marker {location.uri}: {err}") from err
        markers.sort(key=lambda marker: (str(marker.get("completed_at")), str(marker.get("run_id"))))
        return {marker["run_id"]: marker for marker in markers}


def _as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays
        return value.tolist()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def mark_run_complete(output_uri: str | os.PathLike, *, run_date: str | dt.date, run_id: str,
                      summary: Mapping[str, Any], s3_cfg: Any = None) -> str:
    """Mark run ``run_id`` complete: write ``<output>/_runs/<run_id>.json`` holding run_id, run_date
    (``YYYY-MM-DD``), completed_at (UTC ISO 8601) and ``summary`` (JSON-serialisable; numpy scalars allowed).
    Returns the marker's URI. Its presence means the run finished; see :meth:`Manifest.completed_runs`."""
    _check_run_id(run_id)
    if isinstance(run_date, dt.datetime):
        run_date = run_date.date()
    if isinstance(run_date, dt.date):
        run_date = run_date.isoformat()
    try:
        dt.date.fromisoformat(run_date)
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", run_date):
            raise ValueError(run_date)
    except (TypeError, ValueError):
        raise ValueError(f"run_date must be a date or 'YYYY-MM-DD', got {run_date!r}") from None
    if not isinstance(summary, Mapping):
        raise ValueError(f"summary must be a mapping, got {type(summary).__name__}")
    marker = {"run_id": run_id, "run_date": run_date,
              "completed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "summary": dict(summary)}
    try:
        data = json.dumps(marker, indent=2, sort_keys=True, default=_json_default).encode("utf-8")
    except TypeError as err:
        raise ValueError(f"summary must be JSON-serialisable: {err}") from err
    target = parse_uri(output_uri).child(f"{RUNS_DIR}/{run_id}.json")
    _put_bytes(target, data, _s3_settings(s3_cfg))
    logger.info("run %s complete: %s", run_id, target.uri)
    return target.uri
