"""The round loop without Tune: budgets spent, round 0 evaluated, resume equals an uninterrupted run."""

import numpy as np
import pytest

from orchestrator.budget import PerRound
from orchestrator.loop import ActiveLearningRun, RoundState, SelectionError, TrialData

PLUGIN = """
import numpy as np
from methods.base import AcquisitionStrategy, Learner, Selection
from methods.registry import register_acquisition, register_adaptation

@register_acquisition("test_duplicates")
class Duplicates(AcquisitionStrategy):
    def select(self, ctx, budget, rng):
        return Selection(np.repeat(ctx.unlabelled[:1], budget))

@register_acquisition("test_pseudo")
class QueryHalfPseudoHalf(AcquisitionStrategy):
    def select(self, ctx, budget, rng):
        rows = ctx.unlabelled[: 2 * budget]
        return Selection(rows[:budget], {int(r): 0 for r in rows[budget:]})

@register_adaptation("test_explodes")
class Explodes(Learner):
    def fit(self, train, ctx, rng):
        raise RuntimeError("learner exploded on purpose")
"""


@pytest.fixture(scope="module")
def plugin_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugins") / "test_plugins.py"
    path.write_text(PLUGIN)
    return str(path)


def _data(seed=0, n=240, classes=3, dim=8):
    rng = np.random.default_rng(seed)
    centres = np.eye(classes, dim) * 2

    def draw(k):
        y = np.arange(k) % classes
        x = centres[y] + rng.normal(0, 0.7, (k, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y

    pool_x, pool_y = draw(n)
    test_x, test_y = draw(120)
    text = np.roll(np.eye(classes, dim, dtype=np.float32), 1, axis=1)  # weak zero-shot
    return TrialData(pool_x, pool_y, test_x, test_y, text, "multiclass", classes, "top1")


def _run(acq="entropy", ada="linear_probe", rounds=3, plugins=(), **kw):
    return ActiveLearningRun((acq, {}), (ada, {}), PerRound(count=6), rounds, seed=7, data=_data(),
                             remote=False, plugins=plugins, **kw)


def _strip(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith("seconds")}


def test_round_zero_is_evaluated_and_budget_is_spent_per_round():
    results = list(_run().rounds())
    assert [m["round"] for _, m, _ in results] == [0, 1, 2, 3]
    assert [m["labels_spent"] for _, m, _ in results] == [0, 6, 12, 18]
    assert all(len(q) == 6 for _, _, q in results[1:])
    final_state = results[-1][0]
    assert final_state.finished and len(set(final_state.ledger.order)) == 18
    assert results[-1][1]["top1"] > results[0][1]["top1"]  # labels help over the weak zero-shot start


def test_resumed_run_equals_uninterrupted_run():
    full = [_strip(m) for _, m, _ in _run().rounds()]
    partial = list(_run().rounds())[:2]  # "killed" after round 1
    saved = RoundState.from_bytes(partial[-1][0].to_bytes())
    resumed = [_strip(m) for _, m, _ in _run().rounds(resume=saved)]
    np.testing.assert_equal([_strip(m) for _, m, _ in partial] + resumed, full)


def test_pseudo_labels_are_free_and_their_precision_is_reported(plugin_file):
    results = list(_run("test_pseudo", plugins=(plugin_file,), rounds=2).rounds())
    last = results[-1][1]
    assert last["labels_spent"] == 12 and last["labels_total"] == 24 and last["pseudo_labels"] == 12
    assert 0.0 <= last["pseudo_precision"] <= 1.0


def test_duplicate_selection_is_rejected_with_the_strategy_name(plugin_file):
    with pytest.raises(SelectionError, match="test_duplicates.*duplicate"):
        list(_run("test_duplicates", plugins=(plugin_file,)).rounds())


def test_budget_larger_than_pool_fails_before_any_round():
    from orchestrator.budget import BudgetError

    with pytest.raises(BudgetError, match="pool has only 240"):
        ActiveLearningRun(("random", {}), ("zeroshot", {}), PerRound(count=100), 3, 0, _data(), remote=False)


def test_phases_run_as_ray_tasks(ray_cluster):
    local = [_strip(m) for _, m, _ in _run(rounds=2).rounds()]
    remote_run = ActiveLearningRun(("entropy", {}), ("linear_probe", {}), PerRound(count=6), 2, seed=7,
                                   data=_data(), remote=True, num_cpus=0.5)
    np.testing.assert_equal([_strip(m) for _, m, _ in remote_run.rounds()], local)


COLD_PLUGIN = """
import numpy as np
from methods.base import AcquisitionStrategy, Selection
from methods.registry import register_acquisition

@register_acquisition("test_cold")
class LastRowsFirst(AcquisitionStrategy):
    def select(self, ctx, budget, rng):
        return Selection(ctx.unlabelled[:budget])

    def cold_start(self, ctx, budget, rng):
        return Selection(ctx.unlabelled[-budget:])
"""


@pytest.fixture(scope="module")
def cold_plugin(tmp_path_factory):
    path = tmp_path_factory.mktemp("cold") / "cold.py"
    path.write_text(COLD_PLUGIN)
    return str(path)


@pytest.mark.parametrize("cold_start, round1, round2", [
    ("none", range(0, 6), range(6, 12)),
    ("method", range(234, 240), range(0, 6)),
])
def test_cold_start_method_uses_the_strategy_own_start(cold_plugin, cold_start, round1, round2):
    run = ActiveLearningRun(("test_cold", {}), ("zeroshot", {}), PerRound(count=6), 2, seed=0, data=_data(),
                            cold_start=cold_start, remote=False, plugins=(cold_plugin,))
    queried = [q for _, _, q in run.rounds()]
    assert queried[1] == list(round1) and queried[2] == list(round2)


@pytest.mark.parametrize("cold", ["typiclust", "centroid", "random"])
def test_a_named_cold_start_picks_round_one_and_the_method_takes_over(cold):
    from methods.base import SelectionContext
    from methods.registry import ACQUISITIONS
    from orchestrator.loop import phase_rng

    results = list(_run(acq="margin", cold_start=cold).rounds())
    first = sorted(results[1][2])
    data = _data()
    ctx = SelectionContext(1, 3, np.arange(240), np.zeros(0, np.int64), np.zeros(0, np.int64),
                           pool_features=data.pool_features)
    expected = ACQUISITIONS.create(cold).cold_start(ctx, 6, phase_rng(7, 1, 1)).indices
    assert first == sorted(np.asarray(expected).tolist())
    no_cold = list(_run(acq="margin").rounds())
    assert sorted(no_cold[1][2]) != first  # margin alone would pick other rows in round 1


def test_an_unknown_cold_start_lists_the_known_strategies(tmp_path):
    import yaml

    from orchestrator.config import ConfigError, load_config

    cfg = {"name": "x", "datasets": ["synth-shapes"], "methods": ["margin+zeroshot"],
           "budgets": {"b": {"kind": "per_round", "count": 5}}, "cold_start": "typiclst", "workdir": str(tmp_path)}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="cold_start: unknown acquisition strategy 'typiclst'.*typiclust"):
        load_config(path)
