"""CB and CB+SQ (Kim et al., "Active Prompt Learning with Vision-Language Model Priors", Sec. 4, Algorithm 1),
and selective querying as a wrapper over any strategy (the paper's Fig. 5).

``cb`` -- class-guided clustering and cluster-balanced acquisition:

* eq. 5-7 -- F(x) = [I(x), sum_c p(c | x; t_{r-1}) T_c(t_{r-1})], with T_c
  the *current predictor's* class embeddings (``feature_space:
  class_guided``; round 1: the zero-shot template's, "a photo of a {}" under
  the paper's protocol) and p its probabilities;
* Sec. 4.2 -- K-means on F over the whole pool (labelled and unlabelled) with
  K = B * r clusters in round r; the clusters that hold no labelled row are
  ranked by size and the top B each give the row closest to their centroid
  (eq. 8-10).

``cbsq`` -- ``cb`` followed by selective querying (Sec. 4.3):

* eq. 11 -- eps_{r,c} = the mean of p(y | x; t_{r-1}) over the labelled rows
  (queried and pseudo) whose label is c; a class with no labelled row has no
  threshold and never pseudo-labels, so round 1 queries everything;
* eq. 12 -- a candidate whose predicted class y~ has p(y~ | x) >= eps_{r,y~}
  gets y~ as a permanent free label (``selective``); the rest are queried.
  |D_r| = B * r while the budget spent is at most that.

``sq`` applies the same eq. 11-12 to the candidates of any registered
strategy (Fig. 5: CoreSet, Entropy, PCB).

Readings and deviations:

* ``k``: ``per_round`` (K = B * r, the paper, default); ``fixed``
  (K = ``k_multiple`` * B, Table 6's K = B and K = 8B); ``code`` (the authors'
  public code: 4 * C clusters in round 1, plus the labelled count afterwards).
* The paper's rule guarantees B unlabelled clusters only when K >= |L| + B.
  When fewer clusters are free (``fixed`` K, pseudo-labelled rows spread over
  clusters) the rest of the budget goes to the covered clusters, largest
  first, each giving its nearest unpicked unlabelled row, cycling if needed
  (Table 6's "multiple samples from the same cluster").
* K-means: exact Lloyd on the whole pool with k-means++ seeding by default
  (the paper clusters all images). ``max_points_per_centroid`` /
  ``init_points_per_centroid`` / ``init: random`` are the options for pools
  where that does not fit the time budget (ImageNet); the benchmark states
  their effect on the k-means objective. So is ``precision: bf16`` (or
  ``auto``, bf16 on a CPU with native bfloat16; default ``fp32``, the picks
  of before): k-means on bfloat16 distance products
  (:func:`methods.kernels.clustering.kmeans`); ``benchmarks/kmeans_sampling.py``
  (100,000 x 1,024 class-guided rows, K = 800): 22.5 s against 54.6 s, the
  objective 1.0012 x float32's.
* The paper's p(y | x; t_{r-1}) in eq. 11 is the probability of the row's
  label; for pseudo rows that label is their pseudo label.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..base import PROBS, AcquisitionStrategy, Selection, SelectionContext
from ..feature_space import FeatureSpace, features_in_space, space_inputs
from ..kernels.clustering import kmeans, rows_per_chunk
from ..options import Int, PluginOptions
from ..registry import ACQUISITIONS, register_acquisition
from ..validation import AcquisitionInputError
from .clustering import KmeansIters, Precision, kmeans_precision, note_precision

K_RULES = ("per_round", "fixed", "code")


# ------------------------------------------------------------------ selective querying (eq. 11-12)


def class_thresholds(probs_labelled: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Eq. 11: per class, the mean probability the model gives its labelled rows' own label (inf: no rows)."""
    targets = np.asarray(targets, dtype=np.int64)
    own = np.asarray(probs_labelled, np.float64)[np.arange(len(targets)), targets]
    counts = np.bincount(targets, minlength=num_classes)
    sums = np.bincount(targets, weights=own, minlength=num_classes)
    eps = np.full(num_classes, np.inf)
    eps[counts > 0] = sums[counts > 0] / counts[counts > 0]
    return eps


