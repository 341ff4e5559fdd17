"""`classeg report` on a small but real work directory: a scan table ingested by the real job, real (untrained,
tiny) model artifacts with known recorded metrics, a synthetic archive with its saved truth, and a scores table
written in the scores schema with known outcomes. The page is opened in headless Chromium.

Expected numbers come from the fixtures (ingest summary, the metrics we record, the outcomes we plant), not
from the report."""
from __future__ import annotations

import datetime as dt
import html as htmllib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classeg import archive, imaging
from classeg.artifact import save_artifact
from classeg.cli import main
from classeg.config import load_config
from classeg import synthetic
from classeg.demo import save_archive_truth
from classeg.ingest.job import run_ingest
from classeg.scoring.table import SCORES_SCHEMA_DDL
from classeg.scoring.table import mark_run_complete
from classeg.scoring import run_path

SIZE = 32
RECORDED = {"accuracy": 0.875, "roc_auc": 0.91, "balanced_accuracy": 0.8, "loss": 0.35}
RECORDED_SEG = {"dice_tumour": 0.734, "dice": 0.81, "iou_tumour": 0.6}
BROKEN_ERRORS = {"corrupt.tif": "undecodable: corrupt.tif: TIFF structure is invalid",
                 "empty.png": "empty: empty.png: 0 bytes", "notes.txt": "unsupported: notes.txt: not an image",
                 "truncated.jpg": "truncated: truncated.jpg: image file is truncated"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _classifier_artifact(path: Path) -> None:
    from classeg.models.classifier import build_classifier

    model = build_classifier(arch="resnet18", num_classes=2, input_size=SIZE)
    history = [{"epoch": e, "train_loss": 0.7 - 0.1 * e, "val_loss": 0.75 - 0.08 * e,
                "val_accuracy": 0.5 + 0.1 * e} for e in (1, 2, 3)]
    save_artifact(str(path), model=model, task="classify", class_names=["no_tumor", "tumor"],
                  input_spec={"size": SIZE, "channels": 3, "mean": list(model.mean), "std": list(model.std),
                              "zscore": False},
                  history=history, metrics=RECORDED)


def _segmenter_artifact(path: Path) -> None:
    from classeg.models.resunet import build_resunet

    model = build_resunet(base_filters=4)
    history = [{"epoch": e, "train_loss": 0.9 - 0.1 * e, "val_dice": 0.3 + 0.1 * e} for e in (1, 2)]
    save_artifact(str(path), model=model, task="segment", class_names=["tumor"],
                  input_spec={"size": SIZE, "channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3, "zscore": True},
                  history=history, metrics=RECORDED_SEG)


def _scores_table(spark, scores: Path, archive_root: Path, truth: dict) -> dict:
    """Scores for every archive file, written where and how the scoring job writes them (a completed run and
    an incomplete one that must be ignored): the truth, except the first true-tumour scan is predicted no
    tumour; broken files are error rows. Returns the expected outcome counts."""
    objects = list(archive.list_archive(str(archive_root)))
    by_path = {s["path"]: s for s in truth["slices"]}
    flipped = next(s["path"] for s in truth["slices"] if s["has_tumor"])
    scored_at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    rows = []
    for obj in objects:
        row = {"source_uri": obj.uri, "key": obj.key, "etag": obj.etag, "size": obj.size,
               "mtime": dt.datetime.fromtimestamp(obj.mtime, dt.timezone.utc), "version": obj.version,
               "status": "ok", "error": None, "label": None, "label_name": None, "probabilities": None,
               "tumor_probability": None, "tumor": None, "mask": None, "mask_area_px": None, "mask_fraction": None,
               "bbox": None, "height": None, "width": None, "classifier_id": "classify-test",
               "segmenter_id": "segment-test", "scored_at": scored_at}
        if obj.key in BROKEN_ERRORS:
            row.update(status="error", error=BROKEN_ERRORS[obj.key])
        else:
            entry = by_path[obj.key]
            tumor = bool(entry["has_tumor"]) and obj.key != flipped
            mask = entry["mask"] if tumor else None
            row.update(label=int(tumor), label_name="tumor" if tumor else "no_tumor",
                       probabilities=[0.2, 0.8] if tumor else [0.9, 0.1], tumor_probability=0.8 if tumor else 0.1,
                       tumor=tumor, height=entry["height"], width=entry["width"],
                       mask=imaging.encode_png(mask) if tumor else None,
                       mask_area_px=int(mask.sum()) if tumor else None,
                       mask_fraction=float(mask.mean()) if tumor else None)
        rows.append(row)
    frame = spark.createDataFrame(rows, schema=SCORES_SCHEMA_DDL)
    frame.coalesce(1).write.parquet(run_path(str(scores), "2026-01-02", "run-1"))
    # A crashed later run: rows on disk, no marker. Readers must ignore it (it would flip every answer).
    crashed = [{**r, "status": "error", "error": "fetch_failed: S3 kept failing",
                "scored_at": scored_at + dt.timedelta(days=1)} for r in rows]
    spark.createDataFrame(crashed, schema=SCORES_SCHEMA_DDL).coalesce(1).write.parquet(
        run_path(str(scores), "2026-01-03", "run-2"))
    ok = [r for r in rows if r["status"] == "ok"]
    mark_run_complete(str(scores), run_date="2026-01-02", run_id="run-1",
                      summary={"listed": len(rows), "pending": len(rows), "scored": len(rows), "ok": len(ok),
                               "errors": len(rows) - len(ok), "rows_written": len(rows)})
    true_tumour = [s for s in truth["slices"] if s["has_tumor"]]
    return {"files": len(rows), "ok": len(ok), "errors": len(rows) - len(ok),
            "tumor": sum(1 for r in ok if r["tumor"]),
            "archive_accuracy": (len(ok) - 1) / len(ok),
            "archive_dice": (len(true_tumour) - 1) / len(true_tumour)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("report-work")
    synthetic.write_lgg(root / "data" / "lgg", patients=6, seed=3, image_size=48, slices_per_patient=(5, 7),
                        duplicate_copy=False)
    # A stray file the LGG layout does not know: an ingest error row with a reason.
    (root / "data" / "lgg" / "kaggle_3m" / "README.pdf").write_bytes(b"%PDF-1.4 not a scan")
    cfg = load_config(overrides=["ingest.dataset=lgg", f"ingest.input={root / 'data' / 'lgg'}",
                                 f"ingest.output={root / 'scans'}", f"ingest.image_size={SIZE}",
                                 "ingest.split=0.5,0.17,0.33", "ingest.max_error_rate=0.5", "spark.master=local[2]"])
    ingest = run_ingest(spark, cfg)
    _classifier_artifact(root / "models" / "classifier" / "run-a" / "artifact")
    _segmenter_artifact(root / "models" / "segmenter" / "artifact")
    truth = synthetic.write_archive(root / "data" / "archive", seed=2, count=8, image_size=40)
    save_archive_truth(truth, root / "data" / "archive_truth.json")
    expected = _scores_table(spark, root / "scores", root / "data" / "archive", truth)
    assert main(["report", "--workdir", str(root)]) == 0
    return root, ingest, expected


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", " ", page)))


def test_report_images_exist_and_decode(workdir):
    root, _, _ = workdir
    page = (root / "report" / "index.html").read_text(encoding="utf-8")
    sources = re.findall(r"<img src='([^']+)'", page)
    names = {Path(s).name for s in sources}
    assert {"dataset_counts.png", "classifier_curves.png", "confusion_matrix.png", "roc_curve.png",
            "segmenter_curves.png", "dice_distribution.png"} <= names
    gallery = [s for s in sources if s.startswith("gallery/")]
    assert len(gallery) >= 4
    for source in sources:
        assert not source.startswith(("/", "http", "file:")), source  # relative: the folder is self-contained
        with Image.open(root / "report" / source) as image:
            image.load()
            assert min(image.size) >= 100, (source, image.size)
            lo, hi = image.convert("L").getextrema()
            assert hi - lo > 50, f"{source} is nearly uniform"
    assert "<script" not in page.lower()


def test_report_states_key_numbers(workdir):
    root, ingest, expected = workdir
    text = _text((root / "report" / "index.html").read_text(encoding="utf-8"))
    summary = json.loads((root / "report" / "summary.json").read_text())
    keys = summary["key_numbers"]
    # Dataset counts from the ingest job's own summary.
    assert f"scans in the scan table {ingest['scans']}" in text
    assert f"patients {ingest['patients']['count']}" in text
    test_scans = ingest["per_split"]["test"]
    assert f"on {test_scans} test scans" in text
    assert f"test {test_scans}" in text and f"train {ingest['per_split']['train']}" in text
    # Recorded metrics of the artifacts.
    assert "classifier test accuracy 0.875" in text and "classifier test ROC AUC 0.910" in text
    assert "segmenter test Dice (tumour slices) 0.734" in text
    # Scoring outcomes planted in the scores table.
    assert f"{expected['files']} archive files scored" in text
    assert f"archive scans scored {expected['files']}" in text
    assert f"scored as tumour {expected['tumor']}" in text
    assert f"scoring errors {expected['errors']}" in text
    assert f"tumour/no-tumour accuracy {expected['archive_accuracy']:.3f}" in text
    assert keys["archive_accuracy"] == pytest.approx(expected["archive_accuracy"])
    assert keys["archive_dice"] == pytest.approx(expected["archive_dice"])
    assert f"true-tumour scans {expected['archive_dice']:.3f}" in text
    assert "Planted broken files: 4, of which 4 became error rows" in text
    # Errors by reason from both stages.
    for kind in ("undecodable", "empty", "unsupported", "truncated"):
        assert f"scoring error {kind} 1" in text
    ingest_reasons = ingest["errors_by_reason"]
    assert ingest_reasons, "the stray README.pdf should be an ingest error"
    for reason, count in ingest_reasons.items():
        assert f"ingest error {reason} {count}" in text
    assert summary["sections"] == {"dataset": "ok", "classifier": "ok", "segmenter": "ok", "scoring": "ok",
                                   "errors": "ok"}


def test_report_recomputed_metrics_are_consistent(workdir):
    """The confusion matrix table, per-class supports and the test split all describe the same scans."""
    root, ingest, _ = workdir
    summary = json.loads((root / "report" / "summary.json").read_text())
    keys = summary["key_numbers"]
    assert keys["classifier_test_scans"] == ingest["per_split"]["test"]
    per_class = ingest["per_class"]
    assert keys["segmenter_test_scans"] == per_class["tumor"]["test"]
    assert 0.0 <= keys["classifier_accuracy_recomputed"] <= 1.0
    assert 0.0 <= keys["segmenter_dice_recomputed"] <= 1.0
    text = _text((root / "report" / "index.html").read_text(encoding="utf-8"))
    for name in ("no_tumor", "tumor"):
        assert re.search(rf"{name} (\S+ ){{5}}{per_class[name]['test']} ", text), name


def test_report_rebuild_replaces_old_figures(workdir, tmp_path):
    root, _, _ = workdir
    out = tmp_path / "elsewhere"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    assert main(["report", "--workdir", str(root), "--output", str(out)]) == 0
    assert not (out / "stale.png").exists()
    assert (out / "index.html").is_file() and (out / "confusion_matrix.png").is_file()


def test_report_on_empty_workdir_says_what_is_missing(tmp_path):
    assert main(["report", "--workdir", str(tmp_path)]) == 0
    text = _text((tmp_path / "report" / "index.html").read_text(encoding="utf-8"))
    assert "the ingest stage has not run" in text and "the archive has not been scored" in text


def test_report_missing_workdir_is_an_error(tmp_path):
    assert main(["report", "--workdir", str(tmp_path / "absent")]) == 1


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium; `make setup`)")
def test_report_renders_in_chromium(workdir, tmp_path):
    root, ingest, _ = workdir
    index = root / "report" / "index.html"
    shot = tmp_path / "shot.png"
    run = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          f"--screenshot={shot}", "--window-size=1280,2400", index.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 20, "screenshot is (nearly) blank"
    assert (pixels < 128).mean() > 0.01, "screenshot has almost no dark content"
    # Every <img> as Chromium sees it after loading: a probe page (our own, not the report, which has no
    # JavaScript) lists each image's natural size.
    page = index.read_text(encoding="utf-8")
    sources = re.findall(r"<img src='([^']+)'", page)
    probe = tmp_path / "probe.html"
    images = "".join(f"<img src='{(root / 'report' / s).as_uri()}'>" for s in sources)
    probe.write_text(
        f"<html><body>{images}<script>window.addEventListener('load', function () {{"
        "document.body.setAttribute('data-sizes', Array.from(document.images).map("
        "function (i) { return i.naturalWidth + 'x' + i.naturalHeight; }).join(' ')); });</script></body></html>")
    run = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                          "--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'data-sizes="([^"]*)"', run.stdout)
    assert match, run.stdout[-2000:] + run.stderr[-2000:]
    sizes = match.group(1).split()
    assert len(sizes) == len(sources)
    for source, size in zip(sources, sizes):
        width, height = map(int, size.split("x"))
        assert width >= 100 and height >= 100, (source, size)
    # The DOM Chromium built from the report carries the key numbers as text.
    run = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile3'}", "--dump-dom",
                          index.as_uri()], capture_output=True, text=True, timeout=120)
    assert f"scans in the scan table {ingest['scans']}" in _text(run.stdout)


def test_report_reads_the_scores_the_scoring_reader_reads(workdir, spark):
    """Only completed runs count, newest row per file: the same rows as classeg.scoring.read_scores."""
    from classeg.scoring import read_scores

    root, _, expected = workdir
    rows = read_scores(spark, str(root / "scores"), latest=True).select("status").toPandas()
    keys = json.loads((root / "report" / "summary.json").read_text())["key_numbers"]
    assert len(rows) == keys["archive_scored"] == expected["files"]
    assert int((rows["status"] == "error").sum()) == keys["scoring_errors"] == expected["errors"]
