"""cell_knn (clustered cells probed per cell) against the exact kNN: recall, exact distances where it agrees,
no self, sorted, seeded, exhaustive when every cell is probed, short cells widened, bad input refused --
and self_knn's dispatch."""

import numpy as np
import pytest

from methods.core.predictors import unit_rows
from methods.kernels import SELF_KNN_SEARCHES, cell_knn, knn, self_knn

pytestmark = pytest.mark.usefixtures("one_thread")


def _pool(seed=0, n=2000, d=32, classes=20):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 2
    return unit_rows((centres[rng.integers(0, classes, n)] + rng.normal(size=(n, d))).astype(np.float32))


def _recall(found, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)])


def test_cell_knn_recalls_the_exact_neighbours_with_their_exact_distances():
    x = _pool()
    d_exact, i_exact = knn(x, 10)
    d, i = cell_knn(x, 10, seed=0)
    assert d.shape == i.shape == (2000, 10) and d.dtype == np.float32 and i.dtype == np.int64
    assert not (i == np.arange(2000)[:, None]).any() and (np.diff(d, axis=1) >= 0).all()
    assert all(len(set(row)) == 10 for row in i.tolist())
    assert _recall(i, i_exact) >= 0.9
    found = i == i_exact
    np.testing.assert_allclose(d[found], d_exact[found], atol=1e-5)
    assert np.array_equal(i, cell_knn(x, 10, seed=0)[1])
    assert not np.array_equal(i, cell_knn(x, 10, seed=1)[1])  # the seed is the coarse k-means'


def test_every_cell_probed_is_the_exact_search():
    x = _pool(n=600)
    d_exact, i_exact = knn(x, 8)
    d, i = cell_knn(x, 8, nlist=6, nprobe=6)
    assert _recall(i, i_exact) > 0.999
    np.testing.assert_allclose(d, d_exact, atol=1e-5)


def test_cells_too_small_for_k_probe_further_cells():
    x = _pool(n=300, classes=30)
    d, i = cell_knn(x, 40, nlist=60, nprobe=1)  # five rows a cell, one cell probed: far short of 41
    assert i.shape == (300, 40) and all(len(set(row)) == 40 for row in i.tolist())
    assert not (i == np.arange(300)[:, None]).any() and np.isfinite(d).all()
    assert np.mean(i[:, 0] == knn(x, 1)[1][:, 0]) > 0.9  # the nearest is within reach; the 40th often is not


def test_bfloat16_coarse_cells_keep_float32_distances():
    x = _pool()
    d, i = cell_knn(x, 10, seed=0, precision="bfloat16")
    exact = ((x[:, None, :] - x[i]) ** 2).sum(-1)
    np.testing.assert_allclose(d, exact, atol=1e-5)
    assert _recall(i, knn(x, 10)[1]) >= 0.9


def test_bad_input_is_refused():
    x = _pool(n=50)
    with pytest.raises(ValueError, match=r"k must be in \[1, 49\]"):
        cell_knn(x, 50)
    with pytest.raises(ValueError, match="nprobe must be >= 1"):
        cell_knn(x, 5, nprobe=0)


@pytest.mark.parametrize("search", SELF_KNN_SEARCHES)
def test_self_knn_dispatches_each_search(search):
    x = _pool(n=800)
    d, i = self_knn(x, 5, search, seed=0)
    assert i.shape == (800, 5) and not (i == np.arange(800)[:, None]).any()
    assert _recall(i, knn(x, 5)[1]) >= 0.9


def test_self_knn_lists_the_known_searches():
    with pytest.raises(ValueError, match=r"knn must be one of \['exact', 'approximate', 'cells'\], got 'hnsw'"):
        self_knn(_pool(n=50), 5, "hnsw")
