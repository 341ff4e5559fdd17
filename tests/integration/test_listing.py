"""Listing an archive in parts, in Spark tasks (classeg.archive.listing_parts / list_part,
classeg.scoring.listing.archive_listing): the parts together list exactly what the driver's paginator listing
(list_archive) lists, on the moto server (127.0.0.1) over many prefixes and on local folder trees."""
from __future__ import annotations

import os
import shutil

import pytest

import classeg.archive as archive_module
from classeg.archive import list_archive, list_part, listing_parts, objects_frame
from classeg.errors import ArchiveError
from classeg.scoring.listing import archive_listing, listing_errors
from s3util import put_objects, test_s3_cfg


def _rows(frame):
    frame = frame if hasattr(frame, "itertuples") else frame.toPandas()
    return sorted(tuple(row) for row in frame.itertuples(index=False))


@pytest.fixture(scope="module")
def many_prefixes(s3):
    """2,600 objects: 12 studies of uneven size, one flat series of 1,200 slices (two listing pages), objects at
    every level, hidden prefixes, a folder marker and neighbours outside the prefix."""
    bucket = "listing-prefixes"
    s3.create_bucket(Bucket=bucket)
    objects = {}
    for study in range(12):
        for series in range(study % 4 + 1):
            for index in range(20 * (study % 5 + 1)):
                objects[f"scans/st{study:02d}/se{series}/{index:04d}.dcm"] = f"{study}-{series}-{index}".encode()
    objects.update({f"scans/flat/{index:05d}.png": bytes([index % 256]) for index in range(1200)})
    objects.update({"scans/top.png": b"top", "scans/st03/level.png": b"lvl", "scans/.git/config": b"git",
                    "scans/st04/.cache/x.png": b"c", "scans/st05/folder/": b"", "scans2/x.png": b"out",
                    "scans/st06/se0/.DS_Store": b"mac"})
    put_objects(s3, bucket, objects, threads=8)
    return bucket


@pytest.mark.parametrize("max_parts", [1, 5, 40, 500])
def test_parts_list_what_the_paginator_lists(many_prefixes, moto_endpoint, max_parts):
    cfg = test_s3_cfg(moto_endpoint)
    archive = f"s3://{many_prefixes}/scans"
    parts = listing_parts(archive, s3_cfg=cfg, max_parts=max_parts)
    hidden = [part for part in parts if ".git" in part.start or ".cache" in part.start]
    assert len(parts) >= min(max_parts, 13) and not hidden
    listed = sorted(info for part in parts for info in list_part(part, s3_cfg=cfg))
    expected = sorted(list_archive(archive, s3_cfg=cfg))
    assert listed == expected and len(expected) > 2600
    assert len({info.uri for info in listed}) == len(listed)  # no object in two parts


def test_a_level_too_long_to_cut_is_one_part(many_prefixes, moto_endpoint, monkeypatch):
    """Discovery reads a bounded number of delimiter pages per level: the 1,200-slice level (two pages) is
    listed whole by one task when the bound is one page."""
    monkeypatch.setattr(archive_module, "_DISCOVERY_PAGES_PER_LEVEL", 1)
    cfg = test_s3_cfg(moto_endpoint)
    parts = listing_parts(f"s3://{many_prefixes}/scans/", s3_cfg=cfg, max_parts=100)
    assert ("scans/flat/", "tree") in {(part.start, part.mode) for part in parts}
    listed = sorted(info for part in parts for info in list_part(part, s3_cfg=cfg, suffixes=[".png"]))
    assert listed == sorted(list_archive(f"s3://{many_prefixes}/scans/", s3_cfg=cfg, suffixes=[".png"]))


