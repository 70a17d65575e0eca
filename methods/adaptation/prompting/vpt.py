"""VPT: visual prompt tuning of a frozen CLIP image tower (Jia et al., ECCV 2022).

Learnable tokens are spliced into the frozen ViT (see :mod:`.vision` for the
placement); the classifier is the fixed, L2-normalised class text embeddings
of the trial (``ctx.text_features``, the template ensemble), so the only
trainable tensors are the prompts::

    logits = scale * normalize(tower(pixels, prompts)) @ normalize(text).T

and the loss is plain cross-entropy over every training row (pseudo-labelled
rows count like queried ones). This is the VPT baseline of CEC and the visual
side of dual-prompt tuning (20 tokens there, PROTOCOLS.md).

Paper values: VPT picks the prompt length per task from {1, 5, 10, 50, 100,
200} (ViT-B/16) and trains with SGD (momentum 0.9), warm-up and cosine decay
at base learning rates from a grid of {0.05 .. 50} (x batch/256) -- orders of
magnitude above CoOp's 0.002, because the prompts live in the residual
stream whose tokens have norms of ~12 (tiny-clip, after ln_pre). Dual-prompt tuning uses 20 visual
tokens (PROTOCOLS.md). The default here is 8 tokens. The ``fast`` and
``vpt_al`` presets keep CoOp's lr of 0.002, with which prompts barely move:
pass ``lr`` (5 worked best on tiny-clip) for a real fit.

Initialisation (``init``):

* ``"token-mean"`` (default): every prompt of layer ``i`` starts as the mean
  patch token that enters block ``i`` on this round's labelled images (a
  prompt-free pass), plus ``N(0, init_std^2)`` noise to tell the tokens apart
  -- the token-prototype initialisation of SPT (Wang et al., ICML 2024).
  The prompts start inside the distribution the frozen blocks expect, so the
  untrained prompted model predicts like zero-shot CLIP.
* ``"xavier"``: VPT's own xavier-uniform, ``U(-a, a)`` with
  ``a = sqrt(6 / (3 * patch_h * patch_w + width))`` (0.0625 for ViT-B/16).
  Paper-faithful, but on a small tower random tokens are far from the
  residual stream's scale and wreck the starting point (tiny-clip: 8 such
  tokens take synth-scans from 25 % to 11 % before training, and short fits
  do not recover); with 197 tokens in ViT-B/16 the damage is presumably smaller
  (not measured here).
* ``"normal"``: ``N(0, init_std^2)`` as MaPLe / CoOp (0.02).

Random draws come from a CPU generator seeded by the run's rng, so the
initial prompts (and the augmentation) do not depend on the device.

Round 0 (no labelled rows): there is nothing to fit, so the predictor is the
prompt-free tower, i.e. zero-shot CLIP at the same ``scale``.

Measured (tiny-clip, synth-scans, 16 labels/class, 1,000 test images, CPU):
zero-shot 0.250; VPT-deep, 8 tokens, lr 5, batch 32, 50 epochs, augment
0.278-0.300 over three seeds (60 epochs 0.293-0.318); VPT-shallow 0.22-0.30
with token-mean init (0.20-0.28 with xavier) across lr 0.002-20, 30-150
epochs, batch 8-32, with and without augmentation -- about
what re-weighting the zero-shot logits by a per-class bias gives (0.278),
while a linear probe on the cached features reaches 0.40. A shared,
image-independent prompt in front of a fixed text classifier has little to
work with in a 4-layer, 17-token tower; expect more from ViT-B/16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from ...base import (IMAGE_PREDICTOR_PROVIDES, IMAGES, TEXT_FEATURES, AdaptContext, ImageAccess, ImagePredictor,
                     Learner, TrainSet)
from ...core.devices import pick_device
from ...core.predictors import unit_rows
from ...options import Int, Number
from ...registry import register_adaptation
from . import recipes
from .model import frozen_clip, logit_scale

VARIANTS = ("shallow", "deep")
INITS = ("token-mean", "xavier", "normal")
#: "text": the fixed class text embeddings (CLIP-style VPT, as the AL papers run it);
#: "learned": VPT as published trains a linear head next to the prompts -- here initialised from the text.
HEADS = ("text", "learned")


def _text_classifier(text_features: np.ndarray) -> np.ndarray:
    text = np.asarray(text_features, dtype=np.float32)
    if text.ndim != 2:
        raise ValueError(f"vpt: text_features must be (C, D), got shape {text.shape}")
    return text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)


def init_prompts(n_layers: int, tokens: int, width: int, patch_size: tuple[int, int], init_std: float | None,
                 generator):
    """``(n_layers, tokens, width)`` float32 prompts: VPT's xavier-uniform, or ``N(0, init_std^2)``."""
    import torch

    shape = (n_layers, tokens, width)
    if init_std is None:
        bound = math.sqrt(6.0 / float(3 * patch_size[0] * patch_size[1] + width))
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound
    return torch.randn(shape, generator=generator) * init_std


