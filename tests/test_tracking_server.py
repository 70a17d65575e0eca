"""A real `mlflow server --app-name basic-auth` (SQLite backend) as the sweep's tracking server: requests without
credentials are refused, a wrong password or an unreachable server stops the sweep within seconds with the fix,
and a sweep with the credentials in its environment logs every trial through the server."""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from orchestrator.rehearsal import MlflowServer, free_port as _free_port
from orchestrator.tracking_access import PROBE, TrackingAccessError, check_tracking_server

USER = "alvlm-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The authenticated server on 127.0.0.1; yields (uri, password). Credentials live in env and a 0600 file."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow-auth"), user=USER) as mlflow_server:
        yield mlflow_server.uri, mlflow_server.password


def test_a_request_without_credentials_is_refused(server):
    uri, _ = server
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(uri + PROBE, timeout=10)
    assert refused.value.code == 401


@pytest.mark.parametrize("password, message", [(None, "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
                                               ("wrong", "refused user 'alvlm-test'")])
def test_missing_or_wrong_credentials_stop_the_check_with_the_fix(server, monkeypatch, password, message):
    uri, _ = server
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    if password:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    with pytest.raises(TrackingAccessError, match=message):
        check_tracking_server(uri)


def test_an_unreachable_server_is_reported_within_seconds():
    t0 = time.time()
    with pytest.raises(TrackingAccessError, match="no MLflow server answers at .*fix --tracking-uri"):
        check_tracking_server(f"http://127.0.0.1:{_free_port()}")
    assert time.time() - t0 < 15
    check_tracking_server("sqlite:///nowhere.db")  # file stores need no server


def test_the_cli_with_a_wrong_password_exits_2_before_any_trial(server, tmp_path, session_cache):
    from tests.conftest import ROOT
    from tests.test_sweep import _config

    uri, _ = server
    path = _config(tmp_path, session_cache, name="badpass", datasets=["synth-shapes"], seeds=[0], rounds=1,
                   methods=["random+zeroshot"])
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": "wrong",
           "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    out = subprocess.run([sys.executable, "experiments/sweep.py", str(path), "--tracking-uri", uri], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "answered 401" in out.stderr and time.time() - t0 < 60
    assert "wrong" not in out.stderr  # the password is never echoed


def test_a_sweep_logs_every_trial_through_the_authenticated_server(server, ray_cluster, tmp_path, session_cache,
                                                                   monkeypatch):
    from mlflow.tracking import MlflowClient

    from orchestrator.config import load_config
    from orchestrator.sweep import run_sweep
    from tests.test_sweep import _config

    uri, password = server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    config = load_config(_config(tmp_path, session_cache, name="authed", datasets=["synth-shapes"], seeds=[0, 1],
                                 rounds=1, methods=["random+zeroshot"]), [f"tracking.uri={uri}"])
    outcome = run_sweep(config)
    assert outcome.trials == 2 and not outcome.failed
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("authed")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("alvlm.role") == "trial"]
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert all({m.step for m in client.get_metric_history(r.info.run_id, "top1")} == {0, 1} for r in runs)
