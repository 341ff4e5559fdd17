"""The ingest job end to end on local Spark, one small synthetic dataset per layout, plus every kind of bad
input. Expected values come from the generator's ground truth, not from the job."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile

from classeg import imaging
from classeg.cli import main
from classeg.errors import JobFailed
from classeg.config import load_config
from classeg import synthetic
from classeg.ingest.job import run_ingest
from classeg.ingest.table import read_errors, read_scan_table

SIZE = 32


def _cfg(dataset, src, out, *extra):
    return load_config(overrides=[f"ingest.dataset={dataset}", f"ingest.input={src}", f"ingest.output={out}",
                                  f"ingest.image_size={SIZE}", "spark.master=local[2]", *extra])


def _rows(spark, out):
    frame, summary = read_scan_table(spark, str(out))
    return frame.toPandas(), summary


def _errors(spark, out):
    return read_errors(spark, str(out)).toPandas()


@pytest.fixture(scope="module")
def lgg(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("lgg")
    truth = synthetic.write_lgg(root / "data", patients=7, seed=5, image_size=48, slices_per_patient=(5, 8))
    out = root / "table"
    summary = run_ingest(spark, _cfg("lgg", root / "data", out))
    rows, stored = _rows(spark, out)
    return truth, summary, rows, stored, root


def test_lgg_rows_match_truth(lgg):
    truth, summary, rows, stored, root = lgg
    expected = {(s["patient_id"], s["slice_index"]): s for s in truth["slices"]}
    assert len(rows) == len(expected) == summary["scans"]
    assert set(zip(rows.patient_id, rows.slice_index)) == set(expected)
    for row in rows.itertuples():
        slice_truth = expected[(row.patient_id, row.slice_index)]
        assert row.has_tumor == slice_truth["has_tumor"]
        assert row.label == int(slice_truth["has_tumor"])
        assert row.label_name == ("tumor" if slice_truth["has_tumor"] else "no_tumor")
        assert row.source_uri.endswith(slice_truth["path"]) and "lgg-mri-segmentation" not in row.source_uri
        assert (row.orig_height, row.orig_width) == (48, 48)
    assert stored == json.loads((root / "table" / "summary.json").read_text())


def test_lgg_slice_order_is_numeric_and_ids_stable(lgg):
    truth, summary, rows, _, _ = lgg
    for patient, group in rows.groupby("patient_id"):
        indices = sorted(group.slice_index)
        assert indices == list(range(1, len(indices) + 1))  # 1..n with no gaps: 10 sorts after 9
    assert rows.scan_id.is_unique and rows.scan_id.str.len().eq(16).all()


def test_lgg_mask_and_image_round_trip(lgg):
    truth, _, rows, _, root = lgg
    for row in rows.head(12).itertuples():
        rel = row.source_uri.split("/data/", 1)[1]
        source = tifffile.imread(root / "data" / rel)
        source_mask = tifffile.imread(root / "data" / rel.replace(".tif", "_mask.tif"))
        np.testing.assert_array_equal(imaging.decode_png(row.image), imaging.canonical(source, SIZE))
        stored_mask = imaging.decode_png(row.mask)
        assert set(np.unique(stored_mask)) <= {0, 255}
        np.testing.assert_array_equal(stored_mask > 0, imaging.resize_mask(source_mask, SIZE))


def test_lgg_duplicate_copy_counted_once_and_accounted(lgg):
    truth, summary, rows, _, _ = lgg
    n = len(truth["slices"])
    assert summary["files"]["listed"] == 4 * n + 2  # image + mask, twice, plus data.csv twice
    assert summary["skipped_by_reason"] == {"duplicate": 2 * n, "metadata": 2}
    assert summary["files"]["masks"] == n and summary["files"]["errors"] == 0


def test_lgg_split_is_by_patient_and_deterministic(lgg, spark, tmp_path):
    truth, summary, rows, _, root = lgg
    per_patient = rows.groupby("patient_id").split.nunique()
    assert (per_patient == 1).all()
    assert summary["patients"]["per_split"] == {"train": 5, "val": 1, "test": 1}  # 7 patients, 0.7/0.15/0.15
    again = run_ingest(spark, _cfg("lgg", root / "data", tmp_path / "again"))
    assert again["patients"]["ids"] == summary["patients"]["ids"]
    other = run_ingest(spark, _cfg("lgg", root / "data", tmp_path / "other", "ingest.seed=11"))
    assert other["patients"]["ids"] != summary["patients"]["ids"]


def test_figshare_labels_patients_folds_and_small_images(spark, tmp_path):
    truth = synthetic.write_figshare(tmp_path / "fig", patients=6, seed=2, image_size=64,
                                     slices_per_patient=(3, 5), small_numbers=(2, 7))
    run_ingest(spark, _cfg("figshare", tmp_path / "fig", tmp_path / "table"))
    rows, summary = _rows(spark, tmp_path / "table")
    by_number = {s["file_number"]: s for s in truth["slices"]}
    assert len(rows) == len(by_number)
    assert summary["class_names"] == ["meningioma", "glioma", "pituitary"]
    for row in rows.itertuples():
        t = by_number[row.slice_index]
        # the truth keeps MATLAB's 1..3 code; the table's label is 0-based
        assert (row.label, row.label_name, row.patient_id, row.fold) == (
            t["label"] - 1, t["label_name"], t["patient_id"], t["fold"])
        assert ["meningioma", "glioma", "pituitary"][row.label] == t["label_name"]
        assert (row.orig_height, row.orig_width) == ((256, 256) if row.slice_index in (2, 7) else (64, 64))
        assert row.has_tumor and imaging.decode_png(row.mask).any()
    assert (rows.groupby("patient_id").split.nunique() == 1).all()
    assert summary["skipped_by_reason"] == {"folds": 1, "metadata": 1}


def test_folders_class_names_verbatim_and_training_testing_honoured(spark, tmp_path):
    classes = ["Astrocitoma T1C+", "Meningioma T2", "_NORMAL T1"]
    truth = synthetic.write_folders(tmp_path / "f", seed=1, images_per_class=10, classes=classes, split_dirs=True)
    run_ingest(spark, _cfg("folders", tmp_path / "f", tmp_path / "table"))
    rows, summary = _rows(spark, tmp_path / "table")
    assert summary["class_names"] == sorted(classes)
    assert sorted(rows.label_name.unique()) == sorted(classes)
    assert dict(zip(rows.label_name, rows.sequence)) == {"Astrocitoma T1C+": "T1C+", "Meningioma T2": "T2",
                                                         "_NORMAL T1": "T1"}
    assert not summary["patient_level_split"] and "impossible" in summary["split_note"]
    testing = {s["path"] for s in truth["slices"] if s["path"].startswith("Testing/")}
    assert {r for r in rows.source_uri if "/Testing/" in r} and all(
        split == "test" for uri, split in zip(rows.source_uri, rows.split) if "/Testing/" in uri)
    assert (rows.split == "test").sum() == len(testing)
    assert set(rows.loc[rows.source_uri.str.contains("/Training/"), "split"]) == {"train", "val"}
    assert dict(zip(rows.label_name, rows.has_tumor)) == {"Astrocitoma T1C+": True, "Meningioma T2": True,
                                                          "_NORMAL T1": False}


@pytest.mark.parametrize("classes, tumor", [
    (["no_tumour", "tumour"], {"no_tumour": False, "tumour": True}),
    (["negative", "positive"], {"negative": False, "positive": True}),
    (["cat", "dog"], {"cat": None, "dog": None}),  # no tumour meaning: unknown, said so in the summary
])
def test_folders_has_tumor_follows_the_tumour_vocabulary(spark, tmp_path, classes, tumor):
    truth = synthetic.write_folders(tmp_path / "f", seed=3, images_per_class=4, classes=classes)
    summary = run_ingest(spark, _cfg("folders", tmp_path / "f", tmp_path / "table"))
    rows, stored = _rows(spark, tmp_path / "table")
    assert len(rows) == len(truth["slices"]) == 8 and stored["class_names"] == sorted(classes)
    assert {name: (None if value is None or value != value else bool(value))
            for name, value in zip(rows.label_name, rows.has_tumor)} == tumor
    assert stored["tumor_scans"] == 4 * sum(1 for value in tumor.values() if value)
    if None in tumor.values():
        assert stored["has_tumor_note"].startswith("has_tumor is null: class names ['cat', 'dog']")
    else:
        assert stored["has_tumor_note"] == (f"has_tumor from the class names (classeg.labels): tumour classes "
                                            f"{[name for name in sorted(classes) if tumor[name]]}")
    assert stored == json.loads(json.dumps(summary))


@pytest.fixture()
def damaged_lgg(tmp_path):
    root = tmp_path / "data"
    truth = synthetic.write_lgg(root, patients=3, seed=9, image_size=32, slices_per_patient=(5, 6),
                                duplicate_copy=False)
    folder = root / "kaggle_3m" / truth["slices"][0]["path"].split("/")[1]
    name = folder.name
    (folder / f"{name}_1.tif").write_bytes(b"II*\x00" + b"\x07" * 100)  # corrupt TIFF
    (folder / f"{name}_2_mask.tif").unlink()  # image without mask
    (folder / f"{name}_3.tif").unlink()  # mask without image
    data = (folder / f"{name}_4.tif").read_bytes()
    (folder / f"{name}_4.tif").write_bytes(data[: len(data) // 3])  # truncated
    (folder / "notes.txt").write_text("not a scan")
    return root, truth, name


def test_bad_input_becomes_error_rows_and_nothing_is_lost(spark, damaged_lgg, tmp_path):
    root, truth, name = damaged_lgg
    summary = run_ingest(spark, _cfg("lgg", root, tmp_path / "table", "ingest.max_error_rate=0.5"))
    errors = _errors(spark, tmp_path / "table")
    by_file = {uri.rsplit("/", 1)[1]: (sev, reason) for uri, sev, reason in
               zip(errors.source_uri, errors.severity, errors.reason)}
    assert by_file[f"{name}_1.tif"] == ("error", "undecodable")
    assert by_file[f"{name}_2.tif"] == ("error", "image_without_mask")
    assert by_file[f"{name}_3_mask.tif"] == ("error", "mask_without_image")
    assert by_file[f"{name}_4.tif"] == ("error", "undecodable")
    assert by_file["notes.txt"] == ("error", "not_a_scan")
    assert by_file[f"{name}_1_mask.tif"] == ("skipped", "partner_failed")
    assert by_file[f"{name}_4_mask.tif"] == ("skipped", "partner_failed")
    assert summary["files"]["errors"] == 5
    n = len(truth["slices"])
    assert summary["scans"] == n - 4
    files = [p for p in root.rglob("*") if p.is_file()]
    assert summary["files"]["listed"] == len(files)
    assert summary["scans"] + summary["files"]["masks"] + len(errors) == len(files)
    assert {e["reason"] for e in summary["errors"]} == {"undecodable", "image_without_mask",
                                                        "mask_without_image", "not_a_scan"}


def test_error_rate_over_threshold_fails_without_touching_the_table(spark, damaged_lgg, tmp_path):
    root, _, _ = damaged_lgg
    out = tmp_path / "table"
    good = run_ingest(spark, _cfg("lgg", root, out, "ingest.max_error_rate=0.9"))
    with pytest.raises(JobFailed, match=r"error rate 0\.\d+ is above --max-error-rate 0\.01"):
        run_ingest(spark, _cfg("lgg", root, out))
    rows, summary = _rows(spark, out)
    assert summary["run_id"] == good["run_id"] and len(rows) == good["scans"]
    failure = json.loads((out / "last_failure" / "summary.json").read_text())
    assert failure["status"] == "failed" and failure["errors_by_reason"]["undecodable"] == 2
    code = main(["ingest", "--dataset", "lgg", "--input", str(root), "--output", str(out),
                 "--image-size", str(SIZE), "--set", "spark.master=local[2]"])
    assert code == 1


def test_nothing_usable_fails_clearly(spark, tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.pdf").write_bytes(b"%PDF-1.4")
    with pytest.raises(JobFailed, match="no usable scans found"):
        run_ingest(spark, _cfg("lgg", tmp_path / "junk", tmp_path / "t"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_ingest(spark, _cfg("lgg", tmp_path / "missing", tmp_path / "t"))


def test_rerun_replaces_whole_and_incomplete_table_is_refused(spark, tmp_path):
    src = tmp_path / "data"
    synthetic.write_lgg(src, patients=3, seed=3, image_size=32, slices_per_patient=(4, 5), duplicate_copy=False)
    out = tmp_path / "table"
    first = run_ingest(spark, _cfg("lgg", src, out))
    victim = next((src / "kaggle_3m").iterdir())
    shutil.rmtree(victim)
    second = run_ingest(spark, _cfg("lgg", src, out))
    rows, _ = _rows(spark, out)
    assert len(rows) == second["scans"] < first["scans"]
    assert not rows.source_uri.str.contains(victim.name).any()
    (out / "summary.json").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        read_scan_table(spark, str(out))


def test_cli_ingest_with_file_uri(spark, tmp_path, capsys):
    src = tmp_path / "data"
    synthetic.write_folders(src, seed=4, images_per_class=4, classes=["yes", "no"])
    code = main(["ingest", "--dataset", "folders", "--input", src.as_uri(), "--output", (tmp_path / "t").as_uri(),
                 "--image-size", "32", "--split", "0.5,0.25,0.25", "--set", "spark.master=local[2]"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["scans"] == 8 and printed["per_split"] == {"train": 4, "val": 2, "test": 2}


def test_binaryfile_and_task_reads_write_the_same_table(spark, tmp_path):
    """ingest.read=binaryfile (Spark reads the bytes and writes the table) and the default (tasks read the
    files and write the table) give identical rows, pixels and splits."""
    synthetic.write_lgg(tmp_path / "data", patients=4, seed=9, image_size=40, slices_per_patient=(3, 5))
    tables = {}
    for mode in ("binaryfile", "tasks"):
        summary = run_ingest(spark, _cfg("lgg", tmp_path / "data", tmp_path / mode, f"ingest.read={mode}",
                                         "ingest.partitions=3"))
        rows, _ = _rows(spark, tmp_path / mode)
        tables[mode] = rows.sort_values("scan_id").reset_index(drop=True)
        assert summary["scans"] == len(rows) > 0
        assert not [p for p in (tmp_path / mode).iterdir() if p.name.startswith("_staging")]
    import pandas as pd

    pd.testing.assert_frame_equal(tables["binaryfile"], tables["tasks"])  # same columns, dtypes, values


def test_dotfiles_are_accounted_as_metadata(spark, tmp_path):
    synthetic.write_lgg(tmp_path / "data", patients=2, seed=4, image_size=32, slices_per_patient=(3, 3),
                        duplicate_copy=False)
    (tmp_path / "data" / ".DS_Store").write_bytes(b"\0Bud1")
    folder = next(p for p in (tmp_path / "data" / "kaggle_3m").iterdir() if p.is_dir())
    (folder / "._slice_1.tif").write_bytes(b"\0\5\26\7AppleDouble")
    summary = run_ingest(spark, _cfg("lgg", tmp_path / "data", tmp_path / "table"))
    errors = _errors(spark, tmp_path / "table")
    hidden = errors[errors.relpath.str.contains("/\\.|^\\.", regex=True)]
    assert sorted(hidden.reason) == ["metadata", "metadata"] and set(hidden.severity) == {"skipped"}
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert summary["files"]["listed"] == len(files)
    assert summary["scans"] + summary["files"]["masks"] + len(errors) == len(files)


def test_task_reads_and_table_writes_against_s3(s3, s3_cfg, tmp_path):
    """The S3 side of the task path on a real S3 server: decode tasks read s3:// objects (keys with spaces),
    stage pixels and write split folders to s3://; a missing object becomes an 'unreadable' row."""
    import io

    import pandas as pd
    import pyarrow.parquet as pq

    from classeg.ingest import decode, listing as listings, resolve, write
    from classeg.io.uri import join

    s3.create_bucket(Bucket="scans")
    truth = synthetic.write_lgg(tmp_path / "data", patients=2, seed=6, image_size=32, slices_per_patient=(3, 3),
                                duplicate_copy=False)
    local_root, paths = listings.list_local(str(tmp_path / "data"))
    for path in paths:
        key = "lgg set/" + listings.relative_path(path, local_root)
        s3.put_object(Bucket="scans", Key=key, Body=open(path[len("file:"):], "rb").read())
    patient = truth["slices"][0]["path"].split("/")[-2]
    missing = f"s3://scans/lgg set/kaggle_3m/{patient}/{patient}_999.tif"  # listed, then deleted
    listing = pd.DataFrame({"path": ["s3://scans/lgg set/" + listings.relative_path(p, local_root) for p in paths]
                            + [missing]})
    parsed = listings.parse_listing(listing, dataset="lgg", root="s3://scans/lgg set")
    to_decode, _ = listings.plan_files(parsed)
    decoded = decode.decode_frame(to_decode, dataset="lgg", image_size=16, read=decode.source_reader(s3_cfg))
    gone = decoded[decoded["path"] == missing]
    assert gone["reason"].tolist() == ["unreadable"] and "not_found" in gone["detail"].iloc[0]
    ok = decoded[decoded["reason"].isna()]
    assert len(ok) == 2 * len(truth["slices"])

    base = write.writable_base("s3://scans/tables/lgg/")
    staging, scans = join(base, "_staging-t"), join(base, "scans")
    write.write_staged(ok, staging=staging, partition=0, s3_cfg=s3_cfg)
    meta = ok.drop(columns=["image", "mask"])
    units = resolve.resolve(meta, dataset="lgg", fractions=[0.5, 0.25, 0.25], seed=1).units
    sizes = meta.loc[meta["kind"] == "image", ["path", "orig_height", "orig_width"]].rename(
        columns={"path": "image_path"})
    written = write.finalize_part(0, units.merge(sizes, on="image_path"),
                                  staging=staging, scans=scans, dataset="lgg", s3_cfg=s3_cfg)
    assert written == len(units) == len(truth["slices"])
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="scans", Prefix="tables/lgg/scans/")["Contents"])
    assert keys == sorted(f"tables/lgg/scans/split={split}/part-00000.parquet" for split in set(units["split"]))
    rows = sum(pq.read_table(io.BytesIO(s3.get_object(Bucket="scans", Key=key)["Body"].read())).num_rows
               for key in keys)
    assert rows == len(units)


