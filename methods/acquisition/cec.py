"""CEC: calibrated entropy-weighted clustering (Safaei & Patel, "Active Learning for Vision-Language
Models", Sec. 4, Algorithm 1).

Per round, over the unlabelled pool D_U:

* eq. 2-5 -- the contextualised prior ``Q(i)`` is the mean of the top-N values
  of ``P(y = i | x)`` over D_U; ``P^ = (P / Q) / sum_j (P_j / Q_j)``; the
  calibrated entropy ``H^`` is the entropy of ``P^``;
* eq. 6 -- ``H_NN(x) = 1/k sum_{x_i in kNN(x)} exp(-alpha ||z - z_i||^2) H^(x_i)``
  with ``z`` the L2-normalised image feature and kNN taken within D_U (the
  row itself excluded);
* eq. 7 -- ``U = H^ + H_NN``;
* Sec. 4.3-4.4 -- k-means with ``b = budget`` clusters on ``z``, each row
  weighted by ``U``; query the unlabelled row nearest each centre (distinct).

``P`` is the current predictor's (round 1: zero-shot at T = 0.01, eq. 1,
which the ``zeroshot`` learner's default temperature gives).

Defaults and readings:

* ``top_n = 10`` (N, fixed for all datasets in the paper, value from
  PROTOCOLS.md); ``k_nn = 20`` and ``alpha = 0.1``: the middle of the
  paper's per-dataset grids {10, 20, 50} and {0.05, 0.1, 1} -- the paper
  grid-searches them per dataset (on which split it does not say), so a sweep
  config can sweep them; we never tune them on a test split.
* ``knn: exact`` (the default, the paper) finds eq. 6's neighbours exactly,
  O(|D_U|^2 d) -- about 90 s at 100K rows on two cores; ``knn: approximate``
  searches a seeded faiss IVF index instead (:func:`methods.kernels.approximate_knn`,
  about O(|D_U|^1.5 d)), for pools of about 100K rows and more. It may miss
  a few true neighbours; the distances of those it finds are exact. ``knn: cells``
  (:func:`methods.kernels.cell_knn.cell_knn`) probes the same fraction of the
  pool per cell instead of per row, so each cell's search is one matrix
  product: at the ImageNet protocol (1.27M unlabelled rows) 70-87 s where
  faiss's IVF takes 298 s, at recall@20 0.999-0.9998 on the benchmark pool
  (``benchmarks/cell_knn.py``; on a 200K pool of broad classes 14 s against 30 s,
  recall 0.898 against 0.912); with ``precision: bf16`` its coarse k-means
  runs on bfloat16 products too. ``knn_probes`` raises (or lowers) the cells
  either search probes, for recall (default: 8 per row, 4 per cell).
* The weighted k-means runs on the whole unlabelled pool by default
  (``max_points_per_centroid: null``), seeded by weighted k-means++ from the
  run's rng, as the paper clusters D_U; ``max_points_per_centroid`` (faiss's
  subsampling) is the option for very large pools, and so is ``precision: bf16``
  (or ``auto``, bf16 on a CPU with native bfloat16; default ``fp32``, the picks
  of before): the k-means on bfloat16 distance products
  (:func:`methods.kernels.clustering.kmeans`; about 2.5x faster, the objective
  within 0.2 % in ``benchmarks/kmeans_sampling.py``).
* Ablations (Fig. 3): ``calibrate: false`` uses the raw entropy ``H``;
  ``neighbours: false`` drops ``H_NN``; ``clustering: nearest`` is plain
  k-means and the row nearest each centre, ``greedy`` plain k-means and the
  most uncertain row (highest U) of each cluster.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ..base import POOL_FEATURES, PROBS, AcquisitionStrategy, Selection, SelectionContext
from ..core.predictors import unit_rows
from ..kernels import SELF_KNN_SEARCHES, kmeans, self_knn
from ..kernels.clustering import nearest_to_centroids
from ..options import Int, Number, PluginOptions
from ..registry import register_acquisition
from .clustering import KmeansIters, KnnProbes, Precision, kmeans_precision, note_precision

#: Rows per block when reading (N, C) probabilities: 65,536 x 1,000 classes is 0.5 GB in float64.
BLOCK_ROWS = 65536


def contextual_prior(probs: np.ndarray, top_n: int, rows: np.ndarray | None = None,
                     chunk: int = BLOCK_ROWS) -> np.ndarray:
    """Eq. 3-4: per class, the mean of its ``top_n`` highest probabilities over ``rows`` (default all) (C,).

    Read in row blocks with a running top-N per class (``torch.topk`` down the columns: 7x faster than
    numpy's partition along axis 0), so a 1.28M x 1,000 matrix never exists in float64. The values are kept
    in their own precision (float32 or float64: the top N are the same numbers either way) and averaged in
    float64, largest first.
    """
    import torch

    rows = np.arange(len(probs)) if rows is None else np.asarray(rows, dtype=np.int64)
    n = min(int(top_n), len(rows))
    top = None
    for s in range(0, len(rows), chunk):
        block = np.asarray(probs[rows[s: s + chunk]])
        block = torch.from_numpy(np.asarray(block, np.float64 if block.dtype == np.float64 else np.float32))
        candidates = block if top is None else torch.cat([top, block])
        top = candidates.topk(n, dim=0).values if len(candidates) > n else candidates
    return top.double().mean(0).numpy()


def calibrated_probs(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Eq. 5: probabilities divided by the contextual prior, renormalised per row."""
    scaled = np.asarray(probs, np.float64) / np.maximum(prior, 1e-12)
    return scaled / scaled.sum(axis=1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Eq. 2 in nats (0 log 0 = 0)."""
    p = np.asarray(probs, np.float64)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)


def calibrated_entropy(probs: np.ndarray, rows: np.ndarray, prior: np.ndarray | None,
                       chunk: int = BLOCK_ROWS) -> np.ndarray:
    """Eq. 2 of eq. 5's calibrated probabilities (``prior=None``: the raw entropy) for ``rows``, in row blocks."""
    out = np.empty(len(rows), np.float64)
    for s in range(0, len(rows), chunk):
        block = probs[rows[s: s + chunk]]
        out[s: s + chunk] = entropy(block if prior is None else calibrated_probs(block, prior))
    return out


def neighbour_uncertainty(z: np.ndarray, scores: np.ndarray, k: int, alpha: float, search: str = "exact",
                          seed: int = 0, precision: str = "float32", nprobe: int | None = None) -> np.ndarray:
    """Eq. 6: the similarity-weighted mean score of each row's k nearest other rows, found by ``search``
    (:func:`methods.kernels.self_knn`: exact, approximate = faiss IVF, or cells, probing ``nprobe`` cells)."""
    k = min(int(k), len(z) - 1)
    sq_dist, idx = self_knn(z, k, search, seed=seed, precision=precision, nprobe=nprobe)
    return (np.exp(-alpha * sq_dist.astype(np.float64)) * scores[idx]).sum(axis=1) / idx.shape[1]


@register_acquisition("cec")
class CalibratedEntropyClustering(AcquisitionStrategy):
    """Calibrated entropy plus neighbour uncertainty, then uncertainty-weighted k-means (see module)."""

    requires = frozenset({PROBS, POOL_FEATURES})

    class Options(PluginOptions):
        top_n: Int = Field(10, ge=1, description="N of the contextual prior (eq. 3-4)")
        k_nn: Int = Field(20, ge=1, description="neighbours of the neighbour term (eq. 6); paper grid {10, 20, 50}")
        alpha: Number = Field(0.1, ge=0, description="similarity decay of eq. 6; paper grid {0.05, 0.1, 1}")
        calibrate: bool = Field(True, description="false: the raw entropy (Fig. 3 ablation)")
        neighbours: bool = Field(True, description="false: no neighbour term (Fig. 3 ablation)")
        clustering: Literal["weighted", "nearest", "greedy"] = Field(
            "weighted", description="weighted: the paper; nearest / greedy: Fig. 3's plain k-means variants")
        kmeans_iters: KmeansIters = 20
        max_points_per_centroid: Int | None = Field(
            None, ge=1, description="None: k-means on the whole pool (the paper); a number: faiss's subsample")
        knn: Literal[SELF_KNN_SEARCHES] = Field(
            "exact", description="eq. 6's neighbours: exact (the paper), approximate (faiss IVF, pools >~100K) or "
                                 "cells (clustered cells probed per cell, one product each: pools of ~1M)")
        knn_probes: KnnProbes = None
        precision: Precision = "fp32"

    def uncertainty(self, ctx: SelectionContext, rows: np.ndarray, z: np.ndarray, knn_seed: int = 0) -> np.ndarray:
        """Eq. 7 for ``rows`` (with the ablation switches applied); ``knn_seed`` seeds the approximate index."""
        prior = contextual_prior(ctx.probs, self.top_n, rows) if self.calibrate else None
        self_term = calibrated_entropy(ctx.probs, rows, prior)
        if not self.neighbours or len(rows) < 2:
            return self_term
        return self_term + neighbour_uncertainty(z, self_term, self.k_nn, float(self.alpha),
                                                 search=self.knn, seed=knn_seed, nprobe=self.knn_probes,
                                                 precision=kmeans_precision(self.precision))

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        rows = np.asarray(ctx.unlabelled, dtype=np.int64)
        if budget == 0:
            return Selection(np.empty(0, np.int64))
        note_precision(ctx, self.precision)
        z = unit_rows(ctx.pool_features[rows])
        knn_seed = int(rng.integers(2**31)) if self.knn != "exact" else 0  # exact: the rng stream as before
        u = self.uncertainty(ctx, rows, z, knn_seed)
        ctx.extras["cec_mean_uncertainty"] = float(u.mean())
        weights = u if self.clustering == "weighted" else None
        centres, assignment = kmeans(z, budget, int(rng.integers(2**31)), niter=self.kmeans_iters,
                                     weights=None if weights is None else np.maximum(weights, 1e-12),
                                     max_points_per_centroid=self.max_points_per_centroid,
                                     init_points_per_centroid=self.max_points_per_centroid,
                                     precision=kmeans_precision(self.precision))
        if self.clustering == "greedy":
            return Selection(rows[_most_uncertain_per_cluster(u, assignment, budget)])
        return Selection(rows[nearest_to_centroids(z, centres, assignment)])


def _most_uncertain_per_cluster(u: np.ndarray, assignment: np.ndarray, k: int) -> np.ndarray:
    """Fig. 3's greedy rule: per cluster its highest-U row; empty clusters take the next most uncertain rows."""
    order = np.lexsort((np.arange(len(u)), -u))  # most uncertain first, ties to the lower row
    picked, seen = [], set()
    for i in order:
        if assignment[i] not in seen:
            seen.add(assignment[i])
            picked.append(i)
    chosen = set(picked)
    rest = [i for i in order if i not in chosen]
    return np.asarray((picked + rest)[:k], dtype=np.int64)
