"""A sweep under random faults on a real multi-node cluster, against the same sweep without faults.

The rehearsal cluster (:mod:`orchestrator.rehearsal`: a head with no CPUs, two worker raylets, an
authenticated ``mlflow server`` on SQLite) first runs the sweep undisturbed, then again while N faults
are injected at seeded random moments, each drawn from four kinds:

- ``worker``: a worker node is SIGKILLed (raylet and workers) and a fresh one joins, as spot nodes do;
- ``server``: the MLflow server is SIGKILLed and restarted 1-4 s later on the same store;
- ``driver``: the sweep's driver is SIGKILLed and the same command run again;
- ``store``: a trial's round state is truncated on disk (the trial must notice and resume from its last
  good round, or start over, never from a half-read file).

A driver that exits non-zero (its trials ran out of retries, or it started while the server was down)
is run again with the same command, as a user would. At the end every trial's MLflow run is compared
with the undisturbed run's, metric by metric and round by round (timings excepted): runs with identical
metrics, rounds lost, runs and rounds duplicated. The last line is JSON.

    python benchmarks/chaos.py [--faults 20] [--seed 0] [--kinds worker,server,driver,store]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local rehearsal; cluster.yaml keeps token auth on

KINDS = ("worker", "server", "driver", "store")
TIMING = "seconds"  # metrics whose names hold this are wall-clock timings and differ run to run


def sweep_config(name: str, root: Path, cache: Path, seeds: int, rounds: int) -> Path:
    config = {"name": name, "datasets": ["synth-shapes"],
              "dataset_options": {"synth-shapes": {"sizes": {"train": 300, "test": 100}}},
              "methods": ["random+linear_probe", "entropy+linear_probe"],
              "budgets": {"b1": {"kind": "per_class", "multiple": 1}}, "seeds": list(range(seeds)), "rounds": rounds,
              "workdir": str(root / name), "cache": str(cache), "retries": 20,
              "resources": {"cpu": 0.5, "driver_cpu": 0.1}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Driver:
    """The sweep's driver process, started and restarted with one command; logs one file per start."""

    def __init__(self, name: str, command: list[str], env: dict, logs: Path):
        self.name, self.command, self.env, self.logs = name, command, env, logs
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.logs / f"{self.name}-driver-{self.starts:02d}.log").open("w")
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def finish(self, attempts: int = 10, timeout: float = 900) -> int:
        """Wait for the driver; rerun it while it exits non-zero (at most ``attempts`` more times)."""
        for _ in range(attempts + 1):
            rc = self.proc.wait(timeout=timeout)
            if rc == 0:
                return 0
            self.start()
        return self.proc.wait(timeout=timeout)


class FaultInjector:
    def __init__(self, cluster, server, driver: Driver, trials_dir: Path, rng: random.Random):
        self.cluster, self.server, self.driver, self.trials_dir, self.rng = cluster, server, driver, trials_dir, rng
        self.injected: Counter = Counter()

    def inject(self, kind: str) -> str:
        """Inject one fault of ``kind`` (or of a kind that applies now) and return the kind injected."""
        states = sorted(self.trials_dir.glob("*/round-state.npz"))
        if kind == "store" and not states:
            kind = "worker"
        getattr(self, f"_{kind}")(states)
        self.injected[kind] += 1
        return kind

    def _worker(self, states) -> None:
        from orchestrator.rehearsal import add_worker

        victim = self.rng.choice(sorted(self.cluster.worker_nodes, key=lambda n: n.unique_id))
        self.cluster.remove_node(victim, allow_graceful=False)
        add_worker(self.cluster)

    def _server(self, states) -> None:
        self.server.kill()
        time.sleep(self.rng.uniform(1.0, 4.0))
        self.server.start()

    def _driver(self, states) -> None:
        self.driver.kill()
        self.driver.start()

    def _store(self, states) -> None:
        path = self.rng.choice(states)
        try:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        except FileNotFoundError:  # replaced by the trial at this very moment: truncate what is there now
            path.write_bytes(b"")


