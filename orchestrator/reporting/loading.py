"""Reading a sweep's trials from MLflow into one long DataFrame (the only reader of the sweep's schema).

Schema (written by :mod:`orchestrator.tracking`): one MLflow experiment per sweep; parent runs tagged
``alvlm.role = "sweep"``; one child run per trial tagged ``alvlm.role = "trial"``, ``mlflow.parentRunId`` and
``alvlm.config_hash``, with params ``method``, ``dataset``, ``budget``, ``seed``, ``metric`` and others;
per-round metrics logged with ``step = round`` (round 0 is before any label).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import pandas as pd

from orchestrator.tracking import HASH, ROLE, trial_runs

log = logging.getLogger(__name__)

ROLE_TAG = ROLE
HASH_TAG = HASH
ERROR_TAG = "alvlm.error"
PARENT_TAG = "mlflow.parentRunId"
UNFINISHED_STATUSES = ("FAILED", "RUNNING", "KILLED", "SCHEDULED")

ID_COLUMNS = ["dataset", "method", "budget", "seed", "round", "labels_spent", "labels_total",
              "metric_name", "value"]
RUN_COLUMNS = ["run_id", "status", "config_hash", "acquisition", "adaptation", "encoder",
               "evaluated_model", "selector_model", "parent_run_id"]
# Logged by the sweep but not a score: ``round`` duplicates the step, so fetching it is waste.
SKIPPED_KEYS = {"round"}


class ExperimentNotFoundError(LookupError):
    """The experiment name is not in the store; carries the names that are, to fix a typo fast."""

    def __init__(self, name: str, available: list[str]):
        self.name = name
        self.available = available
        listing = ", ".join(repr(n) for n in available) or "(none)"
        super().__init__(f"MLflow experiment {name!r} not found; existing experiments: {listing}")


def load_trials(
    tracking_uri: str,
    experiment: str,
    include_unfinished: bool = False,
    metrics: Iterable[str] | None = None,
    include_class_acc: bool = False,
    max_workers: int = 4,
) -> pd.DataFrame:
    """Read every trial of a sweep into one long DataFrame, one row per (run, round).

    Columns: ``dataset, method, budget, seed, round, labels_spent, labels_total, metric_name,
    value`` (``value`` is the run's default metric, raw units), run bookkeeping (``run_id``,
    ``status``, ...) and one column per other scalar metric. ``metrics=None`` fetches every
    scalar metric the runs logged; an explicit (possibly empty) list fetches only those on top
    of the three needed for tables, which is what a report should do on a big sweep: the cost
    is one ``get_metric_history`` call per run per key. ``class_acc/<i>`` keys (one per class,
    hundreds for ImageNet) are skipped unless ``include_class_acc``.

    Only FINISHED runs are read unless ``include_unfinished``, which adds the rounds that the
    FAILED / RUNNING (interrupted) runs completed. ``df.attrs`` keeps ``status_counts`` (all
    trial runs by status) and ``duplicates`` (dropped run ids) for the caller's messages.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ExperimentNotFoundError(experiment, _experiment_names(client))
    runs = trial_runs(client, exp.experiment_id)
    status_counts = dict(Counter(r.info.status for r in runs))
    runs, dropped = _deduplicate(runs)
    allowed = ("FINISHED",) + (UNFINISHED_STATUSES if include_unfinished else ())
    runs = [r for r in runs if r.info.status in allowed]
    wanted = None if metrics is None else set(metrics)
    jobs = [(r, key) for r in runs for key in _keys_to_fetch(r, wanted, include_class_acc)]
    histories = _fetch_histories(client, [(r.info.run_id, k) for r, k in jobs], max_workers)
    rows = [row for r in runs for row in _run_rows(r, histories.get(r.info.run_id, {}))]
    df = _frame(rows)
    df.attrs.update(status_counts=status_counts, duplicates=dropped, experiment=experiment)
    return df


def _experiment_names(client) -> list[str]:
    """All active experiment names, following pagination, for the not-found message."""
    names, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        names += [e.name for e in page]
        token = page.token
        if not token:
            return sorted(names)


def _config_hash(run) -> str:
    """The trial's identity; a run without one is its own identity (never merged)."""
    return run.data.tags.get(HASH_TAG) or run.data.params.get("config_hash") or run.info.run_id


def _rounds_done(run) -> float:
    """Last logged round, from the run's latest metrics (no extra request)."""
    latest = run.data.metrics
    for key in ("round", run.data.params.get("metric", "top1"), "labels_spent"):
        if key in latest and not math.isnan(latest[key]):
            return latest[key]
    return -1.0


