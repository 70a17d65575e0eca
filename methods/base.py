"""The contracts between the round loop and the plug-ins.

Strategies and learners *declare* the inputs they need (``requires``); the
loop computes only those, so a random baseline never pays for pool-wide
probabilities and no strategy ever re-encodes the pool. What a strategy may
ask of the model is what the paired learner's predictors *provide*
(``Learner.provides``); the sweep checks the pair before Ray starts.

Predictors offer capabilities (class embeddings, named outputs, a linear
head, pixels or features) instead of concrete types, so a strategy never
``isinstance``-checks a learner's class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .options import Configurable

# ------------------------------------------------------------- inputs a plug-in can declare

POOL_FEATURES = "pool_features"  # cached image embeddings of the whole pool, (N, D)
PROBS = "probs"  # current predictor's class probabilities over the pool, (N, C)
TEXT_FEATURES = "text_features"  # fixed class text embeddings (template ensemble), (C, D)
CLASS_EMBEDDINGS = "class_embeddings"  # the current predictor's class embeddings (learned prompts), (C, D)
EMBEDDINGS = "embeddings"  # the current predictor's penultimate embedding of the pool, (N, E)
IMAGES = "images"  # an image source to re-read pixels of the pool and the test split
BLACKBOX = "blackbox"  # a handle that answers output distributions only, and counts every image asked about
PREDICTOR = "predictor"  # the current predictor on cached features, for strategies that perturb its inputs
PROVENANCE = "provenance"  # who gave each labelled row's label (oracle, selective, bootstrap, ...), transient rows
#: The pool's true labels. Only a few-shot protocol's sampler (k labelled images per class, drawn at random)
#: may declare it; an active-learning strategy that read it would be choosing with the answers.
POOL_LABELS = "pool_labels"
# learners only
UNLABELLED = "unlabelled"  # the unlabelled pool's row ids (with POOL_FEATURES: their features; IMAGES: pixels)
DESCRIPTIONS = "descriptions"  # the card's positive attribute sentences per class
ATTRIBUTES = "attributes"  # the card's descriptive, discriminative and confusion-aware sentences per class

STRATEGY_INPUTS = frozenset({POOL_FEATURES, PROBS, TEXT_FEATURES, CLASS_EMBEDDINGS, EMBEDDINGS, IMAGES, BLACKBOX,
                             PREDICTOR, PROVENANCE, POOL_LABELS})
LEARNER_INPUTS = frozenset({POOL_FEATURES, TEXT_FEATURES, IMAGES, BLACKBOX, UNLABELLED, DESCRIPTIONS, ATTRIBUTES,
                            PROVENANCE})
#: What the loop and the data provide whatever the learner; the rest comes from the learner's predictors.
DATA_INPUTS = frozenset({POOL_FEATURES, TEXT_FEATURES, IMAGES, PROVENANCE, POOL_LABELS, BLACKBOX, UNLABELLED,
                         DESCRIPTIONS, ATTRIBUTES})
#: Model inputs a feature-path predictor (zero-shot, probes, the CoOp family) provides.
FEATURE_PREDICTOR_PROVIDES = frozenset({PROBS, CLASS_EMBEDDINGS, EMBEDDINGS, PREDICTOR})
#: An image-path predictor (VPT, MaPLe) scores pixels, so strategies cannot perturb cached features through it.
IMAGE_PREDICTOR_PROVIDES = frozenset({PROBS, CLASS_EMBEDDINGS, EMBEDDINGS})

_OUTPUT, _PREPARED = "output:", "prepared:"


#: The named output of predictors that score how clean each class label is (dual prompts, eq. 3), (N, C).
CLEAN_PROB = "clean_prob"
#: VALIANT's prompt instability of every pool row (the ``vipd`` selector's output), (N,).
INSTABILITY = "instability"
#: The BAPS-prompted black box's answers on the unlabelled pool (the ``baps`` selector's output), (N, C).
PROMPTED_PROBS = "prompted_probs"


def predictor_output(name: str) -> str:
    """The input token for a predictor's named extra output, e.g. ``predictor_output("clean_prob")``."""
    return f"{_OUTPUT}{name}"


def output_name(token: str) -> str | None:
    return token[len(_OUTPUT):] if token.startswith(_OUTPUT) else None


def prepared(name: str) -> str:
    """The input token for a per-dataset preparation step's arrays (see :mod:`methods.preparation`)."""
    return f"{_PREPARED}{name}"


def prepared_name(token: str) -> str | None:
    """The preparation step a ``prepared:NAME`` token asks for, or None for an ordinary input."""
    if isinstance(token, str) and token.startswith(_PREPARED) and len(token) > len(_PREPARED):
        return token[len(_PREPARED):]
    return None


def check_declared(owner: str, requires, known: frozenset[str]) -> frozenset[str]:
    """``requires`` as a frozenset, refusing tokens the loop cannot provide (a typo fails at construction)."""
    requires = frozenset(requires)
    unknown = sorted(t for t in requires if t not in known and output_name(t) is None and prepared_name(t) is None)
    if unknown:
        raise ValueError(f"{owner} declares unknown input(s) {unknown}; known: {sorted(known)}, "
                         f"'{_OUTPUT}NAME' (a predictor's named output) and '{_PREPARED}NAME' (a preparation step)")
    return requires


