"""Training data through Petastorm: the driver materialises each split once, ranks read their shards.

Driver side (``prepare_*``): select the rows and the few columns a task needs from the scan table, deal them
into ``row_groups`` Spark partitions of exactly known sizes (row ``i`` of a deterministic order goes to
partition ``i % row_groups``), and hand the DataFrame to ``petastorm.spark.make_spark_converter``, which writes
one Parquet file per partition under the cache directory. With one row group per file, Petastorm's sharding
(row group ``g`` belongs to shard ``g % shard_count``) is known in advance, so the driver computes every
shard's size and the number of steps that lets every rank run the SAME number of steps per epoch (Horovod and
DDP hang when one rank stops early). ``row_groups`` is a multiple of the number of processes, so shards differ
by at most ``row_groups / processes`` rows. `prepare_split` returns a `SplitData`: the converter stays on the
driver (it deletes the cache at the end), its `Shards` (file URLs and row counts) travel in the plan.

The cache holds decoded pixels (`classeg.training.cache`): Spark executors decode each split once, at the
model's input size (uint8 image (C, S, S), mask (S, S)), so ranks never decode PNG bytes per epoch.

Rank side (``open_loader``, ``epoch_batches``): one pass over shard ``rank`` of ``size`` of the split's files
(`classeg.training.cache.open_pass`: pyarrow reader threads, batches collated into pinned memory when CUDA is
present, a check that each complete pass delivers the shard's exact row count). No Spark or Petastorm on this
side. Augmentation and normalisation happen on the training device (`classeg.training.augment`). Data order
is a function of (seed, epoch, pass) only (`reader_seed`); augmentation is drawn per (seed, epoch, scan_id).
Scan ids travel as signed 64-bit integers (``scan_key``): PyTorch tensors hold no strings.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from classeg.training.cache import scan_key  # noqa: F401 (the scan id <-> key pair lives here too)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Rows per Parquet row group (one Spark partition each): the reader decodes a whole row group at once.
ROWS_PER_ROW_GROUP = 128
#: Row groups per shard at least, so the row-group shuffle has something to shuffle.
MIN_ROW_GROUPS_PER_SHARD = 2
#: Row groups are kept whole: the converter's row-group size limit is set far above any partition.
ROW_GROUP_BYTES = 1 << 30
#: Reader threads of a pass when the caller does not say (``train.loader_threads``).
LOADER_THREADS = 2


# ---------------------------------------------------------------------------------------------- scan ids
def scan_id_from_key(key: int) -> str:
    """Inverse of `scan_key`."""
    return format(int(key) & ((1 << 64) - 1), "016x")


# ---------------------------------------------------------------------------------------------- driver side
@dataclass(frozen=True)
class Shards:
    """One materialised split as the ranks see it (picklable, no Spark objects): its cache files in shard
    order, its row count, row groups and the rows of each rank's shard."""

    split: str
    file_urls: tuple[str, ...]
    rows: int
    row_groups: int
    shard_rows: tuple[int, ...]
    with_mask: bool = False  # the cache holds masks beside a classifier's labels (mask supervision)

    def steps(self, batch_size: int) -> int:
        """Batches every rank reads per epoch so that each rank sees at least its whole shard."""
        return math.ceil(max(self.shard_rows) / batch_size)


@dataclass
class SplitData:
    """Driver side of one materialised split: the Petastorm converter (which owns the cached files; `delete`
    them when training ends) and the `Shards` the ranks read."""

    converter: Any
    shards: Shards

    def delete(self) -> None:
        """Remove the split's cached Parquet files."""
        self.converter.delete()


def split_counts(frame) -> dict[str, dict[str, Any]]:
    """Per split: ``rows``, ``labels`` {label: count}, ``masks`` (rows with a mask), ``tumor`` (has_tumor rows).
    One small aggregation on the driver (no pixels are collected)."""
    from pyspark.sql import functions as F

    rows = (frame.groupBy("split", "label")
            .agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("mask").isNotNull().cast("int")).alias("masks"),
                 F.sum(F.coalesce(F.col("has_tumor"), F.lit(False)).cast("int")).alias("tumor"))
            .collect())
    counts: dict[str, dict[str, Any]] = {s: {"rows": 0, "labels": {}, "masks": 0, "tumor": 0} for s in SPLITS}
    for row in rows:
        entry = counts.setdefault(row["split"], {"rows": 0, "labels": {}, "masks": 0, "tumor": 0})
        entry["rows"] += int(row["n"])
        entry["labels"][int(row["label"])] = entry["labels"].get(int(row["label"]), 0) + int(row["n"])
        entry["masks"] += int(row["masks"] or 0)
        entry["tumor"] += int(row["tumor"] or 0)
    return counts


