"""The synthetic dataset family: the project's offline default.

Each member fixes a class list and a rule that turns ``(label, rng)`` into a
:class:`~datasets.synthetic.render.Scene`. The members are chosen to mimic the
situations the papers study:

* ``synth-shapes`` (coarse, 10 classes): shapes in any colour/pattern, like
  CIFAR-10 or Caltech: zero-shot works but unevenly, because some shapes are
  rare in the tiny CLIP's pre-training captions.
* ``synth-patterned-shapes`` (fine-grained, 36 classes): fill pattern x
  shape, with deliberately confusable pairs (dotted/checkered,
  circle/hexagon/ring, square/diamond, bar/ellipse, triangle/arrow), like
  FGVC-Aircraft or Flowers.
* ``synth-scans`` (domain-shifted, 10 classes): faint grayscale shapes in
  textured noise, named the way a radiologist would name them ("stellate
  mass", "ring lesion"); the names only partly overlap the tiny CLIP's
  caption vocabulary, as clinical terms do for CLIP, so zero-shot is weak
  while the image features still separate the classes.
* ``synth-lesions`` (imbalanced binary, AUC): 10 % of scans contain a small
  faint blob, like the VALIANT medical protocols.

Labels are a pure function of the index (balanced sets: ``index % C``;
imbalanced sets: one Bernoulli draw from the image's own generator), so the
label vector of a million-image pool is known without rendering a pixel.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .render import COLORS, PATTERNS, BACKGROUNDS, SIZES, Scene, image_rng, render

COARSE_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "crescent", "bar", "hexagon", "diamond")
FINE_SHAPES = COARSE_SHAPES + ("ellipse", "arrow")
FINE_PATTERNS = ("striped", "dotted", "checkered")

#: Clinical-style names of the scan classes (same geometry as COARSE_SHAPES, in order). Some share a
#: word with the pre-training captions, some do not; the mix was chosen so that the shipped tiny
#: CLIP's zero-shot accuracy lands near 25 % (2.5x chance), well below what 16 labels per class reach.
SCAN_CLASS_NAMES = {
    "circle": "round nodule", "square": "square opacity", "triangle": "triangular opacity",
    "star": "stellate mass", "cross": "cruciform lesion", "ring": "ring-enhancing lesion",
    "crescent": "crescent-shaped collection", "bar": "linear band", "hexagon": "polygonal mass",
    "diamond": "diamond-shaped opacity",
}
#: Hand-written descriptions used as the positive attributes of a class, the
#: analogue of the LLM-written descriptions that BioMedVR/AttrVR use.
SHAPE_TRAITS: dict[str, list[str]] = {
    "circle": ["a round outline", "no corners", "a filled disc"],
    "square": ["four equal sides", "four right-angle corners", "straight edges"],
    "triangle": ["three corners", "a pointed top", "a flat base"],
    "star": ["five pointed tips", "a spiky outline", "a small centre"],
    "cross": ["two crossing arms", "a plus-like form", "four arms of equal length"],
    "ring": ["a hollow centre", "a round outline", "a thick round band"],
    "crescent": ["a curved moon form", "one concave side", "two horned tips"],
    "bar": ["a long thin form", "straight parallel edges", "a horizontal stripe"],
    "hexagon": ["six corners", "six straight sides", "an almost round outline"],
    "diamond": ["four corners pointing up, down, left and right", "a rhombus form", "straight edges"],
    "ellipse": ["an elongated round outline", "no corners", "an oval form"],
    "arrow": ["a shaft with a pointed head", "a triangular tip", "a direction"],
}

PATTERN_TRAITS: dict[str, str] = {
    "striped": "parallel stripes across the fill",
    "dotted": "separate round dots on the fill",
    "checkered": "a checkerboard of squares on the fill",
}

PATTERN_CONFUSIONS: dict[str, tuple[str, str]] = {
    "striped": ("checkered", "stripes that run in one direction only"),
    "dotted": ("checkered", "round dots rather than square cells"),
    "checkered": ("dotted", "square cells touching at their corners"),
}

#: The class each shape is most easily mistaken for, and the trait that
#: tells them apart: the analogue of BioMedVR's confusion-aware attributes.
SHAPE_CONFUSIONS: dict[str, tuple[str, str]] = {
    "circle": ("hexagon", "a smooth edge without corners"),
    "square": ("diamond", "sides parallel to the image border"),
    "triangle": ("arrow", "no shaft"),
    "star": ("cross", "five thin tips instead of four broad arms"),
    "cross": ("star", "four broad arms instead of five tips"),
    "ring": ("circle", "an empty centre"),
    "crescent": ("circle", "a bite taken out of one side"),
    "bar": ("ellipse", "square ends"),
    "hexagon": ("circle", "visible corners"),
    "diamond": ("square", "corners pointing to the image border"),
    "ellipse": ("bar", "rounded ends"),
    "arrow": ("triangle", "a shaft behind the head"),
}


def stream_id(*parts: str) -> int:
    """Stable 31-bit id of a named random stream (dataset, split, corpus)."""
    return zlib.crc32("/".join(parts).encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class SyntheticSpec:
    """One member of the family: its classes and how a scene is drawn for a label."""

    name: str
    classes: tuple[str, ...]
    scene_for: Callable[[int, np.random.Generator], Scene]
    positive_rate: float | None = None  # set for imbalanced binary sets
    default_sizes: dict[str, int] = field(default_factory=lambda: {"train": 5000, "test": 1000})
    finding_rate: float | None = None  # set for multi-label sets: each label present independently at this rate

    @property
    def multilabel(self) -> bool:
        return self.finding_rate is not None

    def labels(self, split: str, indices: np.ndarray, seed: int) -> np.ndarray:
        """(n,) class ids, or (n, C) 0/1 label vectors for a multi-label member."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.positive_rate is None and self.finding_rate is None:
            return (indices % len(self.classes)).astype(np.int64)
        return np.array([self._drawn_label(image_rng(seed, stream_id(self.name, split), int(i))) for i in indices],
                        dtype=np.int64)

    def _drawn_label(self, rng: np.random.Generator):
        """The label a per-image generator draws first (render consumes the same draws in the same order)."""
        if self.finding_rate is not None:
            return (rng.random(len(self.classes)) < self.finding_rate).astype(np.int64)
        return int(rng.random() < self.positive_rate)

    def render(self, split: str, indices: np.ndarray, seed: int, size: int = 32) -> np.ndarray:
        """Images for ``indices`` as an ``(n, size, size, 3)`` uint8 array."""
        stream = stream_id(self.name, split)
        labels = self.labels(split, indices, seed)
        out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
        for k, (i, y) in enumerate(zip(np.asarray(indices), labels)):
            rng = image_rng(seed, stream, int(i))
            if self.positive_rate is not None or self.finding_rate is not None:
                self._drawn_label(rng)  # the label draw, consumed in the same order as labels()
            out[k] = render(self.scene_for(y if self.multilabel else int(y), rng), rng, size)
        return out


