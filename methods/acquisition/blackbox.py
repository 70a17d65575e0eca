"""Strategies of the black-box methods: VALIANT's prompt instability and BAPS's prompted entropy.

Both read a score their *selector* learner computed through the black box
(``methods/adaptation/blackbox``) and only rank; pair them as VALIANT's
Table 2 does, with the linear head on the FM's pooled features as the
evaluated model::

    {acquisition: valiant, adaptation: linear_probe, selector: {adaptation: vipd}}
    {acquisition: baps, adaptation: linear_probe, selector: {adaptation: baps}}

and the sweep's ``blackbox:`` naming the foundation model. Ties are broken by
the seeded rng, so the picks are a function of the seed.
"""

from __future__ import annotations

import numpy as np

from ..base import INSTABILITY, PROMPTED_PROBS, AcquisitionStrategy, Selection, SelectionContext, predictor_output
from ..registry import register_acquisition
from ..validation import AcquisitionInputError
from .uncertainty import prediction_entropy

def top_by_score(strategy: str, scores: np.ndarray, rows: np.ndarray, budget: int, rng: np.random.Generator,
                 fix: str) -> np.ndarray:
    """The ``budget`` rows of highest score (seeded tie-break), refusing non-finite scores with ``fix``."""
    if not np.isfinite(scores).all():
        raise AcquisitionInputError(f"{strategy}: scores of unlabelled rows are NaN or inf; {fix}")
    order = np.lexsort((rng.random(len(rows)), -scores))
    return np.sort(rows[order[:budget]])


@register_acquisition("valiant")
class Valiant(AcquisitionStrategy):
    """VALIANT (eq. 6-8): top-B unlabelled rows by prompt instability, the ``vipd`` selector's output."""

    multilabel = True  # the instability reads no labels

    requires = frozenset({predictor_output(INSTABILITY)})

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        rows = np.asarray(ctx.unlabelled, np.int64)
        scores = np.asarray(ctx.outputs[INSTABILITY], np.float64)[rows]
        return Selection(top_by_score(self.name, scores, rows, budget, rng,
                                      "check the vipd selector's options (sigma, step sizes a and c)"))


@register_acquisition("baps")
class BAPS(AcquisitionStrategy):
    """BAPS as an AL baseline: top-B entropy of the prompted black box's answers (the ``baps`` selector's)."""

    multilabel = True

    requires = frozenset({predictor_output(PROMPTED_PROBS)})

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        rows = np.asarray(ctx.unlabelled, np.int64)
        probs = np.asarray(ctx.outputs[PROMPTED_PROBS])[rows]
        scores = prediction_entropy(probs, ctx.task == "multilabel")
        return Selection(top_by_score(self.name, scores, rows, budget, rng,
                                      "either the baps selector diverged (lower its step size a) or it scored "
                                      "another unlabelled set than this selection sees (pair the strategy with "
                                      "`selector: {adaptation: baps}`, fitted on the same ledger)"))
