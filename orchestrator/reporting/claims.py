"""A paper's qualitative claims, tested on a sweep from MLflow alone.

A claim says one method beats another at one point of the learning curve ("CEC above Entropy at 1 %"). It
is checked on the seed means at that point and by a paired test over the runs both methods share there
(paired by dataset, budget and seed; Wilcoxon signed-rank and paired t, :func:`orchestrator.reporting.stats.
paired_test`). "holds" means the measured mean difference has the claimed sign; the p-value says how much
that is worth (with three seeds the two-sided Wilcoxon cannot go below 0.25, so the paired t is printed
beside it). Nothing here tunes anything: the sweep ran with the papers' defaults.

Different sweeps reach the same point of a paper's protocol under different budget names (the few-shot twin
runs ``shots_16`` as one round, the offline default runs ``shots`` with 4 / 8 / 16 shots as rounds 1-3), so a
claim lists every (budget, round) cell that stands for its point; the first one the sweep holds is used. A
side may name several methods (the same row under another name); the first present is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from orchestrator.reporting.stats import labels_to_reach, mean_curves, paired_test
from orchestrator.reporting.tables import QUERIES, _scale

#: The verdicts a claim can get.
HOLDS, FAILS, ABSENT = "holds", "does not hold", "not in this sweep"
#: A claim's round meaning "the last round both sides reached".
LAST = -1


@dataclass(frozen=True)
class Claim:
    """``better`` beats ``worse`` at ``round`` under ``budget`` (None: any budget both run under); round
    :data:`LAST` is the last round both sides reached ("at the final budget")."""

    text: str
    better: str | tuple[str, ...]
    worse: str | tuple[str, ...]
    round: int
    budget: str | None = None
    also_at: tuple[tuple[str | None, int], ...] = field(default=())

    def cells(self) -> list[tuple[str | None, int]]:
        return [(self.budget, self.round), *self.also_at]


def _first_present(side: str | tuple[str, ...], methods: set[str]) -> str | None:
    names = (side,) if isinstance(side, str) else side
    return next((n for n in names if n in methods), None)


def _scores(df: pd.DataFrame, method: str, budget: str | None, rnd: int) -> pd.Series:
    """One score per run (display units) at the cell, indexed by (dataset, budget, seed)."""
    part = df[(df["method"] == method) & (df["round"] == rnd)]
    if budget is not None:
        part = part[part["budget"] == budget]
    values = part["value"].to_numpy(float) * part["metric_name"].map(_scale).to_numpy(float)
    return pd.Series(values, index=pd.MultiIndex.from_frame(part[["dataset", "budget", "seed"]]), dtype=float)


def _cell_text(budget: str | None, rnd: int) -> str:
    text = "last round" if rnd == LAST else f"r{rnd}"
    return text if budget is None else f"{budget}, {text}"


def _resolve_round(df: pd.DataFrame, methods: tuple[str, str], budget: str | None, rnd: int) -> int:
    if rnd != LAST:
        return rnd
    part = df[df["method"].isin(methods) & ((df["budget"] == budget) if budget is not None else True)]
    if part.empty:
        return LAST
    return int(part.groupby("method")["round"].max().min())


def _side_text(scores: pd.Series) -> str:
    per_seed = scores.groupby(level="seed").mean()
    std = per_seed.std(ddof=1) if len(per_seed) > 1 else math.nan
    return f"{scores.mean():.1f}" + ("" if math.isnan(std) else f" ± {std:.1f}")


def check_claim(df: pd.DataFrame, claim: Claim) -> dict:
    """The claim's row: both sides (mean ± std over seeds), the paired difference, p-values and the verdict."""
    methods = set(df["method"])
    better, worse = _first_present(claim.better, methods), _first_present(claim.worse, methods)
    for budget, rnd in claim.cells() if better and worse else []:
        rnd = _resolve_round(df, (better, worse), budget, rnd)
        a, b = _scores(df, better, budget, rnd), _scores(df, worse, budget, rnd)
        if a.empty or b.empty:
            continue
        test = paired_test(a, b)
        difference = float(a.mean() - b.mean())
        return {"claim": claim.text, "at": _cell_text(budget, rnd), "better": f"{better} {_side_text(a)}",
                "worse": f"{worse} {_side_text(b)}", "difference": round(difference, 2), "pairs": test["pairs"],
                "p_wilcoxon": _rounded(test["p_wilcoxon"]), "p_t": _rounded(test["p_t"]),
                "result": HOLDS if difference > 0 else FAILS}
    return {"claim": claim.text, "at": _cell_text(claim.budget, claim.round), "result": ABSENT}


