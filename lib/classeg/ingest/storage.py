"""The driver's small reads, writes and deletes of ingest outputs: through :mod:`classeg.io.files` wherever it
reaches (local paths, ``file:`` and ``s3://`` URIs), through Spark's Hadoop filesystem only for the
filesystems it does not (hdfs:// and the like), which only Spark can write anyway."""
from __future__ import annotations

from classeg.io import files
from classeg.io.uri import parse_uri


def io_reachable(uri: str) -> bool:
    """Whether classeg.io reads and writes ``uri`` (local or S3) rather than Spark's Hadoop filesystem."""
    try:
        parse_uri(uri)
    except ValueError:
        return False
    return True


def spark_uri(uri: str) -> str:
    """``uri`` as Spark is to be given it: local paths as ``file://`` (never resolved against a default HDFS),
    S3 in the user's own scheme, anything else unchanged."""
    return parse_uri(uri).spark_uri if io_reachable(uri) else uri


def _hadoop(spark, uri: str):
    path = spark._jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark._jsc.hadoopConfiguration())


def write_text(spark, uri: str, text: str, *, s3_cfg=None) -> None:
    """Write a small UTF-8 text file whole (replacing it)."""
    if io_reachable(uri):
        files.write_text(uri, text, s3_cfg=s3_cfg)
        return
    path, fs = _hadoop(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def read_text(spark, uri: str, *, s3_cfg=None) -> str:
    """A small UTF-8 text file; FileNotFoundError naming it when absent."""
    if io_reachable(uri):
        return files.read_text(uri, s3_cfg=s3_cfg)
    path, fs = _hadoop(spark, uri)
    if not fs.exists(path):
        raise FileNotFoundError(uri)
    stream = fs.open(path)  # not textFile: Hadoop input formats hide files whose names start with "_"
    try:
        return spark._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def delete(spark, uri: str, *, s3_cfg=None) -> None:
    """Delete a file or folder (recursively); nothing there is not an error."""
    if io_reachable(uri):
        files.delete(uri, s3_cfg=s3_cfg)
        return
    path, fs = _hadoop(spark, uri)
    if fs.exists(path):
        fs.delete(path, True)


def folder_exists(spark, uri: str, *, s3_cfg=None) -> bool:
    """Whether ``uri`` exists as a file or folder (on S3: any visible object at or below it)."""
    if not io_reachable(uri):
        path, fs = _hadoop(spark, uri)
        return bool(fs.exists(path))
    if not parse_uri(uri).is_s3:
        return files.exists(uri)
    return files.exists(uri, s3_cfg=s3_cfg) or bool(files.list_files(uri, s3_cfg=s3_cfg))
