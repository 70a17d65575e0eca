"""Check the papers' claims on a finished sweep: each claim measured, and whether it held.

    python experiments/paper_claims.py --tracking-uri sqlite:///$PWD/runs/cbsq-offline/mlflow.db \\
        --experiment cbsq-offline
    python experiments/paper_claims.py --tracking-uri sqlite:///$PWD/runs/cec-offline/mlflow.db \\
        --experiment cec-offline
    python experiments/paper_claims.py --tracking-uri sqlite:///$PWD/runs/dualprompt-offline/mlflow.db \\
        --experiment dualprompt-offline
    python experiments/paper_claims.py --tracking-uri sqlite:///$PWD/runs/valiant-offline/mlflow.db \\
        --experiment valiant-offline

It reads the trials from MLflow (as experiments/report.py does), averages each
method's accuracy and labels spent per round over seeds (and datasets), and
prints a markdown table per claim family: the two sides, their difference,
and "holds" / "does not hold". A claim compares seed means; the spread is
printed next to them so a difference inside it is read as such. Nothing here
tunes anything: the sweep ran with the papers' defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Claim:
    """``better`` beats ``worse`` at ``round`` (the paper's reading of one of its tables or figures)."""

    text: str
    better: str
    worse: str
    round: int
    budget: str | None = None  # the budget schedule it is read at, where a sweep runs several (few-shot)


#: The claims each paper makes that its offline twin can test (PROTOCOLS.md, issue 10).
CLAIMS = {
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
        Claim("calibration helps (Fig. 3 left), final round", "cec+coop", "cec-no-calibration+coop", 6),
        Claim("the neighbour term helps (Fig. 3 left), final round", "cec+coop", "cec-no-neighbours+coop", 6),
        Claim("weighted clustering beats plain k-means (Fig. 3 right), final round", "cec+coop",
              "cec-kmeans+coop", 6),
        Claim("weighted clustering beats greedy (Fig. 3 right), final round", "cec+coop", "cec-greedy+coop", 6),
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
        Claim("BioMedVR above AttrVR, 16 shots (Table 1: 76.4 vs 73.0)", "biomedvr", "attrvr", 1, "shots_16"),
        Claim("AttrVR above AR, 16 shots (73.0 vs 72.6)", "attrvr", "ar", 1, "shots_16"),
        Claim("AR above VP, 16 shots (72.6 vs 68.3)", "ar", "vp", 1, "shots_16"),
        Claim("BioMedVR above AttrVR, 4 shots (Fig. 4)", "biomedvr", "attrvr", 1, "shots_4"),
        Claim("BioMedVR (ZS) above zero-shot CLIP (31.6 vs 28.1)", "biomedvr_zs", "zeroshot", 1, "shots_16"),
        Claim("confusion-aware attributes help (Table 4: -5.0 without)", "biomedvr", "biomedvr-no-ca", 1, "shots_16"),
        Claim("two experts help (Table 4: -0.8 without MoPE)", "biomedvr", "biomedvr-no-mope", 1, "shots_16"),
        Claim("the CS loss helps (Table 4: -2.8 without)", "biomedvr", "biomedvr-no-cs", 1, "shots_16"),
        Claim("BioMedVR above BiomedCoOp, 16 shots (Table 1: 76.4 vs 71.2)", "biomedvr", "biomedcoop", 1,
              "shots_16"),
    ],
    # VALIANT Table 2 (CheXpert, AUC at 10 % / 50 % / 100 %); the twin's rounds 1 and 5 stand for its first and
    # a late budget (2 % and 10 % of the pool, see valiant-offline.yaml).
    "valiant": [
        Claim("VALIANT above Random at the first budget (67.4 vs 43.6)", "valiant_single", "random", 1),
        Claim("VALIANT above Entropy at the first budget (67.4 vs 62.3)", "valiant_single", "entropy", 1),
        Claim("VALIANT above BALD at the first budget (67.4 vs 63.5)", "valiant_single", "bald", 1),
        Claim("VALIANT above CoreSet at the first budget (67.4 vs 63.8)", "valiant_single", "coreset", 1),
        Claim("VALIANT above BAPS at the first budget (67.4 vs 64.1)", "valiant_single", "baps", 1),
        Claim("VALIANT above Random at the last budget", "valiant_single", "random", 5),
        Claim("VALIANT above Entropy at the last budget", "valiant_single", "entropy", 5),
        Claim("L_sens helps (w/o: 61.2 at 10 %)", "valiant_single", "valiant_no_sens", 1),
        Claim("L_coh helps, the largest drop (w/o: 59.3 at 10 %)", "valiant_single", "valiant_no_coh", 1),
        Claim("L_div helps (w/o: 65.3 at 10 %)", "valiant_single", "valiant_no_div", 1),
    ],
}

