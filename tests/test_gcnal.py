"""GCNAL (Caramalau et al., CVPR 2021): the sparse normalised adjacency against a dense computation, the
chunked GCN training against dense autograd, both selection rules against direct computations, seeding,
cold start, bad input -- and approximate_knn against exact kNN."""

import numpy as np
import pytest

from methods.acquisition import gcnal
from methods.acquisition.gcnal import init_params, margin_picks, normalised_knn_adjacency, train_gcn
from methods.base import SelectionContext
from methods.core.predictors import unit_rows
from methods.kernels import approximate_knn, greedy_k_center, knn
from methods.registry import ACQUISITIONS
from methods.validation import check_selection_inputs

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"epochs": 30, "hidden": 32}


def _pool(seed=0, n=240, d=16, classes=5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 2
    return (centres[rng.integers(0, classes, n)] + rng.normal(size=(n, d))).astype(np.float32)


def _ctx(x, labelled=()):
    labelled = np.asarray(labelled, np.int64)
    mask = np.ones(len(x), bool)
    mask[labelled] = False
    return SelectionContext(round=1, num_classes=5, unlabelled=np.flatnonzero(mask), labelled=labelled,
                            labelled_targets=np.zeros(len(labelled), np.int64), pool_features=x)


def _dense_adjacency(x, k):
    """D^-1/2 (A + I) D^-1/2 of the symmetrised cosine kNN graph, from the full similarity matrix."""
    sim = x.astype(np.float64) @ x.T.astype(np.float64)
    d2 = ((x[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    near = np.zeros_like(sim, dtype=bool)
    near[np.repeat(np.arange(len(x)), k), np.argsort(d2, axis=1, kind="stable")[:, :k].ravel()] = True
    a = np.where(near | near.T, np.maximum(sim, 0), 0.0) + np.eye(len(x))
    inv = 1 / np.sqrt(a.sum(1))
    return inv[:, None] * a * inv[None, :]


def test_sparse_normalised_adjacency_equals_the_dense_computation():
    x = unit_rows(_pool(n=120))
    adj = normalised_knn_adjacency(x, 6)
    np.testing.assert_allclose(adj.toarray(), _dense_adjacency(x, 6), atol=1e-6)
    assert adj.nnz <= len(x) * (2 * 6 + 1) and (abs(adj - adj.T) > 1e-7).nnz == 0


def test_chunked_training_equals_dense_full_batch_autograd(monkeypatch):
    """Row chunks, recomputed activations and the symmetric second-layer gradient give plain GCN training."""
    import torch

    x = unit_rows(_pool(n=150))
    adj = normalised_knn_adjacency(x, 5)
    positive = np.zeros(len(x), bool)
    positive[:20] = True
    monkeypatch.setattr(gcnal, "MASK_BLOCK", 16)  # several chunks of a 150-node graph
    ours = train_gcn(adj, x, positive, hidden=8, epochs=5, lr=1e-2, dropout=0.0, balance=1.2, seed=3,
                     working_bytes=16 * 8 * 16 * 2)  # two mask blocks per chunk, activations recomputed

    params = init_params(x.shape[1], 8, torch.Generator().manual_seed(3))
    a, v = torch.as_tensor(adj.toarray()), torch.as_tensor(x)
    opt = torch.optim.Adam(list(params.values()), lr=1e-2, weight_decay=5e-4)
    pos = torch.as_tensor(positive)
    for _ in range(5):
        opt.zero_grad()
        h = torch.relu(a @ v @ params["W1"] + params["b1"])
        s = torch.sigmoid(a @ h @ params["W2"] + params["b2"])[:, 0]
        loss = -torch.log(s[pos]).mean() - 1.2 * torch.log(1 - s[~pos]).mean()  # the paper's loss, verbatim
        loss.backward()
        opt.step()
    with torch.no_grad():
        h = torch.relu(a @ v @ params["W1"] + params["b1"])
        ref = torch.sigmoid(a @ h @ params["W2"] + params["b2"])[:, 0].numpy()
    np.testing.assert_allclose(ours.scores, ref, atol=1e-5)
    np.testing.assert_allclose(ours.params["W1"], params["W1"].detach().numpy(), atol=1e-5)


def test_dropout_masks_do_not_depend_on_the_memory_bound(monkeypatch):
    x = unit_rows(_pool(n=100))
    adj = normalised_knn_adjacency(x, 5)
    positive = np.arange(len(x)) < 15
    monkeypatch.setattr(gcnal, "MASK_BLOCK", 16)
    kept = train_gcn(adj, x, positive, hidden=8, epochs=4, seed=1, working_bytes=1 << 30)
    recomputed = train_gcn(adj, x, positive, hidden=8, epochs=4, seed=1, working_bytes=16 * 8 * 16)
    np.testing.assert_allclose(kept.scores, recomputed.scores, atol=1e-6)


def test_uncertain_gcn_picks_the_scores_closest_to_the_margin():
    scores = np.array([0.9, 0.12, 0.05, 0.3, 0.1, 0.08, 0.5, 0.14])
    assert margin_picks(scores, 3, 0.1).tolist() == [4, 1, 5]  # gaps 0, 0.02, 0.02 (tie: lower position)
    assert margin_picks(scores, 2, 0.5).tolist() == [6, 3]
    x = _pool()
    ctx = _ctx(x, labelled=np.arange(0, 240, 8))
    strategy = ACQUISITIONS.create("gcnal", **FAST)
    graph = strategy.fit_round(ctx, 12, np.random.default_rng(5))
    picked = strategy.select(ctx, 12, np.random.default_rng(5)).indices
    unl = graph.fit.scores[graph.n_labelled:]
    expected = graph.nodes[graph.n_labelled + np.argsort(np.abs(unl.astype(np.float64) - 0.1), kind="stable")[:12]]
    assert picked.tolist() == expected.tolist()


def test_core_gcn_is_greedy_k_center_on_the_first_layer_embeddings():
    x = _pool()
    ctx = _ctx(x, labelled=np.arange(0, 240, 8))
    strategy = ACQUISITIONS.create("gcnal", variant="core", **FAST)
    rng = np.random.default_rng(6)
    graph = strategy.fit_round(ctx, 12, rng)
    n_lab, p = graph.n_labelled, graph.fit.params
    v = unit_rows(x[graph.nodes])
    adj = _dense_adjacency(v, strategy.k_nn)
    h = np.maximum(adj @ v @ p["W1"] + p["b1"], 0)  # the first layer, computed directly
    np.testing.assert_allclose(graph.fit.embeddings, h, atol=1e-4)
    expected = graph.nodes[greedy_k_center(h, np.arange(n_lab, len(h)), np.arange(n_lab), 12, rng)]
    assert strategy.select(ctx, 12, np.random.default_rng(6)).indices.tolist() == expected.tolist()


@pytest.mark.parametrize("options", [{}, {"variant": "core"}, {"knn": "approximate"}, {"knn": "cells"},
                                     {"pool_sample": 100}])
def test_selections_are_distinct_unlabelled_budget_sized_and_seeded(options):
    x = _pool()
    labelled = np.arange(0, 240, 10)
    ctx = _ctx(x, labelled)
    strategy = ACQUISITIONS.create("gcnal", **FAST, **options)
    check_selection_inputs("gcnal", ctx, 15)
    first = strategy.select(ctx, 15, np.random.default_rng(4)).indices
    assert len(first) == 15 and len(set(first.tolist())) == 15 and not set(first.tolist()) & set(labelled.tolist())
    assert np.array_equal(first, strategy.select(ctx, 15, np.random.default_rng(4)).indices)
    others = [strategy.select(ctx, 15, np.random.default_rng(s)).indices for s in (5, 6)]
    assert any(not np.array_equal(first, o) for o in others)
    assert 0 <= ctx.extras["gcnal_train_accuracy"] <= 1 and np.isfinite(ctx.extras["gcnal_loss"])


def test_cold_start_is_k_center_on_the_features():
    x = _pool()
    ctx = _ctx(x)
    for variant in ("uncertain", "core"):
        picked = ACQUISITIONS.create("gcnal", variant=variant, **FAST).select(ctx, 10, np.random.default_rng(2))
        expected = greedy_k_center(unit_rows(x), np.arange(len(x)), np.empty(0, np.int64), 10,
                                   np.random.default_rng(2))
        assert picked.indices.tolist() == expected.tolist() and ctx.extras["gcnal_cold_start"] == 1.0


def test_bad_input_is_refused_with_the_fix():
    x = _pool(n=12)
    with pytest.raises(ValueError, match=r"k_nn=12 needs more than 12 graph nodes.*set k_nn below 12"):
        ACQUISITIONS.create("gcnal", k_nn=12, **FAST).select(_ctx(x, [0, 1]), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"variant must be one of \['uncertain', 'core'\]"):
        ACQUISITIONS.create("gcnal", variant="coreset")
    with pytest.raises(ValueError, match="budget 11 must be in"):
        ACQUISITIONS.create("gcnal", **FAST).select(_ctx(x, [0, 1]), 11, np.random.default_rng(0))


def test_approximate_knn_recalls_the_exact_neighbours():
    x = unit_rows(_pool(n=2000, d=32, classes=20))
    d_exact, i_exact = knn(x, 10)
    d_apx, i_apx = approximate_knn(x, 10, nprobe=16, seed=0)
    assert d_apx.shape == (2000, 10) and d_apx.dtype == np.float32 and i_apx.dtype == np.int64
    assert not (i_apx == np.arange(2000)[:, None]).any() and (np.diff(d_apx, axis=1) >= 0).all()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_exact, i_apx)])
    assert recall >= 0.9
    found = i_apx == i_exact  # where it finds the true neighbour, the distance is the exact one
    np.testing.assert_allclose(d_apx[found], d_exact[found], atol=1e-5)
    assert np.array_equal(i_apx, approximate_knn(x, 10, nprobe=16, seed=0)[1])
    _, exhaustive = approximate_knn(x, 10, nlist=16, nprobe=16)  # every cell probed: exact
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_exact, exhaustive)]) > 0.999
    with pytest.raises(ValueError, match=r"k must be in \[1, 1999\]"):
        approximate_knn(x, 2000)
