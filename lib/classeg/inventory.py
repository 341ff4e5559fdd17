"""S3 Inventory reports as an archive's listing: the manifest read on the driver, each data file read in a task.

No Spark here (:mod:`classeg.scoring.listing` runs :func:`inventory_objects` in Spark tasks, one per data file).
Every read goes through :mod:`classeg.io` (so ``s3.endpoint_url``, encryption and ``s3.expected_bucket_owner``
apply); parsing is pyarrow's.

The layout is AWS's (Amazon S3 User Guide, "Locating your inventory list")::

    <destination-prefix>/<source-bucket>/<config-ID>/YYYY-MM-DDTHH-MMZ/manifest.json
    <destination-prefix>/<source-bucket>/<config-ID>/YYYY-MM-DDTHH-MMZ/manifest.checksum   (MD5 of manifest.json)
    <destination-prefix>/<source-bucket>/<config-ID>/data/<uuid>.csv.gz | .orc | .parquet

``manifest.json`` holds ``sourceBucket``, ``destinationBucket`` (an ARN), ``version``, ``creationTimestamp``
(epoch milliseconds), ``fileFormat`` (``CSV``, ``ORC`` or ``Parquet``), ``fileSchema`` and ``files``
(``key``, ``size``, ``MD5checksum`` of each data file, the key in the destination bucket). CSV data files are
gzip, without a header, their columns in ``fileSchema`` order (``Bucket, Key, VersionId, ...``) and keys
URL-encoded (a space as ``+``); ORC (ZLIB) and Parquet (Snappy) files have typed columns named ``bucket``,
``key``, ``version_id``, ``is_latest``, ``is_delete_marker``, ``size``, ``last_modified_date``, ``e_tag``, ...

Conventions
-----------
* The inventory is given as the ``manifest.json`` itself, or as the configuration's folder
  ``<destination-prefix>/<source-bucket>/<config-ID>/``: then the newest ``YYYY-MM-DDTHH-MMZ/`` folder holding a
  ``manifest.json`` is used. Local copies keep the layout: the data file keys are looked up under the nearest
  folder above the manifest that holds the first of them (the destination bucket's root); on S3 they are read
  from the manifest's own bucket, which is the destination bucket unless the report was copied elsewhere.
* The objects are those :func:`classeg.archive.list_archive` would list: keys under the archive's prefix (or the
  one key the archive URI names), no hidden keys, no folder markers, ``suffixes`` applied; in a report of all
  versions, only the latest version of each key, and no delete markers. ``version`` is the ETag, as the listing's,
  so the manifest of scored objects agrees whichever way an archive was listed.
* The report needs the ``Size``, ``LastModifiedDate`` and ``ETag`` fields (optional fields of an inventory
  configuration); a report without them is an :class:`ArchiveError` naming the missing fields.
* Every data file is checked against the manifest's size and ``MD5checksum``; a mismatch, or a file pyarrow cannot
  parse, is an :class:`ArchiveError` naming the file. ``manifest.checksum``, where present, is checked too.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from classeg.archive import archive_single_key, child_prefixes, normalise_suffixes
from classeg.errors import ArchiveError, FetchError
from classeg.io import files
from classeg.io.uri import Location, parse_uri

logger = logging.getLogger(__name__)

__all__ = ["INVENTORY_FORMATS", "InventoryFile", "InventoryManifest", "find_manifest", "inventory_objects",
           "read_manifest"]

INVENTORY_FORMATS = ("CSV", "ORC", "Parquet")
MANIFEST_NAME = "manifest.json"
_TIMESTAMP_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}Z$")
_MANIFEST_FIELDS = ("sourceBucket", "destinationBucket", "version", "creationTimestamp", "fileFormat", "fileSchema",
                    "files")
# fileSchema names of a CSV report -> the column names of ORC and Parquet reports.
_CSV_FIELDS = {"Bucket": "bucket", "Key": "key", "VersionId": "version_id", "IsLatest": "is_latest",
               "IsDeleteMarker": "is_delete_marker", "Size": "size", "LastModifiedDate": "last_modified_date",
               "ETag": "e_tag"}
_NEEDED = ("bucket", "key", "size", "last_modified_date", "e_tag")
_OPTIONAL = ("is_latest", "is_delete_marker")
_BATCH_ROWS = 100_000


@dataclass(frozen=True)
class InventoryFile:
    """One data file of a report: its location (``uri``), ``size`` in bytes and ``md5`` (hex) from the manifest."""

    uri: str
    size: int
    md5: str


@dataclass(frozen=True)
class InventoryManifest:
    """A report's ``manifest.json``. ``columns``: the fileSchema as ORC/Parquet column names, in order;
    ``creation_timestamp``: epoch milliseconds; ``file_format``: one of :data:`INVENTORY_FORMATS`."""

    uri: str
    source_bucket: str
    destination_bucket: str
    version: str
    creation_timestamp: int
    file_format: str
    columns: tuple[str, ...]
    files: tuple[InventoryFile, ...]


# --------------------------------------------------------------------------------------------- the manifest

def find_manifest(uri: str | os.PathLike, *, s3_cfg: Any = None) -> Location:
    """The ``manifest.json`` that ``uri`` names: itself, or for the configuration's folder
    (``<destination-prefix>/<source-bucket>/<config-ID>/``) the newest ``YYYY-MM-DDTHH-MMZ/manifest.json``.
    ArchiveError when there is none."""
    location = parse_uri(uri)
    if location.uri.rstrip("/").endswith("/" + MANIFEST_NAME):
        return location
    folder = location if location.scheme == "file" else parse_uri(location.uri.rstrip("/") + "/")
    stamps = sorted((name for name in child_prefixes(folder, s3_cfg=s3_cfg) if _TIMESTAMP_FOLDER.match(name)),
                    reverse=True)
    for stamp in stamps:
        candidate = folder.child(f"{stamp}/{MANIFEST_NAME}")
        if files.exists(candidate, s3_cfg=s3_cfg):
            logger.info("inventory %s: newest report %s of %d", location.uri, stamp, len(stamps))
            return candidate
    raise ArchiveError(f"cannot use inventory {location.uri}: no YYYY-MM-DDTHH-MMZ/{MANIFEST_NAME} below it "
                       f"({len(stamps)} report folders; give the manifest.json or the inventory configuration's "
                       "folder <destination-prefix>/<source-bucket>/<config-ID>/)")


def read_manifest(uri: str | os.PathLike, *, s3_cfg: Any = None) -> InventoryManifest:
    """Read and check the report ``uri`` names (see :func:`find_manifest`). ArchiveError naming the manifest when
    it is missing, not JSON, lacks a field, has an unknown format, lacks a needed column, or fails its
    ``manifest.checksum``."""
    location = find_manifest(uri, s3_cfg=s3_cfg)
    try:
        data = files.read_bytes(location, s3_cfg=s3_cfg)
    except FileNotFoundError as err:
        raise ArchiveError(f"cannot use inventory {location.uri}: no such manifest") from err
    _check_manifest_checksum(location, data, s3_cfg)
    try:
        fields = json.loads(data)
    except ValueError as err:
        raise ArchiveError(f"cannot read inventory manifest {location.uri}: not JSON ({err})") from err
    if not isinstance(fields, dict):
        raise ArchiveError(f"cannot read inventory manifest {location.uri}: not a JSON object")
    missing = [name for name in _MANIFEST_FIELDS if name not in fields]
    if missing:
        raise ArchiveError(f"cannot read inventory manifest {location.uri}: missing {missing}")
    file_format = {name.lower(): name for name in INVENTORY_FORMATS}.get(str(fields["fileFormat"]).lower())
    if file_format is None:
        raise ArchiveError(f"cannot read inventory manifest {location.uri}: fileFormat must be one of "
                           f"{list(INVENTORY_FORMATS)}, got {fields['fileFormat']!r}")
    columns = _schema_columns(file_format, str(fields["fileSchema"]))
    lacking = [name for name in _NEEDED if name not in columns]
    if lacking:
        raise ArchiveError(f"cannot use inventory {location.uri}: its fileSchema lacks {lacking} (the inventory "
                           "configuration must include the Size, Last modified date and ETag fields)")
    try:
        timestamp = int(fields["creationTimestamp"])
        entries = [(str(item["key"]), int(item["size"]), str(item["MD5checksum"]).lower())
                   for item in fields["files"]]
    except (TypeError, ValueError, KeyError) as err:
        raise ArchiveError(f"cannot read inventory manifest {location.uri}: bad creationTimestamp or files entry "
                           f"({type(err).__name__}: {err})") from err
    root = _bucket_root(location, [key for key, _, _ in entries[:1]], fields["destinationBucket"], s3_cfg)
    return InventoryManifest(
        uri=location.uri, source_bucket=str(fields["sourceBucket"]),
        destination_bucket=str(fields["destinationBucket"]), version=str(fields["version"]),
        creation_timestamp=timestamp, file_format=file_format, columns=columns,
        files=tuple(InventoryFile(uri=root.child(key).uri, size=size, md5=md5) for key, size, md5 in entries))


def _check_manifest_checksum(location: Location, data: bytes, s3_cfg: Any) -> None:
    checksum = parse_uri(location.uri[: -len(MANIFEST_NAME)] + "manifest.checksum")
    try:
        expected = files.read_text(checksum, s3_cfg=s3_cfg).strip().lower()
    except FileNotFoundError:
        return  # a copied report may lack it; the data files are still checked one by one
    actual = hashlib.md5(data).hexdigest()
    if expected != actual:
        raise ArchiveError(f"cannot use inventory manifest {location.uri}: its MD5 is {actual}, manifest.checksum "
                           f"says {expected} (a manifest replaced or cut short)")


def _schema_columns(file_format: str, schema: str) -> tuple[str, ...]:
    """fileSchema as column names: ``"Bucket, Key, ..."`` (CSV), ``"struct<bucket:string,...>"`` (ORC),
    ``"message s3.inventory { required binary bucket (UTF8); ... }"`` (Parquet)."""
    if file_format == "CSV":
        return tuple(_CSV_FIELDS.get(name.strip(), name.strip()) for name in schema.split(","))
    if file_format == "ORC":
        inner = schema.strip().removeprefix("struct<").removesuffix(">")
        return tuple(field.split(":", 1)[0].strip() for field in inner.split(","))
    return tuple(re.findall(r"(?:required|optional|repeated)\s+\w+\s+(\w+)", schema))


def _bucket_root(manifest: Location, keys: list[str], destination: Any, s3_cfg: Any) -> Location:
    """Where the data file keys are looked up: the manifest's bucket on S3; locally, the nearest folder above the
    manifest that holds the first key (the copied bucket's root)."""
    if manifest.is_s3:
        arn_bucket = str(destination).rsplit(":", 1)[-1]
        if arn_bucket != manifest.bucket:
            logger.info("inventory %s: destinationBucket %s, data files read from %s beside the manifest",
                        manifest.uri, destination, manifest.bucket)
        return Location("s3", bucket=manifest.bucket, prefix="", hadoop_scheme=manifest.hadoop_scheme)
    folder = os.path.dirname(manifest.path)
    for _ in range(64):
        if not keys or os.path.exists(os.path.join(folder, *keys[0].split("/"))):
            return parse_uri(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    raise ArchiveError(f"cannot use inventory {manifest.uri}: its first data file {keys[0]!r} is in no folder "
                       "above the manifest (keep the destination bucket's layout when copying a report)")


# ------------------------------------------------------------------------------------------- the data files

def inventory_objects(data_file: InventoryFile, *, file_format: str, columns: Iterable[str], archive: str,
                      suffixes: Iterable[str] | None = None, s3_cfg: Any = None) -> Iterator[Any]:
    """The objects of one data file that belong to ``archive`` (an ``s3://bucket/prefix``), as pyarrow
    RecordBatches of the listing columns (``uri, key, size, etag, mtime, version``, as
    :func:`classeg.archive.list_archive`), at most 100,000 rows each. Runs in a task: fetched with
    :func:`classeg.io.files.fetch`, checked against the manifest's size and MD5, parsed with pyarrow."""
    import pyarrow as pa

    data = _fetch_checked(data_file, s3_cfg)
    table = _normalised(_parse(data, data_file.uri, file_format, tuple(columns)), data_file.uri, file_format)
    objects = _archive_rows(table, parse_uri(archive), normalise_suffixes(suffixes))
    schema = pa.schema([("uri", pa.string()), ("key", pa.string()), ("size", pa.int64()), ("etag", pa.string()),
                        ("mtime", pa.float64()), ("version", pa.string())])
    for batch in objects.cast(schema).to_batches(max_chunksize=_BATCH_ROWS):
        if batch.num_rows:
            yield batch


def _fetch_checked(data_file: InventoryFile, s3_cfg: Any) -> bytes:
    try:
        data = files.fetch(data_file.uri, s3_cfg=s3_cfg)
    except FetchError as err:
        raise ArchiveError(f"cannot read inventory data file {data_file.uri}: {err}") from err
    if len(data) != data_file.size:
        raise ArchiveError(f"inventory data file {data_file.uri} has {len(data)} bytes, the manifest says "
                           f"{data_file.size} (a file replaced or cut short)")
    md5 = hashlib.md5(data).hexdigest()
    if md5 != data_file.md5:
        raise ArchiveError(f"inventory data file {data_file.uri} has MD5 {md5}, the manifest's MD5checksum is "
                           f"{data_file.md5} (a corrupt or replaced file)")
    return data


def _parse(data: bytes, uri: str, file_format: str, columns: tuple[str, ...]):
    """The file's needed columns as a pyarrow Table (CSV: every column a string, as written)."""
    import pyarrow as pa

    wanted = [name for name in (*_NEEDED, *_OPTIONAL, "version_id") if name in columns]
    try:
        if file_format == "CSV":
            import pyarrow.csv as pacsv

            stream = pa.CompressedInputStream(pa.BufferReader(data), "gzip")
            return pacsv.read_csv(
                stream, read_options=pacsv.ReadOptions(column_names=list(columns)),
                convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in columns},
                                                     include_columns=wanted, strings_can_be_null=True,
                                                     quoted_strings_can_be_null=True))
        if file_format == "ORC":
            import pyarrow.orc as paorc

            table = paorc.ORCFile(pa.BufferReader(data)).read()
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, EOFError, ValueError) as err:
        raise ArchiveError(f"cannot read inventory data file {uri} as {file_format}: {type(err).__name__}: "
                           f"{str(err)[:200]}") from err
    missing = [name for name in _NEEDED if name not in table.column_names]
    if missing:
        raise ArchiveError(f"inventory data file {uri} lacks the columns {missing} (has {table.column_names})")
    return table.select([name for name in wanted if name in table.column_names])


