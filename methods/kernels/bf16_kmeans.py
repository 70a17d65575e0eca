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
    """float32 squared row norms of a bfloat16 tensor (no float32 copy of it)."""
    import torch

    return torch.linalg.vector_norm(values, dim=1, dtype=torch.float32).square_()


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

    def cross_terms(self, ct, start: int, stop: int):
        """``|c|^2 - 2 x.c`` of rows ``start:stop`` against the centroids ``ct``."""
        minus_2c, c_norm = _minus_2c(ct)
        return (self.values[start: stop] @ minus_2c).float().add_(c_norm[None, :])

    def assign(self, ct, working_bytes: int):
        """``(squared distance, index)`` of the nearest of the centroids ``ct`` for every row, block by block."""
        import torch

        n = len(self.values)
        best_d = torch.empty(n, device=ct.device)
        best_i = torch.empty(n, dtype=torch.int64, device=ct.device)
        step = rows_per_chunk(len(ct), min(working_bytes, CACHE_BLOCK_BYTES))
        for s in range(0, n, step):
            v, i = self.cross_terms(ct, s, s + step).min(1)
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
            for s in range(0, n, step):
                self.table[s: s + step] = self.rows.cross_terms(ct, s, s + step)
        elif len(cols):
            moved = ct[cols]
            for s in range(0, n, step):
                self.table[s: s + step, cols] = self.rows.cross_terms(moved, s, s + step)
        self.centroids = ct.clone()
        v, i = self.table.min(1)
        return v.add_(self.rows.sq_norms).clamp_min_(0), i


class ClusterSums:
    """float64 (weighted) sums and counts of the rows of each cluster, updated by the rows that changed cluster
    (recomputed whole when more than a quarter did)."""

    def __init__(self, xt, wt, k: int):
        self.xt, self.wt, self.k = xt, wt, k
        self.sums = self.counts = None

    def _weighted(self, rows):
        x = self.xt[rows].double()
        return x if self.wt is None else x * self.wt[rows, None].double()

    def _weights(self, rows):
        import torch

        return torch.ones(len(rows), dtype=torch.float64, device=self.xt.device) if self.wt is None \
            else self.wt[rows].double()

    def update(self, a, previous) -> None:
        import torch

        moved = None if previous is None else torch.nonzero(a != previous).flatten()
        if moved is None or len(moved) > len(a) // 4:
            self.sums = torch.zeros((self.k, self.xt.shape[1]), dtype=torch.float64, device=self.xt.device)
            self.counts = torch.zeros(self.k, dtype=torch.float64, device=self.xt.device)
            every = torch.arange(len(a), device=a.device)
            step = rows_per_chunk(self.xt.shape[1], CACHE_BLOCK_BYTES, itemsize=8)
            for s in range(0, len(a), step):
                self.sums.index_add_(0, a[s: s + step], self._weighted(every[s: s + step]))
                self.counts.index_add_(0, a[s: s + step], self._weights(every[s: s + step]))
            return
        x, w = self._weighted(moved), self._weights(moved)
        self.sums.index_add_(0, a[moved], x).index_add_(0, previous[moved], x, alpha=-1)
        self.counts.index_add_(0, a[moved], w).index_add_(0, previous[moved], w, alpha=-1)

    def means(self, d):
        """The centroids: each cluster's mean; an empty cluster takes the row farthest (``d``) from its centroid.
        Returns ``(centroids, whether a cluster was empty)``."""
        import torch

        empty = torch.nonzero(self.counts <= 0).flatten()
        new = (self.sums / self.counts.clamp_min(1e-30)[:, None]).float()
        if len(empty):
            new[empty] = self.xt[torch.argsort(d, descending=True)[: len(empty)]]
        return new, bool(len(empty))


def lloyd(x: np.ndarray, init: np.ndarray, niter: int, weights: np.ndarray | None, device: str,
          working_bytes: int):
    """Up to ``niter`` Lloyd iterations on bfloat16 products, stopping at a fixed point (an assignment equal to
    the previous one, with no cluster emptied): ``(centroids, assignment)``, the assignment None unless the
    last iteration reached the fixed point (then it is that of the returned centroids)."""
    import torch

    xt = as_tensor(x, device)
    ct = as_tensor(init, device).clone()
    wt = None if weights is None else torch.as_tensor(np.asarray(weights, np.float32), device=device)
    rows = Bf16Rows(x, device)
    nearest = DistanceTable(rows, len(ct)) if DistanceTable.fits(len(x), len(ct), working_bytes) else rows
    sums = ClusterSums(xt, wt, len(ct))
    previous, emptied = None, False
    for _ in range(niter):
        d, a = nearest.assign(ct, working_bytes)
        if previous is not None and not emptied and torch.equal(a, previous):
            return ct.cpu().numpy(), a.cpu().numpy()
        sums.update(a, previous)
        ct, emptied = sums.means(d)
        previous = a
    return ct.cpu().numpy(), None
