"""Run an active-learning sweep: method x dataset x budget x seed, one Tune trial per cell.

    python experiments/sweep.py                                   # offline default (configs/default.yaml)
    python experiments/sweep.py experiments/configs/default.yaml --name quick --set seeds=[0] --set rounds=3
    python experiments/sweep.py my.yaml --address auto --tracking-uri http://127.0.0.1:5000   # on a cluster
    python experiments/sweep.py experiments/configs/papers/cec.yaml --dry-run   # what it needs, nothing run

--dry-run resolves the grid without Ray or MLflow and without the network: the
trial count, whether each dataset (under $ALVLM_DATA_ROOT) and each encoder's
weights are on this machine (and how to get them if not), and the labels each
dataset x budget spends. It prints tables on stderr and one JSON object on
stdout, and exits 0 if everything is present, 3 if something is missing, 2 if
the config itself cannot run (as a real run does for config errors).

Re-running the same command resumes: finished trials are skipped, interrupted
ones continue from their last finished round, and MLflow gets no duplicates.
When it finishes it prints the comparison tables (with the config's `report:` baseline and paper rows), the
papers' claims the config names (`report: {claims: [...]}`), and how to open MLflow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_CONFIG = ROOT / "experiments" / "configs" / "default.yaml"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=None, help=f"sweep YAML (default: {DEFAULT_CONFIG.relative_to(ROOT)})")
    ap.add_argument("--name", help="sweep name (also the MLflow experiment)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override any config field, e.g. --set rounds=3 --set seeds=[0,1] --set resources.cpu=0.5")
    ap.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS, else a local one)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                           "sqlite:///<workdir>/mlflow.db)")
    ap.add_argument("--workdir", help="where trial states, Ray results and the default MLflow store live")
    ap.add_argument("--no-report", action="store_true", help="skip the comparison table at the end")
    ap.add_argument("--dry-run", action="store_true",
                    help="resolve the grid and check data, weights and budgets without running anything; exit 0 "
                         "if everything is present, 3 if something is missing, 2 if the config cannot run")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from experiments.report import wide_console
    from orchestrator.config import ConfigError, load_config

    console = wide_console(stderr=True)
    overrides = list(args.overrides)
    for key, value in (("name", args.name), ("address", args.address), ("tracking.uri", args.tracking_uri),
                       ("workdir", args.workdir)):
        if value:
            overrides.append(f"{key}={value}")
    if args.name and not args.workdir and not any(o.startswith("workdir=") for o in args.overrides):
        overrides.append(f"workdir=runs/{args.name}")
    try:
        config = load_config(args.config, overrides, default=DEFAULT_CONFIG)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise SystemExit(2) from None
    if args.dry_run:
        return _dry_run(config, console)
    _check_report_section(config, console)

    from orchestrator.budget import BudgetError
    from orchestrator.sweep import run_sweep
    from orchestrator.ray_runtime import RayAddressError
    from orchestrator.shared_storage import SharedStorageError
    from orchestrator.tracking_access import TrackingAccessError
    from orchestrator.workdir_lock import WorkdirLockedError

    try:
        outcome = run_sweep(config, console)
    except (BudgetError, ValueError, KeyError, WorkdirLockedError, TrackingAccessError, RayAddressError,
            SharedStorageError) as exc:
        console.print(f"[red]error: {exc.args[0] if exc.args else exc}[/red]")
        raise SystemExit(2) from None
    summary = {"experiment": outcome.experiment, "tracking_uri": outcome.tracking_uri, "trials": outcome.trials,
               "skipped_finished": outcome.skipped, "resumed": outcome.resumed, "failed": len(outcome.failed),
               "failed_trials": list(outcome.failed), "tracking_outages": outcome.tracking_outages,
               "unlogged_calls": outcome.unlogged,
               "seconds": round(outcome.seconds, 1), "embed_seconds": round(outcome.embed_seconds, 1)}
    if not args.no_report and not outcome.unlogged:
        summary["report"] = _report(outcome, config, console)
    store = outcome.tracking_uri
    console.print(f"\nMLflow UI:  mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000")
    print(json.dumps(summary))
    if outcome.unlogged:
        console.print(f"[red]{outcome.unlogged} tracking call(s) never reached MLflow at {store}; every round is in "
                      "the trial store: run the same command again once the server answers, and it logs them[/red]")
    if outcome.failed:
        console.print(f"[red]{len(outcome.failed)} trial(s) failed; their errors are in MLflow "
                      "(tag alvlm.error) and in the Ray results folder[/red]")
    if outcome.failed or outcome.unlogged:
        raise SystemExit(1)
    return summary


def _dry_run(config, console) -> dict:
    """What the sweep would run and what this machine lacks (orchestrator.dry_run); exits 3 or 2 when not ready."""
    from orchestrator.dry_run import EXIT_READY, dry_run, print_report

    report = dry_run(config)
    print_report(report, console)
    summary = report.summary()
    print(json.dumps(summary))
    if report.exit_code != EXIT_READY:
        raise SystemExit(report.exit_code)
    return summary


def _check_report_section(config, console) -> None:
    """An unknown paper in `report:` fails now, not after an hour of trials (exit 2, as config errors do)."""
    from experiments.claims import CLAIMS
    from experiments.report import REFERENCES
    from orchestrator.reporting.references import ReferenceError, load_reference

    errors = []
    if config.report.paper:
        try:
            load_reference(REFERENCES, config.report.paper)  # also reads the file: a broken one fails now
        except ReferenceError as err:
            errors.append(f"report.paper: {err}")
    unknown = sorted(set(config.report.claims) - set(CLAIMS)) if config.report.claims != "all" else []
    if unknown:
        errors.append(f"report.claims names {unknown}, which have no claims; papers with claims: "
                      f"{', '.join(sorted(CLAIMS))} (or `claims: all`)")
    if errors:
        console.print("[red]" + "\n".join(errors) + "[/red]")
        raise SystemExit(2)


def _report(outcome, config, console) -> list[str]:
    """The comparison tables (with the configured baseline and paper), the claims check, all on the parent run."""
    from experiments.claims import EXTRA_METRICS
    from experiments.report import with_reference
    from orchestrator.report import comparison_tables, load_trials, log_report_to_mlflow, rich_table, write_report

    df = load_trials(outcome.tracking_uri, outcome.experiment, metrics=EXTRA_METRICS)
    if df.empty:
        console.print("[yellow]no finished trials to report[/yellow]")
        return []
    tables = comparison_tables(df, baseline=config.report.baseline)
    if config.report.paper:
        tables, _ = with_reference(tables, df, config.report.paper)
    for key, table in tables.items():
        if table.attrs["kind"] in ("average", "final", "efficiency", "reference"):
            console.print(rich_table(table))
    out = config.workdir_path / "report"
    out.mkdir(parents=True, exist_ok=True)
    claims, paths = _claims(df, config, out, console) if config.report.claims else ("", [])
    paths = write_report(df, out, formats=("md", "csv", "latex", "html"), tables=tables,
                         config=config.model_dump(mode="json"),
                         sections={"The papers' claims": claims} if claims else None) + paths
    log_report_to_mlflow(outcome.tracking_uri, outcome.parent_run_id, paths)
    console.print(f"report: {len(paths)} files in {out}")
    return [str(p) for p in paths]


def _claims(df, config, out: Path, console) -> tuple[str, list[Path]]:
    """The configured papers' claims, printed and written beside the tables (claims.md, claims.json)."""
    from experiments.claims import claims_report, papers_to_check

    text, summary = claims_report(df, papers_to_check(None, config.report.claims, config.experiment))
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    paths = [out / "claims.md", out / "claims.json"]
    paths[0].write_text(text, encoding="utf-8")
    paths[1].write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return text, paths


if __name__ == "__main__":
    main()