def test_spark_listing_of_many_prefixes_equals_the_paginator_listing(spark, worker_env, many_prefixes, moto_endpoint):
    cfg = test_s3_cfg(moto_endpoint)
    archive = f"s3://{many_prefixes}/scans"
    listing = archive_listing(spark, archive, s3_cfg=cfg, max_parts=30)
    assert listing.source == "s3" and listing.tasks >= 30
    assert listing.frame.rdd.getNumPartitions() == listing.tasks
    assert _rows(listing.frame) == _rows(objects_frame(list_archive(archive, s3_cfg=cfg)))
    (single,) = _rows(archive_listing(spark, f"{archive}/top.png", s3_cfg=cfg).frame)
    assert single[:3] == (f"{archive}/top.png", "top.png", 3)


def test_s3_listing_errors_are_raised_on_the_driver(spark, many_prefixes, moto_endpoint):
    cfg = test_s3_cfg(moto_endpoint)
    with pytest.raises(ArchiveError, match="bucket 'no-such-listing' does not exist"):
        archive_listing(spark, "s3://no-such-listing/scans", s3_cfg=cfg)
    with pytest.raises(ArchiveError, match="no objects under this prefix"):
        archive_listing(spark, f"s3://{many_prefixes}/scnas", s3_cfg=cfg)
    with pytest.raises(ValueError, match="max_parts must be an integer >= 1, got 0"):
        listing_parts(f"s3://{many_prefixes}/scans", s3_cfg=cfg, max_parts=0)


@pytest.fixture()
def tree(tmp_path):
    """A local archive: uneven subfolders, files at every level, hidden files and folders, a symlink loop and a
    symlinked folder, a folder of more entries than discovery scans."""
    root = tmp_path / "archive"
    for study in range(7):
        for series in range(study % 3 + 1):
            folder = root / f"st{study}" / f"se{series}"
            folder.mkdir(parents=True)
            for index in range(study + 2):
                (folder / f"{index:03d}.dcm").write_bytes(b"x" * index)
    (root / "top.png").write_bytes(b"top")
    (root / "st1" / "level.png").write_bytes(b"lvl")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(b"g")
    (root / "st2" / ".hidden.png").write_bytes(b"h")
    os.symlink(root, root / "st3" / "loop")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "linked.png").write_bytes(b"linked")
    os.symlink(tmp_path / "elsewhere", root / "st4" / "linked")
    (root / "flat").mkdir()
    for index in range(30):
        (root / "flat" / f"{index:03d}.png").write_bytes(b"f")
    return root


@pytest.mark.parametrize("max_parts", [1, 4, 100])
def test_local_parts_list_what_the_walk_lists(tree, monkeypatch, max_parts):
    monkeypatch.setattr(archive_module, "_DISCOVERY_ENTRIES_PER_FOLDER", 20)  # flat/ is not cut
    parts = listing_parts(tree, max_parts=max_parts)
    assert not any(".git" in part.start for part in parts)
    listed = sorted(info for part in parts for info in list_part(part))
    expected = sorted(list_archive(tree))
    assert listed == expected and len(expected) == 99
    assert "st4/linked/linked.png" in {info.key for info in listed}
    assert not any("loop" in info.key for info in listed)
    if max_parts == 100:
        assert (str(tree / "flat"), "tree") in {(part.start, part.mode) for part in parts}


def test_spark_listing_of_a_local_tree(spark, tree, tmp_path):
    listing = archive_listing(spark, str(tree), max_parts=6)
    assert listing.source == "local" and listing.tasks >= 6
    assert _rows(listing.frame) == _rows(objects_frame(list_archive(tree)))
    (single,) = _rows(archive_listing(spark, str(tree / "top.png")).frame)
    assert single[1:3] == ("top.png", 3)
    with pytest.raises(ArchiveError, match="no such file or directory"):
        archive_listing(spark, str(tmp_path / "missing"))
    # A folder gone between discovery and listing: found by its listing task, raised on the driver.
    frame = archive_listing(spark, str(tree), max_parts=2).frame
    shutil.rmtree(tree / "st5")
    with pytest.raises(ArchiveError, match="st5: No such file or directory"), listing_errors():
        frame.count()
