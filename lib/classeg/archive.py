"""Scan archives to score: listing ``s3://`` prefixes (boto3) and local folders as :class:`ObjectInfo`.

No Spark here. :func:`list_archive` lists a whole archive in this process. For archives too large for one
process, :func:`listing_parts` cuts the archive into parts on the driver (a bounded, delimiter-based discovery of
S3 sub-prefixes or of local subfolders) and :func:`list_part` lists one part, inside a Spark task
(:mod:`classeg.scoring.listing`); the parts together list exactly what :func:`list_archive` lists. Reading,
writing and S3 clients are :mod:`classeg.io`'s.

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
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote_from_bytes

import pandas as pd

from classeg import redact
from classeg.errors import ArchiveError
from classeg.io import s3 as s3io
from classeg.io.uri import Location, parse_uri

logger = logging.getLogger(__name__)

__all__ = ["OBJECT_COLUMNS", "OBJECTS_SCHEMA_DDL", "PART_MODES", "ListingPart", "ObjectInfo", "archive_single_key",
           "child_prefixes", "is_hidden", "list_archive", "list_part", "listing_parts", "normalise_suffixes",
           "objects_frame"]

OBJECT_COLUMNS = ("uri", "key", "size", "etag", "mtime", "version")
# Spark schema of objects_frame(); pass it to createDataFrame (an all-null etag column cannot be inferred).
OBJECTS_SCHEMA_DDL = "uri string, key string, size long, etag string, mtime double, version string"
_LIST_PROGRESS_EVERY = 100_000
# Discovery of listing parts reads at most this many delimiter pages (1000 entries each) of one S3 level, or
# entries of one local folder, before giving up on cutting it: a flat level is then one part, listed whole in a task.
_DISCOVERY_PAGES_PER_LEVEL = 10
_DISCOVERY_ENTRIES_PER_FOLDER = 10_000


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


def is_hidden(relative_key: str) -> bool:
    """Whether a key relative to the archive root is hidden (a path component starts with ``.``)."""
    return any(part.startswith(".") for part in relative_key.split("/"))


def normalise_suffixes(suffixes: Iterable[str] | str | None) -> tuple[str, ...] | None:
    """``suffixes`` as list_archive takes them, checked and lower-cased (None: every file)."""
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
    wanted = normalise_suffixes(suffixes)
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
    root_stat = _local_root(location)
    if stat.S_ISREG(root_stat.st_mode):
        return iter([_local_info(root, os.path.basename(root), root_stat)])
    return _walk_local(root, "", {(root_stat.st_dev, root_stat.st_ino)})


def _local_root(location: Location) -> os.stat_result:
    """The stat of a local archive's root, a readable folder or a regular file; ArchiveError otherwise."""
    root = location.path
    try:
        root_stat = os.stat(root)
    except FileNotFoundError:
        raise ArchiveError(f"cannot list {location.uri}: no such file or directory") from None
    except OSError as err:
        raise ArchiveError(f"cannot list {location.uri}: {err.strerror or err}") from err
    if stat.S_ISREG(root_stat.st_mode):
        return root_stat
    if not stat.S_ISDIR(root_stat.st_mode):
        raise ArchiveError(f"cannot list {location.uri}: neither a folder nor a regular file")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ArchiveError(f"cannot list {location.uri}: permission denied")
    return root_stat


def _local_info(path: str, key: str, file_stat: os.stat_result) -> ObjectInfo:
    # Path(path).as_uri() spelled out: the same string for the absolute, normalised paths of a walk, without
    # building a Path per file of a large tree.
    return ObjectInfo(uri="file://" + quote_from_bytes(os.fsencode(path)), key=key, size=file_stat.st_size, etag=None,
                      mtime=file_stat.st_mtime, version=f"{file_stat.st_size}-{file_stat.st_mtime_ns}")


