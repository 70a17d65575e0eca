"""Where a visual-reprogramming perturbation acts on the image, in pixel space or on the normalised input.

Three layouts, each a learnable (3, S, S) tensor delta at the encoder's input
size S, with the published sizes given at 224 px and scaled to S:

* ``pad`` (VP, Bahng et al. 2022): x~ = x + delta * M, M a border 30 px wide,
  on the *normalised* input (VP adds its prompt after normalisation).
* ``resize_pad`` (AR; AttrVR's and BioMedVR's default): the image resized to
  192 px and centred on the S x S canvas, the frame around it learned as
  sigmoid(delta) in [0, 1] pixel space (eq. 3: x~ = x * M + delta * (1 - M)),
  then normalised for the encoder.
* ``full`` (BioMedVR eq. 8 read literally): x~ = x + delta over the whole
  normalised image.

All start at delta = 0. Pixel-space layouts must undo the encoder's
normalisation, so an encoder whose preprocessing has no ``Normalize`` step is
refused.
"""

from __future__ import annotations

from dataclasses import dataclass

FRAMES = ("pad", "resize_pad", "full")
REFERENCE_SIZE = 224
VP_PAD_AT_224 = 30
AR_INNER_AT_224 = 192


class ReprogrammingError(ValueError):
    """A reprogramming layout that cannot work with this encoder or these sizes; says what to change."""


def normalisation(encoder) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the encoder's preprocessing normalises with, to move between pixels and its input."""
    from torchvision.transforms import Normalize

    steps = getattr(encoder.preprocess, "transforms", [encoder.preprocess])
    found = [t for t in steps if isinstance(t, Normalize)]
    if not found:
        raise ReprogrammingError(
            f"visual reprogramming edits pixels, but the preprocessing of encoder {encoder.spec.model!r} has no "
            f"Normalize step to invert ({encoder.preprocess!r}); use an encoder with a standard CLIP transform, "
            "or frame: pad / full, which act on the normalised input")
    return tuple(map(float, found[-1].mean)), tuple(map(float, found[-1].std))


@dataclass(frozen=True)
class Frame:
    """One layout at one input size; ``border`` is the frame's width in pixels (0 for ``full``)."""

    kind: str
    size: int
    border: int
    inner: int

    @classmethod
    def build(cls, kind: str, size: int, border_at_224: int | None = None, inner_at_224: int | None = None
              ) -> "Frame":
        if kind not in FRAMES:
            raise ReprogrammingError(f"unknown frame {kind!r}; known: {list(FRAMES)}")
        scale = size / REFERENCE_SIZE
        if kind == "pad":
            border = max(1, round((border_at_224 or VP_PAD_AT_224) * scale))
            inner = size - 2 * border
        elif kind == "resize_pad":
            inner = max(1, round((inner_at_224 or AR_INNER_AT_224) * scale))
            border = (size - inner) // 2
        else:
            border, inner = 0, size
        if kind != "full" and 2 * border >= size:
            raise ReprogrammingError(
                f"a {kind} frame {border} px wide on each side covers the whole {size} px input (it must be "
                f"narrower than half the input); at 224 px give a border under 112 px / an inner size above 0")
        return cls(kind, size, border, inner)

    def mask(self, device=None):
        """(1, 1, S, S) float: 1 where the perturbation acts."""
        import torch

        m = torch.ones((1, 1, self.size, self.size), device=device)
        if self.kind != "full":  # both framed layouts leave the inner square alone
            m[..., self.border: self.border + self.inner, self.border: self.border + self.inner] = 0
        return m

    def apply(self, x, delta, mean, std):
        """Reprogram a normalised batch ``x`` (B, 3, S, S) with ``delta`` (3, S, S); returns the encoder's input."""
        import torch
        import torch.nn.functional as F

        if self.kind == "full":
            return x + delta
        mask = self.mask(x.device)
        if self.kind == "pad":
            return x + delta * mask
        pixels = x * std + mean
        inner = F.interpolate(pixels, size=(self.inner, self.inner), mode="bilinear", align_corners=False)
        after = self.size - self.inner - self.border
        canvas = F.pad(inner, (self.border, after, self.border, after))
        framed = canvas * (1 - mask) + torch.sigmoid(delta) * mask
        return (framed - mean) / std