def task_frame(frame, *, split: str, task: str, tumor_only: bool, with_mask: bool = False):
    """The rows and columns of ``split`` that a task reads: classify -> scan_id, image, label (and mask when
    ``with_mask``: a mask-supervised classifier); segment -> scan_id, image, mask (only tumour slices when
    ``tumor_only``)."""
    from pyspark.sql import functions as F

    rows = frame.filter(F.col("split") == split)
    if task == "segment":
        if tumor_only:
            rows = rows.filter(F.col("has_tumor") == True)  # noqa: E712 (a Spark Column comparison)
        return rows.select("scan_id", "image", "mask")
    return rows.select("scan_id", "image", "label", *(["mask"] if with_mask else []))


def row_group_count(rows: int, processes: int) -> int:
    """Row groups for a split of ``rows`` rows read by ``processes`` shards: a multiple of ``processes``,
    at least ``MIN_ROW_GROUPS_PER_SHARD`` per shard when there are enough rows, about
    ``ROWS_PER_ROW_GROUP`` rows each, never more than ``rows`` (every row group non-empty)."""
    if rows < processes:
        raise ValueError(f"{rows} rows cannot be sharded over {processes} processes (every shard needs a row)")
    per_shard = max(MIN_ROW_GROUPS_PER_SHARD, math.ceil(rows / (processes * ROWS_PER_ROW_GROUP)))
    while per_shard > 1 and per_shard * processes > rows:
        per_shard -= 1
    return per_shard * processes


def shard_rows(rows: int, row_groups: int, processes: int) -> list[int]:
    """Rows per shard when row ``i`` is in row group ``i % row_groups`` and row group ``g`` in shard
    ``g % processes`` (Petastorm's rule)."""
    group_sizes = [rows // row_groups + (1 if g < rows % row_groups else 0) for g in range(row_groups)]
    return [sum(group_sizes[g] for g in range(shard, row_groups, processes)) for shard in range(processes)]


def deal_rows(spark, frame, *, row_groups: int, seed: int, decode=None, schema=None):
    """``frame`` in exactly ``row_groups`` partitions: rows ordered by a seeded hash of scan_id, row ``i`` to
    partition ``i % row_groups``, each partition sorted by scan_id (a deterministic layout for a given table,
    seed and partition count, so a resumed run reads what the first run read). ``decode`` (a picklable
    function of one Row, run on the executors after the rows are dealt, so the shuffle moves PNG bytes, not
    pixels) and ``schema`` (its output's) turn the rows into cache rows."""
    from pyspark.sql import functions as F

    ordered = frame.orderBy(F.xxhash64("scan_id", F.lit(seed)), "scan_id")
    dealt = (ordered.rdd.zipWithIndex()
             .map(lambda pair: (pair[1] % row_groups, pair[0]))
             .partitionBy(row_groups, lambda key: key)
             .values())
    if decode is not None:
        dealt = dealt.map(decode)
    return spark.createDataFrame(dealt, schema if decode is not None else frame.schema).sortWithinPartitions("scan_id")


def prepare_split(spark, frame, *, split: str, task: str, tumor_only: bool, rows: int, processes: int,
                  seed: int, input_spec: dict, with_mask: bool = False) -> SplitData:
    """Materialise one split as a training cache of decoded pixels at ``input_spec``'s size and channels
    (`classeg.training.cache`), written by Petastorm's converter (the cache location is Spark's
    ``petastorm.spark.converter.parentCacheDirUrl``, set by the caller). Driver only."""
    import functools

    from petastorm.spark import make_spark_converter

    from classeg.spark import job_stage
    from classeg.training import cache

    row_groups = row_group_count(rows, processes)
    stage = job_stage(spark, f"train-{task}-{split}",
                      f"train {task}: decode and cache the {split} split ({rows} rows)")
    decode = functools.partial(cache.cache_row, task=task, input_spec=dict(input_spec), with_mask=with_mask)
    dealt = deal_rows(spark, task_frame(frame, split=split, task=task, tumor_only=tumor_only, with_mask=with_mask),
                      row_groups=row_groups, seed=seed, decode=decode,
                      schema=cache.spark_schema(task, with_mask=with_mask))
    petastorm_log = logging.getLogger("petastorm.spark.spark_dataset_converter")
    level = petastorm_log.level
    # Small files are deliberate here (one row group per file, known shard sizes).
    petastorm_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), stage:
            warnings.simplefilter("ignore", FutureWarning)
            converter = make_spark_converter(dealt, parquet_row_group_size_bytes=ROW_GROUP_BYTES)
    finally:
        petastorm_log.setLevel(level)
    # The ranks shard row groups by file index: fix the order (part-00000, ...).
    converter.file_urls = sorted(converter.file_urls)
    if len(converter) != rows or len(converter.file_urls) != row_groups:
        raise RuntimeError(f"the training cache of the {split} split has {len(converter)} rows in "
                           f"{len(converter.file_urls)} files, expected {rows} rows in {row_groups}")
    log.info("%s split: %d rows in %d row groups at %s", split, rows, row_groups, converter.cache_dir_url)
    shards = Shards(split=split, file_urls=tuple(converter.file_urls), rows=rows, row_groups=row_groups,
                    shard_rows=tuple(shard_rows(rows, row_groups, processes)), with_mask=with_mask)
    return SplitData(converter=converter, shards=shards)


