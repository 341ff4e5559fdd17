"""Extract: list a dataset's files and plan which to decode.

A local dataset is listed on the driver with ``os.walk`` (:func:`list_local`), an S3 one with boto3
(:func:`list_s3`); any other filesystem (hdfs://) by Spark's ``binaryFile`` file index, recursively
(:func:`list_spark`). Paths are kept in the form Spark's listing reports them (``file:/a b``,
``s3://bucket/key``), so every path names the same file in every stage. Each file is then classified from its
path by the layout (:func:`parse_listing`) and duplicate copies are dropped before any decoding
(:func:`plan_files`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pandas as pd

from classeg.archive import list_archive
from classeg.datasets.common import is_hidden, issue_rows
from classeg.datasets.registry import get_layout
from classeg.ingest.fields import PARSED_FIELDS, names
from classeg.io import uri as uris
from classeg.io.uri import parse_uri

# Schemes whose files the decode tasks read themselves (plain file reads; S3 GETs with retries through
# classeg.io.files.fetch). Any other Hadoop filesystem (hdfs://, ...) is read by Spark's binaryFile source.
DIRECT_SCHEMES = ("file", *uris.S3_SCHEMES)


@dataclass(frozen=True)
class Listing:
    """The files under a dataset root. ``root``: the qualified root as the paths start with it; ``paths``:
    every file, sorted, in Spark's form; ``raw``: the binaryFile DataFrame when Spark listed them (its
    ``content`` feeds the decoder), else None."""

    root: str
    paths: list[str]
    raw: Any = None


def path_scheme(path: str) -> str:
    """The lower-cased scheme of ``path`` (``file`` for plain paths)."""
    head, sep, _ = path.partition(":")
    return head.lower() if sep and "/" not in head else "file"


def list_input(spark, input_uri: str, *, read: str = "auto", s3_cfg=None) -> Listing:
    """List ``input_uri`` on the driver where it is local or S3 (unless ``read`` is 'binaryfile'), else
    through Spark's file index."""
    if read != "binaryfile":
        listed = list_local(input_uri) or list_s3(input_uri, s3_cfg=s3_cfg)
        if listed is not None:
            return Listing(*listed)
    root, raw = list_spark(spark, input_uri)
    return Listing(root, sorted({spark_path(uri) for uri in raw.inputFiles()}), raw)


def list_local(input_uri: str) -> tuple[str, list[str]] | None:
    """Driver-side listing of a local dataset (plain path or ``file:`` URI): (root, paths) in the form Spark
    reports them (``file:/a b``), every file including ``_`` and ``.`` names (the latter become 'metadata'
    rows, which is why this is not :func:`classeg.io.files.list_files`: that hides them). None for any other
    filesystem. No Spark job: Spark's file index lists 30+ folders with one."""
    if path_scheme(input_uri) != "file":
        return None
    local = parse_uri(input_uri).path
    if not os.path.exists(local):
        raise FileNotFoundError(f"dataset input {input_uri!r} does not exist")
    if not os.path.isdir(local):
        return "file:" + os.path.dirname(local), ["file:" + local]
    paths = []
    for folder, dirs, files in os.walk(local):
        dirs.sort()
        paths += ["file:" + os.path.join(folder, name) for name in files]
    root = "file:" + local.rstrip("/") if local != "/" else "file:/"
    return root, sorted(paths)


def list_s3(input_uri: str, *, s3_cfg=None) -> tuple[str, list[str]] | None:
    """Driver-side listing of an S3 dataset with boto3 (classeg.archive.list_archive: paginated, each page
    retried): (root, ``s3://bucket/key`` paths), or None for any other scheme. Needs no Hadoop S3 filesystem,
    so local Spark can ingest from S3 too. Like Spark's file index, it does not list names starting with
    ``.``; names starting with ``_`` are listed. A prefix without objects raises ArchiveError naming it."""
    if not uris.is_s3(input_uri):
        return None
    objects = list(list_archive(uris.as_s3(input_uri), s3_cfg=s3_cfg))
    first = objects[0]  # list_archive raises for a prefix with nothing under it
    root = first.uri[:len(first.uri) - len(first.key) - 1]
    return root, sorted(info.uri for info in objects)


_GLOB_CHARS = "\\{}[]*?"


def glob_escape(path: str) -> str:
    """Escape Hadoop glob characters so a literal path is not read as a pattern."""
    return "".join("\\" + ch if ch in _GLOB_CHARS else ch for ch in path)


