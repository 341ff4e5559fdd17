"""Patient identifiers in DICOM headers and in object keys, through `classeg ingest` (folders layout), `classeg
score` and `classeg report`, each run as the user runs it: the CLI in its own process (local[2]), its stdout and
stderr captured, Spark's event log written to a folder. Then every output file (Parquet decoded, JSON, HTML) and
every log is searched:

* the header identifiers (patient name and its words, IDs, birth date, accession number, institution, referring
  physician, study date, ...) must be nowhere;
* the key identifiers (the folders ``DOE_JANE/MRN12345/``) must be in no log and no message, and only in the
  columns that name the object (``source_uri``, ``key``, ``relpath``, ...).

The archive holds a truncated DICOM and a broken symlink under those folders, so that error rows, the ingest
summary and a listing warning name them: each must show the object's ``key#<hash>`` label (computed here with
hashlib), which is where the key would be without redaction (with ``--no-redact-keys`` these texts hold
``DOE_JANE/MRN12345/...`` and the key search fails).
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file

from scoring_models import trained_models

HEADER = {"PatientName": "QUIXOTE^ALONSO^Q", "PatientID": "PID-77031", "PatientBirthDate": "19470315",
          "OtherPatientIDs": "OPID-55210", "AccessionNumber": "ACC908172", "InstitutionName": "Saint Elsewhere General",
          "ReferringPhysicianName": "KILDARE^JAMES", "StudyID": "STU4471", "StudyDate": "20190823",
          "PatientAddress": "12 Rocinante Lane", "OperatorsName": "PANZA^SANCHO"}
# The one free-text attribute a row carries, holding the patient's name the way operators type it.
DESCRIPTION = "AX T2 Alonso Quixote"
HEADER_NEEDLES = sorted({*HEADER.values(), *(word for name in ("QUIXOTE^ALONSO^Q", "KILDARE^JAMES", "PANZA^SANCHO")
                                             for word in name.split("^") if len(word) > 2),
                         "Rocinante", "Elsewhere"}, key=str.lower)
KEY_NEEDLES = ("DOE_JANE", "MRN12345")
PATIENT = "DOE_JANE/MRN12345"
TRUNCATED = f"{PATIENT}/glioma/ax_t2_cut.dcm"
GONE = f"{PATIENT}/glioma/ax_t2_gone.dcm"
# Columns and JSON fields naming the object: the only places a key may appear.
URI_COLUMNS = {"source_uri", "mask_source_uri", "uri", "key", "relpath", "series_key"}
SECRET = "identifiers-test-secret"


def _label(key: str) -> str:
    """The label classeg.redact documents: key# + 8 hex digits of SHA-256 of the key below the root + extension."""
    return "key#" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:8] + ".dcm"