def _pick(rng: np.random.Generator, options) -> str:
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _coarse_scene(label: int, rng: np.random.Generator) -> Scene:
    return Scene(
        shape=COARSE_SHAPES[label],
        color=_pick(rng, COLORS),
        pattern=_pick(rng, PATTERNS),
        background=_pick(rng, BACKGROUNDS),
        size=_pick(rng, ("medium", "large")),
    )


def _fine_scene(label: int, rng: np.random.Generator) -> Scene:
    pattern, shape = FINE_CLASSES[label]
    return Scene(
        shape=shape,
        color=_pick(rng, COLORS),
        pattern=pattern,
        background=_pick(rng, BACKGROUNDS),
        size=_pick(rng, ("medium", "large")),
    )


def _scan_scene(label: int, rng: np.random.Generator) -> Scene:
    return Scene(
        shape=COARSE_SHAPES[label],
        color="white",
        pattern="solid",
        background="noisy",
        size=_pick(rng, ("medium", "large")),
        domain="scan",
        contrast=float(rng.uniform(0.14, 0.28)),
    )


def _lesion_scene(label: int, rng: np.random.Generator) -> Scene:
    return Scene(
        shape="circle" if label == 1 else None,
        color="white",
        pattern="solid",
        background="noisy",
        size="small",
        domain="scan",
        contrast=float(rng.uniform(0.08, 0.2)),
    )


#: The findings of the multi-label member: shapes that stay distinct when several share a small scan.
FINDING_SHAPES = ("circle", "square", "bar", "ring")


def _findings_scene(label: np.ndarray, rng: np.random.Generator) -> Scene:
    """A scan holding every finding whose label is 1 (none: normal tissue), each placed on its own."""
    return Scene(
        shape=None,
        color="white",
        pattern="solid",
        background="noisy",
        size="small",
        domain="scan",
        contrast=float(rng.uniform(0.16, 0.3)),
        extra_shapes=tuple(s for s, present in zip(FINDING_SHAPES, label) if present),
    )


