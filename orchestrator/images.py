"""Pixels on demand for the learners that adapt the image path.

Everything else in a trial works on cached features; visual prompt learners
(VPT, MaPLe) must push pixels through the encoder again, and pay for it
knowingly. :class:`DatasetImages` is what they get: a small picklable
description of the trial's pool and test split (dataset, splits, source
options, the cache's row -> source-index map, the encoder, the user card
files the dataset may come from) that opens the
sources and builds the encoder's transform lazily in whichever Ray worker
uses it. Rows are cache rows, so images the embedder skipped as corrupt
stay skipped here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from methods.base import ImageAccess


@dataclass
class DatasetImages(ImageAccess):
    dataset: str
    splits: dict[str, str]  # "pool"/"test" -> the card's split name
    source_indices: dict[str, np.ndarray]  # "pool"/"test" -> source index of each cache row
    encoder: str = "tiny-clip"
    source_options: dict = field(default_factory=dict)
    card_files: tuple[str, ...] = ()  # absolute paths of user card files the dataset may come from
    _opened: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_opened"] = {}  # sources and transforms are rebuilt in the receiving process
        return state

    def size(self, split: str) -> int:
        return len(self._indices(split))

    def _indices(self, split: str) -> np.ndarray:
        if split not in self.source_indices:
            raise KeyError(f"unknown split {split!r}; known: {sorted(self.source_indices)}")
        return self.source_indices[split]

    def _source_and_transform(self, split: str):
        if split not in self._opened:
            from datasets.registry import load_card_files, open_split

            from methods.core.encoders import parse_encoder
            from .pixels import PixelTransform

            load_card_files(self.card_files)  # a Ray worker starts with only the built-in cards registered
            source = open_split(self.dataset, self.splits[split], **self.source_options)
            self._opened[split] = (source, PixelTransform.of(parse_encoder(self.encoder)))
        return self._opened[split]

    def pixels(self, split: str, rows: np.ndarray):
        import torch

        source, pixels_of = self._source_and_transform(split)
        indices = self._indices(split)[np.asarray(rows, dtype=np.int64)]
        if hasattr(source, "render"):
            return torch.from_numpy(pixels_of.uint8_batch(source.render(indices)))
        return torch.from_numpy(np.stack([pixels_of.image(source.load(int(i))) for i in indices]))