def _folder_items(directory: str) -> list[tuple[str, os.DirEntry, os.stat_result]]:
    """The visible files and folders of ``directory`` as (sort name, entry, stat), in the order S3 would list
    their keys (a folder sorts as ``name/``); broken symlinks, fifos, sockets and devices skipped."""
    try:
        with os.scandir(directory) as scan:
            entries = [entry for entry in scan if not entry.name.startswith(".")]
    except OSError as err:
        raise ArchiveError(f"cannot list {redact.scrub(Path(directory).as_uri())}: {err.strerror or err}") from err
    items: list[tuple[str, os.DirEntry, os.stat_result]] = []
    for entry in entries:
        try:
            entry_stat = entry.stat()  # follows symlinks
        except OSError as err:
            logger.warning("skipping %s: %s (broken symlink?)", redact.label(entry.path), err.strerror or err)
            continue
        if stat.S_ISDIR(entry_stat.st_mode):
            items.append((entry.name + "/", entry, entry_stat))
        elif stat.S_ISREG(entry_stat.st_mode):
            items.append((entry.name, entry, entry_stat))
        else:
            logger.warning("skipping %s: not a regular file (fifo, socket or device)", redact.label(entry.path))
    items.sort(key=lambda item: item[0])
    return items


def _walk_local(directory: str, key_prefix: str, seen: set[tuple[int, int]] | frozenset,
                *, recursive: bool = True) -> Iterator[ObjectInfo]:
    """Depth-first walk yielding files in the order S3 would list their keys; ``recursive=False``: the files
    directly in ``directory`` only."""
    for sort_name, entry, entry_stat in _folder_items(directory):
        if not sort_name.endswith("/"):
            yield _local_info(entry.path, key_prefix + entry.name, entry_stat)
        elif recursive:
            identity = (entry_stat.st_dev, entry_stat.st_ino)
            if identity in seen:
                logger.warning("skipping %s: symlink loop", redact.label(entry.path))
                continue
            yield from _walk_local(entry.path, key_prefix + sort_name, seen | {identity})


def _s3_infos(location: Location, prefix: str, pages: Iterable[dict]) -> Iterator[ObjectInfo]:
    """The objects of ``pages`` (``list_objects_v2`` responses), keys relative to ``prefix``."""
    for page in pages:
        for item in page.get("Contents", ()):
            key = item["Key"]
            relative = key[len(prefix):]
            if not relative or key.endswith("/") or is_hidden(relative):
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


def archive_single_key(location: Location) -> str | None:
    """The key an ``s3://`` archive URI would name as one object (``scans/a.png``), or None for a folder URI
    (``scans/``, the bucket). list_archive takes it as one object only when nothing is listed below it as a
    folder; an inventory lists both."""
    return location.prefix if location.prefix and not location.prefix.endswith("/") else None


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


# ------------------------------------------------------------------------------------ listing in parts

PART_MODES = ("tree", "level", "single")


class ListingPart(NamedTuple):
    """One part of an archive's listing, small and picklable, listed by one task with :func:`list_part`.

    ``archive``: the archive URI; ``start``: the S3 key prefix (``''`` or ending with ``/``) or the local folder
    the part covers; ``mode``: ``"tree"`` (every object below ``start``), ``"level"`` (only the objects directly
    in ``start``: its sub-prefixes or subfolders are parts of their own) or ``"single"`` (the archive names one
    object); ``seen``: local only, the (device, inode) of ``start`` and of the folders above it in the archive,
    so that a symlink loop is cut where :func:`list_archive` cuts it.
    """

    archive: str
    start: str
    mode: str
    seen: tuple[tuple[int, int], ...] = ()


