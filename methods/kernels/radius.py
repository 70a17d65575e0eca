"""ProbCover's two kernels: the delta-ball graph and the purity distances, memory-bounded at any pool size.

Both compare every row with a whole set of points, so their cost is one
matrix product's worth of arithmetic (O(N M d)); nothing N x M is ever held.
Two ways to get it:

* **float32** -- faiss ``range_search`` / blocked torch products on
  ``device`` (any CPU, CUDA), the decision taken on float32 distances;
* **bfloat16 prefilter** (``prefilter="auto"`` on a CPU with native
  bfloat16, :mod:`methods.kernels.lowp`) -- one bfloat16 product per block,
  2-2.5x the float32 rate, decides every pair its certified error bound
  can; the pairs it cannot are recomputed in float64 from their differences
  (:func:`~methods.kernels.lowp.exact_sq_dist`). The pool graph is symmetric,
  so only the blocks on and above the diagonal are computed and mirrored:
  half the products of the float32 path.

The bfloat16 path is exact in float64 semantics: a distance equal to the
purity radius (the radius *is* one of the purity distances) is the same
float64 number in both kernels, so its strict ``< delta`` is decided the
same way in both. The float32 path is exact up to float32 ties.
"""

from __future__ import annotations

import numpy as np

from methods.core.devices import pick_device

from ._torch import as_tensor, rows_per_chunk
from .clustering import (DEFAULT_WORKING_BYTES, _f32, _faiss_index, _ivf_index, faiss_has_gpu, knn,
                         resolve_backend)
from .lowp import BLOCK_ENTRIES, KAPPA, Bf16SqDist, bf16_ordinal, exact_sq_dist, use_bf16

#: Query rows per block of the purity search (one product against a column block of the pool each).
PURITY_QUERIES = 1024


class TooManyEdges(RuntimeError):
    """The radius graph would exceed ``max_edges``; use a smaller radius or a degree-capped graph."""


def _edge_limit(total: int, max_edges: int | None, radius: float) -> None:
    if max_edges is not None and total > max_edges:
        raise TooManyEdges(f"radius graph at radius {radius:.4g} has more than {max_edges} edges")


# ----------------------------------------------------------------------------------------------------------------
# Radius graph


