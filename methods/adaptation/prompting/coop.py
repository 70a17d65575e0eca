"""CoOp, CoOp-CSC, the CB+SQ dual prompt, and CoCoOp, trained on cached image features.

The image encoder is frozen and its output does not depend on the prompts,
so text-prompt learning never needs pixels: each step encodes the class
prompts through the text tower and scores the *cached* image features. The
papers' public code re-encodes every image every epoch instead; here one
200-epoch CoOp round on the offline default takes seconds on a CPU.

After training, CoOp's classifier is just the (C, D) matrix of prompted class
features, so its predictor is a :class:`LinearPredictor` and evaluation and
selection cost what zero-shot costs. CoCoOp's prompts depend on the image,
so its predictor keeps the text tower and pays C text encodings per image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, Field

from ...base import DESCRIPTIONS, TEXT_FEATURES, AdaptContext, Learner, Predictor, TrainSet
from ...core.devices import pick_device
from ...core.predictors import LinearPredictor, softmax
from ...options import Int, Number
from ...registry import register_adaptation, with_defaults
from .model import frozen_clip, logit_scale
from .recipes import RecipeOptions, train
from .text import COMPILE_MODES, POSITIONS, PromptedTextEncoder, build_layout

DESCRIPTION_MODES = ("none", "ensemble")


def _ctx_init(words: str | None) -> str | None:
    if words and "{" in words and (words.count("{}") != 1 or words.count("{") != 1):
        raise ValueError(f"ctx_init {words!r} must be words ('a photo of a') or a template "
                         "with exactly one '{}' slot ('a photo of a {}.')")
    return words


#: The ``ctx_init`` option of the text-prompt learners and MaPLe.
CtxInit = Annotated[str | None, AfterValidator(_ctx_init),
                    Field(description="words (or a template's words before '{}') that initialise the context; "
                                      "None: n_ctx random vectors")]


@dataclass
class PromptSettings:
    """How the prompts are laid out and initialised; shared by every text-prompt learner (validated as options)."""

    n_ctx: int = 16
    ctx_init: str | None = "a photo of a"
    class_position: str = "end"
    descriptions: str = "none"
    init_std: float = 0.02
    class_chunk: int = 256

    @property
    def init_words(self) -> str | None:
        """Words that initialise the context; a template contributes what precedes its slot."""
        if not self.ctx_init:
            return None
        return self.ctx_init.split("{}")[0].strip() or None

    def layout(self, owner: str, tokenizer, ctx: AdaptContext):
        if len(ctx.class_names) != ctx.num_classes:
            raise ValueError(f"{owner}: the dataset card lists {len(ctx.class_names)} class names for "
                             f"{ctx.num_classes} classes; class names are missing from the card")
        n_ctx = len(tokenizer.encode(self.init_words)) if self.init_words else self.n_ctx
        descriptions = ctx.descriptions if self.descriptions == "ensemble" else None
        return build_layout(tokenizer, ctx.class_names, n_ctx, self.class_position, descriptions)

    def initial_context(self, text: PromptedTextEncoder, tokenizer, n_ctx: int, generator, copies: int | None = None):
        import torch

        if self.init_words:
            base = text.word_context(tokenizer, self.init_words)
        else:
            base = torch.randn(n_ctx, text.width, generator=generator).to(text.device) * self.init_std
        return base.clone() if copies is None else base.unsqueeze(0).repeat(copies, 1, 1)


@dataclass
class PromptedLinearPredictor(LinearPredictor):
    """A linear classifier whose weights are prompted class features; keeps the contexts for warm starts."""

    contexts: dict = field(default_factory=dict)

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), **{f"context_{k}": v for k, v in self.contexts.items()}}

    @classmethod
    def from_state(cls, state):
        contexts = {k[len("context_"):]: np.asarray(v) for k, v in state.items() if k.startswith("context_")}
        return cls(np.asarray(state["weight"]), np.asarray(state["bias"]), float(state["temperature"]), contexts)


class _TextPromptLearner(Learner):
    """Shared option handling, setup and warm start for the text-prompt learners."""

    requires = frozenset({TEXT_FEATURES})
    num_gpus = 1.0  # gets the trial's GPU when it has one (class prompts at C = 1,000 are GPU work)
    contexts: tuple[str, ...] = ("unified",)

    class Options(RecipeOptions):
        n_ctx: Int = Field(16, ge=1, description="context vectors when ctx_init is None")
        ctx_init: CtxInit = "a photo of a"
        class_position: Literal[POSITIONS] = "end"
        descriptions: Literal[DESCRIPTION_MODES] = Field(
            "none", description="ensemble: average the prompts of the card's class descriptions")
        recipe: str = Field("coop_al", description="a preset of recipes.PRESETS")
        reinit: bool = Field(True, description="fresh prompts every round; false: continue from the last round's")
        temperature: Number | None = Field(None, gt=0, description="None: the model's logit scale")
        class_chunk: Int = Field(256, ge=1, description="classes per text-tower batch")
        init_std: Number = Field(0.02, ge=0, description="std of random context vectors")
        compile: Literal[COMPILE_MODES] | None = Field(
            None, description="torch.compile mode of the text tower's class-prompt chunks; None: eager")

    def configure(self) -> None:
        self.prompt = PromptSettings(self.n_ctx, self.ctx_init, self.class_position, self.descriptions,
                                     float(self.init_std), self.class_chunk)
        if self.descriptions == "ensemble":
            self.requires = self.requires | {DESCRIPTIONS}
        self.recipe = self.options.training_recipe()

    def _setup(self, ctx: AdaptContext, rng: np.random.Generator):
        import torch

        device = pick_device(ctx.device)
        clip = frozen_clip(ctx.encoder, ctx.precision, device)
        layout = self.prompt.layout(self.name, clip.tokenizer, ctx)
        text = PromptedTextEncoder(clip.model, layout, device, self.prompt.class_chunk, compile_mode=self.compile)
        scale = 1.0 / self.temperature if self.temperature else logit_scale(clip)
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return clip, layout, text, scale, generator, device

    def _warm(self, ctx: AdaptContext, key: str, fresh):
        """The previous round's context when ``reinit`` is off and shapes agree; else the fresh one."""
        import torch

        previous = getattr(ctx.previous, "contexts", {}) if ctx.previous is not None else {}
        if not self.reinit and key in previous and tuple(previous[key].shape) == tuple(fresh.shape):
            return torch.as_tensor(previous[key], device=fresh.device).float()
        return fresh


