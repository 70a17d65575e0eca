"""Label-efficiency summaries and paired significance tests of a sweep's learning curves.

* **AULC**: the area under a learning curve against labels spent, over the label range every compared
  curve covers, divided by that range's width: one number in the metric's units ("mean accuracy over the
  budget"). A shared range keeps a method that stops early (selective querying spends fewer labels) from
  being scored on a shorter, easier stretch.
* **Labels to target**: the labels at which a seed-mean curve first reaches a target, linear between rounds;
  **saved** is ``1 - labels(method) / labels(baseline)`` at the baseline's own final score (CB+SQ's "budget
  saved at equal accuracy").
* **Paired tests** pair a method's and the baseline's runs by seed (and by dataset for averaged tables):
  Wilcoxon signed-rank and paired t (scipy), never fewer than :data:`MIN_PAIRS` pairs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

MIN_PAIRS = 3


def shared_range(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(start, end) of labels spent that every curve covers."""
    return max(float(np.min(x)) for x, _ in curves), min(float(np.max(x)) for x, _ in curves)


def aulc(x, y, start: float | None = None, end: float | None = None) -> float:
    """Normalised area under ``y(x)`` on ``[start, end]`` (default: the curve's own range), linear in between.

    A degenerate range (one point, or every round at the same label count) returns the mean of ``y``.
    """
    order = np.argsort(np.asarray(x, dtype=float), kind="stable")
    x, y = np.asarray(x, dtype=float)[order], np.asarray(y, dtype=float)[order]
    start = float(x[0]) if start is None else float(start)
    end = float(x[-1]) if end is None else float(end)
    if not end > start:
        return float(np.mean(y))
    grid = np.union1d(x[(x > start) & (x < end)], [start, end])
    values = np.interp(grid, x, y)
    return float(np.trapezoid(values, grid) / (end - start))


def labels_to_reach(x, y, target: float) -> float:
    """Labels at which the curve first reaches ``target`` (linear between rounds); NaN when it never does."""
    order = np.argsort(np.asarray(x, dtype=float), kind="stable")
    x, y = np.asarray(x, dtype=float)[order], np.asarray(y, dtype=float)[order]
    for i in range(len(x)):
        if y[i] >= target:
            if i == 0 or y[i] == y[i - 1]:
                return float(x[i])
            t = (target - y[i - 1]) / (y[i] - y[i - 1])
            return float(x[i - 1] + t * (x[i] - x[i - 1]))
    return math.nan


def labels_saved(method_x, method_y, base_x, base_y) -> tuple[float, float, float]:
    """(labels the method needs, labels the baseline needs, fraction saved) at the baseline's final score."""
    order = np.argsort(np.asarray(base_x, dtype=float), kind="stable")
    target = float(np.asarray(base_y, dtype=float)[order][-1])
    need, base = labels_to_reach(method_x, method_y, target), labels_to_reach(base_x, base_y, target)
    saved = 1.0 - need / base if base > 0 and not math.isnan(need) else math.nan
    return need, base, saved


def paired_test(method: pd.Series, baseline: pd.Series) -> dict:
    """Wilcoxon and paired-t p-values of ``method - baseline`` over the index both share (seeds, datasets).

    Fewer than :data:`MIN_PAIRS` pairs: no test (p NaN, ``note`` says why). All differences zero: p = 1.
    """
    from scipy import stats

    both = pd.concat([method.rename("a"), baseline.rename("b")], axis=1, join="inner").dropna()
    n = len(both)
    out = {"pairs": n, "difference": float((both["a"] - both["b"]).mean()) if n else math.nan,
           "p_wilcoxon": math.nan, "p_t": math.nan, "note": ""}
    if n < MIN_PAIRS:
        out["note"] = f"{n} pairs: no test below {MIN_PAIRS}"
        return out
    diff = (both["a"] - both["b"]).to_numpy()
    if np.allclose(diff, 0.0):
        out.update(p_wilcoxon=1.0, p_t=1.0, note="identical")
        return out
    out["p_wilcoxon"] = float(stats.wilcoxon(both["a"], both["b"]).pvalue)
    out["p_t"] = float(stats.ttest_rel(both["a"], both["b"]).pvalue) if np.std(diff) > 0 else 0.0
    return out