def _dicom(instance: int) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for keyword, value in HEADER.items():
        setattr(ds, keyword, value)
    ds.SeriesDescription = DESCRIPTION
    ds.InstanceNumber = instance
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{1000 + instance}"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _archive(root: Path) -> Path:
    archive = root / "archive"
    for index in range(10):
        folder = archive / PATIENT / ("glioma" if index % 2 else "notumor")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"ax_t2_{index:02d}.dcm").write_bytes(_dicom(index + 1))
    whole = _dicom(99)
    (archive / TRUNCATED).write_bytes(whole[: len(whole) * 2 // 3])  # cut inside the pixel data
    os.symlink(archive / "no-such-file.dcm", archive / GONE)
    return archive


def _cli(*argv: str, logs: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    spark = ["--set", "spark.master=local[2]", "--set", "spark.shuffle_partitions=4",
             "--set", "spark.extra.spark.eventLog.enabled=true", "--set", f"spark.extra.spark.eventLog.dir={logs}"]
    result = subprocess.run([sys.executable, "-m", "classeg.cli", *argv, *(spark if argv[0] != "report" else [])],
                            capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    models = trained_models(tmp_path_factory)
    root = tmp_path_factory.mktemp("identifiers")
    archive, work, logs = _archive(root), root / "work", root / "spark-events"
    logs.mkdir()
    ingest = _cli("ingest", "--dataset", "folders", "--input", str(archive), "--output", str(work / "scans"),
                  "--image-size", "64", "--max-error-rate", "0.5", logs=logs)
    score = _cli("score", "--archive", str(archive), "--classifier", models["classifier"], "--segmenter",
                 models["segmenter"], "--output", str(work / "scores"), "--max-error-rate", "0.5", "--batch-size", "8",
                 logs=logs, env={"CLASSEG_PATIENT_KEY_SECRET": SECRET})
    report = _cli("report", "--workdir", str(work), logs=logs)
    captured = {f"{name} {stream}": getattr(result, stream) for name, result in
                (("ingest", ingest), ("score", score), ("report", report)) for stream in ("stdout", "stderr")}
    captured.update({str(path): path.read_text(errors="replace") for path in logs.rglob("*") if path.is_file()})
    return {"archive": archive, "work": work, "logs": captured}


def _json_texts(value, field: str | None = None):
    """(field, text) of every string in a JSON document."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _json_texts(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from _json_texts(item, field)
    elif value is not None:
        yield field, str(value)


def _outputs(work: Path) -> list[tuple[str, str | None, str]]:
    """(file, column or field or None, text) for every output file: Parquet per column (and its raw bytes),
    JSON per field, other text files whole; PNGs and checksums are pixels and hashes, not text."""
    found = []
    for path in sorted(p for p in work.rglob("*") if p.is_file()):
        if path.suffix in (".png", ".crc") or path.name.startswith("."):
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            found += [(str(path), name, table.column(name).to_pandas().to_string()) for name in table.column_names]
            found.append((str(path), None, path.read_bytes().decode("latin-1")))
        elif path.suffix == ".json":
            found += [(str(path), field, text) for field, text in _json_texts(json.loads(path.read_text()))]
        else:
            found.append((str(path), None, path.read_text(errors="replace")))
    return found


def _scores(work: Path):
    files = sorted((work / "scores").glob("run_date=*/run_id=*/*.parquet"))
    return pq.ParquetDataset(files).read().to_pandas()


def test_outputs_were_written_and_searched(run):
    files = {Path(name).parts[-2] + "/" + Path(name).name for name, _, _ in _outputs(run["work"])}
    assert any(name.endswith("index.html") for name in files)
    kinds = {Path(name).suffix for name, _, _ in _outputs(run["work"])}
    assert {".parquet", ".json", ".html"} <= kinds
    assert any("eventLog" in text or "SparkListener" in text for text in run["logs"].values())


def test_header_identifiers_are_nowhere(run):
    texts = [(name, text) for name, text in run["logs"].items()]
    texts += [(f"{name} [{column}]", text) for name, column, text in _outputs(run["work"])]
    for needle in HEADER_NEEDLES:
        leaks = [name for name, text in texts if needle.lower() in text.lower()]
        assert not leaks, (needle, leaks)


def test_key_identifiers_only_in_the_columns_that_name_objects(run):
    outputs = _outputs(run["work"])
    for needle in KEY_NEEDLES:
        leaks = [name for name, text in run["logs"].items() if needle in text]
        leaks += [f"{name} [{column}]" for name, column, text in outputs
                  if needle in text and column not in URI_COLUMNS and not (column is None and name.endswith(".parquet"))]
        assert not leaks, (needle, leaks)
        assert any(needle in text for _, column, text in outputs if column in URI_COLUMNS)


def test_messages_name_objects_by_their_labels(run):
    scores = _scores(run["work"])
    cut = scores[scores["key"] == TRUNCATED]
    assert cut["status"].tolist() == ["error"]
    assert cut["error"].iloc[0].startswith(f"truncated: {_label(TRUNCATED)}: "), cut["error"].iloc[0]
    errors = pq.read_table(run["work"] / "scans" / "errors").to_pandas().set_index("relpath")
    assert errors.loc[TRUNCATED, "detail"].startswith(f"{_label(TRUNCATED)}: "), errors.loc[TRUNCATED, "detail"]
    assert errors.loc[GONE, "reason"] == "unreadable" and _label(GONE) in errors.loc[GONE, "detail"]
    summary = json.loads((run["work"] / "scans" / "summary.json").read_text())
    assert {e["relpath"]: _label(e["relpath"]) in e["detail"] for e in summary["errors"]} == {TRUNCATED: True,
                                                                                            GONE: True}
    # The broken symlink is skipped by the score run's listing (in Spark tasks since issue 16): no row, no error.
    assert GONE not in set(_scores(run["work"])["key"])


def test_rows_keep_what_the_contract_needs(run):
    scores = _scores(run["work"])
    ok = scores[scores["status"] == "ok"]
    assert len(ok) == 10 and ok["source_uri"].str.contains(PATIENT).all()
    assert set(ok["series_description"]) == {"AX T2 <removed> <removed>"}
    expected = hmac.new(SECRET.encode(), HEADER["PatientID"].encode(), hashlib.sha256).hexdigest()
    assert set(ok["patient_key"]) == {expected}
