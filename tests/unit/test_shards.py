"""`classeg.training.shards`: one rank's pass over real Parquet files with petastorm's reader, the thread pool
that closes petastorm's end-of-data race (shown losing a whole pass with petastorm's own pool under the same
forced thread interleaving), and the row-count check."""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from petastorm import make_batch_reader
from petastorm.pytorch import DataLoader
from petastorm.workers_pool.thread_pool import ThreadPool
from petastorm.workers_pool.ventilator import ConcurrentVentilator

from classeg.training.data import reader_seed
from classeg.training.shards import open_shard_pass

# petastorm 0.13 on pyarrow 14 warns about its legacy-dataset calls on every reader (the loop mutes them too)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

SIZES = [3, 2, 3, 2, 3, 1]  # rows per file (one row group each); shard r holds files r, r + 2, r + 4


@pytest.fixture()
def files(tmp_path):
    urls, start = [], 0
    for index, rows in enumerate(SIZES):
        keys = np.arange(start, start + rows, dtype=np.int64)
        path = tmp_path / f"part-{index:05d}.parquet"
        pq.write_table(pa.table({"scan_key": keys, "value": keys.astype(np.float32) / 10}), path)
        urls.append(path.as_uri())
        start += rows
    return urls


def _keys_of_shard(rank: int) -> set[int]:
    bounds = np.cumsum([0] + SIZES)
    return {k for g in range(rank, len(SIZES), 2) for k in range(bounds[g], bounds[g + 1])}


def _read(files, *, rank, expected=None, shuffle=False, seed=5, capacity=0):
    expected = sum(SIZES[rank::2]) if expected is None else expected
    np.random.seed(3)  # the row shuffling buffer draws from numpy's global generator (the loop seeds it per epoch)
    with open_shard_pass(files, rank=rank, size=2, expected_rows=expected, what=f"shard {rank}", batch_size=2,
                         shuffling_queue_capacity=capacity, shuffle_row_groups=shuffle, seed=seed,
                         transform_spec=None) as shard:
        return [int(k) for batch in shard for k in batch["scan_key"]]


def test_a_pass_reads_exactly_its_shard(files):
    for rank in (0, 1):
        keys = _read(files, rank=rank)
        assert len(keys) == sum(SIZES[rank::2]) and set(keys) == _keys_of_shard(rank)


def test_a_shuffled_pass_is_a_function_of_its_seed(files):
    first = _read(files, rank=0, shuffle=True, seed=11, capacity=4)
    again = _read(files, rank=0, shuffle=True, seed=11, capacity=4)
    assert first == again and set(first) == _keys_of_shard(0)
    orders = {tuple(_read(files, rank=0, shuffle=True, seed=s, capacity=4)) for s in range(1, 9)}
    assert len(orders) > 1, "different seeds give different orders"


def test_a_short_pass_raises_naming_the_shard(files):
    with pytest.raises(RuntimeError, match=r"gave 9 rows of shard 0, which holds 10"):
        _read(files, rank=0, expected=10)


def test_seed_zero_is_refused_for_a_shuffled_pass(files):
    with pytest.raises(ValueError, match="seed must be non-zero"):
        _read(files, rank=0, shuffle=True, seed=0)
    assert all(reader_seed(0, epoch, p) != 0 for epoch in range(50) for p in range(3))
    assert reader_seed(7, 1, 0) == reader_seed(7, 1, 0) != reader_seed(7, 2, 0)


def test_the_end_of_data_race_loses_a_pass_with_petastorms_pool_but_not_with_ours(files, monkeypatch):
    """Force the interleaving that happens when the main thread loses the GIL at the wrong moment: the first
    `all_workers_done()` runs before anything is ventilated, and the ventilator finishes before the reader
    asks `completed()`."""
    ventilate = ConcurrentVentilator._ventilate
    done = ThreadPool.all_workers_done

    def late_ventilate(self):
        time.sleep(0.2)  # the reader asks for results before anything is ventilated
        ventilate(self)

    def all_workers_done(self):
        answer = done(self)
        if answer and self._ventilator is not None:
            deadline = time.monotonic() + 5
            while not self._ventilator.completed() and time.monotonic() < deadline:
                time.sleep(0.01)  # the ventilator thread runs to completion in between
        return answer

    monkeypatch.setattr(ConcurrentVentilator, "_ventilate", late_ventilate)
    monkeypatch.setattr(ThreadPool, "all_workers_done", all_workers_done)
    with make_batch_reader(files, workers_count=1, num_epochs=1, cur_shard=0, shard_count=2,
                           shuffle_row_groups=False) as stock:
        lost = [int(k) for batch in DataLoader(stock, batch_size=2) for k in batch["scan_key"]]
    assert lost == [], "petastorm's own pool ends the pass before reading anything"
    assert set(_read(files, rank=0)) == _keys_of_shard(0)
