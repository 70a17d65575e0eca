"""Build the comparison report of a sweep from MLflow alone: tables (md/csv/LaTeX) and curves.

    python experiments/report.py --tracking-uri sqlite:///runs/mlflow.db --experiment my-sweep
    python experiments/report.py --tracking-uri http://mlflow:5000 --experiment my-sweep \\
        --format latex --out paper/tables --log-to-parent 3f2a...   # attach to the sweep run

Prints the tables averaged over datasets (one per budget) and the final-round summary, then
the paths of the written files, one per line. Only FINISHED trial runs count unless
--include-unfinished. Exit code 1 when the experiment does not exist or has no usable runs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REFERENCES = ROOT / "experiments" / "references"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", required=True, help="MLflow tracking URI, e.g. sqlite:///runs/mlflow.db")
    ap.add_argument("--experiment", required=True, help="MLflow experiment (= sweep name)")
    ap.add_argument("--format", action="append", choices=["md", "csv", "latex", "html"], dest="formats",
                    help="output format (repeatable; default: md, csv, latex and html)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: reports/<experiment>)")
    ap.add_argument("--include-unfinished", action="store_true",
                    help="also use the completed rounds of FAILED / RUNNING trial runs")
    ap.add_argument("--baseline", metavar="METHOD", default=None,
                    help="method the label-efficiency tables test every other against (paired Wilcoxon / t over "
                         "seeds and datasets, labels to reach its final score, labels saved)")
    ap.add_argument("--paper", default=None,
                    help="put this paper's published numbers (experiments/references/<paper>.yaml) beside the "
                         "measured rows, with the difference; unmatched reference rows are counted and listed")
    ap.add_argument("--curves", action="append", choices=["labels", "round", "queries"], default=None,
                    help="draw the learning curves against this (repeatable; default: labels spent, plus black-box "
                         "queries when a run counted them)")
    ap.add_argument("--log-to-parent", metavar="RUN_ID", default=None,
                    help="log the files as artifacts of this sweep parent run under report/")
    return ap


def _no_runs_message(experiment: str, status_counts: dict, include_unfinished: bool) -> str:
    """Say what is there instead, so the user knows whether to wait, rerun or pass a flag."""
    if not status_counts:
        return f"experiment {experiment!r} has no trial runs (tag alvlm.role = 'trial'); nothing to report"
    seen = ", ".join(f"{n} {s}" for s, n in sorted(status_counts.items()))
    hint = "" if include_unfinished else "; rerun with --include-unfinished to use their completed rounds"
    return f"experiment {experiment!r} has no finished trial runs with logged rounds ({seen}){hint}"


def with_reference(tables: dict, df, paper: str):
    """The tables with ``paper``'s rows under the measured ones, plus ``reference__<paper>``, and the reference
    rows nothing matched; an unknown paper exits with the known ones."""
    from orchestrator.reporting.interleave import add_reference
    from orchestrator.reporting.references import ReferenceError

    try:
        return add_reference(tables, df, REFERENCES, paper)
    except ReferenceError as err:
        raise SystemExit(f"error: {err}") from None


def wide_console(stderr: bool = False):
    """A rich console that does not squeeze wide tables when it writes to a pipe or a file."""
    from rich.console import Console

    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=200)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from orchestrator.report import (ExperimentNotFoundError, comparison_tables, load_trials,
                                     log_report_to_mlflow, rich_table, write_report)
    from orchestrator.reporting.tables import QUERIES

    try:
        df = load_trials(args.tracking_uri, args.experiment, include_unfinished=args.include_unfinished,
                         metrics=(QUERIES,))  # for the queries column and curves
    except ExperimentNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    if df.empty:
        raise SystemExit("error: " + _no_runs_message(args.experiment, df.attrs.get("status_counts", {}),
                                                      args.include_unfinished))
    formats = tuple(dict.fromkeys(args.formats or ["md", "csv", "latex", "html"]))
    out = args.out or Path("reports") / re.sub(r"[^A-Za-z0-9._-]+", "_", args.experiment).strip("_")
    try:
        tables = comparison_tables(df, baseline=args.baseline)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    unmatched = None
    if args.paper:
        tables, unmatched = with_reference(tables, df, args.paper)
    paths = write_report(df, out, formats=formats, tables=tables, curves=args.curves or ("labels",))

    console = wide_console()
    for name, table in tables.items():
        if table.attrs["kind"] in ("average", "final", "efficiency", "reference"):
            console.print(rich_table(table))
            console.print()
    if unmatched is not None:
        print(f"{len(unmatched)} rows of the paper's reference file match nothing in this sweep, e.g.:")
        print(unmatched.head(5).to_string(index=False))
    print(f"wrote {len(paths)} files to {out}:")
    for path in paths:
        print(path)
    if args.log_to_parent:
        log_report_to_mlflow(args.tracking_uri, args.log_to_parent, paths)
        print(f"logged {len(paths)} files to run {args.log_to_parent} under report/")
    return {
        "experiment": args.experiment,
        "runs": int(df["run_id"].nunique()),
        "rows": int(len(df)),
        "tables": list(tables),
        "paths": [str(p) for p in paths],
        "logged_to": args.log_to_parent,
    }


if __name__ == "__main__":
    main()
