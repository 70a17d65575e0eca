"""A real multi-node Ray cluster on this machine (a head with no CPUs and two worker nodes, each its own raylet
and object store, from Ray's own `ray.cluster_utils.Cluster`): the sweep joins it with `--address` as on a
cloud cluster, a worker node is SIGKILLed mid-sweep, its trial is retried on the other node from its last
finished round, and the per-round metrics equal a single-node run's, with no MLflow run duplicated or lost."""

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
STORE = 150 * 2**20  # object store per node: the pools are small


def _config(tmp_path, cache, name: str) -> dict:
    return {"name": "multinode", "datasets": ["synth-shapes"],
            "dataset_options": {"synth-shapes": {"sizes": {"train": 300, "test": 100}}},
            "methods": ["random+linear_probe", "entropy+linear_probe"],
            "budgets": {"b1": {"kind": "per_class", "multiple": 1}}, "seeds": [0, 1], "rounds": 4,
            "workdir": str(tmp_path / name), "cache": str(cache), "retries": 2,
            "resources": {"cpu": 0.5, "driver_cpu": 0.1}}


def _metrics(uri: str) -> tuple[dict, int]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("multinode")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("alvlm.role") == "trial"]
    return {r.data.params["config_hash"]: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id,
                                                                                                     "top1"))
            for r in runs}, len(runs)


def _wait_for_states(trials_dir, count: int, proc, limit: float = 300) -> None:
    """Until ``count`` trials have written a round state (so trials are running on both workers)."""
    t0 = time.time()
    while time.time() - t0 < limit:
        assert proc.poll() is None, "the sweep ended before the fault could be injected"
        if trials_dir.exists() and len(list(trials_dir.glob("*/round-state.npz"))) >= count:
            return
        time.sleep(0.25)
    raise AssertionError("no trial wrote a round state in time")


def test_a_worker_node_killed_mid_sweep_loses_nothing(ray_cluster, tmp_path, session_cache):
    from ray.cluster_utils import Cluster

    from orchestrator.config import load_config
    from orchestrator.sweep import run_sweep

    cfg = _config(tmp_path, session_cache, "multi")
    (tmp_path / "multi.yaml").write_text(yaml.safe_dump(cfg))
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "object_store_memory": STORE})
    try:
        workers = [cluster.add_node(num_cpus=1, object_store_memory=STORE) for _ in range(2)]
        cluster.wait_for_nodes()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ALVLM_STORAGE_PATH": str(tmp_path / "shared" / "ray_results")}
        proc = subprocess.Popen([sys.executable, "experiments/sweep.py", str(tmp_path / "multi.yaml"), "--address",
                                 cluster.address, "--no-report"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        _wait_for_states(tmp_path / "multi" / "trials", 2, proc)
        cluster.remove_node(workers[0], allow_graceful=False)  # SIGKILL of its raylet and workers
        out, _ = proc.communicate(timeout=600)
    finally:
        cluster.shutdown()
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