def run_metrics(uri: str, experiment: str) -> dict[str, list[dict]]:
    """config hash -> [per run: metric name -> [(step, value), ...]] for every trial run of the experiment."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import trial_runs

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    by_hash: dict[str, list[dict]] = {}
    for run in trial_runs(client, exp.experiment_id) if exp else []:
        metrics = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                   for key in run.data.metrics if TIMING not in key}
        by_hash.setdefault(run.data.tags["alvlm.config_hash"], []).append(metrics)
    return by_hash


def compare(clean: dict[str, list[dict]], faulted: dict[str, list[dict]]) -> dict:
    """Identical runs, rounds lost and runs / rounds duplicated, the faulted sweep against the clean one."""
    identical = lost = duplicated_rounds = 0
    for h, (reference,) in clean.items():
        runs = faulted.get(h, [])
        if not runs:
            lost += len(reference.get("round", []))
            continue
        got = runs[0]
        steps = [s for s, _ in got.get("round", [])]
        duplicated_rounds += len(steps) - len(set(steps))
        lost += len({s for s, _ in reference.get("round", [])} - set(steps))
        identical += all(_same_history(got.get(k, []), v) for k, v in reference.items())
    duplicated_runs = sum(len(runs) - 1 for runs in faulted.values())
    return {"runs": len(clean), "identical": identical, "rounds_lost": lost, "runs_duplicated": duplicated_runs,
            "rounds_duplicated": duplicated_rounds}


def _same_history(a: list[tuple], b: list[tuple]) -> bool:
    """Equal step by step, a NaN equal to a NaN (a metric undefined in a round is NaN in both runs)."""
    a, b = sorted(a, key=lambda m: m[0]), sorted(b, key=lambda m: m[0])
    return len(a) == len(b) and all(sa == sb and (va == vb or (math.isnan(va) and math.isnan(vb)))
                                    for (sa, va), (sb, vb) in zip(a, b))


def timed_sweep(command: list[str], env: dict, logs: Path) -> float:
    driver = Driver("clean", command, env, logs)
    t0 = time.time()
    driver.start()
    if driver.finish(attempts=0) != 0:
        raise SystemExit(f"the fault-free sweep failed; see {logs}")
    return time.time() - t0


def faulted_sweep(command, env, logs, cluster, server, trials_dir, args, interval: float) -> tuple[float, dict, int]:
    rng = random.Random(args.seed)
    driver = Driver("faulted", command, env, logs)
    injector = FaultInjector(cluster, server, driver, trials_dir, rng)
    t0 = time.time()
    driver.start()
    while sum(injector.injected.values()) < args.faults:
        time.sleep(rng.uniform(0.5, 1.5) * interval)
        if not driver.running():
            if driver.proc.returncode == 0:
                break  # the sweep finished before every fault was injected
            driver.start()  # it exited on a fault (e.g. started while the server was down): run it again
            continue
        print(f"  fault {sum(injector.injected.values()) + 1:2d}: {injector.inject(rng.choice(args.kinds))}",
              file=sys.stderr, flush=True)
    rc = driver.finish()
    if rc != 0:
        raise SystemExit(f"the faulted sweep did not finish (exit {rc}); see {logs}")
    return time.time() - t0, dict(injector.injected), driver.starts


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {', '.join(KINDS)}")
    ap.add_argument("--seeds", type=int, default=10, help="seeds per method (two methods: 20 runs by default)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown fault kind(s) {unknown}; known: {', '.join(KINDS)}")

    from orchestrator.rehearsal import MlflowServer, local_cluster

    root = args.out or Path(tempfile.mkdtemp(prefix="alvlm-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    cluster = local_cluster(workers=2, worker_cpus=1)
    server = MlflowServer(root / "mlflow").start()
    os.environ.update(server.credentials)  # this process reads both experiments back at the end
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **server.credentials,
               "ALVLM_STORAGE_PATH": str(root / "shared" / "ray_results")}
        commands = {name: [sys.executable, "experiments/sweep.py",
                           str(sweep_config(name, root, root / "cache", args.seeds, args.rounds)),
                           "--address", cluster.address, "--tracking-uri", server.uri, "--no-report"]
                    for name in ("clean", "faulted")}
        clean_s = timed_sweep(commands["clean"], env, root / "logs")
        interval = max(1.0, 0.5 * clean_s / max(args.faults, 1))
        faulted_s, injected, starts = faulted_sweep(commands["faulted"], env, root / "logs", cluster, server,
                                                    root / "faulted" / "trials", args, interval)
        result = compare(run_metrics(server.uri, "clean"), run_metrics(server.uri, "faulted"))
    finally:
        server.kill()
        cluster.shutdown()
    summary = {"faults_requested": args.faults, "faults_injected": sum(injected.values()), "by_kind": injected,
               **result, "driver_starts": starts, "clean_seconds": round(clean_s, 1),
               "faulted_seconds": round(faulted_s, 1), "overhead": round(faulted_s / clean_s, 2),
               "seed": args.seed, "folder": str(root)}
    report(summary)
    print(json.dumps(summary))
    return summary


def report(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Sweep under {summary['faults_injected']} random faults (seed {summary['seed']})")
    for column in ("measure", "value"):
        table.add_column(column)
    rows = [("faults injected", f"{summary['faults_injected']} of {summary['faults_requested']} "
             f"({', '.join(f'{k} {v}' for k, v in sorted(summary['by_kind'].items()))})"),
            ("runs with identical metrics", f"{summary['identical']} of {summary['runs']}"),
            ("rounds lost", str(summary["rounds_lost"])), ("runs duplicated", str(summary["runs_duplicated"])),
            ("rounds duplicated", str(summary["rounds_duplicated"])), ("driver starts", str(summary["driver_starts"])),
            ("wall clock, fault-free / faulted", f"{summary['clean_seconds']} s / {summary['faulted_seconds']} s "
             f"(x{summary['overhead']})")]
    for row in rows:
        table.add_row(*row)
    Console(stderr=True).print(table)


if __name__ == "__main__":
    main()
