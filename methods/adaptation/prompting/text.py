"""Learnable text prompts through open_clip's text tower (CoOp, CoOp-CSC, CoCoOp, MaPLe's text side).

A prompt is assembled from segments -- ``[SOT] context... class name, description. [EOT]`` --
whose fixed parts are token embeddings computed once and whose context slots
are filled with learnable vectors at every step. The tower is then run from
embeddings exactly as ``encode_text`` runs it (positional embedding, the
residual blocks with the causal mask, final layer norm, the EOT token,
projection), so with the context set to the embeddings of "a photo of a" the
result equals ``encode_text("a photo of a {class}.")`` (tested).

Two things make it cheap at 1,000 classes:

* the causal mask means tokens after EOT never influence it, so every batch
  is cut to its longest prompt (about 10-20 of 77 positions) -- exact;
* sequences are encoded in chunks, each under gradient checkpointing, so the
  activations of only one chunk are alive during backward.

A third is opt-in (``compile_mode``, the learners' ``compile`` option):
the per-chunk encoder runs under ``torch.compile``. Only the chunk is
compiled, not the step, because the chunk's shapes are fixed for a whole fit
(C prompts of one layout) while the batch's are not (the short last batch,
the labelled set growing every round), and every new shape would compile
again. On the CPU a later CoOp fit on the tiny CLIP ran 0.8-1.8x as fast
as eager once compiled (noisy; 1.1-1.8x in most runs), after a one-off
compilation of about 25 s, 3-4 s once inductor's on-disk cache holds it
(``benchmarks/learner_compile.py``); the prompts learnt equal eager's to 1e-7.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POSITIONS = ("end", "middle", "front")

#: ``torch.compile`` modes the text encoder accepts; ``reduce-overhead`` also replays CUDA graphs on a GPU.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


class PromptLayoutError(ValueError):
    """A prompt does not fit the text tower, or its parts are inconsistent."""


def text_tower(model):
    """The module holding open_clip's text transformer (CLIP keeps it on the model, CustomTextCLIP in ``.text``)."""
    tower = getattr(model, "text", model)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    missing = [n for n in needed if not hasattr(tower, n)]
    if missing:
        raise PromptLayoutError(f"prompt learning needs an open_clip transformer text tower; "
                                f"{type(tower).__name__} lacks {missing} (Hugging Face text towers are not supported)")
    return tower


@dataclass
class PromptLayout:
    """Token ids of every prompt, where its context slots are, and which class it belongs to."""

    ids: np.ndarray  # (S, L) int64, padded with 0
    ctx_positions: np.ndarray  # (S, M) positions of the M context slots
    eot: np.ndarray  # (S,) position of the EOT token
    seq_class: np.ndarray  # (S,) class of each sequence (several with description ensembles)
    num_classes: int

    @property
    def n_ctx(self) -> int:
        return self.ctx_positions.shape[1]


