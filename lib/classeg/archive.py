"""Scan archives to score: listing ``s3://`` prefixes (boto3) and local folders as :class:`ObjectInfo`.

No Spark here: the scoring job lists on the driver and fetches bytes inside its tasks with
:func:`classeg.io.files.fetch`. Reading, writing and S3 clients are :mod:`classeg.io`'s.

Conventions
-----------
* An archive is a folder: ``s3://bucket/prefix`` (``s3a://`` accepted, written back as ``s3://``),
  ``file:///abs/path`` or a plain local path. It may also name a single object or file.
* Every object has a ``version`` string that changes when its content changes: the ETag on S3 (quotes
  stripped), ``f"{size}-{mtime_ns}"`` locally. The scoring manifest remembers (uri, version) pairs.
* Keys with a path component starting with ``.`` (``.DS_Store``, ``.git/``, editor droppings) are hidden
  and never listed, locally and on S3 alike, so an archive synced from a laptop lists the same on both.
  S3 "folder" marker keys (ending in ``/``) are skipped. Every other file is listed, including non-images:
  they become ``error`` rows of the scores table, not silent gaps.
"""
from __future__ import annotations

import functools
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from classeg.errors import ArchiveError
from classeg.io import s3 as s3io
from classeg.io.uri import Location, parse_uri

logger = logging.getLogger(__name__)

__all__ = ["OBJECT_COLUMNS", "OBJECTS_SCHEMA_DDL", "ObjectInfo", "list_archive", "objects_frame"]

OBJECT_COLUMNS = ("uri", "key", "size", "etag", "mtime", "version")
# Spark schema of objects_frame(); pass it to createDataFrame (an all-null etag column cannot be inferred).
OBJECTS_SCHEMA_DDL = "uri string, key string, size long, etag string, mtime double, version string"
_LIST_PROGRESS_EVERY = 100_000


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
        objects = _s3_archive_objects(location, s3io.S3Settings.of(s3_cfg))
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


def _local_objects(location: Location) -> Iterator[ObjectInfo]:
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


def _s3_infos(location: Location, prefix: str, pages: Iterable[dict]) -> Iterator[ObjectInfo]:
    for page in pages:
        for item in page.get("Contents", ()):
            key = item["Key"]
            relative = key[len(prefix):]
            if not relative or key.endswith("/") or _is_hidden(relative):
                continue
            yield ObjectInfo(uri=f"s3://{location.bucket}/{key}", key=relative, size=int(item["Size"]),
                             etag=item["ETag"].strip('"'), mtime=item["LastModified"].timestamp(),
                             version=item["ETag"].strip('"'))


def _s3_archive_objects(location: Location, settings: s3io.S3Settings) -> Iterator[ObjectInfo]:
    prefix = location.dir_prefix
    pages = s3io.list_pages(location, prefix, settings)
    first = next(pages)  # now, not lazily: a missing bucket or denied access fails before any work
    if not first.get("Contents") and not first.get("IsTruncated"):
        single = _s3_single_object(location, settings)
        if single is None:
            raise ArchiveError(f"cannot use {location.uri}: no objects under this prefix "
                               "(S3 has no empty folders: check the bucket and prefix)")
        return iter([single])
    return _s3_infos(location, prefix, chain([first], pages))


def _s3_single_object(location: Location, settings: s3io.S3Settings) -> ObjectInfo | None:
    """The archive URI names one object (``s3://bucket/scans/a.png``): that object, or None."""
    if not location.prefix or location.prefix.endswith("/"):
        return None
    client = s3io.client(settings)
    try:
        head = s3io.with_retries(functools.partial(client.head_object, Bucket=location.bucket, Key=location.prefix),
                                 what=f"head {location.uri}", settings=settings)
    except s3io.AttemptsFailed as failed:
        if s3io.is_not_found(failed.error):
            return None
        raise s3io.storage_error(location.uri, failed.error, failed.attempts) from failed.error
    etag = head["ETag"].strip('"')
    return ObjectInfo(uri=location.uri, key=location.prefix.rsplit("/", 1)[-1], size=int(head["ContentLength"]),
                      etag=etag, mtime=head["LastModified"].timestamp(), version=etag)


def objects_frame(objects: Iterable[ObjectInfo]) -> pd.DataFrame:
    """The objects as a DataFrame with columns :data:`OBJECT_COLUMNS` (uri, key, size int64, etag, mtime float64,
    version), for the scoring job's Spark DataFrame (use :data:`OBJECTS_SCHEMA_DDL` as its schema)."""
    frame = pd.DataFrame.from_records(list(objects), columns=list(OBJECT_COLUMNS))
    return frame.astype({"uri": object, "key": object, "size": "int64", "etag": object, "mtime": "float64",
                         "version": object})


