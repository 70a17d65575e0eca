"""The synthetic family as an image source (rendered on demand, never stored)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..synthetic.family import FAMILY
from .base import ImageSource
from .registry import register_source


@register_source("synthetic")
class SyntheticSource(ImageSource):
    def __init__(self, classes: list[str], split: str, member: str, seed: int = 0,
                 sizes: dict[str, int] | None = None, image_size: int = 32, root=None):
        super().__init__(classes, split)
        if member not in FAMILY:
            raise KeyError(f"unknown synthetic member {member!r}; known: {sorted(FAMILY)}")
        self.spec = FAMILY[member]
        sizes = {**self.spec.default_sizes, **(sizes or {})}
        if split not in sizes:
            raise KeyError(f"{member}: unknown split {split!r}; known: {sorted(sizes)}")
        self.n = int(sizes[split])
        self.seed = int(seed)
        self.image_size = int(image_size)
        self._labels = self.spec.labels(split, np.arange(self.n), self.seed)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def render(self, indices) -> np.ndarray:
        """Pixels as a uint8 ``(n, H, W, 3)`` array: the fast path the embedder uses."""
        return self.spec.render(self.split, np.asarray(indices), self.seed, self.image_size)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.render([index])[0])

    def load_many(self, indices) -> list[Image.Image]:
        return [Image.fromarray(a) for a in self.render(indices)]

    def identity(self) -> dict:
        return {"kind": "synthetic", "member": self.spec.name, "split": self.split, "n": self.n,
                "seed": self.seed, "image_size": self.image_size}
