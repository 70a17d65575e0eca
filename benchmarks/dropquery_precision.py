"""DropQuery and centroid selection in float32 and in bfloat16 products: seconds and what changes in the picks.

``precision: bf16`` (the default ``auto`` on a CPU with native bfloat16)
multiplies bfloat16 features in DropQuery's dropout predictions and in the
k-means of both strategies. This script runs both precisions on the
acquisition benchmark's cached CLIP-like pool (``acquisition_scale.py``
builds it on first use) over several seeds and reports, side by side:

* ``select s``: median seconds of a DropQuery selection, and of centroid
  selection (its cold start) over the whole unlabelled pool;
* ``flips equal``: the share of unlabelled rows whose dropout-flip count
  equals float32's (the same masks), and the candidates found;
* ``k-means potential``: on the float32 candidates of each seed, the sum of
  squared distances of every candidate to its nearest centroid (computed in
  float32 on the centroids each precision found), mean +- sd over seeds;
* ``radius``: the k-center radius of labelled plus picked rows over the pool.

    python benchmarks/dropquery_precision.py                 # N = 20,000, B = 100, 8 seeds
    python benchmarks/dropquery_precision.py --n 100000 --seeds 3

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PRECISIONS = ("fp32", "bf16")


def _context(data: dict):
    from acquisition_scale import TEMPERATURE, _pool_state

    from methods.base import SelectionContext
    from methods.core.predictors import LinearPredictor

    text = data["text"]
    labelled, targets, unlabelled = _pool_state(data)
    return SelectionContext(round=1, num_classes=len(text), unlabelled=unlabelled, labelled=labelled,
                            labelled_targets=targets, pool_features=np.ascontiguousarray(data["features"]),
                            predictor=LinearPredictor(text, np.zeros(len(text), np.float32), TEMPERATURE))


def _timed_select(strategy, ctx, budget: int, seed: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    picks = strategy.select(ctx, budget, np.random.default_rng(seed)).indices
    return picks, time.perf_counter() - t0


def _candidate_potential(x: np.ndarray, budget: int, seed: int, precision: str) -> float:
    """k-means potential, over the candidate rows ``x``, of the centroids ``precision`` finds."""
    from methods.acquisition.clustering import kmeans_precision
    from methods.kernels.clustering import assign, kmeans

    centroids, _ = kmeans(x, budget, seed=seed, precision=kmeans_precision(precision))
    return float(assign(x, centroids, backend="torch")[0].sum(dtype=np.float64))


def run_seed(ctx, budget: int, seed: int) -> dict:
    """Every figure of one seed, for both precisions."""
    from acquisition_scale import nearest_distance

    from methods.registry import ACQUISITIONS

    out = {}
    reference_flips = candidates = None
    for precision in PRECISIONS:  # fp32 first: its flips and candidates are the reference
        dropquery = ACQUISITIONS.create("dropquery", precision=precision)
        flips = dropquery.mismatches(ctx, ctx.unlabelled, np.random.default_rng(seed))
        if reference_flips is None:
            reference_flips, candidates = flips, ctx.pool_features[ctx.unlabelled[flips > 1]]
        picks, seconds = _timed_select(dropquery, ctx, budget, seed)
        cold, cold_seconds = _timed_select(ACQUISITIONS.create("centroid", precision=precision), ctx, budget, seed)
        out[precision] = {
            "select_s": seconds, "centroid_s": cold_seconds,
            "flips_equal": float((flips == reference_flips).mean()), "candidates": int((flips > 1).sum()),
            "potential": _candidate_potential(candidates, budget, seed, precision),
            "radius": float(nearest_distance(ctx.pool_features, np.union1d(ctx.labelled, picks), "cpu").max()),
            "centroid_radius": float(nearest_distance(ctx.pool_features, cold, "cpu").max()),
        }
    return out


def summarise(per_seed: list[dict]) -> dict:
    def stats(values):
        return {"mean": statistics.fmean(values), "sd": statistics.pstdev(values), "median": statistics.median(values)}

    return {p: {k: stats([s[p][k] for s in per_seed]) for k in per_seed[0][p]} for p in PRECISIONS}


def main(argv: list[str] | None = None) -> dict:
    import acquisition_scale

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    acquisition_scale.add_pool_arguments(ap, n=20000)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    ctx = _context(acquisition_scale.default_pool(args.n, args.dim, args.classes, args.labelled, args.budget,
                                                  args.data_dir))
    run_seed(ctx, args.budget, 10 ** 6)  # warm-up: imports, thread pools, first allocations
    per_seed = [run_seed(ctx, args.budget, seed) for seed in range(args.seeds)]
    summary = summarise(per_seed)
    table = Table(title=f"DropQuery / centroid in float32 and bfloat16: n={args.n}, budget {args.budget}, "
                        f"{args.seeds} seeds")
    for column in ("precision", "dropquery s", "flips equal", "candidates", "k-means potential", "radius",
                   "centroid s", "centroid radius"):
        table.add_column(column, justify="left" if column == "precision" else "right")
    for p, s in summary.items():
        table.add_row(p, f"{s['select_s']['median']:.3f}", f"{s['flips_equal']['mean']:.4f}",
                      f"{s['candidates']['mean']:.0f}", f"{s['potential']['mean']:,.1f} ± {s['potential']['sd']:.1f}",
                      f"{s['radius']['mean']:.4f} ± {s['radius']['sd']:.4f}", f"{s['centroid_s']['median']:.3f}",
                      f"{s['centroid_radius']['mean']:.4f} ± {s['centroid_radius']['sd']:.4f}")
    Console(stderr=True, width=150).print(table)
    result = {"params": vars(args), "summary": summary, "per_seed": per_seed}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