# ------------------------------------------------------------- label provenance

ORACLE = "oracle"  # queried, costs budget
SELECTIVE = "selective"  # pseudo-labelled instead of queried (CB+SQ's selective querying): permanent, free
MINED = "mined"  # confident pseudo labels replaced every round (dual prompt): transient, free, still queryable
BOOTSTRAP = "bootstrap"  # free labels a strategy contributes before the round-0 fit
SOURCES = (ORACLE, SELECTIVE, MINED, BOOTSTRAP)


# ------------------------------------------------------------- selection


@dataclass
class SelectionContext:
    """What a strategy may look at in one round. Fields not declared in ``requires`` are None.

    ``labelled`` holds the rows with a permanent label (queried or pseudo);
    transient pseudo labels (``transient``, under ``PROVENANCE``) stay in
    ``unlabelled``, because such a row may still be queried.
    """

    round: int
    num_classes: int
    unlabelled: np.ndarray  # pool row ids without a permanent label
    labelled: np.ndarray  # pool row ids labelled for good (queried or permanent pseudo)
    labelled_targets: np.ndarray  # their labels: (n,) class ids, or (n, C) 0/1 for multi-label tasks
    pool_features: np.ndarray | None = None
    probs: np.ndarray | None = None
    text_features: np.ndarray | None = None
    class_embeddings: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    predictor: Predictor | None = None
    images: ImageAccess | None = None
    blackbox: BlackBox | None = None
    labelled_sources: np.ndarray | None = None  # (n,) str: who gave each labelled row's label (PROVENANCE)
    transient: dict[int, Any] | None = None  # transient pseudo labels in force, row -> label (PROVENANCE)
    pool_labels: np.ndarray | None = None  # (N,) true labels of the whole pool (POOL_LABELS: few-shot samplers only)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # declared named predictor outputs, (N, ...)
    extras: dict = field(default_factory=dict)  # diagnostics a strategy notes; logged with the round
    task: str = "multiclass"  # the card's: "multilabel" probs are independent per-label probabilities

    @property
    def labelled_is_pseudo(self) -> np.ndarray:
        if self.labelled_sources is None:
            raise ValueError(f"which labelled rows are pseudo is an input: declare {PROVENANCE!r} in `requires`")
        return self.labelled_sources != ORACLE


@dataclass
class Selection:
    """Rows to send to the oracle, plus labels the strategy gives for free.

    ``pseudo_labels`` are permanent (selective querying); ``transient_labels``
    *replace* every transient label in force (mining) -- ``None`` keeps them.
    ``costs`` are what the strategy spent besides labels (e.g. API calls);
    black-box queries are counted by the handle itself.
    """

    indices: np.ndarray
    pseudo_labels: dict[int, Any] = field(default_factory=dict)
    transient_labels: dict[int, Any] | None = None
    costs: dict[str, float] = field(default_factory=dict)


class AcquisitionStrategy(Configurable, ABC):
    """Who to label next. ``multilabel``: whether it can rank a multi-label task's pool (refused otherwise)."""

    name: str = "?"
    requires: frozenset[str] = frozenset()
    multilabel: bool = False

    @abstractmethod
    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        ...

    def cold_start(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        """Round 1 under ``cold_start: method``; strategies with a dedicated start (TypiClust,
        DropQuery's centroids) override this, the rest select as usual."""
        return self.select(ctx, budget, rng)

    def bootstrap(self, ctx: SelectionContext, rng: np.random.Generator) -> Selection | None:
        """Free labels before the round-0 fit (e.g. zero-shot top-K per class); ``None``: no bootstrap.

        ``ctx`` comes from the predictor fitted on no labels. A bootstrap may
        not query: its ``indices`` must be empty.
        """
        return None

    @property
    def has_bootstrap(self) -> bool:
        return type(self).bootstrap is not AcquisitionStrategy.bootstrap


# ------------------------------------------------------------- adaptation


@dataclass
class TrainSet:
    features: np.ndarray  # (n, D) cached image features of the labelled rows
    labels: np.ndarray  # (n,) class ids or (n, C) 0/1 (true for queried rows, assigned for pseudo rows)
    is_pseudo: np.ndarray  # (n,) bool
    rows: np.ndarray | None = None  # (n,) their pool row ids, for learners that re-read pixels
    sources: np.ndarray | None = None  # (n,) str: oracle, selective, mined, bootstrap


class ImageAccess(ABC):
    """Pixels of a trial's pool and test split, preprocessed for the trial's encoder, read on demand.

    Only plug-ins that adapt or probe the image path use it; everything else
    works on cached features. ``split`` is ``"pool"`` or ``"test"``; rows are
    that split's row ids.
    """

    @abstractmethod
    def pixels(self, split: str, rows: np.ndarray):
        """A float tensor (len(rows), 3, H, W) ready for the encoder."""

    @abstractmethod
    def size(self, split: str) -> int:
        ...


class BlackBox(ABC):
    """A foundation model behind an API: it answers output distributions and nothing else.

    No features, gradients or weights. Every image it is asked about is
    counted (``queries``), because in an API setting that is what a method
    costs; the loop moves the count into the ledger after each phase.
    """

    queries: int = 0

    @abstractmethod
    def query(self, pixels) -> np.ndarray:
        """(n, C) output distributions for a batch of preprocessed images (n, 3, H, W)."""

    def __getattr__(self, name: str):
        # Only reached for names a handle does not have: features, gradients, weights, the model itself.
        raise AttributeError(f"the black box answers query(images) -> (n, C) distributions and nothing else; "
                             f"{name!r} (features, gradients, weights, the model) is not available through it")

    @staticmethod
    def check_images(shape) -> None:
        """Refuse anything but a batch of images, (n, 3, H, W)."""
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"black box: expected images (n, 3, H, W), got shape {tuple(shape)}")


