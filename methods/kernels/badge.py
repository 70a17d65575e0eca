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

import math

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
                   rng: np.random.Generator, device: str | None = None, max_passes: int | None = None) -> np.ndarray:
    """k-means++ seeding over the gradient embeddings of ``candidates``.

    As in the authors' code, the first centre is the point with the largest
    gradient norm; each next one is drawn with probability proportional to its
    squared distance to the nearest chosen centre (D^2 sampling, from ``rng``).

    Every draw needs a pass over all candidates, which is memory-bound: a few
    thousand centres over 10^5+ rows (PCB's candidate sets) take minutes.
    With ``max_passes`` and more than ``max_passes`` draws to make, each pass
    draws ``ceil((budget - 1) / max_passes)`` centres at once from the current
    D^2 distribution (without replacement, Efraimidis-Spirakis keys) and
    updates distances with one matrix product -- the oversampling of
    k-means|| (Bahmani et al., VLDB 2012). Fewer draws than that stay exact.
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
    per_pass = 1 if max_passes is None else max(1, math.ceil((budget - 1) / max_passes))
    while len(picked) < budget:
        weights = dist.double().cpu().numpy()
        weights[picked] = 0.0
        take = min(per_pass, budget - len(picked))
        new = _d2_draws(weights, take, picked, rng)
        picked.extend(new)
        if take == 1:
            dist = torch.minimum(dist, factorised_sq_dist(a, h, a[new[0]], h[new[0]], norms))
        else:
            dist = torch.minimum(dist, _min_factorised_sq_dist(a, h, norms, new))
    return candidates[np.asarray(picked)]


def _d2_draws(weights: np.ndarray, take: int, picked: list[int], rng: np.random.Generator) -> list[int]:
    """``take`` distinct rows drawn proportionally to ``weights``; uniform among the unpicked if all are 0."""
    total = weights.sum()
    if take == 1:  # the exact k-means++ step, kept draw-for-draw identical to the published rule
        if total > 0:
            return [int(rng.choice(len(weights), p=weights / total))]
        return [int(rng.choice(np.setdiff1d(np.arange(len(weights)), picked)))]
    positive = np.flatnonzero(weights > 0)
    if len(positive) <= take:
        rest = np.setdiff1d(np.setdiff1d(np.arange(len(weights)), picked), positive)
        return positive.tolist() + rng.choice(rest, size=take - len(positive), replace=False).tolist()
    keys = np.log(rng.random(len(positive))) / weights[positive]  # Efraimidis-Spirakis: the largest keys win
    return positive[np.argpartition(keys, -take)[-take:]].tolist()


def _min_factorised_sq_dist(a, h, norms, centres: list[int], chunk: int = 65536):
    """Squared distance of every row to the nearest of ``centres`` (rows of ``a (x) h``), in row chunks."""
    import torch

    idx = torch.as_tensor(centres, device=a.device)
    ca, ch = a[idx], h[idx]
    centre_norms = (ca * ca).sum(1) * (ch * ch).sum(1)
    out = torch.empty(len(a), dtype=a.dtype, device=a.device)
    for s in range(0, len(a), chunk):
        cross = (a[s: s + chunk] @ ca.T) * (h[s: s + chunk] @ ch.T)
        out[s: s + chunk] = (norms[s: s + chunk, None] - 2 * cross + centre_norms[None, :]).clamp_min(0).amin(1)
    return out


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
