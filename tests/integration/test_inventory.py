"""S3 Inventory reports as the listing (classeg.inventory, classeg.scoring.listing) on local Spark: reports in
AWS's exact layout, CSV, ORC and Parquet, on the moto server (127.0.0.1) and on local disk, built from the
bucket's real listing (a versioned bucket: old versions and delete markers are in the report)."""
from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from classeg.archive import list_archive, objects_frame
from classeg.errors import ArchiveError
from classeg.inventory import find_manifest, read_manifest
from classeg.scoring.job import plan_pending
from classeg.scoring.listing import archive_listing
from classeg.scoring.table import Manifest
from inventory_files import bucket_rows, local_put, s3_put, write_report
from s3util import put_objects, test_s3_cfg

SOURCE = "inv-source"
DESTINATION = "inv-reports"


@pytest.fixture(scope="module")
def source_bucket(s3):
    """A versioned bucket: scans with awkward names, a rewritten scan (two versions), a deleted scan (a delete
    marker over its old version), hidden keys, a folder marker and objects outside the archive's prefix."""
    s3.create_bucket(Bucket=SOURCE)
    s3.put_bucket_versioning(Bucket=SOURCE, VersioningConfiguration={"Status": "Enabled"})
    objects = {f"scans/p{index % 3}/s{index:03d}.png": bytes([index]) * (index + 1) for index in range(30)}
    objects.update({"scans/with space+plus.png": b"space", "scans/100%/ünïcode.dcm": b"unicode",
                    "scans/.DS_Store": b"mac", "scans/p1/.hidden/x.png": b"h", "scans/folder/": b"",
                    "scans2/outside.png": b"o", "other/x.png": b"x", "scans/gone.png": b"gone"})
    put_objects(s3, SOURCE, objects)
    s3.put_object(Bucket=SOURCE, Key="scans/p0/s000.png", Body=b"rewritten")
    s3.delete_object(Bucket=SOURCE, Key="scans/gone.png")
    s3.create_bucket(Bucket=DESTINATION)
    return SOURCE


def _rows(frame):
    """Sorted row tuples of a Spark listing or a pandas objects_frame."""
    frame = frame if hasattr(frame, "itertuples") else frame.toPandas()
    return sorted(tuple(row) for row in frame.itertuples(index=False))


def _listed(moto_endpoint, archive="s3://inv-source/scans", suffixes=None):
    return _rows(objects_frame(list_archive(archive, s3_cfg=test_s3_cfg(moto_endpoint), suffixes=suffixes)))


@pytest.mark.parametrize("file_format", ["CSV", "ORC", "Parquet"])
@pytest.mark.parametrize("where", ["s3", "local"])
def test_report_lists_exactly_what_the_listing_lists(spark, worker_env, s3, source_bucket, moto_endpoint, tmp_path,
                                                     file_format, where):
    rows = bucket_rows(s3, SOURCE, all_versions=True)
    assert sum(row["is_delete_marker"] for row in rows) == 1 and sum(not row["is_latest"] for row in rows) == 2
    put = s3_put(s3, DESTINATION) if where == "s3" else local_put(tmp_path / DESTINATION)
    key = write_report(put, rows, source_bucket=SOURCE, destination_bucket=DESTINATION, file_format=file_format,
                       config_id=f"daily-{file_format.lower()}", files=3)
    manifest = f"s3://{DESTINATION}/{key}" if where == "s3" else str(tmp_path / DESTINATION / key)
    cfg = test_s3_cfg(moto_endpoint)
    listing = archive_listing(spark, "s3://inv-source/scans", s3_cfg=cfg, inventory=manifest)
    assert (listing.source, listing.tasks) == ("inventory", 3)
    got = _rows(listing.frame)
    assert got == _listed(moto_endpoint)
    keys = {row[1] for row in got}
    assert {"with space+plus.png", "100%/ünïcode.dcm", "p0/s000.png"} <= keys and len(keys) == 32
    assert not keys & {"gone.png", ".DS_Store", "p1/.hidden/x.png", "folder/"}
    pngs = archive_listing(spark, "s3://inv-source/scans/", s3_cfg=cfg, inventory=manifest, suffixes=[".DCM"])
    assert _rows(pngs.frame) == _listed(moto_endpoint, suffixes=[".DCM"]) and len(_rows(pngs.frame)) == 1
    (single,) = _rows(archive_listing(spark, "s3://inv-source/scans/p2/s005.png", s3_cfg=cfg,
                                      inventory=manifest).frame)
    assert single == _listed(moto_endpoint, "s3://inv-source/scans/p2/s005.png")[0]