def run_summaries(df: pd.DataFrame, scale) -> pd.DataFrame:
    """One row per run: dataset, budget, method, seed, its final score and AULC (display units).

    The AULC range is the one shared by every run of the run's (dataset, budget); ``scale`` maps a metric
    name to its display factor (percent for accuracy-like metrics).
    """
    rows = []
    for (dataset, budget), group in df.groupby(["dataset", "budget"], sort=True):
        curves = {key: (part["labels_spent"].to_numpy(float), part["value"].to_numpy(float)
                        * scale(part["metric_name"].iloc[0]))
                  for key, part in group.sort_values("round").groupby(["method", "seed"], sort=True)}
        start, end = shared_range(list(curves.values()))
        for (method, seed), (x, y) in curves.items():
            rows.append({"dataset": dataset, "budget": budget, "method": method, "seed": seed,
                         "final": float(y[-1]), "aulc": aulc(x, y, start, end), "aulc_start": start, "aulc_end": end})
    return pd.DataFrame(rows)


def mean_curves(df: pd.DataFrame, scale) -> pd.DataFrame:
    """Per (method, round): ``score`` (display units), ``labels_spent`` and, when logged, ``labels_total``,
    averaged over seeds, then over datasets."""
    columns = [c for c in ("labels_spent", "labels_total") if c in df]
    scaled = df.assign(score=df["value"].to_numpy(float) * df["metric_name"].map(scale).to_numpy(float))
    per_dataset = scaled.groupby(["method", "dataset", "round"])[columns + ["score"]].mean()
    return per_dataset.groupby(["method", "round"]).mean()


def mean_curve(df: pd.DataFrame, method: str, scale) -> tuple[np.ndarray, np.ndarray]:
    """A method's curve averaged over seeds, then datasets: (labels spent, score) per round."""
    curve = mean_curves(df[df["method"] == method], scale).loc[method]
    return curve["labels_spent"].to_numpy(float), curve["score"].to_numpy(float)


def efficiency(df: pd.DataFrame, scale, baseline: str | None = None) -> pd.DataFrame:
    """Per method of one budget: final score and AULC (seed means averaged over datasets), and against
    ``baseline``: labels to reach its final score, labels saved, and paired tests of the final scores over
    (dataset, seed) pairs. A method missing a dataset gets no average and no comparison (NaN), as in the
    comparison tables: its curve averaged over fewer datasets would not be comparable."""
    runs = run_summaries(df, scale)
    datasets = set(runs["dataset"])
    per_dataset = runs.groupby(["method", "dataset"])[["final", "aulc"]].mean()
    complete = per_dataset.groupby("method").size() == len(datasets)
    out = per_dataset.groupby("method").mean()
    out.loc[~complete.reindex(out.index, fill_value=False).to_numpy()] = np.nan
    if baseline is None:
        return out
    if baseline not in out.index:
        raise KeyError(f"baseline {baseline!r} is not among this sweep's methods {sorted(out.index)}")
    base_curve = mean_curve(df, baseline, scale)
    paired = runs.set_index(["dataset", "seed"])
    for method in out.index[complete.reindex(out.index, fill_value=False).to_numpy()]:  # partial curves: blank
        need, base, saved = labels_saved(*mean_curve(df, method, scale), *base_curve)
        test = paired_test(paired.loc[paired["method"] == method, "final"],
                           paired.loc[paired["method"] == baseline, "final"])
        out.loc[method, ["labels_to_target", "baseline_labels", "saved"]] = [need, base, saved]
        out.loc[method, ["difference", "pairs", "p_wilcoxon", "p_t"]] = [
            test["difference"], test["pairs"], test["p_wilcoxon"], test["p_t"]]
    return out
