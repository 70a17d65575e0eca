"""The contracts between the round loop and the plug-ins.

Strategies and learners *declare* the inputs they need (``requires``); the
loop computes only those, so a random baseline never pays for pool-wide
probabilities and no strategy ever re-encodes the pool.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

#: Inputs a plug-in can ask the loop for.
POOL_FEATURES = "pool_features"  # cached image embeddings of the whole pool, (N, D)
PROBS = "probs"  # current predictor's class probabilities over the pool, (N, C)
TEXT_FEATURES = "text_features"  # class text embeddings (template ensemble), (C, D)
EMBEDDINGS = "embeddings"  # the current predictor's penultimate embedding of the pool, (N, E)
IMAGES = "images"  # an image source to re-read pixels (visual prompt methods only)
BLACKBOX = "blackbox"  # a handle that answers output distributions only (VALIANT)
PREDICTOR = "predictor"  # the current Predictor itself, for strategies that perturb its inputs (BALD, ALFA-Mix, DropQuery)
KNOWN_INPUTS = frozenset({POOL_FEATURES, PROBS, TEXT_FEATURES, EMBEDDINGS, IMAGES, BLACKBOX, PREDICTOR})


@dataclass
class SelectionContext:
    """What a strategy may look at in one round. Fields not declared in ``requires`` are None."""

    round: int
    num_classes: int
    unlabelled: np.ndarray  # pool row ids still unlabelled
    labelled: np.ndarray  # pool row ids labelled so far (queried or pseudo)
    labelled_targets: np.ndarray  # their labels (true or pseudo)
    pool_features: np.ndarray | None = None
    probs: np.ndarray | None = None
    text_features: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    predictor: Predictor | None = None
    extras: dict = field(default_factory=dict)


@dataclass
class Selection:
    """Rows to send to the oracle, plus rows the strategy labels itself for free."""

    indices: np.ndarray
    pseudo_labels: dict[int, int] = field(default_factory=dict)


class AcquisitionStrategy(ABC):
    """Who to label next."""

    name: str = "?"
    requires: frozenset[str] = frozenset()

    @abstractmethod
    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        ...

    def cold_start(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        """Round 1 under ``cold_start: method``; strategies with a dedicated start (TypiClust,
        DropQuery's centroids) override this, the rest select as usual."""
        return self.select(ctx, budget, rng)


@dataclass
class TrainSet:
    features: np.ndarray  # (n, D) cached image features of the labelled rows
    labels: np.ndarray  # (n,) class ids (true for queried rows, assigned for pseudo rows)
    is_pseudo: np.ndarray  # (n,) bool
    rows: np.ndarray | None = None  # (n,) their pool row ids, for learners that re-read pixels


class ImageAccess(ABC):
    """Pixels of a trial's pool and test split, preprocessed for the trial's encoder, read on demand.

    Only learners that adapt the image path (visual prompts, reprogramming)
    use it; everything else works on cached features. ``split`` is ``"pool"``
    or ``"test"``; rows are that split's row ids.
    """

    @abstractmethod
    def pixels(self, split: str, rows: np.ndarray):
        """A float tensor (len(rows), 3, H, W) ready for the encoder."""

    @abstractmethod
    def size(self, split: str) -> int:
        ...


@dataclass
class AdaptContext:
    """What a learner may use besides its training set.

    Feature-path learners need only ``text_features``; prompt learners drive
    the encoder's towers themselves and need the encoder name, the class names
    and templates (and the card's per-class descriptions); image-path learners
    also get ``images``. ``previous`` is the last round's predictor, for
    learners that continue training instead of re-initialising.
    """

    num_classes: int
    round: int
    text_features: np.ndarray | None  # (C, D) class text embeddings
    device: str | None = None  # None: CUDA when the task has a GPU, else CPU
    encoder: str = "tiny-clip"
    precision: str = "fp32"
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    descriptions: dict[str, list[str]] = field(default_factory=dict)  # class name -> sentences
    images: ImageAccess | None = None
    previous: Predictor | None = None


class Predictor(ABC):
    """A fitted model over cached features. Its state is plain arrays, so a round checkpoint can hold it."""

    @abstractmethod
    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        ...

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Penultimate embedding; for a head on frozen features that is the features themselves."""
        return np.asarray(features, dtype=np.float32)

    @abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        ...

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "Predictor":
        ...


class ImagePredictor(Predictor):
    """A predictor that adapted the image path, so it must see pixels, not cached features.

    The loop evaluates and selects with ``predict_proba_images`` (inside a task
    that holds the trial's GPU); ``rows=None`` means the whole split.
    """

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} adapts the image path and cannot score cached features; "
                        "use predict_proba_images (strategies needing the predictor on features do not apply)")

    @abstractmethod
    def predict_proba_images(self, images: ImageAccess, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        ...

    def embed_images(self, images: ImageAccess, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Penultimate embedding through the adapted image path."""
        raise NotImplementedError(f"{type(self).__name__} has no penultimate embedding")


class Learner(ABC):
    """How the frozen model is adapted after each round."""

    name: str = "?"
    requires: frozenset[str] = frozenset()
    num_gpus: float = 0.0  # a learner that trains inside the image path asks for a GPU

    @abstractmethod
    def fit(self, train: TrainSet, ctx: AdaptContext, rng: np.random.Generator) -> Predictor:
        ...