#: Per-round ledger metrics of the methods that mine pseudo labels (the dual-prompt paper's transient set).
MINING_METRICS = ["labels_transient", "precision_transient"]
#: What the black-box methods spent (VALIANT: "count the black-box queries each method spends").
QUERY_METRICS = ["cost_blackbox_queries"]
EXTRA_METRICS = {"dualprompt": MINING_METRICS, "valiant": QUERY_METRICS}


def per_round(df):
    """Seed-mean and seed-std of accuracy (%) and mean labels spent, per method and round (datasets averaged)."""
    by_seed = df.groupby(["method", "dataset", "round"])
    stats = by_seed.agg(mean=("value", "mean"), std=("value", "std"), spent=("labels_spent", "mean"),
                        total=("labels_total", "mean"))
    return stats.groupby(["method", "round"]).mean() * [100, 100, 1, 1]


def claim_rows(df, claims: list[Claim]) -> list[dict]:
    rows, stats = [], {}
    for c in claims:
        if c.budget not in stats:
            stats[c.budget] = per_round(df if c.budget is None else df[df["budget"] == c.budget])
        try:
            a, b = stats[c.budget].loc[(c.better, c.round)], stats[c.budget].loc[(c.worse, c.round)]
        except KeyError:
            rows.append({"claim": c.text, "result": "not in this sweep"})
            continue
        diff = a["mean"] - b["mean"]
        rows.append({"claim": c.text, "round": c.round if c.budget is None else f"{c.budget}, r{c.round}", "better": f"{a['mean']:.1f} ± {a['std']:.1f}",
                     "worse": f"{b['mean']:.1f} ± {b['std']:.1f}", "difference": round(float(diff), 1),
                     "result": "holds" if diff > 0 else "does not hold"})
    return rows


def label_savings(stats, with_sq: str, without_sq: str) -> list[dict]:
    """Per round: labels each spent, the saving in %, and the accuracy of both (CB+SQ vs CB)."""
    rows = []
    if with_sq not in stats.index.get_level_values(0) or without_sq not in stats.index.get_level_values(0):
        return rows
    for r in sorted(set(stats.loc[with_sq].index) - {0}):
        a, b = stats.loc[(with_sq, r)], stats.loc[(without_sq, r)]
        rows.append({"round": r, "labelled": int(a["total"]), "spent (SQ)": round(float(a["spent"]), 1),
                     "spent (no SQ)": round(float(b["spent"]), 1),
                     "saved %": round(100 * (1 - a["spent"] / b["spent"]), 1) if b["spent"] else 0.0,
                     "top1 (SQ)": round(float(a["mean"]), 1), "top1 (no SQ)": round(float(b["mean"]), 1),
                     "no-SQ labels for the SQ top1": _labels_to_reach(stats.loc[without_sq], a["mean"])})
    return rows


