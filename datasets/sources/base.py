"""The one interface every image source implements.

A source is one split of one dataset. Its labels are known up front (the
round loop and the oracle need them without touching pixels) and its images
are loaded by index, so Ray Data can shard any source by index ranges. A
source must be cheap to pickle: it holds paths and metadata, never decoded
images, because it travels to every Ray worker.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image

#: Where datasets live unless a card option or ``--data-root`` says otherwise.
DATA_ROOT_ENV = "ALVLM_DATA_ROOT"


def default_data_root() -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV, "~/data")).expanduser()


class DatasetNotFoundError(FileNotFoundError):
    """The data is not on disk; the message names the path looked at and how to obtain it."""


class CorruptImageError(ValueError):
    """An image could not be decoded; carries the offending path."""

    def __init__(self, location: str, reason: str):
        super().__init__(f"cannot decode image {location}: {reason}")
        self.location = location


class LabelMismatchError(ValueError):
    """Label ids or class folders that do not match the card's class list."""


class EmptySplitError(ValueError):
    """A split with no images."""


class ImageSource(ABC):
    """One split of one dataset: labels up front, pixels on demand."""

    def __init__(self, classes: list[str], split: str):
        self.classes = list(classes)
        self.split = split

    @property
    @abstractmethod
    def labels(self) -> np.ndarray:
        """``int64`` of shape ``(N,)`` (multi-class, binary) or ``(N, C)`` 0/1 (multi-label)."""

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """The RGB image at ``index``; raises :class:`CorruptImageError` if it cannot be decoded."""

    def locate(self, index: int) -> str:
        """Human-readable location of an item (a path), used in error reports."""
        return f"{type(self).__name__}[{self.split}][{index}]"

    def load_many(self, indices) -> list[Image.Image]:
        return [self.load(int(i)) for i in indices]

    def __len__(self) -> int:
        return int(len(self.labels))

    def identity(self) -> dict:
        """What makes this split's pixels what they are; part of the feature-cache key."""
        return {"kind": type(self).__name__, "split": self.split, "n": len(self)}

    def check_labels(self) -> None:
        """Fail on empty splits and label ids outside the class list."""
        labels = self.labels
        if len(labels) == 0:
            raise EmptySplitError(f"split {self.split!r} has no images ({self.identity()})")
        if labels.ndim == 1:
            bad = labels[(labels < 0) | (labels >= len(self.classes))]
            if bad.size:
                raise LabelMismatchError(
                    f"split {self.split!r}: label ids {sorted(set(bad.tolist()))[:10]} do not index the "
                    f"{len(self.classes)} classes of the card; fix the labels or the card's class list"
                )
        elif labels.shape[1] != len(self.classes):
            raise LabelMismatchError(
                f"split {self.split!r}: multi-label matrix has {labels.shape[1]} columns but the card lists "
                f"{len(self.classes)} classes"
            )


class FileListSource(ImageSource):
    """A source whose items are image files: subclasses fill ``self.files`` and ``self._labels``."""

    files: list[str]
    _labels: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def locate(self, index: int) -> str:
        return self.files[index]

    def load(self, index: int) -> Image.Image:
        return open_rgb(self.files[index])


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to RGB, turning every decoder failure into :class:`CorruptImageError`."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise CorruptImageError(str(path), f"{type(exc).__name__}: {exc}") from exc
