"""BADGE (Ash et al., ICLR 2020) in factorised form: no N x (C d) gradient embedding.

The last-layer gradient embedding of a point is the outer product
``g = a (x) h`` of ``a = p - onehot(argmax p)`` (C values) and the
penultimate embedding ``h`` (d values). Squared distances between two such
embeddings factorise:

    ||a (x) h - b (x) q||^2 = ||a||^2 ||h||^2 - 2 (a . b)(h . q) + ||b||^2 ||q||^2

so k-means++ seeding needs O(N (C + d)) work per pass over the pool and O(N)
memory, instead of materialising N x C x d floats (terabytes for ImageNet).
The textbook seeding makes one pass per centre; drawing by rejection
(:class:`_RejectionD2`) makes one per batch of centres, at the same law.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

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


def _centre_factors(p, h, top, norms, centres):
    """``(class factors, embeddings, gradient norms)`` of the pool rows ``centres``."""
    import torch

    idx = torch.as_tensor(np.asarray(centres, dtype=np.int64), device=p.device)
    ca = p[idx].clone()
    ca[torch.arange(len(idx), device=p.device), top[idx]] -= 1.0
    return ca, h[idx], norms[idx]


def _nearest_sq_dist(p, h, top, norms, ca, ch, c_norms, chunk: int = 65536):
    """Squared gradient-embedding distance of every row to the nearest centre given by its factors, in row chunks.

    ``a_i . a_j = p_i . a_j - a_j[argmax p_i]`` lets the rows' class factors be
    read from ``p`` itself, so no N x C copy of ``a`` is ever made.
    """
    import torch

    out = torch.empty(len(p), dtype=p.dtype, device=p.device)
    for s in range(0, len(p), chunk):
        pb, tb = p[s: s + chunk], top[s: s + chunk]
        a_dot = pb @ ca.T - ca.T[tb]  # (rows, centres)
        cross = a_dot * (h[s: s + chunk] @ ch.T)
        out[s: s + chunk] = (norms[s: s + chunk, None] - 2 * cross + c_norms[None, :]).clamp_min(0).amin(1)
    return out


def _dist_to_centres(p, h, top, norms, centres, chunk: int = 65536):
    """Squared gradient-embedding distance of every row to the nearest of ``centres`` (row ids)."""
    return _nearest_sq_dist(p, h, top, norms, *_centre_factors(p, h, top, norms, centres), chunk=chunk)


def badge_kmeanspp(probs: np.ndarray, embeddings: np.ndarray, candidates: np.ndarray, budget: int,
                   rng: np.random.Generator, device: str | None = None, max_passes: int | None = None,
                   sampling: Literal["rejection", "inverse_cdf"] = "rejection") -> np.ndarray:
    """k-means++ seeding over the gradient embeddings of ``candidates``.

    As in the authors' code, the first centre is the candidate with the
    largest gradient norm; each next one is drawn with probability
    proportional to its squared distance to the nearest chosen centre (D^2
    sampling, from ``rng``). Distances are kept for every pool row, read in
    place from ``probs`` and ``embeddings`` (no copy of either on the CPU),
    and only candidates are drawn.

    ``sampling`` says how each D^2 draw is made; both draw from the same
    distribution, from different random numbers:

    * ``inverse_cdf``: the textbook step, a pass over the pool per centre
      (memory-bound: 514 s for 1,000 centres at 1.28 M rows on two cores)
      and one ``rng.choice`` over the updated weights;
    * ``rejection`` (default): :class:`_RejectionD2`, which proposes from
      the weights of the last pass and accepts with the ratio of the current
      weight to that one, so a pass is needed only when too few proposals
      are accepted.

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
    if sampling not in ("rejection", "inverse_cdf"):
        raise ValueError(f"badge: sampling must be 'rejection' or 'inverse_cdf', got {sampling!r}")
    p, h = _pool_tensor(probs, device), _pool_tensor(embeddings, device)
    top, norms = _gradient_norms(p, h)
    cand_norms = norms[candidates].cpu().numpy()
    picked = [int(np.argmax(cand_norms))]  # positions in ``candidates``
    dist = _dist_to_centres(p, h, top, norms, candidates[picked])
    per_pass = 1 if max_passes is None else max(1, math.ceil((budget - 1) / max_passes))
    if per_pass == 1 and sampling == "rejection" and budget > 1:
        return candidates[_RejectionD2(p, h, top, norms, candidates, picked, dist).draw(budget, rng)]
    while len(picked) < budget:
        weights = dist[candidates].double().cpu().numpy()
        weights[picked] = 0.0
        new = _d2_draws(weights, min(per_pass, budget - len(picked)), picked, rng)
        picked.extend(new)
        dist = torch.minimum(dist, _dist_to_centres(p, h, top, norms, candidates[new]))
    return candidates[np.asarray(picked)]


