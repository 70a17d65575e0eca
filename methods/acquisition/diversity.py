"""Diversity and hybrid strategies built on the memory-bounded kernels."""

from __future__ import annotations

import numpy as np

from ..base import EMBEDDINGS, POOL_FEATURES, PROBS, AcquisitionStrategy, Selection, SelectionContext
from ..kernels import badge_kmeanspp, greedy_k_center
from ..registry import register_acquisition

FEATURE_SPACES = {"image": POOL_FEATURES, "embedding": EMBEDDINGS}


def _space(name: str, feature_space: str) -> str:
    if feature_space not in FEATURE_SPACES:
        raise ValueError(f"{name}: feature_space must be one of {sorted(FEATURE_SPACES)}, got {feature_space!r}")
    return FEATURE_SPACES[feature_space]


@register_acquisition("coreset")
class CoreSet(AcquisitionStrategy):
    """Greedy k-center from the labelled set (Sener & Savarese, ICLR 2018), Euclidean.

    Deviation: none in the selection rule. Distances are computed in blocks of
    ``working_mb`` so memory stays O(N) at any pool size (the published code
    builds the N x L matrix).
    """

    def __init__(self, feature_space: str = "image", working_mb: int = 256):
        self.input = _space("coreset", feature_space)
        self.requires = frozenset({self.input})
        self.working_mb = int(working_mb)

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        features = ctx.pool_features if self.input == POOL_FEATURES else ctx.embeddings
        return Selection(greedy_k_center(features, ctx.unlabelled, ctx.labelled, budget, rng,
                                         working_bytes=self.working_mb << 20))


@register_acquisition("badge")
class Badge(AcquisitionStrategy):
    """BADGE (Ash et al., ICLR 2020): k-means++ seeding on last-layer gradient embeddings.

    Deviation: the gradient embedding is never materialised; distances use the
    factorised form (see ``methods.kernels.badge``), which is exact.
    """

    def __init__(self, feature_space: str = "embedding"):
        self.input = _space("badge", feature_space)
        self.requires = frozenset({PROBS, self.input})

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        features = ctx.pool_features if self.input == POOL_FEATURES else ctx.embeddings
        return Selection(badge_kmeanspp(ctx.probs, features, ctx.unlabelled, budget, rng))
