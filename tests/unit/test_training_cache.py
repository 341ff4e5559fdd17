"""The decoded training cache and the batched device augmentation, without Spark: real Parquet files read by
the cache reader (shards, order, threads, row-count check, bad values), and `classeg.training.augment`
against the numpy augmentation it batches (same draws, same geometry, same intensity change)."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from classeg import imaging
from classeg import transforms as T
from classeg.training import augment as A
from classeg.training import data as D
from classeg.training.cache import cache_table, open_pass, read_row_group
from classeg.training.data import Shards, epoch_batches, open_loader, scan_id_from_key, scan_key

SIZE = 8
SPEC = {"size": SIZE, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "zscore": False}
ROWS = [5, 3, 4, 2, 5, 1]  # rows per file (one row group each); shard r of 2 holds files r, r + 2, r + 4


def _ids(start: int, count: int) -> list[str]:
    return [format(0xF000000000000000 + i, "016x") for i in range(start, start + count)]


@pytest.fixture()
def files(tmp_path):
    """Cache files of a segmenter-style split (images, masks) plus labels; pixel value = row number % 251."""
    urls, start = [], 0
    for index, rows in enumerate(ROWS):
        numbers = np.arange(start, start + rows)
        images = np.broadcast_to((numbers % 251).astype(np.uint8)[:, None, None, None], (rows, 3, SIZE, SIZE))
        masks = np.broadcast_to((numbers % 2).astype(np.uint8)[:, None, None], (rows, SIZE, SIZE))
        path = tmp_path / f"part-{index:05d}.parquet"
        pq.write_table(cache_table(_ids(start, rows), images, masks=masks, labels=numbers % 3), path)
        urls.append(path.as_uri())
        start += rows
    return urls


def _shard_ids(rank: int) -> set[str]:
    bounds = np.cumsum([0] + ROWS)
    return {i for g in range(rank, len(ROWS), 2) for i in _ids(int(bounds[g]), ROWS[g])}


def _read(files, *, rank=0, shuffle=False, seed=5, threads=2, batch_size=3, expected=None, task="segment"):
    expected = sum(ROWS[rank::2]) if expected is None else expected
    with open_pass(files, rank=rank, size=2, expected_rows=expected, what=f"shard {rank}", task=task,
                   input_spec=SPEC, batch_size=batch_size, threads=threads, shuffle=shuffle, seed=seed,
                   pin=False) as shard:
        return list(shard)


def test_a_pass_reads_exactly_its_shard_with_pixels_masks_and_labels(files):
    for rank in (0, 1):
        batches = _read(files, rank=rank)
        ids = [scan_id_from_key(k) for b in batches for k in b["scan_key"].tolist()]
        assert len(ids) == sum(ROWS[rank::2]) and set(ids) == _shard_ids(rank)
        assert [len(b["scan_key"]) for b in batches][:-1] == [3] * (len(batches) - 1)  # only the last is short
        for batch in batches:
            numbers = np.array([int(scan_id_from_key(k), 16) - 0xF000000000000000 for k in batch["scan_key"].tolist()])
            assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, SIZE, SIZE)
            np.testing.assert_array_equal(batch["image"][:, 1, 2, 3].numpy(), numbers % 251)
            np.testing.assert_array_equal(batch["mask"][:, 0, 0].numpy(), numbers % 2)
            assert "label" not in batch  # a segmenter's cache: the reader reads what the task needs


def test_a_shuffled_pass_is_a_function_of_its_seed_not_of_the_threads(files):
    order = [k for b in _read(files, shuffle=True, seed=11, threads=1) for k in b["scan_key"].tolist()]
    again = [k for b in _read(files, shuffle=True, seed=11, threads=3) for k in b["scan_key"].tolist()]
    other = [k for b in _read(files, shuffle=True, seed=12, threads=2) for k in b["scan_key"].tolist()]
    plain = [k for b in _read(files, shuffle=False) for k in b["scan_key"].tolist()]
    assert order == again and sorted(order) == sorted(plain)
    assert order != other and order != plain


def test_classifier_batches_carry_labels(files):
    batches = _read(files, rank=1, task="classify")
    numbers = [int(scan_id_from_key(k), 16) - 0xF000000000000000 for b in batches for k in b["scan_key"].tolist()]
    assert [v for b in batches for v in b["label"].tolist()] == [n % 3 for n in numbers]
    assert "mask" not in batches[0]


def test_a_short_pass_raises_naming_the_shard(files):
    with pytest.raises(RuntimeError, match="gave 14 rows of shard 0, which holds 15"):
        _read(files, expected=15)


def test_a_value_of_the_wrong_size_names_the_file(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(cache_table(_ids(0, 2), np.zeros((2, 3, 4, 4), np.uint8), labels=[0, 1]), path)
    with pytest.raises(ValueError, match=r"bad.parquet image holds a value of 48 bytes, expected 192"):
        read_row_group(str(path), task="classify", input_spec={**SPEC, "size": 8})


def test_epoch_batches_give_exactly_the_steps_over_whole_passes(files):
    shards = Shards(split="train", file_urls=tuple(files), rows=sum(ROWS), row_groups=len(ROWS),
                    shard_rows=(sum(ROWS[0::2]), sum(ROWS[1::2])), with_mask=False)
    options = dict(task="segment", input_spec=SPEC, batch_size=4, rank=1, size=2, seed=3, epoch=2, pin=False)
    batches = list(epoch_batches(shards, steps=4, **options))  # shard 1 has 6 rows: 2 batches per pass
    keys = [[k for k in b["scan_key"].tolist()] for b in batches]
    assert [len(k) for k in keys] == [4, 2, 4, 2]
    assert sorted(keys[0] + keys[1]) == sorted(keys[2] + keys[3]) == sorted(scan_key(i) for i in _shard_ids(1))
    assert keys[:2] != keys[2:]  # the second pass has its own order
    assert [k for b in epoch_batches(shards, steps=4, **options) for k in b["scan_key"].tolist()] == sum(keys, [])
    with open_loader(shards, train=False, **options) as loader:
        fixed = [k for b in loader for k in b["scan_key"].tolist()]
    assert fixed == sorted(fixed, key=lambda k: int(scan_id_from_key(k), 16))  # the file order


# ---------------------------------------------------------------------------------------------- augmentation
def _smooth(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([np.exp(-((xx - 20) ** 2 + (yy - 30) ** 2) / 200.0),
                      np.exp(-((xx - 40) ** 2 + (yy - 20) ** 2) / 150.0),
                      np.exp(-((xx - 32) ** 2 + (yy - 40) ** 2) / 300.0)], axis=-1).astype(np.float32)
    mask = ((xx - 40) ** 2 + (yy - 25) ** 2 < 100).astype(np.uint8)
    return image, mask


SCAN_IDS = ["00ff00ff00ff00ff", "e5155faf0d9dad62", "8000000000000001", "0000000000000003", "123456789abcdef0"]


def test_batched_augmentation_matches_the_numpy_augmentation_scan_by_scan():
    image, mask = _smooth()
    keys = [scan_key(s) for s in SCAN_IDS]
    params = A.draw_batch(keys, seed=3, epoch=1)
    batch = torch.from_numpy(np.repeat(image.transpose(2, 0, 1)[None], len(keys), axis=0))
    masks = torch.from_numpy(np.repeat(mask[None, None], len(keys), axis=0)).float()
    out, out_masks = A.augment_batch(batch, masks, params=params)
    flips = set()
    for i, scan_id in enumerate(SCAN_IDS):
        rng = np.random.default_rng([3, 1, int(scan_id, 16)])
        draw = T.draw_augmentation(np.random.default_rng([3, 1, int(scan_id, 16)]))
        flips.add((draw.flip_horizontal, draw.flip_vertical))
        expected, expected_mask = T.augment(image, mask, rng=rng)
        got = out[i].numpy().transpose(1, 2, 0)
        inner = (slice(4, -4), slice(4, -4))  # the border: the two fill the outside in differently
        assert np.abs(got - expected)[inner].max() < 0.02, scan_id
        assert np.abs(got - expected).mean() < 0.01, scan_id
        np.testing.assert_array_equal(out_masks[i, 0].numpy(), expected_mask)  # nearest: identical
    assert len(flips) >= 3  # the cases cover several flip combinations


def test_augmentation_is_deterministic_per_scan_and_epoch_and_keeps_masks_binary():
    image, mask = _smooth(32)
    keys = [scan_key(s) for s in SCAN_IDS]
    batch = torch.from_numpy(np.repeat(image.transpose(2, 0, 1)[None], len(keys), axis=0))
    masks = torch.from_numpy(np.repeat(mask[None, None], len(keys), axis=0)).float()
    first = A.augment_batch(batch, masks, params=A.draw_batch(keys, seed=0, epoch=4))
    again = A.augment_batch(batch, masks, params=A.draw_batch(keys, seed=0, epoch=4))
    other = A.augment_batch(batch, masks, params=A.draw_batch(keys, seed=0, epoch=5))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    reordered = A.augment_batch(batch.flip(0), masks, params=A.draw_batch(keys[::-1], seed=0, epoch=4))
    assert torch.allclose(reordered[0].flip(0), first[0])  # a scan's draw does not depend on its batch position
    assert set(torch.unique(first[1]).tolist()) <= {0.0, 1.0}
    assert float(first[0].min()) >= 0 and float(first[0].max()) <= 1


def test_draws_cover_the_numpy_ranges():
    params = A.draw_batch(np.arange(2000, dtype=np.int64), seed=1, epoch=0)
    degrees = np.degrees(params["angle"])
    assert -10 <= degrees.min() < -9.5 and 9.5 < degrees.max() <= 10
    assert 0.45 < (params["flip_x"] < 0).mean() < 0.55 and 0.45 < (params["flip_y"] < 0).mean() < 0.55
    assert -0.1 <= params["offset"].min() < -0.09 and 0.09 < params["offset"].max() <= 0.1
    assert 0.9 <= params["factor"].min() < 0.91 and 1.09 < params["factor"].max() <= 1.1


@pytest.mark.parametrize("zscore", [False, True])
def test_model_inputs_normalise_as_scoring_does(zscore):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (2, 3, SIZE, SIZE), dtype=np.uint8)
    spec = {**SPEC, "zscore": True, "mean": None, "std": None} if zscore else SPEC
    batch = {"image": torch.from_numpy(pixels), "mask": torch.zeros((2, SIZE, SIZE), dtype=torch.uint8),
             "label": torch.tensor([1, 0]), "scan_key": torch.tensor([1, 2])}
    images, target = A.model_inputs(batch, task="segment" if zscore else "classify", input_spec=spec,
                                    device=torch.device("cpu"))
    expected = np.stack([T.preprocess_for_model(p.transpose(1, 2, 0), input_size=SIZE, zscore=zscore,
                                                mean=None if zscore else spec["mean"],
                                                std=None if zscore else spec["std"]) for p in pixels])
    np.testing.assert_allclose(images.numpy(), expected, atol=1e-4)
    assert target.shape == ((2, 1, SIZE, SIZE) if zscore else (2,))


def test_model_inputs_of_a_mask_supervised_classifier_and_bad_batches():
    batch = {"image": torch.zeros((2, 3, SIZE, SIZE), dtype=torch.uint8), "label": torch.tensor([1, 0]),
             "mask": torch.ones((2, SIZE, SIZE), dtype=torch.uint8), "scan_key": torch.tensor([1, 2])}
    images, (labels, masks) = A.model_inputs(batch, task="classify", input_spec=SPEC, device=torch.device("cpu"),
                                             augment=True, with_mask=True, channels_last=True)
    assert images.is_contiguous(memory_format=torch.channels_last) and labels.tolist() == [1, 0]
    assert masks.shape == (2, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"square batch \(N, C, S, S\), got shape \(2, 3, 8, 6\)"):
        A.augment_batch(torch.zeros((2, 3, 8, 6)), params=A.draw_batch([1, 2], seed=0, epoch=0))
    with pytest.raises(ValueError, match="params hold 1 scans, the batch 2"):
        A.augment_batch(torch.zeros((2, 3, 8, 8)), params=A.draw_batch([1], seed=0, epoch=0))


# ---------------------------------------------------------------------------------------------- old path vs new
def _scan_rows(*, source: int, count: int = 6, gray_every: int = 3) -> list[dict]:
    """Scan-table rows as ingest writes them: PNG bytes of smooth anatomy-like images with noise (RGB, every
    ``gray_every``-th grayscale), masks (0/255 blobs; every other row has none) and labels."""
    rng = np.random.default_rng(source)
    yy, xx = np.mgrid[0:source, 0:source] / source
    rows = []
    for i in range(count):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05)
        channels = [blob * rng.uniform(0.5, 1.0) + 0.3 * xx * rng.uniform(0, 1) for _ in range(3)]
        pixels = np.clip(np.stack(channels, axis=-1) * 200 + rng.normal(0, 8, (source, source, 3)), 0, 255)
        image = pixels.astype(np.uint8)
        if i % gray_every == 0:
            image = image[..., 0]
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < 0.02).astype(np.uint8) * 255
        rows.append({"scan_id": format(int(rng.integers(0, 2 ** 62)) * 4 + i % 4, "016x"),
                     "image": imaging.encode_png(image), "label": i % 2,
                     "mask": imaging.encode_png(mask) if i % 2 == 0 else None})
    return rows


def _new_path(rows, tmp_path, *, task, spec, with_mask, augment, seed=7, epoch=2, shuffle=False):
    """The training path of the cache: `cache_row` (what the Spark executors run) -> a Parquet file -> the
    reader -> `model_inputs`; returns {scan_id: (image (C, S, S), mask (1, S, S) or None, label or None)}."""
    import pyarrow as pa

    from classeg.training.cache import cache_row, columns

    names = columns(task, with_mask=with_mask)
    values = [cache_row(row, task=task, input_spec=spec, with_mask=with_mask) for row in rows]
    kinds = {"scan_id": pa.string(), "scan_key": pa.int64(), "image": pa.binary(), "mask": pa.binary(),
             "label": pa.int64()}
    table = pa.table({name: pa.array([v[i] for v in values], kinds[name]) for i, name in enumerate(names)})
    path = tmp_path / f"part-{task}-{with_mask}-{augment}.parquet"
    pq.write_table(table, path)
    out = {}
    with open_pass([path.as_uri()], rank=0, size=1, expected_rows=len(rows), what="the test shard", task=task,
                   input_spec=spec, batch_size=4, threads=2, shuffle=shuffle, seed=3, with_mask=with_mask,
                   pin=False) as shard:
        for batch in shard:
            images, target = A.model_inputs(batch, task=task, input_spec=spec, device=torch.device("cpu"),
                                            augment=augment, seed=seed, epoch=epoch, with_mask=with_mask)
            labels, masks = ((target if with_mask else (target, None)) if task == "classify" else (None, target))
            for j, key in enumerate(batch["scan_key"].tolist()):
                out[scan_id_from_key(key)] = (images[j].numpy(), None if masks is None else masks[j].numpy(),
                                              None if labels is None else int(labels[j]))
    return out


SEGMENT_SPEC = {**SPEC, "mean": None, "std": None, "zscore": True}


@pytest.mark.parametrize("task, spec, with_mask", [("classify", SPEC, False), ("classify", SPEC, True),
                                                   ("segment", SEGMENT_SPEC, False)])
@pytest.mark.parametrize("source", [32, 48])
def test_the_cache_path_gives_what_decode_example_gives_for_the_same_scans(tmp_path, task, spec, with_mask,
                                                                           source):
    """Augmentation off: the reader's batches through `model_inputs` equal `decode_example` (the path the
    cache replaced, and the preprocessing scoring applies) scan by scan, in value, channel order and
    normalisation; labels and masks stay with their images through the shuffled pass. Stored at the input
    size (source 32) they agree to float rounding; resized (48 -> 32) the cache rounds to uint8 after
    resizing, so they agree to that quantisation (half a grey level, a little more for PIL's fixed-point
    uint8 filter)."""
    spec = {**spec, "size": 32}
    rows = _scan_rows(source=source)
    new = _new_path(rows, tmp_path, task=task, spec=spec, with_mask=with_mask, augment=False, shuffle=True)
    assert sorted(new) == sorted(row["scan_id"] for row in rows)
    for row in rows:
        image, mask = D.decode_example(row["image"], row["mask"], task=task, input_spec=spec, augment=False,
                                       seed=7, epoch=2, scan_id=row["scan_id"], with_mask=with_mask)
        got_image, got_mask, got_label = new[row["scan_id"]]
        assert got_image.shape == image.shape == (3, 32, 32) and got_image.dtype == np.float32
        if source == 32:
            np.testing.assert_allclose(got_image, image, rtol=0, atol=2e-5)
        else:
            level = _unit(row, spec) / 255  # one grey level in model units
            assert np.abs(got_image - image).max() <= 1.01 * level, row["scan_id"]
            assert np.abs(got_image - image).mean() <= 0.35 * level, row["scan_id"]
        if mask is None:
            assert got_mask is None
        else:
            np.testing.assert_array_equal(got_mask, mask)
        assert got_label == (row["label"] if task == "classify" else None)


def _unit(row: dict, spec: dict) -> float:
    """What 1.0 in [0, 1] pixel units is in model units: 1 / the smallest channel std (classify), 1 / the
    image's own std (z-scored segmenter input)."""
    if not spec["zscore"]:
        return 1 / min(spec["std"])
    return 1 / float(T.to_float(imaging.decode_png(row["image"])).std())