def selective_query(ctx: SelectionContext, candidates: np.ndarray, who: str) -> Selection:
    """Eq. 12 over ``candidates``: confident ones get their predicted class for free, the rest are queried."""
    candidates = np.asarray(candidates, dtype=np.int64)
    targets = np.asarray(ctx.labelled_targets)
    if targets.ndim > 1:
        raise AcquisitionInputError(f"{who}: selective querying needs single-label targets (eq. 11 averages the "
                                    "confidence of each class's labelled rows); this task is multi-label")
    labelled = np.asarray(ctx.labelled, dtype=np.int64)
    eps = class_thresholds(ctx.probs[labelled] if len(labelled) else np.zeros((0, ctx.num_classes)),
                           targets, ctx.num_classes)
    probs = np.asarray(ctx.probs[candidates], np.float64)
    predicted = probs.argmax(axis=1)
    confident = probs[np.arange(len(candidates)), predicted] >= eps[predicted]
    ctx.extras["sq_saved"] = int(confident.sum())
    ctx.extras["sq_classes_with_threshold"] = int(np.isfinite(eps).sum())
    pseudo = {int(r): int(c) for r, c in zip(candidates[confident], predicted[confident])}
    return Selection(candidates[~confident], pseudo_labels=pseudo)


# ------------------------------------------------------------------ cluster-balanced acquisition (Sec. 4.2)


def number_of_clusters(rule: str, budget: int, round_: int, labelled: int, num_classes: int,
                       multiple: int = 1) -> int:
    """K for round ``round_`` (1-based) under ``rule`` (see the module docstring)."""
    if rule == "per_round":
        return budget * max(round_, 1)
    if rule == "fixed":
        return budget * multiple
    if rule == "code":
        return 4 * num_classes + (labelled if round_ > 1 else 0)
    raise ValueError(f"k must be one of {list(K_RULES)}, got {rule!r}")


