"""Random sampling and the classic uncertainty scores (Settles, 2009 survey).

All three uncertainty scores read only the current class probabilities of the
pool, so they run on cached features at any pool size; ties are broken by
the lowest pool row id, which makes selections reproducible across machines.
"""

from __future__ import annotations

import numpy as np

from ..base import PROBS, AcquisitionStrategy, Selection, SelectionContext
from ..registry import register_acquisition


def prediction_entropy(probs: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """Row entropies (nats, float64; 0 log 0 = 0). Multi-label rows hold independent per-label
    probabilities, so their entropy is the sum of the labels' binary entropies."""
    p = np.asarray(probs, dtype=np.float64)
    h = -p * np.log(np.clip(p, 1e-12, None))
    if multilabel:
        h = h - (1 - p) * np.log(np.clip(1 - p, 1e-12, None))
    return h.sum(axis=-1)


def top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` candidates with the highest scores; ties go to the lower row id."""
    order = np.lexsort((candidates, -scores))
    return candidates[order[:k]]


@register_acquisition("random")
class RandomSampling(AcquisitionStrategy):
    """Uniform sampling without replacement: the baseline every paper reports."""

    multilabel = True

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        return Selection(np.sort(rng.choice(ctx.unlabelled, size=budget, replace=False)))


class _ProbabilityScore(AcquisitionStrategy):
    """Scores rows in chunks: at ImageNet scale (1.28 M x 1,000) a float64 copy of the pool would be 10 GB."""

    requires = frozenset({PROBS})
    chunk = 65536

    def score(self, probs: np.ndarray, multilabel: bool = False) -> np.ndarray:  # higher = more informative
        raise NotImplementedError

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        rows = np.asarray(ctx.unlabelled, dtype=np.int64)
        scores = np.empty(len(rows), dtype=np.float64)
        multilabel = ctx.task == "multilabel"
        for s in range(0, len(rows), self.chunk):
            block = np.asarray(ctx.probs[rows[s: s + self.chunk]], dtype=np.float64)
            scores[s: s + self.chunk] = self.score(block, multilabel)
        return Selection(top_k(scores, rows, budget))


@register_acquisition("entropy")
class EntropySampling(_ProbabilityScore):
    """Highest predictive entropy -sum p log p (multi-label: the sum of per-label binary entropies)."""

    multilabel = True

    def score(self, probs, multilabel=False):
        return prediction_entropy(probs, multilabel)


@register_acquisition("margin")
class MarginSampling(_ProbabilityScore):
    """Smallest gap between the two most probable classes (Scheffer et al., 2001)."""

    def score(self, probs, multilabel=False):
        top2 = np.partition(probs, -2, axis=1)[:, -2:]
        return -(top2[:, 1] - top2[:, 0])


@register_acquisition("least_confidence")
class LeastConfidence(_ProbabilityScore):
    """Lowest probability of the predicted class (Lewis & Gale, 1994)."""

    def score(self, probs, multilabel=False):
        return -probs.max(axis=1)
