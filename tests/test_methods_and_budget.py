"""Plug-in registry, the first strategies and learners, and budget schedules (no Ray needed)."""

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from methods.base import AdaptContext, SelectionContext, TrainSet
from methods.registry import ACQUISITIONS, ADAPTATIONS
from orchestrator.budget import BudgetError, BudgetLedger, BudgetSchedule
from orchestrator.zeroshot import zero_shot_probs


def _ctx(probs, labelled=()):
    n = len(probs)
    labelled = np.asarray(labelled, dtype=np.int64)
    mask = np.ones(n, bool)
    mask[labelled] = False
    return SelectionContext(round=1, num_classes=probs.shape[1], unlabelled=np.flatnonzero(mask),
                            labelled=labelled, labelled_targets=np.zeros(len(labelled), np.int64), probs=probs)


PROBS = np.array([[0.98, 0.01, 0.01],   # confident
                  [0.34, 0.33, 0.33],   # maximal entropy
                  [0.50, 0.495, 0.005],  # smallest margin
                  [0.40, 0.30, 0.30],   # low confidence
                  [0.90, 0.05, 0.05]])


@pytest.mark.parametrize("name, expected", [
    ("entropy", [1, 3]), ("margin", [2, 1]), ("least_confidence", [1, 3]),
])
def test_uncertainty_strategies_rank_as_defined(name, expected):
    sel = ACQUISITIONS.create(name).select(_ctx(PROBS), 2, np.random.default_rng(0))
    assert sel.indices.tolist() == expected


def test_uncertainty_never_picks_labelled_rows():
    sel = ACQUISITIONS.create("entropy").select(_ctx(PROBS, labelled=[1]), 2, np.random.default_rng(0))
    assert 1 not in sel.indices.tolist() and len(sel.indices) == 2


def test_random_is_seeded_and_without_replacement():
    ctx = _ctx(np.full((50, 2), 0.5))
    a = ACQUISITIONS.create("random").select(ctx, 10, np.random.default_rng(3)).indices
    b = ACQUISITIONS.create("random").select(ctx, 10, np.random.default_rng(3)).indices
    c = ACQUISITIONS.create("random").select(ctx, 10, np.random.default_rng(4)).indices
    assert np.array_equal(a, b) and not np.array_equal(a, c) and len(set(a.tolist())) == 10


def test_unknown_names_and_options_are_explained():
    with pytest.raises(KeyError, match="did you mean 'entropy'.*known: .*margin"):
        ACQUISITIONS.get("entropi")
    with pytest.raises(ValueError, match="unknown option.*'epoch'.*did you mean 'epochs'"):
        ADAPTATIONS.create("linear_probe", epoch=3)
    with pytest.raises(ValueError, match="init must be"):
        ADAPTATIONS.create("linear_probe", init="random")