@dataclass
class AdaptContext:
    """What a learner may use besides its training set. Fields not declared in ``requires`` are None/empty.

    Metadata (class names, templates, encoder) is always there; arrays and
    handles only when declared. ``previous`` is the last round's predictor,
    for learners that continue training instead of re-initialising.
    """

    num_classes: int
    round: int
    text_features: np.ndarray | None  # (C, D) class text embeddings
    device: str | None = None  # None: CUDA when the task has a GPU, else CPU
    encoder: str = "tiny-clip"
    precision: str = "fp32"
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    descriptions: dict[str, list[str]] = field(default_factory=dict)  # class name -> positive sentences
    attributes: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # class -> {positive, discriminative, confusion}
    images: ImageAccess | None = None
    blackbox: BlackBox | None = None
    pool_features: np.ndarray | None = None  # (N, D) the whole pool (POOL_FEATURES)
    unlabelled: np.ndarray | None = None  # rows without a permanent label (UNLABELLED)
    prepared: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # declared preparation outputs
    previous: Predictor | None = None
    # The card's task. For "multilabel", labels are (n, C) 0/1 and ``text_features`` rows are t+ − t−
    # (positive minus negative prompt embedding): x·(t+ − t−)/T is the zero-shot logit of each label.
    task: str = "multiclass"


@dataclass
class LinearHead:
    """``softmax((x W^T + b) / T)``: what strategies with analytic shortcuts (ALFA-Mix, DropQuery) need."""

    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    temperature: float


class Predictor(ABC):
    """A fitted model over cached features. Its state is plain arrays, so a round checkpoint can hold it."""

    on_pixels: bool = False  # True: it scores images, not cached features (see ImagePredictor)
    outputs: frozenset[str] = frozenset()  # names of extra outputs beside the class probabilities

    @abstractmethod
    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        ...

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Penultimate embedding; for a head on frozen features that is the features themselves."""
        return np.asarray(features, dtype=np.float32)

    def class_embeddings(self) -> np.ndarray:
        """(C, D) L2-normalised class embeddings in the image-feature space: the learned classifier."""
        raise NotImplementedError(f"{type(self).__name__} does not provide class embeddings")

    def predict_output(self, name: str, features: np.ndarray) -> np.ndarray:
        """A named extra output (``outputs``) on cached features, e.g. a clean probability."""
        raise KeyError(f"{type(self).__name__} has no output {name!r}; it provides {sorted(self.outputs) or 'none'}")

    def linear_head(self) -> LinearHead | None:
        """The head as ``(W, b, T)`` when the predictor is linear in the cached features, else None."""
        return None

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

    on_pixels = True

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} adapts the image path and cannot score cached features; "
                        "use predict_proba_images (strategies needing the predictor on features do not apply)")

    @abstractmethod
    def predict_proba_images(self, images: ImageAccess, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        ...

    def embed_images(self, images: ImageAccess, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Penultimate embedding through the adapted image path."""
        raise NotImplementedError(f"{type(self).__name__} has no penultimate embedding")

    def predict_output_images(self, name: str, images: ImageAccess, split: str,
                              rows: np.ndarray | None = None) -> np.ndarray:
        raise KeyError(f"{type(self).__name__} has no output {name!r}; it provides {sorted(self.outputs) or 'none'}")


class Learner(Configurable, ABC):
    """How the frozen model is adapted after each round.

    ``provides`` lists what its predictors give strategies (``PROBS``,
    ``CLASS_EMBEDDINGS``, ``predictor_output("clean_prob")``, ...); a strategy
    that declares more than its partner provides is refused before Ray starts.
    """

    name: str = "?"
    requires: frozenset[str] = frozenset()
    provides: frozenset[str] = FEATURE_PREDICTOR_PROVIDES
    multilabel: bool = False  # whether it fits (n, C) 0/1 labels and predicts per-label probabilities
    num_gpus: float = 0.0  # a learner that trains inside the image path asks for a GPU

    @abstractmethod
    def fit(self, train: TrainSet, ctx: AdaptContext, rng: np.random.Generator) -> Predictor:
        ...
