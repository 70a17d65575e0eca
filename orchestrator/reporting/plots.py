"""Learning curves of a sweep, drawn with matplotlib's object API (headless, thread-safe)."""

from __future__ import annotations

import pandas as pd

from orchestrator.reporting.tables import _dataset_metric, _scale


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