FINE_CLASSES: tuple[tuple[str, str], ...] = tuple((p, s) for s in FINE_SHAPES for p in FINE_PATTERNS)

FAMILY: dict[str, SyntheticSpec] = {
    spec.name: spec
    for spec in (
        SyntheticSpec("synth-shapes", COARSE_SHAPES, _coarse_scene),
        SyntheticSpec("synth-patterned-shapes", tuple(f"{p} {s}" for p, s in FINE_CLASSES), _fine_scene),
        SyntheticSpec("synth-scans", tuple(SCAN_CLASS_NAMES[s] for s in COARSE_SHAPES), _scan_scene),
        SyntheticSpec("synth-lesions", ("normal", "lesion"), _lesion_scene, positive_rate=0.1),
        SyntheticSpec("synth-findings", tuple(SCAN_CLASS_NAMES[s] for s in FINDING_SHAPES), _findings_scene,
                      finding_rate=0.3),
    )
}


def _class_parts(spec_name: str) -> dict[str, tuple[str | None, str]]:
    """Class name -> (fill pattern or None, shape), from the same tables the members are built from."""
    if spec_name == "synth-patterned-shapes":
        return {f"{p} {s}": (p, s) for p, s in FINE_CLASSES}
    if spec_name == "synth-scans":
        return {SCAN_CLASS_NAMES[s]: (None, s) for s in COARSE_SHAPES}
    if spec_name == "synth-findings":
        return {SCAN_CLASS_NAMES[s]: (None, s) for s in FINDING_SHAPES}
    return {s: (None, s) for s in COARSE_SHAPES}


def class_attributes(spec_name: str) -> dict[str, dict[str, list[str]]]:
    """Descriptive, discriminative and confusion-aware attribute sentences for every class of a member.

    The renderer's own look-alike pairs (``SHAPE_CONFUSIONS``, ``PATTERN_CONFUSIONS``) play the LLM of
    BioMedVR eq. 10: a class's *confusion* sentences describe how its look-alike appears, its
    *discriminative* ones what tells the two apart (AttrVR's second set). Every kind holds at least three
    sentences per class, so top-k scoring with AttrVR's k = 3 works on every member.
    """
    if spec_name == "synth-lesions":
        return {
            "normal": {"positive": ["uniform textured tissue", "no bright spot", "even grayscale noise"],
                       "discriminative": ["no small round blob, unlike a lesion", "no region brighter than the rest",
                                          "texture without any compact spot"],
                       "confusion": ["a small faint round spot", "a blob brighter than the tissue",
                                     "a compact bright region"]},
            "lesion": {"positive": ["a small faint round spot", "a blob brighter than the tissue",
                                    "a compact bright region"],
                       "discriminative": ["a compact bright blob, unlike normal tissue texture",
                                          "one spot brighter than its surroundings", "a round region in the noise"],
                       "confusion": ["uniform textured tissue", "no bright spot", "even grayscale noise"]},
        }
    return {name: _shape_class_attributes(spec_name, *_class_parts(spec_name)[name]) for name in FAMILY[spec_name].classes}


def _shape_class_attributes(spec_name: str, pattern: str | None, shape: str) -> dict[str, list[str]]:
    """Sentences name the drawn shape, as an LLM describing a class names what it looks like: the tiny CLIP
    learned shape words from its captions, and a trait without one ("a round outline") is noise to it."""
    other, cue = SHAPE_CONFUSIONS[shape]
    own = [t for t in SHAPE_TRAITS[shape] if t not in SHAPE_TRAITS[other]]
    positive = [f"a {shape} with {t}" for t in SHAPE_TRAITS[shape]]
    discriminative = [f"a {shape} with {cue}"] + [f"a {shape} with {t}, not a {other}" for t in own]
    confusion = [f"a {other} with {t}" for t in SHAPE_TRAITS[other]]
    if pattern is not None:
        look_alike, pattern_cue = PATTERN_CONFUSIONS[pattern]
        positive.insert(0, f"a {shape} with {PATTERN_TRAITS[pattern]}")
        discriminative.append(f"a {pattern} {shape} with {pattern_cue}")
        confusion.append(f"a {look_alike} {shape} with {PATTERN_TRAITS[look_alike]}")
    if spec_name in ("synth-scans", "synth-findings"):
        positive.append(f"a faint {shape} in grayscale noise")
    if len(discriminative) < 3:  # look-alikes that share most traits
        discriminative.append(f"a {shape}, not a {other}")
    return {"positive": positive, "discriminative": discriminative, "confusion": confusion}


