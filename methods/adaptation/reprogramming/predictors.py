"""What a fitted visual-reprogramming model is: its perturbations and scorer as plain arrays, run on pixels.

:class:`ReprogrammedPredictor` holds one or two experts' perturbations, the
layout they act in and the scorer's sentence embeddings, so a round
checkpoint can hold it and any worker can rebuild it; the BioMedVR zero-shot
variant scores cached features and never touches pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ...base import ImageAccess, ImagePredictor, Predictor
from ...core.devices import pick_device
from ...core.predictors import softmax, unit_rows
from ..prompting.model import frozen_clip
from .frames import Frame, normalisation
from .scoring import Scorer


@dataclass
class ReprogrammedPredictor(ImagePredictor):
    """Frozen CLIP image tower behind one or two reprogramming perturbations, and a :class:`Scorer`."""

    deltas: np.ndarray  # (E, 3, S, S), E = 1 or 2 experts
    frame: tuple[str, int, int, int]  # Frame fields: kind, size, border, inner
    scorer: str
    arrays: dict[str, np.ndarray]
    scale: float
    encoder: str = "tiny-clip"
    precision: str = "fp32"
    k: int = 3
    alpha: float = 0.5
    gate: np.ndarray = field(default_factory=lambda: np.ones(2, np.float32))
    batch_size: int = 256
    device: str | None = None

    def _forward(self, images: ImageAccess, split: str, rows: np.ndarray | None, what: str) -> np.ndarray:
        import torch

        device = pick_device(self.device)
        clip = frozen_clip(self.encoder, self.precision, device)
        frame = Frame(*self.frame)
        mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in normalisation(clip))
        deltas = torch.as_tensor(self.deltas, device=device)
        scorer = Scorer(self.scorer, self.arrays, self.scale, self.k, self.alpha, device)
        gate = torch.softmax(torch.as_tensor(self.gate, device=device), dim=0)
        rows = np.arange(images.size(split)) if rows is None else np.asarray(rows, np.int64)
        out = []
        with torch.inference_mode():
            for s in range(0, len(rows), self.batch_size):
                x = images.pixels(split, rows[s: s + self.batch_size]).to(device)
                if what == "embed":  # the positive expert's embedding alone
                    out.append(embed(clip, frame.apply(x, deltas[0], mean, std)).cpu().numpy())
                    continue
                z = [embed(clip, frame.apply(x, d, mean, std)) for d in deltas]
                logits, _, _ = scorer.logits(z[0], z[-1], gate)
                out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    @property
    def num_classes(self) -> int:
        return int(len(self.arrays["text"]) if self.scorer == "text" else len(self.arrays["positive_index"]))

    def predict_proba_images(self, images, split, rows=None):
        return self._forward(images, split, rows, "proba")

    def embed_images(self, images, split, rows=None):
        """The positive expert's reprogrammed, L2-normalised image embedding."""
        return self._forward(images, split, rows, "embed")

    def class_embeddings(self) -> np.ndarray:
        return class_embeddings_of(self.scorer, self.arrays)

    @property
    def parameter_count(self) -> int:
        """Trainable numbers: the experts' perturbations (and the 2-entry gate of BioMedVR)."""
        return int(self.deltas.size + (2 if self.scorer == "biomedvr" else 0))

    def state(self) -> dict[str, np.ndarray]:
        meta = {"frame": list(self.frame), "scorer": self.scorer, "scale": self.scale, "encoder": self.encoder,
                "precision": self.precision, "k": self.k, "alpha": self.alpha}
        return {"deltas": np.asarray(self.deltas, np.float32), "gate": np.asarray(self.gate, np.float32),
                "meta": np.asarray(json.dumps(meta)),
                **{f"arrays/{k}": np.asarray(v) for k, v in self.arrays.items()}}

    @classmethod
    def from_state(cls, state):
        meta = json.loads(str(state["meta"]))
        arrays = {k.split("/", 1)[1]: np.asarray(v) for k, v in state.items() if k.startswith("arrays/")}
        return cls(np.asarray(state["deltas"]), tuple(meta["frame"]), meta["scorer"], arrays, meta["scale"],
                   meta["encoder"], meta["precision"], meta["k"], meta["alpha"], np.asarray(state["gate"]))


def embed(clip, pixels):
    """The frozen image tower's L2-normalised embedding; gradients flow to the input, never to the weights."""
    import torch.nn.functional as F

    return F.normalize(clip.model.encode_image(pixels).float(), dim=-1)


def class_embeddings_of(scorer: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """(C, D) unit class directions: the class prompts, or the mean of a class's positive sentences."""
    if scorer == "text":
        return unit_rows(arrays["text"])
    index, sentences = arrays["positive_index"], np.asarray(arrays["positive"], np.float32)
    return unit_rows(np.stack([sentences[row[row >= 0]].mean(axis=0) for row in index]))


@dataclass
class AttributeFusionPredictor(Predictor):
    """BioMedVR (ZS): positive and confusion-aware top-k scores of the unmodified image, on cached features."""

    arrays: dict[str, np.ndarray]
    scale: float
    k: int = 3
    fusion: str = "subtract"

    def predict_proba(self, features: np.ndarray, chunk: int = 8192) -> np.ndarray:
        import torch

        scorer = Scorer("biomedvr", self.arrays, self.scale, self.k)
        gate = (0.5, -0.5) if self.fusion == "subtract" else (0.5, 0.5)
        out = []
        with torch.inference_mode():
            for s in range(0, len(features), chunk):
                z = torch.as_tensor(unit_rows(np.asarray(features[s: s + chunk], np.float32)))
                out.append(softmax(scorer.logits(z, z, gate)[0].numpy().astype(np.float64)).astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, len(self.arrays["positive_index"])), np.float32)

    def class_embeddings(self) -> np.ndarray:
        return class_embeddings_of("biomedvr", self.arrays)

    def state(self):
        return {"scale": np.asarray(self.scale), "k": np.asarray(self.k), "fusion": np.asarray(self.fusion),
                **{f"arrays/{k}": np.asarray(v) for k, v in self.arrays.items()}}

    @classmethod
    def from_state(cls, state):
        arrays = {k.split("/", 1)[1]: np.asarray(v) for k, v in state.items() if k.startswith("arrays/")}
        return cls(arrays, float(state["scale"]), int(state["k"]), str(state["fusion"]))