def _blobs(rng, n_per=30, classes=3, dim=8):
    centres = np.eye(classes, dim) * 3
    x = np.concatenate([centres[c] + rng.normal(0, 0.3, (n_per, dim)) for c in range(classes)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(classes), n_per)


def test_zero_shot_learner_equals_template_ensemble_probs():
    rng = np.random.default_rng(0)
    x, _ = _blobs(rng)
    text = np.eye(3, 8, dtype=np.float32)
    pred = ADAPTATIONS.create("zeroshot").fit(TrainSet(x[:0], np.zeros(0, int), np.zeros(0, bool)),
                                              AdaptContext(3, 0, text), rng)
    assert np.allclose(pred.predict_proba(x), zero_shot_probs(x, text), atol=1e-5)


def test_linear_probe_learns_and_is_deterministic():
    rng = np.random.default_rng(0)
    x, y = _blobs(rng)
    wrong_text = np.roll(np.eye(3, 8, dtype=np.float32), 1, axis=0)  # zero-shot is systematically wrong
    ctx = AdaptContext(3, 1, wrong_text)
    train = TrainSet(x[::3], y[::3], np.zeros(len(y[::3]), bool))
    import torch

    torch.manual_seed(0)
    p1 = ADAPTATIONS.create("linear_probe").fit(train, ctx, np.random.default_rng(1))
    torch.manual_seed(0)
    p2 = ADAPTATIONS.create("linear_probe").fit(train, ctx, np.random.default_rng(1))
    assert (p1.predict_proba(x).argmax(1) == y).mean() > 0.95
    assert np.array_equal(p1.state()["weight"], p2.state()["weight"])
    zero_label = ADAPTATIONS.create("linear_probe").fit(TrainSet(x[:0], y[:0], np.zeros(0, bool)), ctx, rng)
    assert np.allclose(zero_label.predict_proba(x), zero_shot_probs(x, wrong_text), atol=1e-5)


SCHEDULES = TypeAdapter(BudgetSchedule)


@pytest.mark.parametrize("spec, expected", [
    ({"kind": "per_round", "count": 7}, [7, 7, 7]),
    ({"kind": "fraction", "fraction": 0.01}, [10, 10, 10]),
    ({"kind": "per_class", "multiple": 2}, [20, 20, 20]),
    ({"kind": "shots", "shots": [1, 2, 4]}, [10, 10, 20]),
    ({"kind": "cumulative", "targets": [0.1, 0.2, 0.5]}, [100, 100, 300]),
])
def test_budget_schedules_resolve_to_increments(spec, expected):
    assert SCHEDULES.validate_python(spec).resolve(pool_size=1000, num_classes=10, rounds=3) == expected


def test_bad_budgets_are_clear_errors():
    with pytest.raises(ValidationError):
        SCHEDULES.validate_python({"kind": "per_round", "count": 0})
    with pytest.raises(ValidationError):
        SCHEDULES.validate_python({"kind": "per_round", "count": -3})
    with pytest.raises(ValidationError):
        SCHEDULES.validate_python({"kind": "shots", "shots": [2, 1]})
    with pytest.raises(BudgetError, match="pool has only 100 images"):
        SCHEDULES.validate_python({"kind": "per_round", "count": 40}).resolve(100, 10, 3)
    with pytest.raises(BudgetError, match="pool is empty"):
        SCHEDULES.validate_python({"kind": "per_round", "count": 1}).resolve(0, 10, 3)


def test_ledger_separates_queried_and_pseudo_labels():
    ledger = BudgetLedger()
    ledger.query(np.array([4, 2]), np.array([1, 0]))
    ledger.add_pseudo({7: 2})
    rows, targets, pseudo = ledger.arrays()
    assert rows.tolist() == [4, 2, 7] and targets.tolist() == [1, 0, 2] and pseudo.tolist() == [False, False, True]
    assert ledger.spent == 2
    with pytest.raises(ValueError, match="already labelled"):
        ledger.query(np.array([7]), np.array([0]))
    assert BudgetLedger.from_state(ledger.state()).arrays()[0].tolist() == [4, 2, 7]


def test_trial_hash_covers_resolved_plugin_defaults(tmp_path):
    from orchestrator.config import SweepConfig

    base = dict(datasets=["synth-shapes"], budgets={"b": {"kind": "per_round", "count": 5}}, workdir=str(tmp_path))
    implicit = SweepConfig(methods=["random+linear_probe"], **base).trials()[0]
    explicit = SweepConfig(methods=[{"acquisition": "random", "adaptation": "linear_probe",
                                     "adaptation_options": {"text_anchor": 1.0}}], **base).trials()[0]
    changed = SweepConfig(methods=[{"acquisition": "random", "adaptation": "linear_probe",
                                    "adaptation_options": {"text_anchor": 0.5}}], **base).trials()[0]
    assert implicit["method"]["adaptation_options"]["epochs"] == 100
    assert implicit["config_hash"] == explicit["config_hash"] != changed["config_hash"]


def test_with_defaults_changes_the_signature_the_config_hash_reads():
    from methods.registry import ADAPTATIONS, with_defaults

    resolved = ADAPTATIONS.resolve_options("cocoop", {})
    assert resolved["n_ctx"] == 4 and resolved["epochs"] == 10  # CoCoOp's own defaults over CoOp's 16 / 200
    assert ADAPTATIONS.resolve_options("coop", {})["n_ctx"] == 16
    assert ADAPTATIONS.create("cocoop").prompt.n_ctx == 4 and ADAPTATIONS.create("cocoop", n_ctx=8).prompt.n_ctx == 8
    with pytest.raises(TypeError, match="no such constructor option"):
        with_defaults(n_ctxx=3)(type("Bad", (ADAPTATIONS.get("coop"),), {}))
