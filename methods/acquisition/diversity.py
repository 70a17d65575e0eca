"""Diversity and hybrid strategies built on the memory-bounded kernels."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ..base import PROBS, AcquisitionStrategy, Selection, SelectionContext
from ..feature_space import FeatureSpace, feature_view, space_inputs
from ..kernels import badge_kmeanspp, greedy_k_center
from ..options import Int, PluginOptions
from ..registry import register_acquisition
from .clustering import WorkingMB


@register_acquisition("coreset")
class CoreSet(AcquisitionStrategy):
    """Greedy k-center from the labelled set (Sener & Savarese, ICLR 2018), Euclidean.

    Deviation: none in the selection rule. Distances are computed in blocks of
    ``working_mb`` so memory stays O(N) at any pool size (the published code
    builds the N x L matrix), and the per-pick update is lazy: distances are
    upper bounds (float32 or, on CPUs with native bfloat16, bfloat16, plus
    their worst-case rounding error) and only candidates reaching the top
    are computed exactly, in float64 (``methods.kernels.kcenter``), so the
    picks are the float64 textbook ones. ``prefilter`` picks the bound's
    precision (``auto``, ``bf16``, ``none`` = float32); it changes speed,
    not picks.
    """

    multilabel = True  # reads features only

    class Options(PluginOptions):
        feature_space: FeatureSpace = "image"
        working_mb: WorkingMB = 256
        prefilter: Literal["auto", "bf16", "none"] = Field(
            "auto", description="precision of the distance bounds: bf16 where the CPU has it natively (auto)")

    def configure(self) -> None:
        self.requires = space_inputs("coreset", self.feature_space)

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        features = feature_view(ctx, self.feature_space)
        return Selection(greedy_k_center(features, ctx.unlabelled, ctx.labelled, budget, rng,
                                         working_bytes=self.working_mb << 20, prefilter=self.prefilter))


@register_acquisition("badge")
class Badge(AcquisitionStrategy):
    """BADGE (Ash et al., ICLR 2020): k-means++ seeding on last-layer gradient embeddings.

    Deviations: the gradient embedding is never materialised; distances use
    the factorised form (see ``methods.kernels.badge``), which is exact.
    Budgets above ``max_passes`` (1,000) + 1 -- PCB's candidate sets, not the
    papers' per-round budgets -- draw several centres per pass over the pool
    (k-means|| oversampling, see ``badge_kmeanspp``); ``max_passes=None``
    keeps every draw exact whatever the budget.
    """

    class Options(PluginOptions):
        feature_space: FeatureSpace = "embedding"
        max_passes: Int | None = Field(1000, ge=1, description="None: one pass per centre, exact draws")

    def configure(self) -> None:
        self.requires = frozenset({PROBS}) | space_inputs("badge", self.feature_space)

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        features = feature_view(ctx, self.feature_space)
        return Selection(badge_kmeanspp(ctx.probs, features, ctx.unlabelled, budget, rng,
                                        max_passes=self.max_passes))
