"""`spark-submit jobs/ingest.py` runs the same job with the same flags as `classeg ingest`."""
import json
import os
import subprocess
import sys
from pathlib import Path

from classeg import synthetic

ROOT = Path(__file__).resolve().parents[2]


def test_spark_submit_ingest(tmp_path):
    src = tmp_path / "data"
    truth = synthetic.write_folders(src, seed=2, images_per_class=3, classes=["glioma", "notumor"])
    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT / "lib")}
    result = subprocess.run(
        [str(spark_submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false", str(ROOT / "jobs/ingest.py"),
         "--dataset", "folders", "--input", str(src), "--output", str(tmp_path / "table"), "--image-size", "32"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "table" / "summary.json").read_text())
    assert summary["scans"] == len(truth["slices"]) == 6
    assert summary["class_names"] == ["glioma", "notumor"]
    bad = subprocess.run([str(spark_submit), "--master", "local[1]", str(ROOT / "jobs/ingest.py"), "--dataset",
                          "lgg", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "t2")],
                         capture_output=True, text=True, env=env, timeout=300)
    # spark-submit runs the Python driver with its stderr merged into stdout
    assert bad.returncode == 1 and "does not exist" in bad.stdout + bad.stderr
