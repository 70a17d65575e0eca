"""k-means on bfloat16 products (``precision="bfloat16"``): as good a clustering as float32's, and the
incremental Lloyd (distance table, cluster sums) equal to fresh passes."""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from methods.kernels.bf16_kmeans import Bf16Rows, ClusterSums, DistanceTable, lloyd
from methods.kernels.clustering import assign, kmeans, nearest_members

pytestmark = pytest.mark.usefixtures("one_thread")


def _sphere_blobs(n=3000, d=64, centers=40, std=4.0, seed=0):
    """Overlapping blobs on the unit sphere, as cached CLIP features are: many near-ties between clusters."""
    x, _ = make_blobs(n, d, centers=centers, cluster_std=std, random_state=seed)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _potential(x, centroids):
    return float(assign(x, centroids, device="cpu", backend="torch")[0].sum())


def test_bf16_kmeans_clusters_as_well_as_float32_and_is_seeded():
    x = _sphere_blobs()
    ratios = []
    for seed in range(4):
        c32, _ = kmeans(x, 40, seed=seed, device="cpu")
        c16, a16 = kmeans(x, 40, seed=seed, device="cpu", precision="bfloat16")
        ratios.append(_potential(x, c16) / _potential(x, c32))
        exact = assign(x, c16, device="cpu", backend="torch")[1]
        assert (a16 == exact).mean() > 0.98  # the bfloat16 assignment is the nearest centroid but near ties
        again = kmeans(x, 40, seed=seed, device="cpu", precision="bfloat16")
        assert np.array_equal(again[0], c16) and np.array_equal(again[1], a16)
    print("bf16 / float32 k-means potential per seed:", np.round(ratios, 4))
    assert np.mean(ratios) < 1.01 and max(ratios) < 1.03


def test_bf16_kmeans_subsamples_weights_and_rejects_unknown_precisions():
    x = _sphere_blobs(n=2000)
    w = np.random.default_rng(0).random(len(x)).astype(np.float32)
    c, a = kmeans(x, 10, seed=1, weights=w, max_points_per_centroid=50, precision="bfloat16", device="cpu")
    assert c.shape == (10, x.shape[1]) and a.shape == (len(x),) and set(np.unique(a)) <= set(range(10))
    with pytest.raises(ValueError, match="float32.*bfloat16"):
        kmeans(x, 10, seed=1, precision="half")


def test_distance_table_recomputes_moved_columns_to_a_fresh_pass():
    x = _sphere_blobs(n=1200)
    rows = Bf16Rows(x, "cpu")
    rng = np.random.default_rng(0)
    ct = torch.from_numpy(x[rng.choice(len(x), 30, replace=False)].copy())
    table = DistanceTable(rows, 30)
    for moved in (None, [3], [0, 7, 29], list(range(20))):  # none yet; a few; more than half: a full pass
        if moved is not None:
            ct = ct.clone()
            ct[moved] += torch.from_numpy(rng.normal(0, 0.05, (len(moved), x.shape[1])).astype(np.float32))
        d_table, i_table = table.assign(ct, 1 << 20)
        d_fresh, i_fresh = rows.assign(ct, 1 << 20)
        assert torch.allclose(d_table, d_fresh, atol=1e-5)
        assert (i_table == i_fresh).float().mean() > 0.995  # a moved column's product may round differently
    assert not DistanceTable.fits(10 ** 6, 1000, 256 << 20) and DistanceTable.fits(20000, 100, 256 << 20)


@pytest.mark.parametrize("weighted", [False, True])
def test_cluster_sums_updated_by_the_moved_rows_equal_fresh_sums(weighted):
    rng = np.random.default_rng(1)
    xt = torch.from_numpy(rng.normal(size=(500, 8)).astype(np.float32))
    wt = torch.from_numpy(rng.random(500).astype(np.float32)) if weighted else None
    a = torch.from_numpy(rng.integers(0, 6, 500))
    sums = ClusterSums(xt, wt, 6)
    sums.update(a, None)
    for fraction in (0.02, 0.1, 0.5):  # incremental twice, then a recount
        b = a.clone()
        moved = rng.choice(500, int(fraction * 500), replace=False)
        b[moved] = torch.from_numpy(rng.integers(0, 6, len(moved)))
        sums.update(b, a)
        fresh = ClusterSums(xt, wt, 6)
        fresh.update(b, None)
        assert torch.allclose(sums.sums, fresh.sums, atol=1e-4) and torch.allclose(sums.counts, fresh.counts)
        a = b
    centroids, emptied = sums.means(torch.zeros(500))
    assert not emptied and torch.allclose(centroids, (fresh.sums / fresh.counts[:, None]).float(), atol=1e-6)


def test_bf16_lloyd_ends_at_a_fixed_point_and_refills_empty_clusters():
    x = _sphere_blobs(n=1500)
    init = x[np.random.default_rng(2).choice(len(x), 25, replace=False)]
    centroids, assignment = lloyd(x, init, 50, None, "cpu", 256 << 20)
    assert assignment is not None  # converged within 50 iterations
    means = np.stack([x[assignment == c].mean(0) for c in range(25)])
    assert np.allclose(means, centroids, atol=1e-5)
    _, unfinished = lloyd(x, init, 1, None, "cpu", 256 << 20)
    assert unfinished is None  # one iteration cannot know it reached the fixed point
    # Two centroids on the same point: one cluster is empty after the first assignment, then refilled.
    twin = init.copy()
    twin[1] = twin[0]
    c, a = lloyd(x, twin, 50, None, "cpu", 256 << 20)
    assert len(np.unique(a if a is not None else assign(x, c, device="cpu")[1])) == 25


def test_nearest_members_do_not_depend_on_the_block_size():
    x = _sphere_blobs(n=2000)
    c, a = kmeans(x, 20, seed=0, device="cpu")
    assert np.array_equal(nearest_members(x, c, a, working_bytes=1 << 12), nearest_members(x, c, a))
