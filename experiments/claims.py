"""Check the papers' qualitative claims on a sweep: each claim measured, tested, and whether it held.

    python experiments/claims.py                    # run the offline default (resumes), check every paper's claims
    python experiments/claims.py --config experiments/configs/papers/cec-offline.yaml    # a twin, its paper
    python experiments/claims.py --tracking-uri sqlite:///$PWD/runs/cbsq-offline/mlflow.db \\
        --experiment cbsq-offline                   # read a finished sweep, run nothing

Per paper it prints a markdown table: the claim, the point of the curve it is read at, both sides
(mean ± std over seeds), their difference, the paired Wilcoxon and t p-values over the runs both sides
share, and "holds" / "does not hold" / "not in this sweep"; then what the paper measures beside accuracy
(labels CB+SQ saved, black-box queries, mined pseudo labels). The last line is one JSON object.

Which papers: --paper (repeatable), else the config's `report.claims`, else the one the experiment's name
starts with, else all. The claims are the papers' own (PROTOCOLS.md); nothing here is tuned to make one
hold, and a claim that does not hold on the offline family is reported as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.reporting.claims import (ABSENT, FAILS, HOLDS, LAST, Claim, check_claims,  # noqa: E402
                                           markdown, mined_labels, queries_spent, selective_savings,
                                           verdict_counts)

#: Where the few-shot twin's one-round budgets sit in the offline default's 4 / 8 / 16-shot rounds.
AT_16_SHOTS, AT_4_SHOTS = (("shots", 3),), (("shots", 1),)
#: VALIANT's baselines are linear probes; the twin names them by strategy alone.
RANDOM_PROBE, ENTROPY_PROBE = ("random", "random+linear_probe"), ("entropy", "entropy+linear_probe")

#: The claims each paper makes that an offline sweep can test (PROTOCOLS.md).
CLAIMS: dict[str, list[Claim]] = {
    "cbsq": [
        Claim("CB above Random at round 1 (Fig. 3, +19.5 pts on average)", "cb+coop_dual", "random+coop_dual", 1),
        Claim("class-guided above image features at round 1 (Table 2: 55.92 vs 52.72)", "cb+coop_dual",
              "cb-image+coop_dual", 1),
        Claim("CB above Entropy at round 1", "cb+coop_dual", "entropy+coop_dual", 1),
        Claim("CB above PCB at round 8", "cb+coop_dual", "pcb+coop_dual", 8),
    ],
    "cec": [
        Claim("CEC above Entropy at 1 % (Table 1)", "cec+coop", "entropy+coop", 1),
        Claim("CEC above Entropy at 2 % (Table 1)", "cec+coop", "entropy+coop", 2),
        Claim("CEC above Random at 1 %", "cec+coop", "random+coop", 1),
        Claim("CEC above Random at 5 %", "cec+coop", "random+coop", 5),
        Claim("calibration helps (Fig. 3 left), final round", "cec+coop", "cec-no-calibration+coop", LAST),
        Claim("the neighbour term helps (Fig. 3 left), final round", "cec+coop", "cec-no-neighbours+coop", LAST),
        Claim("weighted clustering beats plain k-means (Fig. 3 right), final round", "cec+coop",
              "cec-kmeans+coop", LAST),
        Claim("weighted clustering beats greedy (Fig. 3 right), final round", "cec+coop", "cec-greedy+coop", LAST),
    ],
    "dualprompt": [
        Claim("Ours_CoOp above CEC at 1 % (Table 1: 62.6 vs 60.2)", "ours_coop", "cec+coop", 1),
        Claim("Ours_CoOp above CEC at 2 % (66.7 vs 65.5)", "ours_coop", "cec+coop", 2),
        Claim("Ours_CoOp above CEC at 5 % (72.8 vs 71.8)", "ours_coop", "cec+coop", 5),
        Claim("Ours_CoOp above Random at 1 % (62.6 vs 57.1)", "ours_coop", "random+coop", 1),
        Claim("Ours_CoOp above Entropy at 1 % (62.6 vs 53.3)", "ours_coop", "entropy+coop", 1),
        Claim("Ours above Ours_CoOp at 1 % (69.1 vs 62.6)", "ours", "ours_coop", 1),
        Claim("Ours above Ours_CoOp at 5 % (74.7 vs 72.8)", "ours", "ours_coop", 5),
        Claim("Ours above CEC at 1 % (69.1 vs 60.2)", "ours", "cec+coop", 1),
    ],
    "biomedvr": [
        Claim("BioMedVR above AttrVR, 16 shots (Table 1: 76.4 vs 73.0)", "biomedvr", "attrvr", 1, "shots_16",
              AT_16_SHOTS),
        Claim("AttrVR above AR, 16 shots (73.0 vs 72.6)", "attrvr", "ar", 1, "shots_16", AT_16_SHOTS),
        Claim("AR above VP, 16 shots (72.6 vs 68.3)", "ar", "vp", 1, "shots_16", AT_16_SHOTS),
        Claim("BioMedVR above AttrVR, 4 shots (Fig. 4)", "biomedvr", "attrvr", 1, "shots_4", AT_4_SHOTS),
        Claim("BioMedVR (ZS) above zero-shot CLIP (31.6 vs 28.1)", "biomedvr_zs", "zeroshot", 1, "shots_16"),
        Claim("confusion-aware attributes help (Table 4: -5.0 without)", "biomedvr", "biomedvr-no-ca", 1, "shots_16"),
        Claim("two experts help (Table 4: -0.8 without MoPE)", "biomedvr", "biomedvr-no-mope", 1, "shots_16"),
        Claim("the CS loss helps (Table 4: -2.8 without)", "biomedvr", "biomedvr-no-cs", 1, "shots_16"),
        Claim("BioMedVR above BiomedCoOp, 16 shots (Table 1: 76.4 vs 71.2)", "biomedvr", "biomedcoop", 1,
              "shots_16"),
    ],
    # VALIANT Table 2 (CheXpert, AUC at 10 % / 50 % / 100 %); the twin's rounds 1 and 5 stand for its first and
    # a late budget (2 % and 10 % of the pool, see valiant-offline.yaml); the offline default's round 1 is 1 %.
    "valiant": [
        Claim("VALIANT above Random at the first budget (67.4 vs 43.6)", "valiant_single", RANDOM_PROBE, 1),
        Claim("VALIANT above Entropy at the first budget (67.4 vs 62.3)", "valiant_single", ENTROPY_PROBE, 1),
        Claim("VALIANT above BALD at the first budget (67.4 vs 63.5)", "valiant_single", "bald", 1),
        Claim("VALIANT above CoreSet at the first budget (67.4 vs 63.8)", "valiant_single", "coreset", 1),
        Claim("VALIANT above BAPS at the first budget (67.4 vs 64.1)", "valiant_single", "baps", 1),
        Claim("VALIANT_Multi above VALIANT_Single at the first budget (68.5 vs 67.4)", "valiant_multi",
              "valiant_single", 1),
        Claim("VALIANT_Multi above BAPS at the first budget (68.5 vs 64.1)", "valiant_multi", "baps", 1),
        Claim("VALIANT above Random at the last budget", "valiant_single", RANDOM_PROBE, LAST),
        Claim("VALIANT above Entropy at the last budget", "valiant_single", ENTROPY_PROBE, LAST),
        Claim("L_sens helps (w/o: 61.2 at 10 %)", "valiant_single", "valiant_no_sens", 1),
        Claim("L_coh helps, the largest drop (w/o: 59.3 at 10 %)", "valiant_single", "valiant_no_coh", 1),
        Claim("L_div helps (w/o: 65.3 at 10 %)", "valiant_single", "valiant_no_div", 1),
    ],
}

#: Per-round metrics beyond the score that some papers' extras read.
EXTRA_METRICS = ("labels_transient", "precision_transient", "cost_blackbox_queries")
#: CB+SQ's selective querying against CB without it (the "budget saved at equal accuracy" claim).
SQ_PAIR = ("cbsq+coop_dual", "cb+coop_dual")
EXTRA_TITLES = {"savings": "selective querying: labels paid, CB+SQ vs CB (seed means)",
                "queries": "black-box queries spent by the last round (seed means; every other method spent none)",
                "mined": "mined pseudo labels: precision and size per round (round 0: zero-shot top-K)"}


def savings_claim(savings: list[dict]) -> dict:
    """CB+SQ's headline as a claim row: at the last round, CB needs more labels than CB+SQ paid to reach
    CB+SQ's score (interpolated on CB's curve; "not reached" counts as holding)."""
    text = "selective querying saves labels at equal accuracy (17.6 % budget saved)"
    if not savings:
        return {"claim": text, "at": "last round", "result": ABSENT}
    last = savings[-1]
    need = last["no-SQ labels for the SQ score"]
    holds = need == "not reached" or need > last["spent (SQ)"]
    return {"claim": text, "at": f"r{last['round']}", "better": f"CB+SQ paid {last['spent (SQ)']} labels for "
            f"{last['score (SQ)']}", "worse": f"CB needs {need} for it", "difference": (
                None if need == "not reached" else round(need - last["spent (SQ)"], 1)),
            "result": HOLDS if holds else FAILS}


def paper_section(df, paper: str) -> tuple[str, dict]:
    """Markdown for one paper (its claims and extras) and the same as a dict."""
    rows, extras = check_claims(df, CLAIMS[paper]), {}
    if paper == "cbsq":
        extras["savings"] = selective_savings(df, *SQ_PAIR)
        rows.append(savings_claim(extras["savings"]))
    if paper == "valiant":
        extras["queries"] = queries_spent(df)
    if paper == "dualprompt":
        extras["mined"] = mined_labels(df)
    tested = [r for r in rows if r["result"] != ABSENT]
    absent = "".join(f"\n- {r['claim']} ({r['at']})" for r in rows if r["result"] == ABSENT)
    parts = [f"## {paper}: the paper's claims\n\n{markdown(tested)}"
             + (f"\n\nNot in this sweep (a method or round it does not run):{absent}" if absent else "")]
    parts += [f"### {EXTRA_TITLES[key]}\n\n{markdown(value)}" for key, value in extras.items() if value]
    return "\n\n".join(parts) + "\n", {"claims": rows, **extras, **verdict_counts(rows)}


def claims_report(df, papers: list[str]) -> tuple[str, dict]:
    """Every named paper's section, and the summary whose JSON is the CLI's last line."""
    unknown = sorted(set(papers) - set(CLAIMS))
    if unknown:
        raise ValueError(f"no claims for {unknown}; papers with claims: {sorted(CLAIMS)}")
    texts, summary = [], {"experiment": df.attrs.get("experiment"), "papers": {}}
    for paper in papers:
        text, summary["papers"][paper] = paper_section(df, paper)
        texts.append(text)
    totals = {k: sum(p[k] for p in summary["papers"].values()) for k in (HOLDS, FAILS, ABSENT)}
    summary.update(totals)
    line = (f"**{totals['holds']} claims hold, {totals['does not hold']} do not, {totals['not in this sweep']} "
            f"cannot be tested on this sweep** (a difference inside the seeds' spread, or p above 0.05, is weak "
            f"evidence either way).")
    return "\n".join(texts) + "\n" + line + "\n", summary


def papers_to_check(requested: list[str] | None, configured, experiment: str) -> list[str]:
    if requested:
        return list(dict.fromkeys(requested))
    if configured == "all":
        return list(CLAIMS)
    if configured:
        return list(configured)
    return [p for p in CLAIMS if experiment.startswith(p)] or list(CLAIMS)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None,
                    help="run this sweep first (resuming; default: experiments/configs/default.yaml)")
    ap.add_argument("--tracking-uri", help="read this MLflow store instead of running a sweep")
    ap.add_argument("--experiment", help="with --tracking-uri: the sweep's experiment")
    ap.add_argument("--paper", action="append", choices=sorted(CLAIMS), help="check this paper (repeatable)")
    return ap


def _run(config_path: Path | None):
    """Run (or resume) the sweep; its tracking URI, experiment and configured claims."""
    from rich.console import Console

    from experiments.sweep import DEFAULT_CONFIG
    from orchestrator.config import ConfigError, load_config
    from orchestrator.sweep import run_sweep

    console = Console(stderr=True)
    try:
        config = load_config(config_path, [], default=DEFAULT_CONFIG)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    outcome = run_sweep(config, console)
    if outcome.failed:
        console.print(f"[yellow]{len(outcome.failed)} trial(s) failed; their claims use the runs that "
                      "finished[/yellow]")
    return outcome.tracking_uri, outcome.experiment, config.report.claims


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if bool(args.tracking_uri) != bool(args.experiment):
        raise SystemExit("error: --tracking-uri and --experiment go together (or pass neither to run a sweep)")
    if args.tracking_uri and args.config:
        raise SystemExit("error: pass --config (run a sweep) or --tracking-uri/--experiment (read one), not both")
    from orchestrator.report import ExperimentNotFoundError, load_trials

    uri, experiment, configured = ((args.tracking_uri, args.experiment, None) if args.tracking_uri
                                   else _run(args.config))
    try:
        df = load_trials(uri, experiment, metrics=EXTRA_METRICS)
    except ExperimentNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    if df.empty:
        raise SystemExit(f"error: experiment {experiment!r} has no finished trial runs to check claims on")
    text, summary = claims_report(df, papers_to_check(args.paper, configured, experiment))
    print(text)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
