"""Greedy k-center (Sener & Savarese, 2018) without an N x L distance matrix.

The textbook algorithm keeps, for every candidate, the distance to its
nearest centre, and repeatedly takes the farthest candidate. Only that
length-N vector is kept: the initial distances to the L labelled points are
computed in blocks bounded by ``working_bytes``, and each new centre updates
the vector in O(N d). Memory is O(N + block), never O(N L) or O(N^2).
"""

from __future__ import annotations

import numpy as np

from methods.core.devices import pick_device

from ._torch import as_tensor, rows_per_chunk


def _min_sq_dist(x, centres, working_bytes: int):
    """Squared distance from every row of ``x`` to its nearest row of ``centres``, block by block."""
    import torch

    out = torch.full((len(x),), float("inf"), device=x.device)
    if len(centres) == 0:
        return out
    c_norm = (centres * centres).sum(1)
    step_c = min(len(centres), 4096)
    step_x = rows_per_chunk(step_c, working_bytes)  # one block is step_x x step_c floats
    for cs in range(0, len(centres), step_c):
        c, cn = centres[cs: cs + step_c], c_norm[cs: cs + step_c]
        for xs in range(0, len(x), step_x):
            xb = x[xs: xs + step_x]
            d = (xb * xb).sum(1, keepdim=True) - 2 * xb @ c.T + cn[None, :]
            out[xs: xs + step_x] = torch.minimum(out[xs: xs + step_x], d.min(1).values)
    return out.clamp_min_(0)


def greedy_k_center(features: np.ndarray, candidates: np.ndarray, labelled: np.ndarray, budget: int,
                    rng: np.random.Generator, working_bytes: int = 256 << 20, device: str | None = None,
                    chunk: int = 262144) -> np.ndarray:
    """Pick ``budget`` candidates, each the farthest (Euclidean) from all labelled and picked points.

    With no labelled point the first pick is uniform at random (every distance
    is infinite), as in scikit-activeml. Candidate features are moved to the
    device in chunks of ``chunk`` rows so a million-row pool fits a GPU.
    """
    import torch

    device = pick_device(device)
    candidates = np.asarray(candidates, dtype=np.int64)
    if budget > len(candidates):
        raise ValueError(f"coreset: budget {budget} exceeds the {len(candidates)} unlabelled candidates")
    centres = as_tensor(features[np.asarray(labelled, dtype=np.int64)], device)
    parts = [as_tensor(features[candidates[s: s + chunk]], device) for s in range(0, len(candidates), chunk)]
    dist = torch.cat([_min_sq_dist(p, centres, working_bytes) for p in parts])
    part_norms = [(p * p).sum(1) for p in parts]
    picked = np.empty(budget, dtype=np.int64)
    for k in range(budget):
        if torch.isinf(dist).all():
            j = int(rng.integers(len(candidates)))
        else:
            j = int(torch.argmax(dist))
        picked[k] = j
        new = as_tensor(np.asarray(features[candidates[j]])[None, :], device)[0]
        new_norm = new @ new
        start = 0
        for p, p_norm in zip(parts, part_norms):
            # ||p - new||^2 without an N x d temporary: one matrix-vector product per pick
            d = (p @ new).mul_(-2).add_(p_norm).add_(new_norm).clamp_min_(0)
            view = dist[start: start + len(p)]
            torch.minimum(view, d, out=view)
            start += len(p)
        dist[j] = -1.0  # never pick twice
    return candidates[picked]
