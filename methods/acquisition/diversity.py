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
    upper bounds (by default from the labelled points in each candidate's
    cell, ``bound: cells``, else from all of them, ``dense``, in float32 or,
    on CPUs with native bfloat16, bfloat16 -- ``prefilter``; plus their
    worst-case rounding error) and only candidates reaching the top are
    computed exactly, in float64 (``methods.kernels.kcenter``), so the picks
    are the float64 textbook ones. ``bound`` and ``prefilter`` change speed,
    not picks.
    """

    multilabel = True  # reads features only

    class Options(PluginOptions):
        feature_space: FeatureSpace = "image"
        working_mb: WorkingMB = 256
        prefilter: Literal["auto", "bf16", "none"] = Field(
            "auto", description="precision of dense distance bounds: bf16 where the CPU has it natively (auto)")
        bound: Literal["cells", "dense"] = Field(
            "cells", description="first bounds from each candidate's cell of labelled points, or from all of them")

    def configure(self) -> None:
        self.requires = space_inputs("coreset", self.feature_space)

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        features = feature_view(ctx, self.feature_space)
        return Selection(greedy_k_center(features, ctx.unlabelled, ctx.labelled, budget, rng,
                                         working_bytes=self.working_mb << 20, prefilter=self.prefilter,
                                         bound=self.bound))


@register_acquisition("badge")
class Badge(AcquisitionStrategy):
    """BADGE (Ash et al., ICLR 2020): k-means++ seeding on last-layer gradient embeddings.

    Deviations: the gradient embedding is never materialised; distances use
    the factorised form (see ``methods.kernels.badge``), which is exact.
    Each D^2 draw is made by rejection against the distances of the last
    pass over the pool (``sampling: rejection``, the default since issue 15):
    the same distribution as the textbook draw, from other random numbers,
    so picks differ for a seed but not in law (k-means++ potential, test);
    the pool is read a few times instead of once per centre (514 s -> about
    10 s at 1.28 M rows and 1,000 centres). ``sampling: inverse_cdf`` is the
    textbook pass-per-centre draw, draw for draw what it picked before.
    Budgets above ``max_passes`` (1,000) + 1 -- PCB's candidate sets, not the
    papers' per-round budgets -- draw several centres per pass over the pool
    (k-means|| oversampling, see ``badge_kmeanspp``); ``max_passes=None``
    keeps every draw exact whatever the budget.
    """

    class Options(PluginOptions):
        feature_space: FeatureSpace = "embedding"
        max_passes: Int | None = Field(1000, ge=1, description="None: one pass per centre, exact draws")
        sampling: Literal["rejection", "inverse_cdf"] = Field(
            "rejection", description="how each exact D^2 draw is made; the same distribution either way")

    def configure(self) -> None:
        self.requires = frozenset({PROBS}) | space_inputs("badge", self.feature_space)

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        features = feature_view(ctx, self.feature_space)
        return Selection(badge_kmeanspp(ctx.probs, features, ctx.unlabelled, budget, rng,
                                        max_passes=self.max_passes, sampling=self.sampling))
