"""Learning curves of a sweep, drawn with matplotlib's object API (headless, thread-safe)."""

from __future__ import annotations

import pandas as pd

from orchestrator.reporting.tables import QUERIES, _dataset_metric, _scale


#: What a learning curve can be drawn against: the column of the trials frame and the axis label.
X_AXES = {"labels": ("labels_spent", "labels spent"), "round": ("round", "round"),
          "queries": (QUERIES, "black-box queries")}


def curve_data(df: pd.DataFrame, dataset: str, budget: str, x: str = "labels") -> pd.DataFrame:
    """Per (method, round): the mean of the x column over seeds (as ``x``), and mean/std of the metric
    (display units). Against queries, methods that never query the black box are left out."""
    column = X_AXES[x][0]
    sub = df[(df["dataset"] == dataset) & (df["budget"] == budget)]
    if x == "queries":
        sub = sub[sub.groupby("method")[column].transform(lambda q: q.notna().any())] if column in sub else sub[:0]
    metric = _dataset_metric(df, dataset)
    sub = sub.assign(v=sub["value"] * _scale(metric), x=sub[column] if column in sub else float("nan"))
    grouped = sub.groupby(["method", "round"])
    return pd.DataFrame({"x": grouped["x"].mean(), "mean": grouped["v"].mean(),
                         "std": grouped["v"].std(ddof=1)}).reset_index()


def has_queries(df: pd.DataFrame) -> bool:
    """Whether some run counted black-box queries (then curves against them are worth drawing)."""
    return QUERIES in df and bool(df[QUERIES].notna().any())


def plot_learning_curves(df: pd.DataFrame, dataset: str, x: str = "labels"):
    """One figure for a dataset: a subplot per budget, metric vs ``x`` (labels spent, round or black-box
    queries, :data:`X_AXES`), ± 1 std band over seeds.

    Uses :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot) so it works in
    headless workers and threads without touching global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if x not in X_AXES:
        raise ValueError(f"unknown curve axis {x!r}; choose from {sorted(X_AXES)}")
    metric = _dataset_metric(df, dataset)
    budgets = sorted(df.loc[df["dataset"] == dataset, "budget"].unique())
    methods = sorted(df.loc[df["dataset"] == dataset, "method"].unique())
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig = Figure(figsize=(5.0 * len(budgets), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(budgets), squeeze=False)[0]
    ylabel = metric + (" (%)" if _scale(metric) == 100 else "")
    for ax, budget in zip(axes, budgets):
        data = curve_data(df, dataset, budget, x)
        for method, part in data.groupby("method", sort=True):
            part = part.sort_values("x")
            xs, y, s = part["x"].to_numpy(), part["mean"].to_numpy(), part["std"].fillna(0).to_numpy()
            ax.plot(xs, y, marker="o", markersize=3, color=colors[method], label=method)
            ax.fill_between(xs, y - s, y + s, color=colors[method], alpha=0.2, linewidth=0)
        ax.set_title(f"{dataset} — {budget}")
        ax.set_xlabel(X_AXES[x][1])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if not data.empty:
            ax.legend(fontsize="small")
    return fig
