"""How a reprogrammed image embedding becomes class logits: class prompts, AttrVR's attributes, BioMedVR's experts.

* ``text``: tau * z . t_c with t_c the class prompt embedding (VP, AR).
* ``attrvr`` (Cai et al., ICLR 2025): per class the mean of the top-k cosine
  similarities to its descriptive sentences and to its discriminative ones;
  logits tau * (alpha * descriptive + (1 - alpha) * discriminative).
* ``biomedvr`` (eq. 11-12): s+_y = tau/k sum of the top-k similarities of z+
  to the positive set T+_y (descriptive and discriminative sentences), s-_y
  the same for z- against the confusion-aware set T-_y; s = g+ s+ + g- s-,
  [g+, g-] = softmax(w).

Every sentence is encoded alone; the per-class top-k runs over a padded
(C, max sentences) index, so a batch costs one matrix product per set.
"""

from __future__ import annotations

import numpy as np


def sentence_index(owners: np.ndarray, num_classes: int, k: int, kind: str, class_names=None) -> np.ndarray:
    """(C, max count) sentence ids of every class, -1 padded; refuses a class with fewer than ``k`` sentences."""
    owners = np.asarray(owners, np.int64)
    counts = np.bincount(owners, minlength=num_classes)[:num_classes]
    short = np.flatnonzero(counts < k)
    if len(short):
        names = [class_names[i] if class_names else int(i) for i in short[:5]]
        raise ValueError(f"top-{k} attribute scoring needs at least {k} {kind} sentences per class; classes "
                         f"{names}{' ...' if len(short) > 5 else ''} have {sorted(set(counts[short].tolist()))}: add "
                         f"sentences to the card's attributes (or its attribute_files) or lower k")
    index = np.full((num_classes, max(1, int(counts.max()))), -1, np.int64)
    for c in range(num_classes):
        ids = np.flatnonzero(owners == c)
        index[c, : len(ids)] = ids
    return index


def top_k_mean(sims, index, k: int):
    """(B, S) similarities to every sentence -> (B, C) mean of each class's ``k`` highest (torch)."""
    import torch

    idx = torch.as_tensor(index, device=sims.device)
    gathered = sims[:, idx.clamp(min=0)]  # (B, C, M)
    gathered = gathered.masked_fill(idx[None] < 0, float("-inf"))
    return gathered.topk(k, dim=-1).values.mean(dim=-1)


class Scorer:
    """Logits of reprogrammed embeddings; arrays are numpy, computation torch (training and prediction alike)."""

    def __init__(self, kind: str, arrays: dict[str, np.ndarray], scale: float, k: int = 3, alpha: float = 0.5,
                 device: str = "cpu"):
        import torch

        self.kind, self.scale, self.k, self.alpha = kind, float(scale), int(k), float(alpha)
        self.t = {name: torch.as_tensor(np.asarray(a), device=device) for name, a in arrays.items()}

    def logits(self, z_pos, z_neg=None, gate=None):
        """(B, C) logits, and the two experts' scores (s+, s-) for BioMedVR's loss (None otherwise)."""
        t = self.t
        if self.kind == "text":
            return self.scale * z_pos @ t["text"].T, None, None
        if self.kind == "attrvr":
            descriptive = top_k_mean(z_pos @ t["positive"].T, t["positive_index"], self.k)
            discriminative = top_k_mean(z_pos @ t["discriminative"].T, t["discriminative_index"], self.k)
            return self.scale * (self.alpha * descriptive + (1 - self.alpha) * discriminative), None, None
        s_pos = self.scale * top_k_mean(z_pos @ t["positive"].T, t["positive_index"], self.k)
        s_neg = self.scale * top_k_mean(z_neg @ t["negative"].T, t["negative_index"], self.k)
        return gate[0] * s_pos + gate[1] * s_neg, s_pos, s_neg


def confusion_suppression(s_pos, s_neg, labels, margin: float):
    """Eq. 14: mean over the batch of [max_{c != y} s-_c - s+_y + m]_+."""
    import torch

    rows = torch.arange(len(labels), device=labels.device)
    others = s_neg.masked_fill(torch.nn.functional.one_hot(labels, s_neg.shape[1]).bool(), float("-inf"))
    return torch.relu(others.max(dim=1).values - s_pos[rows, labels] + margin).mean()