def _underscore_entries(fs, jvm, base: str, max_depth: int) -> list[str]:
    """Paths under ``base`` whose name starts with ``_`` (without ``=``): Spark's file index hides them as
    "metadata", but datasets use such names (44c's ``_NORMAL T1``). One glob per depth level."""
    found: list[str] = []
    for depth in range(max_depth):
        pattern = glob_escape(base) + "/*" * depth + "/_*"
        for status in fs.globStatus(jvm.org.apache.hadoop.fs.Path(pattern)) or []:
            if "=" in status.getPath().getName():
                continue
            path = status.getPath().toString()
            found.append(path)
            if status.isDirectory():  # Spark lists it when named explicitly, but hides its own _ children
                found += _underscore_entries(fs, jvm, path, max_depth)
    return found


def spark_path(uri: str) -> str:
    """The file index's URI (``file:///a%20b``) in the form binaryFile's ``path`` column uses (``file:/a b``).
    Listing through ``inputFiles()`` costs no Spark job; a path that still did not match would surface as a
    ``not_read`` error row, never silently."""
    if uri.startswith("file:///"):
        uri = "file:/" + uri[len("file:///"):]
    return unquote(uri)


def list_spark(spark, input_uri: str):
    """(qualified root, binaryFile DataFrame of path, length, modificationTime, content) for every file under
    ``input_uri``, through Spark's file index (any Hadoop filesystem). ``content`` is only read by stages that
    select it. Names starting with ``_`` are added explicitly (Spark's listing hides them); names starting
    with ``.`` (OS litter) are not read."""
    jvm = spark._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(input_uri)
    fs = hadoop_path.getFileSystem(spark._jsc.hadoopConfiguration())
    if not fs.exists(hadoop_path):
        raise FileNotFoundError(f"dataset input {input_uri!r} does not exist")
    root = fs.makeQualified(hadoop_path).toString()
    reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
    if not fs.getFileStatus(hadoop_path).isDirectory():
        return root.rsplit("/", 1)[0], reader.load(glob_escape(root))
    hidden = _underscore_entries(fs, jvm, root, max_depth=6)
    return root, reader.load([glob_escape(root)] + [glob_escape(p) for p in hidden])


def relative_path(path: str, root: str) -> str:
    """``path`` relative to the qualified dataset ``root`` (both as Spark reports them), '/'-separated."""
    root = root.rstrip("/")
    if not path.startswith(root + "/"):
        raise ValueError(f"{path!r} is not under the dataset root {root!r}")
    return path[len(root) + 1:]


def parse_listing(listing: pd.DataFrame, *, dataset: str, root: str) -> pd.DataFrame:
    """Classify listed files from their paths alone. ``listing`` has a ``path`` column; returns one row per
    file with the PARSED_FIELDS columns. Hidden files and OS litter are 'meta' (recorded, not scanned)."""
    layout = get_layout(dataset)
    rows = []
    for path in listing["path"]:
        rel = relative_path(path, root)
        record = {"kind": "meta"} if is_hidden(rel) else layout.parse_path(rel)
        rows.append({**{name: None for name, _ in PARSED_FIELDS}, **record, "path": path, "relpath": rel})
    return pd.DataFrame(rows, columns=names(PARSED_FIELDS))


def plan_files(parsed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one file per (kind, key), the one with the shortest then smallest path (the top-level copy of the
    LGG archive). Returns (to_decode, issues): image/mask/folds files to decode, sorted by path, and issue rows
    for duplicates, metadata files and files rejected from their path alone."""
    parsed = parsed.assign(_len=parsed["path"].str.len()).sort_values(["_len", "path"], kind="mergesort")
    keyed = parsed["key"].notna()
    duplicate = keyed & parsed.duplicated(["kind", "key"], keep="first")
    issues = [issue_rows(parsed[duplicate], "skipped", "duplicate",
                         "same slice as another copy in the archive (kept the shortest path)"),
              issue_rows(parsed[~duplicate & (parsed["kind"] == "meta")], "skipped", "metadata",
                         "dataset metadata or hidden file, not a scan"),
              issue_rows(parsed[parsed["kind"] == "error"], "error", None,
                         "not a file of this dataset layout (judged from its name)")]
    to_decode = parsed[~duplicate & parsed["kind"].isin(["image", "mask", "folds"])].drop(columns="_len")
    return to_decode.sort_values("path").reset_index(drop=True), pd.concat(issues, ignore_index=True)
