"""Approximate self-kNN side by side: faiss's IVF (per-row probes) and :func:`methods.kernels.cell_knn.cell_knn`.

CEC's neighbour term (eq. 6) and GCNAL's graph need every unlabelled row's k
nearest other rows; past ~100K rows they take an approximate search. This
script runs each search on the acquisition benchmark's cached CLIP-like pool
(``acquisition_scale.py`` builds it on first use; the unlabelled rows, unit
length, as CEC searches them) and prints, in one table:

* ``seconds``: the whole search, index or coarse k-means included;
* ``recall@k``: on ``--queries`` rows drawn with ``--seed``, the share of the
  exact k nearest other rows (brute force, float32) that the search found;
* ``k-th distance ratio``: mean over those rows of the k-th found squared
  distance over the exact k-th (1.0: as near as the truth).

    python benchmarks/cell_knn.py                              # N = 200,000, k = 20
    python benchmarks/cell_knn.py --n 1280000 --classes 1000 --labelled 10000 --methods cells,cells-bf16

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
sys.path.insert(0, str(ROOT / "benchmarks"))


def _searches() -> dict:
    from methods.kernels import approximate_knn
    from methods.kernels.cell_knn import cell_knn

    return {
        "faiss-ivf": lambda z, k, seed: approximate_knn(z, k, seed=seed),
        "cells": lambda z, k, seed: cell_knn(z, k, seed=seed),
        "cells-bf16": lambda z, k, seed: cell_knn(z, k, seed=seed, precision="bfloat16"),
    }


def exact_neighbours(z: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force ``(squared distances, ids)`` of the ``queries`` rows' k nearest other rows."""
    from methods.kernels import knn
    from methods.kernels.clustering import _drop_self

    d, i = knn(z, k + 1, queries=z[queries], backend="torch")
    return _drop_self(d, i, queries, k)


def score(found_d: np.ndarray, found_i: np.ndarray, true_d: np.ndarray, true_i: np.ndarray) -> dict:
    recall = np.mean([len(np.intersect1d(f, t)) / t.size for f, t in zip(found_i, true_i, strict=True)])
    ratio = np.mean(found_d[:, -1] / np.maximum(true_d[:, -1], 1e-12))
    return {"recall": float(recall), "kth_ratio": float(ratio)}


def unit_unlabelled_rows(args) -> np.ndarray:
    from acquisition_scale import _pool_state, default_pool

    from methods.core.predictors import unit_rows

    data = default_pool(args.n, args.dim, args.classes, args.labelled, 100, args.data_dir)
    return unit_rows(np.asarray(data["features"][_pool_state(data)[2]]))


def main(argv: list[str] | None = None) -> dict:
    from acquisition_scale import add_pool_arguments

    searches = _searches()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pool_arguments(ap, n=200000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(searches), help=f"comma-separated, of {sorted(searches)}")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(searches))
    if unknown:
        ap.error(f"unknown --methods {unknown}; known: {sorted(searches)}")
    from rich.console import Console
    from rich.table import Table

    z = unit_unlabelled_rows(args)
    queries = np.sort(np.random.default_rng(args.seed).choice(len(z), min(args.queries, len(z)), replace=False))
    true_d, true_i = exact_neighbours(z, queries, args.k)
    results = {}
    for name in methods:
        t0 = time.perf_counter()
        d, i = searches[name](z, args.k, args.seed)
        results[name] = {"seconds": time.perf_counter() - t0, **score(d[queries], i[queries], true_d, true_i)}
    table = Table(title=f"self-kNN of {len(z):,} unit rows, d = {z.shape[1]}, k = {args.k}, "
                        f"recall on {len(queries)} rows")
    for column in ("search", "seconds", f"recall@{args.k}", "k-th distance ratio"):
        table.add_column(column, justify="left" if column == "search" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['seconds']:.1f}", f"{r['recall']:.4f}", f"{r['kth_ratio']:.4f}")
    Console(stderr=True, width=150).print(table)
    result = {"params": vars(args), "rows": len(z), "results": results}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