def _normalised(table, uri: str, file_format: str):
    """bucket, key (URL-decoded for CSV), size int64, mtime (float epoch seconds), e_tag (quotes stripped),
    latest (bool: the current version, not a delete marker) from a parsed file."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        key = table.column("key")
        latest = pa.repeat(pa.scalar(True), table.num_rows)
        if file_format == "CSV":
            key = _decoded_keys(key)
            size = pc.cast(table.column("size"), pa.int64())
            modified = pc.cast(table.column("last_modified_date"), pa.timestamp("ms", tz="UTC"))
            flags = {name: pc.equal(pc.utf8_lower(table.column(name)), "true")
                     for name in _OPTIONAL if name in table.column_names}
        else:
            size = pc.cast(table.column("size"), pa.int64())
            modified = table.column("last_modified_date")
            flags = {name: table.column(name) for name in _OPTIONAL if name in table.column_names}
        if "is_latest" in flags:
            latest = pc.and_(latest, pc.fill_null(flags["is_latest"], True))
        if "is_delete_marker" in flags:
            latest = pc.and_(latest, pc.invert(pc.fill_null(flags["is_delete_marker"], False)))
        mtime = pc.divide(pc.cast(pc.cast(modified, pa.timestamp("us"), safe=False), pa.int64()), 1e6)
        etag = pc.utf8_trim(table.column("e_tag"), '"')
    except (pa.ArrowException, ValueError) as err:
        raise ArchiveError(f"cannot read inventory data file {uri}: bad values ({type(err).__name__}: "
                           f"{str(err)[:200]})") from err
    return pa.table({"bucket": table.column("bucket"), "key": key, "size": size, "mtime": mtime, "e_tag": etag,
                     "latest": latest})


def _decoded_keys(keys):
    """CSV keys URL-decoded (a space as ``+``): only the keys holding ``%`` or ``+`` pass through Python."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = pc.cast(keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys, pa.string())
    encoded = pc.fill_null(pc.match_substring_regex(keys, r"[%+]"), False)
    if not pc.any(encoded).as_py():
        return keys
    decoded = pa.array([unquote_plus(value) for value in keys.filter(encoded).to_pylist()], type=pa.string())
    return pc.replace_with_mask(keys, encoded, decoded)


