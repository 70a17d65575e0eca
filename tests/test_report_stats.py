"""AULC, labels-to-target and the paired tests against direct computations (scipy, numpy by hand)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from orchestrator.reporting.stats import aulc, labels_saved, labels_to_reach, paired_test, shared_range


def test_aulc_is_the_trapezoid_area_over_the_width():
    x, y = [0, 10, 20, 40], [50.0, 60.0, 64.0, 70.0]
    by_hand = ((50 + 60) / 2 * 10 + (60 + 64) / 2 * 10 + (64 + 70) / 2 * 20) / 40
    assert math.isclose(aulc(x, y), by_hand)


def test_aulc_on_a_shared_range_interpolates_the_longer_curve():
    long, short = (np.array([0, 10, 20, 40]), np.array([50.0, 60.0, 64.0, 70.0])), (np.array([0, 10, 20]),
                                                                                     np.array([50.0, 62.0, 66.0]))
    start, end = shared_range([long, short])
    assert (start, end) == (0.0, 20.0)
    assert math.isclose(aulc(*long, start, end), ((50 + 60) / 2 * 10 + (60 + 64) / 2 * 10) / 20)
    assert aulc(*short, start, end) > aulc(*long, start, end)


def test_labels_to_reach_interpolates_and_says_when_never():
    assert labels_to_reach([0, 10, 20], [40.0, 50.0, 70.0], 60.0) == 15.0
    assert labels_to_reach([0, 10], [40.0, 50.0], 40.0) == 0.0
    assert math.isnan(labels_to_reach([0, 10], [40.0, 50.0], 51.0))


def test_labels_saved_at_the_baselines_final_score():
    need, base, saved = labels_saved([0, 8, 16], [40.0, 60.0, 70.0], [0, 10, 20], [40.0, 55.0, 60.0])
    assert (need, base) == (8.0, 20.0) and math.isclose(saved, 0.6)


def test_paired_test_matches_scipy_and_refuses_too_few_pairs():
    a = pd.Series([61.0, 63.5, 60.2, 64.1, 62.0], index=[0, 1, 2, 3, 4])
    b = pd.Series([58.0, 61.0, 60.9, 60.0, 59.5, 99.0], index=[0, 1, 2, 3, 4, 5])  # seed 5 has no pair
    out = paired_test(a, b)
    assert out["pairs"] == 5
    assert math.isclose(out["p_wilcoxon"], stats.wilcoxon(a, b.iloc[:5]).pvalue)
    assert math.isclose(out["p_t"], stats.ttest_rel(a, b.iloc[:5]).pvalue)
    few = paired_test(a.iloc[:2], b.iloc[:2])
    assert few["pairs"] == 2 and math.isnan(few["p_wilcoxon"]) and "no test" in few["note"]
    assert paired_test(a, a)["p_wilcoxon"] == 1.0


def test_the_sweeps_experiment_opens_on_the_runs_table(tmp_path):
    """MLflow 3 shows an untagged experiment as GenAI traces; the tracker tags it for model training."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import EXPERIMENT_KIND, MODEL_TRAINING, TrialTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    TrialTracker(uri, "kind-test")
    exp = MlflowClient(uri).get_experiment_by_name("kind-test")
    assert exp.tags[EXPERIMENT_KIND] == MODEL_TRAINING
