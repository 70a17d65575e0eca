"""Report files on disk and on the sweep's MLflow parent run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from orchestrator.reporting.loading import ROLE_TAG
from orchestrator.reporting.plots import X_AXES, has_queries, plot_learning_curves
from orchestrator.reporting.render import to_csv, to_latex, to_markdown
from orchestrator.reporting.tables import comparison_tables

FORMATS = {"md": ".md", "csv": ".csv", "latex": ".tex", "html": ".html"}


def _safe_name(name: str) -> str:
    """File names from dataset/budget names, which are free text in MLflow."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "table"


RENDERERS = {"md": to_markdown, "csv": to_csv, "latex": lambda t: to_latex(t)}


def write_report(df: pd.DataFrame, out_dir, formats: Sequence[str] = ("md", "csv", "latex"),
                 tables: dict[str, pd.DataFrame] | None = None, config: dict | None = None,
                 curves: Sequence[str] = ("labels",), sections: dict[str, str] | None = None) -> list[Path]:
    """Write each table in each format and learning-curve PNGs per dataset, against each of ``curves``
    (labels spent, rounds, black-box queries; queries are added whenever a run counted them); return the paths.

    The layout is flat (``<table>.<ext>``, ``curves__<dataset>.png``, ``curves_<x>__<dataset>.png`` for the
    other axes) so the same names appear under the parent run's ``report/`` artifacts. ``sections`` (title ->
    text, e.g. the claims check) go on the HTML page below the tables.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown report format(s) {unknown}; choose from {sorted(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = comparison_tables(df) if tables is None else tables
    paths = []
    for key, table in tables.items():
        for fmt in (f for f in dict.fromkeys(formats) if f != "html"):
            text = to_latex(table, label=f"tab:{_safe_name(key)}") if fmt == "latex" else RENDERERS[fmt](table)
            path = out_dir / f"{_safe_name(key)}{FORMATS[fmt]}"
            path.write_text(text, encoding="utf-8")
            paths.append(path)
    axes = list(dict.fromkeys([*curves, *(["queries"] if has_queries(df) else [])]))
    figures = {}
    for x, dataset in ((x, d) for x in axes for d in sorted(df["dataset"].unique())):
        prefix = "curves" if x == "labels" else f"curves_{x}"
        path = out_dir / f"{prefix}__{_safe_name(dataset)}.png"
        key = dataset if x == "labels" else f"{dataset} (against {X_AXES[x][1]})"
        figures[key] = plot_learning_curves(df, dataset, x)
        figures[key].savefig(path, dpi=120)
        paths.append(path)
    if "html" in formats:
        from orchestrator.reporting.html import report_page

        from orchestrator.tracking import git_revision

        path = out_dir / "report.html"
        path.write_text(report_page(f"sweep {df.attrs.get('experiment', '')}", tables, figures, config,
                                    f"{git_revision()} (report built)", sections), encoding="utf-8")
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