def sorted_members(x: np.ndarray, centroids: np.ndarray, assignment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by cluster, nearest to their centroid first (ties: lower row); and each cluster's start."""
    d = np.empty(len(x), np.float64)
    step = rows_per_chunk(x.shape[1], 256 << 20)
    for s in range(0, len(x), step):
        diff = x[s: s + step] - centroids[assignment[s: s + step]]
        d[s: s + step] = np.einsum("ij,ij->i", diff, diff)
    order = np.lexsort((np.arange(len(x)), d, assignment))
    starts = np.concatenate([[0], np.cumsum(np.bincount(assignment, minlength=len(centroids)))])
    return order, starts


def cluster_balanced_picks(assignment: np.ndarray, order: np.ndarray, starts: np.ndarray, is_labelled: np.ndarray,
                           budget: int) -> np.ndarray:
    """Eq. 8-10 with K > B: free clusters by size (largest first), each its nearest row; then covered ones.

    ``assignment``/``order``/``starts`` index the clustered rows; returns
    positions among them. Ties in size go to the lower cluster id.
    """
    k = len(starts) - 1
    sizes = np.diff(starts)
    covered = np.bincount(assignment[is_labelled], minlength=k) > 0
    ids = np.arange(k)
    ranking = ids[np.lexsort((ids, -sizes, covered))]  # free first, then by size
    ranking = ranking[sizes[ranking] > 0]
    cursor = starts[:-1].copy()
    picks: list[int] = []
    while len(picks) < budget:
        progressed = False
        for c in ranking:
            while cursor[c] < starts[c + 1] and is_labelled[order[cursor[c]]]:
                cursor[c] += 1
            if cursor[c] < starts[c + 1]:
                picks.append(int(order[cursor[c]]))
                is_labelled[order[cursor[c]]] = True  # taken from now on
                cursor[c] += 1
                progressed = True
                if len(picks) == budget:
                    break
        if not progressed:
            break
    return np.asarray(picks, dtype=np.int64)


@register_acquisition("cb")
class ClassGuidedClusterBalance(AcquisitionStrategy):
    """Class-guided K-means with K = B * r, the top-B free clusters by size, their centroid rows (see module)."""

    class Options(PluginOptions):
        feature_space: FeatureSpace = "class_guided"
        k: Literal[K_RULES] = Field("per_round", description="per_round: K = B*r (the paper); fixed: K = "
                                    "k_multiple*B (Table 6); code: the authors' code (4C, then + labelled)")
        k_multiple: Int = Field(1, ge=1, description="K = k_multiple * B under k: fixed")
        kmeans_iters: KmeansIters = 20
        init: Literal["k-means++", "random"] = Field("k-means++", description="k-means seeding")
        max_points_per_centroid: Int | None = Field(
            None, ge=1, description="None: Lloyd on the whole pool (the paper); a number: a seeded subsample")
        init_points_per_centroid: Int | None = Field(
            None, ge=1, description="None: k-means++ over all training rows; a number: a seeded subsample")
        precision: Precision = "fp32"

    def configure(self) -> None:
        self.requires = space_inputs(self.name, self.feature_space)

    def clusters_for(self, ctx: SelectionContext, budget: int) -> int:
        return number_of_clusters(self.k, budget, ctx.round, len(ctx.labelled), ctx.num_classes, self.k_multiple)

    def candidates(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        """The B rows eq. 8-10 pick, as pool row ids."""
        labelled = np.asarray(ctx.labelled, dtype=np.int64)
        rows = np.concatenate([labelled, np.asarray(ctx.unlabelled, dtype=np.int64)])
        k = self.clusters_for(ctx, budget)
        if k >= len(rows):
            raise AcquisitionInputError(
                f"{self.name}: K = {k} clusters (k: {self.k}) is not smaller than the pool's {len(rows)} rows; "
                "use fewer rounds or a smaller budget, or k: fixed with a smaller k_multiple")
        x = features_in_space(ctx, self.feature_space, rows)
        note_precision(ctx, self.precision)
        centroids, assignment = kmeans(
            x, k, int(rng.integers(2 ** 31)), niter=self.kmeans_iters, init=self.init,
            max_points_per_centroid=self.max_points_per_centroid,
            init_points_per_centroid=self.init_points_per_centroid, precision=kmeans_precision(self.precision))
        order, starts = sorted_members(x, centroids, assignment)
        is_labelled = np.zeros(len(rows), bool)
        is_labelled[: len(labelled)] = True
        picked = cluster_balanced_picks(assignment, order, starts, is_labelled, budget)
        ctx.extras["cb_clusters"] = k
        return rows[picked]

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        if budget == 0:
            return Selection(np.empty(0, np.int64))
        return Selection(self.candidates(ctx, budget, rng))


@register_acquisition("cbsq")
class ClassGuidedClusterBalanceSQ(ClassGuidedClusterBalance):
    """CB's candidates, then selective querying (eq. 11-12): the paper's full acquisition."""

    def configure(self) -> None:
        super().configure()
        self.requires = self.requires | {PROBS}

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        if budget == 0:
            return Selection(np.empty(0, np.int64))
        return selective_query(ctx, self.candidates(ctx, budget, rng), self.name)


@register_acquisition("sq")
class SelectiveQuerying(AcquisitionStrategy):
    """Selective querying (eq. 11-12) over the candidates of any strategy (``base``), as in the paper's Fig. 5.

    The base's pseudo or transient labels are dropped: SQ decides which of its
    picks are queried.
    """

    class Options(PluginOptions):
        base: str = Field("coreset", description="the registered strategy whose picks are selectively queried "
                                                 "(default: CoreSet, the first of Fig. 5)")
        base_options: dict | None = Field(None, description="the base strategy's options")

        @field_validator("base")
        @classmethod
        def _registered(cls, base):
            if base in ("sq", "cbsq"):
                raise ValueError(f"base cannot be {base!r}: it queries selectively already; e.g. 'coreset' or 'cb'")
            try:
                ACQUISITIONS.get(base)
            except KeyError as err:
                raise ValueError(f"base: {err.args[0]}") from None
            return base

        @model_validator(mode="after")
        def _base_options(self):
            try:
                ACQUISITIONS.resolve_options(self.base, self.base_options or {})
            except ValueError as err:
                raise ValueError(f"base {self.base!r}: {err}") from None
            return self

    def configure(self) -> None:
        self.base_strategy = ACQUISITIONS.create(self.options.base, **(self.base_options or {}))
        self.requires = frozenset(self.base_strategy.requires) | {PROBS}

    def _wrap(self, selection: Selection, ctx: SelectionContext) -> Selection:
        return selective_query(ctx, selection.indices, f"sq({self.options.base})")

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        return self._wrap(self.base_strategy.select(ctx, budget, rng), ctx)

    def cold_start(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        return self._wrap(self.base_strategy.cold_start(ctx, budget, rng), ctx)
