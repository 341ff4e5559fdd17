"""The pipeline report: ``<workdir>/report/index.html`` plus PNG figures beside it, from a work directory's
outputs (scan table, model artifacts, scores table, and the archive's ground truth when it is known).

The page is self-contained: plain HTML and CSS, images as relative PNG files, no JavaScript, every key number
(counts, accuracy, AUC, Dice, error counts) written as text. ``summary.json`` beside it holds the same key
numbers for machines.

Where the inputs are: ``<workdir>/pipeline.json`` (written by ``classeg demo``) maps stage names to locations
(``scans``, ``classifier``, ``segmenter``, ``scores``, ``archive_truth``, ``evaluation``); without it, or for
stages it does not name, the conventional places are used: ``scans/``, ``models/classifier``,
``models/segmenter``, ``scores/``, ``data/archive_truth.json`` and ``evaluation/`` (a ``classeg evaluate
--classifier --segmenter`` output: its ``classseg_metrics.json`` and ``classseg_slices/``). A model location
may be the artifact itself (a folder with ``model.json``) or a training output folder holding one somewhere
below it (the newest is used). Missing inputs make their sections say "not available" and why; the report
never fails because a stage has not run.

Figures for the models are recomputed here from the test split of the scan table (at most
``max_eval_scans`` scans, in scan-table order), so the confusion matrix, ROC curve, per-class table and Dice
distribution always agree with each other; the metrics recorded in ``model.json`` at training time are shown
beside them. Segmentation Dice is per image at the model's input size, on test slices whose ground truth has
tumour (the "tumour-only" Dice of the Class-Seg literature; see :mod:`classeg.metrics`).

Local work directories only (the report reads files directly); tables are read with pyarrow, not Spark,
selecting only the columns needed.

Modules: ``sources`` (where the inputs are), ``loading`` (reading them), ``evaluation`` (the test-split
recomputation), one module per section (``dataset``, ``classifier`` with ``operating_point``, ``segmenter``,
``classseg`` (the end-to-end evaluation), ``scoring``, ``errors``, ``pipeline``), ``markup`` (HTML pieces)
and ``page`` (assembly). A section is a :class:`~classeg.report.section.Section` listed in ``page.SECTIONS``.
Figures come from :mod:`classeg.plots`, which training's figures use too.
"""
from classeg.report.page import build_report
from classeg.report.sources import Sources, find_artifact, locate

__all__ = ["Sources", "build_report", "find_artifact", "locate"]
