"""Transform: decode the planned files in executors.

Two ways to get the bytes (:func:`read_mode`): 'tasks' (the default for local and S3 inputs) cuts the plan
(paths only) into slices and each task reads its own files (:func:`source_reader`, ``fetch_threads`` S3 reads
at a time one batch ahead of the decoder, :class:`ReadAhead`), so the bytes never pass through the JVM;
'binaryfile' joins binaryFile's ``content`` column with the plan (any Hadoop filesystem). Either way each file
goes through :func:`decode_frame` and the layout's decoder: decode, resize to the canonical size, PNG-encode
(a multi-frame DICOM or NIfTI volume: one decoded row per slice).
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

import pandas as pd

from classeg import redact
from classeg.datasets.common import SKIPPED
from classeg.datasets.registry import get_layout
from classeg.errors import FetchError
from classeg.imaging import DecodeError
from classeg.ingest.fields import DECODED_FIELDS, META_FIELDS, PARSED_FIELDS, ddl, names
from classeg.ingest.listing import DIRECT_SCHEMES, path_scheme
from classeg.ingest.write import StagingWriter
from classeg.io.files import fetch
from classeg.io.uri import S3_SCHEMES, Location, parse_uri

FILES_PER_TASK = 1000  # a task holds its decoded pixels until it writes them: ~1000 canonical slices, ~150 MB
DECODE_BATCH = 64  # files per output batch of a decode task


def decode_frame(files: pd.DataFrame, *, dataset: str, image_size: int, read=None) -> pd.DataFrame:
    """Decode each file with the layout's decoder. The bytes come from the ``content`` column, or from
    ``read(path)`` when given (the task reads the file itself). Returns DECODED_FIELDS rows: one per file, or
    one per slice (``slice_uri`` ``<path>#<n>``, the layout's ``key`` and ``slice_index``) where the layout
    gives several. A file that fails to read or decode keeps its parsed fields and gets ``reason``/``detail``
    (DecodeError.reason, message) with ``severity`` 'error'; one with nothing to ingest gets the layout's
    reason with ``severity`` 'skipped'. ``detail`` names the file by its :mod:`classeg.redact` label (the
    ``path``/``relpath`` columns keep it)."""
    layout = get_layout(dataset)
    out = []
    for record in files.to_dict("records"):
        content = record.pop("content", None)
        row = {**{name: None for name, _ in DECODED_FIELDS}, **record, "slice_uri": record["path"]}
        try:
            if read is not None:
                content = _read_or_raise(read, record["path"])
            decoded = layout.decode(record["relpath"], bytes(content or b""), image_size=image_size)
        except DecodeError as err:
            out.append({**row, "reason": err.reason, "severity": "error",
                        "detail": redact.scrub(err, record["path"], record["relpath"])})
            continue
        if isinstance(decoded, dict) and decoded.get(SKIPPED) is not None:
            out.append({**row, "reason": decoded[SKIPPED], "severity": "skipped",
                        "detail": f"{redact.label(record['relpath'])}: read, but holds nothing to ingest"})
        elif isinstance(decoded, dict):
            out.append(_with_decoded(row, decoded))
        elif not decoded:  # a layout's bug, but the file must still be accounted for
            out.append({**row, "reason": "bad_structure", "severity": "error",
                        "detail": f"{redact.label(record['relpath'])}: decoded to no images"})
        else:
            out += [_with_decoded({**row, "slice_uri": f"{record['path']}#{n}"}, part)
                    for n, part in enumerate(decoded)]
    frame = pd.DataFrame(out, columns=names(DECODED_FIELDS))
    for name in ("slice_index", "label", "orig_height", "orig_width"):
        frame[name] = frame[name].astype("Int32")
    return frame


def _with_decoded(row: dict, decoded: dict) -> dict:
    """``row`` with the decoded fields; a field the decoder leaves None keeps the value parsed from the path."""
    return {**row, **{k: v for k, v in decoded.items() if v is not None or row.get(k) is None}}


def _read_or_raise(read, path: str) -> bytes:
    try:
        return read(path)
    except (OSError, FetchError) as err:
        raise DecodeError("unreadable", f"could not read {path!r}: {err}") from err


def source_location(path: str) -> Location:
    """The :class:`~classeg.io.uri.Location` of a path as Spark's listing reports it (``file:/a b``, with no
    percent-decoding: a ``%`` in a file name is literal; ``file:///abs``; a plain path; ``s3://bucket/key``).
    ValueError for the schemes the tasks do not read themselves (hdfs://: binaryFile reads those)."""
    scheme = path_scheme(path)
    if scheme == "file":
        local = path[len("file:"):] if path.startswith("file:") else path
        if local.startswith("//"):  # file:///abs or file://localhost/abs
            local = "/" + local[2:].partition("/")[2]
        return Location("file", path=os.path.abspath(local))
    if scheme in S3_SCHEMES:
        return parse_uri(path)
    raise ValueError(f"tasks cannot read {path!r} themselves (scheme {scheme!r}); use binaryFile")


def source_reader(s3_cfg=None):
    """``read(path) -> bytes`` for paths as Spark's listing reports them, through classeg.io.files.fetch
    (S3 GETs retried; FetchError when a file cannot be read)."""
    def read(path: str) -> bytes:
        return fetch(source_location(path), s3_cfg=s3_cfg)

    return read


class ReadAhead:
    """``read(path)`` with reads submitted ahead of time to ``threads`` threads (1: no threads, every read
    happens when asked). A submitted read's failure is raised by :meth:`read`, as the plain read would raise it.
    Closing it (leaving the ``with`` block) waits for reads in flight and drops their results."""

    def __init__(self, read, *, threads: int = 1):
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads!r}")
        self._read = read
        self._pool = (ThreadPoolExecutor(max_workers=threads, thread_name_prefix="classeg-read")
                      if threads > 1 else None)
        self._pending: dict[str, Future] = {}

    def submit(self, paths) -> None:
        if self._pool is None:
            return
        for path in paths:
            if path not in self._pending:
                self._pending[path] = self._pool.submit(self._read, path)

    def read(self, path: str) -> bytes:
        future = self._pending.pop(path, None)
        return future.result() if future is not None else self._read(path)

    def close(self) -> None:
        if self._pool is not None:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_mode(paths, requested: str = "auto") -> str:
    """'tasks' (decode tasks read their files) or 'binaryfile' (Spark's binaryFile source reads them)."""
    other = sorted({path_scheme(p) for p in paths} - set(DIRECT_SCHEMES))
    if requested == "tasks" and other:
        raise ValueError(f"ingest.read=tasks reads only {', '.join(DIRECT_SCHEMES)} paths; the input has "
                         f"{', '.join(other)}: use ingest.read=binaryfile or auto")
    if requested != "auto":
        return requested
    return "binaryfile" if other else "tasks"


def decode_partitions(spark, files: int, requested: int = 0) -> int:
    """How many decode tasks: ``requested`` if set, else a multiple of the cores with at most FILES_PER_TASK
    files each (at least 2 per core, so a slow task does not leave a core idle at the end)."""
    if requested:
        return requested
    cores = spark.sparkContext.defaultParallelism
    waves = max(2, -(-files // (FILES_PER_TASK * cores)))
    return max(1, min(files, waves * cores))


def chunk_plan(keys: pd.Series, count: int) -> list[list[int]]:
    """Row positions of ``keys`` (sorted) cut into at most ``count`` contiguous chunks of near-equal size,
    never between two rows with the same key (so an LGG slice and its mask are decoded by the same task)."""
    order = sorted(range(len(keys)), key=lambda i: (keys.iloc[i], i))
    target = max(1, -(-len(order) // max(1, count)))
    chunks: list[list[int]] = [[]]
    for position, index in enumerate(order):
        if len(chunks[-1]) >= target and keys.iloc[index] != keys.iloc[order[position - 1]]:
            chunks.append([])
        chunks[-1].append(index)
    return [chunk for chunk in chunks if chunk]


def _map_partitions(function, redaction=None, **kwargs):
    def run(batches):
        redact.activate(redaction)  # the driver's policy, in this task's Python worker
        for batch in batches:
            yield function(batch, **kwargs)
    return run


def decode_with_spark(spark, raw, to_decode: pd.DataFrame, *, dataset: str, image_size: int, partitions: int = 0):
    """mode 'binaryfile': binaryFile's ``content`` (``raw``), joined with the plan, feeds the decoder.
    Returns a DataFrame of DECODED_FIELDS (pixels included)."""
    from pyspark.sql import functions as F

    wanted = spark.createDataFrame(to_decode, schema=ddl(PARSED_FIELDS))
    with_content = raw.select("path", "content").join(F.broadcast(wanted), "path")
    decoded = with_content.mapInPandas(_map_partitions(decode_frame, redact.current(), dataset=dataset,
                                                       image_size=image_size), schema=ddl(DECODED_FIELDS))
    return decoded.repartition(partitions) if partitions else decoded


def decode_in_tasks(spark, to_decode: pd.DataFrame, *, dataset: str, image_size: int, partitions: int = 0,
                    s3_cfg=None, staging: str | None = None, fetch_threads: int = 1):
    """mode 'tasks': the plan is cut into ``decode_partitions`` chunks (between keys) and each task reads and
    decodes its own. ``staging``: each task also writes its pixels to ``<staging>/part-<chunk>.arrow``
    (:class:`classeg.ingest.write.StagingWriter`) and returns META_FIELDS rows only; without it, DECODED_FIELDS.
    Returns (DataFrame, number of chunks, the plan's broadcast to destroy once the DataFrame is done with)."""
    keys = to_decode["key"].where(to_decode["key"].notna(), to_decode["path"])
    chunks = chunk_plan(keys, decode_partitions(spark, len(to_decode), partitions))
    # One row (the chunk number) per partition; the chunks travel as a broadcast. No Python RDD, so every
    # Python step of the job runs in the same (warm) pandas-UDF workers.
    shared = spark.sparkContext.broadcast([to_decode.iloc[chunk].reset_index(drop=True) for chunk in chunks])
    fields = DECODED_FIELDS if staging is None else META_FIELDS

    # S3 GETs wait on the network, not the CPU: a task reads them a batch ahead, in threads. Local reads do not.
    threads = fetch_threads if any(path_scheme(path) != "file" for path in to_decode["path"]) else 1
    redaction = redact.current()

    def run(batches):
        redact.activate(redaction)  # the driver's policy, in this task's Python worker
        with ReadAhead(source_reader(s3_cfg), threads=threads) as reader:
            for batch in batches:
                for chunk in batch["id"]:
                    yield from _decode_chunk(shared.value[chunk], int(chunk), reader, dataset=dataset,
                                             image_size=image_size, staging=staging, s3_cfg=s3_cfg)

    ids = spark.range(len(chunks), numPartitions=max(1, len(chunks)))
    return ids.mapInPandas(run, schema=ddl(fields)), len(chunks), shared


def _decode_chunk(plan: pd.DataFrame, chunk: int, reader: ReadAhead, *, dataset: str, image_size: int,
                  staging: str | None, s3_cfg=None):
    """One chunk of a decode task: DECODE_BATCH files at a time, the next batch's reads submitted before this
    batch decodes. With ``staging``, pixels go to the chunk's staging file and only metadata is yielded."""
    stage = StagingWriter(staging, chunk, s3_cfg=s3_cfg) if staging else None
    try:
        reader.submit(plan["path"].iloc[:DECODE_BATCH])
        for start in range(0, len(plan), DECODE_BATCH):
            reader.submit(plan["path"].iloc[start + DECODE_BATCH:start + 2 * DECODE_BATCH])
            frame = decode_frame(plan.iloc[start:start + DECODE_BATCH], dataset=dataset, image_size=image_size,
                                 read=reader.read)
            if stage is not None:
                stage.write(frame)  # pixels go to the staging file, metadata to the driver
                frame = frame.drop(columns=["image", "mask"])
            yield frame
        if stage is not None:
            stage.close()
    finally:
        if stage is not None:
            stage.abort()  # a no-op once closed; a failed attempt leaves no temp file
