"""VALIANT (Mahapatra et al., "VALIANT: Prompt instability for active learning in black-box medical imaging").

The foundation model (FM) is a black box (``BLACKBOX``: distributions only,
every image counted). A Visual Prompt Decoder (:mod:`.decoder`) reads an image's
feature from its *own* frozen encoder F (the sweep's encoder, never the FM)
and the 512-d code of its unsupervised segmentation map (the
``segmentation_codes`` preparation), and outputs a prompt P of the image's
shape. It is trained without labels by SPSA-GC (eq. 1, :mod:`methods.core.spsa`)
on

    L = λ1·L_sens + λ2·L_coh + λ3·L_div                                  (eq. 2)
    L_sens = −KL(FM(X + P) ‖ FM(X^p + P^p)),  X^p = X + δ, δ ~ N(0, σ²I)  (eq. 3, 6)
    L_coh  = ‖F(X + P) − F(X)‖²                                          (eq. 4)
    L_div  = 1 − cos(P, P^p)                                             (eq. 5)

and ranks the pool by prompt instability I = 1 − cos(VIPD(X), VIPD(X + δ))
(eq. 6-8); :class:`methods.acquisition.valiant.Valiant` labels the top B. Only
L_sens touches the FM, only through ``query``.

Here the VIPD is a *selector* learner: its predictor carries the trained
decoder (a flat vector) and the instability of every pool row, so both sit in
the round checkpoint and a resumed run continues exactly; the decoder is
trained once, at the round-0 fit (training is unsupervised, so labels would not
change it), and later rounds reuse it at no query cost. Its class scores are
the zero-shot head's -- the evaluated model is the paper's linear head on the
FM's pooled features (``linear_probe``), which is the method's ``adaptation``.

Readings (the paper leaves these open; each is an option):

* σ (not given): 0.1 in the encoder's normalised pixel units.
* eq. 5 minimised makes P and P^p *alike*, while the text says it makes prompts
  "more distinct"; ``diversity: literal`` (default) follows the equation,
  ``distinct`` minimises cos(P, P^p) instead (the text's intent).
* Steps, batch and step sizes are not given: BlackVIP's SPSA-GC defaults,
  batch 32, 100 steps (``steps``) -- each step costs 2·draws·2·batch queries.
* λ: per dataset from Table 1 in the paper config; 1, 1, 1 by default.
* F(X) is encoded from the pixels like F(X + P) (not read from the feature
  cache), so the two always come from the same preprocessing.
* This learner (``vipd``) is VALIANT_Single: the VIPD trained on the trial's own pool. VALIANT_Multi, one
  VIPD over several datasets' pools trained once before the sweep, is ``vipd_multi``
  (:mod:`.valiant_multi`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from ...base import (BLACKBOX, FEATURE_PREDICTOR_PROVIDES, IMAGES, INSTABILITY, TEXT_FEATURES, AdaptContext, Learner,
                     Predictor, TrainSet, predictor_output, prepared)
from ...core.devices import pick_device
from ...core.spsa import flat_parameters
from ...options import Number
from ...registry import register_adaptation
from ...segmentation_codes import SEGMENTATION_CODES, encode_maps, segment_like
from ..prompting.model import frozen_clip
from .decoder import build_decoder, seeded_init
from .training import DecoderPredictor, SPSAOptions, row_batches, train_by_spsa, zero_shot_head


@dataclass
class Batch:
    """The parts of one SPSA step that do not depend on the decoder's weights (fixed across its evaluations)."""

    x: object  # (B, 3, H, W) pixels
    xp: object  # X + δ
    fx: object  # F(X), (B, D)
    fxp: object  # F(X^p)
    cx: object  # segmentation codes of X, (B, 512)
    cxp: object  # of X^p


def kl_rows(p, q, eps: float = 1e-8):
    """KL(p ‖ q) per row of two (B, C) distributions."""
    import torch

    p, q = torch.as_tensor(p).clamp(min=eps), torch.as_tensor(q).clamp(min=eps)
    return (p * (p.log() - q.log())).sum(1)