def _deduplicate(runs: list) -> tuple[list, list[str]]:
    """Keep one run per config_hash: FINISHED first, then most rounds, then the latest start.

    The sweep never reuses a config_hash, but a resumed or hand-launched sweep could; counting
    the same configuration twice would silently shrink its std, so keep one and warn.
    """
    groups: dict[str, list] = {}
    for run in runs:
        groups.setdefault(_config_hash(run), []).append(run)
    kept, dropped = [], []
    for config_hash, group in groups.items():
        group.sort(key=lambda r: (r.info.status == "FINISHED", _rounds_done(r), r.info.start_time or 0),
                   reverse=True)
        kept.append(group[0])
        if len(group) > 1:
            losers = [r.info.run_id for r in group[1:]]
            dropped += losers
            msg = (f"config_hash {config_hash} appears in {len(group)} trial runs; keeping "
                   f"{group[0].info.run_id} ({group[0].info.status}), ignoring {', '.join(losers)}")
            log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return kept, dropped


def _keys_to_fetch(run, wanted: set[str] | None, include_class_acc: bool) -> list[str]:
    """Metric keys worth one history request each for this run."""
    required = [run.data.params.get("metric", "top1"), "labels_spent", "labels_total"]
    logged = run.data.metrics.keys()
    if wanted is None:
        extra = [k for k in logged if k not in SKIPPED_KEYS
                 and (include_class_acc or not k.startswith("class_acc/"))]
    else:
        extra = [k for k in wanted if k in logged]
    return list(dict.fromkeys(k for k in required + sorted(extra) if k in logged))


def _fetch_histories(client, jobs: list[tuple[str, str]], max_workers: int) -> dict:
    """``{run_id: {key: {step: value}}}``; requests run in a few threads since each is a round-trip.

    When a step was logged twice (a retried round), the later timestamp wins.
    """

    def fetch(job):
        run_id, key = job
        return run_id, key, client.get_metric_history(run_id, key)

    out: dict[str, dict[str, dict[int, float]]] = {}
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        for run_id, key, history in pool.map(fetch, jobs):
            steps: dict[int, float] = {}
            for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
                steps[int(m.step)] = float(m.value)
            out.setdefault(run_id, {})[key] = steps
    return out


def _run_rows(run, history: dict[str, dict[int, float]]) -> list[dict]:
    """One dict per completed round of one run.

    A round counts as completed when both its default metric and ``labels_spent`` were logged:
    an interrupted run may have logged part of its last round, which must not enter a mean.
    """
    params, tags = run.data.params, run.data.tags
    # the tracker tags every run with these four when it creates it; a store written before it completed
    # runs that a killed driver left without parameters still has the tags to group them by
    labels = {key: params.get(key, tags.get(key)) for key in ("dataset", "method", "budget", "seed")}
    metric = params.get("metric", "top1")
    score, spent = history.get(metric, {}), history.get("labels_spent", {})
    base = {
        "dataset": labels["dataset"], "method": labels["method"],
        "budget": labels["budget"], "seed": _as_int(labels["seed"]),
        "metric_name": metric, "run_id": run.info.run_id, "status": run.info.status,
        "config_hash": _config_hash(run), "acquisition": params.get("acquisition"),
        "adaptation": params.get("adaptation"), "encoder": params.get("encoder"),
        "evaluated_model": params.get("evaluated_model"), "selector_model": params.get("selector_model"),
        "parent_run_id": tags.get(PARENT_TAG),
    }
    rows = []
    for step in sorted(set(score) & set(spent)):
        row = dict(base, round=step, value=score[step], labels_spent=spent[step],
                   labels_total=history.get("labels_total", {}).get(step, math.nan))
        for key, values in history.items():
            if key not in row:
                row[key] = values.get(step, math.nan)
        rows.append(row)
    return rows


def _as_int(text):
    """Seeds are params (strings); keep non-integers as they are rather than fail."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return text


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame with the fixed columns first, metric columns after, in a stable order."""
    df = pd.DataFrame(rows)
    for col in ID_COLUMNS + RUN_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(dtype=float if col in ("value", "labels_spent", "labels_total") else object)
    rest = sorted(c for c in df.columns if c not in ID_COLUMNS + RUN_COLUMNS)
    df = df[ID_COLUMNS + rest + RUN_COLUMNS]
    if len(df):
        df = df.sort_values(["dataset", "budget", "method", "seed", "round"], kind="stable")
        df["round"] = df["round"].astype(int)
    return df.reset_index(drop=True)