def _archive_rows(table, archive: Location, suffixes: tuple[str, ...] | None):
    """The rows of ``archive`` in the listing's columns, by list_archive's rules."""
    import pyarrow as pa
    import pyarrow.compute as pc

    prefix = archive.dir_prefix
    single = archive_single_key(archive)
    keep = pc.and_(pc.equal(table.column("bucket"), archive.bucket), table.column("latest"))
    in_folder = pc.starts_with(table.column("key"), prefix)
    if single is not None:  # the archive URI may name one object, as list_archive allows
        in_folder = pc.or_(in_folder, pc.equal(table.column("key"), single))
    table = table.filter(pc.fill_null(pc.and_(keep, in_folder), False))
    key = table.column("key")
    relative = pc.utf8_slice_codeunits(key, start=len(prefix))
    if single is not None:
        relative = pc.if_else(pc.equal(key, single), pa.scalar(single.rsplit("/", 1)[-1]), relative)
    visible = pc.and_(pc.and_(pc.not_equal(relative, ""), pc.invert(pc.ends_with(key, "/"))),
                      pc.invert(pc.match_substring_regex(relative, r"(^|/)\.")))
    if suffixes is not None:
        lowered = pc.utf8_lower(relative)
        matches = pc.ends_with(lowered, suffixes[0])
        for suffix in suffixes[1:]:
            matches = pc.or_(matches, pc.ends_with(lowered, suffix))
        visible = pc.and_(visible, matches)
    table = table.append_column("relative", relative).filter(visible)
    uri = pc.binary_join_element_wise(f"s3://{archive.bucket}/", table.column("key"), "")
    return pa.table({"uri": uri, "key": table.column("relative"), "size": table.column("size"),
                     "etag": table.column("e_tag"), "mtime": table.column("mtime"), "version": table.column("e_tag")})
