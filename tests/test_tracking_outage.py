"""Over HTTP against a real authenticated server: the driver is SIGKILLed mid-sweep and the sweep rerun; during
the rerun the MLflow server is SIGKILLed and restarted. The rerun resumes, its trials go on through the outage,
the queued rounds are delivered when the server is back, and MLflow ends with one run per trial holding every
round once, equal to what the trials computed (their round states)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.loop import RoundState
from orchestrator.rehearsal import MlflowServer
from orchestrator.tracking import trial_runs
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.slow
ROUNDS, SEEDS = 8, [0, 1, 2]


def _config(tmp_path, cache) -> dict:
    return {"name": "outage", "datasets": ["synth-shapes"],
            "dataset_options": {"synth-shapes": {"sizes": {"train": 300, "test": 100}}},
            "methods": ["random+linear_probe"], "budgets": {"b1": {"kind": "per_class", "multiple": 1}},
            "seeds": SEEDS, "rounds": ROUNDS, "max_concurrent": 1, "workdir": str(tmp_path / "outage"),
            "cache": str(cache), "retries": 0}


def _logged(client) -> dict[str, list[tuple[int, float]]]:
    """Per trial run (keyed by config hash; a duplicated run would collide and be counted below): top1 per step."""
    exp = client.get_experiment_by_name("outage")
    if exp is None:
        return {}
    runs = trial_runs(client, exp.experiment_id)
    logged = {r.data.tags["alvlm.config_hash"]: sorted((m.step, m.value) for m in client.get_metric_history(
        r.info.run_id, "top1")) for r in runs}
    assert len(logged) == len(runs), "a trial has two MLflow runs"
    return logged


def _logged_rounds(client) -> int:
    return sum(map(len, _logged(client).values()))


def _stored_rounds(trials_dir) -> int:
    total = 0
    for path in trials_dir.glob("*/round-state.npz"):
        try:
            total += RoundState.from_bytes(path.read_bytes()).round + 1
        except Exception:  # noqa: BLE001 - a state being replaced right now
            pass
    return total


@pytest.fixture
def server(tmp_path):
    # without the auth app (tests/test_tracking_server.py covers it): its per-request hash check would slow the
    # replay, not change it; killed at the end whatever the test did to it
    with MlflowServer(tmp_path / "mlflow", auth=False) as started:
        yield started


def test_a_driver_kill_then_a_server_outage_lose_and_duplicate_nothing(server, ray_cluster, tmp_path, session_cache,
                                                                          monkeypatch):
    for key, value in server.credentials.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(server.uri)
    (tmp_path / "outage.yaml").write_text(yaml.safe_dump(_config(tmp_path, session_cache)))
    command = [sys.executable, "experiments/sweep.py", str(tmp_path / "outage.yaml"), "--address",
               ray_cluster.get_runtime_context().gcs_address, "--tracking-uri", server.uri, "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    trials_dir = tmp_path / "outage" / "trials"
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        # the trial store first: polling the server alone, every 0.2 s, took CPU from the sweep it waited for
        wait_until(lambda: _stored_rounds(trials_dir) >= 2 and _logged_rounds(client) >= 2, 300,
                   "rounds reached MLflow", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver dies while the server is up
        first.wait()
    assert _stored_rounds(trials_dir) < len(SEEDS) * (ROUNDS + 1), "the sweep finished before its driver was killed"

    with (tmp_path / "rerun.log").open("w") as log:
        rerun = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            wait_until(lambda: "to resume" in (tmp_path / "rerun.log").read_text(), 300, "the rerun reconciled",
                       rerun)
            server.kill()
            stored_at_kill = _stored_rounds(trials_dir)
            wait_until(lambda: _stored_rounds(trials_dir) >= stored_at_kill + 2, 120, "rounds ran during the outage",
                       rerun)
            server.start()
            rerun.wait(timeout=600)
        finally:
            if rerun.poll() is None:
                os.killpg(rerun.pid, signal.SIGKILL)
    output = (tmp_path / "rerun.log").read_text()
    assert rerun.returncode == 0, output[-3000:]
    assert "does not answer" in output and "answers again" in output, output[-3000:]
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["skipped_finished"] < len(SEEDS) and summary["unlogged_calls"] == 0
    assert summary["tracking_outages"] >= 1
    logged = _logged(client)
    server.kill()
    assert len(logged) == len(SEEDS)  # one run per trial: none lost
    for h, history in logged.items():
        state = RoundState.from_bytes((trials_dir / h / "round-state.npz").read_bytes())
        assert state.finished
        assert [step for step, _ in history] == list(range(ROUNDS + 1))  # every round once
        assert [value for _, value in history] == pytest.approx([m["top1"] for m in state.history])
