"""Real pools' pathologies on the synthetic family: each statistic measured, determinism, clean test splits, and a
noisy oracle through the ledger and the round loop."""

import numpy as np
import pytest

from datasets.registry import get_card, open_split
from datasets.sources.synthetic import SyntheticSource
from datasets.synthetic.pathologies import DUPLICATE, NORMAL, OUTLIER, Pathologies, look_alike_classes
from orchestrator.budget import BudgetLedger, PerRound
from orchestrator.loop import ActiveLearningRun, ledger_metrics
from tests.test_loop import _data

CLASSES = get_card("synth-scans").classes


def _source(split="train", n=100_000, seed=0, **pathologies):
    return SyntheticSource(CLASSES, split, "synth-scans", seed, sizes={split: n}, pathologies=pathologies)


def test_each_pathology_has_its_stated_statistic():
    pool = _source(imbalance_ratio=256, duplicate_fraction=0.1, outlier_fraction=0.2, label_noise=0.06)
    plan = pool.plan
    originals = plan.kind[plan.source] == NORMAL
    counts = np.bincount(pool.labels[originals], minlength=len(CLASSES))
    assert 256 / 1.5 < counts.max() / counts.min() < 256 * 1.5  # the long tail's imbalance ratio
    assert (plan.kind == DUPLICATE).mean() == pytest.approx(0.1, abs=0.01)
    assert (plan.kind[plan.source] == OUTLIER).mean() == pytest.approx(0.2 * 1.1, abs=0.01)
    assert (pool.oracle_labels != pool.labels).mean() == pytest.approx(0.06, abs=0.005)
    assert np.array_equal(pool.labels[plan.kind == DUPLICATE], pool.labels[plan.source[plan.kind == DUPLICATE]])


def test_the_test_split_stays_clean_and_balanced_and_clean_pools_are_unchanged():
    test = _source("test", n=1000, imbalance_ratio=256, outlier_fraction=0.2, label_noise=0.1)
    assert test.plan is None and np.bincount(test.labels).tolist() == [100] * 10
    plain = SyntheticSource(CLASSES, "train", "synth-scans", sizes={"train": 50})
    assert plain.plan is None and "pathologies" not in plain.identity()  # old cache keys stay valid
    assert np.array_equal(plain.oracle_labels, plain.labels)


def test_plans_and_pixels_are_deterministic_from_the_seed_for_any_index():
    a, b = (_source(n=400, duplicate_fraction=0.3, outlier_fraction=0.2) for _ in range(2))
    assert np.array_equal(a.plan.source, b.plan.source) and np.array_equal(a.labels, b.labels)
    rows = np.array([5, 77, 399, 123])
    together = a.render(rows)
    assert all(np.array_equal(together[k], b.render([r])[0]) for k, r in enumerate(rows))
    assert not np.array_equal(_source(n=400, seed=1, duplicate_fraction=0.3).plan.source, a.plan.source)


def test_near_duplicates_look_like_their_original_and_outliers_like_no_class():
    pool = _source(n=600, duplicate_fraction=0.3, outlier_fraction=0.1)
    dups = np.flatnonzero((pool.plan.kind == DUPLICATE) & (pool.plan.kind[pool.plan.source] == NORMAL))[:20]
    near = np.abs(pool.render(dups).astype(float) - pool.render(pool.plan.source[dups])).mean()
    other = np.abs(pool.render(dups).astype(float) - pool.render(dups[::-1])).mean()
    assert near < 0.6 * other
    outliers = np.flatnonzero(pool.plan.kind == OUTLIER)[:4]
    assert pool.render(outliers).shape == (4, 32, 32, 3)


def test_confusion_noise_answers_the_look_alike():
    pool = _source(n=20_000, label_noise=0.2, noise="confusion")
    wrong = pool.oracle_labels != pool.labels
    look = look_alike_classes("synth-scans")
    has = look[pool.labels[wrong]] >= 0
    assert has.any() and np.array_equal(pool.oracle_labels[wrong][has], look[pool.labels[wrong]][has])
    with pytest.raises(ValueError, match="imbalance_ratio"):
        Pathologies(imbalance_ratio=0.5)


def test_named_variants_resolve_to_their_pathologies():
    lt = open_split("synth-shapes-lt", "train")
    assert lt.pathologies.imbalance_ratio == 256 and open_split("synth-scans-noisy", "train").pathologies.label_noise
    assert get_card("synth-scans-wild").classes == get_card("synth-scans").classes


def test_a_noisy_oracle_is_recorded_in_the_ledger_and_the_round_metrics():
    ledger = BudgetLedger()
    ledger.query(np.array([1, 2, 3]), np.array([0, 1, 2]), truth=np.array([0, 2, 2]))
    assert ledger.targets[2] == 1 and ledger.oracle_errors == {2: 2}
    assert BudgetLedger.from_state(ledger.state()).oracle_errors == {2: 2}
    truth = np.zeros(10, np.int64)
    truth[[1, 2, 3]] = [0, 2, 2]
    assert ledger_metrics(ledger, truth)["oracle_noise"] == pytest.approx(1 / 3)

    data = _data()
    noisy = (np.asarray(data.pool_labels) + 1) % data.num_classes
    data.oracle_labels = np.where(np.arange(len(noisy)) % 2 == 0, noisy, data.pool_labels)
    run = ActiveLearningRun(("random", {}), ("linear_probe", {}), PerRound(count=10), 2, seed=0, data=data,
                            remote=False)
    state, metrics, queried = list(run.rounds())[-1]
    rows = np.asarray(state.ledger.order)
    assert np.array_equal(state.ledger.targets_of(rows), data.oracle_labels[rows])  # the oracle's answers
    assert metrics["oracle_noise"] == pytest.approx((rows % 2 == 0).mean())
    assert set(state.ledger.oracle_errors) == {int(r) for r in rows if r % 2 == 0}


def test_a_pathological_variant_runs_in_a_real_sweep_with_the_oracle_noise_in_mlflow(ray_cluster, tmp_path,
                                                                                     session_cache):
    from orchestrator.config import load_config
    from orchestrator.sweep import run_sweep
    from tests.test_sweep import _config, _trial_runs

    options = {"sizes": {"train": 200, "test": 60}, "pathologies": {"label_noise": 0.5, "outlier_fraction": 0.2}}
    path = _config(tmp_path, session_cache, name="wild", datasets=["synth-scans-noisy"], seeds=[0], rounds=2,
                   dataset_options={"synth-scans-noisy": options}, methods=["random+linear_probe"])
    config = load_config(path)
    assert not run_sweep(config).failed
    client, runs, _ = _trial_runs(config.tracking_uri, "wild")
    noise = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, "oracle_noise")}
    assert sorted(noise) == [1, 2] and all(0.2 < v < 0.8 for v in noise.values())