# ---------------------------------------------------------------------------------------------- rank side
def decode_example(image_png: bytes, mask_png: bytes | None, *, task: str, input_spec: dict, augment: bool,
                   seed: int, epoch: int, scan_id: str, with_mask: bool = False):
    """One scan row -> (model input float32 (C, S, S), mask float32 (1, S, S) or None; the mask for the
    segmenter or when ``with_mask``, all zeros for a row without one). Pure numpy/PIL; augmentation (train
    only) is drawn from a generator seeded by (seed, epoch, scan_id), the same geometry for image and mask."""
    from classeg import imaging, transforms

    image = imaging.decode_png(bytes(image_png))
    mask = None
    if task == "segment" or with_mask:
        mask = (imaging.decode_png(bytes(mask_png)) if mask_png is not None
                else np.zeros(image.shape[:2], dtype=np.uint8))
        if mask.ndim == 3:
            mask = mask[..., 0]
    if augment:
        rng = np.random.default_rng([seed, epoch, int(scan_id, 16)])
        image, mask = transforms.augment(image, mask, rng=rng)
    zscore = bool(input_spec["zscore"])
    features = transforms.preprocess_for_model(
        image, input_size=input_spec["size"], mean=None if zscore else input_spec["mean"],
        std=None if zscore else input_spec["std"], zscore=zscore, channels=input_spec["channels"])
    target = transforms.preprocess_mask(mask, input_size=input_spec["size"]) if mask is not None else None
    return features, target


def reader_seed(seed: int, epoch: int, pass_index: int) -> int:
    """The shuffling seed of one pass: a 32-bit value derived from (seed, epoch, pass), never 0 (kept
    from the Petastorm reader, which took 0 as "unseeded", so that a run's order stays what it was)."""
    return int(np.random.SeedSequence([seed, epoch, pass_index]).generate_state(1)[0]) or 1


def open_loader(data: Shards, *, task: str, input_spec: dict, batch_size: int, rank: int, size: int,
                seed: int, epoch: int, train: bool, pass_index: int = 0, threads: int = LOADER_THREADS,
                pin: bool | None = None):
    """Context manager yielding one pass over this rank's shard (`classeg.training.cache.CachePass`: an
    iterable of uint8 batches that raises if the pass ends short of the shard's rows); masks where the
    split's cache holds them (``data.with_mask``, or the segmenter's).

    ``train=True``: row groups and rows shuffled, seeded by (seed, epoch, pass_index). ``train=False``: the
    shard in a fixed order. The last batch may be short. Augmentation is the caller's, on the device
    (`classeg.training.augment.model_inputs`)."""
    from classeg.training.cache import open_pass

    return open_pass(list(data.file_urls), rank=rank, size=size, expected_rows=data.shard_rows[rank],
                     what=f"rank {rank}'s shard of the {data.split} split", task=task, input_spec=input_spec,
                     batch_size=batch_size, threads=threads, shuffle=train,
                     seed=reader_seed(seed, epoch if train else 0, pass_index if train else 0),
                     with_mask=data.with_mask, pin=pin)


def epoch_batches(data: Shards, *, steps: int, **loader_options):
    """Exactly ``steps`` training batches for this rank: whole passes over its shard (so every row of the
    shard is seen each epoch), then as much of a further pass as the shards' unequal sizes require. Use
    with `contextlib.closing` so the reader stops when the loop has its batches."""
    produced, pass_index = 0, 0
    while produced < steps:
        with open_loader(data, train=True, pass_index=pass_index, **loader_options) as loader:
            for batch in loader:
                produced += 1
                yield batch
                if produced == steps:
                    return
        pass_index += 1