@pytest.mark.parametrize("task, spec, with_mask", [("classify", SPEC, True), ("segment", SEGMENT_SPEC, False)])
def test_the_cache_path_augments_each_scan_as_decode_example_does(tmp_path, task, spec, with_mask):
    """Augmentation on, scans stored at the input size: each scan gets `decode_example`'s flips, rotation and
    intensity change for the same (seed, epoch, scan_id), whichever batch and position the shuffled pass
    puts it in; masks identical (nearest); images equal away from the border (where the two fill the
    outside in differently) to a few grey levels, bilinear sampling being computed differently."""
    spec = {**spec, "size": 32}
    rows = _scan_rows(source=32, count=8)
    new = _new_path(rows, tmp_path, task=task, spec=spec, with_mask=with_mask, augment=True, shuffle=True)
    inner = (slice(None), slice(3, -3), slice(3, -3))
    for row in rows:
        image, mask = D.decode_example(row["image"], row["mask"], task=task, input_spec=spec, augment=True,
                                       seed=7, epoch=2, scan_id=row["scan_id"], with_mask=with_mask)
        plain, _ = D.decode_example(row["image"], row["mask"], task=task, input_spec=spec, augment=False,
                                    seed=7, epoch=2, scan_id=row["scan_id"], with_mask=with_mask)
        got_image, got_mask, _ = new[row["scan_id"]]
        unit = _unit(row, spec)
        assert np.abs(got_image - image)[inner].max() < 0.01 * unit, row["scan_id"]
        assert np.abs(got_image - image).mean() < 0.01 * unit, row["scan_id"]
        assert np.abs(image - plain).mean() > 0.02 * unit  # the draw changed the scan (the check can fail)
        np.testing.assert_array_equal(got_mask, mask)


