"""A real multi-node Ray cluster on this machine (a head with no CPUs and two worker nodes, each its own raylet
and object store, from Ray's own `ray.cluster_utils.Cluster`): a sweep joining with `--address` as on a cloud
cluster survives a worker node SIGKILLed mid-sweep (its trial is retried on the other node from its last finished
round, the per-round metrics equal a single-node run's, and no MLflow run is duplicated or lost); a storage path a node cannot write is refused before any trial."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """Head (no CPUs, dashboard on 127.0.0.1 for the Jobs API) and two 1-CPU worker nodes, shared by the module."""
    from orchestrator.rehearsal import local_cluster

    started = local_cluster(workers=2, dashboard=True)
    yield started
    started.shutdown()


def _config(tmp_path, cache, name: str, **extra) -> dict:
    return {"name": "multinode", "datasets": ["synth-shapes"],
            "dataset_options": {"synth-shapes": {"sizes": {"train": 300, "test": 100}}},
            "methods": ["random+linear_probe", "entropy+linear_probe"],
            "budgets": {"b1": {"kind": "per_class", "multiple": 1}}, "seeds": [0, 1], "rounds": 4,
            "workdir": str(tmp_path / name), "cache": str(cache), "retries": 2,
            "resources": {"cpu": 0.5, "driver_cpu": 0.1}, **extra}


def _metrics(uri: str) -> tuple[dict, int]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("multinode")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("alvlm.role") == "trial"]
    return {r.data.params["config_hash"]: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id,
                                                                                                     "top1"))
            for r in runs}, len(runs)


def test_a_storage_path_a_node_cannot_write_is_refused_within_seconds(cluster, tmp_path, session_cache):
    (tmp_path / "not-a-mount").write_text("a file where the shared directory should be")
    path = _write(tmp_path, _config(tmp_path, session_cache, "unwritable"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ALVLM_STORAGE_PATH": str(tmp_path / "not-a-mount" / "ray_results")}
    t0 = time.time()
    out = subprocess.run([sys.executable, "experiments/sweep.py", str(path), "--address", cluster.address,
                          "--no-report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    message = " ".join(out.stderr.split())
    assert out.returncode == 2 and "cannot write the Tune storage path" in message, message[-2000:]
    assert time.time() - t0 < 60
    assert not list((tmp_path / "unwritable" / "trials").glob("*/round-state.npz"))  # no trial ran


def test_a_sweep_submitted_through_the_jobs_api_runs_on_the_workers(cluster, tmp_path, session_cache):
    """``ray job submit`` as the README has it: the repository uploaded as the working directory, the storage path
    passed in the runtime environment, the entrypoint joining the cluster with ``--address auto``."""
    path = _write(tmp_path, _config(tmp_path, session_cache, "submitted", methods=["random+linear_probe"], rounds=1))
    runtime_env = {"env_vars": {"ALVLM_STORAGE_PATH": str(tmp_path / "shared" / "ray_results"),
                                "RAY_AUTH_MODE": "disabled"}}
    submit = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", f"http://{cluster.webui_url}",
              "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env), "--",
              sys.executable, "experiments/sweep.py", str(path), "--address", "auto", "--no-report"]
    out = _submit(submit)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    summary = json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith('{"experiment"')))
    assert summary["trials"] == 2 and summary["failed_trials"] == []
    _, runs = _metrics(f"sqlite:///{tmp_path}/submitted/mlflow.db")
    assert runs == 2


def _submit(command: list[str], limit: float = 60):
    """``ray job submit``, retried while the head's dashboard agent is still coming up (it refuses submissions
    with "No available agent" for a few seconds after the head starts)."""
    deadline = time.time() + limit
    while True:
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if "No available agent" not in out.stdout + out.stderr or time.time() > deadline:
            return out
        time.sleep(2)


def test_a_worker_node_killed_mid_sweep_loses_nothing(cluster, tmp_path, session_cache):
    """Runs last in the module: it kills one of the fixture's workers (and adds a fresh one back)."""
    from orchestrator.config import load_config
    from orchestrator.rehearsal import add_worker
    from orchestrator.sweep import run_sweep

    cfg = _config(tmp_path, session_cache, "multi")
    (tmp_path / "multi.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ALVLM_STORAGE_PATH": str(tmp_path / "shared" / "ray_results")}
    proc = subprocess.Popen([sys.executable, "experiments/sweep.py", str(tmp_path / "multi.yaml"), "--address",
                             cluster.address, "--no-report"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    states = tmp_path / "multi" / "trials"
    wait_until(lambda: len(list(states.glob("*/round-state.npz"))) >= 2, 300, "trials ran on both workers", proc)
    victim = next(node for node in cluster.worker_nodes)
    cluster.remove_node(victim, allow_graceful=False)  # SIGKILL of its raylet and workers
    out, _ = proc.communicate(timeout=600)
    add_worker(cluster)  # the spot instance comes back, for whatever runs next
    assert proc.returncode == 0
    summary = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith('{"experiment"')))
    assert summary["trials"] == 4 and summary["failed_trials"] == []
    interrupted = list((tmp_path / "shared" / "ray_results").glob("*/*/error.txt"))
    assert interrupted, "the node kill interrupted no trial, so nothing was retried"

    reference = run_sweep(load_config(_write(tmp_path, _config(tmp_path, session_cache, "single"))))
    assert not reference.failed
    faulted, n_faulted = _metrics(f"sqlite:///{tmp_path}/multi/mlflow.db")
    clean, n_clean = _metrics(f"sqlite:///{tmp_path}/single/mlflow.db")
    assert n_faulted == n_clean == 4  # no run duplicated or lost
    assert faulted == clean  # every round of every trial, as an uninterrupted single-node run logs it


def _write(tmp_path, cfg: dict):
    path = tmp_path / f"{cfg['workdir'].rsplit('/', 1)[-1]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
