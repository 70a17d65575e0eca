"""BADGE (Ash et al., ICLR 2020) in factorised form: no N x (C d) gradient embedding.

The last-layer gradient embedding of a point is the outer product
``g = a (x) h`` of ``a = p - onehot(argmax p)`` (C values) and the
penultimate embedding ``h`` (d values). Squared distances between two such
embeddings factorise:

    ||a (x) h - b (x) q||^2 = ||a||^2 ||h||^2 - 2 (a . b)(h . q) + ||b||^2 ||q||^2

so k-means++ seeding needs O(N (C + d)) work per centre and O(N) memory,
instead of materialising N x C x d floats (terabytes for ImageNet).
"""

from __future__ import annotations

import numpy as np

from orchestrator.encoders import pick_device

from ._torch import as_tensor


def gradient_factors(probs: np.ndarray) -> np.ndarray:
    """``a = p - onehot(argmax p)``: the class factor of each point's gradient embedding."""
    a = np.array(probs, dtype=np.float32, copy=True)
    a[np.arange(len(a)), a.argmax(1)] -= 1.0
    return a


def _rows_to_device(rows_of, candidates: np.ndarray, width: int, device: str, chunk: int = 65536):
    """A float32 (len(candidates), width) tensor filled chunk by chunk, so no second host copy exists."""
    import torch

    out = torch.empty((len(candidates), width), dtype=torch.float32, device=device)
    for s in range(0, len(candidates), chunk):
        out[s: s + chunk] = as_tensor(rows_of(candidates[s: s + chunk]), device)
    return out


def factorised_sq_dist(a, h, b, q, row_norms=None):
    """Squared distances between rows ``a (x) h`` and one embedding ``b (x) q`` (torch tensors).

    ``row_norms`` (``||a||^2 ||h||^2`` per row) may be passed in when many
    centres are compared against the same rows.
    """
    if row_norms is None:
        row_norms = (a * a).sum(1) * (h * h).sum(1)
    return (row_norms - 2 * (a @ b) * (h @ q) + (b @ b) * (q @ q)).clamp_min(0)


def badge_kmeanspp(probs: np.ndarray, embeddings: np.ndarray, candidates: np.ndarray, budget: int,
                   rng: np.random.Generator, device: str | None = None) -> np.ndarray:
    """k-means++ seeding over the gradient embeddings of ``candidates``.

    As in the authors' code, the first centre is the point with the largest
    gradient norm; each next one is drawn with probability proportional to its
    squared distance to the nearest chosen centre (D^2 sampling, from ``rng``).
    """
    import torch

    device = pick_device(device)
    candidates = np.asarray(candidates, dtype=np.int64)
    if budget > len(candidates):
        raise ValueError(f"badge: budget {budget} exceeds the {len(candidates)} unlabelled candidates")
    a = _rows_to_device(lambda r: gradient_factors(probs[r]), candidates, probs.shape[1], device)
    h = _rows_to_device(lambda r: embeddings[r], candidates, embeddings.shape[1], device)
    norms = (a * a).sum(1) * (h * h).sum(1)
    first = int(torch.argmax(norms))
    picked = [first]
    dist = factorised_sq_dist(a, h, a[first], h[first], norms)
    for _ in range(budget - 1):
        weights = dist.double().cpu().numpy()
        weights[picked] = 0.0
        total = weights.sum()
        j = int(rng.choice(len(weights), p=weights / total)) if total > 0 else \
            int(rng.choice(np.setdiff1d(np.arange(len(weights)), picked)))
        picked.append(j)
        dist = torch.minimum(dist, factorised_sq_dist(a, h, a[j], h[j], norms))
    return candidates[np.asarray(picked)]


def kmeanspp_potential(probs: np.ndarray, embeddings: np.ndarray, rows: np.ndarray, centres: np.ndarray) -> float:
    """Sum over ``rows`` of the squared gradient-space distance to the nearest of ``centres``."""
    import torch

    a = as_tensor(gradient_factors(probs[rows]), "cpu")
    h = as_tensor(embeddings[rows], "cpu")
    ca = as_tensor(gradient_factors(probs[centres]), "cpu")
    ch = as_tensor(embeddings[centres], "cpu")
    norms = (a * a).sum(1) * (h * h).sum(1)
    best = torch.full((len(rows),), float("inf"))
    for k in range(len(centres)):
        best = torch.minimum(best, factorised_sq_dist(a, h, ca[k], ch[k], norms))
    return float(best.sum())
