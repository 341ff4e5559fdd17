"""classeg score's tumour threshold: the classifier's validated operating point unless the user gives one."""
from __future__ import annotations

import pytest

from classeg.config import load_config
from classeg.scoring import ScoreJob
from scoring_models import save_classifier


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    from classeg.models import build_classifier

    root = tmp_path_factory.mktemp("threshold-models")
    model = build_classifier(arch="resnet18", num_classes=2, input_size=32)
    point = {"threshold": 0.3125, "sensitivity": 0.96, "specificity": 0.8, "target_sensitivity": 0.95,
             "split": "val"}
    save_classifier(root / "with-point", model, ["no_tumour", "tumour"], extra={"operating_point": point})
    save_classifier(root / "without", model, ["no_tumour", "tumour"],
                    extra={"operating_point": None, "operating_point_reason": "no tumour-free validation scans"})
    return root


@pytest.mark.parametrize("name, flag, threshold, source", [
    ("with-point", None, 0.3125, "model.json operating_point, chosen on the val split"),
    ("with-point", 0.7, 0.7, "--tumor-threshold"),
    ("without", None, 0.5, "default 0.5 (no tumour-free validation scans)"),
])
def test_score_uses_the_operating_point_unless_told(classifiers, tmp_path, name, flag, threshold, source):
    overrides = [f"score.archive={tmp_path}", f"score.output={tmp_path / 'out'}",
                 f"score.classifier={classifiers / name}"]
    if flag is not None:
        overrides.append(f"score.tumor_threshold={flag}")
    job = ScoreJob.from_config(load_config(overrides=overrides))
    assert job.settings.tumor_threshold == threshold
    assert job.tumor_threshold_source == source
    # The vocabulary maps no_tumour/tumour: only the tumour class is segmented.
    assert job.settings.tumor_classes == ()


def test_a_bad_threshold_is_refused(tmp_path):
    from classeg.errors import ConfigError

    with pytest.raises(ConfigError, match="score.tumor_threshold expects a number or null, got 'abc'"):
        load_config(overrides=["score.tumor_threshold=abc"])
