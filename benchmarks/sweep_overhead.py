"""Orchestration cost of a sweep next to the work its trials do.

A grid of trivial trials (random+zeroshot on a tiny synthetic pool) runs
through the real stack: Tune trials, Ray tasks per phase, checkpoints, the
trial store and MLflow on SQLite. Per round, the overhead is what the
orchestrator adds around the work: the Ray dispatch of the select and adapt
tasks, the checkpoint + tune.report of the round, and the driver's MLflow
logging. Trial start is the time a trial slot spends before the trial's
first round begins: placement group and actor start-up (measured as slot
time not spent inside a started trial) plus the latency to the first
result. The last line is JSON.

    python benchmarks/sweep_overhead.py [--trials 8 --rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrent", type=int, default=2)
    args = ap.parse_args(argv)

    from ray.tune import Callback
    from rich.console import Console
    from rich.table import Table

    from orchestrator.config import SweepConfig
    from orchestrator.sweep import run_sweep

    class Timeline(Callback):
        def __init__(self):
            self.started, self.first_result, self.ended, self.results = {}, {}, {}, []
            self.loop_start = None

        def setup(self, **info):
            self.loop_start = time.perf_counter()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.ended[trial.trial_id] = time.perf_counter()

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started[trial.trial_id] = time.perf_counter()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.first_result.setdefault(trial.trial_id, (time.perf_counter(), result["al"]["seconds_round"]))
            self.results.append(result)

    timeline = Timeline()
    with tempfile.TemporaryDirectory() as work:
        config = SweepConfig(
            name="overhead", datasets=["synth-shapes"], methods=["random+zeroshot"],
            dataset_options={"synth-shapes": {"sizes": {"train": 500, "test": 200}}},
            budgets={"b": {"kind": "per_round", "count": 10}}, seeds=list(range(args.trials)),
            rounds=args.rounds, workdir=work, cache=str(Path(work) / "cache"),
            max_concurrent=args.concurrent)
        outcome = run_sweep(config, extra_callbacks=[timeline])

    rounds = [r for r in timeline.results if r["round"] > 0]
    dispatch = [(r["al"]["seconds_select"] - r["al"]["seconds_select_work"])
                + (r["al"]["seconds_adapt"] - r["al"]["seconds_adapt_work"]) for r in rounds]
    persist = [r["persist_seconds_prev"] for r in timeline.results if r["round"] > 0]
    mlflow_log = outcome.mlflow_log_seconds
    work = [r["al"]["seconds_select_work"] + r["al"]["seconds_adapt_work"] + r["al"]["seconds_evaluate"] for r in rounds]
    first_latency = [timeline.first_result[t][0] - timeline.started[t] - timeline.first_result[t][1]
                     for t in timeline.started if t in timeline.first_result]
    # Tune calls on_trial_start once the trial's actor runs, so placement-group and actor start-up
    # hide before it. Count them as the slot time not spent inside a started trial, per trial.
    busy = sum(timeline.ended[t] - timeline.started[t] for t in timeline.ended)
    wall = max(timeline.ended.values()) - timeline.loop_start
    idle_per_trial = max(0.0, (wall * min(args.concurrent, args.trials) - busy) / len(timeline.ended))
    starts = [idle_per_trial + f for f in first_latency]
    med = statistics.median
    figures = {
        "trials": args.trials, "rounds": args.rounds,
        "per_round_overhead_ms_median": round(1000 * (med(dispatch) + med(persist) + med(mlflow_log)), 1),
        "task_dispatch_ms_median": round(1000 * med(dispatch), 1),
        "checkpoint_report_ms_median": round(1000 * med(persist), 1),
        "mlflow_log_ms_median": round(1000 * med(mlflow_log), 1),
        "work_per_round_ms_median": round(1000 * med(work), 1),
        "overhead_over_work": round((med(dispatch) + med(persist) + med(mlflow_log)) / max(med(work), 1e-9), 2),
        "trial_start_s_median": round(med(starts), 2),
        "trial_start_s_max": round(max(starts), 2),
        "trial_schedule_and_actor_start_s_mean": round(idle_per_trial, 2),
        "trial_first_round_latency_s_median": round(med(first_latency), 3),
        "sweep_seconds": round(outcome.seconds, 1),
    }
    table = Table(title=f"sweep overhead: {args.trials} trivial trials x {args.rounds} rounds")
    table.add_column("figure")
    table.add_column("median", justify="right")
    for key in ("per_round_overhead_ms_median", "task_dispatch_ms_median", "checkpoint_report_ms_median",
                "mlflow_log_ms_median", "work_per_round_ms_median", "overhead_over_work", "trial_start_s_median"):
        table.add_row(key, str(figures[key]))
    Console().print(table)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
