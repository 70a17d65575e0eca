"""k-means and exact kNN for the clustering strategies, memory-bounded at any pool size.

Backends:

* ``faiss`` -- faiss on CPU, or on the GPU when faiss was built with GPU
  support (``faiss.get_num_gpus() > 0``) and the device is CUDA;
* ``torch`` -- blocked torch matmuls on the device, used when the device is
  CUDA but faiss is CPU-only (the ``faiss-cpu`` wheel). It also runs on CPU,
  which is how the tests check that both backends agree.

``backend=None`` picks faiss unless the device is CUDA and faiss has no GPU
(or faiss is not installed).

Memory: no function allocates an N x N matrix. Anything O(N x K) (distances
from a block of rows to all centroids, neighbours or points) is computed in
blocks whose size is bounded by ``working_bytes`` (``rows_per_chunk``). The
outputs themselves (N x k neighbour lists, radius-graph edges) are what the
caller asked for; the radius graph refuses to grow past ``max_edges``.

Determinism: every random choice (k-means++ seeding, training subsample)
comes from ``numpy.random.default_rng(seed)``, and both backends run the
same Lloyd iterations from the same initial centroids, so a seed gives the
same clustering on every run of a backend (and, up to floating-point ties,
across backends).
"""

from __future__ import annotations

import numpy as np

from methods.core.devices import pick_device

from ._torch import CACHE_BLOCK_BYTES, as_tensor, rows_per_chunk
from .bf16_kmeans import Bf16Rows
from .bf16_kmeans import assign_rows as bf16_assign_rows
from .bf16_kmeans import lloyd as bf16_lloyd

DEFAULT_WORKING_BYTES = 256 << 20
#: Arithmetic of k-means' distance products (:func:`kmeans`).
PRECISIONS = ("float32", "bfloat16")


def _faiss():
    import faiss

    return faiss


def faiss_available() -> bool:
    try:
        _faiss()
    except ImportError:
        return False
    return True


def faiss_has_gpu() -> bool:
    try:
        return _faiss().get_num_gpus() > 0
    except (ImportError, AttributeError, RuntimeError):  # no faiss, or a build without the GPU query
        return False


def resolve_backend(device: str | None = None, backend: str | None = None) -> tuple[str, str]:
    """``(backend, device)``: the requested ones, else faiss unless CUDA is present and faiss is CPU-only.

    Without faiss installed everything runs on the torch backend.
    """
    device = pick_device(device)
    if backend is None:
        cpu_only_faiss = device.startswith("cuda") and not faiss_has_gpu()
        backend = "torch" if cpu_only_faiss or not faiss_available() else "faiss"
    if backend not in ("faiss", "torch"):
        raise ValueError(f"backend must be 'faiss' or 'torch', got {backend!r}")
    return backend, device


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def _faiss_index(d: int, use_gpu: bool):
    faiss = _faiss()
    index = faiss.IndexFlatL2(d)
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def _ivf_index(x: np.ndarray, nlist: int, nprobe: int, seed: int):
    """An untrained-then-trained ``IndexIVFFlat`` whose coarse k-means is seeded (faiss's own default is fixed)."""
    faiss = _faiss()
    nlist = max(1, min(int(nlist), len(x)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], nlist)
    index.cp.seed = int(seed)
    index.train(x)
    index.nprobe = max(1, min(int(nprobe), nlist))
    return index


# ----------------------------------------------------------------------------------------------------------------
# Nearest centroid / k-means


def _assign_torch(xt, ct, working_bytes: int):
    """(squared distance, index) of the nearest row of ``ct`` for every row of ``xt`` (torch, blocked)."""
    import torch

    n = len(xt)
    best_d = torch.empty(n, device=xt.device)
    best_i = torch.empty(n, dtype=torch.int64, device=xt.device)
    c_norm = (ct * ct).sum(1)
    step = rows_per_chunk(len(ct), working_bytes)
    for s in range(0, n, step):
        xb = xt[s: s + step]
        d = (xb * xb).sum(1, keepdim=True) - 2 * xb @ ct.T + c_norm[None, :]
        v, i = d.min(1)
        best_d[s: s + step] = v.clamp_min_(0)
        best_i[s: s + step] = i
    return best_d, best_i


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"k-means precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


