"""BiomedCoOp (Koleilat et al., "BiomedCoOp: Learning to prompt for biomedical vision-language models", CVPR 2025).

A baseline of BioMedVR's Table 1. CoOp's learnable context, regularised by an
ensemble of LLM-written class prompts encoded once by the frozen text tower:

* **SCCM** (semantic consistency by contextual mapping): the prompted class
  features t_c are pulled towards the mean of the class's ensemble,
  L_SCCM = MSE(t, t̄) with t̄_c = normalise(mean_i normalise(E(prompt_{c,i}))).
* **KDSP** (knowledge distillation with selective prompting): each batch
  scores every ensemble member i by s_i = mean_b max_c ⟨x_b, E_{c,i}⟩ (scaled),
  drops members whose standardised score is an outlier (|z_i| > τ), and
  distils the zero-shot logits of the kept members' mean into the prompted
  ones: L_KDSP = KL(p_zs ‖ p_prompt), summed and divided by B·C.
* L = CE + λ_SCCM·L_SCCM + λ_KDSP·L_KDSP.

The paper is not among ``shared/papers``; the method and its defaults are
read from the authors' public code (``HealthX-Lab/BiomedCoOp``, trainer
``BiomedCoOp_CLIP`` and ``configs/trainers/BiomedCoOp/few_shot``): 4 context
tokens from "a photo of a", 50 prompts per class, τ = 1.5, SGD 0.0025 with
batch 4 for 100 epochs, and λ_SCCM / λ_KDSP chosen per dataset (0.25-5 and
0.25-20; BUSI's 0.75 / 0.75 are the defaults here, the paper config sets each
dataset's pair).

Readings and deviations:

* The LLM ensemble is the card's class descriptions (``descriptions:``, the
  ``{"class": [sentences]}`` file; BiomedCoOp's ``BIOMEDCOOP_TEMPLATES`` saved
  as JSON is such a file, keyed by class name), else its positive attribute
  sentences; the first ``n_prompts`` of each class, each encoded as written.
  A class with fewer sentences is refused with the count it has.
* The public code standardises the scores twice -- a median/MAD z-score and
  then (z − mean z)/std z. The second step undoes the first exactly (both are
  affine with a positive scale), so the mask here is |(s − mean s)/std s| ≤ τ;
  when every score is equal, or no member survives (τ < 1), all are kept.
* Trains on cached image features like every text-prompt learner here (the
  frozen encoder makes the zero-shot image features the prompted model's own),
  so without the public code's random resized crops.
* The paper runs on BiomedCLIP; a sweep has one encoder, so in the BioMedVR
  config it runs on the VR rows' ViT-B/16 (as CoOp and CoCoOp do there).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ...base import DESCRIPTIONS, AdaptContext, Predictor, TrainSet
from ...options import Int, Number
from ...registry import register_adaptation, with_defaults
from .coop import PromptedLinearPredictor, _TextPromptLearner
from .recipes import train


def prompt_ensemble(ctx: AdaptContext, encoder, n_prompts: int) -> np.ndarray:
    """(C, P, D) unit embeddings of the first ``n_prompts`` description sentences of every class, in class order."""
    descriptions = ctx.descriptions or {}
    counts = [len(descriptions.get(name) or ()) for name in ctx.class_names]
    short = [f"{name!r} ({n})" for name, n in zip(ctx.class_names, counts) if n < n_prompts]
    if short:
        raise ValueError(f"biomedcoop needs n_prompts={n_prompts} description sentences per class; "
                         f"{', '.join(short[:5])}{' ...' if len(short) > 5 else ''} have fewer: name BiomedCoOp's "
                         "prompt file as the card's `descriptions:` (see datasets/descriptions.py) or lower "
                         f"n_prompts to {min(counts)}")
    texts = [s for name in ctx.class_names for s in descriptions[name][:n_prompts]]
    emb = np.asarray(encoder.encode_texts(texts), np.float32).reshape(len(ctx.class_names), n_prompts, -1)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True).clip(1e-12)


def kept_prompts(scores, tau: float):
    """KDSP's selection: members whose standardised score lies within ``tau``; all when that is none or undefined."""
    import torch

    spread = scores.std() if len(scores) > 1 else scores.new_zeros(())
    if not torch.isfinite(spread) or spread <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    keep = ((scores - scores.mean()) / spread).abs() <= tau
    return keep if keep.any() else torch.ones_like(keep)