def test_current_versions_report_and_the_configuration_folder(spark, worker_env, s3, source_bucket, moto_endpoint,
                                                              tmp_path):
    """A current-versions report (no VersionId, IsLatest, IsDeleteMarker columns), given as the configuration's
    folder: the newest report folder with a manifest.json is used, not one still being written."""
    rows = bucket_rows(s3, SOURCE, all_versions=False)
    put = local_put(tmp_path)
    write_report(put, rows[:5], source_bucket=SOURCE, destination_bucket=DESTINATION, file_format="CSV",
                 stamp="2026-11-29T00-00Z", all_versions=False, dest_prefix="")
    write_report(put, rows, source_bucket=SOURCE, destination_bucket=DESTINATION, file_format="CSV",
                 stamp="2026-11-30T00-00Z", all_versions=False, dest_prefix="")
    (tmp_path / SOURCE / "daily" / "2026-12-01T00-00Z").mkdir()  # being delivered: no manifest.json yet
    folder = tmp_path / SOURCE / "daily"
    assert find_manifest(folder).path == str(folder / "2026-11-30T00-00Z" / "manifest.json")
    manifest = read_manifest(str(folder) + "/")
    assert (manifest.file_format, manifest.version, manifest.source_bucket) == ("CSV", "2016-11-30", SOURCE)
    assert manifest.creation_timestamp == 1795996800000 and len(manifest.files) == 2
    listing = archive_listing(spark, "s3://inv-source/scans", s3_cfg=test_s3_cfg(moto_endpoint),
                              inventory=str(folder))
    assert _rows(listing.frame) == _listed(moto_endpoint)

    s3_key = write_report(s3_put(s3, DESTINATION), rows, source_bucket=SOURCE, destination_bucket=DESTINATION,
                          file_format="Parquet", config_id="weekly", stamp="2026-11-30T00-00Z", all_versions=False)
    prefix = f"s3://{DESTINATION}/inventory/{SOURCE}/weekly/"
    assert find_manifest(prefix, s3_cfg=test_s3_cfg(moto_endpoint)).uri == f"s3://{DESTINATION}/{s3_key}"
    with pytest.raises(ArchiveError, match="no YYYY-MM-DDTHH-MMZ/manifest.json below it"):
        find_manifest(f"s3://{DESTINATION}/inventory/{SOURCE}/monthly/", s3_cfg=test_s3_cfg(moto_endpoint))


def _local_report(s3, tmp_path, file_format="CSV"):
    rows = bucket_rows(s3, SOURCE, all_versions=True)
    key = write_report(local_put(tmp_path), rows, source_bucket=SOURCE, destination_bucket=DESTINATION,
                       file_format=file_format, files=2)
    return tmp_path / key, json.loads((tmp_path / key).read_text())


def _plan(spark, listing, tmp_path):
    return plan_pending(spark, listing.frame, Manifest.open(tmp_path / "out"), objects_per_task=100)


def test_corrupt_data_file_is_an_archive_error_naming_it(spark, worker_env, s3, source_bucket, moto_endpoint,
                                                         tmp_path):
    manifest_path, manifest = _local_report(s3, tmp_path)
    cfg = test_s3_cfg(moto_endpoint)
    data_file = tmp_path / manifest["files"][1]["key"]
    original = data_file.read_bytes()
    data_file.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, one bit flipped
    listing = archive_listing(spark, "s3://inv-source/scans", s3_cfg=cfg, inventory=str(manifest_path))
    with pytest.raises(ArchiveError, match="has MD5 .* the manifest's MD5checksum is") as info:
        _plan(spark, listing, tmp_path)
    assert data_file.as_uri() in str(info.value)

    # Not gzip, with a manifest that agrees on its size and MD5: a parse error naming the file.
    garbage = b"this is not a gzip file"
    data_file.write_bytes(garbage)
    manifest["files"][1].update(size=len(garbage), MD5checksum=hashlib.md5(garbage).hexdigest())
    manifest_path.write_text(json.dumps(manifest))
    (manifest_path.parent / "manifest.checksum").write_text(hashlib.md5(manifest_path.read_bytes()).hexdigest())
    listing = archive_listing(spark, "s3://inv-source/scans", s3_cfg=cfg, inventory=str(manifest_path))
    with pytest.raises(ArchiveError, match=f"cannot read inventory data file {data_file.as_uri()} as CSV"):
        _plan(spark, listing, tmp_path)

    # A data file cut short: the size check names it before any parse.
    data_file.write_bytes(gzip.compress(b'"inv-source","scans/a.png","1"\n')[:10])
    listing = archive_listing(spark, "s3://inv-source/scans", s3_cfg=cfg, inventory=str(manifest_path))
    with pytest.raises(ArchiveError, match=f"{data_file.as_uri()} has 10 bytes, the manifest says"):
        _plan(spark, listing, tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("fileSchema"), r"missing \['fileSchema'\]"),
    (lambda m: m.update(fileFormat="JSON"), r"fileFormat must be one of \['CSV', 'ORC', 'Parquet'\], got 'JSON'"),
    (lambda m: m.update(fileSchema="Bucket, Key, Size, LastModifiedDate"), r"fileSchema lacks \['e_tag'\]"),
    (lambda m: m.update(sourceBucket="another-bucket"), "lists bucket 'another-bucket', the archive"),
    (lambda m: m["files"][0].pop("MD5checksum"), "bad creationTimestamp or files entry"),
])
def test_bad_manifest_is_an_archive_error_naming_it(spark, s3, source_bucket, tmp_path, change, message):
    manifest_path, manifest = _local_report(s3, tmp_path)
    change(manifest)
    manifest_path.write_text(json.dumps(manifest))
    (manifest_path.parent / "manifest.checksum").unlink()
    with pytest.raises(ArchiveError, match=message):
        archive_listing(spark, "s3://inv-source/scans", inventory=str(manifest_path))


def test_manifest_checksum_and_local_archive_are_checked(spark, s3, source_bucket, tmp_path):
    manifest_path, manifest = _local_report(s3, tmp_path)
    manifest_path.write_text(json.dumps(manifest, indent=2))  # same content, other bytes: checksum no longer agrees
    with pytest.raises(ArchiveError, match=f"{manifest_path.as_uri()}: its MD5 is .* manifest.checksum says"):
        read_manifest(manifest_path)
    with pytest.raises(ValueError, match="the archive must be s3://"):
        archive_listing(spark, str(tmp_path), inventory=str(manifest_path))
    with pytest.raises(ArchiveError, match="no such manifest|does not exist"):
        read_manifest(tmp_path / "nowhere" / "manifest.json")
