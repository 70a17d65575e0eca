"""Zero-shot classification from cached embeddings (CLIP's template ensemble)."""

from __future__ import annotations

import numpy as np

from methods.core.predictors import DEFAULT_TEMPERATURE


def class_embeddings(text: np.ndarray) -> np.ndarray:
    """``(T, C, D)`` template x class embeddings -> ``(C, D)``: mean over templates, re-normalised."""
    mean = np.asarray(text, dtype=np.float32).mean(axis=0)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def zero_shot_probs(features: np.ndarray, classes: np.ndarray, temperature: float = DEFAULT_TEMPERATURE,
                    chunk: int = 65536) -> np.ndarray:
    """Softmax over cosine similarities, computed in chunks so a million-image pool fits in memory."""
    out = np.empty((len(features), len(classes)), dtype=np.float32)
    for s in range(0, len(features), chunk):
        logits = np.asarray(features[s: s + chunk], dtype=np.float32) @ classes.T / temperature
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        out[s: s + chunk] = e / e.sum(axis=1, keepdims=True)
    return out


def accuracy_report(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Top-1 and per-class accuracy (recall), the figures the embed CLI prints."""
    pred = probs.argmax(axis=1)
    per_class = {}
    for c, name in enumerate(class_names):
        mask = labels == c
        per_class[name] = float((pred[mask] == c).mean()) if mask.any() else float("nan")
    report = {"top1": float((pred == labels).mean()), "per_class": per_class}
    if len(class_names) == 2:
        from sklearn.metrics import roc_auc_score

        if len(np.unique(labels)) == 2:
            report["auc"] = float(roc_auc_score(labels, probs[:, 1]))
    return report
