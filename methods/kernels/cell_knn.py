"""Approximate self-kNN by cells probed per cell: every neighbour search of a cell is one matrix product.

:func:`cell_knn` answers the question of :func:`methods.kernels.approximate_knn`
(every row's ``k`` nearest *other* rows, Euclidean) with the same geometry as
an inverted-file index -- a coarse k-means splits the rows into ``nlist``
cells and a row is compared only with the rows of ``nprobe`` cells -- but it
probes per *cell*, not per row: all rows of cell ``c`` are searched among the
rows of ``c`` and of the ``nprobe - 1`` cells whose centroids are nearest to
``c``'s. That turns the search into one dense product per cell (its rows
against its candidates), which runs at matrix-multiply speed, where faiss's
IVF scan compares one query with one list at a time; and the coarse
assignment of every row, which faiss computes twice (to add the rows, then to
probe for each query), is computed once, by :func:`methods.kernels.kmeans`.

Why it matters (``benchmarks/cell_knn.py``, two cores, recall@20 against the
exact search on 300 sampled rows): at N = 1.27 M, d = 512 (CEC's neighbour
term at the ImageNet protocol, 1,000 classes) faiss's IVF-Flat takes 298 s
(about 38 s training, 35 s adding, 216 s searching); this takes 87 s, or 70 s
with the coarse k-means in bfloat16, at the same fraction of the pool scanned
per row, recall 0.9998 for both (0.9990 in bfloat16). On a 200K pool of 100
broad classes, where no search recalls as well, 14 s against faiss's 30 s,
at recall 0.898 against 0.912.

What it gives up against per-row probing: a row near its cell's border is
searched in the cells nearest its *centroid*, not nearest itself, so a true
neighbour just across an unprobed border is missed a little more often. Raise
``nprobe`` for recall (``nprobe = nlist`` is exact).

Defaults: ``nlist = 2 sqrt(N)`` cells and ``nprobe = 4``, the fraction of
the pool that faiss's IVF defaults of :func:`~methods.kernels.approximate_knn`
scan (8 of ``4 sqrt(N)``) in cells twice as large, which halves the coarse
k-means (seeded from random rows, 10 iterations on 40 rows per cell, as
faiss trains its quantiser). ``precision="bfloat16"`` runs that k-means on
bfloat16 products; the search itself is always float32 (its distances are
what :func:`methods.kernels.knn` computes, ``|q|^2 - 2 q.x + |x|^2``).

Memory: one float32 copy of ``x`` as a tensor (none when it already is
float32), plus a block of at most ``working_bytes`` (4 MB by default, which the
allocator recycles) per product. Determinism: the
k-means takes ``seed``; nothing else is random.
"""

from __future__ import annotations

import numpy as np

from methods.core.devices import pick_device

from ._torch import CACHE_BLOCK_BYTES, as_tensor, rows_per_chunk
from .clustering import DEFAULT_WORKING_BYTES, _f32, check_probe_args, kmeans

#: Rows per cell the coarse k-means trains on (faiss warns below 39).
TRAIN_POINTS_PER_CELL = 40
COARSE_ITERATIONS = 10


def default_cells(n: int) -> int:
    """``round(2 sqrt(n))`` cells, at most one per 40 rows."""
    return int(max(1, min(round(2 * np.sqrt(n)), n // TRAIN_POINTS_PER_CELL)))


def cell_knn(x: np.ndarray, k: int, nlist: int | None = None, nprobe: int = 4, seed: int = 0,
             precision: str = "float32", device: str | None = None,
             working_bytes: int = DEFAULT_WORKING_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Approximate Euclidean kNN of every row among the other rows: ``(squared distances (n, k) float32, ids (n, k))``.

    Nearest first, each row's own entry excluded (``k <= n - 1``), as
    :func:`methods.kernels.knn` with ``queries=None``. A cell whose ``nprobe``
    cells hold fewer than ``k + 1`` rows probes the next nearest cells until
    they do, so every row gets ``k`` real neighbours.
    """
    x = _f32(x)
    n, k = len(x), int(k)
    check_probe_args("cell_knn", n, k, nprobe)
    nlist = default_cells(n) if nlist is None else max(1, min(int(nlist), n))
    device = pick_device(device)
    centroids, assignment = kmeans(x, nlist, seed, niter=COARSE_ITERATIONS, init="random", device=device,
                                   max_points_per_centroid=TRAIN_POINTS_PER_CELL, init_points_per_centroid=None,
                                   precision=precision)
    cells = _Cells(assignment, len(centroids))
    probes = _ProbeOrder(centroids, min(int(nprobe), len(centroids)))
    return _search_cells(as_tensor(x, device), cells, probes, k, working_bytes)


class _Cells:
    """Row ids grouped by cell: ``members(c)`` is cell ``c``'s rows in ascending order."""

    def __init__(self, assignment: np.ndarray, nlist: int):
        self.order = np.argsort(assignment, kind="stable")
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(assignment, minlength=nlist))])

    def __len__(self) -> int:
        return len(self.starts) - 1

    def size(self, c: int) -> int:
        return int(self.starts[c + 1] - self.starts[c])

    def members(self, c: int) -> np.ndarray:
        return self.order[self.starts[c]: self.starts[c + 1]]


class _ProbeOrder:
    """Per cell, the cells to search: itself first, then the others by centroid distance."""

    def __init__(self, centroids: np.ndarray, nprobe: int):
        import torch

        c = torch.as_tensor(centroids)
        self.sq_dist = torch.cdist(c, c).square_()
        self.nprobe = nprobe

    def cells_for(self, c: int, cells: _Cells, needed: int) -> list[int]:
        """``c`` and its nearest cells, at least ``nprobe`` of them and enough to hold ``needed`` rows."""
        d = self.sq_dist[c].clone()
        d[c] = -1  # itself first, even when another centroid coincides with it
        order = d.argsort(stable=True).tolist()
        count, held = self.nprobe, sum(cells.size(j) for j in order[: self.nprobe])
        while held < needed and count < len(order):
            held += cells.size(order[count])
            count += 1
        return order[:count]


def _search_cells(xt, cells: _Cells, probes: _ProbeOrder, k: int, working_bytes: int):
    """Each non-empty cell's rows against its probed cells' rows; own rows sit first, so self is the diagonal."""
    import torch

    n = len(xt)
    norms = torch.linalg.vector_norm(xt, dim=1).square_()  # a reduction: no n x d temporary
    out_d = torch.empty(n, k, device=xt.device)
    out_i = torch.empty(n, k, dtype=torch.int64, device=xt.device)
    for c in range(len(cells)):
        own = cells.size(c)
        if own == 0:
            continue
        cand = torch.as_tensor(np.concatenate([cells.members(j) for j in probes.cells_for(c, cells, k + 1)]),
                               device=xt.device)
        cand_x_t, cand_norm = xt[cand].T, norms[cand][None, :]
        step = rows_per_chunk(len(cand), min(working_bytes, CACHE_BLOCK_BYTES))
        for s in range(0, own, step):
            q = cand[s: s + step]
            partial = torch.addmm(cand_norm, xt[q], cand_x_t, alpha=-2)  # |x|^2 - 2 q.x: |q|^2 ranks nothing
            diag = torch.arange(len(q), device=xt.device)
            partial[diag, diag + s] = float("inf")
            v, i = partial.topk(k, dim=1, largest=False)
            out_d[q] = v.add_(norms[q][:, None]).clamp_min_(0)
            out_i[q] = cand[i]
    return out_d.cpu().numpy(), out_i.cpu().numpy()
