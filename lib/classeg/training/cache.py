"""The training cache: its row format, the decoding that fills it, and one rank's reader over it.

A cached row is one scan already decoded and resized to the model's input size ``S``, so that no rank decodes
a PNG per epoch: ``scan_id`` (string), ``scan_key`` (int64, `scan_key`), ``image`` (binary: uint8 (C, S, S),
C-contiguous, grayscale replicated to the model's C channels), ``mask`` (binary: uint8 (S, S) in {0, 1};
segmenter and mask-supervised classifier only; zeros for a scan without a mask) and ``label`` (int64;
classifier only). The driver (`classeg.training.data.prepare_split`) has Spark executors decode the scan
table into these rows (`cache_row`) and Petastorm's converter write them as Parquet, one row group per file;
`cache_table` builds the same rows without Spark (tests, `benchmarks/gpu.py`).

The reader (`open_pass`) needs only pyarrow, numpy and torch (no Spark, no Petastorm): one pass over the
row groups of a rank's shard (row group ``g`` of the sorted files belongs to rank ``g % size``), read by
``threads`` reader threads ahead of the consumer, collated by a background thread into batch tensors in
pinned memory when CUDA is present. Order is a function of the pass seed only: row groups in a seeded
permutation, rows permuted within windows of ``SHUFFLE_ROW_GROUPS`` row groups; threads change when a row
group is read, never where its rows go. Image and mask columns are viewed, not copied, as (N, ...) uint8
arrays (every value has the same length).
"""
from __future__ import annotations

import math
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

import numpy as np

#: Row groups whose rows are shuffled together in a training pass (beside the row-group permutation).
SHUFFLE_ROW_GROUPS = 4
#: Collated batches waiting for the consumer.
PREFETCH_BATCHES = 2
#: Threads gathering a batch's pixels, one row group each (a batch draws on up to SHUFFLE_ROW_GROUPS + 1).
GATHER_THREADS = SHUFFLE_ROW_GROUPS


def scan_key(scan_id: str) -> int:
    """The 16-hex-digit scan id as a signed int64 (lossless; tensors carry no strings)."""
    value = int(scan_id, 16)
    return value - (1 << 64) if value >= (1 << 63) else value


def has_mask(task: str, with_mask: bool) -> bool:
    """Whether the cache of ``task`` holds masks (the segmenter; a mask-supervised classifier)."""
    return task == "segment" or with_mask


def columns(task: str, *, with_mask: bool = False) -> list[str]:
    """The cache's columns, in order."""
    return (["scan_id", "scan_key", "image"] + (["mask"] if has_mask(task, with_mask) else [])
            + (["label"] if task == "classify" else []))


# ---------------------------------------------------------------------------------------------- writing
def cache_pixels(image: np.ndarray, mask: np.ndarray | None, *, size: int, channels: int):
    """A decoded scan (uint8 (H, W) or (H, W, C)) and its mask ((H, W) any numeric, or None) -> (image uint8
    (channels, size, size), mask uint8 (size, size) in {0, 1} or None). Resizing as
    `classeg.transforms.preprocess_for_model` does it (bilinear, antialiased; on uint8 here, so rounded to
    1/255), masks as `classeg.transforms.preprocess_mask` (foreground rule, nearest)."""
    from classeg import transforms

    if image.dtype != np.uint8:
        raise ValueError(f"cached scans must be uint8, got dtype {image.dtype}")
    values = image if image.ndim == 3 else image[..., None]
    own = values.shape[2]
    if own != channels and own != 1:
        raise ValueError(f"image has {own} channels (shape {image.shape}) but the model expects {channels}")
    values = transforms.resize(values, size=size, interpolation="bilinear")
    if values.ndim == 2:
        values = values[..., None]
    pixels = np.ascontiguousarray(np.broadcast_to(values, (size, size, channels)).transpose(2, 0, 1))
    target = None
    if mask is not None:
        target = transforms.preprocess_mask(mask, input_size=size)[0].astype(np.uint8)
    return pixels, target


