"""Dual-prompt uncertainty: class-balanced queries of the least clean rows, and confident pseudo-label mining.

Wang, Song & Xia (shared/papers/dualprompt-uncertainty-active-clip.txt,
Sec. 3.3). After each round's training the dual-prompt model pseudo-labels
every unlabelled row (y^ = argmax of its class probabilities) and scores it
by the clean probability of that label, p_clean(x, y^) (eq. 3, from the
learner's ``clean_prob`` output). Rows are grouped by pseudo class, then

* **query**: the floor(B / C) rows of lowest p_clean in every class; the
  B mod C rest (and any class's shortfall) go to the globally lowest p_clean
  among the rows not yet picked;
* **mine**: the top-k rows of highest p_clean in every class, among the rows
  not queried now, become the pseudo-labelled training set of the next
  round. They are *transient* labels (``Selection.transient_labels``): the
  set replaces the previous one, is never counted as spent, and a mined row
  stays unlabelled, so a later round may query it.
* **before round 1** (``bootstrap``): zero-shot CLIP's top-K rows per class
  form the first mined set, so the round-0 fit -- the paper's round-1
  training -- already learns from them.

Readings (the paper gives no values for K and k, nor says how a row claimed
by two classes is resolved):

* ``bootstrap_k`` = ``mine_k`` = 16 per class: CoOp's largest few-shot
  setting; set either to 0 to switch that part off.
* ``bootstrap_grouping: pseudo_class`` (default) ranks each class's rows
  among the rows zero-shot assigns to it (argmax), the same grouping as
  mining; ``column`` ranks every row by P(y = k | x) and gives a row claimed
  by several classes to the one where it scores highest.
* Ties go to the lower pool row id.

A pseudo class with fewer rows than asked gives what it has (noted as
``select_mined_short_classes``); ``mine_k`` larger than the unlabelled pool
could hold per class is refused.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ..base import CLEAN_PROB, PROBS, AcquisitionStrategy, Selection, SelectionContext, predictor_output
from ..options import Int, PluginOptions
from ..registry import register_acquisition
from ..validation import AcquisitionInputError

GROUPINGS = ("pseudo_class", "column")


def pseudo_labels(probs: np.ndarray, rows: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """argmax class of each row, read in row blocks (the pool's probabilities may be memory-mapped)."""
    out = np.empty(len(rows), np.int64)
    for s in range(0, len(rows), chunk):
        out[s: s + chunk] = np.asarray(probs[rows[s: s + chunk]]).argmax(axis=1)
    return out


def clean_of_label(clean: np.ndarray, rows: np.ndarray, labels: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """p_clean(x, y^) of each row for its pseudo label, from the (N, C) clean-probability output."""
    out = np.empty(len(rows), np.float64)
    for s in range(0, len(rows), chunk):
        block = np.asarray(clean[rows[s: s + chunk]], np.float64)
        out[s: s + chunk] = block[np.arange(len(block)), labels[s: s + chunk]]
    return out


def _ranks_in_class(order: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Position of each element of ``order`` (sorted by class first) within its class."""
    sorted_classes = classes[order]
    starts = np.searchsorted(sorted_classes, np.arange(num_classes))
    return np.arange(len(order)) - starts[sorted_classes]


def class_balanced_lowest(rows: np.ndarray, classes: np.ndarray, scores: np.ndarray, budget: int,
                          num_classes: int) -> np.ndarray:
    """floor(B/C) lowest-scored rows per class, the rest by the globally lowest score (Sec. 3.3's query)."""
    order = np.lexsort((rows, scores, classes))
    take = _ranks_in_class(order, classes, num_classes) < budget // num_classes
    picked, rest = order[take], order[~take]
    rest = rest[np.lexsort((rows[rest], scores[rest]))][: budget - len(picked)]
    return np.sort(rows[np.concatenate([picked, rest])])


def top_per_class(rows: np.ndarray, classes: np.ndarray, scores: np.ndarray, k: int, num_classes: int
                  ) -> tuple[dict[int, int], int]:
    """The ``k`` highest-scored rows of every class as ``{row: class}``, and how many classes had fewer."""
    order = np.lexsort((rows, -scores, classes))
    take = order[_ranks_in_class(order, classes, num_classes) < k]
    counts = np.bincount(classes[take], minlength=num_classes)
    return {int(r): int(c) for r, c in zip(rows[take], classes[take])}, int((counts < k).sum())


def top_per_column(probs: np.ndarray, rows: np.ndarray, k: int) -> dict[int, int]:
    """Every class's top-``k`` rows by P(y = class | x); a row claimed twice goes to its higher probability."""
    claims = []
    for c in range(probs.shape[1]):
        column = np.asarray(probs[rows, c], np.float64)
        best = np.argpartition(-column, min(k, len(rows)) - 1)[:k] if len(rows) > k else np.arange(len(rows))
        claims += [(-column[i], int(rows[i]), c) for i in best]
    out: dict[int, int] = {}
    for _, row, c in sorted(claims):
        out.setdefault(row, c)
    return out


@register_acquisition("dual_uncertainty")
class DualUncertainty(AcquisitionStrategy):
    """Lowest clean probability per pseudo class (query) and highest (mine); zero-shot top-K bootstrap."""

    requires = frozenset({PROBS, predictor_output(CLEAN_PROB)})

    class Options(PluginOptions):
        mine_k: Int = Field(16, ge=0, description="k: mined rows per pseudo class each round (0: no mining)")
        bootstrap_k: Int = Field(16, ge=0, description="K: zero-shot rows per class before round 1 (0: none)")
        bootstrap_grouping: Literal[GROUPINGS] = Field(
            "pseudo_class", description="rank a class's rows among those zero-shot assigns to it, or by its column")

    @property
    def has_bootstrap(self) -> bool:
        return self.bootstrap_k > 0

    def _check_room(self, option: str, candidates: int, num_classes: int) -> None:
        k = getattr(self, option)
        if k * num_classes > candidates:
            raise AcquisitionInputError(
                f"{self.name}: {option} = {k} rows per class over {num_classes} classes needs {k * num_classes} "
                f"unlabelled rows, but only {candidates} are left to pseudo-label; lower {option} "
                f"(at most {candidates // num_classes}), the budget or the number of rounds")

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        rows = np.asarray(ctx.unlabelled, np.int64)
        labels = pseudo_labels(ctx.probs, rows)
        clean = clean_of_label(ctx.outputs[CLEAN_PROB], rows, labels)
        queried = class_balanced_lowest(rows, labels, clean, budget, ctx.num_classes)
        if self.mine_k == 0:
            return Selection(queried)
        keep = ~np.isin(rows, queried)
        self._check_room("mine_k", int(keep.sum()), ctx.num_classes)
        mined, short = top_per_class(rows[keep], labels[keep], clean[keep], self.mine_k, ctx.num_classes)
        ctx.extras.update(mined=len(mined), mined_short_classes=short,
                          clean_queried=float(clean[~keep].mean()) if budget else float("nan"),
                          clean_mined=float(clean[keep][np.isin(rows[keep], list(mined))].mean()))
        return Selection(queried, transient_labels=mined)

    def bootstrap(self, ctx: SelectionContext, rng: np.random.Generator) -> Selection | None:
        if self.bootstrap_k == 0:
            return None
        rows = np.asarray(ctx.unlabelled, np.int64)
        self._check_room("bootstrap_k", len(rows), ctx.num_classes)
        if self.bootstrap_grouping == "column":
            mined = top_per_column(ctx.probs, rows, self.bootstrap_k)
        else:
            labels = pseudo_labels(ctx.probs, rows)
            confidence = np.asarray(ctx.probs[rows, labels] if len(rows) else np.zeros(0), np.float64)
            mined, _ = top_per_class(rows, labels, confidence, self.bootstrap_k, ctx.num_classes)
        return Selection(np.empty(0, np.int64), transient_labels=mined)