def build_layout(tokenizer, class_names: list[str], n_ctx: int, position: str = "end",
                 descriptions: dict[str, list[str]] | None = None, context_length: int | None = None) -> PromptLayout:
    """Lay out ``[SOT] ctx name[, description]. [EOT]`` for every class (and each of its descriptions)."""
    if position not in POSITIONS:
        raise PromptLayoutError(f"class token position must be one of {POSITIONS}, got {position!r}")
    if not class_names:
        raise PromptLayoutError("no class names: the dataset card must list its classes")
    context_length = context_length or tokenizer.context_length
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    rows, positions, eots, owners = [], [], [], []
    for c, name in enumerate(class_names):
        suffixes = [name]
        if descriptions is not None:
            if not descriptions.get(name):
                raise PromptLayoutError(f"class {name!r} has no descriptions in the dataset card; name a "
                                        "description file in the card (`descriptions: PATH`, see "
                                        f"datasets/descriptions.py), add attributes.{name}.positive sentences, "
                                        "or use descriptions: none")
            suffixes = [f"{name}, {d.rstrip('.')}" for d in descriptions[name]]
        for text in suffixes:
            words, dot = tokenizer.encode(text), tokenizer.encode(".")
            if position == "end":
                parts = [("ctx", n_ctx), ("ids", words + dot)]
            elif position == "front":
                parts = [("ids", words), ("ctx", n_ctx), ("ids", dot)]
            else:
                half = n_ctx // 2
                parts = [("ctx", half), ("ids", words), ("ctx", n_ctx - half), ("ids", dot)]
            seq, slots = [sot], []
            for kind, value in parts:
                if kind == "ctx":
                    slots.extend(range(len(seq), len(seq) + value))
                    seq.extend([0] * value)  # placeholder ids; the slots are overwritten by the context
                else:
                    seq.extend(value)
            seq.append(eot)
            if len(seq) > context_length:
                room = context_length - (len(seq) - n_ctx)
                raise PromptLayoutError(
                    f"prompt for {text!r} needs {len(seq)} tokens but the text tower holds {context_length}; "
                    f"use at most {max(room, 0)} context tokens (n_ctx) or shorter class names/descriptions")
            rows.append(seq)
            positions.append(slots)
            eots.append(len(seq) - 1)
            owners.append(c)
    ids = np.zeros((len(rows), context_length), dtype=np.int64)
    for i, seq in enumerate(rows):
        ids[i, : len(seq)] = seq
    return PromptLayout(ids, np.asarray(positions, dtype=np.int64), np.asarray(eots, dtype=np.int64),
                        np.asarray(owners, dtype=np.int64), len(class_names))


