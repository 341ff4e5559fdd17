"""Locations: ``s3://bucket/key`` (``s3a://``/``s3n://`` accepted), ``file:///abs/path`` (also Hadoop's
``file:/abs/path``) or a plain local path, parsed once into a :class:`Location` with the forms each consumer
needs: :attr:`Location.uri` (canonical, for messages and tables), :attr:`Location.path` (local files),
``bucket``/``key`` (boto3) and :attr:`Location.spark_uri` (what Spark and Hadoop are given).

:func:`absolute` is what the driver applies to every location it hands to executors or training ranks,
whose working directory is not the driver's.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

__all__ = ["Location", "S3_SCHEMES", "absolute", "as_s3", "is_s3", "join", "parse_uri"]

S3_SCHEMES = ("s3", "s3a", "s3n")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class Location:
    """A parsed location.

    ``scheme`` is ``'s3'`` (with ``bucket`` and ``prefix``: the key, or key prefix, exactly as given, without
    the leading ``/``; ``path`` is None) or ``'file'`` (``path``: absolute, normalised; ``bucket`` and
    ``prefix`` are None). ``hadoop_scheme`` remembers the spelling the user gave for S3 (``s3a`` with
    hadoop-aws, ``s3`` with EMRFS) so Spark is handed the filesystem the user configured.
    """

    scheme: str
    bucket: str | None = None
    prefix: str | None = None
    path: str | None = None
    hadoop_scheme: str = field(default="s3", compare=False)

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    @property
    def key(self) -> str | None:
        """S3 only: the object key (the same as ``prefix``)."""
        return self.prefix

    @property
    def uri(self) -> str:
        """Canonical URI: ``s3://bucket/prefix`` or ``file:///abs/path`` (percent-encoded)."""
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}"
        return Path(self.path).as_uri()

    @property
    def spark_uri(self) -> str:
        """The URI for Spark/Hadoop: ``file:///abs`` not percent-encoded (Hadoop parses the string itself, and
        an encoded ``=`` would name a folder ``run_date%3D...`` that partition discovery ignores), never
        resolved against a default HDFS; on S3 the user's own scheme."""
        if self.scheme == "file":
            return "file://" + self.path
        return f"{self.hadoop_scheme}://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def dir_prefix(self) -> str:
        """S3 only: the prefix as a folder (``''`` or ending with ``/``), so ``scans`` does not match ``scans2/``."""
        return self.prefix if not self.prefix or self.prefix.endswith("/") else self.prefix + "/"

    def child(self, relative: str) -> "Location":
        """The location of ``relative`` (``/``-separated) inside this folder."""
        relative = relative.lstrip("/")
        if self.scheme == "s3":
            return Location("s3", bucket=self.bucket, prefix=self.dir_prefix + relative,
                            hadoop_scheme=self.hadoop_scheme)
        return Location("file", path=os.path.join(self.path, *relative.split("/")))


def parse_uri(uri: str | os.PathLike | Location) -> Location:
    """Parse ``s3://bucket/prefix``, ``s3a://``/``s3n://``, ``file:///abs/path`` (or Hadoop's ``file:/abs``)
    or a plain local path.

    Relative local paths are made absolute against the current directory. ``file://`` URIs are
    percent-decoded (as :attr:`Location.uri` encodes them); S3 keys are taken verbatim. Anything else
    (``http://``, ``hdfs://``, ``s3:/one-slash``, an empty string) raises ValueError naming it.
    """
    if isinstance(uri, Location):
        return uri
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"expected an s3://bucket/prefix URI, a file:// URI or a local path, got {uri!r}")
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else None
    if scheme in S3_SCHEMES:
        rest = uri[match.end():]
        if not rest.startswith("//"):
            raise ValueError(f"S3 URIs look like s3://bucket/prefix, got {uri!r}")
        bucket, _, prefix = rest[2:].partition("/")
        if not bucket or any(ch.isspace() for ch in bucket) or ":" in bucket:
            raise ValueError(f"S3 URI {uri!r} has no valid bucket name (expected s3://bucket/prefix)")
        return Location("s3", bucket=bucket, prefix=prefix, hadoop_scheme=scheme)
    if scheme == "file":
        return Location("file", path=os.path.normpath(unquote(_file_path(uri, uri[match.end():]))))
    if scheme is not None and uri[match.end():].startswith("/"):
        # Another scheme (http:, hdfs:, gs:); a colon inside a plain file name ("scan:1.png") is fine.
        raise ValueError(f"unsupported URI scheme {scheme!r} in {uri!r}: expected s3://, s3a://, file:// "
                         "or a local path")
    return Location("file", path=os.path.abspath(os.path.expanduser(uri)))


def absolute(uri: str | os.PathLike) -> str:
    """``uri`` as the driver means it, in a form that means the same on every executor and rank.

    A plain local path is made absolute against the driver's current directory, ``~`` expanded
    (``"models/cls"`` -> ``"/home/me/work/models/cls"``); a URI with a scheme (``s3://``, ``s3a://``,
    ``file:///abs``, Hadoop's ``file:/abs``, ``hdfs://``) is returned unchanged, since it names the same
    thing wherever it is read. Executors and training ranks run in their own working directories (a YARN
    container's, a Spark worker's), so a relative path that the driver checked would name nothing there.
    ValueError for an empty or non-string ``uri``.
    """
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"expected an s3:// URI, a file:// URI or a local path, got {uri!r}")
    match = _SCHEME.match(uri)
    if match and uri[match.end():].startswith("/"):
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def _file_path(uri: str, rest: str) -> str:
    if rest.startswith("//localhost/"):
        return rest[len("//localhost"):]
    if rest.startswith("///"):
        return rest[2:]
    if rest.startswith("/") and not rest.startswith("//"):
        return rest  # Hadoop's file:/abs/path
    raise ValueError(f"file URIs must be absolute, file:///abs/path, got {uri!r}")


def is_s3(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` names an S3 object or prefix (``s3://``, ``s3a://``, ``s3n://``)."""
    text = os.fspath(uri) if isinstance(uri, os.PathLike) else str(uri)
    return text.split(":", 1)[0].lower() in S3_SCHEMES and "://" in text


def as_s3(uri: str) -> str:
    """An ``s3a://`` or ``s3n://`` URI (Hadoop's spellings) as the ``s3://`` URI boto3 code takes."""
    if not is_s3(uri):
        raise ValueError(f"expected an s3://, s3a:// or s3n:// URI, got {uri!r}")
    return "s3://" + uri.split("://", 1)[1]


def join(uri: str | os.PathLike, *names: str) -> str:
    """``uri`` with ``/``-separated ``names`` appended, in the spelling it was given:
    ``join("s3://b/out/", "scans", "part-0.parquet")`` -> ``"s3://b/out/scans/part-0.parquet"``."""
    text = os.fspath(uri) if isinstance(uri, os.PathLike) else str(uri)
    for name in names:
        text = text.rstrip("/") + "/" + name.lstrip("/")
    return text
