"""MLflow tracking, written only from the sweep driver.

Trials never talk to MLflow: the Tune driver receives every round's result
and logs it here. One writer means SQLite never locks up, workers need no
access to the tracking server, and idempotence is easy: a run is found by its
config-hash tag, and a round is logged only if it is newer than the run's
last logged round, so resumed sweeps neither duplicate nor lose anything.
"""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

from ray.tune import Callback

ROLE, HASH, ERROR = "alvlm.role", "alvlm.config_hash", "alvlm.error"
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
REPO_ROOT = Path(__file__).resolve().parents[1]


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def trial_params(trial: dict) -> dict[str, str]:
    method = trial["method"]
    return {
        "method": method["name"], "acquisition": method["acquisition"], "adaptation": method["adaptation"],
        "dataset": trial["dataset"], "budget": trial["budget_name"], "seed": str(trial["seed"]),
        "encoder": trial["encoder"], "config_hash": trial["config_hash"], "rounds": str(trial["rounds"]),
        "cold_start": trial["cold_start"], "metric": trial.get("metric", "top1"), "git_revision": git_revision(),
        **model_roles(method),
    }


def model_roles(method: dict) -> dict[str, str]:
    """Which model chose the rows and which one the metrics belong to, when that is not simply the learner.

    Logged only for methods with a ``selector`` or a learner trained on the oracle's labels alone, so runs
    of other methods keep their parameters.
    """
    selector = method.get("selector")
    if selector is None and method.get("adaptation_labels", "all") == "all":
        return {}
    labels = {"all": "all labels", "queried": "queried labels only"}
    evaluated = f"{method['adaptation']} ({labels[method.get('adaptation_labels', 'all')]})"
    roles = {"evaluated_model": evaluated}
    if selector is not None:
        roles.update(selector=selector["adaptation"],
                     selector_model=f"{selector['adaptation']} ({labels[method.get('selector_labels', 'all')]})")
    return roles


def run_name(trial: dict) -> str:
    """What a person reads in MLflow's runs table: method | dataset | budget | seed."""
    return f"{trial['method']['name']} | {trial['dataset']} | {trial['budget_name']} | seed {trial['seed']}"


