"""Read, atomic write, delete and list, for local files and S3 objects alike.

Every write is whole: an S3 object is one PUT; a local file is written to a hidden temporary name in the
same folder, fsync'd and renamed into place (:func:`atomic_local_file`), so a reader never sees half a file
and a crash leaves the old file. Locations are anything :func:`classeg.io.uri.parse_uri` takes. ``s3_cfg`` is
an :class:`~classeg.io.s3.S3Settings`, or what :meth:`S3Settings.of` turns into one (None: the defaults); its
``sse``/``kms_key_id`` and ``expected_bucket_owner`` go with every S3 request made here (the client of
:func:`classeg.io.s3.client` adds them), so pass the job's ``s3`` settings, not None, wherever S3 is written.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from typing import Any

import botocore.exceptions

from classeg import redact
from classeg.errors import ArchiveError, FetchError
from classeg.io import s3 as s3io
from classeg.io.uri import Location, parse_uri

logger = logging.getLogger(__name__)

__all__ = ["atomic_local_file", "delete", "exists", "fetch", "list_files", "read_bytes", "read_text",
           "write_bytes", "write_text"]


@contextlib.contextmanager
def atomic_local_file(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write to; on success it is fsync'd and renamed to ``path``
    (replacing it), on an exception removed. The folder is created if needed."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_bytes(uri: str | os.PathLike | Location, data: bytes, *, s3_cfg: Any = None) -> None:
    """Write ``data`` as the whole object/file ``uri``; ArchiveError naming the URI when it cannot. On S3 one
    PUT, with the server-side encryption ``s3_cfg`` asks for (``s3.sse``, ``s3.kms_key_id``)."""
    location = parse_uri(uri)
    if location.is_s3:
        if not location.prefix or location.prefix.endswith("/"):
            raise ValueError(f"writing needs the URI of one object, got the folder {location.uri!r}")
        settings = s3io.S3Settings.of(s3_cfg)
        client = s3io.client(settings)
        s3io.call(functools.partial(client.put_object, Bucket=location.bucket, Key=location.prefix, Body=data),
                  uri=location.uri, what=f"writing {location.uri}", settings=settings)
        return
    try:
        with atomic_local_file(location.path) as temporary:
            with open(temporary, "wb") as handle:
                handle.write(data)
    except OSError as err:
        raise ArchiveError(f"cannot write {location.uri}: {err.strerror or err}") from err


def write_text(uri: str | os.PathLike | Location, text: str, *, s3_cfg: Any = None) -> None:
    """:func:`write_bytes` of ``text`` as UTF-8."""
    write_bytes(uri, text.encode("utf-8"), s3_cfg=s3_cfg)


def fetch(uri: str | os.PathLike | Location, *, s3_cfg: Any = None, max_bytes: int | None = None,
          client: Any = None) -> bytes:
    """The bytes of one object (``s3://bucket/key``, ``file:///abs/path`` or a local path).

    S3: at most ``s3.max_attempts`` GET requests, retrying transient failures (HTTP 429/500/502/503/504,
    SlowDown and other throttling, connection refused/reset/closed, timeouts, bodies cut short) with
    exponential backoff and jitter. ``client``: an S3 client to use instead of the cached one, built by
    :func:`classeg.io.s3.client` so that it sends the expected bucket owner (``s3_cfg`` still sets attempts and
    backoff). ``max_bytes``: larger objects are not downloaded (checked against the
    response's Content-Length, or the file size first).

    Raises :class:`~classeg.errors.FetchError` with kind ``not_found`` (no such key, bucket or file),
    ``too_large``, or ``fetch_failed`` (the message says how many attempts were made and the last error).
    """
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
        raise ValueError(f"max_bytes must be None or an integer >= 0, got {max_bytes!r}")
    location = parse_uri(uri)
    if not location.is_s3:
        return _fetch_local(location, max_bytes)
    if not location.prefix or location.prefix.endswith("/"):
        raise ValueError(f"fetch needs the URI of one object, got the folder {location.uri!r}")
    settings = s3io.S3Settings.of(s3_cfg)
    client = client if client is not None else s3io.client(settings)
    try:
        return s3io.with_retries(functools.partial(_get_object, client, location, max_bytes),
                                 what=f"fetching {location.uri}", settings=settings)
    except _TooLarge as err:
        raise FetchError("too_large", f"{err.size} bytes, more than max_bytes={max_bytes}", uri=location.uri,
                         attempts=1) from None
    except s3io.AttemptsFailed as failed:
        raise _fetch_error(location, failed, settings) from failed.error
    except botocore.exceptions.BotoCoreError as err:  # no credentials, invalid parameters: not retried
        raise FetchError("fetch_failed", f"1 attempt, {type(err).__name__}: {err}", uri=location.uri,
                         attempts=1) from err


class _TooLarge(Exception):
    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


def _get_object(client: Any, location: Location, max_bytes: int | None) -> bytes:
    response = client.get_object(Bucket=location.bucket, Key=location.prefix)
    body = response["Body"]
    length = response.get("ContentLength")
    if max_bytes is not None and length is not None and length > max_bytes:
        body.close()  # drop the connection rather than download what will not be used
        raise _TooLarge(length)
    try:
        data = body.read()
    except BaseException:
        body.close()
        raise
    if length is not None and len(data) != length:
        raise botocore.exceptions.IncompleteReadError(actual_bytes=len(data), expected_bytes=length)
    return data


def _fetch_error(location: Location, failed: s3io.AttemptsFailed, settings: s3io.S3Settings) -> FetchError:
    err = failed.error
    code, status = s3io.error_code(err)
    if s3io.is_not_found(err):
        return FetchError("not_found", f"{code or status}: {location.uri}", uri=location.uri,
                          attempts=failed.attempts)
    plural = "attempt" if failed.attempts == 1 else "attempts"
    detail = f"{code}: {err}" if code and code not in str(err) else str(err)
    detail += s3io.owner_hint(err, settings)
    message = f"{failed.attempts} {plural}, last error {type(err).__name__}: {detail}"
    logger.warning("fetching %s failed: %s", redact.scrub(location.uri), redact.scrub(message))
    return FetchError("fetch_failed", message, uri=location.uri, attempts=failed.attempts)


def _fetch_local(location: Location, max_bytes: int | None) -> bytes:
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
    except (FileNotFoundError, NotADirectoryError):
        raise FetchError("not_found", f"no such file: {location.uri}", uri=location.uri, attempts=1) from None
    except OSError as err:
        raise FetchError("fetch_failed", f"1 attempt, {type(err).__name__}: {err.strerror or err}",
                         uri=location.uri, attempts=1) from err
    if max_bytes is not None and len(data) > max_bytes:  # the file grew since stat
        raise FetchError("too_large", f"more than max_bytes={max_bytes} bytes", uri=location.uri, attempts=1)
    return data


def read_bytes(uri: str | os.PathLike | Location, *, s3_cfg: Any = None) -> bytes:
    """The whole object/file ``uri``: FileNotFoundError naming it when it is absent, ArchiveError when it
    cannot be read (S3 kept failing, access denied)."""
    try:
        return fetch(uri, s3_cfg=s3_cfg)
    except FetchError as err:
        if err.kind == "not_found":
            raise FileNotFoundError(f"{parse_uri(uri).uri} does not exist ({err})") from err
        raise ArchiveError(f"cannot read {parse_uri(uri).uri}: {err}") from err


def read_text(uri: str | os.PathLike | Location, *, s3_cfg: Any = None) -> str:
    """:func:`read_bytes` decoded as UTF-8."""
    return read_bytes(uri, s3_cfg=s3_cfg).decode("utf-8")


def exists(uri: str | os.PathLike | Location, *, s3_cfg: Any = None) -> bool:
    """Whether the file/object ``uri`` exists (a local folder counts; on S3 only an object with that key)."""
    location = parse_uri(uri)
    if not location.is_s3:
        return os.path.exists(location.path)
    settings = s3io.S3Settings.of(s3_cfg)
    client = s3io.client(settings)
    try:
        s3io.with_retries(functools.partial(client.head_object, Bucket=location.bucket, Key=location.prefix),
                          what=f"head {location.uri}", settings=settings)
        return True
    except s3io.AttemptsFailed as failed:
        if s3io.is_not_found(failed.error):
            return False
        raise s3io.storage_error(location.uri, failed.error, failed.attempts, settings=settings) from failed.error


def delete(uri: str | os.PathLike | Location, *, s3_cfg: Any = None) -> int:
    """Delete the file/object ``uri`` and everything below it as a folder; returns how many files/objects were
    deleted (nothing there is not an error). On S3 each list page and delete batch is retried."""
    location = parse_uri(uri)
    if not location.is_s3:
        return _delete_local(location)
    key = location.prefix.rstrip("/")
    if not key:
        raise ValueError(f"delete needs a URI below the bucket (s3://bucket/prefix), got {location.uri!r}")
    settings = s3io.S3Settings.of(s3_cfg)
    doomed = [item["Key"] for page in s3io.list_pages(location, key, settings) for item in page.get("Contents", ())
              if item["Key"] == key or item["Key"].startswith(key + "/")]
    client = s3io.client(settings)
    for start in range(0, len(doomed), 1000):  # delete_objects takes at most 1000 keys a request
        batch = {"Objects": [{"Key": name} for name in doomed[start:start + 1000]], "Quiet": True}
        response = s3io.call(functools.partial(client.delete_objects, Bucket=location.bucket, Delete=batch),
                             uri=location.uri, what=f"deleting under {location.uri}", settings=settings)
        if response.get("Errors"):
            first = response["Errors"][0]
            raise ArchiveError(f"cannot delete {len(response['Errors'])} objects under {location.uri}, e.g. "
                               f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")
    return len(doomed)


def _delete_local(location: Location) -> int:
    path = location.path
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            count = sum(len(names) for _, _, names in os.walk(path))
            shutil.rmtree(path)
            return count
        os.remove(path)
        return 1
    except FileNotFoundError:
        return 0
    except OSError as err:
        raise ArchiveError(f"cannot delete {location.uri}: {err.strerror or err}") from err


def list_files(folder: str | os.PathLike | Location, *, suffix: str = "", s3_cfg: Any = None) -> list[Location]:
    """The visible files at any depth under ``folder`` whose names end with ``suffix``, sorted by URI; none if
    the folder does not exist. Names starting with ``.`` (and everything below such folders) are hidden."""
    location = parse_uri(folder)
    if not location.is_s3:
        found = []
        for directory, subdirectories, names in os.walk(location.path):
            subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
            found += [os.path.join(directory, name) for name in names
                      if not name.startswith(".") and name.endswith(suffix)]
        return sorted((parse_uri(path) for path in found), key=lambda item: item.uri)
    prefix = location.dir_prefix
    settings = s3io.S3Settings.of(s3_cfg)
    found = []
    for page in s3io.list_pages(location, prefix, settings):
        for item in page.get("Contents", ()):
            relative = item["Key"][len(prefix):]
            if relative and not item["Key"].endswith("/") and relative.endswith(suffix) and not any(
                    part.startswith(".") for part in relative.split("/")):
                found.append(Location("s3", bucket=location.bucket, prefix=item["Key"],
                                      hadoop_scheme=location.hadoop_scheme))
    return sorted(found, key=lambda item: item.uri)