class _CoOpFamily(_TextPromptLearner):
    """CoOp with a unified context, class-specific contexts, or both averaged (CB+SQ eq. 14)."""

    def fit(self, train_set: TrainSet, ctx: AdaptContext, rng: np.random.Generator) -> Predictor:
        import torch

        clip, layout, text, scale, generator, device = self._setup(ctx, rng)
        params = {}
        if "unified" in self.contexts:
            fresh = self.prompt.initial_context(text, clip.tokenizer, layout.n_ctx, generator)
            params["unified"] = torch.nn.Parameter(self._warm(ctx, "unified", fresh))
        if "class" in self.contexts:
            fresh = self.prompt.initial_context(text, clip.tokenizer, layout.n_ctx, generator, ctx.num_classes)
            params["class"] = torch.nn.Parameter(self._warm(ctx, "class", fresh))

        def classifier():
            feats = [text.class_features(params[k]) for k in self.contexts]
            return sum(feats) / len(feats)  # eq. 14: the mean of the two similarities is linear in the features

        if len(train_set.labels):
            x = torch.as_tensor(np.asarray(train_set.features, np.float32), device=device)
            y = torch.as_tensor(train_set.labels, dtype=torch.long, device=device)

            def batch_loss(rows):
                return torch.nn.functional.cross_entropy(scale * x[rows] @ classifier().T, y[rows])

            train(params.values(), batch_loss, len(y), self.recipe, rng, device)
            with torch.no_grad():
                weight = classifier().float().cpu().numpy()
        else:  # round 0: nothing to learn from, so zero-shot CLIP (the template ensemble)
            weight = np.asarray(ctx.text_features, np.float32)
        contexts = {k: v.detach().float().cpu().numpy() for k, v in params.items()}
        return PromptedLinearPredictor(weight, np.zeros(ctx.num_classes, np.float32), 1.0 / scale, contexts)


@register_adaptation("coop")
class CoOp(_CoOpFamily):
    """CoOp (Zhou et al., IJCV 2022): one learnable context shared by all classes.

    Defaults: context initialised from "a photo of a" (CoOp's and CEC's
    choice; ``ctx_init: null`` gives ``n_ctx`` vectors ~ N(0, 0.02) as in
    CB+SQ), class token at the end, the CoOp-in-AL recipe (SGD 0.002, cosine,
    200 epochs, batch 32, one warm-up epoch at 1e-5). Deviation: trains on
    cached image features (no augmentation), which the frozen encoder makes
    equivalent to the image path without augmentation (tested to 1e-4).
    """

    contexts = ("unified",)


@register_adaptation("coop_csc")
class CoOpCSC(_CoOpFamily):
    """CoOp with class-specific contexts (CSC): one learnable context per class."""

    contexts = ("class",)


@register_adaptation("coop_dual")
class CoOpDual(_CoOpFamily):
    """The CB+SQ paper's prompts (eq. 14): the mean of unified-prompt and class-wise-prompt similarities.

    Both contexts train jointly; the paper's setting is ``ctx_init: null``
    (16 vectors ~ N(0, 0.02)), re-initialised every round.
    """

    contexts = ("unified", "class")


