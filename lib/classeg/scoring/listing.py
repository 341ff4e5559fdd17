"""The archive's listing as a Spark DataFrame, listed inside Spark tasks, so the driver never holds it.

Three sources, one result (:data:`classeg.archive.OBJECTS_SCHEMA_DDL` rows, as
:func:`classeg.archive.list_archive` gives them):

* an S3 Inventory report (``score.inventory``): the driver reads ``manifest.json`` only; each data file is
  fetched, checked and parsed in its own task (:func:`classeg.inventory.inventory_objects`);
* an ``s3://`` prefix: the driver discovers sub-prefixes with delimiter listings, bounded
  (:func:`classeg.archive.listing_parts`); each part is listed with ``list_objects_v2`` in its own task;
* a local folder: likewise, subfolders listed in tasks (the executors must see the same folder: local mode, or a
  shared file system).

The DataFrame is lazy: listing happens in the first Spark job that reads it (the plan's count), and a task that
cannot list raises an ArchiveError that :func:`listing_errors` turns back into one on the driver.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from classeg import redact
from classeg.archive import OBJECTS_SCHEMA_DDL, ListingPart, list_part, listing_parts
from classeg.errors import ArchiveError, python_failures
from classeg.inventory import InventoryFile, inventory_objects, read_manifest
from classeg.io.s3 import S3Settings
from classeg.io.uri import parse_uri

log = logging.getLogger(__name__)

__all__ = ["ArchiveListing", "archive_listing", "listing_errors"]

_BATCH_ROWS = 50_000
# Listing parts per core of defaultParallelism: enough for uneven prefixes to even out across the cores.
_PARTS_PER_CORE = 8
_MIN_PARTS = 16


@dataclass
class ArchiveListing:
    """An archive's listing: ``frame`` (a lazy Spark DataFrame of :data:`~classeg.archive.OBJECTS_SCHEMA_DDL`),
    ``source`` (``inventory``, ``s3`` or ``local``), ``tasks`` (the listing tasks: data files or parts),
    ``inventory`` (the manifest.json used, else None) and ``seconds`` spent on the driver (manifest read or
    discovery)."""

    frame: Any
    source: str
    tasks: int
    inventory: str | None
    seconds: float

    def describe(self) -> dict:
        return {"source": self.source, "tasks": self.tasks, "inventory": self.inventory,
                "discovery_seconds": self.seconds}


def archive_listing(spark, archive: str, *, s3_cfg: Any = None, suffixes: Iterable[str] | None = None,
                    inventory: str | None = None, max_parts: int | None = None,
                    redaction: Any = None) -> ArchiveListing:
    """The listing of ``archive`` as a Spark DataFrame built in tasks (see the module docstring). ``inventory``:
    an S3 Inventory ``manifest.json`` or its configuration's folder, for an ``s3://`` archive of the report's
    source bucket. ``max_parts``: listing parts of a prefix or folder (default 8 per core of
    ``defaultParallelism``, at least 16). ``redaction``: the :class:`classeg.redact.KeyRedaction` the listing tasks
    name keys with in their logs and errors (None: the driver's current policy). Driver only. Raises ArchiveError (unusable archive or report) or
    ValueError (an inventory for a local archive)."""
    from classeg.spark import ensure_driver

    ensure_driver("archive_listing")
    started = time.perf_counter()
    settings = S3Settings.of(s3_cfg)
    location = parse_uri(archive)
    wanted = tuple(suffixes) if suffixes is not None else None
    if inventory:
        if not location.is_s3:
            raise ValueError(f"score.inventory lists an S3 bucket: the archive must be s3://..., got {archive!r}")
        manifest = read_manifest(inventory, s3_cfg=settings)
        if manifest.source_bucket != location.bucket:
            raise ArchiveError(f"inventory {manifest.uri} lists bucket {manifest.source_bucket!r}, the archive "
                               f"{location.uri} is in bucket {location.bucket!r}")
        task = partial(_inventory_task, data_files=manifest.files, file_format=manifest.file_format,
                       columns=manifest.columns, archive=location.uri, suffixes=wanted, settings=settings)
        tasks, source, used = len(manifest.files), "inventory", manifest.uri
        log.info("listing %s from inventory %s (%s, %d data files, created %d)", location.uri, manifest.uri,
                 manifest.file_format, tasks, manifest.creation_timestamp)
    else:
        parts = listing_parts(archive, s3_cfg=settings, max_parts=max_parts or max(
            _MIN_PARTS, _PARTS_PER_CORE * spark.sparkContext.defaultParallelism))
        task = partial(_parts_task, parts=tuple(parts), suffixes=wanted, settings=settings)
        tasks, source, used = len(parts), "s3" if location.is_s3 else "local", None
    frame = _task_frame(spark, tasks, task, redaction if redaction is not None else redact.current())
    return ArchiveListing(frame=frame, source=source, tasks=tasks, inventory=used,
                          seconds=round(time.perf_counter() - started, 3))


def _task_frame(spark, tasks: int, task: Callable[[int], Iterator[Any]], redaction: Any):
    """One Spark task per index in ``range(tasks)``, each yielding Arrow batches of the listing columns, under the
    ``redaction`` policy."""
    if tasks == 0:
        return spark.createDataFrame([], schema=OBJECTS_SCHEMA_DDL)

    def list_tasks(batches):
        redact.activate(redaction)
        for batch in batches:
            for index in batch.column(0).to_pylist():
                yield from task(index)

    return spark.range(tasks, numPartitions=tasks).mapInArrow(list_tasks, schema=OBJECTS_SCHEMA_DDL)


def _inventory_task(index: int, *, data_files: tuple[InventoryFile, ...], file_format: str, columns, archive: str,
                    suffixes, settings: S3Settings) -> Iterator[Any]:
    return inventory_objects(data_files[index], file_format=file_format, columns=columns, archive=archive,
                             suffixes=suffixes, s3_cfg=settings)


def _parts_task(index: int, *, parts: tuple[ListingPart, ...], suffixes, settings: S3Settings) -> Iterator[Any]:
    """Arrow batches of the objects of ``parts[index]``."""
    import pyarrow as pa

    schema = pa.schema([("uri", pa.string()), ("key", pa.string()), ("size", pa.int64()), ("etag", pa.string()),
                        ("mtime", pa.float64()), ("version", pa.string())])
    rows: list = []
    for info in list_part(parts[index], s3_cfg=settings, suffixes=suffixes):
        rows.append(info)
        if len(rows) >= _BATCH_ROWS:
            yield _batch(rows, schema)
            rows = []
    if rows:
        yield _batch(rows, schema)


def _batch(rows: list, schema):
    """ObjectInfo rows (fields in OBJECT_COLUMNS order, as the schema) as one RecordBatch."""
    import pyarrow as pa

    columns = list(zip(*rows))
    return pa.RecordBatch.from_arrays([pa.array(values, type=field.type) for values, field in zip(columns, schema)],
                                      schema=schema)


@contextlib.contextmanager
def listing_errors() -> Iterator[None]:
    """Run Spark actions that list inside this: an ArchiveError raised in a listing task (a data file that fails
    its MD5, a prefix that cannot be listed) is raised again here as an ArchiveError with the task's message."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        yield
    except (Py4JJavaError, PySparkException) as err:
        for name, message, _ in reversed(python_failures(str(err))):
            if name == "ArchiveError":
                raise ArchiveError(message) from err
        raise