def test_hadoop_classpath_is_set_from_the_hadoop_command(tmp_path, monkeypatch):
    """pyarrow.fs's libhdfs client needs the Hadoop jars on CLASSPATH; classeg fills it from
    `hadoop classpath --glob` as the legacy pyarrow.hdfs client does (here a stand-in `hadoop` script)."""
    from classeg.training.cache import ensure_hadoop_classpath

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "hadoop"
    script.write_text('#!/bin/sh\n[ "$1 $2" = "classpath --glob" ] && echo /usr/lib/hadoop/hadoop-common.jar:/x.jar\n')
    script.chmod(0o755)
    monkeypatch.delenv("HADOOP_HOME", raising=False)
    monkeypatch.delenv("CLASSPATH", raising=False)
    monkeypatch.setenv("PATH", str(bin_dir))
    ensure_hadoop_classpath()
    assert os.environ["CLASSPATH"] == "/usr/lib/hadoop/hadoop-common.jar:/x.jar"
    monkeypatch.setenv("CLASSPATH", "/opt/hadoop/share/a.jar")  # already there: kept
    ensure_hadoop_classpath()
    assert os.environ["CLASSPATH"] == "/opt/hadoop/share/a.jar"
    monkeypatch.delenv("CLASSPATH")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no hadoop command: nothing set
    ensure_hadoop_classpath()
    assert "CLASSPATH" not in os.environ
    monkeypatch.setenv("HADOOP_HOME", str(tmp_path))  # $HADOOP_HOME/bin/hadoop wins
    ensure_hadoop_classpath()
    assert os.environ["CLASSPATH"].startswith("/usr/lib/hadoop/")


