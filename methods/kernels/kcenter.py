"""Greedy k-center (Sener & Savarese, 2018) without an N x L distance matrix or a copy of the pool.

The textbook algorithm keeps, for every candidate, the distance to its
nearest centre, takes the farthest candidate, and updates all N distances
against the new centre: one pass over the N x d features per pick, which is
memory-bound (2.6 GB a pick at ImageNet scale).

Here every stored distance is an *upper bound*, and the picks are resolved
lazily and exactly:

1. Each candidate's distance to the L labelled points is bounded from above
   (``bound``):

   * ``cells`` (default): the labelled points are grouped into about
     2 sqrt(L) cells by a k-means, and a candidate is compared with the
     points of the cell nearest to it only (each labelled point sits in its
     two nearest cells): a distance to any labelled point bounds the
     distance to the nearest one, and on clustered features the nearest one
     is nearly always in the candidate's cell (99 % of candidates at the
     benchmark's 20K). O(N (2 sqrt(L) + sqrt(L)) d) work instead of
     O(N L d): at 1.28 M rows and 10,000 labelled points, 300 distances
     per candidate instead of 10,000.
   * ``dense``: all L distances, block by block from the features in place
     (float32 on ``device``; on a CPU with native bfloat16 products,
     AVX512-BF16 or AMX, one bfloat16 product, ``prefilter``).

   Either way the worst case of the rounding error is added
   (``float32_margin``, ``bf16_margin``: inputs and outputs rounded,
   accumulation over d terms; the measured bfloat16 error is under a tenth
   of its margin, test).
2. Candidates are taken largest bound first (a sorted array for those never
   refreshed, a heap for the others). One that is stale -- not yet exact
   for every centre -- is computed in float64 against the centres it has
   not been exact for (all of them the first time) and put back. The
   first up-to-date candidate at the top is the farthest point: its
   distance is exact and no other candidate's true distance exceeds its
   bound. Bounds only decrease as picks are added, so they stay valid.

The picks are therefore those of the float64 textbook algorithm, near-ties
included (ties go to the lowest row, as ``argmax`` does), whichever bound
is used, while only the candidates near the top of the order are ever
refreshed (about 1,000 of 19,000 over 100 picks at the benchmark's 20K).
If one pick would refresh more than ``1 / DENSE_FRACTION`` of the pool, the
bounds are instead tightened in one dense float32 pass. ``prefilter="none"``
(and a GPU, whose float32 is fast and whose bfloat16 reductions may run in
reduced precision) uses float32 for the dense bound.

Memory: O(N) (bound, refresh counter, order) plus one block; nothing of
size N x d is copied.
"""

from __future__ import annotations

import heapq
from typing import Literal

import numpy as np

from methods.core.devices import pick_device

from ._torch import as_tensor, rows_per_chunk
from .lowp import (BF16_UNIT, FLOAT32_UNIT, augment_rows, augment_targets, cpu_has_native_bf16,
                   float32_margin, sq_norms)

#: A pick that would refresh more than len(pool) / DENSE_FRACTION candidates refreshes them all at once.
DENSE_FRACTION = 8
#: Most stale candidates refreshed together (one small matrix product instead of one per row); a pick
#: starts with one and doubles while the top stays stale.
REFRESH_BATCH = 64
#: Bytes of one block of distances: small enough to stay in cache between the product and its minimum.
CACHE_BYTES = 2 << 20
#: Cells each labelled point joins for the cell bounds (see ``_cell_upper_bound``).
CELL_PROBES = 2
#: Fewer labelled points than this are bounded densely (module docstring).
MIN_CELL_POINTS = 64


def bf16_margin(dim: int) -> float:
    """Worst-case error of a bfloat16 squared distance ``||x||^2 + ||c||^2 - 2 x.c``, per unit of
    ``||x|| ||c||``: twice the dot product's -- 2u + u^2 from rounding both inputs, 2u from its
    output even if truncated, and float32 accumulation over ``dim`` terms."""
    return 2 * (4 * BF16_UNIT + 2 * BF16_UNIT ** 2 + dim * FLOAT32_UNIT * (1 + BF16_UNIT) ** 2)


