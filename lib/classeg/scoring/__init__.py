"""Bulk Class-Seg scoring of scan archives.

- :mod:`classeg.scoring.job`: :class:`ScoreJob` (list, plan what is new, run the tasks, check, record).
- :mod:`classeg.scoring.predictor`: :class:`ClassSegPredictor` (classify a batch, segment its tumours) and
  :class:`ScoreSettings` (what a task needs), the tumour-class and tumour-threshold rules.
- :mod:`classeg.scoring.udf`: the ``mapInPandas`` function and its plain-pandas core :func:`score_frame`.
- :mod:`classeg.scoring.table`: the scores table's schema and layout, the manifest, run markers and the one
  reader :func:`read_scores`.
"""
from classeg.scoring.job import ScoreJob, run_score
from classeg.scoring.predictor import ClassSegPredictor, Prediction, ScoreSettings, resolve_tumor_classes
from classeg.scoring.table import SCORES_SCHEMA_DDL, Manifest, completed_runs, mark_run_complete, read_scores, run_path
from classeg.scoring.udf import score_frame, score_partition

__all__ = ["ClassSegPredictor", "Manifest", "Prediction", "SCORES_SCHEMA_DDL", "ScoreJob", "ScoreSettings",
           "completed_runs", "mark_run_complete", "read_scores", "resolve_tumor_classes", "run_path", "run_score",
           "score_frame", "score_partition"]
