"""The synthetic family as an image source (rendered on demand, never stored)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..synthetic.family import FAMILY, stream_id
from ..synthetic.pathologies import Pathologies, look_alike_classes, plan_pool, render_rows
from .base import ImageSource
from .registry import register_source


@register_source("synthetic")
class SyntheticSource(ImageSource):
    def __init__(self, classes: list[str], split: str, member: str, seed: int = 0,
                 sizes: dict[str, int] | None = None, image_size: int = 32, root=None,
                 pathologies: dict | None = None):
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
        self.pathologies = Pathologies(**(pathologies or {}))
        self.plan = None
        if self.spec.multilabel and self.pathologies != Pathologies():
            raise ValueError(f"{member}: pathologies (long tail, duplicates, outliers, label noise) are defined for "
                             "single-label members; a multi-label pool has no class to skew or mislabel")
        if self.pathologies.applies_to(split):  # see datasets/synthetic/pathologies.py
            rng = np.random.default_rng([self.seed, stream_id(member, split, "pathologies")])
            self.plan = plan_pool(self._labels, len(self.spec.classes), self.pathologies, rng,
                                  look_alike_classes(member))
            self._labels = self.plan.labels

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def oracle_labels(self) -> np.ndarray:
        """What an annotator answers for each row: the true labels, unless the pool has label noise."""
        return self._labels if self.plan is None else self.plan.oracle

    def render(self, indices) -> np.ndarray:
        """Pixels as a uint8 ``(n, H, W, 3)`` array: the fast path the embedder uses."""
        if self.plan is not None:
            return render_rows(self.spec, self.split, np.asarray(indices), self.seed, self.image_size, self.plan)
        return self.spec.render(self.split, np.asarray(indices), self.seed, self.image_size)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.render([index])[0])

    def load_many(self, indices) -> list[Image.Image]:
        return [Image.fromarray(a) for a in self.render(indices)]

    def identity(self) -> dict:
        identity = {"kind": "synthetic", "member": self.spec.name, "split": self.split, "n": self.n,
                    "seed": self.seed, "image_size": self.image_size}
        if self.plan is not None:  # keys added later enter only when used, so clean caches keep their keys
            identity["pathologies"] = self.pathologies.model_dump(mode="json")
        return identity
