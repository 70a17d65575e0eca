"""The round engine's second-version contracts: provenance and transient labels, bootstrap, selector
learners, costs, gated learner contexts, pairing checks before Ray, and file plug-ins in real sweeps."""

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from methods.base import MINED, ORACLE
from orchestrator.budget import BudgetLedger, PerRound
from orchestrator.config import ConfigError, load_config
from orchestrator.loop import ActiveLearningRun, RoundState
from tests.conftest import ROOT
from tests.test_loop import _data, _strip
from tests.test_sweep import SIZES

PLUGIN = '''
from dataclasses import dataclass

import numpy as np

from methods.base import (ATTRIBUTES, PROBS, POOL_FEATURES, PROVENANCE, UNLABELLED, AcquisitionStrategy, Learner,
                          Predictor, Selection, predictor_output, prepared)
from methods.core.predictors import softmax
from methods.registry import register_acquisition, register_adaptation


@register_acquisition("test_miner")
class Miner(AcquisitionStrategy):
    """Queries the least confident rows and mines the most confident ones as transient labels."""

    requires = frozenset({PROBS, PROVENANCE})

    def bootstrap(self, ctx, rng):
        top = ctx.unlabelled[np.argsort(-ctx.probs[ctx.unlabelled].max(1))[:4]]
        return Selection(np.empty(0, np.int64), transient_labels={int(r): int(ctx.probs[r].argmax()) for r in top})

    def select(self, ctx, budget, rng):
        ctx.extras["transient_before"] = len(ctx.transient)
        again = np.asarray(sorted(ctx.transient)[:2], np.int64)  # a mined row may still be queried
        rest = ctx.unlabelled[~np.isin(ctx.unlabelled, again)]
        order = rest[np.argsort(ctx.probs[rest].max(1), kind="stable")]
        mined = order[-5:]
        return Selection(np.concatenate([again, order[:budget - len(again)]]),
                         transient_labels={int(r): int(ctx.probs[r].argmax()) for r in mined},
                         costs={"api_calls": 2})


@register_acquisition("test_needs_clean")
class NeedsClean(AcquisitionStrategy):
    requires = frozenset({predictor_output("clean_prob")})

    def select(self, ctx, budget, rng):
        return Selection(ctx.unlabelled[np.argsort(ctx.outputs["clean_prob"][ctx.unlabelled])[:budget]])


@dataclass
class CentroidPredictor(Predictor):
    """Defined in the user's file: checkpoints name it by this file's module."""

    centres: np.ndarray

    outputs = frozenset({"clean_prob"})

    def predict_proba(self, features):
        return softmax(np.asarray(features, np.float32) @ self.centres.T * 10)

    def predict_output(self, name, features):
        return self.predict_proba(features).max(1)

    def class_embeddings(self):
        return self.centres / np.linalg.norm(self.centres, axis=1, keepdims=True)

    def state(self):
        return {"centres": self.centres}

    @classmethod
    def from_state(cls, state):
        return cls(np.asarray(state["centres"]))


@register_adaptation("test_centroids")
class Centroids(Learner):
    """Class means of the labelled features, shrunk to the text embeddings; sees the unlabelled pool."""

    requires = frozenset({"text_features", POOL_FEATURES, UNLABELLED})
    provides = Learner.provides | {predictor_output("clean_prob")}

    def fit(self, train, ctx, rng):
        assert ctx.pool_features is not None and ctx.unlabelled is not None and ctx.images is None
        centres = np.array(ctx.text_features, np.float32)
        for c in range(ctx.num_classes):
            rows = train.features[train.labels == c]
            if len(rows):
                centres[c] = 0.5 * centres[c] + 0.5 * rows.mean(0)
        return CentroidPredictor(centres)


@register_adaptation("test_attr_centroids")
class AttrCentroids(Centroids):
    """Also reads the card's attributes and their embeddings, prepared once per dataset before the sweep."""

    requires = Centroids.requires | {ATTRIBUTES, prepared("attribute_embeddings")}

    def fit(self, train, ctx, rng):
        arrays = ctx.prepared["attribute_embeddings"]
        assert ctx.attributes and arrays["positive"].shape[1] == np.shape(ctx.text_features)[1]
        return super().fit(train, ctx, rng)
'''