def cosine_rows(a, b):
    """Cosine similarity of flattened prompts, per row."""
    import torch.nn.functional as F

    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def valiant_terms(decoder, batch: Batch, blackbox, encoder, lambdas, diversity: str = "literal") -> dict:
    """The three loss terms (batch means) at the decoder's current weights; L_sens only when λ1 ≠ 0."""
    import torch

    with torch.no_grad():
        prompt, prompt_p = decoder(batch.fx, batch.cx), decoder(batch.fxp, batch.cxp)
        terms = {"sens": 0.0, "coh": 0.0, "div": 0.0}
        if lambdas[0]:
            y, yp = blackbox.query(batch.x + prompt), blackbox.query(batch.xp + prompt_p)
            terms["sens"] = -float(kl_rows(y, yp).mean())
        if lambdas[1]:
            terms["coh"] = float(((encoder.encode_images(batch.x + prompt) - batch.fx) ** 2).sum(1).mean())
        if lambdas[2]:
            similarity = float(cosine_rows(prompt, prompt_p).mean())
            terms["div"] = 1.0 - similarity if diversity == "literal" else similarity
    return terms


def valiant_loss(decoder, batch: Batch, blackbox, encoder, lambdas, diversity: str = "literal") -> float:
    terms = valiant_terms(decoder, batch, blackbox, encoder, lambdas, diversity)
    return lambdas[0] * terms["sens"] + lambdas[1] * terms["coh"] + lambdas[2] * terms["div"]


def perturbed(x, sigma: float, generator):
    """X^p = X + δ, δ ~ N(0, σ²I) (eq. 6)."""
    import torch

    return x + sigma * torch.randn(x.shape, generator=generator)


def make_batch(x, codes, encoder, segmentation: dict, sigma: float, generator) -> Batch:
    """Everything about a batch of pixels the decoder reads, for X and a fresh X + δ."""
    import torch

    xp = perturbed(x, sigma, generator)
    cxp = encode_maps(segment_like(xp, segmentation), segmentation["weight"], segmentation["bias"])
    return Batch(x, xp, encoder.encode_images(x), encoder.encode_images(xp), torch.as_tensor(codes), cxp)


def instability(decoder, images, codes, encoder, segmentation: dict, sigma: float, generator,
                batch: int = 256) -> np.ndarray:
    """I = 1 − cos(VIPD(X), VIPD(X + δ)) for every pool row (eq. 7-8): no black-box query."""
    import torch

    out = []
    for s in range(0, images.size("pool"), batch):
        rows = np.arange(s, min(images.size("pool"), s + batch))
        b = make_batch(images.pixels("pool", rows).float(), codes[rows], encoder, segmentation, sigma, generator)
        with torch.no_grad():
            out.append((1 - cosine_rows(decoder(b.fx, b.cx), decoder(b.fxp, b.cxp))).numpy())
    return np.concatenate(out).astype(np.float32)


@dataclass
class VIPDPredictor(DecoderPredictor):
    """The zero-shot head, the trained VIPD and the prompt instability of every pool row.

    ``shared_queries``: black-box queries its decoder cost outside the trial (VALIANT_Multi's shared training),
    charged by the loop to the round that fitted it; not part of the state, so a resumed round charges nothing.
    """

    output = INSTABILITY
    shared_queries: float = 0.0

    @property
    def instability(self) -> np.ndarray:
        return self.pool_scores