def trial_runs(client, experiment_id: str, page_size: int = 1000) -> list:
    """Every active trial run of an experiment, oldest first, following MLflow's pagination.

    The one search of the schema, shared by the writer (finding runs to resume) and the report (reading
    them). ``mlflow.search_runs`` would do the paging too, but it reads the process-global tracking URI,
    and a library should not set that behind its caller's back.
    """
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE}` = 'trial'",
                                  max_results=page_size, order_by=["attributes.start_time ASC"], page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Keep a SQLite store's artifacts beside its database (MLflow would use ./mlruns of the CWD)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts" / experiment).resolve().as_uri()
    return None  # a tracking server decides


class TrialTracker:
    """Find-or-create one MLflow child run per trial and log its rounds exactly once."""

    def __init__(self, tracking_uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=artifact_location(tracking_uri, experiment))
        if exp is None or exp.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
            # MLflow 3 opens an untagged experiment on its GenAI traces page; this tag opens the runs table.
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        self.refresh()

    def refresh(self) -> None:
        """Re-read every trial run from the server: what it holds, not what this process believes it sent.

        Called at start-up and after a tracking-server outage, where a call may have been committed but its
        answer lost: the retry then finds the run (no second run for one trial) and its last round (no round
        logged twice).
        """
        self._runs: dict[str, str] = {}
        self._last_round: dict[str, int] = {}
        self._status: dict[str, str] = {}
        self._unchecked: dict[str, set[str]] = {}  # runs whose parameters this process has not completed yet
        for run in trial_runs(self.client, self.experiment_id):
            h = run.data.tags.get(HASH)
            if h and h not in self._runs:
                self._runs[h] = run.info.run_id
                self._last_round[h] = int(run.data.metrics.get("round", -1))
                self._status[h] = run.info.status
                self._unchecked[h] = set(run.data.params)

    def start_sweep(self, name: str, config: dict) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"{name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                     tags={ROLE: "sweep", "alvlm.sweep": name})
        self.client.log_dict(run.info.run_id, config, "sweep-config.json")
        return run.info.run_id

    def log_sweep_metric(self, run_id: str, key: str, value: float) -> None:
        self.client.log_metric(run_id, key, value)

    def end_sweep(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def finished(self, config_hash: str) -> bool:
        return self._status.get(config_hash) == "FINISHED"

    def last_round(self, config_hash: str) -> int:
        return self._last_round.get(config_hash, -1)

    def run_for(self, trial: dict, parent_run_id: str | None) -> str:
        h = trial["config_hash"]
        if h in self._runs:
            self._complete(h, trial)
            if self._status.get(h) != "RUNNING":
                self.client.update_run(self._runs[h], status="RUNNING")
                self._status[h] = "RUNNING"
            return self._runs[h]
        tags = {ROLE: "trial", HASH: h, "method": trial["method"]["name"], "dataset": trial["dataset"],
                "budget": trial["budget_name"], "seed": str(trial["seed"])}  # columns a person filters on
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name(trial), tags=tags)
        self._runs[h], self._last_round[h], self._status[h] = run.info.run_id, -1, "RUNNING"
        self._unchecked[h] = set()
        self._complete(h, trial)
        return run.info.run_id

    def _complete(self, config_hash: str, trial: dict) -> None:
        """Log the parameters and config a run lacks.

        MLflow cannot create a run and its parameters in one call, so a driver killed between the two leaves
        a run with its tags and nothing else; the next driver finds that run by its tag and must finish it,
        or the run reaches FINISHED (or FAILED) without the method, dataset and seed the report groups by.
        Only missing names are logged: MLflow refuses to change a logged parameter (a resumed driver may run
        a newer ``git_revision``). Each run is checked once per :meth:`refresh`, not every round: the
        parameters cost a ``git rev-parse``.
        """
        from mlflow.entities import Param

        held = self._unchecked.get(config_hash)
        if held is None:
            return
        missing = {k: v for k, v in trial_params(trial).items() if k not in held}
        run_id = self._runs[config_hash]
        if "config_hash" in missing:  # config.json goes first, so a run holding its parameters holds it too
            self.client.log_dict(run_id, trial, "config.json")
        if missing:
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in missing.items()])
        del self._unchecked[config_hash]  # after the calls: an outage before them leaves the run to check again

    def log_round(self, trial: dict, metrics: dict, selected: list[int] | None, parent_run_id: str | None) -> bool:
        """Log one round's metrics (step = round) unless that round is already logged."""
        from mlflow.entities import Metric

        h = trial["config_hash"]
        run_id = self.run_for(trial, parent_run_id)
        r = int(metrics["round"])
        if r <= self._last_round.get(h, -1):
            return False
        if selected is not None and r > 0:  # before the metrics: the "round" metric marks the round as logged
            self.client.log_dict(run_id, {"round": r, "queried": list(map(int, selected))},
                                 f"selections/round_{r:03d}.json")
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, r) for k, v in priced(metrics, trial).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isinf(float(v))]
        batch.sort(key=lambda m: m.key == "round")  # the marker goes in the last batch
        for start in range(0, len(batch), 900):  # MLflow's batch limit is 1000 metrics
            self.client.log_batch(run_id, metrics=batch[start: start + 900])
        self._last_round[h] = r
        return True

    def finish(self, trial: dict) -> None:
        h = trial["config_hash"]
        self.client.set_terminated(self._runs[h], status="FINISHED")
        self._status[h] = "FINISHED"

    def fail(self, trial: dict, message: str, parent_run_id: str | None = None) -> None:
        run_id = self.run_for(trial, parent_run_id)
        self.client.set_tag(run_id, ERROR, message[-4900:])
        self.client.set_terminated(run_id, status="FAILED")
        self._status[trial["config_hash"]] = "FAILED"


def priced(metrics: dict, trial: dict) -> dict:
    """The round's metrics plus ``blackbox_cost`` (queries / 1,000 x the price) when the sweep prices its black box."""
    price = (trial.get("blackbox") or {}).get("cost_per_1000")
    if price is None or "cost_blackbox_queries" not in metrics:
        return metrics
    return {**metrics, "blackbox_cost": float(metrics["cost_blackbox_queries"]) / 1000.0 * float(price)}


class MLflowTuneCallback(Callback):
    """Bridges Tune's driver-side events to :class:`TrialTracker`, through an :class:`OutageQueue`.

    A tracking server that goes away mid-sweep stops no trial: its calls wait in the queue, in order, and
    are replayed when it answers again (see :mod:`.tracking_outage`).
    """

    def __init__(self, tracker: TrialTracker, parent_run_id: str, say=None):
        from .tracking_outage import OutageQueue

        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.queue = OutageQueue(tracker, say=say)
        self.log_seconds: list[float] = []

    def on_trial_start(self, iteration, trials, trial, **info):
        self.queue.call("run_for", trial.config["trial"], self.parent_run_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "al" not in result:
            return
        t0 = time.perf_counter()
        self.queue.call("log_round", trial.config["trial"], result["al"], result.get("queried"), self.parent_run_id)
        self.log_seconds.append(time.perf_counter() - t0)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.queue.call("finish", trial.config["trial"])

    def on_trial_error(self, iteration, trials, trial, **info):
        self.queue.call("fail", trial.config["trial"], _error_text(trial), self.parent_run_id)


class ProgressCallback(Callback):
    """A rich progress bar on the driver: trials done (failed ones counted) and rounds reported.

    The bar is built in ``setup`` and left out of the pickled state: Tune
    pickles its callbacks with the Tuner, and a live bar holds locks.
    """

    def __init__(self, total_trials: int, total_rounds: int, console=None):
        self.total_trials, self.total_rounds, self.console = total_trials, total_rounds, console
        self.progress = None

    def __getstate__(self):
        return {**self.__dict__, "progress": None, "console": None}

    def setup(self, **info):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console)
        self.trials = self.progress.add_task("trials", total=self.total_trials)
        self.rounds = self.progress.add_task("rounds", total=self.total_rounds)
        self.progress.start()

    def _advance(self, task) -> None:
        if self.progress is not None:
            self.progress.advance(task)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._advance(self.rounds)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._advance(self.trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._advance(self.trials)

    def on_experiment_end(self, trials, **info):
        if self.progress is not None:
            self.progress.stop()


def _error_text(trial) -> str:
    for attr in ("error_msg", "error_file"):
        value = getattr(trial, attr, None)
        if value:
            path = Path(str(value))
            if attr == "error_file" and path.exists():
                return path.read_text()
            return str(value)
    return "trial failed (see the Tune logs)"
