"""Ingest: dataset files -> scan rows -> patient-level split -> Parquet scan table.

One module per stage, run in this order by :func:`classeg.ingest.job.run_ingest`:

- :mod:`~classeg.ingest.listing` (extract): a local or S3 dataset is listed on the driver, any other filesystem
  (hdfs://) by Spark's ``binaryFile`` file index; each file is classified from its path by the layout
  (:mod:`classeg.datasets`) and duplicate copies are dropped before any decoding.
- :mod:`~classeg.ingest.decode` (transform): the planned files are decoded in executors (decode, resize to the
  canonical size, PNG-encode); the tasks read local and S3 files themselves, binaryFile's ``content`` feeds
  them for other filesystems.
- :mod:`~classeg.ingest.resolve`: the layout pairs images with masks and labels them; groups (patients, or
  single scans) are dealt into splits (:mod:`classeg.split`).
- :mod:`~classeg.ingest.write` (load): the scan table partitioned by ``split`` (written by the tasks from
  staged pixels, or by Spark), the errors table and ``summary.json``, written last.
- :mod:`~classeg.ingest.table`: the output folder's contract and its readers (``read_scan_table``).

Every listed file ends in exactly one place: scan rows (as the image of one scan, or of one scan per slice for a
multi-frame DICOM or NIfTI volume, or as a mask) or an errors-table row (``severity`` 'error' for bad input,
'skipped' for duplicates, metadata, partners of failed files and files with nothing to ingest, such as DICOM
objects without pixel data).
"""
