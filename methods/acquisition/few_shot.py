"""The few-shot protocol's sampler: k images per class, at random, for papers that are not active learning.

BioMedVR, AttrVR, CoOp and most VLM adaptation papers train on "k shots": k
labelled images of every class drawn at random (4, 8, 16). That draw needs
the pool's labels, which no active-learning strategy may see, so this is the
one strategy that declares ``pool_labels``; pair it with the ``shots``
budget, e.g. ``{kind: shots, shots: [16]}`` and ``rounds: 1``. With a budget
that is not a multiple of the class count, the remainder goes to random rows
of the classes drawn first in a seeded order.
"""

from __future__ import annotations

import numpy as np

from ..base import POOL_LABELS, AcquisitionStrategy, Selection, SelectionContext
from ..registry import register_acquisition
from ..validation import AcquisitionInputError


@register_acquisition("few_shot")
class FewShotSampling(AcquisitionStrategy):
    """floor(B / C) random unlabelled rows of every class (the few-shot protocol's k shots)."""

    requires = frozenset({POOL_LABELS})

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        rows = np.asarray(ctx.unlabelled, np.int64)
        labels = np.asarray(ctx.pool_labels)[rows]
        if labels.ndim != 1:
            raise AcquisitionInputError(f"{self.name}: k shots per class needs one class per row; this task is "
                                        "multi-label")
        per_class, extra = divmod(budget, ctx.num_classes)
        picked = []
        for c in range(ctx.num_classes):
            members = rows[labels == c]
            if len(members) < per_class:
                raise AcquisitionInputError(
                    f"{self.name}: {per_class} shots of class {c} asked, but the pool holds {len(members)} "
                    "unlabelled images of it; lower the shots or use a bigger pool")
            picked.append(rng.choice(members, per_class, replace=False))
        chosen = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        for c in rng.permutation(ctx.num_classes)[:extra]:
            left = np.setdiff1d(rows[labels == c], chosen)
            if len(left):
                chosen = np.append(chosen, rng.choice(left))
        return Selection(np.sort(chosen))