@pytest.fixture(scope="module")
def plugin_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine-plugins") / "my_plugins.py"
    path.write_text(PLUGIN)
    return str(path)


def _run(acq, ada, plugins, rounds=3, **kw):
    return ActiveLearningRun((acq, {}), (ada, {}), PerRound(count=6), rounds, seed=3, data=_data(), remote=False,
                             plugins=plugins, **kw)


def test_ledger_keeps_provenance_multilabel_targets_and_costs():
    ledger = BudgetLedger()
    ledger.query(np.array([1, 2]), np.array([[0, 1, 1], [1, 0, 0]]))
    ledger.replace_transient({5: (1, 1, 0), 6: (0, 0, 1)})
    ledger.replace_transient({6: (0, 1, 0)})  # replaces, never accumulates
    ledger.add_cost("blackbox_queries", 64)
    rows, targets, pseudo = ledger.arrays()
    assert rows.tolist() == [1, 2, 6] and targets.shape == (3, 3) and pseudo.tolist() == [False, False, True]
    assert ledger.spent == 2 and ledger.permanent().tolist() == [1, 2]
    ledger.query(np.array([6]), np.array([[1, 1, 1]]))  # a transient row may be queried later
    assert ledger.sources[6] == ORACLE and not ledger.transient and ledger.spent == 3
    again = BudgetLedger.from_state(ledger.state())
    assert again == ledger and again.costs == {"blackbox_queries": 64.0}
    with pytest.raises(ValueError, match="class id or a 0/1 label vector"):
        ledger.query(np.array([9]), np.array([[0, 2, 1]]))
    old = BudgetLedger.from_state({"order": [3, 4], "targets": [1, 0], "pseudo": [4], "spent": 1})
    assert old.sources == {3: ORACLE, 4: "selective"}  # first-version trial stores still resume


def test_bootstrap_and_mined_labels_are_replaced_free_and_queryable(plugin_file):
    results = list(_run("test_miner", "linear_probe", (plugin_file,)).rounds())
    states = [s for s, _, _ in results]
    metrics = [m for _, m, _ in results]
    assert metrics[0]["labels_bootstrap"] == 4 and metrics[0]["labels_spent"] == 0  # before the round-0 fit
    for state, m in zip(states[1:], metrics[1:]):
        assert len(state.ledger.transient) == 5 == m["labels_transient"] == m["labels_mined"]
        assert {state.ledger.sources[r] for r in state.ledger.transient} == {MINED}
        assert 0 <= m["precision_mined"] <= 1
    assert [m["labels_spent"] for m in metrics] == [0, 6, 12, 18]
    assert [m.get("cost_api_calls", 0.0) for m in metrics] == [0.0, 2.0, 4.0, 6.0]
    assert [m["select_transient_before"] for m in metrics[1:]] == [4, 5, 5]
    mined_then_queried = set().union(*(s.ledger.transient for s in states[:-1])) & {
        r for r, src in states[-1].ledger.sources.items() if src == ORACLE}
    assert mined_then_queried, "no mined row was ever queried (the test pool should make this happen)"


def test_selector_learner_chooses_and_the_evaluated_learner_reports(plugin_file):
    plain = [_strip(m) for _, m, _ in _run("entropy", "zeroshot", (plugin_file,)).rounds()]
    paired_run = _run("entropy", "zeroshot", (plugin_file,), selector=("linear_probe", {}))
    paired = list(paired_run.rounds())
    assert all(s.selector is not None for s, _, _ in paired)
    # zero-shot ignores labels, so the evaluated metrics stay zero-shot's; the selector changes who is queried
    assert [m["top1"] for m in plain] == [_strip(m)["top1"] for _, m, _ in paired]
    plain_queries = [q for _, _, q in _run("entropy", "zeroshot", (plugin_file,)).rounds()]
    assert plain_queries != [q for _, _, q in paired]
    saved = RoundState.from_bytes(paired[1][0].to_bytes())
    resumed = [_strip(m) for _, m, _ in paired_run.rounds(resume=saved)]
    np.testing.assert_equal(resumed, [_strip(m) for _, m, _ in paired[2:]])


