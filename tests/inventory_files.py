"""S3 Inventory reports written in AWS's documented layout and formats (Amazon S3 User Guide, "Locating your
inventory list" and "Amazon S3 Inventory list"), from a bucket's real listing on the moto server:

    <dest-prefix>/<source-bucket>/<config-id>/YYYY-MM-DDTHH-MMZ/manifest.json, manifest.checksum
    <dest-prefix>/<source-bucket>/<config-id>/hive/dt=YYYY-MM-DD-HH-MM/symlink.txt
    <dest-prefix>/<source-bucket>/<config-id>/data/<uuid>.csv.gz | .orc | .parquet

CSV: gzip, no header, every field quoted, keys URL-encoded (space as ``+``), columns in fileSchema order. ORC
(ZLIB) and Parquet (Snappy): the typed columns of the documented fileSchema.
"""
from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import uuid
from pathlib import Path
from urllib.parse import quote_plus

import pyarrow as pa

ALL_VERSIONS_CSV = ("Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass, "
                    "IsMultipartUploaded, ReplicationStatus, EncryptionStatus, ObjectLockRetainUntilDate, "
                    "ObjectLockMode, ObjectLockLegalHoldStatus, IntelligentTieringAccessTier, BucketKeyStatus, "
                    "ChecksumAlgorithm")
CURRENT_CSV = "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass"
_TYPES = {"bucket": pa.string(), "key": pa.string(), "version_id": pa.string(), "is_latest": pa.bool_(),
          "is_delete_marker": pa.bool_(), "size": pa.int64(), "last_modified_date": pa.timestamp("ms"),
          "e_tag": pa.string(), "storage_class": pa.string(), "is_multipart_uploaded": pa.bool_(),
          "replication_status": pa.string(), "encryption_status": pa.string(),
          "object_lock_retain_until_date": pa.timestamp("ms"), "object_lock_mode": pa.string(),
          "object_lock_legal_hold_status": pa.string(), "intelligent_tiering_access_tier": pa.string(),
          "bucket_key_status": pa.string(), "checksum_algorithm": pa.string()}
_CSV_NAMES = {"Bucket": "bucket", "Key": "key", "VersionId": "version_id", "IsLatest": "is_latest",
              "IsDeleteMarker": "is_delete_marker", "Size": "size", "LastModifiedDate": "last_modified_date",
              "ETag": "e_tag", "StorageClass": "storage_class", "IsMultipartUploaded": "is_multipart_uploaded",
              "ReplicationStatus": "replication_status", "EncryptionStatus": "encryption_status",
              "ObjectLockRetainUntilDate": "object_lock_retain_until_date", "ObjectLockMode": "object_lock_mode",
              "ObjectLockLegalHoldStatus": "object_lock_legal_hold_status",
              "IntelligentTieringAccessTier": "intelligent_tiering_access_tier", "BucketKeyStatus": "bucket_key_status",
              "ChecksumAlgorithm": "checksum_algorithm"}


def bucket_rows(s3, bucket: str, *, all_versions: bool = True) -> list[dict]:
    """What S3 Inventory reports for ``bucket``: every version and delete marker (``all_versions``) or the
    current versions only, from the moto server's own listing (ETags without quotes, as inventories write them)."""
    rows = []
    if all_versions:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for item in page.get("Versions", ()):
                rows.append({"bucket": bucket, "key": item["Key"], "version_id": item["VersionId"],
                             "is_latest": item["IsLatest"], "is_delete_marker": False, "size": item["Size"],
                             "last_modified_date": item["LastModified"], "e_tag": item["ETag"].strip('"')})
            for item in page.get("DeleteMarkers", ()):
                rows.append({"bucket": bucket, "key": item["Key"], "version_id": item["VersionId"],
                             "is_latest": item["IsLatest"], "is_delete_marker": True, "size": None,
                             "last_modified_date": item["LastModified"], "e_tag": None})
    else:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", ()):
                rows.append({"bucket": bucket, "key": item["Key"], "size": item["Size"],
                             "last_modified_date": item["LastModified"], "e_tag": item["ETag"].strip('"')})
    for row in rows:
        row.update(storage_class="STANDARD", is_multipart_uploaded=False, replication_status="",
                   encryption_status="SSE-S3", object_lock_retain_until_date=None, object_lock_mode="",
                   object_lock_legal_hold_status="", intelligent_tiering_access_tier="", bucket_key_status="DISABLED",
                   checksum_algorithm="")
    return rows