class _RejectionD2:
    """Exact D^2 draws by rejection against the distances of the last pass over the pool.

    A pass leaves ``stale``: every candidate's squared distance to the
    centres known then. Centres added since (``pending``) only lower the
    distances, so ``stale`` bounds the current weights ``w`` from above:
    propose ``j`` with probability ``stale_j / sum(stale)``, compute its
    current weight ``w_j = min(stale_j, d^2(j, pending))`` (one row against
    at most ``MAX_PENDING`` centres), and accept with probability
    ``w_j / stale_j``. An accepted proposal is distributed exactly as
    ``w / sum(w)``, the textbook draw (rejection sampling; picked rows have
    ``w = 0``). Proposals are made ``PROPOSALS`` at a time and the first
    accepted one is taken, which is the same as making them one by one.

    A new pass (one matrix product against all pending centres) runs when
    fewer than ``1 / REFRESH_RATIO`` of the proposals since the last one
    were accepted, or ``MAX_PENDING`` centres are waiting. BADGE's potential
    falls slowly with its budgets, so the pool is read a few times instead
    of once per centre.
    """

    PROPOSALS = 4
    MAX_PENDING = 1024  # centres a proposal is compared with before a pass folds them into the distances
    REFRESH_RATIO = 4  # fewer acceptances than one per this many proposals: a pass is due
    MIN_PROPOSALS = 32  # proposals before the acceptance rate is trusted

    def __init__(self, p, h, top, norms, candidates: np.ndarray, picked: list[int], dist):
        import torch

        self.p, self.h, self.top, self.norms = p, h, top, norms
        self.candidates, self.picked, self.dist = candidates, list(picked), dist
        self.is_picked = np.zeros(len(candidates), bool)
        self.is_picked[self.picked] = True
        self.pending: list[int] = []
        self.pending_a = torch.empty((self.MAX_PENDING, p.shape[1]), dtype=p.dtype, device=p.device)
        self.pending_h = torch.empty((self.MAX_PENDING, h.shape[1]), dtype=h.dtype, device=h.device)
        self.pending_norms = torch.empty(self.MAX_PENDING, dtype=norms.dtype, device=norms.device)
        self._pass()

    def _pass(self) -> None:
        """Bring every distance up to date with the pending centres and restart the proposal distribution."""
        import torch

        if self.pending:
            self.dist = torch.minimum(self.dist, _dist_to_centres(self.p, self.h, self.top, self.norms,
                                                                  self.candidates[self.pending]))
        self.stale = self.dist[torch.as_tensor(self.candidates, device=self.dist.device)].double().cpu().numpy()
        self.stale[self.is_picked] = 0.0
        self.cumulative = np.cumsum(self.stale)
        self.pending = []
        self.proposed = self.accepted = 0

    def _current(self, js: np.ndarray) -> np.ndarray:
        """Current weights of the candidates at positions ``js``: stale ones lowered by the pending centres."""
        import torch

        w = self.stale[js].copy()
        k = len(self.pending)
        if k:
            rows = torch.as_tensor(self.candidates[js], device=self.p.device)
            nearest = _nearest_sq_dist(self.p[rows], self.h[rows], self.top[rows], self.norms[rows],
                                       self.pending_a[:k], self.pending_h[:k], self.pending_norms[:k])
            w = np.minimum(w, nearest.double().cpu().numpy())
        w[self.is_picked[js]] = 0.0
        return w

    def _add_pending(self, j: int) -> None:
        k, row = len(self.pending), int(self.candidates[j])
        self.pending_a[k] = self.p[row]
        self.pending_a[k, self.top[row]] -= 1.0
        self.pending_h[k] = self.h[row]
        self.pending_norms[k] = self.norms[row]
        self.pending.append(j)

    def _propose(self, rng: np.random.Generator) -> int | None:
        """One accepted candidate, or None when the acceptance rate says a new pass is due."""
        total = float(self.cumulative[-1])
        if total <= 0:  # every unpicked candidate sits on a centre: uniform among them, as the textbook
            return int(rng.choice(np.flatnonzero(~self.is_picked)))
        while True:
            js = np.searchsorted(self.cumulative, rng.random(self.PROPOSALS) * total, side="right")
            js = np.minimum(js, len(self.cumulative) - 1)
            accept = rng.random(self.PROPOSALS) * self.stale[js] < self._current(js)
            if accept.any():
                first = int(np.argmax(accept))
                self.proposed += first + 1
                self.accepted += 1
                return int(js[first])
            self.proposed += self.PROPOSALS
            if self.proposed >= self.MIN_PROPOSALS and self.proposed > self.REFRESH_RATIO * self.accepted:
                return None

    def draw(self, budget: int, rng: np.random.Generator) -> list[int]:
        """Draw until ``budget`` centres are picked; positions in ``candidates``, in pick order."""
        while len(self.picked) < budget:
            if len(self.pending) >= self.MAX_PENDING:
                self._pass()
            j = self._propose(rng)
            if j is None:
                self._pass()
                continue
            self.picked.append(j)
            self.is_picked[j] = True
            self._add_pending(j)
        return self.picked


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