def biomedcoop_loss(logits, labels, class_features, x, ensemble, scale: float, tau: float,
                    sccm_lambda: float, kdsp_lambda: float):
    """CE + λ_SCCM·MSE(t, t̄) + λ_KDSP·KL(p_zs ‖ p) for one batch; ``ensemble`` is (C, P, D) of unit rows."""
    import torch
    import torch.nn.functional as F

    loss = F.cross_entropy(logits, labels)
    if sccm_lambda:
        loss = loss + sccm_lambda * F.mse_loss(class_features, F.normalize(ensemble.mean(1), dim=-1))
    if kdsp_lambda:
        with torch.no_grad():
            per_member = scale * torch.einsum("bd,cpd->bcp", x, ensemble)
            keep = kept_prompts(per_member.max(1).values.mean(0), tau)
            teacher = scale * x @ F.normalize(ensemble[:, keep].mean(1), dim=-1).T
        kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher, -1), reduction="sum", log_target=True)
        loss = loss + kdsp_lambda * kl / logits.numel()
    return loss


@register_adaptation("biomedcoop")
@with_defaults(n_ctx=4, recipe="biomedcoop")
class BiomedCoOp(_TextPromptLearner):
    """CoOp with BiomedCoOp's SCCM and KDSP regularisers against an LLM prompt ensemble (see the module)."""

    requires = _TextPromptLearner.requires | {DESCRIPTIONS}

    class Options(_TextPromptLearner.Options):
        sccm_lambda: Number = Field(0.75, ge=0, description="weight of the SCCM (MSE to the ensemble mean) term")
        kdsp_lambda: Number = Field(0.75, ge=0, description="weight of the KDSP (distillation) term")
        tau: Number = Field(1.5, gt=0, description="ensemble members with |standardised score| > tau are dropped")
        n_prompts: Int = Field(50, ge=1, description="ensemble sentences per class (the first n of the card's)")

    def fit(self, train_set: TrainSet, ctx: AdaptContext, rng: np.random.Generator) -> Predictor:
        import torch

        clip, layout, text, scale, generator, device = self._setup(ctx, rng)
        ensemble_np = prompt_ensemble(ctx, clip, self.n_prompts)
        fresh = self.prompt.initial_context(text, clip.tokenizer, layout.n_ctx, generator)
        context = torch.nn.Parameter(self._warm(ctx, "unified", fresh))
        if not len(train_set.labels):  # round 0: zero-shot CLIP, as CoOp
            return PromptedLinearPredictor(np.asarray(ctx.text_features, np.float32),
                                           np.zeros(ctx.num_classes, np.float32), 1.0 / scale,
                                           {"unified": context.detach().cpu().numpy()})
        x = torch.as_tensor(np.asarray(train_set.features, np.float32), device=device)
        y = torch.as_tensor(train_set.labels, dtype=torch.long, device=device)
        ensemble = torch.as_tensor(ensemble_np, device=device)

        def batch_loss(rows):
            classes = text.class_features(context)
            return biomedcoop_loss(scale * x[rows] @ classes.T, y[rows], classes, x[rows], ensemble, scale,
                                   float(self.tau), float(self.sccm_lambda), float(self.kdsp_lambda))

        train([context], batch_loss, len(y), self.recipe, rng, device)
        with torch.no_grad():
            weight = text.class_features(context).float().cpu().numpy()
        return PromptedLinearPredictor(weight, np.zeros(ctx.num_classes, np.float32), 1.0 / scale,
                                       {"unified": context.detach().cpu().numpy()})
