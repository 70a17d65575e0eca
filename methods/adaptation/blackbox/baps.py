"""BAPS (Paranjape et al., "Black-box adaptation for medical image segmentation", MICCAI 2024), for classification.

VALIANT's closest baseline: a prompt generator trained by SPSA-GC through a
black box, but *supervised*. BAPS adapts SAM for segmentation; its public code
(``JayParanjape/Blackbox``) builds the prompt from an image embedding and
SAM's prompt embedding through a 7 x 7 seed map and transposed convolutions,
adds it to the image, and trains with SPSA-GC (a = 1, c = 0.01, γ = 0.1,
momentum 0.4, 5 draws, a·0.33^(k // 300) step decay). The adaptation to
classification, stated:

* the generator is VALIANT's decoder (:mod:`.decoder`) fed by the image
  embedding alone -- a classification query has no point or box prompt;
* so its step size is the one SPSA-GC uses on that decoder (BlackVIP's
  a = 0.01); BAPS's own a = 1 (``a: 1.0``) drove the decoder's weights to
  ±5 and every prompt into tanh's saturation within 3 steps on the tiny CLIP
  (measured in the test setup), after which the loss is flat and training
  stops. Momentum 0.4 and the step decay are BAPS's;
* the loss is the cross-entropy of the black box's answer on X + P against
  the labelled pool's labels (binary cross-entropy per label for multi-label
  tasks) -- SAM's segmentation loss has no classification counterpart;
* as an active-learning method (VALIANT's Table 2 row) it selects by the
  entropy of the prompted black box's answers on the unlabelled pool
  (strategy ``baps``): after each round's training every unlabelled image is
  queried once, and those queries are counted like the training's. Training
  continues each round from the last round's generator, ``steps`` steps.

Like ``vipd``, the learner is a *selector*; the evaluated model is the linear
head on the FM's pooled features.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ...base import (BLACKBOX, FEATURE_PREDICTOR_PROVIDES, IMAGES, PROMPTED_PROBS, TEXT_FEATURES, UNLABELLED,
                     AdaptContext, Learner, Predictor, TrainSet, predictor_output)
from ...core.devices import pick_device
from ...core.spsa import flat_parameters, load_flat
from ...options import Int, Number
from ...registry import register_adaptation
from ..prompting.model import frozen_clip
from .decoder import build_decoder, seeded_init
from .training import DecoderPredictor, SPSAOptions, row_batches, train_by_spsa, zero_shot_head


def prompted_loss(answers, labels) -> float:
    """Cross-entropy of the black box's distributions (binary cross-entropy per label when labels are vectors)."""
    answers, labels = np.clip(np.asarray(answers, np.float64), 1e-8, 1 - 1e-8), np.asarray(labels)
    if labels.ndim == 2:
        return float(-(labels * np.log(answers) + (1 - labels) * np.log(1 - answers)).mean())
    return float(-np.log(answers[np.arange(len(labels)), labels]).mean())


class BAPSPredictor(DecoderPredictor):
    """The zero-shot head, the generator, and the prompted black box's answers on the pool ((N, C), NaN: labelled)."""

    output = PROMPTED_PROBS

    @property
    def prompted(self) -> np.ndarray:
        return self.pool_scores


@register_adaptation("baps")
class BAPSSelector(Learner):
    """BAPS's supervised SPSA-GC prompt generator on the black box; a selector for the ``baps`` strategy."""

    multilabel = True

    requires = frozenset({IMAGES, BLACKBOX, TEXT_FEATURES, UNLABELLED})
    provides = FEATURE_PREDICTOR_PROVIDES | {predictor_output(PROMPTED_PROBS)}

    class Options(SPSAOptions):
        a: Number = Field(0.01, gt=0, description="step size; BAPS's own is 1.0 (see the module)")
        beta: Number = Field(0.4, ge=0, lt=1, description="BAPS's momentum")
        schedule: Literal["power", "step"] = Field("step", description="BAPS: a*0.33^(k//300)")
        score_batch: Int = Field(256, ge=1, description="pool images per black-box call when scoring")

    def fit(self, train_set: TrainSet, ctx: AdaptContext, rng: np.random.Generator) -> Predictor:
        import torch

        encoder = frozen_clip(ctx.encoder, ctx.precision, pick_device(ctx.device))
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        decoder = build_decoder(int(np.asarray(ctx.text_features).shape[1]), encoder.image_size, self.hidden,
                                self.channels, float(self.epsilon))
        seeded_init(decoder, generator)
        if isinstance(ctx.previous, BAPSPredictor):
            load_flat(decoder, ctx.previous.decoder)
        if len(train_set.labels):
            self._train(decoder, train_set, ctx, encoder, generator, rng)
        prompted = self._score(decoder, ctx, encoder)
        return BAPSPredictor(**zero_shot_head(ctx), decoder=flat_parameters(decoder), pool_scores=prompted)

    def _prompted_answers(self, decoder, ctx: AdaptContext, encoder, x):
        import torch

        with torch.no_grad():
            prompt = decoder(encoder.encode_images(x), torch.zeros(len(x), 0))
        return ctx.blackbox.query(x + prompt)

    def _train(self, decoder, train_set: TrainSet, ctx: AdaptContext, encoder, generator, rng) -> None:
        rows, labels = np.asarray(train_set.rows, np.int64), np.asarray(train_set.labels)

        def batch_loss(idx):
            x = ctx.images.pixels("pool", rows[idx]).float()
            return lambda: prompted_loss(self._prompted_answers(decoder, ctx, encoder, x), labels[idx])

        batches = row_batches(np.arange(len(rows)), self.batch_size, rng)
        train_by_spsa(decoder, self.options.optimiser(), self.steps, batches, batch_loss, generator)

    def _score(self, decoder, ctx: AdaptContext, encoder) -> np.ndarray:
        """The prompted black box's answers on every unlabelled pool row (one query each); NaN elsewhere."""
        out = np.full((ctx.images.size("pool"), ctx.num_classes), np.nan, np.float32)
        rows = np.asarray(ctx.unlabelled, np.int64)
        for s in range(0, len(rows), self.score_batch):
            part = rows[s: s + self.score_batch]
            out[part] = self._prompted_answers(decoder, ctx, encoder, ctx.images.pixels("pool", part).float())
        return out