@pytest.mark.parametrize("seed, epoch", [(0, 0), (3, 1), (2**32 + 5, 7), (0, 2**40), (2**70, 2)])
def test_batched_uniforms_equal_numpys_generators_bit_for_bit(seed, epoch):
    from classeg.training.seeded import uniforms

    rng = np.random.default_rng(11)
    # every kind of key: zero, one entropy word, the 2**32 edge, two words, the top of the unsigned range
    keys = np.concatenate([np.array([0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1], dtype=np.uint64),
                           rng.integers(0, 2**32, 40, dtype=np.uint64),
                           rng.integers(0, 2**64 - 1, 200, dtype=np.uint64, endpoint=True)])
    expected = np.stack([np.random.default_rng([seed, epoch, int(key)]).random(7) for key in keys])
    got = uniforms(seed, epoch, keys, 7)
    assert got.dtype == np.float64 and got.shape == (len(keys), 7)
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(uniforms(seed, epoch + 1, keys, 7), expected)  # the epoch is in the seed


def test_draw_batch_gives_each_scan_draw_augmentations_parameters_exactly():
    keys = np.array([scan_key(s) for s in SCAN_IDS] + list(range(-50, 50)), dtype=np.int64)
    params = A.draw_batch(keys, seed=9, epoch=2)
    for i, key in enumerate(keys):
        draw = T.draw_augmentation(np.random.default_rng([9, 2, int(key) & (2**64 - 1)]))
        assert params["flip_x"][i] == (-1.0 if draw.flip_horizontal else 1.0)
        assert params["flip_y"][i] == (-1.0 if draw.flip_vertical else 1.0)
        assert params["angle"][i] == np.radians(draw.angle)
        assert (params["offset"][i], params["factor"][i]) == (draw.offset, draw.factor)


