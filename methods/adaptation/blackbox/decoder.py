"""VALIANT's Visual Prompt Decoder (VIPD): image feature ⊕ segmentation code -> MLP -> upsampling -> a prompt P.

The paper gives the inputs (a frozen encoder's image feature concatenated
with the 512-d code of the image's unsupervised segmentation map), an MLP and
a prompt "with the *same* shape as X"; the upsampling path follows BlackVIP's
coordinator, the nearest published design: a small seed map (7 x 7 at 224 px)
grown by stride-2 transposed convolutions to the input size. Here the seed side
is the input size over 2^n with n the number of doublings that brings it
nearest 7 (224 -> 7, 5 blocks; the tiny CLIP's 32 -> 8, 2 blocks). The prompt is
bounded, P = ε·tanh(·), because SPSA steps in every direction at once and an
unbounded decoder output can swamp the image. Seeded initialisation, so a
trial's decoder is a function of its seed.
"""

from __future__ import annotations

import math

import numpy as np


def upsampling_plan(image_size: int) -> tuple[int, int]:
    """(seed side, number of doublings) for a square input of ``image_size`` pixels."""
    if image_size < 4:
        raise ValueError(f"the prompt decoder needs inputs of at least 4 px, got {image_size}")
    blocks = max(1, round(math.log2(image_size / 7)))
    return math.ceil(image_size / 2 ** blocks), blocks


def build_decoder(in_dim: int, image_size: int, hidden: int = 16, channels: int = 8, epsilon: float = 1.0):
    """The VIPD as a torch module: ``decoder(features, codes) -> (n, 3, image_size, image_size)``."""
    import torch
    import torch.nn.functional as F

    seed, blocks = upsampling_plan(image_size)

    class PromptDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.GELU(),
                                           torch.nn.Linear(hidden, channels * seed * seed))
            widths = [max(3, channels // 2 ** i) for i in range(blocks)] + [3]
            self.up = torch.nn.ModuleList(torch.nn.ConvTranspose2d(a, b, 4, stride=2, padding=1)
                                          for a, b in zip(widths[:-1], widths[1:]))
            self.widths = widths

        def forward(self, features, codes):
            x = self.mlp(torch.cat([features, codes], 1)).view(len(features), channels, seed, seed)
            for i, layer in enumerate(self.up):
                x = layer(x)
                if i < len(self.up) - 1:
                    x = F.gelu(x)
            if x.shape[-1] != image_size:
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
            return epsilon * torch.tanh(x)

    return PromptDecoder()


def seeded_init(module, generator) -> None:
    """Uniform(±1/√fan_in) for every weight, zero biases, from ``generator`` (torch's own init is unseeded)."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                fan_in = p.shape[1] * int(np.prod(p.shape[2:])) if p.dim() > 2 else p.shape[1]
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) / math.sqrt(fan_in))
            else:
                p.zero_()