def radius_graph(x: np.ndarray, radius: float, device: str | None = None, backend: str | None = None,
                 working_bytes: int = DEFAULT_WORKING_BYTES, max_edges: int | None = None,
                 ivf: tuple[int, int, int] | None = None, targets: np.ndarray | None = None,
                 prefilter: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """CSR adjacency ``(indptr (n+1,) int64, indices (E,) int32)`` of ``||x_i - x_j|| < radius``.

    Every row lists itself first (a self-loop), then its other neighbours in
    increasing row id. Built block by block, never as a dense N x N matrix;
    raises :class:`TooManyEdges` as soon as the edge count would pass
    ``max_edges``. ``prefilter`` (``auto``, ``bf16``, ``none``): the
    bfloat16 path of the module docstring (``backend`` then does not apply);
    ``none`` runs faiss ``range_search`` or blocked torch distances.

    ``targets`` (row ids) makes the graph bipartite: row i lists the positions
    ``t`` in ``targets`` with ``||x_i - x_targets[t]|| < radius``, in
    increasing order (a row that is itself a target finds itself at distance 0;
    no self-loop is added). Cost O(N |targets| d) instead of O(N^2 d).

    ``ivf=(nlist, nprobe, seed)`` searches a faiss inverted-file index instead
    (faiss backend, no prefilter): each point is compared with the ``nprobe`` of
    ``nlist`` k-means cells nearest to it, so the cost drops from O(N^2 d) to
    about O(N^2 d nprobe / nlist) and the graph may miss neighbours that sit in
    other cells -- an approximation for pools where the exact graph is too slow.
    """
    x = _f32(x)
    if not radius > 0:
        raise ValueError(f"radius_graph: radius must be > 0, got {radius}")
    targets = None if targets is None else np.asarray(targets, dtype=np.int64)
    backend, device = resolve_backend(device, backend)
    if ivf is None and use_bf16(device, prefilter):
        if targets is None:
            return _symmetric_csr(len(x), *_bf16_upper_edges(x, float(radius), working_bytes, max_edges))
        rows, cols = _bf16_bipartite_edges(x, float(radius), targets, working_bytes, max_edges)
        return _bipartite_csr(len(x), rows, cols)
    if ivf is not None and backend != "faiss":
        raise ValueError("radius_graph: the inverted-file approximation needs the faiss backend")
    return _float32_graph(x, float(radius), device, backend, working_bytes, max_edges, ivf, targets)


def _float32_graph(x, radius, device, backend, working_bytes, max_edges, ivf, targets):
    """:func:`radius_graph` from float32 distances: faiss ``range_search`` or blocked torch products."""
    import torch

    n = len(x)
    bipartite = targets is not None
    base = x[targets] if bipartite else x
    counts = np.empty(n, dtype=np.int64)
    parts: list[np.ndarray] = []
    total = 0
    r2 = radius ** 2
    if backend == "faiss":
        index = _faiss_index(x.shape[1], device.startswith("cuda") and faiss_has_gpu()) if ivf is None \
            else _ivf_index(base, *ivf)
        index.add(base)
        step = max(1, rows_per_chunk(len(base), working_bytes) // 4)
    else:
        xt = as_tensor(x, device)
        bt = as_tensor(base, device) if bipartite else xt
        b_norm = (bt * bt).sum(1)
        step = rows_per_chunk(len(base), working_bytes)
    for s in range(0, n, step):
        e = min(n, s + step)
        if backend == "faiss":
            lims, _, nbr = index.range_search(x[s:e], r2)
            rows = np.repeat(np.arange(e - s), np.diff(lims.astype(np.int64)))
        else:
            qb = xt[s:e]
            d = torch.addmm(b_norm[None, :], qb, bt.T, alpha=-2)  # ||x_j||^2 - 2 q.x_j; ||q||^2 moves right
            rows_t, nbr_t = torch.nonzero(d < r2 - (qb * qb).sum(1, keepdim=True), as_tuple=True)
            rows, nbr = rows_t.cpu().numpy(), nbr_t.cpu().numpy()
        if not bipartite:  # the self-loop goes first below, whatever distance the search gave it
            keep = nbr != rows + s
            rows, nbr = rows[keep], nbr[keep]
        nbr = nbr.astype(np.int64)
        order = np.lexsort((nbr, rows))
        rows, nbr = rows[order], nbr[order]
        c = np.bincount(rows, minlength=e - s) + (0 if bipartite else 1)
        counts[s:e] = c
        total += int(c.sum())
        _edge_limit(total, max_edges, radius)
        if bipartite:
            parts.append(nbr.astype(np.int32))
            continue
        block = np.empty(int(c.sum()), dtype=np.int32)
        starts = np.concatenate([[0], np.cumsum(c)[:-1]])
        block[starts] = np.arange(s, e)
        rank = np.arange(len(rows)) - np.concatenate([[0], np.cumsum(c - 1)[:-1]])[rows]
        block[starts[rows] + 1 + rank] = nbr
        parts.append(block)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = np.concatenate(parts) if parts else np.empty(0, np.int32)
    return indptr, indices


def _bf16_block_edges(x, sq: Bf16SqDist, start: int, stop: int, first_col: int, radius: float, col_ids=None):
    """Edges ``(rows, columns)`` (block-local row, target position), row-major, of rows ``start:stop`` against
    targets ``first_col:`` of ``sq``: decided by the bfloat16 bound where it can, in float64 elsewhere.

    The product is shifted by ``radius^2``, so a pair is an edge when its value is negative: certainly so
    below ``-err / (1 + KAPPA)``, certainly not at ``err / (1 - KAPPA)`` or above.
    """
    import torch

    r2 = radius * radius
    a, err = sq.block(torch.from_numpy(x[start:stop]), first_col, shift=r2)
    width = a.shape[1]
    maybe = (a.view(torch.int16) < bf16_ordinal(err / (1 - KAPPA))[:, None]).numpy()
    flat = np.flatnonzero(maybe.reshape(-1))
    r, c = flat // width, flat % width
    sure = (a.view(-1)[torch.from_numpy(flat)].float() < (-err / (1 + KAPPA))[torch.from_numpy(r)]).numpy()
    c = c + first_col
    unsure = np.flatnonzero(~sure)
    if len(unsure):
        cols = c[unsure] if col_ids is None else col_ids[c[unsure]]
        sure[unsure] = np.sqrt(exact_sq_dist(x, start + r[unsure], cols)) < radius
    return r[sure], c[sure]


def _bf16_bipartite_edges(x, radius, targets, working_bytes, max_edges):
    """Every row's edges to ``targets`` (positions), row-major."""
    sq = Bf16SqDist(x, targets)
    step = _bf16_rows(len(targets), working_bytes)
    rows, cols, total = [], [], 0
    for s in range(0, len(x), step):
        r, c = _bf16_block_edges(x, sq, s, min(len(x), s + step), 0, radius, col_ids=targets)
        total += len(r)
        _edge_limit(total, max_edges, radius)
        rows.append(r + s)
        cols.append(c.astype(np.int32))
    return np.concatenate(rows), np.concatenate(cols)


def _bf16_upper_edges(x, radius, working_bytes, max_edges):
    """The pool graph's edges ``(i, j)`` with ``i < j``, row-major: each row block against itself and the
    rows after it only (the other half is their mirror)."""
    n = len(x)
    sq = Bf16SqDist(x)
    step = _bf16_rows(n, working_bytes)
    rows, cols, total = [], [], n
    for s in range(0, n, step):
        r, c = _bf16_block_edges(x, sq, s, min(n, s + step), s, radius)
        upper = c > r + s
        total += 2 * int(upper.sum())
        _edge_limit(total, max_edges, radius)
        rows.append((r[upper] + s).astype(np.int32))
        cols.append(c[upper].astype(np.int32))
    return np.concatenate(rows), np.concatenate(cols)


def _bf16_rows(width: int, working_bytes: int) -> int:
    """Rows per bfloat16 block against ``width`` targets: within ``working_bytes`` (the product, its int16
    mask and a few per-row values) and ``BLOCK_ENTRIES``."""
    return max(1, min(rows_per_chunk(width, working_bytes, itemsize=4), BLOCK_ENTRIES // max(1, width)))


def _bipartite_csr(n: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)
    return indptr, cols.astype(np.int32)


def _symmetric_csr(n: int, upper_rows: np.ndarray, upper_cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows ``[self, neighbours below it, neighbours above it]`` (ascending) from the row-major edges
    ``i < j``; the edges below a row are the mirror of those above: the transpose of their CSR matrix
    (scipy's counting sort, which keeps each column's rows in order)."""
    from scipy.sparse import csr_matrix

    n_upper = np.bincount(upper_rows, minlength=n)
    upper_ptr = np.concatenate([[0], np.cumsum(n_upper)])
    lower = csr_matrix((np.ones(len(upper_cols), np.int8), upper_cols, upper_ptr), shape=(n, n)).tocsc()
    n_lower = np.diff(lower.indptr)
    lower_rows, lower_cols = np.repeat(np.arange(n), n_lower), lower.indices
    indptr = np.concatenate([[0], np.cumsum(1 + n_lower + n_upper)]).astype(np.int64)
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    indices[indptr[:-1]] = np.arange(n)
    _place(indices, indptr[:-1] + 1, lower_rows, lower_cols, n_lower)
    _place(indices, indptr[:-1] + 1 + n_lower, upper_rows, upper_cols, n_upper)
    return indptr, indices


def _place(indices: np.ndarray, row_start: np.ndarray, rows: np.ndarray, cols: np.ndarray,
           counts: np.ndarray) -> None:
    """Write row-sorted ``(rows, cols)`` into ``indices``, each row's run from ``row_start[row]`` on."""
    run_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(rows)) - run_start[rows]
    indices[row_start[rows] + rank] = cols


def knn_radius_graph(x: np.ndarray, radius: float, max_degree: int, device: str | None = None,
                     backend: str | None = None,
                     working_bytes: int = DEFAULT_WORKING_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`radius_graph` but each row keeps only its ``max_degree - 1`` nearest neighbours within radius."""
    x = _f32(x)
    n = len(x)
    kk = int(min(max(1, max_degree - 1), n - 1))
    d, i = knn(x, kk, device=device, backend=backend, working_bytes=working_bytes)
    within = d < float(radius) ** 2
    counts = within.sum(1) + 1
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    indices[indptr[:-1]] = np.arange(n)
    rows, cols = np.nonzero(within)
    rank = cols  # neighbours are sorted nearest first, so the in-radius ones form a prefix
    indices[indptr[rows] + 1 + rank] = i[rows, cols]
    return indptr, indices


# ----------------------------------------------------------------------------------------------------------------
# Purity


def min_dist_to_other_cluster(x: np.ndarray, labels: np.ndarray, queries: np.ndarray | None = None,
                              device: str | None = None, working_bytes: int = DEFAULT_WORKING_BYTES,
                              prefilter: str = "auto") -> np.ndarray:
    """Euclidean distance (float64) from each row (or each row id in ``queries``) to the nearest row with
    another label; inf when every row has the same label.

    A row's open ball of radius delta (``< delta``) is pure -- holds no
    other-label row -- exactly when this distance is ``>= delta``. Blocks of
    up to 1,024 queries meet column blocks of the pool in one matrix product
    each, with same-label entries masked out; grouping queries by label
    instead would turn the work into one skinny, memory-bound product per
    label (1,000 passes over the pool at ImageNet's C). Memory O(N +
    working_bytes); O(len(queries) N d) work. With the bfloat16 prefilter
    (module docstring) each query keeps the pairs whose bound can still be
    its minimum and takes the smallest of their float64 distances, so the
    result is exact; without it, float32 on ``device``.
    """
    device = pick_device(device)
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels)) if queries is None else np.asarray(queries, dtype=np.int64)
    if use_bf16(device, prefilter):
        return _bf16_min_dist(_f32(x), labels, rows, working_bytes)
    return _float32_min_dist(x, labels, rows, device, working_bytes)


def _float32_min_dist(x, labels, rows, device, working_bytes):
    import torch

    n = len(labels)
    xt = as_tensor(x, device)
    x_norm = (xt * xt).sum(1)
    lt = torch.as_tensor(labels, device=device)
    out = np.empty(len(rows), dtype=np.float64)
    q_step = max(1, min(PURITY_QUERIES, len(rows)))
    c_step = rows_per_chunk(q_step, working_bytes)
    for s in range(0, len(rows), q_step):
        idx = torch.as_tensor(rows[s: s + q_step], device=device)
        q, lq = xt[idx], lt[idx][:, None]
        best = torch.full((len(idx),), float("inf"), device=device)
        for c in range(0, n, c_step):
            d = torch.addmm(x_norm[c: c + c_step][None, :], q, xt[c: c + c_step].T, alpha=-2)
            d.masked_fill_(lq == lt[c: c + c_step][None, :], float("inf"))
            best = torch.minimum(best, d.min(1).values)
        out[s: s + q_step] = (best + (q * q).sum(1)).clamp_min_(0).sqrt_().cpu().numpy()
    return out


def _bf16_min_dist(x, labels, rows, working_bytes):
    """:func:`min_dist_to_other_cluster` with the bfloat16 prefilter: per query, every pair whose lower bound
    is below the upper bound of the running minimum is kept, and the float64 minimum of the kept pairs is
    the exact one (the true nearest pair's bound never exceeds that limit).

    The pool is sorted by label once (its bfloat16 factor is built in that order) and the queries too, so
    the entries a query must not see -- its own cluster -- form one rectangle per label in each block,
    filled with inf by slicing instead of a label comparison over the block.
    """
    import torch

    perm = np.argsort(labels, kind="stable")
    sorted_labels = labels[perm]
    label_start = np.searchsorted(sorted_labels, np.arange(sorted_labels[-1] + 2 if len(labels) else 1))
    sq = Bf16SqDist(x, perm)
    n = len(labels)
    out = np.empty(len(rows), dtype=np.float64)
    order = np.argsort(labels[rows], kind="stable")
    q_step = max(1, min(PURITY_QUERIES, len(rows)))
    c_step = _bf16_rows(q_step, working_bytes)
    for s in range(0, len(rows), q_step):
        idx = rows[order[s: s + q_step]]
        runs = _label_runs(labels[idx])
        left_q = torch.from_numpy(x[idx])
        best = torch.full((len(idx),), float("inf"))
        kept = []
        for c in range(0, n, c_step):
            a, err = sq.block(left_q, c, min(n, c + c_step))
            for q_lo, q_hi, label in runs:  # a query's own cluster is not "another" one
                lo, hi = max(label_start[label], c), min(label_start[label + 1], c + a.shape[1])
                if lo < hi:
                    a[q_lo:q_hi, lo - c: hi - c] = float("inf")
            best = torch.minimum(best, a.amin(1).float())
            limit = bf16_ordinal(_candidate_limit(best, err))
            flat = np.flatnonzero((a.view(torch.int16) <= limit[:, None]).numpy().reshape(-1))
            r, k = flat // a.shape[1], flat % a.shape[1]
            kept.append((r, k + c, a.view(-1)[torch.from_numpy(flat)].float().numpy()))
        r, k, v = (np.concatenate(parts) for parts in zip(*kept))
        final = v <= limit.view(torch.bfloat16).float().numpy()[r]  # the last column block's limit is final
        r, k = r[final], k[final]
        nearest = np.full(len(idx), np.inf)
        np.minimum.at(nearest, r, exact_sq_dist(x, idx[r], perm[k]))
        out[order[s: s + q_step]] = np.sqrt(nearest)
    return out


def _label_runs(block_labels: np.ndarray) -> list[tuple[int, int, int]]:
    """``(start, stop, label)`` of each run of equal labels in a sorted block."""
    starts = np.flatnonzero(np.r_[True, block_labels[1:] != block_labels[:-1]])
    stops = np.r_[starts[1:], len(block_labels)]
    return [(int(a), int(b), int(block_labels[a])) for a, b in zip(starts, stops)]


def _candidate_limit(best, err):
    """The largest value whose pair can still be the nearest: its lower bound ``a (1 - KAPPA) - err``
    reaches the running minimum's upper bound ``best + KAPPA |best| + err`` (0 while ``best`` is inf: the
    row has seen only its own cluster, all inf)."""
    import torch

    limit = (best + KAPPA * best.abs() + 2 * err) / (1 - KAPPA)
    return torch.where(torch.isfinite(best), limit, torch.zeros_like(limit))