def token_mean_prompts(tower, pixels, n_layers: int, tokens: int, noise_std: float, generator,
                       batch_size: int = 64):
    """Prompts initialised as token prototypes: the mean patch token entering each prompted block, plus noise.

    Prompt ``j`` of layer ``i`` = mean over the labelled images' patch tokens
    at the input of block ``i`` (prompt-free pass) + ``N(0, noise_std^2)``; the
    noise breaks the symmetry between otherwise identical tokens (identical
    tokens get identical gradients and would stay identical).
    """
    import torch

    n = len(pixels)
    out = torch.zeros((n_layers, tokens, tower.width), dtype=torch.float64)
    for s in range(0, n, batch_size):
        for i, x in tower.block_inputs(pixels[s: s + batch_size]):
            if i >= n_layers:
                break
            out[i] += x[:, 1:].detach().double().sum(dim=(0, 1)).cpu() / (n * (x.shape[1] - 1))
    out += torch.randn(out.shape, generator=generator, dtype=torch.float64) * noise_std
    return out.float()


def split_prompts(prompts, variant: str):
    """The tower's ``(shallow, deep)`` arguments for a ``(L, n, W)`` prompt tensor."""
    if prompts is None or prompts.shape[0] == 0:
        return None, None
    if variant == "shallow":
        return prompts[0], None
    return prompts[0], [None] + [prompts[i] for i in range(1, prompts.shape[0])]


