"""MaPLe: coupled vision-language prompts (Khattak et al., CVPR 2023).

Text side: a learnable context (CoOp-style, through :mod:`.text`) plus, for
text blocks 1 .. J-1, learnable "compound" prompts that replace the context
tokens at each block's input. Vision side: every text prompt of level j is
mapped by its own linear coupling function F_j (text width -> vision width)
to the vision prompt of block j, so the two branches learn together::

    vision prompt_j = F_j(text prompt_j),   j = 0 .. J-1

Both towers stay frozen; the prompts and the coupling layers train. The
fitted model is a prompted image tower (vision prompts computed once from
the couplings) in front of a fixed prompted text classifier, so its
predictor is the VPT predictor with deep prompts.

Deviations: the context starts from the embeddings of ``ctx_init`` and the
class token sits at the end (MaPLe replaces the first ``n_ctx`` tokens of
"a photo of a" instead); vision prompts enter after ``ln_pre`` (see
:mod:`.vision`). Defaults follow the paper: J = 9 (capped by the towers'
depth), compound prompts ~ N(0, 0.02), SGD lr 0.0035, batch 4, 5 epochs.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ...base import IMAGE_PREDICTOR_PROVIDES, IMAGES, TEXT_FEATURES, AdaptContext, Learner, TrainSet
from ...core.devices import pick_device
from ...options import Int, Number
from ...registry import register_adaptation
from . import recipes
from .coop import CtxInit, PromptSettings
from .model import frozen_clip, logit_scale
from .text import PromptedTextEncoder
from .vpt import VPTPredictor, random_resized_crop_flip


@register_adaptation("maple")
class MaPLe(Learner):
    """Multi-modal prompt learning: text context + compound prompts coupled into the image tower."""

    requires = frozenset({TEXT_FEATURES, IMAGES})
    provides = IMAGE_PREDICTOR_PROVIDES
    num_gpus = 1.0

    class Options(recipes.ImageRecipeOptions):
        depth: Int = Field(9, ge=1, description="prompted blocks J, capped by the towers' depth")
        ctx_init: CtxInit = "a photo of a"
        n_ctx: Int = Field(2, ge=1, description="context vectors when ctx_init is None")
        init_std: Number = Field(0.02, ge=0, description="std of the compound prompts (and a random context)")
        recipe: str = Field("maple", description="a preset of recipes.PRESETS")
        temperature: Number | None = Field(None, gt=0, description="None: the model's logit scale")

    def configure(self) -> None:
        self.prompt = PromptSettings(self.n_ctx, self.ctx_init, "end", "none", float(self.init_std))
        self.recipe = self.options.training_recipe()

    def fit(self, train: TrainSet, ctx: AdaptContext, rng: np.random.Generator) -> VPTPredictor:
        import torch
        import torch.nn.functional as F

        from .vision import PromptedVisionTower

        device = pick_device(ctx.device)
        clip = frozen_clip(ctx.encoder, ctx.precision, device)
        tower = PromptedVisionTower(clip.model.visual)
        layout = self.prompt.layout("maple", clip.tokenizer, ctx)
        text = PromptedTextEncoder(clip.model, layout, device, self.prompt.class_chunk)
        scale = logit_scale(clip) if self.temperature is None else 1.0 / self.temperature
        depth = min(self.depth, tower.num_layers, len(text.tower.transformer.resblocks))

        def predictor(vision_prompts: np.ndarray, classifier: np.ndarray) -> VPTPredictor:
            return VPTPredictor(vision_prompts, classifier, scale, "deep", ctx.encoder, ctx.precision,
                                device=ctx.device)

        if len(train.labels) == 0:  # round 0: zero-shot CLIP
            classifier = np.asarray(ctx.text_features, np.float32)
            return predictor(np.zeros((0, layout.n_ctx, tower.width), np.float32),
                             classifier / np.linalg.norm(classifier, axis=1, keepdims=True))
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        context = torch.nn.Parameter(self.prompt.initial_context(text, clip.tokenizer, layout.n_ctx, generator))
        compound = torch.nn.Parameter(torch.randn(depth - 1, layout.n_ctx, text.width, generator=generator)
                                      * self.prompt.init_std)
        couplings = torch.nn.ModuleList([torch.nn.Linear(text.width, tower.width) for _ in range(depth)])
        with torch.no_grad():  # seeded initialisation (nn.Linear would draw from the global generator)
            for layer in couplings:
                bound = 1.0 / np.sqrt(text.width)
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
                layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound)
        context.data, compound.data = context.data.to(device), compound.data.to(device)
        couplings.to(device)

        def vision_prompts():
            levels = [context, *compound]
            return [couplings[j](levels[j]) for j in range(depth)]

        def classifier():
            return text.class_features(context, deep=list(compound))

        pixels = ctx.images.pixels("pool", np.asarray(train.rows)).to(device)
        labels = torch.as_tensor(np.asarray(train.labels, np.int64), device=device)
        aug_gen = torch.Generator().manual_seed(int(rng.integers(2**31)))

        def batch_loss(rows):
            idx = torch.as_tensor(rows, device=device)
            x = random_resized_crop_flip(pixels[idx], aug_gen) if self.recipe.augment else pixels[idx]
            feats = F.normalize(tower(x, deep=vision_prompts()).float(), dim=-1)
            return F.cross_entropy(scale * feats @ classifier().T, labels[idx])

        recipes.train([context, compound, *couplings.parameters()], batch_loss, len(labels), self.recipe, rng, device)
        with torch.no_grad():
            prompts = torch.stack(vision_prompts()).float().cpu().numpy()
            weights = classifier().float().cpu().numpy()
        return predictor(prompts, weights)
