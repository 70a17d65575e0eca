"""faiss / torch clustering kernels checked against scikit-learn and dense references on small inputs."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.neighbors import NearestNeighbors

from methods.acquisition.clustering import purity_delta
from methods.kernels.clustering import assign, kmeans, knn, nearest_to_centroids
from methods.kernels.radius import knn_radius_graph, min_dist_to_other_cluster, radius_graph

BACKENDS = ["faiss", "torch"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _clear_radius(dense, near):
    """A radius near ``near`` with no pair distance within 1e-3 of it (float32 backends may differ at a tie)."""
    ds = np.sort(dense.ravel())
    ds = ds[np.searchsorted(ds, near):]
    j = int(np.argmax(np.diff(ds) > 2e-3))
    return float(ds[j] + ds[j + 1]) / 2


def _blobs(n=1500, d=16, centers=10, seed=0):
    x, y = make_blobs(n, d, centers=centers, random_state=seed)
    return x.astype(np.float32), y


def _inertia(x, centroids, assignment):
    return float(((x - centroids[assignment]) ** 2).sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_is_deterministic_for_a_seed_and_differs_across_seeds(backend):
    x, _ = _blobs()
    c1, a1 = kmeans(x, 30, seed=3, backend=backend, device="cpu")
    c2, a2 = kmeans(x, 30, seed=3, backend=backend, device="cpu")
    assert np.array_equal(a1, a2) and np.array_equal(c1, c2)
    assert c1.shape == (30, 16) and c1.dtype == np.float32 and a1.dtype == np.int64
    _, a3 = kmeans(x, 30, seed=4, backend=backend, device="cpu")
    assert not np.array_equal(a1, a3)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [10, 30])
def test_kmeans_inertia_is_within_three_percent_of_scikit_learn(seed, k):
    x, _ = _blobs(seed=seed)
    centroids, assignment = kmeans(x, k, seed=seed, device="cpu")
    ours = _inertia(x, centroids, assignment)
    reference = KMeans(k, random_state=seed).fit(x).inertia_
    assert ours <= 1.03 * reference, (ours, reference)
    # every point sits with its nearest centroid
    _, nearest = assign(x, centroids, device="cpu")
    assert np.array_equal(nearest, assignment)


def test_torch_backend_equals_faiss_backend():
    x, _ = _blobs(seed=5)
    for k in (10, 25):
        cf, af = kmeans(x, k, seed=k, backend="faiss", device="cpu")
        ct, at = kmeans(x, k, seed=k, backend="torch", device="cpu")
        assert np.array_equal(af, at)
        np.testing.assert_allclose(cf, ct, atol=1e-4)
    df, i_f = knn(x, 8, backend="faiss", device="cpu")
    dt, i_t = knn(x, 8, backend="torch", device="cpu", chunk=97)
    assert (i_f == i_t).mean() > 0.999  # only exact distance ties may swap
    np.testing.assert_allclose(df, dt, rtol=1e-4, atol=1e-3)
    radius = _clear_radius(cdist(x, x), 4.0)
    gf = radius_graph(x, radius, backend="faiss", device="cpu", prefilter="none")
    gt = radius_graph(x, radius, backend="torch", device="cpu", working_bytes=1 << 16, prefilter="none")
    gb = radius_graph(x, radius, device="cpu", working_bytes=1 << 16, prefilter="bf16")
    assert np.array_equal(gf[0], gt[0]) and np.array_equal(gf[1], gt[1])
    assert np.array_equal(gf[0], gb[0]) and np.array_equal(gf[1], gb[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_weights_edge_cases_and_errors(backend):
    x, _ = _blobs(n=300)
    w = np.random.default_rng(0).uniform(0.1, 3, len(x)).astype(np.float32)
    c, a = kmeans(x, 1, seed=0, weights=w, backend=backend, device="cpu")
    np.testing.assert_allclose(c[0], np.average(x, axis=0, weights=w), rtol=1e-4, atol=1e-4)
    assert (a == 0).all()
    c, a = kmeans(x[:7], 7, seed=0, backend=backend, device="cpu")  # k >= n: the points themselves
    assert np.array_equal(c, x[:7]) and np.array_equal(a, np.arange(7))
    with pytest.raises(ValueError, match=">= 1"):
        kmeans(x, 0, seed=0, backend=backend, device="cpu")
    with pytest.raises(ValueError, match="weights"):
        kmeans(x, 3, seed=0, weights=-w, backend=backend, device="cpu")
    # Subsampled training (k * max_points_per_centroid < n) is seeded too, and still assigns every row.
    _, a1 = kmeans(x, 5, seed=1, max_points_per_centroid=20, backend=backend, device="cpu")
    _, a2 = kmeans(x, 5, seed=1, max_points_per_centroid=20, backend=backend, device="cpu")
    assert np.array_equal(a1, a2) and len(a1) == len(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_equals_scikit_learn_exact_search(backend):
    x, _ = _blobs(n=800, seed=1)
    nn = NearestNeighbors(n_neighbors=6, algorithm="brute").fit(x)
    want_d, want_i = nn.kneighbors(x, 6)
    d, i = knn(x, 5, backend=backend, device="cpu", working_bytes=1 << 15)  # self excluded
    assert np.array_equal(i, want_i[:, 1:])
    np.testing.assert_allclose(np.sqrt(d), want_d[:, 1:], rtol=1e-4, atol=1e-3)
    q = x[:40] + 0.05
    d, i = knn(x, 4, queries=q, backend=backend, device="cpu")
    want_d, want_i = nn.kneighbors(q, 4)
    assert np.array_equal(i, want_i)
    np.testing.assert_allclose(np.sqrt(d), want_d, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="own neighbour"):
        knn(x[:5], 5, backend=backend, device="cpu")


def test_knn_drops_the_row_itself_even_among_duplicates():
    x = np.repeat(np.arange(6, dtype=np.float32)[:, None], 2, axis=0)  # every point twice
    for backend in BACKENDS:
        d, i = knn(x, 1, backend=backend, device="cpu")
        assert (i[:, 0] != np.arange(len(x))).all() and (d[:, 0] == 0).all()


#: (backend, prefilter): faiss and torch decide on float32 distances, the bfloat16 prefilter on certified bounds
#: and float64 (forced here, so it runs even where the CPU only emulates bfloat16).
PATHS = [("faiss", "none"), ("torch", "none"), (None, "bf16")]


@pytest.mark.parametrize("backend,prefilter", PATHS)
def test_radius_graph_and_purity_distances_equal_dense_references(backend, prefilter):
    x, _ = _blobs(n=600, seed=2)
    dense = cdist(x, x)
    radius = _clear_radius(dense, float(np.quantile(dense, 0.02)))
    indptr, indices = radius_graph(x, radius, backend=backend, device="cpu", working_bytes=1 << 15,
                                   prefilter=prefilter)
    for r in (0, 17, 599):
        row = indices[indptr[r]: indptr[r + 1]]
        assert row[0] == r and sorted(row[1:].tolist()) == sorted(set(np.flatnonzero(dense[r] < radius)) - {r})
    assert indptr[-1] == (dense < radius).sum()
    with pytest.raises(RuntimeError, match="more than"):
        radius_graph(x, radius, backend=backend, device="cpu", max_edges=len(x), prefilter=prefilter)
    # Bipartite: every row to a subset of target rows, neighbours as positions in ``targets``.
    targets = np.sort(np.random.default_rng(0).choice(len(x), 150, replace=False))
    bptr, bidx = radius_graph(x, radius, backend=backend, device="cpu", working_bytes=1 << 15, targets=targets,
                              prefilter=prefilter)
    expected = dense[:, targets] < radius
    assert bptr[-1] == expected.sum()
    for r in range(len(x)):
        assert bidx[bptr[r]: bptr[r + 1]].tolist() == np.flatnonzero(expected[r]).tolist()
    capped_ptr, capped = knn_radius_graph(x, radius, 4, backend=backend, device="cpu")
    assert np.diff(capped_ptr).max() <= 4 and (capped[capped_ptr[:-1]] == np.arange(len(x))).all()
    labels = KMeans(5, random_state=0, n_init=1).fit_predict(x)
    other = np.where(labels[:, None] != labels[None, :], dense, np.inf).min(1)
    np.testing.assert_allclose(min_dist_to_other_cluster(x, labels, device="cpu", working_bytes=1 << 15,
                                                         prefilter=prefilter), other, rtol=1e-4, atol=1e-3)


def _exact_dense(x):
    from methods.kernels.lowp import exact_sq_dist

    i, j = np.meshgrid(np.arange(len(x)), np.arange(len(x)), indexing="ij")
    return exact_sq_dist(x, i.ravel(), j.ravel()).reshape(len(x), len(x))


@pytest.mark.parametrize("dim,scale", [(16, 1.0), (512, 0.05)])
def test_bf16_prefilter_is_exact_in_float64_even_at_the_purity_radius(dim, scale):
    """Purity distances are the float64 ones, and a graph at one of them as radius leaves out exactly the pairs
    at that distance: the boundary pair is decided the same way in both kernels. Crowded radii (many pairs
    near the threshold, d = 16) and norms far from 1 (the bound scales with them) included."""
    rng = np.random.default_rng(dim)
    x = (rng.standard_normal((500, dim)) * scale * rng.uniform(0.5, 2.0, (500, 1))).astype(np.float32)
    x[7] = x[3]  # a duplicate: distance exactly 0
    labels = KMeans(6, random_state=0, n_init=1).fit_predict(x)
    sq = _exact_dense(x)
    other = np.sqrt(np.where(labels[:, None] != labels[None, :], sq, np.inf).min(1))
    purity = min_dist_to_other_cluster(x, labels, device="cpu", working_bytes=1 << 14, prefilter="bf16")
    assert np.array_equal(purity, other)
    for radius in (float(np.median(purity)), float(np.quantile(np.sqrt(sq), 0.3))):
        indptr, indices = radius_graph(x, radius, device="cpu", working_bytes=1 << 14, prefilter="bf16")
        within = np.sqrt(sq) < radius
        assert indptr[-1] == within.sum()
        for r in range(len(x)):
            row = indices[indptr[r]: indptr[r + 1]]
            assert row[0] == r and row[1:].tolist() == sorted(set(np.flatnonzero(within[r])) - {r})
        targets = np.arange(0, 500, 3)
        bptr, bidx = radius_graph(x, radius, device="cpu", working_bytes=1 << 14, targets=targets, prefilter="bf16")
        assert all(bidx[bptr[r]: bptr[r + 1]].tolist() == np.flatnonzero(within[r, targets]).tolist()
                   for r in range(len(x)))


def test_purity_delta_matches_a_brute_force_grid_search():
    rng = np.random.default_rng(0)
    d_other = rng.gamma(2.0, 0.3, 997)
    grid = np.linspace(0.01, 2, 200)
    purity = np.array([(d_other >= g).mean() for g in grid])
    assert purity_delta(d_other, 0.95, list(grid)) == pytest.approx(grid[purity >= 0.95].max())
    exact = purity_delta(d_other, 0.95)
    assert (d_other >= exact).mean() >= 0.95 and (d_other >= exact + 1e-9).mean() < 0.95


def test_nearest_to_centroids_picks_each_clusters_closest_member_and_fills_empty_ones():
    x, _ = _blobs(n=400, seed=3)
    centroids, assignment = kmeans(x, 12, seed=0, device="cpu")
    picked = nearest_to_centroids(x, centroids, assignment)
    dense = cdist(x, centroids, "sqeuclidean")
    for c in range(12):
        members = np.flatnonzero(assignment == c)
        assert picked[c] == members[np.argmin(dense[members, c])]
    far = np.full((1, x.shape[1]), 1e4, np.float32)  # a centroid nobody is assigned to
    both = np.concatenate([centroids, far])
    picked = nearest_to_centroids(x, both)
    assert len(set(picked.tolist())) == 13


def test_inverted_file_radius_graph_is_a_high_recall_subset_of_the_exact_one():
    x, _ = _blobs(n=1500, seed=4)
    dense = cdist(x, x)
    radius = _clear_radius(dense, float(np.quantile(dense, 0.02)))
    exact = radius_graph(x, radius, backend="faiss", device="cpu")
    approx = radius_graph(x, radius, backend="faiss", device="cpu", ivf=(40, 8, 0))
    edges = [{(r, int(c)) for r in range(len(x)) for c in ind[ptr[r]: ptr[r + 1]]} for ptr, ind in (exact, approx)]
    assert edges[1] <= edges[0]  # never an edge that is not there
    assert len(edges[1]) / len(edges[0]) > 0.9
    assert radius_graph(x, radius, backend="faiss", device="cpu", ivf=(40, 8, 0))[1].tolist() == approx[1].tolist()
    with pytest.raises(ValueError, match="faiss backend"):
        radius_graph(x, radius, backend="torch", device="cpu", ivf=(40, 8, 0))