def _blocks(features: np.ndarray, rows: np.ndarray, step: int):
    """``(start, stop, float32 block of features[rows[start:stop]])``, ``step`` rows at a time.

    When ``rows`` are most of the pool the blocks are contiguous slices (no
    gather), computed for every row and the others dropped by the caller via
    the returned positions.
    """
    if len(rows) * 2 < len(features):
        for s in range(0, len(rows), step):
            yield s, min(len(rows), s + step), np.asarray(features[rows[s: s + step]], dtype=np.float32)
        return
    for s in range(0, len(features), step):
        yield s, min(len(features), s + step), np.asarray(features[s: s + step], dtype=np.float32)


def _per_row(features: np.ndarray, rows: np.ndarray, step: int, block_fn) -> np.ndarray:
    """``block_fn(block)`` for every block of :func:`_blocks`, gathered back to the order of ``rows``."""
    gathered = len(rows) * 2 < len(features)
    out = np.empty(len(rows) if gathered else len(features), dtype=np.float32)
    for s, e, block in _blocks(features, rows, step):
        out[s:e] = block_fn(block)
    return out if gathered else out[rows]


def _min_sq_dist(x, centres, working_bytes: int, x_norm=None):
    """Squared distance from every row of ``x`` to its nearest row of ``centres``, block by block.

    ``||x||^2`` (``x_norm`` if the caller has it) is added after the minimum
    over centres (rounding is monotone, so the result is the same) and each
    block is one ``addmm``.
    """
    import torch

    out = torch.full((len(x),), float("inf"), device=x.device)
    if len(centres) == 0:
        return out
    c_norm = (centres * centres).sum(1)
    step_c = min(len(centres), 4096)
    step_x = rows_per_chunk(step_c, min(working_bytes, CACHE_BYTES))  # one block is step_x x step_c floats
    for cs in range(0, len(centres), step_c):
        c, cn = centres[cs: cs + step_c], c_norm[cs: cs + step_c]
        for xs in range(0, len(x), step_x):
            d = torch.addmm(cn, x[xs: xs + step_x], c.T, alpha=-2)  # ||c||^2 - 2 x.c
            torch.minimum(out[xs: xs + step_x], d.min(1).values, out=out[xs: xs + step_x])
    return out.add_((x * x).sum(1) if x_norm is None else x_norm).clamp_min_(0)


def _float32_upper_bound(features: np.ndarray, rows: np.ndarray, centres: np.ndarray, working_bytes: int,
                         device: str) -> np.ndarray:
    """Upper bounds on each ``features[rows]``'s squared distance to its nearest centre: the float32
    distance on ``device`` plus its worst-case rounding error."""
    centre_t = as_tensor(centres, device)
    c_max = float((centre_t * centre_t).sum(1).max().sqrt())
    margin = float32_margin(features.shape[1])

    def bound(block: np.ndarray) -> np.ndarray:
        x = as_tensor(block, device)
        x_norm = (x * x).sum(1)
        slack = (x_norm.sqrt() + c_max).square_().mul_(margin)
        return _min_sq_dist(x, centre_t, working_bytes, x_norm).add_(slack).cpu().numpy()

    return _per_row(features, rows, rows_per_chunk(features.shape[1], working_bytes), bound)