@pytest.mark.parametrize("threads", [0, 3])
def test_collate_gathers_rows_from_several_row_groups_in_batch_order(threads):
    from concurrent.futures import ThreadPoolExecutor

    from classeg.training.cache import RowGroup, collate

    rng = np.random.default_rng(5)
    groups = [RowGroup(image=rng.integers(0, 255, (6, 3, 4, 4), dtype=np.uint8),
                       scan_key=np.arange(6, dtype=np.int64) + 100 * g,
                       mask=rng.integers(0, 2, (6, 4, 4), dtype=np.uint8),
                       label=np.arange(6, dtype=np.int64) % 3 + g) for g in range(3)]
    rows = [(groups[int(rng.integers(3))], int(rng.integers(6))) for _ in range(11)]
    pool = ThreadPoolExecutor(threads) if threads else None
    try:
        batch = collate(rows, pin=False, pool=pool)
    finally:
        if pool is not None:
            pool.shutdown()
    for j, (group, i) in enumerate(rows):
        assert torch.equal(batch["image"][j], torch.from_numpy(group.image[i]))
        assert torch.equal(batch["mask"][j], torch.from_numpy(group.mask[i]))
        assert (int(batch["scan_key"][j]), int(batch["label"][j])) == (group.scan_key[i], group.label[i])
    assert batch["image"].dtype == torch.uint8 and batch["scan_key"].dtype == torch.int64