def _labels_to_reach(curve, accuracy: float) -> str:
    """Labels spent (linear between rounds) at which a learning curve first reaches ``accuracy``."""
    previous = None
    for _, row in curve.sort_index().iterrows():
        if row["mean"] >= accuracy:
            if previous is None or row["mean"] == previous["mean"]:
                return f"{row['spent']:.0f}"
            t = (accuracy - previous["mean"]) / (row["mean"] - previous["mean"])
            return f"{previous['spent'] + t * (row['spent'] - previous['spent']):.1f}"
        previous = row
    return "not reached"


def mined_labels(df) -> list[dict]:
    """Per method that mined, per round: mean size and precision of the pseudo-labelled set it trained on."""
    if "precision_transient" not in df:
        return []
    mined = df.dropna(subset=["precision_transient"])
    stats = mined.groupby(["method", "round"]).agg(size=("labels_transient", "mean"),
                                                   precision=("precision_transient", "mean"))
    return [{"method": m, **{f"r{r}": f"{row['precision'] * 100:.1f} % of {row['size']:.0f}"
                             for r, row in stats.loc[m].iterrows()}}
            for m in stats.index.get_level_values(0).unique()]


def queries_spent(df) -> list[dict]:
    """Per method: black-box queries spent by the last round (seed mean), and the metric there."""
    if "cost_blackbox_queries" not in df:
        return []
    last = df[df["round"] == df["round"].max()].fillna({"cost_blackbox_queries": 0.0})
    stats = last.groupby("method").agg(queries=("cost_blackbox_queries", "mean"), value=("value", "mean"))
    return [{"method": m, "queries": f"{row['queries']:,.0f}", "final": f"{100 * row['value']:.1f}"}
            for m, row in stats.sort_values("queries").iterrows()]


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(nothing to show)"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--paper", choices=sorted(CLAIMS), help="default: read from the experiment name")
    args = ap.parse_args(argv)
    from orchestrator.report import load_trials

    paper = args.paper or next((p for p in CLAIMS if args.experiment.startswith(p)), None)
    if paper is None:
        raise SystemExit(f"cannot tell the paper from {args.experiment!r}; pass --paper ({', '.join(CLAIMS)})")
    df = load_trials(args.tracking_uri, args.experiment, metrics=EXTRA_METRICS.get(paper, []))
    stats = per_round(df)
    claims = claim_rows(df, CLAIMS[paper])
    print(f"## {args.experiment}: the paper's claims\n\n{markdown(claims)}\n")
    savings = label_savings(stats, "cbsq+coop_dual", "cb+coop_dual") if paper == "cbsq" else []
    if savings:
        print(f"## selective querying: labels spent, CB+SQ vs CB\n\n{markdown(savings)}\n")
    queries = queries_spent(df) if paper == "valiant" else []
    if queries:
        print(f"## black-box queries spent by the last round (seed means)\n\n{markdown(queries)}\n")
    mined = mined_labels(df) if paper == "dualprompt" else []
    if mined:
        print(f"## mined pseudo labels: precision and size per round (round 0: zero-shot top-K)\n\n{markdown(mined)}\n")
    if df["budget"].nunique() > 1:  # few-shot sweeps: one column per budget at the last round
        last = df[df["round"] == df["round"].max()]
        by_budget = {b: per_round(g) for b, g in last.groupby("budget")}
        curves = [{"method": m, **{b: f"{st.loc[m]['mean'].iloc[-1]:.1f} ± {st.loc[m]['std'].iloc[-1]:.1f}"
                                   for b, st in by_budget.items() if m in st.index.get_level_values(0)}}
                  for m in stats.index.get_level_values(0).unique()]
        print(f"## top-1 per budget, last round (seed means)\n\n{markdown(curves)}\n")
    else:
        curves = [{"method": m, **{f"r{r}": f"{row['mean']:.1f}" for r, row in stats.loc[m].iterrows()}}
                  for m in stats.index.get_level_values(0).unique()]
        print(f"## top-1 per round (seed means)\n\n{markdown(curves)}\n")
    summary = {"claims": claims, "savings": savings, "mined": mined, "queries": queries}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