def cache_row(row: Mapping[str, Any], *, task: str, input_spec: Mapping[str, Any], with_mask: bool = False):
    """One scan-table row (``scan_id``, ``image`` PNG bytes, ``mask`` PNG bytes or None, ``label``) -> the
    cache row as a tuple in `columns` order. Runs on Spark executors (imports inside)."""
    from classeg import imaging

    image = imaging.decode_png(bytes(row["image"]))
    mask = None
    if has_mask(task, with_mask):
        mask_png = row["mask"]
        mask = (imaging.decode_png(bytes(mask_png)) if mask_png is not None
                else np.zeros(image.shape[:2], dtype=np.uint8))
        if mask.ndim == 3:
            mask = mask[..., 0]
    pixels, target = cache_pixels(image, mask, size=int(input_spec["size"]), channels=int(input_spec["channels"]))
    values = [row["scan_id"], scan_key(row["scan_id"]), pixels.tobytes()]
    if target is not None:
        values.append(target.tobytes())
    if task == "classify":
        values.append(int(row["label"]))
    return tuple(values)


def spark_schema(task: str, *, with_mask: bool = False):
    """The cache rows' Spark schema (`columns` order)."""
    from pyspark.sql import types as T

    kinds = {"scan_id": T.StringType(), "scan_key": T.LongType(), "image": T.BinaryType(),
             "mask": T.BinaryType(), "label": T.LongType()}
    return T.StructType([T.StructField(name, kinds[name], nullable=name != "scan_id")
                         for name in columns(task, with_mask=with_mask)])


def cache_table(scan_ids: Sequence[str], images: np.ndarray, *, masks: np.ndarray | None = None,
                labels: Sequence[int] | None = None):
    """Cache rows as a pyarrow Table without Spark (what `cache_row` rows look like once written):
    ``images`` uint8 (N, C, S, S), ``masks`` uint8 (N, S, S) or None, ``labels`` (N,) or None."""
    import pyarrow as pa

    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or len(images) != len(scan_ids):
        raise ValueError(f"images must be (N, C, S, S) with N = {len(scan_ids)} scan ids, got {images.shape}")
    table = {"scan_id": pa.array(list(scan_ids), pa.string()),
             "scan_key": pa.array([scan_key(s) for s in scan_ids], pa.int64()),
             "image": pa.array([image.tobytes() for image in images], pa.binary())}
    if masks is not None:
        table["mask"] = pa.array([np.ascontiguousarray(m, dtype=np.uint8).tobytes() for m in masks], pa.binary())
    if labels is not None:
        table["label"] = pa.array(np.asarray(labels, dtype=np.int64), pa.int64())
    return pa.table(table)


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class RowGroup:
    """One row group's columns as numpy arrays: ``image`` uint8 (n, C, S, S), ``mask`` uint8 (n, S, S) or
    None, ``label`` int64 (n,) or None, ``scan_key`` int64 (n,)."""

    image: np.ndarray
    scan_key: np.ndarray
    mask: np.ndarray | None = None
    label: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scan_key)


