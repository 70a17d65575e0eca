"""VALIANT's acquisition (Mahapatra et al., eq. 6-8): label the unlabelled rows of highest prompt instability.

The instability I = 1 − cos(VIPD(X), VIPD(X + δ)) comes from the method's
selector, the ``vipd`` learner (``methods/adaptation/blackbox/valiant.py``),
which trains the prompt decoder through the black box and scores the pool
once; this strategy only ranks. Pair it as the paper does::

    {acquisition: valiant, adaptation: linear_probe, selector: {adaptation: vipd}}

with the sweep's ``blackbox:`` naming the foundation model. Ties (equal
instability) are broken by the seeded rng, so the picks are a function of the
seed.
"""

from __future__ import annotations

import numpy as np

from ..base import AcquisitionStrategy, Selection, SelectionContext, predictor_output
from ..registry import register_acquisition
from ..validation import AcquisitionInputError

INSTABILITY = "instability"


@register_acquisition("valiant")
class Valiant(AcquisitionStrategy):
    """Top-B unlabelled rows by prompt instability (the ``vipd`` selector's ``instability`` output)."""

    requires = frozenset({predictor_output(INSTABILITY)})

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        scores = np.asarray(ctx.outputs[INSTABILITY], np.float64)
        rows = np.asarray(ctx.unlabelled, np.int64)
        if not np.isfinite(scores[rows]).all():
            raise AcquisitionInputError(f"{self.name}: the prompt instability has NaN or inf values; check the "
                                        "vipd selector's options (sigma, step sizes a and c)")
        tiebreak = rng.random(len(rows))
        order = np.lexsort((tiebreak, -scores[rows]))
        return Selection(np.sort(rows[order[:budget]]))
