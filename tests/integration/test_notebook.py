"""emr/notebooks/analysis.ipynb runs headless (nbclient, the venv's python3 kernel, local Spark) on a small scores
table written with pyarrow, prints the right counts and draws its figures."""
from __future__ import annotations

import io
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "emr" / "notebooks" / "analysis.ipynb"


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def square_mask(size: int, top: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[top:top + side, top:top + side] = 255
    return mask


def write_scores(root: Path, scans: Path) -> None:
    """Seven scored scans over two run dates: 3 tumour (one whose source file is gone), 2 healthy, 2 errors."""
    scans.mkdir()
    rng = np.random.default_rng(0)
    for name in ("t1.png", "t2.png", "n1.png", "n2.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(scans / name)
    masks = {"t1.png": square_mask(32, 4, 8), "t2.png": square_mask(32, 8, 16), "gone.png": square_mask(32, 0, 4)}
    scored_at = datetime(2024, 6, 2, 3, 0, tzinfo=timezone.utc)

    def row(name, status="ok", error=None, label=None, label_name=None, tumor=False, p=0.1, run_date="2024-06-01"):
        mask = masks.get(name)
        area = int((mask > 0).sum()) if mask is not None else None
        return {"source_uri": f"file://{scans / name}", "etag": f"etag-{name}", "status": status, "error": error,
                "label": label, "label_name": label_name,
                "probabilities": None if status != "ok" else [1 - p, p], "tumor_probability": None if status != "ok" else p,
                "tumor": None if status != "ok" else tumor, "mask": png(mask) if mask is not None else None,
                "mask_area_px": area, "mask_fraction": area / mask.size if mask is not None else None,
                "bbox": None, "classifier_id": "resnet18-test", "segmenter_id": "resunet-test",
                "scored_at": scored_at, "run_date": run_date}

    rows = [row("t1.png", label=1, label_name="tumor", tumor=True, p=0.97),
            row("t2.png", label=1, label_name="tumor", tumor=True, p=0.91),
            row("gone.png", label=1, label_name="tumor", tumor=True, p=0.88, run_date="2024-06-02"),
            row("n1.png", label=0, label_name="no_tumor", p=0.05),
            row("n2.png", label=0, label_name="no_tumor", p=0.12),
            row("bad.png", status="error", error="UnidentifiedImageError: cannot identify image file bad.png"),
            row("huge.tif", status="error", error="too_large: 80 MB exceeds score.max_object_mb=64",
                run_date="2024-06-02")]
    schema = pa.schema([
        ("source_uri", pa.string()), ("etag", pa.string()), ("status", pa.string()), ("error", pa.string()),
        ("label", pa.int32()), ("label_name", pa.string()), ("probabilities", pa.list_(pa.float32())),
        ("tumor_probability", pa.float32()), ("tumor", pa.bool_()), ("mask", pa.binary()),
        ("mask_area_px", pa.int64()), ("mask_fraction", pa.float32()), ("bbox", pa.list_(pa.int32())),
        ("classifier_id", pa.string()), ("segmenter_id", pa.string()), ("scored_at", pa.timestamp("us", "UTC")),
        ("run_date", pa.string())])
    pq.write_to_dataset(pa.Table.from_pylist(rows, schema=schema), root, partition_cols=["run_date"])
    (scans / "gone.png").unlink(missing_ok=True)
    # The series table beside the runs (classeg.scoring.series), which the scores reader must not pick up.
    series = root / "series" / "run_date=2024-06-01" / "run_id=r1"
    series.mkdir(parents=True)
    pq.write_table(pa.table({"series_key": ["1.2.826.0.1.3680043.2"], "modality": ["MR"], "slices_scored": [24],
                             "tumor_slices": [5], "max_tumor_probability": [0.97], "tumor_volume_mm3": [1234.5]}),
                   series / "part-0.parquet")


def outputs(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


@pytest.mark.timeout(600)
def test_analysis_notebook_runs_on_local_spark(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    scores, scans = tmp_path / "scores", tmp_path / "scans"
    write_scores(scores, scans)
    monkeypatch.setenv("CLASSEG_SCORES", str(scores))
    monkeypatch.setenv("CLASSEG_GALLERY_SIZE", "8")
    monkeypatch.setenv("CLASSEG_SPARK_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("CLASSEG_RUN_DATE", raising=False)
    # The "python3" kernel is this interpreter (the venv), whatever kernelspecs the machine has elsewhere.
    kernels = tmp_path / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (classeg venv)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert notebook.metadata.kernelspec.name == "pysparkkernel"  # opens with the PySpark kernel on EMR
    assert "parameters" in notebook.cells[1].metadata.get("tags", [])
    nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "".join(outputs(cell) for cell in notebook.cells)
    assert f"scans: 7 in {scores}" in text, text
    label_table = text.split("label counts\n", 1)[1].split("error counts", 1)[0]
    assert [line.split() for line in label_table.strip().splitlines()] == [
        ["status", "label_name", "count", "tumor"],
        ["ok", "no_tumor", "2", "0"],
        ["ok", "tumor", "3", "3"],
        ["error", "-", "2", "0"]], text
    error_table = text.split("error counts\n", 1)[1].splitlines()
    assert [line.split() for line in error_table[:3]] == [
        ["reason", "count"], ["UnidentifiedImageError", "1"], ["too_large", "1"]], text
    assert re.search(rf"{re.escape(str(scans / 'gone.png'))}: source unreadable \(FileNotFoundError", text)
    assert "series: 1\n" in text and "1.2.826.0.1.3680043.2" in text and "1234.5" in text, text
    assert "(none skipped)" in text

    images = [out for cell in notebook.cells for out in cell.get("outputs", [])
              if "image/png" in out.get("data", {})]
    assert len(images) == 2  # the tumour-fraction histogram and the gallery
    errors_in_cells = [out for cell in notebook.cells for out in cell.get("outputs", [])
                       if out.get("output_type") == "error"]
    assert errors_in_cells == []