def listing_parts(uri: str | os.PathLike, *, s3_cfg: Any = None, max_parts: int = 64) -> list[ListingPart]:
    """The archive cut into about ``max_parts`` parts whose listings together are :func:`list_archive`'s.

    Discovery, on the driver, is breadth-first: S3 levels listed with ``Delimiter='/'`` (their sub-prefixes
    become candidate parts, their own objects a ``"level"`` part), local folders scanned for subfolders,
    until there are ``max_parts`` candidates; what is left becomes ``"tree"`` parts. It is bounded: a level of
    more than 10 delimiter pages (a local folder of more than 10,000 entries) is not cut but listed whole as one
    part, so the driver never pages through a flat archive. Hidden sub-prefixes and folders (``.git/``) are not
    parts at all. Raises :class:`ArchiveError` as :func:`list_archive` does, when called.
    """
    if isinstance(max_parts, bool) or not isinstance(max_parts, int) or max_parts < 1:
        raise ValueError(f"max_parts must be an integer >= 1, got {max_parts!r}")
    location = parse_uri(uri)
    if location.scheme == "file":
        parts = _local_parts(location, max_parts)
    else:
        parts = _s3_parts(location, s3io.S3Settings.of(s3_cfg), max_parts)
    logger.info("listing %s in %d parts", location.uri, len(parts))
    return sorted(parts, key=lambda part: (part.start, part.mode))


def list_part(part: ListingPart, *, s3_cfg: Any = None, suffixes: Iterable[str] | None = None) -> Iterator[ObjectInfo]:
    """The objects of one part of :func:`listing_parts`, as :func:`list_archive` lists them (uri, key relative to
    the archive root, size, etag, mtime, version), ``suffixes`` applied the same way."""
    if part.mode not in PART_MODES:
        raise ValueError(f"part mode must be one of {PART_MODES}, got {part.mode!r}")
    wanted = normalise_suffixes(suffixes)
    location = parse_uri(part.archive)
    if part.mode == "single":
        objects = iter(list(list_archive(part.archive, s3_cfg=s3_cfg)))
    elif location.scheme == "file":
        relative = Path(part.start).relative_to(location.path).as_posix()
        objects = _walk_local(part.start, "" if relative == "." else relative + "/", frozenset(part.seen),
                              recursive=part.mode == "tree")
    else:
        settings = s3io.S3Settings.of(s3_cfg)
        pages = (s3io.list_pages(location, part.start, settings) if part.mode == "tree"
                 else _delimited_pages(location, part.start, settings))
        objects = _s3_infos(location, location.dir_prefix, pages)
    if wanted is not None:
        objects = (info for info in objects if info.key.lower().endswith(wanted))
    return objects


