"""Which vectors a clustering or diversity strategy measures distances in.

Every such strategy takes ``feature_space``:

* ``image`` -- the cached image features I(x);
* ``class_guided`` -- [I(x), sum_c p(c|x; t_{r-1}) T_c], the image feature
  concatenated with the probability-weighted class embedding *of the current
  predictor* (CB+SQ eq. 6-7: the previous round's learned prompts; the
  template ensemble for zero-shot, the unit weight rows for a linear probe):
  points the current model confuses land between the classes they mix;
* ``class_guided_text`` -- the same with the fixed template-ensemble text
  embeddings for T_c (what ``class_guided`` meant before the predictor's
  class embeddings reached strategies);
* ``embedding`` (alias ``penultimate``) -- the current learner's penultimate
  embedding (for heads on frozen features, the features themselves).

Features are built for the rows asked for only, so a class-guided space over a
million-row pool never exists in full unless a strategy needs all of it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from .base import CLASS_EMBEDDINGS, EMBEDDINGS, POOL_FEATURES, PROBS, TEXT_FEATURES, SelectionContext

SPACE_INPUTS: dict[str, frozenset[str]] = {
    "image": frozenset({POOL_FEATURES}),
    "class_guided": frozenset({POOL_FEATURES, PROBS, CLASS_EMBEDDINGS}),
    "class_guided_text": frozenset({POOL_FEATURES, PROBS, TEXT_FEATURES}),
    "embedding": frozenset({EMBEDDINGS}),
    "penultimate": frozenset({EMBEDDINGS}),
}
CLASS_GUIDED = ("class_guided", "class_guided_text")
#: The ``feature_space`` option of every clustering or diversity strategy.
FeatureSpace = Annotated[Literal[tuple(sorted(SPACE_INPUTS))],
                         Field(description="where distances are measured, see methods.feature_space")]


def space_inputs(strategy: str, feature_space: str) -> frozenset[str]:
    """The loop inputs a feature space needs; an unknown space is an error naming the strategy."""
    if feature_space not in SPACE_INPUTS:
        raise ValueError(f"{strategy}: feature_space must be one of {sorted(SPACE_INPUTS)}, got {feature_space!r}")
    return SPACE_INPUTS[feature_space]


def _source(ctx: SelectionContext, feature_space: str):
    """The cached array a space starts from: the penultimate embeddings or the image features."""
    return ctx.embeddings if feature_space in ("embedding", "penultimate") else ctx.pool_features


def features_in_space(ctx: SelectionContext, feature_space: str, rows: np.ndarray | None = None,
                      chunk: int = 65536) -> np.ndarray:
    """float32 vectors of ``rows`` (default: the whole pool) in ``feature_space``."""
    source = _source(ctx, feature_space)
    if source is None:
        raise ValueError(f"feature space {feature_space!r} needs inputs the strategy did not declare "
                         f"({sorted(SPACE_INPUTS[feature_space])}); add them to its `requires`")
    rows = np.arange(len(source)) if rows is None else np.asarray(rows, dtype=np.int64)
    if feature_space not in CLASS_GUIDED:
        return np.asarray(source[rows], dtype=np.float32)
    text = _class_vectors(ctx, feature_space)
    out = np.empty((len(rows), source.shape[1] + text.shape[1]), dtype=np.float32)
    for s in range(0, len(rows), chunk):
        r = rows[s: s + chunk]
        out[s: s + chunk, : source.shape[1]] = source[r]
        out[s: s + chunk, source.shape[1]:] = np.asarray(ctx.probs[r], dtype=np.float32) @ text
    return out


def _class_vectors(ctx: SelectionContext, feature_space: str) -> np.ndarray:
    """T_c of a class-guided space: the predictor's class embeddings, or the fixed text ones."""
    vectors = ctx.class_embeddings if feature_space == "class_guided" else ctx.text_features
    if vectors is None:
        raise ValueError(f"feature space {feature_space!r} needs {sorted(SPACE_INPUTS[feature_space])}; "
                         "add them to the strategy's `requires`")
    return np.asarray(vectors, dtype=np.float32)


class _ClassGuidedView:
    """Row-indexable stand-in for a class-guided matrix; rows are built when indexed."""

    def __init__(self, ctx: SelectionContext, feature_space: str):
        self.ctx, self.feature_space = ctx, feature_space
        self.shape = (len(ctx.pool_features), ctx.pool_features.shape[1] + _class_vectors(ctx, feature_space).shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        """Rows by index array, int or slice (the kernels' dense passes read ``view[start:stop]``)."""
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(len(self)))
        rows = np.asarray(rows, dtype=np.int64)
        flat = features_in_space(self.ctx, self.feature_space, rows.reshape(-1))
        return flat.reshape(*rows.shape, self.shape[1])


def feature_view(ctx: SelectionContext, feature_space: str):
    """Something kernels can index by pool rows: the cached array itself, or a lazy class-guided view."""
    return _ClassGuidedView(ctx, feature_space) if feature_space in CLASS_GUIDED else _source(ctx, feature_space)