def test_named_outputs_reach_strategies_and_queried_only_training(plugin_file):
    run = _run("test_needs_clean", "test_centroids", (plugin_file,), rounds=2)
    assert [m["labels_spent"] for _, m, _ in run.rounds()] == [0, 6, 12]
    mixed = list(_run("test_miner", "linear_probe", (plugin_file,), rounds=2, adaptation_labels="queried").rounds())
    free = list(_run("test_miner", "linear_probe", (plugin_file,), rounds=2).rounds())
    assert mixed[0][1]["top1"] != free[0][1]["top1"] or mixed[-1][1]["top1"] != free[-1][1]["top1"]


def _write(tmp_path, name, **cfg):
    base = {"name": name, "datasets": ["synth-shapes"], "budgets": {"b": {"kind": "per_round", "count": 5}},
            "dataset_options": {"synth-shapes": SIZES},  # test_sweep's pool, embedded once per session
            "workdir": str(tmp_path / name), "rounds": 2, "retries": 0}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**base, **cfg}))
    return path


def test_pairing_is_checked_before_ray_starts(tmp_path, plugin_file):
    with pytest.raises(ConfigError, match="needs \\['output:clean_prob'\\], which learner 'linear_probe' does not"):
        load_config(_write(tmp_path, "a", plugins=[plugin_file], methods=["test_needs_clean+linear_probe"]))
    with pytest.raises(ConfigError, match="'bald'.*'vpt' does not provide"):
        load_config(_write(tmp_path, "b", methods=["bald+vpt"]))
    ok = load_config(_write(tmp_path, "c", plugins=[plugin_file], methods=[
        {"name": "clean-by-selector", "acquisition": "test_needs_clean", "adaptation": "linear_probe",
         "selector": {"adaptation": "test_centroids"}}]))
    assert ok.trials()[0]["method"]["selector"]["adaptation"] == "test_centroids"
    plain = load_config(_write(tmp_path, "d", methods=["random+linear_probe"])).trials()[0]
    assert "selector" not in plain["method"] and "cards" not in plain and "blackbox" not in plain


def test_file_plugins_run_in_a_real_sweep_and_resume_in_a_fresh_process(tmp_path, plugin_file, session_cache,
                                                                          ray_cluster):
    """Plug-in modules have one name in every process, so workers unpickle their predictors and a new driver
    resumes their checkpoints (the salted hash() of the first version broke both). A failing trial makes
    the CLI exit 1 while the others finish."""
    from tests.test_sweep import _trial_runs, kill_after_states

    boom = tmp_path / "boom.py"
    boom.write_text("from methods.base import Learner\nfrom methods.registry import register_adaptation\n"
                    "@register_adaptation('boom')\nclass Boom(Learner):\n"
                    "    def fit(self, train, ctx, rng):\n        raise RuntimeError('boom')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cfg = _write(tmp_path, "plug", plugins=[plugin_file, str(boom)], seeds=[0], max_concurrent=1,
                 cache=str(session_cache),
                 methods=["test_miner+test_centroids", "test_needs_clean+test_attr_centroids", "random+boom"])
    command = [sys.executable, "experiments/sweep.py", str(cfg), "--no-report", "--address",
               ray_cluster.get_runtime_context().gcs_address]  # each driver a fresh process, as a user's are
    kill_after_states(command, env, tmp_path / "plug" / "trials", 2)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and '"failed": 1' in done.stdout, done.stderr[-3000:]
    client, runs, _ = _trial_runs(f"sqlite:///{tmp_path / 'plug' / 'mlflow.db'}", "plug")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 2 and {r.data.params["adaptation"] for r in runs if r not in finished} == {"boom"}
    assert len(list(session_cache.glob("prepared/synth-shapes/*/attribute_embeddings-*/manifest.json"))) == 1

    def history(run, key):
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    assert all([s for s, _ in history(r, "top1")] == [0, 1, 2] for r in finished)  # every round once
    miners = [r for r in finished if r.data.params["acquisition"] == "test_miner"]
    assert len(miners) == 1
    for run in miners:
        assert history(run, "labels_mined") == [(1, 5.0), (2, 5.0)]
        assert history(run, "labels_bootstrap") == [(0, 4.0)]
        assert history(run, "cost_api_calls") == [(1, 2.0), (2, 4.0)]