def write_report(put, rows: list[dict], *, source_bucket: str, destination_bucket: str, file_format: str,
                 dest_prefix: str = "inventory", config_id: str = "daily", stamp: str = "2026-12-01T00-00Z",
                 files: int = 2, all_versions: bool = True) -> str:
    """Write one report through ``put(key, bytes)`` (keys in the destination bucket); returns the manifest's key."""
    base = f"{dest_prefix}/{source_bucket}/{config_id}" if dest_prefix else f"{source_bucket}/{config_id}"
    csv_schema = ALL_VERSIONS_CSV if all_versions else CURRENT_CSV
    names = [_CSV_NAMES[name.strip()] for name in csv_schema.split(",")]
    entries = []
    for part in range(files):
        chunk = rows[part::files]
        data, extension = _data_file(chunk, names, file_format)
        key = f"{base}/data/{uuid.uuid4()}.{extension}"
        put(key, data)
        entries.append({"key": key, "size": len(data), "MD5checksum": hashlib.md5(data).hexdigest()})
    manifest = {"sourceBucket": source_bucket, "destinationBucket": f"arn:aws:s3:::{destination_bucket}",
                "version": "2016-11-30", "creationTimestamp": str(_stamp_millis(stamp)), "fileFormat": file_format,
                "fileSchema": _file_schema(file_format, csv_schema, names), "files": entries}
    body = json.dumps(manifest, indent=4).encode("utf-8")
    put(f"{base}/{stamp}/manifest.json", body)
    put(f"{base}/{stamp}/manifest.checksum", hashlib.md5(body).hexdigest().encode("ascii"))
    hive = stamp[:10] + "-" + stamp[11:16]
    put(f"{base}/hive/dt={hive}/symlink.txt",
        "".join(f"s3://{destination_bucket}/{entry['key']}\n" for entry in entries).encode("utf-8"))
    return f"{base}/{stamp}/manifest.json"


def local_put(root: Path):
    def put(key: str, data: bytes) -> None:
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return put


def s3_put(s3, bucket: str):
    def put(key: str, data: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    return put


def _stamp_millis(stamp: str) -> int:
    when = dt.datetime.strptime(stamp, "%Y-%m-%dT%H-%MZ").replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def _data_file(rows: list[dict], names: list[str], file_format: str) -> tuple[bytes, str]:
    if file_format == "CSV":
        lines = []
        for row in rows:
            lines.append(",".join('"' + _csv_value(name, row.get(name)) + '"' for name in names))
        return gzip.compress(("\n".join(lines) + "\n").encode("utf-8")), "csv.gz"
    table = pa.table({name: pa.array([_typed(name, row.get(name)) for row in rows], type=_TYPES[name])
                      for name in names})
    sink = io.BytesIO()
    if file_format == "ORC":
        import pyarrow.orc as paorc

        paorc.write_table(table, sink, compression="zlib")
        return sink.getvalue(), "orc"
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field(name, _TYPES[name], nullable=name not in ("bucket", "key")) for name in names])
    pq.write_table(table.cast(schema), sink, compression="snappy")
    return sink.getvalue(), "parquet"


def _csv_value(name: str, value) -> str:
    if value is None:
        return ""
    if name == "key":
        return quote_plus(value, safe="/")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return str(value)


def _typed(name: str, value):
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if value == "" and name in ("object_lock_mode", "object_lock_legal_hold_status"):
        return None
    return value


def _file_schema(file_format: str, csv_schema: str, names: list[str]) -> str:
    if file_format == "CSV":
        return csv_schema
    orc_types = {pa.string(): "string", pa.bool_(): "boolean", pa.int64(): "bigint", pa.timestamp("ms"): "timestamp"}
    if file_format == "ORC":
        return "struct<" + ",".join(f"{name}:{orc_types[_TYPES[name]]}" for name in names) + ">"
    parquet_types = {pa.string(): "binary", pa.bool_(): "boolean", pa.int64(): "int64",
                     pa.timestamp("ms"): "int64"}
    fields = []
    for name in names:
        kind = _TYPES[name]
        annotation = " (UTF8)" if kind == pa.string() else " (TIMESTAMP_MILLIS)" if kind == pa.timestamp("ms") else ""
        fields.append(f"{'required' if name in ('bucket', 'key') else 'optional'} {parquet_types[kind]} {name}"
                      f"{annotation};")
    return "message s3.inventory { " + " ".join(fields) + " }"