# --------------------------------------------------------------------------
# The tiny CLIP's pre-training corpus: scenes + noisy captions, drawn from a
# stream no benchmark split uses.
# --------------------------------------------------------------------------

PRETRAIN_STREAM = "pretrain-corpus"

#: How often each shape appears in the corpus: a long tail, as on the web.
SHAPE_FREQUENCY: dict[str, float] = {
    "circle": 1.0, "square": 1.0, "triangle": 0.9, "star": 0.7, "cross": 0.6, "ring": 0.45,
    "bar": 0.5, "ellipse": 0.45, "arrow": 0.4, "diamond": 0.3, "hexagon": 0.18, "crescent": 0.14,
}

PHOTO_CAPTIONS = (
    "a photo of a {color} {shape}.",
    "a {color} {shape}.",
    "a {size} {color} {shape} on a {background} background.",
    "a {pattern} {color} {shape}.",
    "a photo of a {shape}.",
    "a {shape} on a {background} background.",
    "a picture of a {pattern} {shape}.",
)
SCAN_CAPTIONS = (
    "a grayscale scan of a {shape}.",
    "a faint {shape} in a noisy scan.",
    "a scan showing a {shape}.",
)
EMPTY_PHOTO_CAPTIONS = ("an empty {background} background.", "a photo of nothing.")
EMPTY_SCAN_CAPTIONS = ("a normal grayscale scan.", "an empty scan.")
LESION_CAPTIONS = ("a grayscale scan showing a lesion.", "a lesion in a noisy scan.")
GENERIC_CAPTIONS = ("a picture.", "an image of something.", "a photo.")


@dataclass(frozen=True)
class CorpusMix:
    """Knobs of the pre-training corpus that shape the tiny CLIP's zero-shot skill."""

    scan_fraction: float = 0.06
    empty_fraction: float = 0.03
    generic_caption_rate: float = 0.08
    wrong_color_rate: float = 0.06


def corpus_sample(index: int, seed: int, mix: CorpusMix = CorpusMix(), size: int = 32) -> tuple[np.ndarray, str]:
    """One pre-training (image, caption) pair."""
    rng = image_rng(seed, stream_id(PRETRAIN_STREAM), index)
    shapes = list(SHAPE_FREQUENCY)
    weights = np.array([SHAPE_FREQUENCY[s] for s in shapes])
    is_scan = rng.random() < mix.scan_fraction
    is_empty = rng.random() < mix.empty_fraction
    shape = None if is_empty else shapes[int(rng.choice(len(shapes), p=weights / weights.sum()))]
    if is_scan:
        small = rng.random() < 0.3
        scene = Scene(shape=shape, color="white", pattern="solid", background="noisy",
                      size="small" if small else _pick(rng, ("medium", "large")),
                      domain="scan", contrast=float(rng.uniform(0.15, 0.45)))
    else:
        scene = Scene(shape=shape, color=_pick(rng, COLORS), pattern=_pick(rng, PATTERNS),
                      background=_pick(rng, BACKGROUNDS), size=_pick(rng, SIZES))
    caption = _caption(scene, rng, mix)
    return render(scene, rng, size), caption


def _caption(scene: Scene, rng: np.random.Generator, mix: CorpusMix) -> str:
    if rng.random() < mix.generic_caption_rate:
        return _pick(rng, GENERIC_CAPTIONS)
    if scene.domain == "scan":
        if scene.shape is None:
            return _pick(rng, EMPTY_SCAN_CAPTIONS)
        if scene.size == "small" and scene.shape in ("circle", "ring") and rng.random() < 0.5:
            return _pick(rng, LESION_CAPTIONS)
        return _pick(rng, SCAN_CAPTIONS).format(shape=scene.shape)
    if scene.shape is None:
        return _pick(rng, EMPTY_PHOTO_CAPTIONS).format(background=scene.background)
    color = _pick(rng, COLORS) if rng.random() < mix.wrong_color_rate else scene.color
    caption = _pick(rng, PHOTO_CAPTIONS).format(
        color=color, shape=scene.shape, size=scene.size, pattern=scene.pattern, background=scene.background
    )
    return re.sub(r"\ba (?=[aeiou])", "an ", caption)