def _rounded(p: float) -> float | None:
    return None if math.isnan(p) else round(p, 4)


def check_claims(df: pd.DataFrame, claims: list[Claim]) -> list[dict]:
    return [check_claim(df, c) for c in claims]


def verdict_counts(rows: list[dict]) -> dict[str, int]:
    """How many claims held, failed and could not be tested."""
    return {v: sum(r["result"] == v for r in rows) for v in (HOLDS, FAILS, ABSENT)}


def selective_savings(df: pd.DataFrame, with_sq: str, without_sq: str) -> list[dict]:
    """CB+SQ's claim, per round: labels each method paid for, the saving, both scores, and the labels the
    method without selective querying needs to reach the score with it (linear between rounds)."""
    if not {with_sq, without_sq} <= set(df["method"]):
        return []
    curves = mean_curves(df[df["method"].isin([with_sq, without_sq])], _scale)
    base = curves.loc[without_sq]
    rows = []
    for rnd in sorted(set(curves.loc[with_sq].index) - {0}):
        a, b = curves.loc[(with_sq, rnd)], curves.loc[(without_sq, rnd)]
        need = labels_to_reach(base["labels_spent"].to_numpy(), base["score"].to_numpy(), a["score"])
        spent, spent_base = a["labels_spent"], b["labels_spent"]
        rows.append({"round": int(rnd), "labelled": int(a["labels_total"]), "spent (SQ)": round(float(spent), 1),
                     "spent (no SQ)": round(float(spent_base), 1),
                     "saved %": round(100 * (1 - spent / spent_base), 1) if spent_base else 0.0,
                     "score (SQ)": round(float(a["score"]), 1), "score (no SQ)": round(float(b["score"]), 1),
                     "no-SQ labels for the SQ score": "not reached" if math.isnan(need) else round(need, 1)})
    return rows


def mined_labels(df: pd.DataFrame) -> list[dict]:
    """Per method that mined pseudo labels, per round: mean size and precision of the set it trained on."""
    if "precision_transient" not in df:
        return []
    mined = df.dropna(subset=["precision_transient"])
    stats = mined.groupby(["method", "round"]).agg(size=("labels_transient", "mean"),
                                                   precision=("precision_transient", "mean"))
    return [{"method": m, **{f"r{r}": f"{row['precision'] * 100:.1f} % of {row['size']:.0f}"
                             for r, row in stats.loc[m].iterrows()}}
            for m in stats.index.get_level_values(0).unique()]


def queries_spent(df: pd.DataFrame) -> list[dict]:
    """Per method that queried the black box: queries spent by the last round (seed mean), and the score
    there; the others spent none and are left out."""
    if QUERIES not in df:
        return []
    last = df[df["round"] == df["round"].max()].fillna({QUERIES: 0.0})
    last = last[last.groupby("method")[QUERIES].transform("max") > 0]
    last = last.assign(v=last["value"].to_numpy(float) * last["metric_name"].map(_scale).to_numpy(float))
    stats = last.groupby("method").agg(queries=(QUERIES, "mean"), value=("v", "mean"))
    return [{"method": m, "queries": f"{row['queries']:,.0f}", "final": f"{row['value']:.1f}"}
            for m, row in stats.sort_values(["queries", "value"]).iterrows()]


def markdown(rows: list[dict]) -> str:
    """A list of dicts as a GitHub table (keys in first-seen order)."""
    if not rows:
        return "(nothing to show)"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join("—" if r.get(k) is None else str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
