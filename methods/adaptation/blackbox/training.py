"""What the black-box learners share: SPSA-GC options, pool batches, their predictor and its zero-shot head."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from ...base import AdaptContext
from ...core.predictors import DEFAULT_TEMPERATURE, LinearPredictor
from ...core.spsa import SPSAGC, flat_parameters, load_flat
from ...options import Int, Number, PluginOptions


class SPSAOptions(PluginOptions):
    """SPSA-GC and prompt-decoder options (BlackVIP's defaults; BAPS overrides a, beta and the schedule)."""

    steps: Int = Field(100, ge=1, description="SPSA-GC steps")
    batch_size: Int = Field(32, ge=1, description="images per SPSA step")
    draws: Int = Field(5, ge=1, description="perturbations averaged per gradient estimate")
    a: Number = Field(0.01, gt=0)
    c: Number = Field(0.01, gt=0)
    o: Number = Field(1.0, ge=0)
    alpha: Number = Field(0.4, ge=0)
    gamma: Number = Field(0.1, ge=0)
    beta: Number = Field(0.9, ge=0, lt=1, description="momentum of the gradient correction")
    schedule: Literal["power", "step"] = Field("power", description="power: a/(k+o)^alpha; step: a*0.33^(k//300)")
    epsilon: Number = Field(1.0, gt=0, description="prompt bound: P = ε·tanh(·)")
    hidden: Int = Field(16, ge=1, description="the decoder MLP's hidden width")
    channels: Int = Field(8, ge=3, description="channels of the decoder's seed map")

    def optimiser(self) -> SPSAGC:
        return SPSAGC(float(self.a), float(self.c), float(self.o), float(self.alpha), float(self.gamma),
                      float(self.beta), int(self.draws), self.schedule)


@dataclass
class DecoderPredictor(LinearPredictor):
    """The zero-shot head for class scores, a trained prompt decoder (flat weights), and one score per pool row
    that the decoder gave through the black box -- the predictor's one named output (``output``)."""

    decoder: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    pool_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (N,) or (N, C)
    output: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.outputs = frozenset({cls.output})

    def predict_output(self, name: str, features: np.ndarray) -> np.ndarray:
        if name != self.output:
            return super().predict_output(name, features)
        if len(features) != len(self.pool_scores):
            raise ValueError(f"{type(self).__name__} scored a pool of {len(self.pool_scores)} rows, asked about "
                             f"{len(features)}")
        return self.pool_scores

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), "decoder": self.decoder, "pool_scores": self.pool_scores}

    @classmethod
    def from_state(cls, state):
        return cls(np.asarray(state["weight"]), np.asarray(state["bias"]), float(state["temperature"]),
                   np.asarray(state["decoder"]), np.asarray(state["pool_scores"]),
                   multilabel=bool(state.get("multilabel", False)))


def zero_shot_head(ctx: AdaptContext) -> dict:
    """The template-ensemble classifier: what a black-box learner's predictor scores classes with."""
    return dict(weight=np.asarray(ctx.text_features, np.float32), bias=np.zeros(ctx.num_classes, np.float32),
                temperature=DEFAULT_TEMPERATURE, multilabel=ctx.task == "multilabel")


def row_batches(rows: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless seeded epochs over ``rows``, cut into ceil(n / batch_size) sorted batches of near-equal size."""
    rows = np.asarray(rows, np.int64)
    while True:
        for part in np.array_split(rng.permutation(rows), -(-len(rows) // batch_size)):
            yield np.sort(part)


def train_by_spsa(decoder, spsa: SPSAGC, steps: int, batches: Iterator[np.ndarray],
                  batch_loss: Callable[[np.ndarray], Callable[[], float]], generator, start=None) -> None:
    """``steps`` SPSA-GC steps on the decoder's flat weights; each step's loss is ``batch_loss(rows)()``.

    ``batch_loss(rows)`` fixes everything about a step that does not depend on the weights (pixels,
    perturbations, labels) and returns the function evaluated after the candidate weights are loaded.
    """
    import torch

    w = torch.as_tensor(flat_parameters(decoder) if start is None else start, dtype=torch.float32)
    momentum = torch.zeros_like(w)
    for k in range(1, steps + 1):
        evaluate = batch_loss(next(batches))

        def loss(vector):
            load_flat(decoder, vector)
            return evaluate()

        w, momentum = spsa.step(loss, w, momentum, k, generator)
    load_flat(decoder, w)
