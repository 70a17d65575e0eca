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
import warnings

import numpy as np

from methods.core.devices import pick_device

from ._torch import as_tensor


def gradient_factors(probs: np.ndarray) -> np.ndarray:
    """``a = p - onehot(argmax p)``: the class factor of each point's gradient embedding."""
    a = np.array(probs, dtype=np.float32, copy=True)
    a[np.arange(len(a)), a.argmax(1)] -= 1.0
    return a


def factorised_sq_dist(a, h, b, q, row_norms=None):
    """Squared distances between rows ``a (x) h`` and one embedding ``b (x) q`` (torch tensors).

    ``row_norms`` (``||a||^2 ||h||^2`` per row) may be passed in when many
    centres are compared against the same rows.
    """
    if row_norms is None:
        row_norms = (a * a).sum(1) * (h * h).sum(1)
    return (row_norms - 2 * (a @ b) * (h @ q) + (b @ b) * (q @ q)).clamp_min(0)


def _pool_tensor(array, device: str, chunk: int = 65536):
    """All rows of ``array`` as a float32 tensor on ``device``: a zero-copy view of a float32 array on the
    CPU (memory-mapped or in the object store), else filled chunk by chunk so no second host copy exists
    (lazy views, GPUs)."""
    import torch

    if device == "cpu" and isinstance(array, np.ndarray) and array.dtype == np.float32 and array.ndim == 2:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.as_tensor(array)  # read-only use only
    n = array.shape[0]
    out = torch.empty((n, array.shape[1]), dtype=torch.float32, device=device)
    for s in range(0, n, chunk):
        out[s: s + chunk] = as_tensor(array[np.arange(s, min(n, s + chunk))], device)  # row ids: lazy views too
    return out


def _gradient_norms(p, h, chunk: int = 65536):
    """Per row: ``argmax p``, and ``||a||^2 ||h||^2`` with ``a = p - onehot(argmax p)``, without an N x C temporary."""
    import torch

    top = torch.empty(len(p), dtype=torch.int64, device=p.device)
    norms = torch.empty(len(p), dtype=p.dtype, device=p.device)
    for s in range(0, len(p), chunk):
        pb, hb = p[s: s + chunk], h[s: s + chunk]
        peak, top[s: s + chunk] = pb.max(1)
        norms[s: s + chunk] = ((pb * pb).sum(1) - 2 * peak + 1) * (hb * hb).sum(1)
    return top, norms


def _dist_to_centres(p, h, top, norms, centres, chunk: int = 65536):
    """Squared gradient-embedding distance of every row to the nearest of ``centres`` (row ids), in row chunks.

    ``a_i . a_j = p_i . a_j - a_j[argmax p_i]`` lets the rows' class factors be
    read from ``p`` itself, so no N x C copy of ``a`` is ever made.
    """
    import torch

    idx = torch.as_tensor(centres, device=p.device)
    ca = p[idx].clone()
    ca[torch.arange(len(idx), device=p.device), top[idx]] -= 1.0
    ch = h[idx]
    out = torch.empty(len(p), dtype=p.dtype, device=p.device)
    for s in range(0, len(p), chunk):
        pb, tb = p[s: s + chunk], top[s: s + chunk]
        a_dot = pb @ ca.T - ca.T[tb]  # (rows, centres)
        cross = a_dot * (h[s: s + chunk] @ ch.T)
        out[s: s + chunk] = (norms[s: s + chunk, None] - 2 * cross + norms[idx][None, :]).clamp_min(0).amin(1)
    return out


def badge_kmeanspp(probs: np.ndarray, embeddings: np.ndarray, candidates: np.ndarray, budget: int,
                   rng: np.random.Generator, device: str | None = None, max_passes: int | None = None) -> np.ndarray:
    """k-means++ seeding over the gradient embeddings of ``candidates``.

    As in the authors' code, the first centre is the candidate with the
    largest gradient norm; each next one is drawn with probability
    proportional to its squared distance to the nearest chosen centre (D^2
    sampling, from ``rng``). Distances are kept for every pool row, read in
    place from ``probs`` and ``embeddings`` (no copy of either on the CPU),
    and only candidates are drawn.

    Every draw needs a pass over the pool, which is memory-bound: a few
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
    p, h = _pool_tensor(probs, device), _pool_tensor(embeddings, device)
    top, norms = _gradient_norms(p, h)
    cand_norms = norms[candidates].cpu().numpy()
    picked = [int(np.argmax(cand_norms))]  # positions in ``candidates``
    dist = _dist_to_centres(p, h, top, norms, candidates[picked])
    per_pass = 1 if max_passes is None else max(1, math.ceil((budget - 1) / max_passes))
    while len(picked) < budget:
        weights = dist[candidates].double().cpu().numpy()
        weights[picked] = 0.0
        new = _d2_draws(weights, min(per_pass, budget - len(picked)), picked, rng)
        picked.extend(new)
        dist = torch.minimum(dist, _dist_to_centres(p, h, top, norms, candidates[new]))
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
