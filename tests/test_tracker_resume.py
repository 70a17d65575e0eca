"""The trial tracker finishes what a killed driver left half-written in a real SQLite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.tracking import HASH, ROLE, TrialTracker, trial_params

TRIAL = {"method": {"name": "random+linear_probe", "acquisition": "random", "adaptation": "linear_probe"},
         "dataset": "synth-shapes", "budget_name": "b", "seed": 0, "encoder": "tiny", "config_hash": "abc123",
         "rounds": 2, "cold_start": "random"}


def _store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(uri), TrialTracker(uri, "resume")


def test_a_run_killed_between_its_creation_and_its_parameters_gets_them_on_resume(tmp_path):
    uri, client, first = _store(tmp_path)
    # what a SIGKILL between create_run and log_batch leaves: the tags, no parameters, no config.json
    orphan = client.create_run(first.experiment_id, tags={ROLE: "trial", HASH: TRIAL["config_hash"]}).info.run_id

    resumed = TrialTracker(uri, "resume")  # the next driver
    assert resumed.log_round(TRIAL, {"round": 0, "top1": 50.0}, None, None)
    resumed.finish(TRIAL)

    runs = client.search_runs([first.experiment_id])
    assert [r.info.run_id for r in runs] == [orphan]  # reused, not duplicated
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.metrics["top1"] == 50.0
    expected = trial_params(TRIAL)
    assert {k: run.data.params[k] for k in expected} == expected
    config = client.download_artifacts(orphan, "config.json", str(tmp_path / "downloaded"))
    assert json.loads(Path(config).read_text())["config_hash"] == TRIAL["config_hash"]


def test_only_missing_parameters_are_logged_so_a_newer_revision_does_not_clash(tmp_path):
    uri, client, first = _store(tmp_path)
    run_id = first.run_for(TRIAL, None)
    part = client.create_run(first.experiment_id, tags={ROLE: "trial", HASH: "partial"}).info.run_id
    client.log_param(part, "git_revision", "an-older-one")  # one parameter landed before the kill

    resumed = TrialTracker(uri, "resume")
    assert resumed.run_for(TRIAL, None) == run_id  # complete: nothing logged again
    assert resumed.run_for({**TRIAL, "config_hash": "partial"}, None) == part
    held = client.get_run(part).data.params
    assert held["git_revision"] == "an-older-one" and held["config_hash"] == "partial"
    assert held["adaptation"] == "linear_probe"


def test_the_report_groups_a_parameterless_run_of_an_older_store_by_its_tags(tmp_path):
    """Stores written before the tracker completed such runs hold FINISHED runs with tags and metrics only."""
    from orchestrator.reporting.loading import load_trials

    uri, client, tracker = _store(tmp_path)
    tags = {ROLE: "trial", HASH: "old", "method": "random+coop", "dataset": "synth-scans", "budget": "b",
            "seed": "2"}
    run_id = client.create_run(tracker.experiment_id, tags=tags).info.run_id
    for step, (top1, spent) in enumerate([(40.0, 0), (45.0, 5)]):
        client.log_metric(run_id, "top1", top1, step=step)
        client.log_metric(run_id, "labels_spent", spent, step=step)
    client.set_terminated(run_id, "FINISHED")

    df = load_trials(uri, "resume")
    assert list(df["value"]) == [40.0, 45.0]
    groups = df[["method", "dataset", "budget", "seed"]].drop_duplicates().values.tolist()
    assert groups == [["random+coop", "synth-scans", "b", 2]]
