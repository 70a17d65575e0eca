"""k-means' distance products in bfloat16: the arithmetic of ``kmeans(..., precision="bfloat16")``.

Rows and centroids are rounded to bfloat16 (8 significant bits) and
multiplied with float32 accumulation into a bfloat16 product; a squared
distance is ``|x|^2 - 2 x.c + |c|^2`` with the float32 norms of the rounded
values. On a CPU with native bfloat16 (AVX512-BF16, AMX) the product runs at
2.5x the float32 rate and reads half the bytes, which is what k-means++
seeding (one pass over its rows per seed) is bound by.

Lloyd (:func:`lloyd`) is incremental past its first iterations, where a
handful of points change cluster per iteration (one, for several
iterations, on the acquisition benchmark): the whole ``|c|^2 - 2 x.c`` table
is kept when it fits ``working_bytes`` (:class:`DistanceTable`) and only the
columns of the centroids that moved are recomputed, and the cluster sums are
updated by the points that moved.
"""

from __future__ import annotations

import numpy as np

from ._torch import CACHE_BLOCK_BYTES, as_tensor, rows_per_chunk


def _sq_norms(values):
    """float32 squared row norms of a bfloat16 tensor, a block at a time (never a float32 copy of all of it)."""
    import torch

    out = torch.empty(len(values), device=values.device)
    step = rows_per_chunk(values.shape[1], CACHE_BLOCK_BYTES)
    for s in range(0, len(values), step):
        out[s: s + step] = torch.linalg.vector_norm(values[s: s + step].float(), dim=1).square_()
    return out


def _minus_2c(ct):
    """``(-2 c)^T`` rounded to bfloat16 (exactly -2 times the rounded ``c``: a power of two) and ``|c|^2`` of the
    rounded centroids."""
    cb = ct.bfloat16()
    return (cb * -2).T, _sq_norms(cb)


