"""Clustering-based strategies for the low-budget regime: TypiClust, ProbCover, DropQuery and its centroid start.

All four measure distances in ``feature_space`` (see :mod:`methods.feature_space`;
default ``image``) and run on the kernels of :mod:`methods.kernels.clustering`
(faiss k-means / kNN / range search on CPU, blocked torch on a GPU when faiss
is CPU-only), so nothing grows as N^2 in memory. Every random choice comes
from the ``rng`` handed to ``select``; k-means seeds are ``rng.integers(2**31)``.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator

from ..base import POOL_FEATURES, PREDICTOR, AcquisitionStrategy, Selection, SelectionContext
from ..feature_space import FeatureSpace, features_in_space, space_inputs
from ..kernels.clustering import kmeans, knn, nearest_to_centroids
from ..kernels.lowp import cpu_has_native_bf16
from ..kernels.radius import TooManyEdges, knn_radius_graph, min_dist_to_other_cluster, radius_graph
from ..options import Int, Number, PluginOptions
from ..registry import register_acquisition

#: The ``feature_space`` option of every clustering and diversity strategy.
#: Memory for one block of pairwise distances; the kernels never hold more.
WorkingMB = Annotated[Int, Field(ge=0, description="MiB per block of distances")]
KmeansIters = Annotated[Int, Field(ge=0, description="Lloyd iterations of k-means")]
#: CEC's and GCNAL's ``knn_probes``: the cells either approximate self-kNN search probes.
KnnProbes = Annotated[Int | None, Field(ge=1, description="cells probed by the approximate searches, more for "
                                                          "recall; None: 8 per row (approximate), 4 per cell (cells)")]


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2 ** 31))


def _check_budget(strategy: str, ctx: SelectionContext, budget: int) -> np.ndarray:
    unlabelled = np.asarray(ctx.unlabelled, dtype=np.int64)
    if budget < 0 or budget > len(unlabelled):
        raise ValueError(f"{strategy}: budget {budget} must be in [0, {len(unlabelled)}] "
                         f"(the number of unlabelled candidates)")
    return unlabelled


def kmeans_centroid_picks(x: np.ndarray, k: int, rng: np.random.Generator, niter: int,
                          kmeanspp_trials: int | None = None, precision: str = "fp32") -> np.ndarray:
    """Positions (rows of ``x``) of the point nearest each of ``k`` k-means centroids (nearest in float32,
    among the members of its cluster; ``precision``: the strategy option of the clustering's products)."""
    centroids, assignment = kmeans(x, k, seed=_seed(rng), niter=niter, n_local_trials=kmeanspp_trials,
                                   precision=kmeans_precision(precision))
    return nearest_to_centroids(x, centroids, assignment)


#: DropQuery's and centroid selection's k-means++ seeding: None, the greedy variant with 2 + log k trials per
#: centre (scikit-learn's); 1, the plain k-means++ the authors' code seeds with (``ALFM/src/clustering/kmeans.py``).
KmeansppTrials = Annotated[Int | None, Field(ge=1, description="k-means++ candidates per centre; None: 2 + log k")]

#: Arithmetic of DropQuery's and centroid selection's distance and logit products: ``fp32``, ``bf16`` (bfloat16
#: inputs, float32 accumulation), or ``auto``: bf16 on a CPU that multiplies bfloat16 natively, else fp32.
Precision = Annotated[Literal["auto", "fp32", "bf16"], Field(
    description="products in bfloat16 (bf16), float32 (fp32), or bf16 on CPUs with native bfloat16 (auto)")]


def uses_bf16(precision: str) -> bool:
    """Whether ``precision`` resolves to bfloat16 products here (``auto``: a CPU with native bfloat16)."""
    from ..core.devices import pick_device

    return precision == "bf16" or (precision == "auto" and pick_device() == "cpu" and cpu_has_native_bf16())


def kmeans_precision(precision: str) -> str:
    """:func:`methods.kernels.clustering.kmeans`'s ``precision`` for a strategy's ``precision`` option."""
    return "bfloat16" if uses_bf16(precision) else "float32"


def note_precision(ctx: SelectionContext, precision: str) -> None:
    """Record what ``precision`` resolved to on this machine (``auto`` differs by CPU) as the round metric
    ``select_bf16_products`` (1: bfloat16 products, 0: float32), beside the option logged as given."""
    ctx.extras["bf16_products"] = int(uses_bf16(precision))


# ----------------------------------------------------------------------------------------------------------------


@register_acquisition("typiclust")
class TypiClust(AcquisitionStrategy):
    """TypiClust / TPC-RP (Hacohen, Dekel & Weinshall, "Active Learning on a Budget", ICML 2022).

    k-means over the whole pool (labelled and unlabelled) with
    ``K = min(|labelled| + budget, max_clusters)`` clusters. Clusters of at
    most ``min_cluster_size`` points are skipped (authors' code: 5). Then,
    ``budget`` times: take the cluster with the fewest labelled-or-picked
    points, the largest first among equals, and pick its most *typical*
    unlabelled point, typicality(x) = 1 / mean Euclidean distance to its
    ``k_nn`` nearest neighbours among the cluster's unlabelled, unpicked
    points (``k_nn = min(20, n_cluster // 2)`` as in the authors' code).

    ``max_clusters`` (500, as published) caps K for large label sets; once
    every cluster holds a labelled or picked point the rule above cycles
    through the clusters again, largest first, which is what the authors'
    code does past the cap. ``cold_start`` is the same algorithm with no
    labelled points (``K = budget``).

    Deviations: the paper's typicality uses the L2 distance, the authors'
    code faiss's squared L2; this uses L2 (as the paper and scikit-activeml).
    The picked counts are updated after every pick (the code sorts once and
    cycles), which is the same order whenever the budget fits the uncovered
    clusters. k-means is faiss/torch Lloyd with greedy k-means++ seeding
    (``kmeans_iters`` iterations) rather than scikit-learn's
    KMeans/MiniBatchKMeans.
    """

    multilabel = True  # reads features only

    class Options(PluginOptions):
        feature_space: FeatureSpace = "image"
        max_clusters: Int = Field(500, ge=1, description="cap on K")
        k_nn: Int = Field(20, ge=1, description="neighbours of the typicality score")
        min_cluster_size: Int = Field(5, ge=0, description="clusters of at most this many points are skipped")
        kmeans_iters: KmeansIters = 20
        working_mb: WorkingMB = 256

    def configure(self) -> None:
        self.requires = space_inputs("typiclust", self.feature_space)

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        unlabelled = _check_budget("typiclust", ctx, budget)
        if budget == 0:
            return Selection(np.empty(0, dtype=np.int64))
        labelled = np.asarray(ctx.labelled, dtype=np.int64)
        rows = np.concatenate([labelled, unlabelled])  # the pool the loop knows about
        x = features_in_space(ctx, self.feature_space, rows)
        k = min(len(labelled) + budget, self.max_clusters, len(rows))
        _, clusters = kmeans(x, k, seed=_seed(rng), niter=self.kmeans_iters)
        sizes = np.bincount(clusters, minlength=k)
        covered = np.bincount(clusters[: len(labelled)], minlength=k)
        free = np.ones(len(rows), bool)
        free[: len(labelled)] = False
        remaining = sizes - covered
        by_cluster = np.argsort(clusters, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)])
        picks = []
        for _ in range(budget):
            eligible = (remaining > 0) & (sizes > self.min_cluster_size)
            if not eligible.any():  # only tiny clusters left (very small pools)
                eligible = remaining > 0
            ids = np.flatnonzero(eligible)
            cluster = ids[np.lexsort((ids, -sizes[ids], covered[ids]))[0]]
            members = by_cluster[starts[cluster]: starts[cluster + 1]]
            members = members[free[members]]
            best = members[self._most_typical(x[members])]
            picks.append(best)
            free[best] = False
            covered[cluster] += 1
            remaining[cluster] -= 1
        return Selection(rows[np.asarray(picks, dtype=np.int64)])

    def _most_typical(self, feats: np.ndarray) -> int:
        if len(feats) <= 2:
            return 0
        k = min(self.k_nn, len(feats) // 2)
        d, _ = knn(feats, k, working_bytes=self.working_mb << 20)
        typicality = 1.0 / (np.sqrt(d.astype(np.float64)).mean(1) + 1e-12)
        return int(np.argmax(typicality))

    def cold_start(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        """TPC-RP's initial pool: the same rule with nothing labelled (``K = budget`` clusters)."""
        return self.select(ctx, budget, rng)


# ----------------------------------------------------------------------------------------------------------------


@register_acquisition("probcover")
class ProbCover(AcquisitionStrategy):
    """ProbCover (Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering Lens", NeurIPS 2022).

    Graph: an edge x -> y for every pair of pool points with ``||x - y|| < delta``
    (self-loops included). Points within delta of a labelled point start
    covered; then ``budget`` times the unlabelled point covering the most
    uncovered points (ties: lowest row) is picked and its ball marked covered.
    If everything is covered before the budget is spent, the rest are drawn
    uniformly at random from the unpicked unlabelled points (from ``rng``), as
    the authors do.

    delta (``delta=None``): the paper's purity rule. k-means with K = number of
    classes over the pool; a ball is pure when it holds no point of another
    cluster; delta is the largest value whose fraction of pure balls is
    ``>= alpha`` (0.95). With ``purity_grid`` (a list of radii) the largest
    grid value meeting the rule is used (the smallest, with a warning, if none
    does); with ``purity_grid=None`` the rule is solved exactly -- the limit of
    an infinitely fine grid: the ``(1 - alpha)`` order statistic of each point's
    distance to the nearest point of another cluster. The pure fraction is
    measured on every point, or on a seeded sample of ``purity_sample``
    (10,000) points when the pool is larger -- an estimate with standard error
    about 0.002 at alpha = 0.95 that keeps this step at O(sample x N) instead of O(N^2).

    Memory: the graph is built block by block (faiss range search, or blocked
    torch distances) and stored as CSR (~ 9 bytes per edge with its
    transpose). If it would exceed ``max_edges``, each point keeps only its
    ``max_edges // N`` nearest neighbours within delta (a warning says so) --
    a deviation from the exact graph, needed only for very large delta.

    delta is re-estimated at every selection (same pool, so only the k-means
    seed changes it; ``last_delta`` holds the latest); pass ``delta`` to fix it.

    Scale: the exact graph costs O(N^2 d) time and, when delta spans whole
    classes, about N^2 / C edges (1,000 s at N = 100,000 on two cores). With
    more than ``graph_sample`` (20,000) unlabelled points, coverage is
    counted on a seeded uniform sample of that many of them: the graph links
    every pool point to the sampled points in its ball, so the greedy gain
    of a candidate is a Monte Carlo estimate of its newly covered mass (each
    sampled point stands for |U| / graph_sample of the pool); every unlabelled
    point stays a candidate and every labelled one still covers. delta still
    comes from the whole pool. Cost: O(N graph_sample d) instead of O(N^2 d).
    If the sample is covered before the budget is spent, the rest are drawn
    from the whole unlabelled pool.
    ``graph_sample=None`` always builds the exact graph. With
    ``approximate_above=M``, graphs over more than M points are built with a
    faiss inverted-file index (4 sqrt(M) cells, ``ivf_nprobe`` probed,
    seeded), which may miss neighbours in unprobed cells.

    Arithmetic (``prefilter``): on a CPU with native bfloat16 both the
    purity distances and the graph come from bfloat16 products whose
    certified error bound decides most pairs, the rest recomputed in float64
    (``methods.kernels.radius``): float64-exact, about twice as fast, and the
    pair at distance exactly delta is left out by both. ``none`` (and GPUs)
    use float32, which can decide pairs within float32 rounding of delta
    differently; picks differ only where such a pair changes a coverage count.

    Deviations: the exact purity solution above instead of the authors' grid /
    binary search, and its sampled estimate on pools above ``purity_sample``;
    the sampled graph above ``graph_sample``; k-means is faiss/torch Lloyd
    with k-means++ seeding.
    """

    multilabel = True  # reads features only

    class Options(PluginOptions):
        feature_space: FeatureSpace = "image"
        delta: Number | None = Field(None, gt=0, description="ball radius; None: the purity rule")
        alpha: Number = Field(0.95, gt=0, lt=1, description="purity the rule asks of the balls")
        purity_grid: list[Number] | None = Field(None, description="radii the rule tries; None: solved exactly")
        purity_sample: Int | None = Field(10000, ge=1, description="points purity is measured on; None: all")
        max_edges: Int = Field(50_000_000, ge=1, description="cap on the graph; beyond it, nearest neighbours")
        kmeans_iters: KmeansIters = 20
        working_mb: WorkingMB = 256
        approximate_above: Int | None = Field(None, ge=1, description="graphs over more points use a faiss IVF "
                                                                      "index; None: always exact")
        ivf_nprobe: Int = Field(8, ge=1, description="IVF cells probed")
        graph_sample: Int | None = Field(20000, ge=1, description="unlabelled points coverage is counted on; "
                                                                  "None: the exact graph")
        prefilter: Literal["auto", "bf16", "none"] = Field(
            "auto", description="bfloat16 products decide what their error bound can (auto: where the CPU has "
                                "them natively), float64 the rest; none: float32")

        @field_validator("purity_grid")
        @classmethod
        def _radii(cls, grid):
            if grid is not None and (not grid or not all(np.isfinite(g) and g > 0 for g in grid)):
                raise ValueError(f"purity_grid must be a non-empty list of positive radii, got {grid!r}")
            return grid

    def configure(self) -> None:
        self.requires = space_inputs("probcover", self.feature_space)
        self.purity_grid = None if self.purity_grid is None else sorted(float(g) for g in self.purity_grid)
        self.last_delta: float | None = None  # the radius of the latest selection, for reports

    def estimate_delta(self, x: np.ndarray, num_classes: int, rng: np.random.Generator) -> float:
        """The purity rule on ``x`` (see the class docstring)."""
        k = max(2, min(int(num_classes), len(x)))
        _, clusters = kmeans(x, k, seed=_seed(rng), niter=self.kmeans_iters)
        queries = None
        if self.purity_sample is not None and len(x) > self.purity_sample:
            queries = np.sort(rng.choice(len(x), size=self.purity_sample, replace=False))
        d_other = min_dist_to_other_cluster(x, clusters, queries, working_bytes=self.working_mb << 20,
                                            prefilter=self.prefilter)
        return purity_delta(d_other, self.alpha, self.purity_grid)

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        unlabelled = _check_budget("probcover", ctx, budget)
        labelled = np.asarray(ctx.labelled, dtype=np.int64)
        rows = np.concatenate([labelled, unlabelled])
        if budget == 0:
            return Selection(np.empty(0, dtype=np.int64))
        x = features_in_space(ctx, self.feature_space, rows)
        delta = self.delta if self.delta is not None else self.estimate_delta(x, ctx.num_classes, rng)
        self.last_delta = delta
        targets = None
        if self.graph_sample is not None and len(unlabelled) > self.graph_sample:
            targets = len(labelled) + np.sort(rng.choice(len(unlabelled), size=self.graph_sample, replace=False))
        indptr, indices, n_targets = self._graph(x, delta, targets, rng)
        picks = rows[greedy_max_coverage(indptr, indices, np.arange(len(labelled)),
                                         np.arange(len(labelled), len(rows)), budget, n_targets)]
        if len(picks) < budget:  # everything (in the graph) is covered: the authors fill at random
            rest = np.setdiff1d(unlabelled, picks, assume_unique=True)
            picks = np.concatenate([picks, rng.choice(rest, size=budget - len(picks), replace=False)])
        return Selection(picks)

    def _graph(self, x: np.ndarray, delta: float, targets: np.ndarray | None,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """The delta-ball graph from every row of ``x`` to ``targets`` (all rows when None) as CSR, with
        the number of targets; kept under ``max_edges`` (see the class docstring)."""
        wb = self.working_mb << 20
        ivf = None
        searched = len(x) if targets is None else len(targets)
        if self.approximate_above is not None and searched > self.approximate_above:
            ivf = (int(4 * np.sqrt(searched)), self.ivf_nprobe, _seed(rng))
        while True:
            try:
                indptr, indices = radius_graph(x, delta, working_bytes=wb, max_edges=self.max_edges, ivf=ivf,
                                               targets=targets, prefilter=self.prefilter)
                return indptr, indices, searched
            except TooManyEdges:
                if targets is None:
                    cap = max(2, self.max_edges // len(x))
                    warnings.warn(f"probcover: the delta={delta:.4g} graph has more than {self.max_edges} edges; "
                                  f"keeping each point's {cap - 1} nearest neighbours within delta")
                    return *knn_radius_graph(x, delta, cap, working_bytes=wb), len(x)
                if len(targets) < 2:
                    raise
                targets = np.sort(rng.choice(targets, size=len(targets) // 2, replace=False))
                searched = len(targets)
                warnings.warn(f"probcover: the delta={delta:.4g} graph has more than {self.max_edges} edges; "
                              f"halving the coverage sample to {searched} points")


def purity_delta(d_other: np.ndarray, alpha: float, grid: list[float] | None = None) -> float:
    """Largest delta with ``mean(d_other >= delta) >= alpha``, on ``grid`` or exactly (``grid=None``)."""
    d = np.sort(np.asarray(d_other, dtype=np.float64))
    n = len(d)
    if grid is None:
        need = int(np.ceil(alpha * n - 1e-9))
        value = d[max(0, n - need)]
        if not np.isfinite(value):
            raise ValueError("probcover: every point lies in a single cluster; pass delta explicitly")
        if value <= 0:  # duplicates shared across clusters: the rule asks for an empty ball
            positive = d[(d > 0) & np.isfinite(d)]
            if positive.size == 0:
                raise ValueError("probcover: all points coincide; pass delta explicitly")
            warnings.warn(f"probcover: the purity rule gives delta=0 (duplicate points in different clusters); "
                          f"using the smallest positive distance, {positive[0]:.4g}")
            value = positive[0]
        return float(value)
    purity = 1.0 - np.searchsorted(d, np.asarray(grid), side="left") / n  # fraction with d >= delta
    ok = np.flatnonzero(purity >= alpha)
    if ok.size == 0:
        warnings.warn(f"probcover: no delta in purity_grid reaches purity {alpha} (best {purity.max():.3f}); "
                      f"using the smallest, {grid[0]:.4g}")
        return float(grid[0])
    return float(np.asarray(grid)[ok[-1]])


def _gather(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenated CSR rows ``rows``."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.empty(0, dtype=np.int64)
    starts, ends = indptr[rows], indptr[rows + 1]
    lens = ends - starts
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return indices[offsets + np.arange(int(lens.sum()))].astype(np.int64)


def greedy_max_coverage(indptr: np.ndarray, indices: np.ndarray, covering: np.ndarray, candidates: np.ndarray,
                        budget: int, n_targets: int | None = None) -> np.ndarray:
    """Greedy max coverage on a CSR graph: up to ``budget`` candidates, each covering the most uncovered targets.

    Row i of the graph lists the targets node i covers (``n_targets`` of them;
    by default the nodes themselves). ``covering`` nodes (the labelled ones)
    cover theirs up front. Degrees are kept up to date through the transposed
    graph, so the whole run costs O(E + budget N). Stops early, with fewer
    picks, once no candidate covers anything new (ties: lowest node id).
    """
    from scipy.sparse import csr_matrix

    n = len(indptr) - 1
    n_targets = n if n_targets is None else int(n_targets)
    graph = csr_matrix((np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(n, n_targets))
    rev = graph.T.tocsr()  # in-neighbours: who covers target y
    covered = np.zeros(n_targets, bool)
    covered[_gather(indptr, indices, covering)] = True
    degree = np.asarray(graph @ (~covered).astype(np.int32)).astype(np.int64)
    is_candidate = np.zeros(n, bool)
    is_candidate[np.asarray(candidates, dtype=np.int64)] = True
    picks: list[int] = []
    for _ in range(budget):
        score = np.where(is_candidate, degree, -1)
        j = int(np.argmax(score))
        if score[j] <= 0:
            break
        picks.append(j)
        is_candidate[j] = False
        nbrs = _gather(indptr, indices, [j])
        new = nbrs[~covered[nbrs]]
        covered[new] = True
        np.subtract.at(degree, _gather(rev.indptr, rev.indices, new), 1)
    return np.asarray(picks, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------------


@register_acquisition("centroid")
class Centroid(AcquisitionStrategy):
    """Centroid selection: DropQuery's cold start (Gupte et al., TMLR 2024, centroid-based initial pool).

    k-means with ``K = budget`` over the unlabelled pool; the point nearest
    each centroid is picked (a centroid that ends up owning no point takes
    the nearest unpicked one). Deviations: the authors L2-normalise the
    features before clustering; here the feature space is used as it is
    (cached CLIP features are already unit-norm); they seed with plain
    k-means++ on every point and run 100 Lloyd iterations, here the seeding
    is greedy k-means++ (2 + log k candidates per centre, scikit-learn's) on
    64 points per centroid and Lloyd runs ``kmeans_iters`` (20) iterations or
    until it stops moving. ``kmeanspp_trials: 1`` seeds as the authors do:
    on the acquisition benchmark's DropQuery candidates (20K pool, 8 seeds)
    its k-means potential is 4 % higher (16,338 vs 15,695) and the k-center
    radius of the picks 1.057 vs 1.040, and Lloyd needs more iterations, so
    it is no faster.

    ``precision`` (``auto``: ``bf16`` on a CPU with native bfloat16, else
    ``fp32``): the k-means' distance products multiply the features rounded to
    bfloat16 (:func:`methods.kernels.clustering.kmeans`); the pick of each
    cluster is its member nearest the centroid in float32. Since issue 15;
    ``fp32`` gives the picks of before. ``benchmarks/dropquery_precision.py``
    (20K pool, B = 100, 8 seeds): k-center radius of the picks 1.3645 +- 0.0034
    against 1.3652 +- 0.0031 in float32, in half the time (0.15 s vs 0.31 s).
    """

    class Options(PluginOptions):
        feature_space: FeatureSpace = "image"
        kmeans_iters: KmeansIters = 20
        kmeanspp_trials: KmeansppTrials = None
        precision: Precision = "auto"

    def configure(self) -> None:
        self.requires = space_inputs("centroid", self.feature_space)

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        unlabelled = _check_budget("centroid", ctx, budget)
        note_precision(ctx, self.precision)
        if budget == 0:
            return Selection(np.empty(0, dtype=np.int64))
        x = features_in_space(ctx, self.feature_space, unlabelled)
        picks = kmeans_centroid_picks(x, budget, rng, self.kmeans_iters, self.kmeanspp_trials, self.precision)
        return Selection(unlabelled[picks])


def dropout_keep_mask(rng: np.random.Generator, shape: tuple[int, ...], keep: float) -> np.ndarray:
    """Bernoulli(``keep``) mask of ``shape`` from 16 random bits per entry (four per 64-bit draw of ``rng``).

    ``keep`` is rounded to a multiple of 2^-16 (exact for the dyadic rates such
    as DropQuery's 0.25; off by at most 7.6e-6 otherwise): a quarter of the
    draws of one float32 uniform per entry, the dominant cost of the masks.
    """
    return (_random_uint16(rng, int(np.prod(shape))) < _keep_limit(keep)).reshape(shape)


def _random_uint16(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` uniform 16-bit values, four per 64-bit draw of ``rng`` (the bits of :func:`dropout_keep_mask`)."""
    return rng.integers(0, 2 ** 64, size=(count + 3) // 4, dtype=np.uint64).view(np.uint16)[:count]


def _keep_limit(keep: float) -> int:
    return round(keep * 65536)


def linear_head_flips(features: np.ndarray, head, rows: np.ndarray, rng: np.random.Generator, keep: float,
                      masks: int, chunk: int, bf16: bool = False, block: int = 2048) -> np.ndarray:
    """How many of ``masks`` dropout draws change the argmax of the linear head's logits ``x W^T + b``
    (temperature and softmax do not move it) for each of ``rows``, in torch.

    Per ``chunk`` rows the bits of the ``masks`` masks are drawn in turn (those
    of :func:`dropout_keep_mask`); then ``block`` rows at a time are read,
    masked and multiplied, so every temporary stays a few MB, in cache and
    recycled by the allocator. A mask is applied as a bitwise AND of the
    feature bits with 0 or -1 (a third of the time of a float32 multiply, a
    tenth of a bfloat16 one), and the 1 / keep scale enters the product. With
    ``bf16`` the products multiply bfloat16 features and weights (float32
    accumulation); else float32.
    """
    import torch

    dtype, bits = (torch.bfloat16, torch.int16) if bf16 else (torch.float32, torch.int32)
    weight = torch.as_tensor(np.asarray(head.weight, dtype=np.float32)).T.contiguous().to(dtype)
    bias = torch.as_tensor(np.asarray(head.bias, dtype=np.float32))
    dim, limit = weight.shape[0], _keep_limit(keep)
    out = np.zeros(len(rows), dtype=np.int64)
    masked = torch.empty((min(block, chunk), dim), dtype=dtype)
    for s in range(0, len(rows), chunk):
        part = rows[s: s + chunk]
        draws = [_random_uint16(rng, len(part) * dim).reshape(len(part), dim) for _ in range(masks)]
        for b in range(0, len(part), block):
            xb = torch.from_numpy(np.ascontiguousarray(features[part[b: b + block]], dtype=np.float32)).to(dtype)
            clean = _logits(xb, weight, bias).argmax(1)
            flips = torch.zeros(len(xb), dtype=torch.int64)
            for draw in draws:
                keep_bits = torch.from_numpy((draw[b: b + block] < limit).view(np.int8)).neg_()  # 0 or -1
                torch.bitwise_and(xb.view(bits), keep_bits, out=masked[: len(xb)].view(bits))
                flips += _logits(masked[: len(xb)], weight, bias, 1.0 / keep).argmax(1) != clean
            out[s + b: s + b + len(xb)] = flips.numpy()
    return out


def _logits(x, weight, bias, scale: float = 1.0):
    """``scale * x @ weight + bias`` in float32 (a bfloat16 product is widened first)."""
    import torch

    if x.dtype == torch.float32:
        return torch.addmm(bias, x, weight, alpha=scale)
    return (x @ weight).float().mul_(scale).add_(bias)


@register_acquisition("dropquery")
class DropQuery(AcquisitionStrategy):
    """DropQuery (Gupte, Aklilu, Nirschl & Yeung-Levy, "Revisiting Active Learning in the Era of Vision
    Foundation Models", TMLR 2024, arXiv 2401.14555).

    Dropout (rate ``dropout``, 0.75; inverted scaling by 1 / (1 - p), as
    ``torch.nn.Dropout`` in the authors' classifier) is applied ``masks`` (3)
    times to the cached *image features* the predictor consumes, and the
    predictor re-predicts; candidates are the unlabelled points whose
    predicted class changes under more than half of the masks. k-means with
    ``K = budget`` over the candidates (in ``feature_space``) picks the
    candidate nearest each centroid. With fewer candidates than the budget,
    all are taken and the rest drawn uniformly at random (from ``rng``) among
    the other unlabelled points, as the authors' code does.

    ``min_candidates_per_pick`` (0 = off): the authors' released code lowers
    the mismatch threshold (down to "changed at least once") until at least
    ``25 * budget`` candidates exist; ``min_candidates_per_pick=25``
    reproduces it (the paper text states the more-than-half rule only).

    ``cold_start`` is centroid selection (the paper's recommended start).
    The k-means is :class:`Centroid`'s, with its seeding and deviations
    (``kmeanspp_trials``; the authors L2-normalise the candidate embeddings
    first, here the feature space is used as it is).

    ``backend``: ``numpy`` draws the masks with ``rng``
    (:func:`dropout_keep_mask`: 16 random bits per feature, four features
    per 64-bit draw) and predicts with the linear head's logits in torch
    (any other predictor: its probabilities); ``torch`` (for a linear head,
    the ``LinearPredictor`` of probes and zero-shot) draws them from a torch
    generator seeded by ``rng`` and predicts on the device, which at
    ImageNet scale moves the 3 x N x d masks and matrix products to the GPU.
    Default: ``torch`` on CUDA, else ``numpy``. The two backends draw
    different masks, so their picks differ for the same seed.

    ``precision`` (``auto``: ``bf16`` on a CPU with native bfloat16, else
    ``fp32``): with ``bf16`` the numpy backend's linear-head logits multiply
    bfloat16 features and weights (float32 accumulation), and the k-means is
    :class:`Centroid`'s in bfloat16; ``fp32`` gives the picks of before (both
    since issue 15; the torch backend's logits and any other predictor stay
    float32). The masks are the same; a bfloat16 logit moves an argmax only
    where two dropped-out logits are within its rounding of a tie.
    ``benchmarks/dropquery_precision.py`` (20K pool, B = 100, 8 seeds): flip
    counts equal to float32's on 99.3 % of the rows, the same candidate count
    (16,360), k-means potential over the candidates 8,415 +- 84 against
    8,464 +- 116, k-center radius 1.042 +- 0.008 against 1.040 +- 0.006, in
    0.17-0.22 s against 0.34-0.38 s. (Until issue
    15 the numpy masks were one float32 uniform per feature: the same law,
    four times the draws, other picks for a seed; on the benchmark's 20K
    pool over 8 seeds the k-center radius of the picks is 1.040 +- 0.006
    now against 1.038 +- 0.014 before, the candidates' k-means potential
    15,695 against 15,677.)
    """

    class Options(PluginOptions):
        feature_space: FeatureSpace = "image"
        dropout: Number = Field(0.75, gt=0, lt=1, description="rate of the dropout on the features")
        masks: Int = Field(3, ge=1, description="dropout draws per point")
        min_candidates_per_pick: Int = Field(0, ge=0, description="the authors' code's threshold lowering; 0: off")
        kmeans_iters: KmeansIters = 20
        chunk: Int = Field(16384, ge=1, description="rows per block")
        backend: Literal["numpy", "torch"] | None = Field(None, description="None: torch on CUDA, else numpy")
        kmeanspp_trials: KmeansppTrials = None
        precision: Precision = "auto"

    def configure(self) -> None:
        self.requires = frozenset({PREDICTOR, POOL_FEATURES}) | space_inputs("dropquery", self.feature_space)

    def mismatches(self, ctx: SelectionContext, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """How many of the ``masks`` dropout predictions of each row differ from its clean prediction."""
        if ctx.predictor is None or ctx.pool_features is None:
            raise ValueError("dropquery: needs the predictor and the pool features (declare them in `requires`)")
        from ..core.devices import pick_device

        device = pick_device()
        backend = self.backend or ("torch" if device.startswith("cuda") else "numpy")
        head = ctx.predictor.linear_head()
        if backend == "torch":
            if head is None:
                raise ValueError(f"dropquery: backend 'torch' needs a predictor with a linear head, got "
                                 f"{type(ctx.predictor).__name__}; use backend: numpy")
            return self._mismatches_torch(ctx.pool_features, head, rows, rng, device)
        keep = 1.0 - self.dropout
        if head is not None:
            return linear_head_flips(ctx.pool_features, head, rows, rng, keep, self.masks, self.chunk,
                                     bf16=uses_bf16(self.precision))
        out = np.zeros(len(rows), dtype=np.int64)
        for s in range(0, len(rows), self.chunk):
            x = np.asarray(ctx.pool_features[rows[s: s + self.chunk]], dtype=np.float32)
            clean = ctx.predictor.predict_proba(x).argmax(1)
            for _ in range(self.masks):
                dropped = x * dropout_keep_mask(rng, x.shape, keep) * np.float32(1.0 / keep)
                out[s: s + self.chunk] += ctx.predictor.predict_proba(dropped).argmax(1) != clean
        return out

    def _mismatches_torch(self, features: np.ndarray, head, rows: np.ndarray, rng: np.random.Generator,
                          device: str) -> np.ndarray:
        """:meth:`mismatches` for a linear head on ``device``: the argmax of ``x W^T + b`` (softmax and
        temperature do not move it), masks from a torch generator seeded by ``rng``."""
        import torch

        w = torch.as_tensor(np.asarray(head.weight, dtype=np.float32), device=device)
        b = torch.as_tensor(np.asarray(head.bias, dtype=np.float32), device=device)
        gen = torch.Generator(device=device).manual_seed(_seed(rng))
        keep = 1.0 - self.dropout
        out = np.zeros(len(rows), dtype=np.int64)
        for s in range(0, len(rows), self.chunk):
            x = torch.as_tensor(np.asarray(features[rows[s: s + self.chunk]], dtype=np.float32), device=device)
            clean = torch.addmm(b, x, w.T).argmax(1)
            changed = torch.zeros(len(x), dtype=torch.int64, device=device)
            for _ in range(self.masks):
                mask = torch.rand(x.shape, generator=gen, device=device) < keep
                changed += torch.addmm(b, x * mask / keep, w.T).argmax(1) != clean
            out[s: s + self.chunk] = changed.cpu().numpy()
        return out

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        unlabelled = _check_budget("dropquery", ctx, budget)
        note_precision(ctx, self.precision)
        if budget == 0:
            return Selection(np.empty(0, dtype=np.int64))
        mismatch = self.mismatches(ctx, unlabelled, rng)
        threshold = self.masks // 2  # "more than half": mismatch > M // 2
        if self.min_candidates_per_pick:
            while threshold > 0 and (mismatch > threshold).sum() < self.min_candidates_per_pick * budget:
                threshold -= 1
        is_candidate = mismatch > threshold
        candidates = unlabelled[is_candidate]
        if len(candidates) < budget:
            rest = rng.choice(unlabelled[~is_candidate], size=budget - len(candidates), replace=False)
            return Selection(np.concatenate([candidates, rest]))
        x = features_in_space(ctx, self.feature_space, candidates)
        picks = kmeans_centroid_picks(x, budget, rng, self.kmeans_iters, self.kmeanspp_trials, self.precision)
        return Selection(candidates[picks])

    def cold_start(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        """The paper's initial pool: centroid selection in the same feature space."""
        return Centroid(feature_space=self.feature_space, kmeans_iters=self.kmeans_iters,
                        kmeanspp_trials=self.kmeanspp_trials, precision=self.precision).select(ctx, budget, rng)