def test_prepared_ahead_on_the_cpu_prepares_each_batch_past_skip_in_order_and_closes_the_loader():
    from classeg.training import accel

    class Loader:
        closed = False

        def __init__(self, count):
            self.batches = iter([{"image": torch.full((2, 1, 2, 2), k, dtype=torch.uint8),
                                  "scan_key": torch.tensor([2 * k, 2 * k + 1])} for k in range(count)])

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.batches)

        def close(self):
            self.closed = True

    made = []

    def prepare(batch):
        made.append(int(batch["image"][0, 0, 0, 0]))
        return batch["image"].float() * 2, batch["scan_key"]

    loader = Loader(5)
    out = list(accel.prepared_ahead(loader, torch.device("cpu"), prepare, skip=2))
    assert [int(batch["scan_key"][0]) for batch, _ in out] == [0, 2, 4, 6, 8]
    assert [inputs for _, inputs in out[:2]] == [None, None]  # skipped: neither copied nor prepared
    assert made == [2, 3, 4] and loader.closed
    for k, (_, (images, keys)) in enumerate(out[2:], start=2):
        assert torch.equal(images, torch.full((2, 1, 2, 2), 2.0 * k)) and keys.tolist() == [2 * k, 2 * k + 1]

    loader = Loader(5)  # a consumer stopping early closes the loader too
    ahead = accel.prepared_ahead(loader, torch.device("cpu"), prepare)
    next(ahead)
    ahead.close()
    assert loader.closed


def test_device_settings_on_the_cpu_are_the_bit_for_bit_reference():
    from classeg.training import accel

    settings = accel.settings_for(torch.device("cpu"), compile_model=True)
    assert (settings.amp_dtype, settings.grad_scaler, settings.channels_last, settings.cudnn_benchmark,
            settings.compile, settings.prepare_ahead) == (None, False, False, False, False, False)
    assert settings.describe() == "fp32, contiguous, cudnn.benchmark off, compile off"
    ahead = accel.DeviceSettings(amp_dtype=torch.bfloat16, grad_scaler=False, channels_last=True,
                                 cudnn_benchmark=True, compile=False, prepare_ahead=True)
    assert ahead.describe() == ("bfloat16, channels_last, cudnn.benchmark on, compile off, "
                                "inputs prepared ahead on a side stream")