class Bf16Rows:
    """Rows rounded to bfloat16 once, with the squared norms of the rounded values."""

    def __init__(self, x, device: str):
        self.values = as_tensor(x, device).bfloat16()
        self.sq_norms = _sq_norms(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def sq_dist_to(self, rows):
        """``(len(rows), n)`` squared distances from ``rows`` to every row."""
        cross = (self.values[rows] @ self.values.T).float()
        return cross.mul_(-2).add_(self.sq_norms[None, :]).add_(self.sq_norms[rows][:, None]).clamp_min_(0)

    def sq_dist_to_row(self, j: int):
        return self.sq_dist_to([j])[0]

    def cross_terms(self, centroids, start: int, stop: int):
        """``|c|^2 - 2 x.c`` of rows ``start:stop`` against ``centroids``, a :func:`_minus_2c` pair."""
        minus_2c, c_norm = centroids
        return (self.values[start: stop] @ minus_2c).float().add_(c_norm[None, :])

    def assign(self, ct, working_bytes: int):
        """``(squared distance, index)`` of the nearest of the centroids ``ct`` for every row, block by block."""
        return self.nearest(_minus_2c(ct), working_bytes)

    def nearest(self, centroids, working_bytes: int):
        """:meth:`assign` against centroids already rounded (a :func:`_minus_2c` pair)."""
        import torch

        n, k = len(self.values), len(centroids[1])
        best_d = torch.empty(n, device=self.values.device)
        best_i = torch.empty(n, dtype=torch.int64, device=self.values.device)
        step = rows_per_chunk(k, min(working_bytes, CACHE_BLOCK_BYTES))
        for s in range(0, n, step):
            v, i = self.cross_terms(centroids, s, s + step).min(1)
            best_d[s: s + step] = v.add_(self.sq_norms[s: s + step]).clamp_min_(0)
            best_i[s: s + step] = i
        return best_d, best_i


class DistanceTable:
    """The ``(n, k)`` table of ``|c|^2 - 2 x.c`` across Lloyd iterations: :meth:`assign` recomputes the columns
    of the centroids that changed since its last call, all of them the first time."""

    def __init__(self, rows: Bf16Rows, k: int):
        import torch

        self.rows = rows
        self.table = torch.empty((len(rows), k), device=rows.values.device)
        self.centroids = None

    @staticmethod
    def fits(n: int, k: int, working_bytes: int) -> bool:
        return n * k * 4 <= working_bytes

    def assign(self, ct, working_bytes: int):
        import torch

        n = len(self.rows)
        if self.centroids is None:
            cols = None
        else:
            cols = torch.nonzero((ct != self.centroids).any(1)).flatten()
        step = rows_per_chunk(len(ct), min(working_bytes, CACHE_BLOCK_BYTES))
        if cols is None or len(cols) > len(ct) // 2:
            centroids = _minus_2c(ct)
            for s in range(0, n, step):
                self.table[s: s + step] = self.rows.cross_terms(centroids, s, s + step)
        elif len(cols):
            moved = _minus_2c(ct[cols])
            for s in range(0, n, step):
                self.table[s: s + step, cols] = self.rows.cross_terms(moved, s, s + step)
        self.centroids = ct.clone()
        v, i = self.table.min(1)
        return v.add_(self.rows.sq_norms).clamp_min_(0), i


class ClusterSums:
    """float64 (weighted) sums and counts of the rows of each cluster, updated by the rows that changed cluster
    (recounted, a block at a time summed in float32, when more than a quarter did)."""

    def __init__(self, xt, wt, k: int):
        self.xt, self.wt, self.k = xt, wt, k
        self.sums = self.counts = None

    def _rows(self, rows):
        """The rows (weighted), and their weights, in float64."""
        import torch

        x = self.xt[rows].double()
        if self.wt is None:
            return x, torch.ones(len(x), dtype=torch.float64, device=x.device)
        w = self.wt[rows].double()
        return x * w[:, None], w

    def update(self, a, previous) -> None:
        """Move to assignment ``a`` from ``previous`` (None: count every row afresh)."""
        import torch

        moved = None if previous is None else torch.nonzero(a != previous).flatten()
        if moved is None or len(moved) > len(a) // 4:
            self._recount(a)
            return
        step = rows_per_chunk(self.xt.shape[1], CACHE_BLOCK_BYTES, itemsize=8)
        for s in range(0, len(moved), step):
            block = moved[s: s + step]
            x, w = self._rows(block)
            self.sums.index_add_(0, a[block], x).index_add_(0, previous[block], x, alpha=-1)
            self.counts.index_add_(0, a[block], w).index_add_(0, previous[block], w, alpha=-1)

    def _recount(self, a) -> None:
        import torch

        xt, wt, k = self.xt, self.wt, self.k
        self.sums = torch.zeros((k, xt.shape[1]), dtype=torch.float64, device=xt.device)
        part = torch.empty((k, xt.shape[1]), device=xt.device)
        step = rows_per_chunk(xt.shape[1], CACHE_BLOCK_BYTES)
        for s in range(0, len(a), step):
            xb = xt[s: s + step] if wt is None else xt[s: s + step] * wt[s: s + step, None]
            self.sums += part.zero_().index_add_(0, a[s: s + step], xb)
        self.counts = torch.bincount(a, weights=None if wt is None else wt.double(), minlength=k).double()

    def means(self, d):
        """The centroids: each cluster's mean; an empty cluster takes the row farthest (``d``) from its centroid.
        Returns ``(centroids, whether a cluster was empty)``."""
        import torch

        empty = torch.nonzero(self.counts <= 0).flatten()
        new = (self.sums / self.counts.clamp_min(1e-30)[:, None]).float()
        if len(empty):
            new[empty] = self.xt[torch.argsort(d, descending=True)[: len(empty)]]
        return new, bool(len(empty))


#: Lloyd on bfloat16 products stops once at most this fraction of the rows changed cluster in an iteration.
SETTLED_FRACTION = 1e-3


def lloyd(x: np.ndarray, init: np.ndarray, niter: int, weights: np.ndarray | None, device: str,
          working_bytes: int, settled_fraction: float = SETTLED_FRACTION):
    """Up to ``niter`` Lloyd iterations on bfloat16 products: ``(centroids, assignment)``, the assignment that of
    the returned centroids if the last iteration settled, else None.

    An iteration has settled when no cluster was emptied and at most
    ``settled_fraction * n`` rows (rounded down: none below 1,000 rows)
    changed cluster. Exact Lloyd stops at a fixed point because its objective
    only decreases; with bfloat16 distances, a few rows within rounding of a
    tie can keep swapping clusters for good: 512,000 rows of the 1.28 M
    benchmark pool, K = 1,000 from random rows, changed 212,486, 66,689,
    5,486, 1,445, 276, 174, 132, 101, 67, 46, then between 23 and 72 rows
    per iteration up to the 20th. From k-means++ seeds there, stopping at
    1 in 1,000 (5 iterations, 9.1 s) instead of 1 in 10,000 (11, 19.4 s)
    changed the k-means potential by 7e-6 of itself.
    """
    import torch

    xt = as_tensor(x, device)
    ct = as_tensor(init, device).clone()
    wt = None if weights is None else torch.as_tensor(np.asarray(weights, np.float32), device=device)
    rows = Bf16Rows(x, device)
    nearest = DistanceTable(rows, len(ct)) if DistanceTable.fits(len(x), len(ct), working_bytes) else rows
    sums = ClusterSums(xt, wt, len(ct))
    previous, emptied, settled = None, False, int(settled_fraction * len(x))
    for _ in range(niter):
        d, a = nearest.assign(ct, working_bytes)
        if previous is not None and not emptied and int((a != previous).sum()) <= settled:
            return ct.cpu().numpy(), a.cpu().numpy()
        sums.update(a, previous)
        ct, emptied = sums.means(d)
        previous = a
    return ct.cpu().numpy(), None


def assign_rows(x: np.ndarray, ct, device: str, working_bytes: int):
    """:meth:`Bf16Rows.assign` of every row of ``x``, rounding one block of rows at a time (no bfloat16 copy
    of all of ``x``, which at 1.27 M x 512 is 1.3 GB)."""
    import torch

    d = torch.empty(len(x), device=device)
    i = torch.empty(len(x), dtype=torch.int64, device=device)
    centroids = _minus_2c(ct)  # rounded once, not per block of rows
    step = rows_per_chunk(x.shape[1], 8 * CACHE_BLOCK_BYTES)
    for s in range(0, len(x), step):
        d[s: s + step], i[s: s + step] = Bf16Rows(x[s: s + step], device).nearest(centroids, working_bytes)
    return d, i
