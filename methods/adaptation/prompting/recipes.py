"""Optimisation recipes of the prompt-learning papers, and the one loop that runs them.

A learner picks a preset by name (``recipe: coop_al``) and may override any
field (``epochs: 50``). Presets follow the papers as distilled in
PROTOCOLS.md; where a paper is silent, the CoOp defaults apply and the preset
says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ...options import Int, Number, PluginOptions


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer: str = Field("sgd", pattern="^(sgd|adamw)$")
    lr: float = Field(0.002, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(32, ge=1)
    warmup_epochs: int = Field(1, ge=0)  # constant warm-up learning rate before the cosine schedule
    warmup_lr: float = Field(1e-5, gt=0)
    augment: bool = False  # random resized crop + flip (image-path learners only)
    # Pseudo-labelled rows per step next to ``batch_size`` labelled ones, for learners that draw the two
    # streams separately (dual prompt); None: pseudo-labelled rows are batched like labelled ones.
    pseudo_batch_size: int | None = Field(None, ge=1)
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU


PRESETS: dict[str, Recipe] = {
    # CoOp as used inside AL rounds (PCB, CB+SQ): SGD 0.002, cosine, 200 epochs, batch 32,
    # one warm-up epoch at a constant 1e-5, CoOp's published weight decay 5e-4.
    "coop_al": Recipe(),
    # CEC (Sec. 6): as above with weight decay 0.005.
    "cec": Recipe(weight_decay=5e-3),
    # Dual prompt tuning (Sec. 4.1): SGD, cosine, 20 epochs (of {10, 20}), lr 0.01 (of {0.001, 0.01, 0.03}),
    # 16 labelled + 64 pseudo-labelled rows per step. The paper names no warm-up (none here) and no weight
    # decay (CoOp's 5e-4).
    "dual_prompt": Recipe(lr=0.01, epochs=20, batch_size=16, pseudo_batch_size=64, warmup_epochs=0),
    # BiomedCoOp (Koleilat et al., CVPR 2025; its public few-shot configs): SGD 0.0025, cosine, 100 epochs,
    # batch 4, one warm-up epoch at a constant 1e-5, Dassl's weight decay 5e-4.
    "biomedcoop": Recipe(lr=0.0025, epochs=100, batch_size=4),
    # VPT-in-AL (CEC's VPT baseline): CoOp's schedule, visual tokens instead of text context.
    "vpt_al": Recipe(lr=0.002, epochs=200),
    # VPT's own regime: prompts live in the residual stream (token norms ~10), so VPT searches base
    # learning rates of 0.05-50; lr 5 with augmentation worked best on the tiny CLIP (see vpt.py).
    "vpt": Recipe(lr=5.0, epochs=50, batch_size=32, augment=True),
    # MaPLe (Khattak et al., CVPR 2023): SGD 0.0035, batch 4, 5 epochs, one warm-up epoch at 1e-5.
    "maple": Recipe(lr=0.0035, epochs=5, batch_size=4),
    # Visual reprogramming (methods/adaptation/reprogramming): SGD with momentum 0.9 and cosine, no weight decay.
    # VP (Bahng et al. 2022): lr 40, 1,000 epochs, batch 256.
    "vp": Recipe(lr=40.0, epochs=1000, batch_size=256, weight_decay=0.0, warmup_epochs=0),
    # AttrVR's public settings, also its AR baseline's: lr 40, 200 epochs, batch 64.
    "attrvr": Recipe(lr=40.0, epochs=200, batch_size=64, weight_decay=0.0, warmup_epochs=0),
    # BioMedVR Sec. 4.1: lr 40, 400 epochs, batch 512.
    "biomedvr": Recipe(lr=40.0, epochs=400, batch_size=512, weight_decay=0.0, warmup_epochs=0),
    # The offline default and tests: the same schedule shape, far fewer epochs.
    "fast": Recipe(lr=0.002, epochs=30, batch_size=32),
}


def resolve_recipe(name: str, overrides: dict) -> Recipe:
    """Preset ``name`` with the ``overrides`` that are not None; the plug-in's message names the plug-in."""
    if name not in PRESETS:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - set(Recipe.model_fields))
    if unknown:
        raise ValueError(f"unknown recipe field(s) {unknown}; known: {sorted(Recipe.model_fields)}")
    merged = {**PRESETS[name].model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return Recipe.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid recipe setting(s): {problems}") from None


class RecipeOptions(PluginOptions):
    """Options of a learner that trains with a preset (``recipe``) and overrides of its fields.

    Subclasses declare ``recipe`` (their default preset); the overridable
    fields are here (None keeps the preset's), and the merged recipe is
    checked with the other options, so a bad override fails at construction.
    """

    epochs: Int | None = Field(None, description="None: the recipe's")
    lr: Number | None = Field(None, description="None: the recipe's")
    batch_size: Int | None = Field(None, description="None: the recipe's")
    weight_decay: Number | None = Field(None, description="None: the recipe's")

    def training_recipe(self) -> Recipe:
        fields = set(type(self).model_fields) & set(Recipe.model_fields)
        return resolve_recipe(self.recipe, {k: getattr(self, k) for k in sorted(fields)})

    @model_validator(mode="after")
    def _recipe(self):
        self.training_recipe()
        return self


class ImageRecipeOptions(RecipeOptions):
    """Recipe options of learners that see pixels, which may also augment them."""

    augment: bool | None = Field(None, description="random resized crop and flip; None: the recipe's")


def learning_rate(recipe: Recipe, epoch: int) -> float:
    """Constant warm-up, then cosine from ``lr`` to 0 over the remaining epochs (per epoch, as CoOp/Dassl)."""
    if epoch < recipe.warmup_epochs:
        return recipe.warmup_lr
    span = max(1, recipe.epochs - recipe.warmup_epochs)
    return 0.5 * recipe.lr * (1 + math.cos(math.pi * (epoch - recipe.warmup_epochs) / span))


def shuffled_batches(n: int, batch_size: int) -> Callable[[np.random.Generator], list[np.ndarray]]:
    """One epoch: ``range(n)`` shuffled and cut into batches of ``batch_size`` (the last may be smaller)."""

    def epoch(rng: np.random.Generator) -> list[np.ndarray]:
        order = rng.permutation(n)
        return [order[s: s + batch_size] for s in range(0, n, batch_size)]

    return epoch


def train(parameters: Iterable, batch_loss: Callable[[np.ndarray], object], n: int, recipe: Recipe,
          rng: np.random.Generator, device: str,
          batches: Callable[[np.random.Generator], list[np.ndarray]] | None = None) -> list[float]:
    """Minimise ``batch_loss(rows)`` over shuffled mini-batches of ``range(n)``; returns the epoch losses.

    ``batches(rng)`` lays out one epoch when mini-batches are not plain
    shuffled slices (dual-prompt tuning draws 16 labelled and 64
    pseudo-labelled rows per step); by default ``shuffled_batches(n, batch_size)``.

    ``parameters`` are tensors, or param-group dicts whose ``lr_scale``
    multiplies the schedule's learning rate for that group (a head trained
    next to prompts needs a far smaller step than the prompts). Shuffling comes from ``rng`` (the run's seed), so training is deterministic
    for a seed on a given device. On CUDA with ``amp`` the loss runs under bf16
    autocast (no loss scaling needed); parameters stay fp32.
    """
    import torch

    groups = [g if isinstance(g, dict) else {"params": [g]} for g in parameters]
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    groups = [{"lr_scale": 1.0, **g} for g in groups if g["params"]]
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    autocast = device.startswith("cuda") and recipe.amp
    epoch_batches = batches or shuffled_batches(n, recipe.batch_size)
    losses = []
    for epoch in range(recipe.epochs):
        for group in opt.param_groups:
            group["lr"] = learning_rate(recipe, epoch) * group["lr_scale"]
        total, seen = 0.0, 0
        for rows in epoch_batches(rng):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                loss = batch_loss(rows)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + float(loss.detach()) * len(rows), seen + len(rows)
        losses.append(total / max(1, seen))
    return losses
