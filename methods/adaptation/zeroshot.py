"""Zero-shot CLIP: the template-ensemble text classifier, no training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.zeroshot import DEFAULT_TEMPERATURE

from ..base import TEXT_FEATURES, AdaptContext, Learner, Predictor, TrainSet
from ..registry import register_adaptation


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class LinearPredictor(Predictor):
    """``softmax((x W^T + b) / T)`` over cached features: zero-shot and linear probes alike."""

    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    temperature: float = 1.0

    def predict_proba(self, features: np.ndarray, chunk: int = 65536) -> np.ndarray:
        out = np.empty((len(features), len(self.weight)), dtype=np.float32)
        for s in range(0, len(features), chunk):
            x = np.asarray(features[s: s + chunk], dtype=np.float32)
            out[s: s + chunk] = softmax((x @ self.weight.T + self.bias) / self.temperature)
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias, "temperature": np.asarray(self.temperature)}

    @classmethod
    def from_state(cls, state):
        return cls(np.asarray(state["weight"]), np.asarray(state["bias"]), float(state["temperature"]))


@register_adaptation("zeroshot")
class ZeroShot(Learner):
    """Ignores labels; the reference row of every comparison table."""

    requires = frozenset({TEXT_FEATURES})

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE):
        if temperature <= 0:
            raise ValueError(f"zeroshot: temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def fit(self, train: TrainSet, ctx: AdaptContext, rng: np.random.Generator) -> Predictor:
        text = np.asarray(ctx.text_features, dtype=np.float32)
        return LinearPredictor(text, np.zeros(len(text), np.float32), self.temperature)