class PromptedTextEncoder:
    """Runs a :class:`PromptLayout` through a frozen text tower with given context vectors.

    ``context`` may be (M, W) -- shared by all prompts (CoOp) --, (C, M, W) --
    one per class (CSC) --, or (B, M, W) with ``per_image=True`` -- CoCoOp's
    image-conditioned context, which yields (B, C, D) features.
    """

    def __init__(self, model, layout: PromptLayout, device: str, chunk: int = 256, checkpoint: bool = True,
                 compile_mode: str | None = None):
        import torch

        self.tower = text_tower(model)
        self.layout = layout
        self.device = device
        self.chunk = int(chunk)
        self.checkpoint = checkpoint
        self.causal = getattr(self.tower, "attn_mask", None) is not None and \
            getattr(self.tower, "text_pool_type", "argmax") in ("argmax", "eos")
        length = int(layout.eot.max()) + 1 if self.causal else layout.ids.shape[1]
        self.length = length
        ids = torch.as_tensor(layout.ids[:, :length], device=device)
        with torch.no_grad():
            self.base = self.tower.token_embedding(ids).float()  # (S, L, W), frozen
        self.ctx_positions = torch.as_tensor(layout.ctx_positions, device=device)
        self.eot = torch.as_tensor(layout.eot, device=device)
        self.seq_class = torch.as_tensor(layout.seq_class, device=device)
        self._encode_chunk = self._encode if compile_mode is None else compiled(self._encode, compile_mode)

    @property
    def width(self) -> int:
        return int(self.base.shape[-1])

    def word_context(self, tokenizer, words: str):
        """Token embeddings of ``words`` (CoOp's "a photo of a" initialisation), (M, W)."""
        import torch

        ids = torch.as_tensor(tokenizer.encode(words), device=self.device)
        with torch.no_grad():
            return self.tower.token_embedding(ids).float()

    def _run(self, x, eot, deep=None, ctx_positions=None):
        """The tower from token embeddings on; ``deep[i]`` replaces the context at the input of block i+1."""
        import torch

        tower = self.tower
        cast = tower.transformer.get_cast_dtype()
        length = x.shape[1]
        x = x.to(cast) + tower.positional_embedding[:length].to(cast)
        mask = tower.attn_mask[:length, :length] if getattr(tower, "attn_mask", None) is not None else None
        batch_first = getattr(tower.transformer, "batch_first", True)
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        for i, block in enumerate(tower.transformer.resblocks):
            if deep is not None and 0 < i <= len(deep) and deep[i - 1] is not None:
                x = x.clone()
                x[rows, ctx_positions] = deep[i - 1].to(x.dtype)
            x = block(x, attn_mask=mask) if batch_first else \
                block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        x = tower.ln_final(x)
        pooled = x[rows[:, 0], eot]
        proj = getattr(tower, "text_projection", None)
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def _encode(self, seqs, context, deep=None):
        """Normalised features of sequences ``seqs`` whose context slots hold ``context`` (len(seqs), M, W)."""
        import torch

        x = self.base[seqs].clone()
        pos = self.ctx_positions[seqs]
        x[torch.arange(len(seqs), device=x.device)[:, None], pos] = context.to(x.dtype)
        return self._run(x, self.eot[seqs], deep, pos)

    def _encode_chunked(self, seqs, context_of, deep=None):
        """Encode ``seqs`` in chunks (``context_of(chunk_slice)`` gives their contexts), checkpointed under grad."""
        import torch
        from torch.utils.checkpoint import checkpoint

        use_ckpt = self.checkpoint and torch.is_grad_enabled() and len(seqs) > self.chunk
        out = []
        for s in range(0, len(seqs), self.chunk):
            part = slice(s, s + self.chunk)
            if use_ckpt:
                out.append(checkpoint(self._encode_chunk, seqs[part], context_of(part), deep, use_reentrant=False))
            else:
                out.append(self._encode_chunk(seqs[part], context_of(part), deep))
        return torch.cat(out)

    def class_features(self, context, deep=None):
        """(C, D) class features from a shared (M, W) or class-specific (C, M, W) context.

        A class with several prompts (description ensembles) gets the
        re-normalised mean of their features.
        """
        import torch

        seqs = torch.arange(len(self.layout.seq_class), device=self.device)
        if context.dim() == 3:
            owner = self.seq_class
            feats = self._encode_chunked(seqs, lambda part: context[owner[part]], deep)
        else:
            feats = self._encode_chunked(seqs, lambda part: context.unsqueeze(0).expand(len(seqs[part]), -1, -1), deep)
        return self._pool_classes(feats)

    def per_image_class_features(self, context):
        """CoCoOp: (B, M, W) image-conditioned contexts -> (B, C, D) class features, B x S sequences chunked."""
        import torch

        n_seq, batch = len(self.layout.seq_class), context.shape[0]
        seqs = torch.arange(n_seq, device=self.device).repeat(batch)
        image = torch.arange(batch, device=self.device).repeat_interleave(n_seq)
        feats = self._encode_chunked(seqs, lambda part: context[image[part]])
        return torch.stack([self._pool_classes(f) for f in feats.view(batch, n_seq, -1)])

    def _pool_classes(self, seq_features):
        import torch

        if len(seq_features) == self.layout.num_classes:
            return seq_features
        sums = torch.zeros(self.layout.num_classes, seq_features.shape[1], device=seq_features.device,
                           dtype=seq_features.dtype).index_add(0, self.seq_class, seq_features)
        return torch.nn.functional.normalize(sums, dim=-1)


def compiled(fn, mode: str):
    """``torch.compile(fn, mode=mode)`` whose first failure to compile says what to change.

    Inductor needs a C++ compiler on the CPU and Triton on CUDA; without them
    the first call fails deep inside the backend, so the error names the
    option that asked for it.
    """
    import torch

    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown torch.compile mode {mode!r}; known: {list(COMPILE_MODES)}")
    target = torch.compile(fn, mode=mode)

    def run(*args, **kwargs):
        try:
            return target(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RuntimeError(f"compile: {mode!r}: torch.compile could not build the text encoder ({reason}); it "
                               "needs a C++ compiler on the CPU or Triton on CUDA -- install one or set "
                               "compile: null") from exc
    return run