def _bf16_upper_bound(features: np.ndarray, rows: np.ndarray, centres: np.ndarray, working_bytes: int) -> np.ndarray:
    """Upper bounds like :func:`_float32_upper_bound`'s from a bfloat16 product (CPU): about 6x faster
    where the CPU has native bfloat16, and looser (``bf16_margin``), so more candidates get refreshed."""
    import torch

    c = as_tensor(centres, "cpu")
    c_norm = (c * c).sum(1)
    c_bf16, c_max = c.bfloat16(), float(c_norm.max().sqrt())
    margin = bf16_margin(features.shape[1])
    step_c = min(len(centres), 4096)

    def bound(block: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(block)
        x_norm = (x * x).sum(1)
        x_bf16 = x.bfloat16()
        near = torch.full((len(x),), float("inf"))
        for cs in range(0, len(c), step_c):
            d = c_norm[None, cs: cs + step_c] - 2 * (x_bf16 @ c_bf16[cs: cs + step_c].T).float()
            near = torch.minimum(near, d.min(1).values)
        slack = margin * x_norm.sqrt() * c_max + 1e-5 * (x_norm + c_max * c_max)  # + float32 rounding here
        return (near + x_norm + slack).clamp_min_(0).numpy()

    return _per_row(features, rows, rows_per_chunk(step_c, min(working_bytes, CACHE_BYTES)), bound)


def _cell_upper_bound(features: np.ndarray, rows: np.ndarray, centres: np.ndarray, working_bytes: int,
                      device: str, bf16: bool = False, cells: int | None = None,
                      probes: int = CELL_PROBES) -> np.ndarray:
    """Upper bounds on each ``features[rows]``'s squared distance to its nearest centre, from the centres of
    its own cell only.

    The centres are clustered into ``cells`` (default ``2 sqrt(len(centres))``)
    groups by a short k-means with a fixed seed (it only decides speed, never
    picks); each centre joins the ``probes`` cells nearest to it, each row
    the one nearest to it, and the row is compared with that cell's centres
    alone: about ``probes * len(centres) / cells`` of them instead of all. A
    distance to *any* centre bounds the distance to the nearest from above,
    so the bound stays valid (plus the float32 margin); it is tight for rows
    whose nearest centre shares their cell, which on clustered features is
    nearly all, and the lazy picks refresh the others. With ``bf16`` the
    rows find their cell with a bfloat16 product (any cell gives a valid
    bound); the distances in the cell stay float32, whose margin is a
    hundred times tighter (bfloat16 there refreshed 2.7x more candidates and
    was no faster, the products being small).
    """
    from .clustering import kmeans

    cells = cells or max(1, int(round(2 * np.sqrt(len(centres)))))
    centroids = kmeans(centres, cells, seed=0, niter=4, init="random", device=device)[0]
    joined = _nearest_cells(as_tensor(centres, device), as_tensor(centroids, device), min(probes, len(centroids)))
    members = [np.flatnonzero((joined == c).any(1).cpu().numpy()) for c in range(len(centroids))]
    return _per_row(features, rows, rows_per_chunk(features.shape[1], working_bytes),
                    _CellBound(centres, centroids, members, device, bf16))


def _nearest_cells(x, centroids, probes: int):
    """Per row of ``x``, the ids of its ``probes`` nearest ``centroids`` (float32 tensors)."""
    import torch

    d = sq_norms(centroids)[None, :] - 2 * x @ centroids.T
    return torch.topk(d, probes, dim=1, largest=False).indices


def _cell_runs(cell, count: int):
    """``(cell id, positions of the rows in it)`` for every cell that has rows."""
    import torch

    order = torch.argsort(cell)
    edges = torch.searchsorted(cell[order], torch.arange(count + 1, device=cell.device)).tolist()
    for c in range(count):
        if edges[c + 1] > edges[c]:
            yield c, order[edges[c]: edges[c + 1]]


class _CellBound:
    """:func:`_cell_upper_bound` for one block of rows, in float32 on ``device``."""

    def __init__(self, centres, centroids, members, device, bf16: bool):
        import torch

        self.centres, self.centroids = as_tensor(centres, device), as_tensor(centroids, device)
        self.c_norm, self.g_norm = sq_norms(self.centres), sq_norms(self.centroids)
        self.members = [torch.as_tensor(m, device=device) for m in members]
        self.c_max = float(self.c_norm.max().sqrt())
        self.margin = float32_margin(self.centres.shape[1])
        self.device = device
        self.bf16_centroids = augment_targets(self.centroids)[0] if bf16 else None

    def _cells(self, x):
        if self.bf16_centroids is not None:
            return (augment_rows(x)[0] @ self.bf16_centroids.T).argmin(1)
        return (self.g_norm[None, :] - 2 * x @ self.centroids.T).argmin(1)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        import torch

        x = as_tensor(block, self.device)
        x_norm = sq_norms(x)
        near = torch.empty(len(x), device=self.device)
        for c, mine in _cell_runs(self._cells(x), len(self.members)):
            own = self.members[c]
            near[mine] = torch.addmm(self.c_norm[own][None, :], x[mine], self.centres[own].T, alpha=-2).min(1).values
        slack = (x_norm.sqrt() + self.c_max).square_().mul_(self.margin)
        return near.add_(x_norm).clamp_min_(0).add_(slack).cpu().numpy()


class _LazyFarthest:
    """Candidates ordered by an upper bound on their squared distance to the nearest centre.

    ``centres`` starts with the labelled points, then the picks. ``seen``
    counts the centres a candidate's bound is *exact* for; it starts at 0
    (the initial bounds carry rounding margins), so a candidate that reaches
    the top is computed once in float64 against every centre, and afterwards
    only against the new ones: the picks are those of the float64 textbook
    algorithm, near-ties included.
    """

    def __init__(self, features: np.ndarray, rows: np.ndarray, bound: np.ndarray, labelled_centres: np.ndarray,
                 budget: int, working_bytes: int, device: str):
        self.features, self.rows = features, rows
        self.bound = bound.astype(np.float64)  # refreshed values are float64: near-ties break as in float64
        self.working_bytes, self.device = working_bytes, device
        self.seen = np.zeros(len(rows), dtype=np.int32)  # how many centres each bound is exact for
        self.taken = np.zeros(len(rows), dtype=bool)
        self.count = len(labelled_centres)  # centres so far: the labelled points, then the picks
        self.centres = np.empty((self.count + budget, features.shape[1]), dtype=np.float64)
        self.centres[: self.count] = labelled_centres
        self.centre_norms = np.empty(len(self.centres), dtype=np.float64)
        self.centre_norms[: self.count] = (self.centres[: self.count] ** 2).sum(1)
        self._reorder()

    def _reorder(self) -> None:
        self.order = np.argsort(-self.bound, kind="stable")  # never-refreshed candidates, largest bound first
        self.cursor = 0
        self.heap: list[tuple[float, int]] = []  # (-bound, candidate) of refreshed candidates

    def add_centre(self, j: int) -> None:
        self.taken[j] = True
        row = np.asarray(self.features[self.rows[j]], dtype=np.float64)
        self.centres[self.count] = row
        self.centre_norms[self.count] = row @ row
        self.count += 1

    def _peek(self) -> tuple[float, int] | None:
        while self.cursor < len(self.order) and self.taken[self.order[self.cursor]]:
            self.cursor += 1
        untouched = None
        if self.cursor < len(self.order):
            j = int(self.order[self.cursor])
            untouched = (-float(self.bound[j]), j)
        if self.heap and (untouched is None or self.heap[0] < untouched):
            return self.heap[0]
        return untouched

    def _pop(self) -> int:
        top = self._peek()
        if self.heap and top == self.heap[0]:
            heapq.heappop(self.heap)
        else:
            self.cursor += 1
        return top[1]

    def farthest(self) -> int:
        """Take the untaken candidate farthest from every centre (lowest index among ties)."""
        refreshed, batch, dense_done = 0, 1, False
        while True:
            top = self._peek()
            if top is None:
                raise ValueError("coreset: no candidate left")
            if self.seen[top[1]] == self.count:
                return self._pop()
            if not dense_done and (refreshed > len(self.rows) // DENSE_FRACTION or not np.isfinite(top[0])):
                self._refresh_all()
                dense_done = True  # its bounds are tight; the few at the top are now refreshed exactly
                continue
            stale = []
            while len(stale) < batch and (top := self._peek()) is not None and self.seen[top[1]] < self.count:
                stale.append(self._pop())
            self._refresh(np.asarray(stale, dtype=np.int64))
            refreshed, batch = refreshed + len(stale), min(2 * batch, REFRESH_BATCH)

    def _refresh(self, stale: np.ndarray) -> None:
        """Bring ``stale`` up to date against the centres they have not seen and put them back.

        The float64 product runs in torch: numpy's BLAS has a thread pool of its own, whose threads keep
        spinning after each call and halved the speed of the next torch products on two cores.
        """
        import torch

        for first in np.unique(self.seen[stale]).tolist():
            group = stale[self.seen[stale] == first]
            x = np.asarray(self.features[self.rows[group]], dtype=np.float64)
            d = (torch.from_numpy(x) @ torch.from_numpy(self.centres[first: self.count]).T).numpy() * -2.0
            d += (x * x).sum(1, keepdims=True)
            d += self.centre_norms[None, first: self.count]
            self.bound[group] = np.minimum(self.bound[group], np.maximum(d.min(1), 0))
        self.seen[stale] = self.count
        for j in stale.tolist():
            heapq.heappush(self.heap, (-float(self.bound[j]), j))

    def _refresh_all(self) -> None:
        """Every bound tightened in one blocked float32 pass against every centre (when lazy refreshing
        would touch most of the pool); the bounds keep their margin, so ``seen`` restarts at 0."""
        open_rows = np.flatnonzero(~self.taken)
        fresh = _float32_upper_bound(self.features, self.rows[open_rows], self.centres[: self.count],
                                     self.working_bytes, self.device)
        self.bound[open_rows] = np.minimum(self.bound[open_rows], fresh)
        self.seen[:] = 0
        self._reorder()


def greedy_k_center(features: np.ndarray, candidates: np.ndarray, labelled: np.ndarray, budget: int,
                    rng: np.random.Generator, working_bytes: int = 256 << 20, device: str | None = None,
                    prefilter: Literal["auto", "bf16", "none"] = "auto",
                    bound: Literal["cells", "dense"] = "cells") -> np.ndarray:
    """Pick ``budget`` candidates, each the farthest (Euclidean) from all labelled and picked points.

    With no labelled point the first pick is uniform at random (every distance
    is infinite), as in scikit-activeml. The distances to the labelled points
    run on ``device`` (CUDA when present), one block of candidate rows at a
    time, so a million-row pool fits a GPU; the lazy picks run on the CPU.
    ``bound`` and ``prefilter`` choose how the distances to the labelled
    points are first bounded (module docstring); the picks are the same
    whichever is chosen. Fewer than ``MIN_CELL_POINTS`` labelled points are
    bounded densely: too few to be worth grouping.
    """
    device = pick_device(device)
    candidates = np.asarray(candidates, dtype=np.int64)
    if budget > len(candidates):
        raise ValueError(f"coreset: budget {budget} exceeds the {len(candidates)} unlabelled candidates")
    if prefilter not in ("auto", "bf16", "none"):
        raise ValueError(f"coreset: prefilter must be 'auto', 'bf16' or 'none', got {prefilter!r}")
    if bound not in ("cells", "dense"):
        raise ValueError(f"coreset: bound must be 'cells' or 'dense', got {bound!r}")
    labelled = np.asarray(labelled, dtype=np.int64)
    centres = np.asarray(features[labelled], dtype=np.float32).reshape(len(labelled), features.shape[1])
    bf16 = prefilter == "bf16" or (prefilter == "auto" and device == "cpu" and cpu_has_native_bf16())
    if len(labelled) == 0:
        upper = np.full(len(candidates), np.inf, dtype=np.float32)
    elif bound == "cells" and len(labelled) >= MIN_CELL_POINTS:
        upper = _cell_upper_bound(features, candidates, centres, working_bytes, device, bf16)
    elif bf16:
        upper = _bf16_upper_bound(features, candidates, centres, working_bytes)
    else:
        upper = _float32_upper_bound(features, candidates, centres, working_bytes, device)
    lazy = _LazyFarthest(features, candidates, upper, centres, budget, working_bytes, device)
    picked = np.empty(budget, dtype=np.int64)
    for k in range(budget):
        j = int(rng.integers(len(candidates))) if len(labelled) == 0 and k == 0 else lazy.farthest()
        lazy.add_centre(j)
        picked[k] = j
    return candidates[picked]