@register_adaptation("vipd")
class VIPDSelector(Learner):
    """VALIANT's prompt decoder, trained by SPSA-GC through the black box; a selector for ``valiant``."""

    multilabel = True

    requires = frozenset({IMAGES, BLACKBOX, TEXT_FEATURES, prepared(SEGMENTATION_CODES)})
    provides = FEATURE_PREDICTOR_PROVIDES | {predictor_output(INSTABILITY)}

    class Options(SPSAOptions):
        lambda_sens: Number = Field(1.0, ge=0, description="λ1, perturbation sensitivity (eq. 3)")
        lambda_coh: Number = Field(1.0, ge=0, description="λ2, anatomical coherence (eq. 4)")
        lambda_div: Number = Field(1.0, ge=0, description="λ3, prompt diversity (eq. 5)")
        diversity: Literal["literal", "distinct"] = Field(
            "literal", description="literal: minimise 1 − cos(P, P^p) as eq. 5 reads; distinct: minimise cos")
        sigma: Number = Field(0.1, gt=0, description="std of δ in normalised pixel units (not given in the paper)")

    def configure(self) -> None:
        self.lambdas = (float(self.lambda_sens), float(self.lambda_coh), float(self.lambda_div))
        if not any(self.lambdas):
            raise ValueError("vipd: lambda_sens, lambda_coh and lambda_div are all 0, so there is nothing to train "
                             "the prompt decoder on; set at least one (the paper's Table 1 gives them per dataset)")
        self.spsa = self.options.optimiser()

    def fit(self, train_set: TrainSet, ctx: AdaptContext, rng: np.random.Generator) -> Predictor:
        head = zero_shot_head(ctx)
        if isinstance(ctx.previous, VIPDPredictor):  # trained once, without labels: later rounds reuse it
            return VIPDPredictor(**head, decoder=ctx.previous.decoder, pool_scores=ctx.previous.pool_scores)
        import torch

        segmentation = ctx.prepared[SEGMENTATION_CODES]
        codes = np.asarray(segmentation["codes"], np.float32)
        encoder = frozen_clip(ctx.encoder, ctx.precision, pick_device(ctx.device))
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        decoder, shared_queries = self._fitted_decoder(ctx, codes, encoder, segmentation, generator, rng)
        scores = instability(decoder, ctx.images, codes, encoder, segmentation, float(self.sigma), generator)
        return VIPDPredictor(**head, decoder=flat_parameters(decoder), pool_scores=scores,
                             shared_queries=shared_queries)

    def _fitted_decoder(self, ctx: AdaptContext, codes, encoder, segmentation, generator, rng):
        """(decoder, queries it cost outside this trial): VALIANT_Single seeds and trains one on the trial's pool."""
        decoder = self._decoder(int(np.asarray(ctx.text_features).shape[1]), codes.shape[1], encoder.image_size,
                                generator)
        self._train(decoder, ctx, codes, encoder, segmentation, generator, rng)
        return decoder, 0.0

    def _decoder(self, feature_dim: int, code_dim: int, image_size: int, generator):
        """A seeded decoder reading an image feature (``feature_dim``) and its segmentation code (``code_dim``)."""
        decoder = build_decoder(feature_dim + code_dim, image_size, self.hidden, self.channels, float(self.epsilon))
        seeded_init(decoder, generator)
        return decoder

    def _train(self, decoder, ctx: AdaptContext, codes, encoder, segmentation, generator, rng) -> None:
        """SPSA-GC on the unsupervised loss, one fresh pool batch (and δ) per step."""

        def batch_loss(rows):
            return self._step_loss(decoder, ctx.images, codes, segmentation, ctx.blackbox, encoder, generator, rows)

        batches = row_batches(np.arange(ctx.images.size("pool")), self.batch_size, rng)
        train_by_spsa(decoder, self.spsa, self.steps, batches, batch_loss, generator)

    def _step_loss(self, decoder, images, codes, segmentation, blackbox, encoder, generator, rows):
        """One SPSA step's loss at the decoder's current weights, its batch (pixels, δ, codes) fixed here."""
        batch = make_batch(images.pixels("pool", rows).float(), codes[rows], encoder, segmentation,
                           float(self.sigma), generator)
        return lambda: valiant_loss(decoder, batch, blackbox, encoder, self.lambdas, self.diversity)
