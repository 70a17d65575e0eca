"""Approximate k nearest neighbours for pools where the exact search (O(N^2 d)) is too slow.

:func:`approximate_knn` answers the same question as
:func:`methods.kernels.clustering.knn` with ``queries=None`` -- every row's
``k`` nearest *other* rows, Euclidean -- through a faiss inverted-file index
(IVF-Flat): a coarse k-means splits the rows into ``nlist`` cells, and each
row is compared only with the rows of the ``nprobe`` cells nearest to it. The
distances it returns are exact for the neighbours it finds; a true neighbour
in an unprobed cell is missed. On unit rows the Euclidean order is the
cosine (inner-product) order, ``||a - b||^2 = 2 - 2 a.b``, so one index
serves both.

Cost, for N rows of dimension d, with the defaults ``nlist = 4 sqrt(N)`` (the
low end of faiss's guideline) and ``nprobe = 8``: the coarse quantiser trains
(10 k-means iterations, BLAS) on a seeded subsample of 40 rows per cell, so
O(40 nlist^2 d) = O(640 N d) per iteration; assigning every row to its cell is
O(N nlist d); the search compares each row with about ``nprobe N / nlist``
rows, O(N^1.5 d nprobe / 4) -- against O(N^2 d) for the exact search. The
scan runs at a fraction of BLAS speed, so at N = 100K on two cores this is
about 5-10x faster than :func:`~methods.kernels.clustering.knn`, and the gap
grows as sqrt(N). A row whose probed cells hold fewer than ``k + 1`` rows is
searched again over every cell, so every row gets ``k`` real neighbours.

Recall: a true neighbour in an unprobed cell is missed (its place taken by
the next nearest found). Raise ``nprobe`` for more recall (``nprobe = nlist``
is exact); features that cluster, as image embeddings do, lose far fewer
neighbours than uniformly random vectors.

Memory: the index holds one float32 copy of ``x``; queries run in blocks
bounded by ``working_bytes``; nothing is N x N.

Determinism: the training subsample comes from
``numpy.random.default_rng(seed)`` and the coarse k-means is seeded with
``seed``, so a seed gives the same neighbours on every run.
"""

from __future__ import annotations

import numpy as np

from methods.core.devices import pick_device

from ._torch import rows_per_chunk
from .clustering import DEFAULT_WORKING_BYTES, _drop_self, _f32, _ivf_index, check_probe_args, faiss_has_gpu

#: faiss warns when its k-means gets fewer training points than this per centroid.
_FAISS_MIN_POINTS_PER_CENTROID = 39


def default_nlist(n: int) -> int:
    """``round(4 sqrt(n))`` cells, at most one per 39 rows (faiss's minimum training points per cell)."""
    return int(max(1, min(round(4 * np.sqrt(n)), n // _FAISS_MIN_POINTS_PER_CENTROID)))


def approximate_knn(x: np.ndarray, k: int, nlist: int | None = None, nprobe: int = 8, seed: int = 0,
                    train_points_per_list: int = 40, device: str | None = None,
                    working_bytes: int = DEFAULT_WORKING_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Approximate Euclidean kNN of every row of ``x`` among the other rows (faiss IVF-Flat).

    Returns what :func:`methods.kernels.clustering.knn` returns with
    ``queries=None``: ``(squared distances (n, k) float32, row ids (n, k)
    int64)``, nearest first, each row's own entry excluded (so ``k <= n - 1``).

    * ``nlist``: cells of the coarse quantiser (default :func:`default_nlist`,
      ``4 sqrt(n)``); ``nlist=1`` is an exact search.
    * ``nprobe``: cells searched per row (capped at ``nlist``); recall rises
      with it, and ``nprobe = nlist`` is exact.
    * ``train_points_per_list``: the quantiser trains on a seeded subsample of
      at most this many rows per cell (at least 39; faiss's own default is 256).
    * ``device``: a CUDA device runs the search on faiss's GPU index when faiss
      was built with GPU support, else everything runs on the CPU.
    """
    import faiss

    x = _f32(x)
    n, k = len(x), int(k)
    check_probe_args("approximate_knn", n, k, nprobe)
    nlist = default_nlist(n) if nlist is None else max(1, min(int(nlist), n))
    rng = np.random.default_rng(seed)
    n_train = min(n, max(int(train_points_per_list), _FAISS_MIN_POINTS_PER_CENTROID) * nlist)
    train = x if n_train >= n else x[np.sort(rng.choice(n, size=n_train, replace=False))]
    index = _ivf_index(train, nlist, nprobe, seed)
    index.add(x)
    searcher = index
    if pick_device(device).startswith("cuda") and faiss_has_gpu():
        searcher = faiss.index_cpu_to_all_gpus(index)
    out_d = np.empty((n, k), dtype=np.float32)
    out_i = np.empty((n, k), dtype=np.int64)
    step = max(1, rows_per_chunk(k + 1, working_bytes, itemsize=12))
    for s in range(0, n, step):
        d, i = searcher.search(x[s: s + step], k + 1)
        short = np.flatnonzero((i < 0).any(axis=1))  # its probed cells held fewer than k + 1 rows
        if short.size:
            d[short], i[short] = _search_everywhere(index, x[s + short], k + 1, nlist)
        d, i = _drop_self(d, i, np.arange(s, s + len(d)), k)
        out_d[s: s + step] = np.maximum(d, 0)
        out_i[s: s + step] = i
    return out_d, out_i


def _search_everywhere(index, queries: np.ndarray, k: int, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """The same search over every cell (exact, on the CPU index), for the few rows the probed cells left short."""
    probe = index.nprobe
    index.nprobe = nlist
    try:
        return index.search(queries, k)
    finally:
        index.nprobe = probe


#: The self-kNN searches a strategy can name: exact (:func:`~methods.kernels.knn`), faiss IVF with per-row
#: probes (:func:`approximate_knn`), clustered cells probed per cell (:func:`methods.kernels.cell_knn.cell_knn`).
SELF_KNN_SEARCHES = ("exact", "approximate", "cells")


def self_knn(x: np.ndarray, k: int, search: str = "exact", seed: int = 0, device: str | None = None,
             working_bytes: int = DEFAULT_WORKING_BYTES, precision: str = "float32",
             nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every row's ``k`` nearest other rows by the named ``search`` (one of :data:`SELF_KNN_SEARCHES`).

    ``seed`` seeds the approximate searches' coarse k-means; ``precision`` is
    the arithmetic of the ``cells`` search's coarse k-means (its distances are
    float32); ``nprobe``: cells probed by the approximate searches (None:
    each one's default, 8 per row for ``approximate``, 4 per cell for ``cells``).
    """
    from .cell_knn import cell_knn
    from .clustering import knn

    probes = {} if nprobe is None else {"nprobe": int(nprobe)}
    if search == "exact":
        return knn(x, k, device=device, working_bytes=working_bytes)
    if search == "approximate":
        return approximate_knn(x, k, seed=seed, device=device, working_bytes=working_bytes, **probes)
    if search == "cells":
        return cell_knn(x, k, seed=seed, precision=precision, device=device, working_bytes=working_bytes, **probes)
    raise ValueError(f"knn must be one of {list(SELF_KNN_SEARCHES)}, got {search!r}")
