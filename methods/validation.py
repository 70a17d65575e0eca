"""Checks on what a plug-in is given, so bad input fails with its cause and its fix.

Options are validated by each plug-in's declared model at construction (see
:mod:`methods.options`), so a sweep config with a bad value fails before Ray
starts. The loop runs :func:`check_selection_inputs` before every ``select``
call; benchmarks and tests that call strategies directly run it too. Each message names the
strategy, what is wrong, and what to do about it. Array checks run in
chunks, so a million-row pool costs about a second and no extra copy.
"""

from __future__ import annotations

import numpy as np

from .base import SelectionContext

PROB_SUM_TOLERANCE = 1e-3


class AcquisitionInputError(ValueError):
    """A strategy's inputs are unusable; the message says which, and how to fix it."""


def _first_bad_row(array: np.ndarray, test, chunk: int = 65536) -> int | None:
    for s in range(0, len(array), chunk):
        bad = np.flatnonzero(test(np.asarray(array[s: s + chunk])))
        if bad.size:
            return s + int(bad[0])
    return None


def check_finite(strategy: str, what: str, array: np.ndarray | None, fix: str) -> None:
    if array is None:
        return
    row = _first_bad_row(array, lambda block: ~np.isfinite(block).all(axis=1))
    if row is not None:
        raise AcquisitionInputError(f"{strategy}: {what} contain NaN or inf (first at pool row {row}); {fix}")


def check_probabilities(strategy: str, probs: np.ndarray | None, multilabel: bool = False) -> None:
    """Finite softmax rows; for a multi-label task, finite per-label probabilities in [0, 1]."""
    if probs is None:
        return
    check_finite(strategy, "class probabilities", probs,
                 "the learner diverged -- lower its learning rate or check its training data")
    if multilabel:
        row = _first_bad_row(probs, lambda b: ((b < 0) | (b > 1)).any(axis=1))
        if row is not None:
            raise AcquisitionInputError(f"{strategy}: per-label probabilities of pool row {row} leave [0, 1]; a "
                                        "multi-label predictor must return sigmoid probabilities, not logits")
        return
    row = _first_bad_row(probs, lambda b: (np.abs(b.sum(axis=1, dtype=np.float64) - 1.0) > PROB_SUM_TOLERANCE)
                         | (b < 0).any(axis=1))
    if row is not None:
        total = float(np.asarray(probs[row], dtype=np.float64).sum())
        raise AcquisitionInputError(
            f"{strategy}: class probabilities of pool row {row} sum to {total:.4f}, not 1 (or are negative); "
            "a predictor must return softmax probabilities, not logits or scores")


def check_selection_inputs(strategy: str, ctx: SelectionContext, budget: int) -> None:
    """Raise :class:`AcquisitionInputError` for anything that would make ``strategy`` select garbage."""
    labelled = np.asarray(ctx.labelled, dtype=np.int64)
    unlabelled = np.asarray(ctx.unlabelled, dtype=np.int64)
    values, counts = np.unique(labelled, return_counts=True)
    if (counts > 1).any():
        raise AcquisitionInputError(f"{strategy}: the labelled set lists pool row {int(values[counts > 1][0])} more "
                                    "than once; pass each labelled row once (deduplicate the ledger's rows)")
    if len(np.unique(unlabelled)) != len(unlabelled):
        raise AcquisitionInputError(f"{strategy}: the unlabelled set has duplicate pool rows; pass each row once")
    if np.intersect1d(labelled, unlabelled).size:
        raise AcquisitionInputError(f"{strategy}: pool rows appear as both labelled and unlabelled; "
                                    "the unlabelled set must be the complement of the labelled one")
    if budget < 0:
        raise AcquisitionInputError(f"{strategy}: budget must be >= 0, got {budget}")
    if len(unlabelled) == 0 and budget > 0:
        raise AcquisitionInputError(
            f"{strategy}: the labelled set covers the whole pool ({len(labelled)} rows), nothing is left to query; "
            "use fewer rounds or a smaller per-round budget")
    if budget > len(unlabelled):
        raise AcquisitionInputError(
            f"{strategy}: budget {budget} is larger than the {len(unlabelled)} unlabelled pool rows; "
            "lower the budget or the number of rounds")
    fix = "delete the feature cache for this dataset and re-embed (check the encoder's precision)"
    check_finite(strategy, "pool features", ctx.pool_features, fix)
    check_finite(strategy, "penultimate embeddings", ctx.embeddings, "the learner diverged; check its options")
    check_finite(strategy, "class text features", ctx.text_features, fix)
    check_probabilities(strategy, ctx.probs, ctx.task == "multilabel")
