"""The papers' acquisition methods in a real Tune sweep: per-round metrics in MLflow, and the ledger's
promise that selective querying spends budget only on the rows it queries."""

import pytest

from orchestrator.config import load_config
from tests.test_sweep import _config, _trial_runs

METHODS = ["cec+linear_probe", "cbsq+linear_probe", "sq+zeroshot", "gcnal+linear_probe"]


@pytest.fixture(scope="module")
def paper_sweep(ray_cluster, tmp_path_factory, session_cache):
    from orchestrator.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("papers")
    config = load_config(_config(tmp, session_cache, name="papers", datasets=["synth-shapes"], seeds=[0],
                                 methods=METHODS, rounds=3))
    outcome = run_sweep(config)
    assert not outcome.failed
    client, trials, _ = _trial_runs(config.tracking_uri, "papers")
    return client, {r.data.params["method"]: r for r in trials}


def _history(client, run, key):
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


def test_every_paper_method_logs_every_round(paper_sweep):
    client, runs = paper_sweep
    assert sorted(runs) == sorted(METHODS)
    for method, run in runs.items():
        assert sorted(_history(client, run, "top1")) == [0, 1, 2, 3], method
    assert sorted(_history(client, runs["cec+linear_probe"], "select_cec_mean_uncertainty")) == [1, 2, 3]
    gcn = _history(client, runs["gcnal+linear_probe"], "select_gcnal_train_accuracy")
    assert sorted(gcn) == [2, 3]  # round 1 is its cold start: no labelled nodes, no GCN
    clusters = _history(client, runs["cbsq+linear_probe"], "select_cb_clusters")
    assert clusters == {1: 10, 2: 20, 3: 30}  # K = B * r with B = 10 classes


@pytest.mark.parametrize("method", ["cbsq+linear_probe", "sq+zeroshot"])
def test_selective_querying_spends_only_what_it_queries(paper_sweep, method):
    client, runs = paper_sweep
    run = runs[method]
    spent, total = _history(client, run, "labels_spent"), _history(client, run, "labels_total")
    saved = _history(client, run, "select_sq_saved")
    assert total == {0: 0, 1: 10, 2: 20, 3: 30}  # |D_r| = B * r
    assert saved[1] == 0  # no thresholds in round 1: everything is queried
    for r in (1, 2, 3):
        assert spent[r] == total[r] - sum(saved[s] for s in range(1, r + 1))
    selective = _history(client, run, "labels_selective")
    if sum(saved.values()):
        assert selective[3] == sum(saved.values())
        assert 0 <= _history(client, run, "precision_selective")[3] <= 1
