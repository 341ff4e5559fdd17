"""One rank's pass over its shard of a materialised split: Petastorm's batch `Reader` and torch `DataLoader`,
over a reader thread pool without petastorm 0.13's end-of-data race, and a check that the pass delivered
every row of the shard. Rank side only (imports petastorm at module level; `classeg.training.data` imports
this module inside the rank function).

The race: petastorm's `ThreadPool.get_results` ends the data when ``all_workers_done()`` (every ventilated row
group processed, result queues empty) and then ``ventilator.completed()`` (every row group ventilated) hold,
asked in that order. If the ventilator thread ventilates the remaining row groups between the two questions,
both answers are yes and the reader stops with those row groups unread. It happens at the very start of a
pass (nothing ventilated yet, so "all done" is trivially true) when the main thread loses the GIL between
the two calls: that pass yields no rows, silently. Training then read a different pass (different batches,
so a seeded run was not reproducible), and validation or test metrics covered fewer rows. Asking
``completed()`` first closes it: once everything is ventilated, "all processed" really means the end.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from petastorm.arrow_reader_worker import ArrowReaderWorker
from petastorm.cache import NullCache
from petastorm.fs_utils import get_filesystem_and_path_or_paths
from petastorm.pytorch import DataLoader
from petastorm.reader import Reader, normalize_dataset_url_or_urls
from petastorm.workers_pool.thread_pool import ThreadPool


class ThreadPoolWithoutEndRace(ThreadPool):
    """petastorm's `ThreadPool`, except that the workers only count as done once the ventilator has
    ventilated everything (see the module docstring)."""

    def all_workers_done(self) -> bool:
        ventilated_all = self._ventilator is None or self._ventilator.completed()  # read before the workers
        return ventilated_all and super().all_workers_done()


class ShardPass:
    """Iterating yields the DataLoader's batches (dicts of tensors with a ``scan_key`` column). A pass that
    ends short of (or beyond) the shard's ``expected_rows`` raises RuntimeError instead of training or
    evaluating on part of the shard. A pass abandoned early (the training loop has its steps) is not checked."""

    def __init__(self, loader: DataLoader, *, expected_rows: int, what: str) -> None:
        self.loader = loader
        self.expected_rows = expected_rows
        self.what = what

    def __iter__(self) -> Iterator[dict]:
        rows = 0
        for batch in self.loader:
            rows += len(batch["scan_key"])
            yield batch
        if rows != self.expected_rows:
            raise RuntimeError(f"the Petastorm reader gave {rows} rows of {self.what}, which holds "
                               f"{self.expected_rows}")


@contextlib.contextmanager
def open_shard_pass(file_urls: list[str], *, rank: int, size: int, expected_rows: int, what: str,
                    batch_size: int, shuffling_queue_capacity: int, shuffle_row_groups: bool, seed: int,
                    transform_spec) -> Iterator[ShardPass]:
    """One pass (``num_epochs=1``) over shard ``rank`` of ``size`` of the Parquet files ``file_urls`` (row
    group ``g`` is in shard ``g % size``), decoded by ``transform_spec`` in one reader thread, batched by
    petastorm's DataLoader (``shuffling_queue_capacity`` 0: in reader order). ``seed`` must not be 0: petastorm
    takes 0 as "no seed" and shuffles from numpy's global generator in its ventilator thread."""
    if seed == 0 and (shuffle_row_groups or shuffling_queue_capacity):
        raise ValueError("seed must be non-zero for a shuffled pass (petastorm treats 0 as unseeded)")
    urls = normalize_dataset_url_or_urls(list(file_urls))
    filesystem, paths = get_filesystem_and_path_or_paths(urls)
    pool = ThreadPoolWithoutEndRace(1, seed=seed)
    reader = Reader(filesystem, paths, worker_class=ArrowReaderWorker, reader_pool=pool, seed=seed,
                    shuffle_row_groups=shuffle_row_groups, num_epochs=1, cur_shard=rank, shard_count=size,
                    cache=NullCache(), transform_spec=transform_spec, is_batched_reader=True)
    try:
        loader = DataLoader(reader, batch_size=batch_size, shuffling_queue_capacity=shuffling_queue_capacity)
        yield ShardPass(loader, expected_rows=expected_rows, what=what)
    finally:
        reader.stop()
        reader.join()
