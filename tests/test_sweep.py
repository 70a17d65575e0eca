"""A real mini-sweep: real Ray Tune trials, real MLflow on SQLite, the report read back from MLflow."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.config import ConfigError, load_config
from tests.conftest import ROOT, wait_until

SIZES = {"sizes": {"train": 300, "test": 100}}
FAILING_PLUGIN = '''
from methods.base import Learner
from methods.registry import register_adaptation

@register_adaptation("explodes")
class Explodes(Learner):
    def fit(self, train, ctx, rng):
        raise RuntimeError("learner exploded on purpose")
'''


def _config(tmp_path, cache, name="mini", **extra) -> dict:
    cfg = {
        "name": name,
        "datasets": ["synth-shapes", "synth-lesions"],
        "dataset_options": {"synth-shapes": SIZES, "synth-lesions": SIZES},
        "methods": ["random+linear_probe", "entropy+zeroshot"],
        "budgets": {"b1": {"kind": "per_class", "multiple": 1}},
        "seeds": [0, 1],
        "rounds": 2,
        "workdir": str(tmp_path / name),
        "cache": str(cache),
        "retries": 0,
    }
    cfg.update(extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _trial_runs(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if r.data.tags.get("alvlm.role") == "trial"], \
        [r for r in runs if r.data.tags.get("alvlm.role") == "sweep"]


def test_mini_sweep_logs_every_round_and_the_report_matches_mlflow(ray_cluster, tmp_path, session_cache):
    from orchestrator.report import comparison_tables, load_trials
    from orchestrator.sweep import run_sweep

    config = load_config(_config(tmp_path, session_cache))
    outcome = run_sweep(config)
    assert outcome.trials == 8 and not outcome.failed

    client, trials, sweeps = _trial_runs(config.tracking_uri, "mini")
    assert len(trials) == 8 and len(sweeps) == 1
    assert {r.info.status for r in trials} == {"FINISHED"}
    for run in trials:
        params = run.data.params
        for key in ("method", "dataset", "budget", "seed", "encoder", "config_hash", "git_revision"):
            assert params[key]
        metric = params["metric"]
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == [0, 1, 2]
        spent = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "labels_spent")}
        classes = 10 if params["dataset"] == "synth-shapes" else 2
        assert spent == {0: 0, 1: classes, 2: 2 * classes}
        assert [a.path for a in client.list_artifacts(run.info.run_id, "selections")] == \
            ["selections/round_001.json", "selections/round_002.json"]

    df = load_trials(config.tracking_uri, "mini")
    tables = comparison_tables(df)
    table = tables["dataset__synth-shapes__b1"]
    values = [client.get_metric_history(r.info.run_id, "top1") for r in trials
              if r.data.params["dataset"] == "synth-shapes" and r.data.params["method"] == "random+linear_probe"]
    final = [next(m.value for m in h if m.step == 2) for h in values]
    mean = table.attrs["mean"].loc["random+linear_probe"].iloc[-1]
    assert mean == pytest.approx(100 * np.mean(final), abs=1e-6)

    # Re-running the same sweep skips every finished trial and creates no duplicate runs.
    again = run_sweep(config)
    assert again.skipped == 8
    _, trials_after, sweeps_after = _trial_runs(config.tracking_uri, "mini")
    assert len(trials_after) == 8 and len(sweeps_after) == 2


def test_a_failing_learner_is_marked_failed_and_the_sweep_goes_on(ray_cluster, tmp_path, session_cache):
    from orchestrator.sweep import run_sweep

    plugin = tmp_path / "explodes.py"
    plugin.write_text(FAILING_PLUGIN)
    path = _config(tmp_path, session_cache, name="failing", datasets=["synth-shapes"], seeds=[0],
                   methods=["random+explodes", "random+zeroshot"], plugins=[str(plugin)])
    config = load_config(path)
    outcome = run_sweep(config)
    assert len(outcome.failed) == 1 and outcome.failed[0].startswith("random+explodes | synth-shapes | b1 | seed 0 (")
    _, trials, _ = _trial_runs(config.tracking_uri, "failing")
    status = {r.data.params["method"]: r for r in trials}
    assert status["random+zeroshot"].info.status == "FINISHED"
    assert status["random+explodes"].info.status == "FAILED"
    assert "learner exploded on purpose" in status["random+explodes"].data.tags["alvlm.error"]


def test_config_errors_are_caught_before_ray_starts(tmp_path, session_cache):
    with pytest.raises(ConfigError, match="unknown key 'round'.*did you mean 'rounds'"):
        load_config(_config(tmp_path, session_cache, round=3))
    with pytest.raises(ConfigError, match="unknown dataset 'synth-shape'.*synth-shapes"):
        load_config(_config(tmp_path, session_cache, datasets=["synth-shape"]))
    with pytest.raises(ConfigError, match="unknown acquisition strategy 'entrop'"):
        load_config(_config(tmp_path, session_cache, methods=["entrop+zeroshot"]))
    with pytest.raises(ConfigError, match="budgets"):
        load_config(_config(tmp_path, session_cache, budgets={"b": {"kind": "per_round", "count": 0}}))
    cfg = load_config(_config(tmp_path, session_cache), ["seeds=[3]", "rounds=4", "resources.cpu=0.5"])
    assert cfg.seeds == [3] and cfg.rounds == 4 and cfg.resources.cpu == 0.5
    hashes = {t["config_hash"] for t in cfg.trials()}
    assert len(hashes) == len(cfg.trials()) == 4


def test_budget_larger_than_the_pool_is_reported_by_the_cli_before_anything_is_embedded(tmp_path):
    """The pool on disk is counted before Ray starts: a first sweep need not embed a dataset to learn this."""
    cache = tmp_path / "cache"
    path = _config(tmp_path, cache, name="toolarge", datasets=["synth-shapes"], seeds=[0],
                   methods=["random+zeroshot"], budgets={"huge": {"kind": "per_round", "count": 500}})
    out = subprocess.run([sys.executable, "experiments/sweep.py", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    assert "synth-shapes, budget 'huge'" in out.stderr and "pool has only 300 images" in out.stderr
    assert not cache.exists() or not any(cache.iterdir())  # nothing was embedded
    assert "Ray" not in out.stderr  # nor was a cluster started


def _metrics_by_hash(uri, experiment):
    client, trials, _ = _trial_runs(uri, experiment)
    out = {}
    for run in trials:
        out[run.data.tags["alvlm.config_hash"]] = {
            key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in ("top1", "auc", "labels_spent", "labels_total", "labels_selective", "macro_f1")
        }
    return out, trials


def kill_after_states(command: list[str], env: dict, trials_dir, states: int, limit: float = 400) -> None:
    """Start a sweep CLI and SIGKILL it (the driver and the Ray cluster it started) once ``states`` trials
    have written a round state."""
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_until(lambda: len(list(trials_dir.glob("*/round-state.npz"))) >= states, limit,
                   f"{states} trials to write a round state", proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sigkilled_sweep_resumes_to_identical_metrics_without_duplicates(ray_cluster, tmp_path, session_cache):
    """Killed through the CLI, as a user's driver dies; a new driver (in-process here) resumes it, and an
    uninterrupted run is the reference. tests/test_engine_contracts.py resumes in a fresh CLI process."""
    from orchestrator.sweep import run_sweep

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # the papers' methods (CEC's weighted k-means, CB+SQ's free pseudo labels) must resume exactly too
    base = dict(datasets=["synth-shapes"], methods=["cec+linear_probe", "cbsq+linear_probe"],
                seeds=[0, 1], rounds=3, max_concurrent=1)
    killed_cfg = _config(tmp_path, session_cache, name="killed", **base)
    command = [sys.executable, "experiments/sweep.py", str(killed_cfg), "--no-report"]
    trials_dir = tmp_path / "killed" / "trials"
    kill_after_states(command, env, trials_dir, 2)
    assert len(list(trials_dir.glob("*/round-state.npz"))) < 4, "the sweep finished before it could be killed"

    assert not run_sweep(load_config(killed_cfg)).failed
    run_sweep(load_config(_config(tmp_path, session_cache, name="uninterrupted", **base)))

    killed, killed_runs = _metrics_by_hash(f"sqlite:///{tmp_path / 'killed' / 'mlflow.db'}", "killed")
    reference, _ = _metrics_by_hash(f"sqlite:///{tmp_path / 'uninterrupted' / 'mlflow.db'}", "uninterrupted")
    assert len(killed_runs) == 4 and {r.info.status for r in killed_runs} == {"FINISHED"}
    assert killed.keys() == reference.keys()
    for h in reference:
        np.testing.assert_equal(killed[h], reference[h])
        assert [s for s, _ in killed[h]["top1"]] == [0, 1, 2, 3]  # every round once: no duplicate, none lost


def test_nan_features_are_refused_with_the_fix():
    from orchestrator.sweep import _check_features

    bad = np.ones((4, 3), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf.*re-embed"):
        _check_features("synth-shapes", bad)
    with pytest.raises(ValueError, match="no embedded images"):
        _check_features("synth-shapes", np.zeros((0, 3), np.float32))


def test_methods_that_share_a_name_are_refused(tmp_path, session_cache):
    methods = [{"acquisition": "random", "adaptation": "linear_probe"},
               {"acquisition": "random", "adaptation": "linear_probe", "adaptation_options": {"epochs": 5}}]
    with pytest.raises(ConfigError, match="appear more than once.*distinct names"):
        load_config(_config(tmp_path, session_cache, methods=methods))


def test_one_method_may_set_its_options_per_dataset_under_one_name(tmp_path, session_cache):
    lp = {"name": "lp", "acquisition": "random", "adaptation": "linear_probe"}
    datasets = ["synth-shapes", "synth-scans"]
    per_dataset = [{**lp, "datasets": ["synth-shapes"], "adaptation_options": {"epochs": 5}},
                   {**lp, "datasets": ["synth-scans"], "adaptation_options": {"epochs": 7}}]
    trials = load_config(_config(tmp_path, session_cache, datasets=datasets, methods=per_dataset)).trials()
    assert {(t["dataset"], t["method"]["name"], t["method"]["adaptation_options"]["epochs"]) for t in trials} == {
        ("synth-shapes", "lp", 5), ("synth-scans", "lp", 7)}
    overlapping = [per_dataset[0], {**per_dataset[1], "datasets": datasets}]
    with pytest.raises(ConfigError, match="appear more than once.*no dataset in two entries"):
        load_config(_config(tmp_path, session_cache, datasets=datasets, methods=overlapping))


def test_a_second_sweep_on_a_busy_workdir_is_refused_at_once(tmp_path, session_cache, capsys):
    from experiments import sweep as cli
    from orchestrator.sweep import run_sweep
    from orchestrator.workdir_lock import WorkdirLockedError, workdir_lock

    config = load_config(_config(tmp_path, session_cache, name="busy"))
    with workdir_lock(config.workdir_path, "first"):
        t0 = time.time()
        with pytest.raises(WorkdirLockedError, match="another sweep is running on .*sweep 'first', pid"):
            run_sweep(config)
        with pytest.raises(SystemExit) as exit_info:
            cli.main([str(tmp_path / "busy.yaml")])
        assert exit_info.value.code == 2 and "give this one its own --workdir" in " ".join(capsys.readouterr().err.split())
        assert time.time() - t0 < 30  # refused before Ray or MLflow start
    with workdir_lock(config.workdir_path, "again"):  # released with its holder
        pass


def test_a_damaged_trial_state_is_ignored_with_a_warning(tmp_path, caplog):
    from orchestrator.budget import BudgetLedger
    from orchestrator.loop import RoundState
    from orchestrator.trial_store import TrialStore

    from methods.core.predictors import LinearPredictor

    store = TrialStore(tmp_path / "trials")
    head = LinearPredictor(np.eye(3, 4, dtype=np.float32), np.zeros(3, np.float32), 1.0)
    path = store.save("abc", RoundState(1, BudgetLedger(), head, [], [], False))
    assert store.load("abc").round == 1
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated on disk
    assert store.load("abc") is None
    assert "is damaged" in caplog.text and "resumes from its newest Tune checkpoint" in caplog.text


def test_an_unreachable_ray_address_is_reported_within_seconds(tmp_path, session_cache):
    import socket

    from orchestrator.ray_runtime import RayAddressError, check_reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = _config(tmp_path, session_cache, name="nohead")
    t0 = time.time()
    out = subprocess.run([sys.executable, "experiments/sweep.py", str(path), "--address", f"127.0.0.1:{port}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and "no Ray cluster answers at" in out.stderr and time.time() - t0 < 60
    with pytest.raises(RayAddressError, match="is not HOST:PORT"):
        check_reachable("my-head-node")
    check_reachable("auto")  # resolved by Ray from this machine's session files
