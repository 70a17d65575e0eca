"""Learnable visual prompts inside a frozen open_clip ViT (VPT, and MaPLe's image side).

:class:`PromptedVisionTower` re-runs an open_clip ``VisionTransformer``'s
forward pass step by step so that extra tokens can be spliced into the
sequence; the tower's own weights are only read, never changed.

Placement (VPT, Jia et al. 2022, Sec. 3.2): prompt tokens go *after* the
positional embeddings, so no positional embedding is added to them. Here
they are inserted after ``visual._embeds`` -- i.e. after the patch embedding,
CLS token, positional embedding, patch dropout *and* ``ln_pre`` -- right
behind the CLS token::

    [CLS, P_1 .. P_n, patch_1 .. patch_N]

Inserting after ``ln_pre`` (rather than before it, as MaPLe's CLIP fork does)
keeps ``_embeds`` untouched for every open_clip ViT and puts layer-0 prompts
in the same space as the deep prompts, which also enter the residual stream
directly at the input of their block.

* ``shallow``: an ``(n, width)`` tensor inserted once, before block 0; it then
  travels through all blocks like any other token (VPT-shallow).
* ``deep``: a list with one entry per block (shorter lists are padded with
  None); entry ``i`` is an ``(n, width)`` tensor that *replaces* the prompt
  tokens at the input of block ``i`` (VPT-deep; MaPLe does the same for blocks
  ``< J``). A None entry lets the previous block's prompt outputs pass on.
  ``deep[0]`` is accepted as a synonym for ``shallow`` (not both). If no
  prompt is present yet when ``deep[i]`` arrives, the tokens are inserted
  there.

Before pooling the prompt tokens are stripped again, so ``tok`` pooling reads
the CLS token, ``avg`` pooling averages the patch tokens only and attentional
pooling sees the original sequence layout. The result is the projected pooled
feature, exactly what ``visual(pixels)`` returns (it equals it bit for bit
when no prompts are given).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _vision_transformer_class():
    from open_clip.transformer import VisionTransformer

    return VisionTransformer


class PromptedVisionTower(nn.Module):
    """A frozen open_clip ``VisionTransformer`` that accepts shallow and deep prompt tokens.

    The wrapped tower is held by reference and *not* registered as a
    submodule: this module owns no parameters (``parameters()`` and
    ``state_dict()`` are empty), so an optimiser built from it can never touch
    the encoder, and ``.train()`` on it leaves the frozen tower in eval mode.
    The prompts are passed to :meth:`forward` by the learner that owns them.
    """

    def __init__(self, visual: nn.Module, grad_checkpointing: bool = False):
        super().__init__()
        vit = _vision_transformer_class()
        if not isinstance(visual, vit):
            kind = f"{type(visual).__module__}.{type(visual).__qualname__}"
            raise ValueError(
                f"visual prompts (VPT, MaPLe) need an open_clip ViT image tower (open_clip.transformer."
                f"VisionTransformer); this encoder's image tower is {kind}. Use a ViT encoder "
                "(e.g. ViT-B-16:openai) or a feature-path / text-prompt learner instead."
            )
        if not hasattr(visual.transformer, "resblocks"):
            raise ValueError(f"visual prompts need a transformer with .resblocks; "
                             f"{type(visual.transformer).__qualname__} has none")
        self.__dict__["visual"] = visual  # deliberately not a registered submodule (see class docstring)
        self.grad_checkpointing = bool(grad_checkpointing)

    # ------------------------------------------------------------ shape

    @property
    def width(self) -> int:
        """Token width of the tower (768 for ViT-B/16, 128 for tiny-clip)."""
        return int(self.visual.class_embedding.shape[-1])

    @property
    def num_layers(self) -> int:
        """Number of residual blocks (12 for ViT-B/16, 4 for tiny-clip)."""
        return len(self.visual.transformer.resblocks)

    @property
    def output_dim(self) -> int:
        return int(self.visual.output_dim)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.visual.patch_size)

    @property
    def device(self) -> torch.device:
        return self.visual.class_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (memory for time; used only while grad is enabled)."""
        self.grad_checkpointing = bool(enable)

    # ------------------------------------------------------------ forward

    @torch.no_grad()
    def block_inputs(self, pixels: torch.Tensor):
        """Yield ``(i, tokens)`` for every block: the prompt-free ``(B, 1 + N, W)`` sequence entering block ``i``.

        For data-driven prompt initialisation (token prototypes); batch the
        pixels yourself, a ViT-B/16 sequence is 197 x 768 floats per image.
        """
        v = self.visual
        x = v._embeds(pixels.to(device=self.device, dtype=self.dtype))
        batch_first = getattr(v.transformer, "batch_first", True)
        for i, block in enumerate(v.transformer.resblocks):
            yield i, x
            x = block(x if batch_first else x.transpose(0, 1))
            x = x if batch_first else x.transpose(0, 1)

    def _check_prompt(self, p: torch.Tensor, what: str) -> torch.Tensor:
        if p.ndim != 2 or p.shape[1] != self.width or p.shape[0] < 1:
            raise ValueError(f"{what} must be an (n_tokens >= 1, width={self.width}) tensor, got {tuple(p.shape)}")
        return p

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward(self, pixels: torch.Tensor, shallow: torch.Tensor | None = None,
                deep: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Projected pooled image features, shape ``(B, output_dim)``, as ``visual(pixels)`` returns."""
        v = self.visual
        blocks = v.transformer.resblocks
        deep = list(deep) if deep is not None else []
        if len(deep) > len(blocks):
            raise ValueError(f"deep prompts: got {len(deep)} entries for a tower of {len(blocks)} blocks")
        if deep and deep[0] is not None:
            if shallow is not None:
                raise ValueError("give the block-0 prompts either as shallow or as deep[0], not both")
            shallow, deep[0] = deep[0], None

        x = v._embeds(pixels.to(device=self.device, dtype=self.dtype))  # (B, 1 + N, W), after ln_pre
        batch = x.shape[0]
        n = 0
        if shallow is not None:
            p = self._check_prompt(shallow, "shallow prompts").to(x.dtype)
            n = p.shape[0]
            x = torch.cat([x[:, :1], p.unsqueeze(0).expand(batch, -1, -1), x[:, 1:]], dim=1)

        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)  # older open_clip: blocks take (L, B, W)
        for i, block in enumerate(blocks):
            p = deep[i] if i < len(deep) else None
            if p is not None:
                p = self._check_prompt(p, f"deep prompts of block {i}").to(x.dtype)
                if n and p.shape[0] != n:
                    raise ValueError(f"deep prompts of block {i} have {p.shape[0]} tokens; "
                                     f"the sequence carries {n}")
                if batch_first:
                    x = torch.cat([x[:, :1], p.unsqueeze(0).expand(batch, -1, -1), x[:, 1 + n:]], dim=1)
                else:
                    x = torch.cat([x[:1], p.unsqueeze(1).expand(-1, batch, -1), x[1 + n:]], dim=0)
                n = p.shape[0]
            x = self._run_block(block, x)
        if not batch_first:
            x = x.transpose(0, 1)

        if n:
            x = torch.cat([x[:, :1], x[:, 1 + n:]], dim=1)  # pooling never sees the prompts
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled
