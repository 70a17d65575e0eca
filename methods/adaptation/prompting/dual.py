"""Dual-prompt tuning: a positive and a negative text prompt per class, and the clean probability they give.

Wang, Song & Xia, "Uncertainty modeling for active CLIP adaptation with dual
prompt tuning" (shared/papers/dualprompt-uncertainty-active-clip.txt, Sec. 3.2).
Per class k two prompts share the class token and differ in their context
(eq. 1-2)::

    prompt_k^+ = [V_1^+] .. [V_M^+] [CLS]_k        prompt_k^- = [V_1^-] .. [V_M^-] [CLS]_k

The clean probability of a label y for an image x is the two-way softmax of
x's cosine similarity to the two prompts of y at temperature tau (eq. 3)::

    p_clean(x, y) = sigmoid((sim(v(x), t^+_y) - sim(v(x), t^-_y)) / tau)

and training minimises L = L1 + lambda L2 (eq. 6): L1 the cross-entropy over
the positive prompts (eq. 4); L2 compares the given label y with a complement
label y~ drawn uniformly from the other classes for every row and step.

**Eq. (5) as printed**, -log p_clean(y~) + log(1 - p_clean(y~)) = -z(y~) with
z = (sim^+ - sim^-)/tau, is minimised by making the *complement* label look
clean and is unbounded below -- the opposite of the sentence around it ("for
clean samples, the similarity [to] the positive prompt exceeds that of the
negative prompt, while the opposite holds for noisy labels"). The default,
``l2_form: text``, implements that sentence::

    L2 = -log p_clean(x, y) - log(1 - p_clean(x, y~))

``l2_form: literal`` keeps the printed form for comparison.

Readings where the paper is silent or ambiguous (each an option):

* ``class_specific`` (default false): eq. 1-2 index the context tokens by
  position only, so one positive and one negative context are shared by all
  classes (CoOp's unified context); true gives every class its own pair (CSC).
* ``ctx_init`` (default none): M = 16 context vectors per polarity ~ N(0, 0.02)
  (Sec. 4.1 fixes M = 16, which rules out CoOp's 4-token "a photo of a"); with
  words, both polarities start from them and L2 pulls them apart.
* tau (``temperature``): CLIP's own logit scale (1/100), for eq. 3 and eq. 4 alike.
* lambda (``lam``) = 1: not published.
* Batches (Sec. 4.1): 16 labelled and 64 pseudo-labelled rows per step; an
  epoch is one pass over the larger stream, the smaller one reshuffled and
  cycled. Labelled means queried (the oracle's) rows, pseudo-labelled every
  free label (mined, bootstrap, selective).
* ``visual: vpt`` (the paper's full model, "Ours"): M_v = 20 VPT tokens
  prepended to the image tower's input sequence ("shallow", as Sec. 3.2 words
  it), trained jointly with the text prompts through :mod:`.vpt`'s tower;
  ``visual: none`` trains the text prompts on cached features, the fast path.
  The visual prompts take the recipe's learning rate unless ``visual_lr`` is
  set (the paper uses one rate; VPT's own regime is far larger, see vpt.py).
* Re-initialised every round (Sec. 3.3, "to prevent error accumulation");
  ``reinit: false`` continues the text contexts of the last round (feature
  path; the VPT tokens always restart).
* Round 0 with no training row at all: zero-shot CLIP (the template
  ensemble) and negative = positive class features, so p_clean = 0.5.

The predictors expose ``clean_prob`` (``predictor_output("clean_prob")``):
the (N, C) clean probability of every class, next to ``predict_proba``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from ...base import (CLEAN_PROB, FEATURE_PREDICTOR_PROVIDES, IMAGE_PREDICTOR_PROVIDES, IMAGES, AdaptContext,
                     Predictor, TrainSet, predictor_output)
from ...core.predictors import unit_rows
from ...options import Int, Number
from ...registry import register_adaptation
from . import recipes
from .coop import CtxInit, PromptedLinearPredictor, _TextPromptLearner
from .vpt import VPTPredictor, random_resized_crop_flip, split_prompts, token_mean_prompts

L2_FORMS = ("text", "literal")
VISUAL_MODES = ("none", "vpt")


# ------------------------------------------------------------------ the model's equations


def clean_logit(pos_sim, neg_sim, scale: float):
    """z = (sim^+ - sim^-) / tau, so that p_clean = sigmoid(z) (eq. 3); numpy arrays or tensors."""
    return scale * (pos_sim - neg_sim)


def clean_probability(pos_sim: np.ndarray, neg_sim: np.ndarray, scale: float) -> np.ndarray:
    """Eq. 3 for every class: (N, C) cosine similarities to the positive and negative prompts -> p_clean."""
    z = clean_logit(np.asarray(pos_sim, np.float64), np.asarray(neg_sim, np.float64), scale)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # a sigmoid that cannot overflow


def complement_labels(labels, num_classes: int, generator):
    """y~ uniform over the classes other than y, one per row (eq. 5's simulated noisy label)."""
    import torch

    shift = torch.randint(1, num_classes, labels.shape, generator=generator).to(labels.device)
    return (labels + shift) % num_classes


def dual_prompt_loss(pos_sim, neg_sim, labels, complement, scale: float, lam: float, form: str = "text"):
    """L1 + lambda L2 averaged over a batch (eq. 4-6); ``form`` picks eq. 5's reading (module docstring)."""
    import torch.nn.functional as F

    rows = range(len(labels))
    l1 = F.cross_entropy(scale * pos_sim, labels)
    z = clean_logit(pos_sim, neg_sim, scale)
    z_true, z_comp = z[rows, labels], z[rows, complement]
    if form == "text":  # -log p(y) - log(1 - p(y~)), with log sigmoid(z) = -softplus(-z)
        l2 = F.softplus(-z_true) + F.softplus(z_comp)
    else:  # printed: -log p(y~) + log(1 - p(y~)) = -z(y~)
        l2 = F.softplus(-z_comp) - F.softplus(z_comp)
    return l1 + lam * l2.mean()


def two_stream_batches(n_labelled: int, n_pseudo: int, labelled_batch: int, pseudo_batch: int):
    """Epochs of steps holding ``labelled_batch`` rows of ``range(n_labelled)`` and ``pseudo_batch`` rows of the
    pseudo-labelled rows (numbered after the labelled ones); the longer stream sets the epoch's length."""

    def stream(n: int, size: int, steps: int, offset: int, rng: np.random.Generator) -> list[np.ndarray]:
        if n == 0:
            return [np.zeros(0, np.int64)] * steps
        if -(-n // size) == steps:  # the stream that sets the epoch: every row once, the last batch may be short
            order = rng.permutation(n)
        else:  # the shorter stream: reshuffled and cycled to fill every step
            order = np.concatenate([rng.permutation(n) for _ in range(-(-steps * size // n))])[: steps * size]
        return [order[s: s + size] + offset for s in range(0, len(order), size)]

    def epoch(rng: np.random.Generator) -> list[np.ndarray]:
        steps = max(-(-n_labelled // labelled_batch), -(-n_pseudo // pseudo_batch), 1)
        labelled = stream(n_labelled, labelled_batch, steps, 0, rng)
        pseudo = stream(n_pseudo, pseudo_batch, steps, n_labelled, rng)
        return [np.concatenate([a, b]) for a, b in zip(labelled, pseudo)]

    return epoch


# ------------------------------------------------------------------ predictors


def _clean_of(features: np.ndarray, positive: np.ndarray, negative: np.ndarray, scale: float,
              chunk: int = 65536) -> np.ndarray:
    out = np.empty((len(features), len(positive)), dtype=np.float32)
    for s in range(0, len(features), chunk):
        x = unit_rows(np.asarray(features[s: s + chunk], np.float32))
        out[s: s + chunk] = clean_probability(x @ positive.T, x @ negative.T, scale)
    return out


@dataclass
class DualPromptPredictor(PromptedLinearPredictor):
    """Positive prompts as a linear classifier over cached features, negative ones for the clean probability."""

    negative: np.ndarray | None = None  # (C, D) negative class features
    clean_scale: float = 100.0
    outputs = frozenset({CLEAN_PROB})

    def predict_output(self, name: str, features: np.ndarray) -> np.ndarray:
        if name != CLEAN_PROB:
            return super().predict_output(name, features)
        return _clean_of(features, unit_rows(self.weight), unit_rows(self.negative), self.clean_scale)

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), "negative": np.asarray(self.negative, np.float32),
                "clean_scale": np.asarray(self.clean_scale)}

    @classmethod
    def from_state(cls, state):
        base = PromptedLinearPredictor.from_state({k: v for k, v in state.items()
                                                   if k not in ("negative", "clean_scale")})
        return cls(base.weight, base.bias, base.temperature, base.contexts, np.asarray(state["negative"]),
                   float(state["clean_scale"]))


@dataclass
class DualPromptImagePredictor(VPTPredictor):
    """VPT-prompted image tower in front of the positive prompts; the negative ones give the clean probability."""

    negative: np.ndarray | None = None
    clean_scale: float = 100.0
    outputs = frozenset({CLEAN_PROB})

    def predict_output_images(self, name: str, images, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        if name != CLEAN_PROB:
            return super().predict_output_images(name, images, split, rows)
        feats = self.embed_images(images, split, rows)
        return _clean_of(feats, unit_rows(self.text), unit_rows(self.negative), self.clean_scale)

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), "negative": np.asarray(self.negative, np.float32),
                "clean_scale": np.asarray(self.clean_scale)}

    @classmethod
    def from_state(cls, state):
        base = VPTPredictor.from_state(state)
        return cls(base.prompts, base.text, base.scale, base.variant, base.encoder, base.precision,
                   negative=np.asarray(state["negative"]), clean_scale=float(state["clean_scale"]))


# ------------------------------------------------------------------ learner


@register_adaptation("dual_prompt")
class DualPrompt(_TextPromptLearner):
    """Positive/negative text prompts (+ optional VPT tokens) trained on labelled and pseudo-labelled rows."""

    class Options(_TextPromptLearner.Options):
        ctx_init: CtxInit = None
        class_specific: bool = Field(False, description="a positive/negative context pair per class (CSC)")
        lam: Number = Field(1.0, ge=0, description="weight lambda of L2 (eq. 6)")
        l2_form: Literal[L2_FORMS] = Field("text", description="eq. 5: the text's reading or the printed form")
        visual: Literal[VISUAL_MODES] = Field("none", description="vpt: M_v visual tokens on pixels (the full model)")
        visual_tokens: Int = Field(20, ge=1, description="M_v, VPT tokens (visual: vpt)")
        visual_variant: Literal["shallow", "deep"] = Field("shallow", description="VPT placement")
        visual_lr: Number | None = Field(None, gt=0, description="learning rate of the VPT tokens; None: the recipe's")
        pseudo_batch_size: Int | None = Field(None, ge=1, description="pseudo-labelled rows per step; None: recipe's")
        recipe: str = Field("dual_prompt", description="a preset of recipes.PRESETS")

    def configure(self) -> None:
        super().configure()
        self.pseudo_batch = self.pseudo_batch_size or self.recipe.pseudo_batch_size or self.recipe.batch_size
        if self.visual == "vpt":
            self.requires = self.requires | {IMAGES}
            self.provides = IMAGE_PREDICTOR_PROVIDES | {predictor_output(CLEAN_PROB)}
        else:
            self.provides = FEATURE_PREDICTOR_PROVIDES | {predictor_output(CLEAN_PROB)}

    # -- pieces

    def _contexts(self, ctx: AdaptContext, text, tokenizer, n_ctx: int, generator) -> dict:
        """Fresh positive and negative contexts (``reinit: false``: the last round's, on the feature path)."""
        import torch

        copies = ctx.num_classes if self.class_specific else None
        return {polarity: torch.nn.Parameter(self._warm(
                    ctx, polarity, self.prompt.initial_context(text, tokenizer, n_ctx, generator, copies)))
                for polarity in ("positive", "negative")}

    def _visual(self, ctx: AdaptContext, train: TrainSet, clip, device: str, generator):
        """The prompted tower, the training rows' pixels and the VPT tokens (visual: vpt), else Nones."""
        import torch

        from .vision import PromptedVisionTower

        if self.visual == "none":
            return None, None, None
        if ctx.images is None or train.rows is None:
            raise ValueError("dual_prompt with visual: vpt reads pixels: it needs ctx.images and the rows' pool ids")
        tower = PromptedVisionTower(clip.model.visual)
        pixels = ctx.images.pixels("pool", np.asarray(train.rows)).to(device)
        layers = 1 if self.visual_variant == "shallow" else tower.num_layers
        prompts = token_mean_prompts(tower, pixels, layers, self.visual_tokens, float(self.init_std), generator)
        return tower, pixels, torch.nn.Parameter(prompts.to(device))

    @staticmethod
    def _order(train: TrainSet) -> np.ndarray:
        """Queried rows first, then the pseudo-labelled ones (the two streams of a step)."""
        pseudo = np.asarray(train.is_pseudo, bool)
        return np.concatenate([np.flatnonzero(~pseudo), np.flatnonzero(pseudo)])

    # -- fit

    def fit(self, train: TrainSet, ctx: AdaptContext, rng: np.random.Generator) -> Predictor:
        import torch
        import torch.nn.functional as F

        clip, layout, text, scale, generator, device = self._setup(ctx, rng)
        if len(train.labels) == 0:
            return self._untrained(ctx, scale)
        order = self._order(train)
        train = TrainSet(train.features[order], np.asarray(train.labels)[order], np.asarray(train.is_pseudo)[order],
                         None if train.rows is None else np.asarray(train.rows)[order])
        contexts = self._contexts(ctx, text, clip.tokenizer, layout.n_ctx, generator)
        tower, pixels, visual = self._visual(ctx, train, clip, device, generator)
        labels = torch.as_tensor(np.asarray(train.labels, np.int64), device=device)
        features = torch.as_tensor(np.asarray(train.features, np.float32), device=device)
        aug_gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise_gen = torch.Generator().manual_seed(int(rng.integers(2**31)))

        def image_features(idx):
            if tower is None:
                return F.normalize(features[idx], dim=-1)
            x = random_resized_crop_flip(pixels[idx], aug_gen) if self.recipe.augment else pixels[idx]
            return F.normalize(tower(x, *split_prompts(visual, self.visual_variant)).float(), dim=-1)

        def batch_loss(rows):
            idx = torch.as_tensor(rows, device=device)
            x = image_features(idx)
            pos, neg = text.class_features(contexts["positive"]), text.class_features(contexts["negative"])
            y = labels[idx]
            return dual_prompt_loss(x @ pos.T, x @ neg.T, y, complement_labels(y, ctx.num_classes, noise_gen),
                                    scale, float(self.lam), self.l2_form)

        n_labelled = int((~np.asarray(train.is_pseudo, bool)).sum())
        batches = two_stream_batches(n_labelled, len(labels) - n_labelled, self.recipe.batch_size, self.pseudo_batch)
        groups = [{"params": list(contexts.values())}]
        if visual is not None:
            groups.append({"params": [visual], "lr_scale": (self.visual_lr or self.recipe.lr) / self.recipe.lr})
        self.losses = recipes.train(groups, batch_loss, len(labels), self.recipe, rng, device, batches)
        with torch.no_grad():
            pos = text.class_features(contexts["positive"]).float().cpu().numpy()
            neg = text.class_features(contexts["negative"]).float().cpu().numpy()
        if visual is None:
            saved = {k: v.detach().float().cpu().numpy() for k, v in contexts.items()}
            return DualPromptPredictor(pos, np.zeros(ctx.num_classes, np.float32), 1.0 / scale, saved, neg, scale)
        return DualPromptImagePredictor(visual.detach().float().cpu().numpy(), pos, scale, self.visual_variant,
                                        ctx.encoder, ctx.precision, device=ctx.device, negative=neg, clean_scale=scale)

    def _untrained(self, ctx: AdaptContext, scale: float) -> Predictor:
        """Zero-shot CLIP with negative = positive prompts: nothing is known to be clean, p_clean = 0.5."""
        weight = unit_rows(np.asarray(ctx.text_features, np.float32))
        if self.visual == "none":
            return DualPromptPredictor(weight, np.zeros(ctx.num_classes, np.float32), 1.0 / scale, {}, weight, scale)
        return DualPromptImagePredictor(np.zeros((0, self.visual_tokens, 1), np.float32), weight, scale,
                                        self.visual_variant, ctx.encoder, ctx.precision, device=ctx.device,
                                        negative=weight, clean_scale=scale)
