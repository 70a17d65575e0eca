"""Prompt learners as sweep methods: real Tune trials, per-round metrics in MLflow, rows in the report."""

from mlflow.tracking import MlflowClient

from orchestrator.config import load_config
from tests.test_sweep import _config

SIZES = {"sizes": {"train": 300, "test": 100}}
METHODS = [
    {"acquisition": "random", "adaptation": "coop", "adaptation_options": {"epochs": 10}},
    {"acquisition": "entropy", "adaptation": "vpt", "adaptation_options": {"epochs": 3}},
    {"acquisition": "typiclust", "adaptation": "coop_dual", "adaptation_options": {"epochs": 5, "ctx_init": None}},
]


def test_prompt_learners_run_as_sweep_methods(ray_cluster, tmp_path, session_cache):
    from orchestrator.report import comparison_tables, load_trials
    from orchestrator.sweep import run_sweep

    path = _config(tmp_path, session_cache, name="prompts", datasets=["synth-scans"],
                   dataset_options={"synth-scans": SIZES}, methods=METHODS, seeds=[0], rounds=2)
    config = load_config(path)
    outcome = run_sweep(config)
    assert outcome.trials == 3 and not outcome.failed

    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name("prompts")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("alvlm.role") == "trial"]
    assert {r.data.params["method"] for r in runs} == {"random+coop", "entropy+vpt", "typiclust+coop_dual"}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "top1")) == [0, 1, 2]
        assert [m.value for m in client.get_metric_history(run.info.run_id, "labels_spent")] == [0, 10, 20]
    table = comparison_tables(load_trials(config.tracking_uri, "prompts"))["dataset__synth-scans__b1"]
    assert set(table.attrs["mean"].index) == {"random+coop", "entropy+vpt", "typiclust+coop_dual"}
