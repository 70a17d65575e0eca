"""The pathologies of real unlabelled pools, on any member of the synthetic family.

Real pools are not balanced i.i.d. draws, and each seed method exists for one
of the ways they are not: CEC avoids uncertain outliers, PCB and CB balance
classes CLIP knows unevenly, diversity strategies skip near-duplicates,
selective querying skips easy samples. Each option below is modelled on a
published statistic (the named variants in ``datasets/cards/synthetic.py``
use these defaults, never values chosen by which method they make win):

* ``imbalance_ratio``: class frequencies follow the exponential long-tail
  profile of CIFAR-LT / ImageNet-LT, n_c proportional to ratio^(-rank_c / (C - 1)),
  so the largest class is ``ratio`` times the smallest (ImageNet-LT: 1,280 /
  5 = 256, Liu et al. 2019). The ranks are a seeded permutation of the classes.
* ``duplicate_fraction``: that share of rows re-renders an earlier row with a
  one-pixel shift and faint noise (near-duplicates: 3.3 % of CIFAR-10's and
  10 % of CIFAR-100's test images have one in training, Barz & Denzler 2020).
* ``outlier_fraction``: that share of rows shows no class -- an empty scene or
  a corrupted render -- and carries whatever class an annotator would guess
  (uniform): the "mismatched" images of open-set active learning, whose
  benchmarks use 20-40 % (Ning et al., CVPR 2022). A duplicate of an outlier is
  one too, so the share of rows showing no class is outlier_fraction x (1 +
  duplicate_fraction).
* ``label_noise``: the oracle answers a wrong class with this probability,
  ``symmetric`` (uniform over the others) or ``confusion`` (the class's look-
  alike in the renderer, where the member has it): 6 % of ImageNet's
  validation labels are wrong (Northcutt et al. 2021), 9 % of CIFAR-10N's
  aggregated human labels (Wei et al. 2022).
* The zero-shot knowledge per class is already uneven (the tiny CLIP's corpus
  has a long tail of shape frequencies) and stays so.

Only the splits in ``splits`` (default: train, the pool) get them; the test
split stays clean and balanced unless asked. Everything is drawn from the
dataset seed in one vectorised pass, so every worker computes the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

NORMAL, DUPLICATE, OUTLIER = 0, 1, 2


class Pathologies(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    imbalance_ratio: float = Field(1.0, ge=1.0, description="largest / smallest class frequency (ImageNet-LT: 256)")
    duplicate_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of rows that re-render another row")
    outlier_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of rows showing no class")
    label_noise: float = Field(0.0, ge=0.0, lt=1.0, description="probability the oracle answers a wrong class")
    noise: Literal["symmetric", "confusion"] = "symmetric"
    splits: tuple[str, ...] = ("train",)

    def applies_to(self, split: str) -> bool:
        return split in self.splits and (self.imbalance_ratio > 1 or self.duplicate_fraction > 0
                                         or self.outlier_fraction > 0 or self.label_noise > 0)


@dataclass(frozen=True)
class PoolPlan:
    """What each row of a pathological split is: its kind, the row it copies, its true class, the oracle's answer."""

    kind: np.ndarray  # (n,) NORMAL, DUPLICATE or OUTLIER
    source: np.ndarray  # (n,) the row whose scene it shows (itself unless a duplicate)
    labels: np.ndarray  # (n,) the true class (an outlier's is the annotator's guess)
    oracle: np.ndarray  # (n,) what the oracle answers when asked


