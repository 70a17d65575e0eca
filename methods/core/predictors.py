"""Predictor primitives every layer uses: softmax, the linear head and CLIP's zero-shot temperature.

``LinearPredictor`` is the predictor of zero-shot CLIP, linear probes and the
CoOp family (whose classifier, after training, is a matrix of prompted class
features). It lives here, below both ``orchestrator/`` and the plug-ins, so
strategies can use its capabilities without importing a learner's module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..base import LinearHead, Predictor

#: CLIP's learned logit scale is ~100; CEC and most AL papers use T = 0.01.
DEFAULT_TEMPERATURE = 0.01


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Elementwise logistic function, stable for large |logits|."""
    logits = np.asarray(logits, np.float64)
    out = np.empty_like(logits)
    pos = logits >= 0
    out[pos] = 1 / (1 + np.exp(-logits[pos]))
    e = np.exp(logits[~pos])
    out[~pos] = e / (1 + e)
    return out


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    matrix = np.asarray(matrix, dtype=np.float32)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


@dataclass
class LinearPredictor(Predictor):
    """``softmax((x W^T + b) / T)`` over cached features: zero-shot and linear probes alike.

    ``multilabel``: independent per-label probabilities ``sigmoid((x W^T + b) / T)`` instead (a
    multi-label task's probe, or its zero-shot head whose rows are t+ − t−, so that each label's
    sigmoid is the softmax over its positive and negative prompt).
    """

    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    temperature: float = 1.0
    multilabel: bool = field(default=False, kw_only=True)

    def predict_proba(self, features: np.ndarray, chunk: int = 65536) -> np.ndarray:
        out = np.empty((len(features), len(self.weight)), dtype=np.float32)
        activation = sigmoid if self.multilabel else softmax
        for s in range(0, len(features), chunk):
            x = np.asarray(features[s: s + chunk], dtype=np.float32)
            out[s: s + chunk] = activation((x @ self.weight.T + self.bias) / self.temperature)
        return out

    def class_embeddings(self) -> np.ndarray:
        """The weight rows, L2-normalised: the template ensemble for zero-shot, the prompted class
        features for CoOp (both already unit norm), the direction of each class row for a probe."""
        return unit_rows(self.weight)

    def linear_head(self) -> LinearHead | None:
        if self.multilabel:  # the analytic shortcuts behind LinearHead assume a softmax
            return None
        return LinearHead(np.asarray(self.weight, np.float32), np.asarray(self.bias, np.float32),
                          float(self.temperature))

    def state(self) -> dict[str, np.ndarray]:
        state = {"weight": self.weight, "bias": self.bias, "temperature": np.asarray(self.temperature)}
        return {**state, "multilabel": np.asarray(True)} if self.multilabel else state

    @classmethod
    def from_state(cls, state):
        return cls(np.asarray(state["weight"]), np.asarray(state["bias"]), float(state["temperature"]),
                   multilabel=bool(state.get("multilabel", False)))
