"""Comparison tables of a sweep: per dataset and budget, averaged over datasets, final round, queries.

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

import math

import pandas as pd

PERCENT_METRICS = {"top1", "macro_f1", "auc", "worst_class_acc", "ece"}
LOWER_IS_BETTER = {"ece", "nll"}
MISSING = "—"


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


EFFICIENCY_COLUMNS = {"final": "final", "aulc": "AULC", "labels_to_target": "labels to target",
                      "saved": "saved", "difference": "Δ final", "pairs": "pairs", "p_wilcoxon": "p (Wilcoxon)",
                      "p_t": "p (paired t)"}


def _p_text(p: float) -> str:
    if math.isnan(p):
        return MISSING
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _efficiency_cell(column: str, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not reached" if column == "labels_to_target" else MISSING
    if column in ("p_wilcoxon", "p_t"):
        return _p_text(value)
    if column == "saved":
        return f"{100 * value:.1f} %"
    if column == "difference":
        return f"{value:+.1f}"
    if column == "pairs":
        return f"{value:.0f}"
    return f"{value:.1f}"


def _efficiency_table(budget: str, group: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Methods x (final, AULC[, labels to target, saved, Δ, pairs, p-values]) for one budget, over datasets."""
    from orchestrator.reporting.stats import MIN_PAIRS, efficiency

    numbers = efficiency(group, _scale, baseline if baseline in set(group["method"]) else None)
    numbers = numbers[[c for c in EFFICIENCY_COLUMNS if c in numbers.columns]]
    labels = [EFFICIENCY_COLUMNS[c] for c in numbers.columns]
    display = pd.DataFrame([[_efficiency_cell(c, numbers.at[m, c]) for c in numbers.columns] for m in numbers.index],
                           index=numbers.index, columns=labels)
    higher = _higher_is_better(group["metric_name"].iloc[0])
    best = pd.DataFrame(False, index=numbers.index, columns=labels)
    for column in ("final", "aulc"):
        best[EFFICIENCY_COLUMNS[column]] = _best_mask(numbers[[column]], higher)[column].to_numpy()
    datasets = sorted(group["dataset"].unique())
    against = (f" Against {baseline}: labels (linear between rounds) at which the seed-mean curve, averaged over "
               f"datasets, first reaches {baseline}'s final score, and the fraction of {baseline}'s labels saved; "
               f"Δ and p-values of the final scores paired by (dataset, seed), Wilcoxon signed-rank and paired t, "
               f"no test below {MIN_PAIRS} pairs.") if baseline in set(group["method"]) else (
               " No baseline named (report.py --baseline), so no labels-to-target or tests." if baseline is None else
               f" The baseline {baseline} does not run under this budget, so no labels-to-target or tests.")
    caption = (f"Budget {budget}, over {len(datasets)} datasets ({', '.join(datasets)}): final-round score and the "
               f"area under the learning curve against labels spent (over the label range every run of a dataset "
               f"covers, divided by its width), seed means averaged over datasets.{against}")
    numbers.index.name = display.index.name = "method"
    display.attrs.update(mean=numbers.set_axis(labels, axis=1), std=numbers.set_axis(labels, axis=1) * math.nan,
                         n_seeds=numbers.set_axis(labels, axis=1) * 0, best=best, title=f"label efficiency — {budget}",
                         caption=caption, higher_is_better=higher, kind="efficiency", dataset=None, budget=budget,
                         metric=group["metric_name"].iloc[0], baseline=baseline, numbers=numbers)
    return display


def comparison_tables(df: pd.DataFrame, baseline: str | None = None) -> dict[str, pd.DataFrame]:
    """All tables of a report, keyed by a file-friendly name.

    ``average__<budget>`` (methods x rounds, over datasets) and ``final_round`` (methods x
    budgets) come first since they are what a paper prints; then ``dataset__<dataset>__<budget>``
    for each dataset; ``efficiency__<budget>`` holds AULC and, against ``baseline``, labels to target,
    labels saved and paired tests (:mod:`orchestrator.reporting.stats`). Each value is a DataFrame of display strings ("61.3 ± 1.2"); its
    ``attrs`` hold ``mean``, ``std``, ``n_seeds`` (numeric frames of the same shape, in display
    units), ``best`` (bool frame), ``title``, ``caption``, ``kind`` and the metric, so renderers
    mark the best cells and tests check the numbers. (Keep these frames out of ``pd.concat``:
    pandas compares ``attrs`` there.)
    """
    if df.empty:
        raise ValueError("no trial rounds to tabulate (no FINISHED trial runs? try include_unfinished)")
    if baseline is not None and baseline not in set(df["method"]):
        raise ValueError(f"baseline {baseline!r} is not a method of this sweep; its methods: "
                         f"{sorted(df['method'].unique())}")
    per_dataset = []
    for (dataset, budget), group in df.groupby(["dataset", "budget"], sort=True):
        _dataset_metric(df, dataset)
        per_dataset.append(_dataset_table(dataset, budget, group))
    out: dict[str, pd.DataFrame] = {}
    for budget in sorted({t.attrs["budget"] for t in per_dataset}):
        out[f"average__{budget}"] = _average_table(budget, [t for t in per_dataset if t.attrs["budget"] == budget])
    out["final_round"] = _final_table(per_dataset)
    for budget, group in df.groupby("budget", sort=True):
        out[f"efficiency__{budget}"] = _efficiency_table(budget, group, baseline)
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