# ------------------------------------------------------------------ CoCoOp


def _meta_net(in_dim: int, width: int, generator):
    """CoCoOp's Meta-Net: Linear(D, D/16) - ReLU - Linear(D/16, W), seeded."""
    import torch

    hidden = max(1, in_dim // 16)
    net = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, width))
    with torch.no_grad():
        for p in net.parameters():
            bound = 1.0 / np.sqrt(p.shape[-1]) if p.dim() > 1 else 0.01
            p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
    return net


@dataclass
class CoCoOpPredictor(Predictor):
    """Scores images with prompts conditioned on each image: C text encodings per image."""

    context: np.ndarray  # (M, W)
    meta: dict  # Meta-Net weights, name -> array
    settings: dict  # encoder, precision, class names, descriptions, layout options, scale
    batch: int = 64

    def _model(self):
        import torch

        s = self.settings
        device = pick_device()
        clip = frozen_clip(s["encoder"], s["precision"], device)
        layout = build_layout(clip.tokenizer, s["class_names"], s["n_ctx"], s["class_position"], s["descriptions"])
        text = PromptedTextEncoder(clip.model, layout, device, s["class_chunk"])
        net = _meta_net(len(self.meta["0.weight"][0]), text.width, torch.Generator()).to(device)
        net.load_state_dict({k: torch.as_tensor(v) for k, v in self.meta.items()})
        return text, net, torch.as_tensor(self.context, device=device), device

    def logits(self, features: np.ndarray) -> np.ndarray:
        import torch

        text, net, context, device = self._model()
        out = []
        with torch.inference_mode():
            for s in range(0, len(features), self.batch):
                x = torch.as_tensor(np.asarray(features[s: s + self.batch], np.float32), device=device)
                classes = text.per_image_class_features(context[None] + net(x)[:, None, :])
                out.append((self.settings["scale"] * torch.einsum("bd,bcd->bc", x, classes)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.settings["class_names"])), np.float32)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return softmax(self.logits(features))

    def class_embeddings(self) -> np.ndarray:
        """The class features of the shared context alone (the Meta-Net's image-dependent shift left out)."""
        import torch

        text, _, context, _ = self._model()
        with torch.inference_mode():
            return text.per_image_class_features(context[None])[0].float().cpu().numpy()

    def state(self) -> dict[str, np.ndarray]:
        return {"context": self.context, "settings": np.asarray(json.dumps(self.settings)),
                **{f"meta/{k}": v for k, v in self.meta.items()}}

    @classmethod
    def from_state(cls, state):
        meta = {k.split("/", 1)[1]: np.asarray(v) for k, v in state.items() if k.startswith("meta/")}
        return cls(np.asarray(state["context"]), meta, json.loads(str(state["settings"])))


@register_adaptation("cocoop")
@with_defaults(n_ctx=4, epochs=10)
class CoCoOp(_TextPromptLearner):
    """CoCoOp (Zhou et al., CVPR 2022): a Meta-Net shifts the shared context by a token computed from each image.

    Deviation: trains on cached image features (the Meta-Net reads the same
    image feature the paper computes), with the recipe's batch size (the paper
    uses batch 1, which the round loop can request via ``batch_size: 1``).
    Prediction costs C text encodings per image -- CoCoOp's known price.
    """

    def fit(self, train_set: TrainSet, ctx: AdaptContext, rng: np.random.Generator) -> Predictor:
        import torch

        clip, layout, text, scale, generator, device = self._setup(ctx, rng)
        fresh = self.prompt.initial_context(text, clip.tokenizer, layout.n_ctx, generator)
        context = torch.nn.Parameter(self._warm(ctx, "unified", fresh))
        in_dim = int(np.asarray(ctx.text_features).shape[1])
        net = _meta_net(in_dim, text.width, generator).to(device)
        if len(train_set.labels):
            x = torch.as_tensor(np.asarray(train_set.features, np.float32), device=device)
            y = torch.as_tensor(train_set.labels, dtype=torch.long, device=device)

            def batch_loss(rows):
                classes = text.per_image_class_features(context[None] + net(x[rows])[:, None, :])
                return torch.nn.functional.cross_entropy(scale * torch.einsum("bd,bcd->bc", x[rows], classes), y[rows])

            train([context, *net.parameters()], batch_loss, len(y), self.recipe, rng, device)
        settings = {"encoder": ctx.encoder, "precision": ctx.precision, "class_names": list(ctx.class_names),
                    "descriptions": ctx.descriptions if self.prompt.descriptions == "ensemble" else None,
                    "n_ctx": layout.n_ctx, "class_position": self.prompt.class_position,
                    "class_chunk": self.prompt.class_chunk, "scale": scale}
        return CoCoOpPredictor(context.detach().cpu().numpy(),
                               {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}, settings)
