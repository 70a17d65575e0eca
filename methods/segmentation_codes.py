"""Built-in preparation: unsupervised segmentation maps of the pool and a denoising autoencoder's codes of them.

VALIANT's prompt decoder reads "a compact, 512-dimensional vector" of each
image's unsupervised segmentation map, made by "a small denoising
autoencoder". Neither the segmentation method nor the autoencoder is
specified; the readings here, each an option:

* **Segmentation**: k-means (k = 4) per image over its pixels at 16 x 16
  (area-downsampled), each pixel described by its three channel values and its
  two coordinates times ``position_weight``; centres start at the pixels of the
  (i + ½)/k quantiles of intensity (deterministic), ten Lloyd iterations.
  Segment ids are ordered by mean intensity, so maps of similar images agree.
* **Autoencoder**: one-hot maps (k x 16 x 16) -> Linear -> tanh -> 512-d code ->
  Linear -> per-pixel segment logits, trained with masking noise (a fraction of
  pixels zeroed) and cross-entropy, Adam, seeded. A linear-tanh encoder keeps
  what a trial needs to encode a *perturbed* image's map to two arrays.

The step needs pixels only -- no labels, no foundation model -- so it runs once
per dataset before the sweep and is shared by every trial.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from .options import Int, Number, PluginOptions
from .preparation import Preparation, PreparationInputs, register_preparation

SEGMENTATION_CODES = "segmentation_codes"


def segment_like(pixels, prepared: dict):
    """Segment maps made with the settings a prepared result was made with."""
    return segment(pixels, int(prepared["segments"]), int(prepared["map_size"]), float(prepared["position_weight"]))


def segment(pixels, k: int = 4, size: int = 16, position_weight: float = 0.5, iters: int = 10):
    """(n, k, size, size) one-hot segment maps of a batch of images (n, 3, H, W), by per-image k-means."""
    import torch
    import torch.nn.functional as F

    x = F.adaptive_avg_pool2d(torch.as_tensor(pixels, dtype=torch.float32), size)  # (n, 3, s, s)
    n = len(x)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    coords = torch.stack([ys, xs]).expand(n, 2, size, size) * position_weight
    feats = torch.cat([x, coords], 1).flatten(2).transpose(1, 2)  # (n, s*s, 5)
    intensity = x.mean(1).flatten(1)  # (n, s*s)
    order = intensity.argsort(1)
    picks = order[:, ((torch.arange(k) + 0.5) / k * (size * size)).long()]
    centres = torch.gather(feats, 1, picks[..., None].expand(-1, -1, feats.shape[-1]))
    for _ in range(iters):
        assign = torch.cdist(feats, centres).argmin(-1)  # (n, s*s)
        onehot = F.one_hot(assign, k).float()  # (n, s*s, k)
        counts = onehot.sum(1)[..., None]
        centres = torch.where(counts > 0, onehot.transpose(1, 2) @ feats / counts.clamp(min=1), centres)
    assign = torch.cdist(feats, centres).argmin(-1)
    rank = centres[..., :3].mean(-1).argsort(1).argsort(1)  # segment id -> its intensity rank
    canonical = torch.gather(rank, 1, assign)
    return F.one_hot(canonical, k).float().transpose(1, 2).reshape(n, k, size, size)


def encode_maps(maps, weight, bias):
    """Codes (n, 512) of one-hot maps through the autoencoder's encoder (its two arrays)."""
    import torch

    flat = torch.as_tensor(maps, dtype=torch.float32).flatten(1)
    return torch.tanh(flat @ torch.as_tensor(weight).T + torch.as_tensor(bias))


def train_autoencoder(maps, code_dim: int, epochs: int, noise: float, lr: float, generator):
    """A denoising autoencoder on one-hot maps (n, k, s, s); returns (encoder weight, encoder bias, final loss)."""
    import torch
    import torch.nn.functional as F

    maps = torch.as_tensor(maps, dtype=torch.float32)
    n, k = maps.shape[:2]
    width = maps[0].numel()
    enc, dec = torch.nn.Linear(width, code_dim), torch.nn.Linear(code_dim, width)
    with torch.no_grad():
        for layer in (enc, dec):
            bound = 1 / np.sqrt(layer.in_features)
            layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
            layer.bias.zero_()
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=lr)
    target = maps.argmax(1)  # (n, s, s)
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        for rows in torch.randperm(n, generator=generator).split(256):
            keep = (torch.rand(len(rows), 1, *maps.shape[2:], generator=generator) >= noise).float()
            logits = dec(torch.tanh(enc((maps[rows] * keep).flatten(1)))).view(len(rows), k, *maps.shape[2:])
            loss = F.cross_entropy(logits, target[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return enc.weight.detach().numpy(), enc.bias.detach().numpy(), float(loss.detach())


@register_preparation(SEGMENTATION_CODES)
class SegmentationCodes(Preparation):
    """Outputs ``codes`` (N, code_dim) for the pool, the encoder's ``weight`` / ``bias``, the final ``loss``, and
    the segmentation settings (``segments``, ``map_size``, ``position_weight``) a trial re-segments perturbed
    images with."""

    version = 1

    class Options(PluginOptions):
        segments: Int = Field(4, ge=2, description="k of the per-image k-means")
        map_size: Int = Field(16, ge=4, description="side of the segment map")
        position_weight: Number = Field(0.5, ge=0, description="weight of pixel coordinates in the k-means")
        code_dim: Int = Field(512, ge=1, description="autoencoder code width (VALIANT: 512)")
        epochs: Int = Field(20, ge=1)
        noise: Number = Field(0.2, ge=0, lt=1, description="fraction of map pixels zeroed (denoising)")
        lr: Number = Field(1e-3, gt=0)
        batch: Int = Field(256, ge=1, description="images segmented at a time")

    def run(self, inputs: PreparationInputs, rng: np.random.Generator) -> dict[str, np.ndarray]:
        import torch

        if inputs.images is None:
            raise ValueError(f"{SEGMENTATION_CODES} segments the pool's pixels; the sweep gave no images for "
                             f"{inputs.dataset}")
        n = inputs.images.size("pool")
        if n == 0:
            raise ValueError(f"{SEGMENTATION_CODES}: the pool of {inputs.dataset} is empty")
        maps = torch.cat([self.maps(inputs.images.pixels("pool", np.arange(s, min(n, s + self.batch))))
                          for s in range(0, n, self.batch)])
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        weight, bias, loss = train_autoencoder(maps, self.code_dim, self.epochs, float(self.noise), float(self.lr),
                                               generator)
        codes = encode_maps(maps, weight, bias).numpy().astype(np.float32)
        return {"codes": codes, "weight": weight, "bias": bias, "loss": np.float32(loss),
                "segments": np.int64(self.segments), "map_size": np.int64(self.map_size),
                "position_weight": np.float32(self.position_weight)}

    def maps(self, pixels):
        return segment(pixels, self.segments, self.map_size, float(self.position_weight))