def random_resized_crop_flip(x, generator, scale: tuple[float, float] = (0.5, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    """Per-image random resized crop (area ``scale``, aspect ``ratio``) + horizontal flip, on a tensor batch.

    One batched ``grid_sample`` (bilinear) instead of a per-image loop. Crop
    sides are clamped to the image (torchvision retries instead); the random
    numbers come from ``generator`` on the CPU, so a seed gives the same crops
    on any device.
    """
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    u = torch.rand((b, 5), generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    sx = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / image width
    sy = torch.sqrt(area / aspect).clamp(max=1.0)
    tx = (2 * u[:, 2] - 1) * (1 - sx)  # crop centre in [-1, 1] coordinates, crop stays inside
    ty = (2 * u[:, 3] - 1) * (1 - sy)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0).to(torch.float64)
    theta = torch.zeros((b, 2, 3), dtype=torch.float64)
    theta[:, 0, 0] = sx * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ------------------------------------------------------------------ predictor


@dataclass
class VPTPredictor(ImagePredictor):
    """Prompted frozen CLIP image tower + fixed text classifier. State: plain numpy arrays only."""

    prompts: np.ndarray  # (L, n, W) float32; L = 0 (no prompts), 1 (shallow) or the number of blocks (deep)
    text: np.ndarray  # (C, D) L2-normalised class embeddings
    scale: float  # logit scale (inverse temperature)
    variant: str = "shallow"
    encoder: str = "tiny-clip"
    precision: str = "fp32"
    batch_size: int = 256
    device: str | None = None  # None: CUDA when present, else CPU (not part of the state)

    def state(self) -> dict[str, np.ndarray]:
        return {
            "prompts": np.asarray(self.prompts, dtype=np.float32),
            "text": np.asarray(self.text, dtype=np.float32),
            "scale": np.asarray(self.scale, dtype=np.float64),
            "variant": np.asarray(self.variant, dtype=np.str_),
            "encoder": np.asarray(self.encoder, dtype=np.str_),
            "precision": np.asarray(self.precision, dtype=np.str_),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "VPTPredictor":
        return cls(np.asarray(state["prompts"], dtype=np.float32), np.asarray(state["text"], dtype=np.float32),
                   float(state["scale"]), str(state["variant"]), str(state["encoder"]), str(state["precision"]))

    def class_embeddings(self) -> np.ndarray:
        """The classifier rows: the text embeddings, or VPT's learned head, or MaPLe's prompted classes."""
        return unit_rows(self.text)

    @property
    def num_tokens(self) -> int:
        return int(self.prompts.shape[1]) if self.prompts.shape[0] else 0

    def _run(self, images: ImageAccess, split: str, rows: np.ndarray | None, what: str) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from .vision import PromptedVisionTower

        device = pick_device(self.device)
        enc = frozen_clip(self.encoder, self.precision, device)
        tower = PromptedVisionTower(enc.model.visual)
        rows = np.arange(images.size(split)) if rows is None else np.asarray(rows, dtype=np.int64)
        prompts = torch.from_numpy(np.asarray(self.prompts, np.float32)).to(device) if self.prompts.shape[0] else None
        shallow, deep = split_prompts(prompts, self.variant)
        text = torch.from_numpy(np.asarray(self.text, np.float32)).to(device)
        width = len(self.text) if what == "proba" else tower.output_dim
        out = np.empty((len(rows), width), dtype=np.float32)
        amp = enc.dtype != torch.float32
        with torch.inference_mode():
            for s in range(0, len(rows), self.batch_size):
                pixels = images.pixels(split, rows[s: s + self.batch_size]).to(device)
                with torch.autocast(device.split(":")[0], dtype=enc.dtype, enabled=amp):
                    feats = tower(pixels, shallow, deep)
                feats = F.normalize(feats.float(), dim=-1)
                if what == "proba":
                    feats = torch.softmax(self.scale * feats @ text.T, dim=-1)
                out[s: s + len(feats)] = feats.cpu().numpy()
        return out

    def predict_proba_images(self, images: ImageAccess, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        return self._run(images, split, rows, "proba")

    def embed_images(self, images: ImageAccess, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        """L2-normalised prompted image features (the classifier's input), ``(n, D)``."""
        return self._run(images, split, rows, "embed")


# ------------------------------------------------------------------ learner


@register_adaptation("vpt")
class VPT(Learner):
    """Visual prompt tuning (shallow or deep) against the fixed class text embeddings."""

    requires = frozenset({TEXT_FEATURES, IMAGES})
    provides = IMAGE_PREDICTOR_PROVIDES
    num_gpus = 1.0

    class Options(recipes.ImageRecipeOptions):
        variant: Literal[VARIANTS] = Field("shallow", description="prompts at the first block only, or at every block")
        tokens: Int = Field(8, ge=1, description="prompt tokens per prompted block")
        init: Literal[INITS] = Field("token-mean", description="how prompts start, see the module docstring")
        init_std: Number = Field(0.02, ge=0, description="std of the initial noise")
        recipe: str = Field("fast", description="a preset of recipes.PRESETS")
        temperature: Number | None = Field(None, gt=0, description="None: the model's logit scale")
        reinit: bool = Field(True, description="fresh prompts every round; false: continue from the last round's")
        grad_checkpointing: bool = Field(False, description="recompute block activations to save GPU memory")
        head: Literal[HEADS] = Field("text", description="the classifier: fixed text embeddings or learned from them")
        head_lr: Number = Field(0.01, gt=0, description="learning rate of a learned head")

    def configure(self) -> None:
        self.recipe = self.options.training_recipe()

    def _start(self, ctx: AdaptContext, tower, n_layers: int, pixels, generator):
        import torch

        prev = ctx.previous
        if (not self.reinit and isinstance(prev, VPTPredictor) and prev.variant == self.variant
                and prev.encoder == ctx.encoder and prev.prompts.shape == (n_layers, self.tokens, tower.width)):
            return torch.from_numpy(np.array(prev.prompts, dtype=np.float32))
        if self.init == "token-mean":
            return token_mean_prompts(tower, pixels, n_layers, self.tokens, self.init_std, generator)
        std = None if self.init == "xavier" else self.init_std
        return init_prompts(n_layers, self.tokens, tower.width, tower.patch_size, std, generator)

    def fit(self, train: TrainSet, ctx: AdaptContext, rng: np.random.Generator) -> VPTPredictor:
        import torch
        import torch.nn.functional as F

        from .vision import PromptedVisionTower

        if ctx.text_features is None:
            raise ValueError("vpt needs the class text features (ctx.text_features)")
        device = pick_device(ctx.device)
        enc = frozen_clip(ctx.encoder, ctx.precision, device)
        tower = PromptedVisionTower(enc.model.visual, grad_checkpointing=self.grad_checkpointing)
        text_np = _text_classifier(ctx.text_features)
        scale = logit_scale(enc) if self.temperature is None else 1.0 / float(self.temperature)
        n_layers = 1 if self.variant == "shallow" else tower.num_layers

        def predictor(prompts: np.ndarray, classifier: np.ndarray = text_np) -> VPTPredictor:
            return VPTPredictor(prompts, classifier, scale, self.variant, ctx.encoder, ctx.precision,
                                device=ctx.device)

        n = len(train.labels)
        if n == 0:  # round 0: nothing to fit -> the prompt-free tower (zero-shot CLIP)
            return predictor(np.zeros((0, self.tokens, tower.width), np.float32))
        if ctx.images is None:
            raise ValueError("vpt adapts the image path and needs ctx.images (declare IMAGES in requires)")
        if train.rows is None:
            raise ValueError("vpt needs the pool row ids of the training set (TrainSet.rows) to read pixels")

        init_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        aug_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        pixels = ctx.images.pixels("pool", np.asarray(train.rows)).to(device)  # read once, kept on the device
        prompts = torch.nn.Parameter(self._start(ctx, tower, n_layers, pixels, init_gen).to(device))
        labels = torch.as_tensor(np.asarray(train.labels, dtype=np.int64), device=device)
        text = torch.from_numpy(text_np).to(device)
        groups = [{"params": [prompts]}]
        if self.head == "learned":
            text = torch.nn.Parameter(text.clone())
            groups.append({"params": [text], "lr_scale": self.head_lr / self.recipe.lr})
        augment = self.recipe.augment

        def batch_loss(batch_rows: np.ndarray):
            idx = torch.as_tensor(batch_rows, device=device)
            x = pixels[idx]
            if augment:
                x = random_resized_crop_flip(x, aug_gen)
            shallow, deep = split_prompts(prompts, self.variant)
            feats = F.normalize(tower(x, shallow, deep).float(), dim=-1)
            return F.cross_entropy(scale * feats @ text.T, labels[idx])

        self.losses = recipes.train(groups, batch_loss, n, self.recipe, rng, device)  # per-epoch, for inspection
        return predictor(prompts.detach().float().cpu().numpy(), text.detach().float().cpu().numpy())