def _fixed_width(column, shape: tuple[int, ...], *, what: str) -> np.ndarray:
    """A binary column whose values all hold ``prod(shape)`` bytes, viewed as uint8 (n, *shape)."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise ValueError(f"{what} has {array.null_count} null values")
    width = math.prod(shape)
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type, count=len(array) + 1, offset=array.offset *
                            np.dtype(offset_type).itemsize)
    lengths = np.diff(offsets)
    if len(array) and (lengths.min() != width or lengths.max() != width):
        bad = int(lengths[lengths != width][0])
        raise ValueError(f"{what} holds a value of {bad} bytes, expected {width} (shape {shape})")
    if not len(array):
        return np.zeros((0, *shape), dtype=np.uint8)
    data = np.frombuffer(data_buffer, dtype=np.uint8, count=len(array) * width, offset=int(offsets[0]))
    return data.reshape((len(array), *shape))


def filesystem_of(url: str):
    """(pyarrow filesystem or None for a local path, path) of a cache file URL: local paths and ``file://``
    directly, anything else (``hdfs://`` on EMR) through ``pyarrow.fs``, as Petastorm's own reader opens them."""
    if url.startswith("file://"):
        return None, url[len("file://"):]
    if "://" not in url:
        return None, url
    from pyarrow import fs

    if url.startswith(("hdfs://", "viewfs://")):
        ensure_hadoop_classpath()
    return fs.FileSystem.from_uri(url)


def ensure_hadoop_classpath() -> None:
    """Put the Hadoop jars on ``CLASSPATH`` for pyarrow's libhdfs client when they are not there yet, as the
    legacy ``pyarrow.hdfs`` client (what Petastorm opens ``hdfs://`` with) does and ``pyarrow.fs`` does not:
    ``$HADOOP_HOME/bin/hadoop classpath --glob``, else ``hadoop classpath --glob`` from PATH. Without a
    ``hadoop`` command nothing changes and libhdfs reports what it lacks."""
    import os
    import shutil
    import subprocess

    if "hadoop" in os.environ.get("CLASSPATH", ""):
        return
    home = os.environ.get("HADOOP_HOME")
    command = os.path.join(home, "bin", "hadoop") if home else shutil.which("hadoop")
    if not command or not os.path.exists(command):
        return
    found = subprocess.run([command, "classpath", "--glob"], capture_output=True, text=True, check=False)
    if found.returncode == 0 and found.stdout.strip():
        os.environ["CLASSPATH"] = found.stdout.strip()


def read_row_group(path: str, *, task: str, input_spec: Mapping[str, Any], with_mask: bool = False,
                   filesystem=None) -> RowGroup:
    """Read one cache file (one row group) at ``path`` (on ``filesystem``, a pyarrow filesystem, or local)."""
    import pyarrow.parquet as pq

    size, channels = int(input_spec["size"]), int(input_spec["channels"])
    names = [c for c in columns(task, with_mask=with_mask) if c != "scan_id"]
    table = pq.read_table(path, columns=names, use_threads=False, filesystem=filesystem)
    group = RowGroup(image=_fixed_width(table.column("image"), (channels, size, size), what=f"{path} image"),
                     scan_key=table.column("scan_key").to_numpy())
    if "mask" in names:
        group.mask = _fixed_width(table.column("mask"), (size, size), what=f"{path} mask")
    if "label" in names:
        group.label = table.column("label").to_numpy().astype(np.int64, copy=False)
    return group


def _ordered_rows(groups: Iterator[RowGroup], *, batch_size: int, rng: np.random.Generator | None):
    """Lists of (row group, row) of ``batch_size`` (the last may be short): in read order without ``rng``,
    else permuted within windows of ``SHUFFLE_ROW_GROUPS`` row groups (with the previous window's leftover)."""
    pending: list[tuple[RowGroup, int]] = []
    window: list[RowGroup] = []
    window_size = SHUFFLE_ROW_GROUPS if rng is not None else 1

    def flush() -> None:
        pending.extend((group, row) for group in window for row in range(len(group)))
        window.clear()
        if rng is not None:
            pending[:] = [pending[i] for i in rng.permutation(len(pending))]

    for group in groups:
        window.append(group)
        if len(window) < window_size:
            continue
        flush()
        while len(pending) >= batch_size:
            yield pending[:batch_size]
            del pending[:batch_size]
    flush()
    while pending:
        yield pending[:batch_size]
        del pending[:batch_size]


def collate(rows: Sequence[tuple[RowGroup, int]], *, pin: bool, pool: ThreadPoolExecutor | None = None) -> dict:
    """(row group, row) pairs -> a batch of tensors: ``image`` uint8 (N, C, S, S), ``scan_key`` int64 (N,),
    ``mask`` uint8 (N, S, S) and ``label`` int64 (N,) where the cache has them; the pixel tensors in pinned
    memory when ``pin``. ``pool``: the pixels of each row group are gathered on its threads, in parallel (the
    copies release the GIL)."""
    import torch

    first = rows[0][0]
    # One gather per row group and column: a per-row copy releases and retakes the GIL for every row, and
    # beside a training thread that dispatches CUDA kernels each retake waits (a GIL convoy), which starved
    # a GPU of batches (BENCHMARKS.md, GPU).
    by_group: dict[int, tuple[RowGroup, list[int], list[int]]] = {}
    for position, (group, row) in enumerate(rows):
        entry = by_group.setdefault(id(group), (group, [], []))
        entry[1].append(position)
        entry[2].append(row)
    parts = [(group, np.asarray(positions, dtype=np.intp), np.asarray(indices, dtype=np.intp))
             for group, positions, indices in by_group.values()]

    def gather(name: str, target: np.ndarray, group: RowGroup, positions: np.ndarray, indices: np.ndarray) -> None:
        target[positions] = np.take(getattr(group, name), indices, axis=0)

    def gathered(name: str, target: np.ndarray, parallel: bool = False) -> np.ndarray:
        if parallel and pool is not None and len(parts) > 1:
            for future in [pool.submit(gather, name, target, *part) for part in parts]:
                future.result()
        else:
            for part in parts:
                gather(name, target, *part)
        return target

    batch = {"scan_key": torch.from_numpy(gathered("scan_key", np.empty(len(rows), dtype=np.int64)))}
    for name in ("image", "mask"):
        if getattr(first, name) is None:
            continue
        out = torch.empty((len(rows), *getattr(first, name).shape[1:]), dtype=torch.uint8, pin_memory=pin)
        gathered(name, out.numpy(), parallel=True)
        batch[name] = out
    if first.label is not None:
        batch["label"] = torch.from_numpy(gathered("label", np.empty(len(rows), dtype=np.int64)))
    return batch


def shard_files(file_urls: Sequence[str], *, rank: int, size: int) -> list[str]:
    """The files (one row group each) of shard ``rank`` of ``size``: file ``g`` of the sorted list goes to
    shard ``g % size`` (the rule the driver's shard sizes assume)."""
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    return [url for g, url in enumerate(file_urls) if g % size == rank]


class _Failed:
    """An exception raised in the collating thread, handed to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class CachePass:
    """One pass over cache files: iterating yields collated batches (see `collate`) and raises RuntimeError
    when a complete pass delivered other than ``expected_rows`` rows. ``close`` stops the threads (a training
    loop leaves a pass as soon as it has its steps)."""

    def __init__(self, urls: Sequence[str], *, expected_rows: int, what: str, batch_size: int, threads: int,
                 rng: np.random.Generator | None, pin: bool, read) -> None:
        if batch_size < 1 or threads < 1:
            raise ValueError(f"batch_size and threads must be >= 1, got {batch_size} and {threads}")
        self.expected_rows, self.what = expected_rows, what
        self._urls, self._batch_size, self._rng, self._pin, self._read = list(urls), batch_size, rng, pin, read
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="classeg-cache-read")
        # Its own threads: behind the file reads queued on the readers' pool, a batch would wait for them.
        self._gather = ThreadPoolExecutor(max_workers=GATHER_THREADS, thread_name_prefix="classeg-cache-gather")
        self._threads = threads
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._produce, name="classeg-cache-collate", daemon=True)
        self._worker.start()

    def _groups(self) -> Iterator[RowGroup]:
        """Row groups in file order, read up to ``threads + 1`` files ahead."""
        futures = [self._pool.submit(self._read, url) for url in self._urls[:self._threads + 1]]
        for index in range(len(self._urls)):
            group = futures[index].result()
            futures[index] = None  # the consumer holds the rows it still needs
            ahead = index + self._threads + 1
            if ahead < len(self._urls):
                futures.append(self._pool.submit(self._read, self._urls[ahead]))
            yield group
            if self._stop.is_set():
                return

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for rows in _ordered_rows(self._groups(), batch_size=self._batch_size, rng=self._rng):
                if not self._put(collate(rows, pin=self._pin, pool=self._gather)):
                    return
            self._put(_END)
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put(_Failed(err))

    def __iter__(self) -> Iterator[dict]:
        rows = 0
        while True:
            item = self._queue.get()
            if item is _END:
                break
            if isinstance(item, _Failed):
                raise RuntimeError(f"reading {self.what} failed: {item.error}") from item.error
            rows += len(item["scan_key"])
            yield item
        if rows != self.expected_rows:
            raise RuntimeError(f"the cache reader gave {rows} rows of {self.what}, which holds {self.expected_rows}")

    def close(self) -> None:
        self._stop.set()
        self._worker.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._gather.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "CachePass":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_pass(file_urls: Sequence[str], *, rank: int, size: int, expected_rows: int, what: str, task: str,
              input_spec: Mapping[str, Any], batch_size: int, threads: int, shuffle: bool, seed: int,
              with_mask: bool = False, pin: bool | None = None) -> CachePass:
    """One pass over shard ``rank`` of ``size`` of the cache files ``file_urls`` (use as a context manager).
    ``shuffle``: row groups permuted and rows shuffled within windows, both from ``seed``; otherwise the
    shard in file order. ``pin`` (default: whether CUDA is available): pixel tensors in pinned memory."""
    if pin is None:
        import torch

        pin = torch.cuda.is_available()
    urls = shard_files(file_urls, rank=rank, size=size)
    rng = np.random.default_rng(seed) if shuffle else None
    if rng is not None:
        urls = [urls[i] for i in rng.permutation(len(urls))]
    filesystem = filesystem_of(urls[0])[0] if urls else None  # one connection for the pass (hdfs://)
    # On a remote filesystem the path is the URL's path part (what from_uri returned for the first file).
    paths = [filesystem_of(url)[1] if filesystem is None else urlparse(url).path for url in urls]

    def read(path: str) -> RowGroup:
        return read_row_group(path, task=task, input_spec=input_spec, with_mask=with_mask, filesystem=filesystem)

    return CachePass(paths, expected_rows=expected_rows, what=what, batch_size=batch_size, threads=threads,
                     rng=rng, pin=pin, read=read)
