"""Prompt learners as sweep methods: real Tune trials, per-round metrics in MLflow, rows in the report;
dual-prompt tuning with its mined labels, with VPT tokens, and as a selector for CoOp (Ours_CoOp)."""

from mlflow.tracking import MlflowClient

from orchestrator.config import load_config
from tests.test_sweep import _config

SIZES = {"sizes": {"train": 300, "test": 100}}
METHODS = [
    # `compile`: the text tower's chunks under torch.compile inside a Ray Tune trial's worker process
    {"acquisition": "random", "adaptation": "coop", "adaptation_options": {"epochs": 10, "compile": "default"}},
    {"acquisition": "entropy", "adaptation": "vpt", "adaptation_options": {"epochs": 3}},
    {"acquisition": "typiclust", "adaptation": "coop_dual", "adaptation_options": {"epochs": 5, "ctx_init": None}},
]
MINING = {"mine_k": 4, "bootstrap_k": 4}
DUAL_METHODS = [  # dual-prompt tuning: the text-only model, the full model with VPT tokens, and Ours_CoOp
    {"acquisition": "dual_uncertainty", "acquisition_options": MINING, "adaptation": "dual_prompt",
     "adaptation_options": {"epochs": 3}},
    {"name": "ours", "acquisition": "dual_uncertainty", "acquisition_options": MINING, "adaptation": "dual_prompt",
     "adaptation_options": {"epochs": 2, "visual": "vpt", "visual_tokens": 4}},
    {"name": "ours_coop", "acquisition": "dual_uncertainty", "acquisition_options": MINING, "adaptation": "coop",
     "adaptation_options": {"epochs": 5}, "adaptation_labels": "queried",
     "selector": {"adaptation": "dual_prompt", "adaptation_options": {"epochs": 3}}},
]
NAMES = {"random+coop", "entropy+vpt", "typiclust+coop_dual", "dual_uncertainty+dual_prompt", "ours", "ours_coop"}


def test_prompt_learners_run_as_sweep_methods(ray_cluster, tmp_path, session_cache):
    from orchestrator.report import comparison_tables, load_trials
    from orchestrator.sweep import run_sweep

    path = _config(tmp_path, session_cache, name="prompts", datasets=["synth-scans"],
                   dataset_options={"synth-scans": SIZES}, methods=METHODS + DUAL_METHODS, seeds=[0], rounds=2)
    config = load_config(path)
    outcome = run_sweep(config)
    assert outcome.trials == 6 and not outcome.failed

    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name("prompts")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("alvlm.role") == "trial"]
    assert {r.data.params["method"] for r in runs} == NAMES
    for run in runs:
        assert run.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "top1")) == [0, 1, 2]
        assert [m.value for m in client.get_metric_history(run.info.run_id, "labels_spent")] == [0, 10, 20]
    table = comparison_tables(load_trials(config.tracking_uri, "prompts"))["dataset__synth-scans__b1"]
    assert set(table.attrs["mean"].index) == NAMES
    assert ("ours_coop: metrics of coop (queried labels only), rows chosen by dual_prompt (all labels)"
            in table.attrs["caption"])
    _check_dual_runs(client, {r.data.params["method"]: r for r in runs})


def _check_dual_runs(client, runs):
    """Mined labels per round in MLflow, never spent; the pair's roles in its parameters."""
    history = lambda run, key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}  # noqa
    for name in ("dual_uncertainty+dual_prompt", "ours", "ours_coop"):
        run = runs[name]
        mined, total = history(run, "labels_mined"), history(run, "labels_total")
        assert sorted(mined) == [1, 2] and all(0 < v <= 40 for v in mined.values()), name
        assert all(total[r] == 10 * r + mined[r] for r in (1, 2)), name
        assert sorted(history(run, "precision_transient")) == [0, 1, 2], name
        assert sorted(history(run, "select_mined")) == [1, 2], name
    params = runs["ours_coop"].data.params
    assert params["selector"] == "dual_prompt" and params["evaluated_model"] == "coop (queried labels only)"
    assert "selector" not in runs["ours"].data.params
