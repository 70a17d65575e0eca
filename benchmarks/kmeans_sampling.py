"""What subsampling costs the k-means objective that CB and CEC minimise, and what it saves in time.

CB (Kim et al.) and CEC (Safaei & Patel) cluster the whole pool; at ImageNet
scale that is 21 TFLOP per Lloyd pass (N = 1.28 M, K = 8,000, d = 1,024), so
both strategies expose faiss-style subsampling (``max_points_per_centroid``:
Lloyd on a seeded subsample, then every row assigned; ``init_points_per_centroid``:
k-means++ seeding on a smaller subsample; ``init: random``). This script runs
each setting on the same CLIP-like pool -- image features plus the
probability-weighted class text features, as CB's class-guided space builds
them -- and reports seconds and the objective over *all* rows
(sum of squared distances to the assigned centroid), relative to the exact run.

    python benchmarks/kmeans_sampling.py                       # N = 100,000, B = 100, round 8: K = 800
    python benchmarks/kmeans_sampling.py --n 20000 --clusters 200 --settings exact,ppc16

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: name -> kmeans options; "exact" is what CB and CEC run by default.
SETTINGS = {
    "exact": {"max_points_per_centroid": None, "init_points_per_centroid": None},
    "ppc64": {"max_points_per_centroid": 64, "init_points_per_centroid": 8},
    "ppc32": {"max_points_per_centroid": 32, "init_points_per_centroid": 4},
    "ppc16": {"max_points_per_centroid": 16, "init_points_per_centroid": 2},
    "ppc16-random-init": {"max_points_per_centroid": 16, "init": "random"},
    # what the README's 1.28M run of cb uses (one Lloyd pass there is 21 TFLOP)
    "ppc8-random-init-10-iters": {"max_points_per_centroid": 8, "init": "random", "niter": 10},
    # the same in bfloat16 products (``precision: bf16`` of cb, cbsq, cec; issue 15)
    "exact-bf16": {"max_points_per_centroid": None, "init_points_per_centroid": None, "precision": "bfloat16"},
    "ppc64-bf16": {"max_points_per_centroid": 64, "init_points_per_centroid": 8, "precision": "bfloat16"},
    "ppc8-random-init-10-iters-bf16": {"max_points_per_centroid": 8, "init": "random", "niter": 10,
                                       "precision": "bfloat16"},
}


def class_guided_pool(n: int, dim: int, classes: int, seed: int) -> np.ndarray:
    """[I(x), sum_c p(c|x) T_c] for a clustered unit-sphere pool and zero-shot probabilities at T = 0.01."""
    from methods.core.predictors import softmax, unit_rows

    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((classes, dim)).astype(np.float32))
    text = unit_rows(centres + 5.0 / np.sqrt(dim) * rng.standard_normal((classes, dim)).astype(np.float32))
    labels = rng.integers(classes, size=n)
    image = unit_rows(centres[labels] + rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim))
    out = np.empty((n, 2 * dim), np.float32)
    for s in range(0, n, 65536):
        x = image[s: s + 65536]
        out[s: s + 65536, :dim] = x
        out[s: s + 65536, dim:] = softmax(x @ text.T / 0.01) @ text
    return out


def objective(x: np.ndarray, centroids: np.ndarray, assignment: np.ndarray) -> float:
    total = 0.0
    for s in range(0, len(x), 65536):
        diff = x[s: s + 65536] - centroids[assignment[s: s + 65536]]
        total += float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
    return total


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=512, help="image feature width (class-guided rows are twice that)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=800, help="K (CB: B * round)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from methods.kernels import kmeans

    wanted = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    x = class_guided_pool(args.n, args.dim, args.classes, args.seed)
    results = {}
    for name in wanted:
        t0 = time.perf_counter()
        options = {"niter": args.iters, **SETTINGS[name]}
        centroids, assignment = kmeans(x, args.clusters, args.seed, **options)
        seconds = time.perf_counter() - t0
        results[name] = {"seconds": round(seconds, 2), "objective": objective(x, centroids, assignment),
                         "options": SETTINGS[name]}
    reference = results.get("exact", next(iter(results.values())))["objective"]
    table = Table(title=f"k-means on {args.n} x {2 * args.dim} class-guided rows, K = {args.clusters}, "
                        f"{args.iters} Lloyd iterations")
    for column in ("setting", "seconds", "objective", "vs exact"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for name, r in results.items():
        r["relative"] = round(r["objective"] / reference, 4)
        table.add_row(name, f"{r['seconds']:.1f}", f"{r['objective']:.1f}", f"{r['relative']:.4f}")
    Console(stderr=True).print(table)
    summary = {"params": vars(args), "results": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