def long_tail_labels(n: int, num_classes: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` classes drawn from the exponential long-tail profile with a seeded class order."""
    ranks = rng.permutation(num_classes)
    weights = ratio ** (-ranks / max(1, num_classes - 1))
    return rng.choice(num_classes, size=n, p=weights / weights.sum()).astype(np.int64)


def _roots(kind: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each duplicate copies a uniformly drawn earlier row, followed back to an original."""
    source = np.arange(len(kind))
    dups = np.flatnonzero(kind == DUPLICATE)
    picks = np.floor(rng.random(len(dups)) * np.maximum(dups, 1)).astype(np.int64)
    for i, j in zip(dups.tolist(), picks.tolist()):
        source[i] = source[j]
    return source


def noisy_answers(labels: np.ndarray, rate: float, kind: str, look_alike: np.ndarray | None, num_classes: int,
                  rng: np.random.Generator) -> np.ndarray:
    """The oracle's answers: each label replaced with probability ``rate`` by a wrong class."""
    flip = rng.random(len(labels)) < rate
    shift = rng.integers(1, max(2, num_classes), len(labels))
    wrong = (labels + shift) % num_classes
    if kind == "confusion" and look_alike is not None:
        wrong = np.where(look_alike[labels] >= 0, look_alike[labels], wrong)
    return np.where(flip, wrong, labels).astype(np.int64)


def plan_pool(base_labels: np.ndarray, num_classes: int, p: Pathologies, rng: np.random.Generator,
              look_alike: np.ndarray | None = None) -> PoolPlan:
    """The whole split's plan from its clean labels and the options (see the module docstring)."""
    n = len(base_labels)
    labels = long_tail_labels(n, num_classes, p.imbalance_ratio, rng) if p.imbalance_ratio > 1 \
        else np.asarray(base_labels, np.int64).copy()
    u = rng.random(n)
    kind = np.full(n, NORMAL, np.int8)
    kind[u < p.outlier_fraction] = OUTLIER
    kind[(u >= p.outlier_fraction) & (u < p.outlier_fraction + p.duplicate_fraction)] = DUPLICATE
    kind[0] = NORMAL  # the first row has nothing to copy
    source = _roots(kind, rng)
    guesses = rng.integers(0, num_classes, n)
    labels = np.where(kind == OUTLIER, guesses, labels)[source].astype(np.int64)  # a copy shows its original
    oracle = noisy_answers(labels, p.label_noise, p.noise, look_alike, num_classes, rng)
    return PoolPlan(kind, source, labels, oracle)


def look_alike_classes(member: str) -> np.ndarray:
    """Per class the class the renderer draws most like it (-1 where the member has none): confusion noise."""
    from .family import FAMILY, SHAPE_CONFUSIONS, _class_parts

    classes = list(FAMILY[member].classes)
    if len(classes) == 2:
        return np.array([1, 0])
    parts = _class_parts(member)
    by_parts = {v: i for i, v in enumerate(parts[c] for c in classes)}
    return np.array([by_parts.get((parts[c][0], SHAPE_CONFUSIONS[parts[c][1]][0]), -1) for c in classes])


def render_rows(spec, split: str, indices: np.ndarray, seed: int, size: int, plan: PoolPlan) -> np.ndarray:
    """Pixels of a pathological split: originals as usual, duplicates jittered, outliers empty or scrambled."""
    from .family import stream_id
    from .render import image_rng

    out = np.empty((len(indices), size, size, 3), np.uint8)
    for k, i in enumerate(np.asarray(indices, np.int64).tolist()):
        src = int(plan.source[i])
        img = _original(spec, split, seed, size, plan, src)
        out[k] = img if src == i else _jitter(img, image_rng(seed, stream_id(spec.name, split, "jitter"), i))
    return out


def _original(spec, split: str, seed: int, size: int, plan: PoolPlan, row: int) -> np.ndarray:
    """The render of a row that copies no other: its class's scene, or an empty / scrambled outlier."""
    from dataclasses import replace

    from .family import stream_id
    from .render import image_rng, render

    if plan.kind[row] == OUTLIER:
        rng = image_rng(seed, stream_id(spec.name, split, "outlier"), row)
        scene = spec.scene_for(int(rng.integers(len(spec.classes))), rng)
        if rng.random() < 0.5:
            return render(replace(scene, shape=None), rng, size)
        return _scramble(render(scene, rng, size), rng)
    rng = image_rng(seed, stream_id(spec.name, split), row)
    if spec.positive_rate is not None:
        rng.random()  # the label draw, consumed as SyntheticSpec.render does
    return render(spec.scene_for(int(plan.labels[row]), rng), rng, size)


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A near-duplicate: shifted by up to one pixel, with faint noise (sigma 3 of 255)."""
    dy, dx = rng.integers(-1, 2, size=2)
    shifted = np.roll(img, (int(dy), int(dx)), axis=(0, 1)).astype(np.float32)
    return np.clip(shifted + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def _scramble(img: np.ndarray, rng: np.random.Generator, blocks: int = 4) -> np.ndarray:
    """A corrupted render: the image cut into blocks x blocks tiles, shuffled."""
    h, w = img.shape[0] // blocks, img.shape[1] // blocks
    tiles = [img[r * h:(r + 1) * h, c * w:(c + 1) * w] for r in range(blocks) for c in range(blocks)]
    order = rng.permutation(len(tiles))
    rows = [np.concatenate([tiles[order[r * blocks + c]] for c in range(blocks)], axis=1) for r in range(blocks)]
    out = img.copy()
    out[: h * blocks, : w * blocks] = np.concatenate(rows, axis=0)
    return out
