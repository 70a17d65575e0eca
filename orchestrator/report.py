"""Comparison reports of an active-learning sweep, built from MLflow alone.

The sweep is the only writer and this module the only reader of the schema below, so a report
can be rebuilt at any time (on another machine, after the Ray cluster is gone) from the
tracking store:

* one MLflow experiment per sweep; parent runs tagged ``alvlm.role = "sweep"``;
* one child run per trial, tagged ``alvlm.role = "trial"``, ``mlflow.parentRunId`` and
  ``alvlm.config_hash``, with params ``method``, ``dataset``, ``budget``, ``seed``, ``metric``
  (the dataset's default metric key) and others;
* per-round metrics logged with ``step = round`` (round 0 is before any label), among them
  ``labels_spent``, ``labels_total`` and the scores of :mod:`orchestrator.metrics`.

Pipeline: :func:`load_trials` (MLflow -> long DataFrame) -> :func:`comparison_tables`
(DataFrame -> display tables whose numbers live in ``table.attrs``) -> renderers
(:func:`to_markdown`, :func:`to_csv`, :func:`to_latex`, :func:`rich_table`) and
:func:`plot_learning_curves`; :func:`write_report` writes them all and
:func:`log_report_to_mlflow` attaches them to the sweep's parent run.

Conventions chosen once, here:

* Accuracy-like metrics (``top1``, ``auc``, ``macro_f1``, ``worst_class_acc``, ``class_acc/*``,
  ``ece``) are shown in percent with one decimal.
* ``std`` is the sample standard deviation over seeds (``ddof=1``); with one seed it is
  undefined and the cell shows the mean alone. A NaN score (e.g. AUC undefined) is left out of
  its cell's mean, and ``attrs["n_seeds"]`` says how many seeds each cell really has.
* The best mean of each column is the one that is best *as displayed* (rounded to one
  decimal), so two methods that print the same number are both marked.
* Tables averaged over datasets average the per-dataset seed means; their "std" is the mean of
  the per-dataset stds (a typical seed spread, not a spread across datasets), as their caption
  says. A method is averaged only where every dataset of the budget has a value, so a missing
  dataset cannot flatter it.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

__all__ = [
    "ExperimentNotFoundError",
    "load_trials",
    "comparison_tables",
    "to_markdown",
    "to_csv",
    "to_latex",
    "rich_table",
    "plot_learning_curves",
    "write_report",
    "log_report_to_mlflow",
    "FORMATS",
]

log = logging.getLogger(__name__)

ROLE_TAG = "alvlm.role"
HASH_TAG = "alvlm.config_hash"
ERROR_TAG = "alvlm.error"
PARENT_TAG = "mlflow.parentRunId"
UNFINISHED_STATUSES = ("FAILED", "RUNNING", "KILLED", "SCHEDULED")

ID_COLUMNS = ["dataset", "method", "budget", "seed", "round", "labels_spent", "labels_total",
              "metric_name", "value"]
RUN_COLUMNS = ["run_id", "status", "config_hash", "acquisition", "adaptation", "encoder",
               "evaluated_model", "selector_model", "parent_run_id"]
# Logged by the sweep but not a score: ``round`` duplicates the step, so fetching it is waste.
SKIPPED_KEYS = {"round"}
PERCENT_METRICS = {"top1", "macro_f1", "auc", "worst_class_acc", "ece"}
LOWER_IS_BETTER = {"ece", "nll"}
FORMATS = {"md": ".md", "csv": ".csv", "latex": ".tex"}
MISSING = "—"


class ExperimentNotFoundError(LookupError):
    """The experiment name is not in the store; carries the names that are, to fix a typo fast."""

    def __init__(self, name: str, available: list[str]):
        self.name = name
        self.available = available
        listing = ", ".join(repr(n) for n in available) or "(none)"
        super().__init__(f"MLflow experiment {name!r} not found; existing experiments: {listing}")


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


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
    runs = _search_trial_runs(client, exp.experiment_id)
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


def _search_trial_runs(client, experiment_id: str) -> list:
    """Every active trial run of the experiment (pages of 1000; parent runs are excluded)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial'",
                                  max_results=1000, order_by=["attributes.start_time ASC"],
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


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
    metric = params.get("metric", "top1")
    score, spent = history.get(metric, {}), history.get("labels_spent", {})
    base = {
        "dataset": params.get("dataset"), "method": params.get("method"),
        "budget": params.get("budget"), "seed": _as_int(params.get("seed")),
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


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def _scale(metric: str) -> float:
    """Percent for accuracy-like metrics, raw units otherwise."""
    return 100.0 if metric in PERCENT_METRICS or metric.startswith("class_acc/") else 1.0


def _higher_is_better(metric: str) -> bool:
    return not (metric in LOWER_IS_BETTER or metric.startswith("seconds_"))


def _fmt_n(n: float) -> str:
    """Label budgets as integers when they are (per-class schedules usually are)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "?"
    return f"{n:.0f}" if abs(n - round(n)) < 1e-9 else f"{n:.1f}"


def _round_label(r: int, n: float) -> str:
    return f"r{r} (n={_fmt_n(n)})"


def _seed_stats(group: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(mean, std, n_seeds) frames, methods x rounds, in display units, over seeds."""
    metric = group["metric_name"].iloc[0]
    values = group.assign(v=group["value"] * _scale(metric))
    grouped = values.groupby(["method", "round"])["v"]
    mean = grouped.mean().unstack("round")
    std = grouped.std(ddof=1).unstack("round")
    count = grouped.count().unstack("round")
    return mean, std, count


def _best_mask(mean: pd.DataFrame, higher: bool) -> pd.DataFrame:
    """Best per column on the displayed (1-decimal) value, so printed ties are all marked."""
    shown = mean.round(1)
    target = shown.max() if higher else shown.min()
    return shown.eq(target, axis=1) & shown.notna()


def _cell(mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return MISSING
    if std is None or math.isnan(std):
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {std:.1f}"


def _make_table(mean, std, n_seeds, labels, title, caption, higher, **extra) -> pd.DataFrame:
    """Display frame (strings) carrying its numbers, best mask and caption in ``attrs``."""
    mean, std, n_seeds = (f.copy() for f in (mean, std, n_seeds))
    for frame in (mean, std, n_seeds):
        frame.columns = labels
        frame.index.name = "method"
        frame.columns.name = None
    best = _best_mask(mean, higher)
    display = pd.DataFrame(
        [[_cell(mean.iat[i, j], std.iat[i, j]) for j in range(mean.shape[1])]
         for i in range(mean.shape[0])],
        index=mean.index, columns=labels)
    display.attrs.update(mean=mean, std=std, n_seeds=n_seeds, best=best, title=title,
                         caption=caption, higher_is_better=higher, **extra)
    return display


def _seeds_phrase(n_seeds: pd.DataFrame) -> str:
    counts = n_seeds.stack()
    counts = counts[counts > 0]
    if counts.empty:
        return "no seeds"
    lo, hi = int(counts.min()), int(counts.max())
    return f"{hi} seeds" if lo == hi else f"{lo}–{hi} seeds (NaN scores left out)"


def _dataset_table(dataset: str, budget: str, group: pd.DataFrame) -> pd.DataFrame:
    """Methods x rounds for one dataset and budget; n = mean labels_spent over all its runs."""
    metric = group["metric_name"].iloc[0]
    mean, std, count = _seed_stats(group)
    spent = group.groupby("round")["labels_spent"].mean()
    rounds = list(mean.columns)
    labels = [_round_label(r, spent.get(r, math.nan)) for r in rounds]
    unit = " (%)" if _scale(metric) == 100 else ""
    caption = (f"{dataset}, budget {budget}: {metric}{unit}, mean ± std over "
               f"{_seeds_phrase(count)}; n = labels spent (mean over runs); best mean per round "
               f"marked.")
    return _make_table(mean, std, count, labels, f"{dataset} — {budget} — {metric}", caption,
                       _higher_is_better(metric), kind="dataset", dataset=dataset, budget=budget,
                       metric=metric, rounds=rounds, labels_spent=[spent.get(r, math.nan) for r in rounds])


def _dataset_metric(df: pd.DataFrame, dataset: str) -> str:
    """A dataset's default metric; mixed values mean the sweep changed its card mid-way."""
    names = df.loc[df["dataset"] == dataset, "metric_name"].dropna().unique()
    if len(names) != 1:
        raise ValueError(f"dataset {dataset!r} has trial runs with different default metrics "
                         f"{sorted(names)}; report them separately")
    return names[0]


def _average(tables: list[pd.DataFrame], by: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Mean over datasets of seed means and of stds; NaN unless every dataset has the cell.

    ``by`` is the attrs key to align columns on (``rounds``); n_seeds is the minimum.
    """
    means, stds, counts = [], [], []
    for t in tables:
        cols = t.attrs[by]
        means.append(t.attrs["mean"].set_axis(cols, axis=1))
        stds.append(t.attrs["std"].set_axis(cols, axis=1))
        counts.append(t.attrs["n_seeds"].set_axis(cols, axis=1))
    stacked = lambda frames: pd.concat(frames, keys=range(len(frames))).groupby(level=1)  # noqa: E731
    mean = stacked(means).mean()
    mean = mean[sorted(mean.columns)]
    complete = _all_present(mean, means)
    mean = mean.where(complete)
    std = stacked(stds).mean().reindex_like(mean).where(complete)
    count = stacked(counts).min().reindex_like(mean)
    return mean, std, count.fillna(0)


def _all_present(mean: pd.DataFrame, frames: list[pd.DataFrame]) -> pd.DataFrame:
    """True where every frame has that (method, column) at all (a missing row is NaN too)."""
    ok = pd.DataFrame(True, index=mean.index, columns=mean.columns)
    for f in frames:
        ok &= f.reindex(index=mean.index, columns=mean.columns).notna()
    return ok


def _average_table(budget: str, tables: list[pd.DataFrame]) -> pd.DataFrame:
    """One budget, averaged over its datasets (see the module docstring for the std)."""
    mean, std, count = _average(tables, "rounds")
    spent = pd.concat([pd.Series(t.attrs["labels_spent"], index=t.attrs["rounds"]) for t in tables],
                      axis=1).mean(axis=1)
    rounds = list(mean.columns)
    labels = [_round_label(r, spent.get(r, math.nan)) for r in rounds]
    metric, higher, datasets = _shared_metric(tables)
    caption = (f"Budget {budget}, mean over {len(datasets)} datasets ({', '.join(datasets)}) of "
               f"the per-dataset seed means of {metric}; ± is the mean of the per-dataset stds "
               f"over seeds (not a spread across datasets); n = labels spent averaged over "
               f"datasets; a cell is left empty unless every dataset has it; best mean per round "
               f"marked.")
    return _make_table(mean, std, count, labels, f"average over datasets — {budget} — {metric}",
                       caption, higher, kind="average", dataset=None, budget=budget,
                       metric=metric, datasets=datasets, rounds=rounds,
                       labels_spent=[spent.get(r, math.nan) for r in rounds])


def _shared_metric(tables: list[pd.DataFrame]) -> tuple[str, bool, list[str]]:
    """(metric summary, higher-is-better, datasets) of tables about to be averaged together."""
    metrics = {t.attrs["dataset"]: t.attrs["metric"] for t in tables}
    higher = {t.attrs["higher_is_better"] for t in tables}
    if len(higher) != 1:
        raise ValueError(f"cannot average metrics of opposite directions: {metrics}")
    return _metric_summary(metrics), higher.pop(), sorted(metrics)


def _metric_summary(metrics: dict[str, str]) -> str:
    """"top1 (%)" when all datasets share a metric, else "default metric (top1: a; auc: b)"."""
    names = sorted(set(metrics.values()))
    unit = " (%)" if all(_scale(m) == 100 for m in names) else ""
    if len(names) == 1:
        return names[0] + unit
    parts = "; ".join(f"{m}: {', '.join(sorted(d for d, x in metrics.items() if x == m))}" for m in names)
    return f"default metric{unit} ({parts})"


def _final_table(per_dataset: list[pd.DataFrame]) -> pd.DataFrame:
    """Methods x budgets at each (dataset, budget)'s last round, averaged over datasets."""
    budgets = sorted({t.attrs["budget"] for t in per_dataset})
    cols_mean, cols_std, cols_n, labels, finals = {}, {}, {}, [], {}
    for budget in budgets:
        tables = [t for t in per_dataset if t.attrs["budget"] == budget]
        last = [_last_round(t) for t in tables]
        mean, std, count = _average(last, "final")
        cols_mean[budget], cols_std[budget], cols_n[budget] = mean.iloc[:, 0], std.iloc[:, 0], count.iloc[:, 0]
        rounds = sorted({t.attrs["rounds"][-1] for t in tables})
        finals[budget] = rounds
        labels.append(f"{budget} (r{rounds[0]})" if len(rounds) == 1 else budget)
    mean, std, count = (pd.DataFrame(c) for c in (cols_mean, cols_std, cols_n))
    metric, higher, datasets = _shared_metric(per_dataset)
    caption = (f"Final round of each budget schedule: mean over datasets ({', '.join(datasets)}) "
               f"of the per-dataset seed means of {metric}; ± is the mean of the per-dataset "
               f"stds over seeds; a method must reach the last round on every dataset to get a "
               f"cell; best mean per budget marked.")
    return _make_table(mean, std, count.fillna(0), labels, f"final round — {metric}", caption,
                       higher, kind="final", dataset=None, budget=None, metric=metric,
                       budgets=budgets, final_rounds=finals, datasets=datasets)


QUERIES = "cost_blackbox_queries"


def _queries_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Methods x rounds: black-box queries spent by each round (running total), when any run queried one."""
    if QUERIES not in df or not (df[QUERIES].fillna(0) > 0).any():
        return None
    frame = df.assign(value=df[QUERIES].fillna(0.0))
    per_run = frame.groupby(["method", "round", "dataset"])["value"]
    mean = per_run.mean().groupby(["method", "round"]).mean().unstack("round")
    std = per_run.std(ddof=1).groupby(["method", "round"]).mean().unstack("round")
    count = frame.groupby(["method", "round"])["value"].count().unstack("round")
    spent = frame.groupby("round")["labels_spent"].mean()
    rounds = list(mean.columns)
    labels = [_round_label(r, spent.get(r, math.nan)) for r in rounds]
    caption = ("Black-box queries: images each method asked the foundation model about by the end of each round "
               "(running total, the method's cost in an API setting), mean over runs and datasets; "
               "n = labels spent; fewest marked.")
    table = _make_table(mean, std.fillna(0.0), count, labels, "black-box queries", caption, False,
                        kind="queries", dataset=None, budget=None, metric=QUERIES, rounds=rounds)
    table[:] = [[f"{m:,.0f}" for m in row] for row in mean.to_numpy()]  # counts, not percentages
    return table


def _last_round(table: pd.DataFrame) -> pd.DataFrame:
    """A one-column view of a dataset table at its last round, aligned as column "final"."""
    last = table.attrs["rounds"][-1]
    col = table.attrs["rounds"].index(last)
    view = pd.DataFrame(index=table.index)
    view.attrs = {
        "mean": table.attrs["mean"].iloc[:, [col]],
        "std": table.attrs["std"].iloc[:, [col]],
        "n_seeds": table.attrs["n_seeds"].iloc[:, [col]],
        "final": ["final"],
    }
    return view


def comparison_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """All tables of a report, keyed by a file-friendly name.

    ``average__<budget>`` (methods x rounds, over datasets) and ``final_round`` (methods x
    budgets) come first since they are what a paper prints; then ``dataset__<dataset>__<budget>``
    for each dataset. Each value is a DataFrame of display strings ("61.3 ± 1.2"); its
    ``attrs`` hold ``mean``, ``std``, ``n_seeds`` (numeric frames of the same shape, in display
    units), ``best`` (bool frame), ``title``, ``caption``, ``kind`` and the metric, so renderers
    mark the best cells and tests check the numbers. (Keep these frames out of ``pd.concat``:
    pandas compares ``attrs`` there.)
    """
    if df.empty:
        raise ValueError("no trial rounds to tabulate (no FINISHED trial runs? try include_unfinished)")
    per_dataset = []
    for (dataset, budget), group in df.groupby(["dataset", "budget"], sort=True):
        _dataset_metric(df, dataset)
        per_dataset.append(_dataset_table(dataset, budget, group))
    out: dict[str, pd.DataFrame] = {}
    for budget in sorted({t.attrs["budget"] for t in per_dataset}):
        out[f"average__{budget}"] = _average_table(budget, [t for t in per_dataset if t.attrs["budget"] == budget])
    out["final_round"] = _final_table(per_dataset)
    queries = _queries_table(df)
    if queries is not None:
        out["blackbox_queries"] = queries
    for t in per_dataset:
        out[f"dataset__{t.attrs['dataset']}__{t.attrs['budget']}"] = t
    note = model_roles_note(df)
    for table in out.values():
        if note:
            table.attrs["caption"] = f"{table.attrs['caption']} {note}"
    return out


def model_roles_note(df: pd.DataFrame) -> str:
    """Which model each row's metric belongs to, for methods whose rows another model chose (or whose learner
    ignored free labels); empty when every method is simply its own learner."""
    if "evaluated_model" not in df or df["evaluated_model"].isna().all():
        return ""
    parts = []
    for method, group in df.dropna(subset=["evaluated_model"]).groupby("method", sort=True):
        first = group.iloc[0]
        chooser = first.get("selector_model")
        chosen = f", rows chosen by {chooser}" if isinstance(chooser, str) and chooser else ""
        parts.append(f"{method}: metrics of {first['evaluated_model']}{chosen}")
    return "Models: " + "; ".join(parts) + "; every other row is its own learner's."


# ----------------------------------------------------------------------------------------------
# Renderers
# ----------------------------------------------------------------------------------------------


def _best(table: pd.DataFrame, i: int, j: int) -> bool:
    best = table.attrs.get("best")
    return bool(best is not None and best.iat[i, j])


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub-flavoured markdown, best cells in **bold**, title above and caption below."""
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    header = "| method | " + " | ".join(esc(c) for c in table.columns) + " |"
    rule = "|:--|" + "".join("--:|" for _ in table.columns)
    lines = [f"**{table.attrs.get('title', '')}**", "", header, rule]
    for i, method in enumerate(table.index):
        cells = [f"**{v}**" if _best(table, i, j) else v for j, v in enumerate(table.iloc[i])]
        lines.append("| " + esc(method) + " | " + " | ".join(esc(c) for c in cells) + " |")
    lines += ["", f"_{table.attrs.get('caption', '')}_", ""]
    return "\n".join(lines)


def to_csv(table: pd.DataFrame) -> str:
    """Numbers only: ``<column> mean`` and ``<column> std`` per column, no markup, NaN empty."""
    mean, std = table.attrs["mean"], table.attrs["std"]
    out = pd.DataFrame(index=table.index)
    for j, col in enumerate(table.columns):
        out[f"{col} mean"] = mean.iloc[:, j].to_numpy()
        out[f"{col} std"] = std.iloc[:, j].to_numpy()
    out.index.name = "method"
    return out.to_csv(float_format="%.4f", lineterminator="\n")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    """Escape TeX specials and spell the unicode we emit (±, dashes) so pdflatex needs no setup."""
    text = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return text.replace("—", "---").replace("–", "--").replace("±", r"$\pm$")


def _latex_cell(text: str, bold: bool) -> str:
    body = _latex_escape(text)
    return rf"\textbf{{{body}}}" if bold else body


def to_latex(table: pd.DataFrame, label: str | None = None) -> str:
    """A booktabs ``table`` environment; best cells in ``\\textbf{}``; needs ``\\usepackage{booktabs}``."""
    cols = "l" + "r" * len(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{_latex_escape(table.attrs.get('caption', ''))}}}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
              "Method & " + " & ".join(_latex_escape(c) for c in table.columns) + r" \\", r"\midrule"]
    for i, method in enumerate(table.index):
        cells = [_latex_cell(v, _best(table, i, j)) for j, v in enumerate(table.iloc[i])]
        lines.append(_latex_escape(method) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def rich_table(table: pd.DataFrame):
    """A :class:`rich.table.Table` of a comparison table, best cells bold green, for terminals."""
    from rich.table import Table
    from rich.text import Text

    out = Table(title=table.attrs.get("title"), caption=table.attrs.get("caption"),
                caption_justify="left")
    out.add_column("method", no_wrap=True)
    for col in table.columns:
        out.add_column(str(col), justify="right")
    for i, method in enumerate(table.index):
        cells = [Text(v, style="bold green" if _best(table, i, j) else "")
                 for j, v in enumerate(table.iloc[i])]
        out.add_row(Text(str(method)), *cells)
    return out


# ----------------------------------------------------------------------------------------------
# Learning curves
# ----------------------------------------------------------------------------------------------


def curve_data(df: pd.DataFrame, dataset: str, budget: str) -> pd.DataFrame:
    """Per (method, round): mean labels_spent, and mean/std of the metric (display units) over seeds."""
    sub = df[(df["dataset"] == dataset) & (df["budget"] == budget)]
    metric = _dataset_metric(df, dataset)
    sub = sub.assign(v=sub["value"] * _scale(metric))
    grouped = sub.groupby(["method", "round"])
    return pd.DataFrame({"labels_spent": grouped["labels_spent"].mean(), "mean": grouped["v"].mean(),
                         "std": grouped["v"].std(ddof=1)}).reset_index()


def plot_learning_curves(df: pd.DataFrame, dataset: str):
    """One figure for a dataset: a subplot per budget, metric vs labels spent, ± 1 std band.

    Uses :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot) so it works in
    headless workers and threads without touching global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = _dataset_metric(df, dataset)
    budgets = sorted(df.loc[df["dataset"] == dataset, "budget"].unique())
    methods = sorted(df.loc[df["dataset"] == dataset, "method"].unique())
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig = Figure(figsize=(5.0 * len(budgets), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(budgets), squeeze=False)[0]
    ylabel = metric + (" (%)" if _scale(metric) == 100 else "")
    for ax, budget in zip(axes, budgets):
        data = curve_data(df, dataset, budget)
        for method, part in data.groupby("method", sort=True):
            part = part.sort_values("labels_spent")
            x, y, s = part["labels_spent"].to_numpy(), part["mean"].to_numpy(), part["std"].fillna(0).to_numpy()
            ax.plot(x, y, marker="o", markersize=3, color=colors[method], label=method)
            ax.fill_between(x, y - s, y + s, color=colors[method], alpha=0.2, linewidth=0)
        ax.set_title(f"{dataset} — {budget}")
        ax.set_xlabel("labels spent")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


# ----------------------------------------------------------------------------------------------
# Files and MLflow
# ----------------------------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    """File names from dataset/budget names, which are free text in MLflow."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "table"


RENDERERS = {"md": to_markdown, "csv": to_csv, "latex": lambda t: to_latex(t)}


def write_report(df: pd.DataFrame, out_dir, formats: Sequence[str] = ("md", "csv", "latex"),
                 tables: dict[str, pd.DataFrame] | None = None) -> list[Path]:
    """Write each table in each format and one learning-curve PNG per dataset; return the paths.

    The layout is flat (``<table>.<ext>``, ``curves__<dataset>.png``) so the same names appear
    under the parent run's ``report/`` artifacts.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown report format(s) {unknown}; choose from {sorted(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = comparison_tables(df) if tables is None else tables
    paths = []
    for key, table in tables.items():
        for fmt in dict.fromkeys(formats):
            text = to_latex(table, label=f"tab:{_safe_name(key)}") if fmt == "latex" else RENDERERS[fmt](table)
            path = out_dir / f"{_safe_name(key)}{FORMATS[fmt]}"
            path.write_text(text, encoding="utf-8")
            paths.append(path)
    for dataset in sorted(df["dataset"].unique()):
        path = out_dir / f"curves__{_safe_name(dataset)}.png"
        plot_learning_curves(df, dataset).savefig(path, dpi=120)
        paths.append(path)
    return paths


def log_report_to_mlflow(tracking_uri: str, parent_run_id: str, paths: Iterable[Path],
                         artifact_path: str = "report") -> None:
    """Attach report files to the sweep's parent run under ``report/``.

    Refuses a run that is not a sweep parent: logging a report into a trial run would pollute
    the very data the report is built from.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(parent_run_id)
    role = run.data.tags.get(ROLE_TAG)
    if role != "sweep":
        raise ValueError(f"run {parent_run_id} has {ROLE_TAG}={role!r}, not 'sweep'; pass the "
                         f"sweep's parent run id")
    for path in paths:
        client.log_artifact(parent_run_id, str(path), artifact_path=artifact_path)