class _Float32Rows:
    """Squared distances from chosen rows to every row, in float32 (k-means++ seeding's arithmetic)."""

    def __init__(self, x, device: str):
        self.values = as_tensor(x, device)
        self.sq_norms = (self.values * self.values).sum(1)

    def sq_dist_to(self, rows):
        """``(len(rows), n)`` squared distances from ``rows`` to every row."""
        xt, norms = self.values, self.sq_norms
        return (norms[None, :] - 2 * (xt @ xt[rows].T).T + norms[rows][:, None]).clamp_min_(0)

    def sq_dist_to_row(self, j: int):
        """Squared distances from row ``j`` to every row, from the differences."""
        return ((self.values - self.values[j]) ** 2).sum(1).clamp_min_(0)


def assign(x: np.ndarray, centroids: np.ndarray, device: str | None = None, backend: str | None = None,
           working_bytes: int = DEFAULT_WORKING_BYTES, precision: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Squared distance to, and index of, the nearest centroid of every row of ``x``.

    ``precision="bfloat16"`` compares bfloat16 products in torch (see
    :func:`kmeans`): the distances and the choice carry their rounding.
    """
    backend, device = resolve_backend(device, backend)
    if _check_precision(precision) == "bfloat16":
        d, i = bf16_assign_rows(_f32(x), as_tensor(centroids, device), device, working_bytes)
        return d.cpu().numpy(), i.cpu().numpy()
    if backend == "faiss":
        x, centroids = _f32(x), _f32(centroids)
        index = _faiss_index(centroids.shape[1], device.startswith("cuda") and faiss_has_gpu())
        index.add(centroids)
        d, i = index.search(x, 1)
        return np.maximum(d[:, 0], 0), i[:, 0].astype(np.int64)
    xt, ct = as_tensor(x, device), as_tensor(centroids, device)
    d, i = _assign_torch(xt, ct, working_bytes)
    return d.cpu().numpy(), i.cpu().numpy()


def kmeanspp_init(x: np.ndarray, k: int, rng: np.random.Generator, weights: np.ndarray | None = None,
                  device: str = "cpu", n_local_trials: int | None = None, precision: str = "float32") -> np.ndarray:
    """Row ids of ``k`` distinct greedy k-means++ seeds (Arthur & Vassilvitskii, 2007; as scikit-learn does it).

    The first seed is drawn uniformly (or by weight); each next one draws
    ``n_local_trials`` (default ``2 + log k``) candidates by D^2 (x weight)
    sampling and keeps the one that lowers the potential most; with one
    trial that is the plain k-means++ of Arthur & Vassilvitskii. Each step costs
    O(trials n d) on ``device`` and moves ``trials`` scalars to the host; when
    every remaining point sits on a seed the next one is uniform among the
    unchosen rows. ``precision="bfloat16"`` computes every distance from
    bfloat16 products (:func:`kmeans`).
    """
    import torch

    rows = Bf16Rows(x, device) if _check_precision(precision) == "bfloat16" else _Float32Rows(x, device)
    n = len(x)
    trials = int(n_local_trials or 2 + int(np.log(max(k, 1))))
    w = None if weights is None else torch.as_tensor(np.asarray(weights, np.float32), device=device)
    p0 = None if weights is None else np.asarray(weights, np.float64) / np.asarray(weights, np.float64).sum()
    first = int(rng.choice(n, p=p0))
    chosen = [first]
    is_chosen = np.zeros(n, bool)
    is_chosen[first] = True
    dist = rows.sq_dist_to_row(first)
    dist[first] = 0
    for _ in range(k - 1):
        p = dist if w is None else dist * w  # zero at every seed (set below)
        cum = torch.cumsum(p, 0, dtype=torch.float64)
        total = float(cum[-1])
        if total <= 0:
            j = int(rng.choice(np.flatnonzero(~is_chosen)))
            new_dist = rows.sq_dist_to_row(j)
        else:
            u = torch.as_tensor(rng.random(trials) * total, dtype=cum.dtype, device=device)
            cand = torch.searchsorted(cum, u).clamp_max_(n - 1)
            cand_d = rows.sq_dist_to(cand)
            cand_d = torch.minimum(cand_d, dist[None, :])
            best = 0
            if trials > 1:  # greedy: the candidate that lowers the potential most
                pot = cand_d.sum(1, dtype=torch.float64) if w is None else \
                    (cand_d * w[None, :]).sum(1, dtype=torch.float64)
                pot[torch.as_tensor(is_chosen[cand.cpu().numpy()], device=device)] = float("inf")
                best = int(torch.argmin(pot))
            j = int(cand[best])
            if is_chosen[j]:  # every candidate hit a seed (floating-point edge): heaviest unchosen point
                j = int(torch.argmax(p))
                new_dist = torch.minimum(dist, rows.sq_dist_to_row(j))
            else:
                new_dist = cand_d[best]
        chosen.append(j)
        is_chosen[j] = True
        dist = torch.minimum(dist, new_dist)
        dist[j] = 0
    return np.asarray(chosen, dtype=np.int64)


def _lloyd_torch(x: np.ndarray, init: np.ndarray, niter: int, weights: np.ndarray | None, device: str,
                 working_bytes: int):
    """Up to ``niter`` Lloyd iterations (assign, then weighted means) on ``device``, stopping at a fixed
    point (the same result as running all ``niter``): ``(centroids, assignment)``, the assignment of ``x``
    to the returned centroids where the last iteration computed it (a fixed point), else None.

    An empty cluster takes over the point farthest from its centroid (its
    distance is then zero), so every centroid keeps a point.
    """
    import torch

    xt = as_tensor(x, device)
    ct = as_tensor(init, device).clone()
    k = len(ct)
    wt = None if weights is None else torch.as_tensor(np.asarray(weights, np.float32), device=device)
    step = rows_per_chunk(x.shape[1], working_bytes, itemsize=8)
    for _ in range(niter):
        d, a = _assign_torch(xt, ct, working_bytes)
        sums = torch.zeros_like(ct, dtype=torch.float64)
        for s in range(0, len(xt), step):  # float64 sums, one block at a time
            xb = xt[s: s + step] if wt is None else xt[s: s + step] * wt[s: s + step, None]
            sums.index_add_(0, a[s: s + step], xb.double())
        counts = torch.bincount(a, weights=None if wt is None else wt.double(), minlength=k).double()
        empty = torch.nonzero(counts == 0).flatten().tolist()
        new = (sums / counts.clamp_min(1e-30)[:, None]).float()
        if empty:
            far = torch.argsort(d, descending=True)[: len(empty)]
            new[torch.as_tensor(empty, device=device)] = xt[far]
        if torch.equal(new, ct):  # a fixed point: every later iteration would return it again
            return ct.cpu().numpy(), a.cpu().numpy()
        ct = new
    return ct.cpu().numpy(), None


def kmeans(x: np.ndarray, k: int, seed: int, niter: int = 20, weights: np.ndarray | None = None,
           device: str | None = None, backend: str | None = None, init: str = "k-means++",
           max_points_per_centroid: int | None = 512, init_points_per_centroid: int | None = 64,
           working_bytes: int = DEFAULT_WORKING_BYTES,
           n_local_trials: int | None = None, precision: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means: ``(centroids (k, d) float32, assignment (n,) int64)``.

    * ``init``: ``"k-means++"`` (default; greedy with ``n_local_trials``, see
      :func:`kmeanspp_init`) or ``"random"`` (k distinct rows), both from ``seed``.
    * ``weights``: per-sample weights (weighted means and weighted seeding).
    * ``max_points_per_centroid``: train on a seeded subsample of at most
      ``k * max_points_per_centroid`` rows (faiss's own default is 256; 512 as in
      the DropQuery authors' code), then assign every row to the final
      centroids; ``None`` trains on all rows.
    * ``init_points_per_centroid``: k-means++ seeding (k passes over its
      input) runs on a seeded subsample of at most ``k * init_points_per_centroid``
      training rows, as scikit-learn's MiniBatchKMeans does; ``None``: all of them.
    * ``k >= n`` returns the points themselves (``n`` centroids, ``assignment = arange(n)``).
    * ``precision``: ``"float32"``, or ``"bfloat16"``: every distance product
      of the seeding, the assignments and the final assignment multiplies the
      rows and centroids rounded to bfloat16 (8 significant bits; float32
      accumulation, a bfloat16 product), on the torch backend. The means stay
      those of the float32 rows (summed in float32 within 1,024-row blocks,
      in float64 across them), and Lloyd also stops once at most 1 row
      in 1,000 changes cluster (:func:`methods.kernels.bf16_kmeans.lloyd`:
      rows within rounding of a tie can keep swapping). On a CPU with native
      bfloat16 that is 2.5x the product rate and half the bytes read per
      seeding pass; the seeds, the Lloyd path and so the clustering differ
      from float32's (choices within the rounding of a distance go either way).

    The faiss backend runs ``faiss.Kmeans`` (``gpu=True`` when faiss has GPUs
    and the device is CUDA) from the same initial centroids the torch backend
    uses, with faiss's own subsampling switched off.
    """
    x = _f32(x)
    k = int(k)
    _check_kmeans_args(x, k, niter, init, weights, precision)
    weights = None if weights is None else np.asarray(weights, dtype=np.float32)
    if k >= len(x):
        return x.copy(), np.arange(len(x), dtype=np.int64)
    backend, device = resolve_backend(device, "torch" if precision == "bfloat16" else backend)
    rng = np.random.default_rng(seed)
    train_rows = None
    if max_points_per_centroid is not None and len(x) > k * int(max_points_per_centroid):
        train_rows = np.sort(rng.choice(len(x), size=k * int(max_points_per_centroid), replace=False))
    xs = x if train_rows is None else x[train_rows]
    ws = weights if weights is None or train_rows is None else weights[train_rows]
    init_centroids = xs[_initial_rows(xs, k, rng, ws, init, init_points_per_centroid, n_local_trials, precision,
                                      device="cpu" if backend == "faiss" else device)]
    assignment = None
    if backend == "faiss":
        faiss = _faiss()
        use_gpu = device.startswith("cuda") and faiss_has_gpu()
        km = faiss.Kmeans(x.shape[1], k, niter=int(niter), seed=int(seed) % (2 ** 31), verbose=False,
                          gpu=bool(use_gpu), min_points_per_centroid=1, max_points_per_centroid=1 << 30)
        if niter > 0:
            km.train(xs, weights=ws, init_centroids=init_centroids)
            centroids = _f32(km.centroids)
        else:
            centroids = init_centroids.copy()
    else:
        lloyd = bf16_lloyd if precision == "bfloat16" else _lloyd_torch
        centroids, assignment = lloyd(xs, init_centroids, int(niter), ws, device, working_bytes)
    if assignment is None or train_rows is not None:  # else the fixed point's own assignment is the final one
        _, assignment = assign(x, centroids, device=device, backend=backend, working_bytes=working_bytes,
                               precision=precision)
    return _f32(centroids), assignment


def _check_kmeans_args(x: np.ndarray, k: int, niter: int, init: str, weights, precision: str) -> None:
    if k <= 0:
        raise ValueError(f"kmeans: the number of clusters must be >= 1, got {k}")
    if len(x) == 0:
        raise ValueError("kmeans: no points to cluster")
    if niter < 0:
        raise ValueError(f"kmeans: niter must be >= 0, got {niter}")
    if init not in ("k-means++", "random"):
        raise ValueError(f"kmeans: init must be 'k-means++' or 'random', got {init!r}")
    _check_precision(precision)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float32)
        if weights.shape != (len(x),) or (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError("kmeans: weights must be n finite non-negative values with a positive sum")


def _initial_rows(xs: np.ndarray, k: int, rng: np.random.Generator, ws, init: str,
                  init_points_per_centroid: int | None, n_local_trials: int | None, precision: str,
                  device: str) -> np.ndarray:
    """Rows of ``xs`` that start Lloyd: k-means++ seeds (on a subsample of ``init_points_per_centroid`` per
    centroid) or ``k`` distinct random rows."""
    if init != "k-means++":
        return np.sort(rng.choice(len(xs), size=k, replace=False))
    seed_rows = np.arange(len(xs))
    if init_points_per_centroid is not None and len(xs) > k * int(init_points_per_centroid):
        seed_rows = np.sort(rng.choice(len(xs), size=k * int(init_points_per_centroid), replace=False))
    return seed_rows[kmeanspp_init(xs[seed_rows], k, rng, None if ws is None else ws[seed_rows], device=device,
                                   n_local_trials=n_local_trials, precision=precision)]


def nearest_members(x: np.ndarray, centroids: np.ndarray, assignment: np.ndarray,
                    working_bytes: int = DEFAULT_WORKING_BYTES) -> np.ndarray:
    """Per centroid, the row of its own cluster closest to it (-1 where the cluster is empty); ties: lower row."""
    x = _f32(x)
    centroids = _f32(centroids)
    assignment = np.asarray(assignment, dtype=np.int64)
    d = np.empty(len(x), dtype=np.float64)
    step = rows_per_chunk(x.shape[1], min(working_bytes, CACHE_BLOCK_BYTES))
    for s in range(0, len(x), step):
        diff = x[s: s + step] - centroids[assignment[s: s + step]]
        d[s: s + step] = np.einsum("ij,ij->i", diff, diff)
    order = np.lexsort((np.arange(len(x)), d, assignment))
    first = np.ones(len(order), bool)
    first[1:] = assignment[order][1:] != assignment[order][:-1]
    picked = np.full(len(centroids), -1, dtype=np.int64)
    picked[assignment[order[first]]] = order[first]
    return picked


def nearest_to_centroids(x: np.ndarray, centroids: np.ndarray, assignment: np.ndarray | None = None,
                         device: str | None = None, backend: str | None = None,
                         working_bytes: int = DEFAULT_WORKING_BYTES) -> np.ndarray:
    """One distinct row of ``x`` per centroid: the member of its cluster closest to it.

    ``assignment`` (nearest-centroid ids, as :func:`kmeans` returns) is
    computed when not given. A centroid that owns no row takes the closest row
    not already taken. Ties go to the lower row id. Needs ``len(x) >= k``.
    """
    x = _f32(x)
    centroids = _f32(centroids)
    k = len(centroids)
    if k > len(x):
        raise ValueError(f"nearest_to_centroids: {k} centroids but only {len(x)} points")
    backend, device = resolve_backend(device, backend)
    if assignment is None:
        _, assignment = assign(x, centroids, device=device, backend=backend, working_bytes=working_bytes)
    picked = nearest_members(x, centroids, assignment, working_bytes)
    step = rows_per_chunk(x.shape[1], working_bytes)
    taken = np.zeros(len(x), bool)
    taken[picked[picked >= 0]] = True
    for c in np.flatnonzero(picked < 0):
        dist = np.empty(len(x), dtype=np.float64)
        for s in range(0, len(x), step):
            diff = x[s: s + step] - centroids[c]
            dist[s: s + step] = np.einsum("ij,ij->i", diff, diff)
        dist[taken] = np.inf
        picked[c] = int(np.argmin(dist))
        taken[picked[c]] = True
    return picked


# ----------------------------------------------------------------------------------------------------------------
# Exact kNN


def check_probe_args(caller: str, n: int, k: int, nprobe: int) -> None:
    """The approximate self-kNN searches' shared refusals: ``k`` outside ``[1, n - 1]``, ``nprobe < 1``."""
    if k <= 0 or k > n - 1:
        raise ValueError(f"{caller}: k must be in [1, {n - 1}] for {n} points (a point is not its own neighbour), "
                         f"got {k}")
    if nprobe < 1:
        raise ValueError(f"{caller}: nprobe must be >= 1, got {nprobe}")


def _drop_self(d: np.ndarray, i: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From ``k + 1`` neighbours per row, drop the row itself (or, if absent, the farthest)."""
    is_self = i == rows[:, None]
    no_self = ~is_self.any(1)
    is_self[no_self, -1] = True
    keep = ~is_self
    return d[keep].reshape(len(d), k), i[keep].reshape(len(i), k)


def knn(x: np.ndarray, k: int, queries: np.ndarray | None = None, device: str | None = None,
        chunk: int | None = None, backend: str | None = None,
        working_bytes: int = DEFAULT_WORKING_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours: ``(squared distances (m, k) float32, row ids (m, k) int64)``.

    Rows are sorted nearest first. With ``queries=None`` the queries are the
    rows of ``x`` and **each row's own entry is excluded** (so ``k <= n - 1``);
    with explicit ``queries`` nothing is excluded (a query equal to a row of
    ``x`` finds it at distance 0). ``chunk``: query rows per block (default:
    as many as fit ``working_bytes`` against all of ``x``).
    """
    x = _f32(x)
    n = len(x)
    self_query = queries is None
    k = int(k)
    limit = n - 1 if self_query else n
    if k <= 0 or k > limit:
        raise ValueError(f"knn: k must be in [1, {limit}] for {n} points"
                         + (" (a point is not its own neighbour)" if self_query else "") + f", got {k}")
    q = x if self_query else _f32(queries)
    backend, device = resolve_backend(device, backend)
    m = len(q)
    out_d = np.empty((m, k), dtype=np.float32)
    out_i = np.empty((m, k), dtype=np.int64)
    if backend == "faiss":
        index = _faiss_index(x.shape[1], device.startswith("cuda") and faiss_has_gpu())
        index.add(x)
        step = chunk or max(1, rows_per_chunk(k + 1, working_bytes, itemsize=12))
        for s in range(0, m, step):
            d, i = index.search(q[s: s + step], k + 1 if self_query else k)
            if self_query:
                d, i = _drop_self(d, i, np.arange(s, s + len(d)), k)
            out_d[s: s + step] = np.maximum(d, 0)
            out_i[s: s + step] = i
        return out_d, out_i
    import torch

    xt = as_tensor(x, device)
    x_norm = (xt * xt).sum(1)
    step = chunk or rows_per_chunk(n, working_bytes)
    for s in range(0, m, step):
        qb = xt[s: s + step] if self_query else as_tensor(q[s: s + step], device)
        d = torch.addmm(x_norm[None, :], qb, xt.T, alpha=-2)  # ||q||^2 is added after the top-k
        if self_query:
            r = torch.arange(len(qb), device=device)
            d[r, r + s] = float("inf")
        v, i = torch.topk(d, k, dim=1, largest=False, sorted=True)
        out_d[s: s + step] = (v + (qb * qb).sum(1, keepdim=True)).clamp_min_(0).cpu().numpy()
        out_i[s: s + step] = i.cpu().numpy()
    return out_d, out_i
