"""A small synthetic LGG scan table for the training tests: ``classeg.synthetic.write_lgg`` under ``root/data``,
ingested on local[2] into ``root/table`` with a 0.5/0.25/0.25 patient-level split."""
from __future__ import annotations

from pathlib import Path


def small_lgg_table(spark, root: Path, *, patients: int, seed: int, image_size: int,
                    slices_per_patient: tuple[int, int]) -> Path:
    """Write and ingest the table (half the patients with a tumour, no duplicate copies); returns its folder."""
    from classeg import synthetic
    from classeg.config import load_config
    from classeg.ingest.job import run_ingest

    synthetic.write_lgg(root / "data", patients=patients, seed=seed, image_size=image_size,
                        slices_per_patient=slices_per_patient, tumor_fraction=0.5, duplicate_copy=False)
    run_ingest(spark, load_config(overrides=[
        "ingest.dataset=lgg", f"ingest.input={root / 'data'}", f"ingest.output={root / 'table'}",
        f"ingest.image_size={image_size}", "ingest.split=[0.5, 0.25, 0.25]", "spark.master=local[2]"]))
    return root / "table"