def child_prefixes(uri: str | os.PathLike, *, s3_cfg: Any = None) -> list[str]:
    """The names of the folders directly in the folder ``uri`` (on S3 its common prefixes under ``/``), sorted;
    none when it does not exist."""
    location = parse_uri(uri)
    if location.scheme == "file":
        try:
            with os.scandir(location.path) as scan:
                return sorted(entry.name for entry in scan if entry.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as err:
            raise ArchiveError(f"cannot list {location.uri}: {err.strerror or err}") from err
    prefix = location.dir_prefix
    pages = _delimited_pages(location, prefix, s3io.S3Settings.of(s3_cfg))
    return sorted(common["Prefix"][len(prefix):].rstrip("/") for page in pages
                  for common in page.get("CommonPrefixes", ()))


def _delimited_pages(location: Location, prefix: str, settings: s3io.S3Settings) -> Iterator[dict]:
    """``list_objects_v2`` pages of ``prefix`` with ``Delimiter='/'``: its own objects and its sub-prefixes
    (CommonPrefixes), each page retried on its own as :func:`classeg.io.s3.list_pages` does."""
    client = s3io.client(settings)
    token = None
    while True:
        request = {"Bucket": location.bucket, "Prefix": prefix, "Delimiter": "/"}
        if token:
            request["ContinuationToken"] = token
        page = s3io.call(functools.partial(client.list_objects_v2, **request), uri=location.uri,
                         what=f"listing {location.uri}", settings=settings)
        yield page
        if not page.get("IsTruncated"):
            return
        token = page["NextContinuationToken"]


def _s3_level(location: Location, prefix: str, settings: s3io.S3Settings) -> tuple[list[str], bool, bool]:
    """(sub-prefixes, whether it has objects of its own, whether it was read to the end) of one S3 level, from
    at most ``_DISCOVERY_PAGES_PER_LEVEL`` pages."""
    children, has_objects = [], False
    for count, page in enumerate(_delimited_pages(location, prefix, settings), start=1):
        children += [common["Prefix"] for common in page.get("CommonPrefixes", ())]
        has_objects = has_objects or bool(page.get("Contents"))
        if not page.get("IsTruncated"):
            return children, has_objects, True
        if count >= _DISCOVERY_PAGES_PER_LEVEL:
            break
    return children, has_objects, False


def _s3_parts(location: Location, settings: s3io.S3Settings, max_parts: int) -> list[ListingPart]:
    root = location.dir_prefix
    level = _s3_level(location, root, settings)  # now: a missing bucket or denied access fails here
    if level == ([], False, True):
        if _s3_single_object(location, settings) is None:
            raise ArchiveError(f"cannot use {location.uri}: no objects under this prefix "
                               "(S3 has no empty folders: check the bucket and prefix)")
        return [ListingPart(location.uri, location.prefix, "single")]
    parts: list[ListingPart] = []
    queue: deque[str] = deque()
    prefix = root
    while True:
        children, has_objects, complete = level
        if not complete:
            parts.append(ListingPart(location.uri, prefix, "tree"))
        else:
            if has_objects:
                parts.append(ListingPart(location.uri, prefix, "level"))
            queue.extend(child for child in children if not is_hidden(child[len(root):].rstrip("/")))
        if not queue or len(parts) + len(queue) >= max_parts:
            break
        prefix = queue.popleft()
        level = _s3_level(location, prefix, settings)
    return parts + [ListingPart(location.uri, child, "tree") for child in queue]


def _local_parts(location: Location, max_parts: int) -> list[ListingPart]:
    root_stat = _local_root(location)
    if stat.S_ISREG(root_stat.st_mode):
        return [ListingPart(location.uri, location.path, "single")]
    parts: list[ListingPart] = []
    queue = deque([(location.path, ((root_stat.st_dev, root_stat.st_ino),))])
    expanded = 0
    while queue and (not expanded or len(parts) + len(queue) < max_parts):
        expanded += 1
        folder, seen = queue.popleft()
        subfolders, has_files = _local_level(folder, seen)
        if subfolders is None:
            parts.append(ListingPart(location.uri, folder, "tree", seen))
            continue
        if has_files:
            parts.append(ListingPart(location.uri, folder, "level", seen))
        queue.extend(subfolders)
    return parts + [ListingPart(location.uri, folder, "tree", seen) for folder, seen in queue]


def _local_level(folder: str, seen: tuple) -> tuple[list | None, bool]:
    """(visible subfolders with their ``seen``, or None past ``_DISCOVERY_ENTRIES_PER_FOLDER`` entries; whether
    anything else is there) of one local folder. A subfolder that loops back is left out, as the walk does."""
    subfolders, has_files = [], False
    try:
        with os.scandir(folder) as scan:
            for count, entry in enumerate(scan, start=1):
                if count > _DISCOVERY_ENTRIES_PER_FOLDER:
                    return None, True
                if entry.name.startswith("."):
                    continue
                if not entry.is_dir():  # follows symlinks; broken ones are the level part's to skip
                    has_files = True
                    continue
                entry_stat = entry.stat()
                identity = (entry_stat.st_dev, entry_stat.st_ino)
                if identity in seen:
                    logger.warning("skipping %s: symlink loop", redact.label(entry.path))
                    continue
                subfolders.append((entry.path, seen + (identity,)))
    except OSError as err:
        raise ArchiveError(f"cannot list {redact.scrub(Path(folder).as_uri())}: {err.strerror or err}") from err
    return sorted(subfolders), has_files


def objects_frame(objects: Iterable[ObjectInfo]) -> pd.DataFrame:
    """The objects as a DataFrame with columns :data:`OBJECT_COLUMNS` (uri, key, size int64, etag, mtime float64,
    version), for the scoring job's Spark DataFrame (use :data:`OBJECTS_SCHEMA_DDL` as its schema)."""
    frame = pd.DataFrame.from_records(list(objects), columns=list(OBJECT_COLUMNS))
    return frame.astype({"uri": object, "key": object, "size": "int64", "etag": object, "mtime": "float64",
                         "version": object})