def _s3_parquet(s3, bucket, keys):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) for key in keys]
    return pa.concat_tables(tables).to_pandas() if tables else None


def test_ingest_end_to_end_from_and_to_s3(spark, worker_env, s3, s3_cfg, tmp_path):
    """The whole job on local Spark with no Hadoop S3 filesystem on the classpath: an LGG dataset in a bucket
    (a prefix with a space, the nested duplicate copy) is listed with boto3, read by the tasks and written to
    s3:// (scans, errors, summary last, no staging left), giving the same table as the same files ingested from
    a local folder. A rerun replaces it whole."""
    bucket = "ingest-e2e"
    s3.create_bucket(Bucket=bucket)
    truth = synthetic.write_lgg(tmp_path / "data", patients=4, seed=8, image_size=40, slices_per_patient=(3, 4))
    files = sorted(p for p in (tmp_path / "data").rglob("*") if p.is_file())
    for path in files:
        s3.put_object(Bucket=bucket, Key="raw lgg/" + path.relative_to(tmp_path / "data").as_posix(),
                      Body=path.read_bytes())
    s3_set = [f"s3.{key}={value}" for key, value in s3_cfg.items()]
    summary = run_ingest(spark, _cfg("lgg", f"s3://{bucket}/raw lgg", f"s3://{bucket}/tables/lgg", *s3_set))
    local = run_ingest(spark, _cfg("lgg", tmp_path / "data", tmp_path / "table"))

    def keys():
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="tables/lgg/")
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    written = keys()
    assert not [key for key in written if "_staging-" in key or ".tmp" in key]
    stored = json.loads(s3.get_object(Bucket=bucket, Key="tables/lgg/summary.json")["Body"].read())
    assert stored == json.loads(json.dumps(summary)) and stored["status"] == "complete"
    assert summary["input"] == f"s3://{bucket}/raw lgg" and summary["files"]["listed"] == len(files)
    assert summary["scans"] == local["scans"] == len(truth["slices"])
    for field in ("per_split", "per_class", "patients", "skipped_by_reason", "errors_by_reason"):
        assert summary[field] == local[field], field

    scan_keys = [key for key in written if key.startswith("tables/lgg/scans/split=")]
    remote = _s3_parquet(s3, bucket, scan_keys).set_index("scan_id").sort_index()
    here, _ = _rows(spark, tmp_path / "table")
    here = here.set_index("scan_id").sort_index()
    assert list(remote.index) == list(here.index)
    for column in ("patient_id", "slice_index", "label", "has_tumor", "image", "mask"):
        assert remote[column].tolist() == here[column].tolist(), column
    split_of = {key.split("split=")[1].split("/")[0] for key in scan_keys}
    assert split_of == {s for s, n in local["per_split"].items() if n}
    assert all(uri.startswith(f"s3://{bucket}/raw lgg/kaggle_3m/") for uri in remote["source_uri"])
    errors = _s3_parquet(s3, bucket, ["tables/lgg/errors/part-00000.parquet"])
    assert sorted(errors["relpath"]) == sorted(_errors(spark, tmp_path / "table")["relpath"])
    assert len(errors) == summary["files"]["errors"] + summary["files"]["skipped"]

    again = run_ingest(spark, _cfg("lgg", f"s3://{bucket}/raw lgg", f"s3://{bucket}/tables/lgg", *s3_set))
    assert keys() == written and again["run_id"] != summary["run_id"]
    assert json.loads(s3.get_object(Bucket=bucket, Key="tables/lgg/summary.json")["Body"].read())["run_id"] == \
        again["run_id"]


def test_ingest_from_a_missing_s3_prefix_fails_clearly(spark, worker_env, s3, s3_cfg, tmp_path):
    s3.create_bucket(Bucket="ingest-empty")
    s3_set = [f"s3.{key}={value}" for key, value in s3_cfg.items()]
    with pytest.raises(ValueError, match=r"s3://ingest-empty/nothing here.*no objects"):
        run_ingest(spark, _cfg("lgg", "s3://ingest-empty/nothing here", tmp_path / "out", *s3_set))
