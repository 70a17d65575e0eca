"""CoreSet and BADGE: memory-bounded kernels checked against references on small pools."""

import numpy as np
import pytest
import torch

from methods.base import SelectionContext
from methods.kernels.badge import (_dist_to_centres, _gradient_norms, factorised_sq_dist, gradient_factors,
                                   kmeanspp_potential)
from methods.registry import ACQUISITIONS


def _clustered(n=2000, d=32, k=10, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (k, d))
    y = rng.integers(k, size=n)
    return (centres[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y


def _ctx(x, labelled, probs=None):
    mask = np.ones(len(x), bool)
    mask[labelled] = False
    return SelectionContext(round=1, num_classes=10, unlabelled=np.flatnonzero(mask), labelled=np.asarray(labelled),
                            labelled_targets=np.zeros(len(labelled), np.int64), pool_features=x, probs=probs,
                            embeddings=x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coreset_selects_exactly_what_scikit_activeml_selects(seed):
    from skactiveml.pool import CoreSet

    x, y = _clustered(seed=seed)
    labelled = np.random.default_rng(seed).choice(len(x), 50, replace=False)
    ours = ACQUISITIONS.create("coreset").select(_ctx(x, labelled), 30, np.random.default_rng(seed)).indices
    y_partial = np.full(len(x), np.nan)
    y_partial[labelled] = y[labelled]
    reference = CoreSet(random_state=seed).query(x.astype(np.float64), y_partial, batch_size=30)
    assert ours.tolist() == reference.tolist()
    # A tiny working-memory bound forces many blocks and changes nothing.
    chunked = ACQUISITIONS.create("coreset", working_mb=0).select(_ctx(x, labelled), 30,
                                                                   np.random.default_rng(seed)).indices
    assert chunked.tolist() == ours.tolist()


def _dense_k_center(x, candidates, labelled, budget, rng):
    """The textbook greedy k-center in float64: every distance updated after every pick."""
    x = x.astype(np.float64)
    pool = x[candidates]
    dist = np.full(len(candidates), np.inf)
    for c in x[labelled]:
        dist = np.minimum(dist, ((pool - c) ** 2).sum(1))
    picks = []
    for _ in range(budget):
        j = int(rng.integers(len(candidates))) if np.isinf(dist).all() else int(np.argmax(dist))
        picks.append(j)
        dist = np.minimum(dist, ((pool - pool[j]) ** 2).sum(1))
        dist[j] = -1.0
    return candidates[picks]


@pytest.mark.parametrize("n_labelled,refresh,prefilter,bound", [
    (0, "lazy", "none", "dense"), (1, "lazy", "bf16", "dense"), (40, "lazy", "none", "dense"),
    (40, "lazy", "bf16", "dense"), (300, "lazy", "bf16", "dense"), (40, "dense", "bf16", "dense"),
    (0, "dense", "none", "dense"), (1, "lazy", "none", "cells"), (40, "lazy", "none", "cells"),
    (300, "lazy", "none", "cells"), (300, "dense", "none", "cells")])
def test_lazy_k_center_picks_what_the_dense_update_picks(n_labelled, refresh, prefilter, bound, monkeypatch):
    """Stale upper bounds refreshed only at the top of the order give the textbook picks, in order:
    from exact float32 distances to the labelled set, from their bfloat16 bounds or from each candidate's
    cell of labelled points, on the lazy path or (a pathological pool's fallback) the dense pass."""
    from methods.kernels import kcenter

    monkeypatch.setattr(kcenter, "MIN_CELL_POINTS", 1)  # cells even for one labelled point
    if refresh == "dense":  # every pick falls back to one dense refresh of all bounds
        monkeypatch.setattr(kcenter, "DENSE_FRACTION", 10 ** 9)
        monkeypatch.setattr(kcenter, "REFRESH_BATCH", 1)
    x, _ = _clustered(n=1500, d=24, seed=n_labelled + 7)
    x *= 3.0  # norms far from 1: the bfloat16 margin scales with them
    rows = np.random.default_rng(1).permutation(len(x))
    labelled, candidates = np.sort(rows[:n_labelled]), np.sort(rows[n_labelled + 100:])  # 100 rows in neither
    got = kcenter.greedy_k_center(x, candidates, labelled, 120, np.random.default_rng(3), device="cpu",
                                  prefilter=prefilter, bound=bound)
    assert got.tolist() == _dense_k_center(x, candidates, labelled, 120, np.random.default_rng(3)).tolist()


@pytest.mark.parametrize("dim,scale", [(8, 1.0), (512, 1.0), (512, 40.0), (2048, 0.05)])
def test_bf16_bounds_never_fall_below_the_exact_distance(dim, scale):
    """The prefilter is only exact if every bound is >= the true nearest squared distance."""
    from methods.kernels import kcenter

    rng = np.random.default_rng(dim)
    x = (rng.standard_normal((3000, dim)) * scale * rng.uniform(0.2, 2.0, (3000, 1))).astype(np.float32)
    centres, rows = x[:200], np.arange(200, 3000)
    q, c = x[rows].astype(np.float64), centres.astype(np.float64)
    exact = ((q * q).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2 * q @ c.T).min(1)
    bound = kcenter._bf16_upper_bound(x, rows, centres, 1 << 20)
    assert (bound >= exact).all()
    norms = np.linalg.norm(x[rows], axis=1) * np.linalg.norm(centres, axis=1).max()
    assert np.median((bound - exact) / norms) < 2 * kcenter.bf16_margin(dim)  # and not uselessly loose


def test_cell_bounds_are_valid_and_mostly_tight():
    """Bounds from the candidate's own cell never fall below the nearest labelled distance, and on clustered
    features they equal it (to the float32 margin) for nearly every candidate."""
    from methods.kernels import kcenter

    x, _ = _clustered(n=6000, d=64, k=40, seed=9)
    centres, rows = x[:600], np.arange(600, 6000)
    q, c = x[rows].astype(np.float64), centres.astype(np.float64)
    exact = ((q * q).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2 * q @ c.T).min(1)
    bound = kcenter._cell_upper_bound(x, rows, centres, 1 << 20, "cpu")
    assert (bound >= exact).all()
    margin = kcenter.float32_margin(64) * (np.sqrt((q * q).sum(1)) + np.sqrt((c * c).sum(1)).max()) ** 2
    assert np.mean(bound <= exact + 2 * margin) > 0.9  # the bound carries one margin, float32 rounding another


def test_k_center_prefilter_and_bound_must_be_known():
    from methods.kernels import greedy_k_center

    with pytest.raises(ValueError, match="prefilter must be 'auto', 'bf16' or 'none'"):
        greedy_k_center(np.zeros((4, 2), np.float32), np.arange(2, 4), np.arange(2), 1, np.random.default_rng(0),
                        prefilter="fp8")
    with pytest.raises(ValueError, match="bound must be 'cells' or 'dense'"):
        greedy_k_center(np.zeros((4, 2), np.float32), np.arange(2, 4), np.arange(2), 1, np.random.default_rng(0),
                        bound="tree")


def test_factorised_badge_distance_equals_the_dense_gradient_embedding():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), 50).astype(np.float32)
    h = rng.normal(size=(50, 7)).astype(np.float32)
    a = gradient_factors(probs)
    dense = np.einsum("nc,nd->ncd", a, h).reshape(50, -1)
    want = ((dense - dense[3]) ** 2).sum(1)
    got = factorised_sq_dist(torch.tensor(a), torch.tensor(h), torch.tensor(a[3]), torch.tensor(h[3])).numpy()
    assert np.allclose(got, want, rtol=1e-4, atol=1e-4)
    # BADGE's in-place form (class factors read from the probabilities, several centres at once, row chunks).
    p, ht = torch.tensor(probs), torch.tensor(h)
    top, norms = _gradient_norms(p, ht, chunk=16)
    nearest = _dist_to_centres(p, ht, top, norms, [3, 17], chunk=16).numpy()
    assert np.allclose(nearest, np.minimum(want, ((dense - dense[17]) ** 2).sum(1)), rtol=1e-4, atol=1e-4)


def _dense_kmeanspp(probs, h, candidates, budget, rng):
    """Textbook BADGE seeding on the materialised gradient embedding (small inputs only)."""
    g = np.einsum("nc,nd->ncd", gradient_factors(probs[candidates]), h[candidates]).reshape(len(candidates), -1)
    picked = [int(np.argmax((g ** 2).sum(1)))]
    dist = ((g - g[picked[0]]) ** 2).sum(1)
    for _ in range(budget - 1):
        w = dist.astype(np.float64)
        w[picked] = 0
        j = int(rng.choice(len(w), p=w / w.sum()))
        picked.append(j)
        dist = np.minimum(dist, ((g - g[j]) ** 2).sum(1))
    return candidates[np.asarray(picked)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_badge_matches_dense_kmeanspp_and_beats_random_on_its_objective(seed):
    x, _ = _clustered(n=600, d=16, seed=seed)
    rng = np.random.default_rng(seed)
    logits = x @ rng.normal(size=(16, 10)).astype(np.float32) * 0.3
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labelled = rng.choice(len(x), 20, replace=False)
    ctx = _ctx(x, labelled, probs)
    ours = ACQUISITIONS.create("badge", sampling="inverse_cdf").select(ctx, 25, np.random.default_rng(seed)).indices
    dense = _dense_kmeanspp(probs, x, ctx.unlabelled, 25, np.random.default_rng(seed))
    assert ours.tolist() == dense.tolist()
    # k-means++ is randomised: compare its expected potential with random sampling's over ten draws.
    badge_mean = np.mean([kmeanspp_potential(probs, x, ctx.unlabelled, ACQUISITIONS.create("badge").select(
        ctx, 25, np.random.default_rng(100 + k)).indices) for k in range(10)])
    random_mean = np.mean([kmeanspp_potential(probs, x, ctx.unlabelled, np.random.default_rng(100 + k).choice(
        ctx.unlabelled, 25, replace=False)) for k in range(10)])
    assert badge_mean < random_mean


def _softmax_pool(n, d, classes, seed):
    x, _ = _clustered(n=n, d=d, seed=seed)
    rng = np.random.default_rng(seed)
    logits = x @ rng.normal(size=(d, classes)).astype(np.float32) * 0.3
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return x, (probs / probs.sum(1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("max_pending", [1, 1024])
def test_badge_rejection_draws_follow_the_textbook_d2_law(max_pending, monkeypatch):
    """The joint law of the second and third centres on a 6-candidate pool, over 3,000 seeds, against the exact
    D^2 probabilities from the materialised gradient embedding (chi-square); ``max_pending=1`` folds every
    centre into the distances before the next draw, 1,024 never does here."""
    from scipy.stats import chisquare

    from methods.kernels import badge as kernel

    monkeypatch.setattr(kernel._RejectionD2, "MAX_PENDING", max_pending)
    x, probs = _softmax_pool(40, 4, 3, seed=5)
    candidates = np.arange(34, 40)
    g = np.einsum("nc,nd->ncd", gradient_factors(probs[candidates]), x[candidates]).reshape(6, -1).astype(np.float64)
    sq = ((g[:, None] - g[None]) ** 2).sum(-1)
    first = int(np.argmax((g ** 2).sum(1)))
    expected = np.zeros((6, 6))
    for j in range(6):
        for k in range(6):
            if len({first, j, k}) == 3:
                w3 = np.minimum(sq[first], sq[j])
                w3[[first, j]] = 0
                expected[j, k] = sq[first, j] / sq[first].sum() * w3[k] / w3.sum()
    counts = np.zeros((6, 6))
    for seed in range(3000):
        picks = kernel.badge_kmeanspp(probs, x, candidates, 3, np.random.default_rng(seed), device="cpu")
        assert picks[0] == candidates[first]
        counts[picks[1] - 34, picks[2] - 34] += 1
    cells = expected > 0
    assert counts[~cells].sum() == 0
    assert chisquare(counts[cells], expected[cells] * 3000).pvalue > 1e-3


def test_badge_rejection_and_inverse_cdf_draws_reach_the_same_potential():
    x, probs = _softmax_pool(1500, 16, 10, seed=6)
    ctx = _ctx(x, np.random.default_rng(6).choice(len(x), 20, replace=False), probs)
    mean = {sampling: np.mean([kmeanspp_potential(probs, x, ctx.unlabelled, ACQUISITIONS.create(
        "badge", sampling=sampling).select(ctx, 100, np.random.default_rng(k)).indices) for k in range(6)])
        for sampling in ("rejection", "inverse_cdf")}
    assert mean["rejection"] == pytest.approx(mean["inverse_cdf"], rel=0.05)
    with pytest.raises(ValueError, match="sampling"):
        ACQUISITIONS.create("badge", sampling="metropolis")


def test_badge_with_several_draws_per_pass_keeps_the_kmeanspp_potential():
    """Above ``max_passes`` draws BADGE draws several centres per pass (k-means||-style): its potential
    must stay near exact k-means++'s and well below random's; below it, the picks are the exact ones."""
    x, _ = _clustered(n=1500, d=16, seed=3)
    rng = np.random.default_rng(3)
    logits = x @ rng.normal(size=(16, 10)).astype(np.float32) * 0.3
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    ctx = _ctx(x, rng.choice(len(x), 20, replace=False), probs)

    def potentials(budget, **options):
        strategy = ACQUISITIONS.create("badge", **options)
        picks = [strategy.select(ctx, budget, np.random.default_rng(100 + k)).indices for k in range(5)]
        for p in picks:
            assert len(np.unique(p)) == budget and np.isin(p, ctx.unlabelled).all()
        return np.mean([kmeanspp_potential(probs, x, ctx.unlabelled, p) for p in picks])

    assert np.array_equal(ACQUISITIONS.create("badge", max_passes=24).select(ctx, 25, np.random.default_rng(0)).indices,
                          ACQUISITIONS.create("badge", max_passes=None).select(ctx, 25, np.random.default_rng(0)).indices)
    exact, batched = potentials(200, max_passes=None), potentials(200, max_passes=20)  # 10 centres per pass
    random_mean = np.mean([kmeanspp_potential(probs, x, ctx.unlabelled, np.random.default_rng(100 + k).choice(
        ctx.unlabelled, 200, replace=False)) for k in range(5)])
    print(f"k-means++ potential at 200 centres: exact {exact:.4f} 10/pass {batched:.4f} random {random_mean:.4f}")
    assert batched <= 1.10 * exact and batched < 0.8 * random_mean
    with pytest.raises(ValueError, match="max_passes"):
        ACQUISITIONS.create("badge", max_passes=0)


@pytest.mark.parametrize("space", ["class_guided", "class_guided_text"])
def test_badge_in_the_class_guided_space_equals_badge_on_the_materialised_matrix(space):
    """The lazy class-guided view (rows built when indexed) must give BADGE the same inputs as the full matrix."""
    from methods.feature_space import features_in_space

    x, _ = _clustered(n=400, d=16, seed=4)
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(10), len(x)).astype(np.float32)
    ctx = _ctx(x, rng.choice(len(x), 20, replace=False), probs)
    ctx.text_features = rng.normal(size=(10, 16)).astype(np.float32)
    ctx.class_embeddings = rng.normal(size=(10, 16)).astype(np.float32)
    lazy = ACQUISITIONS.create("badge", feature_space=space).select(ctx, 15, np.random.default_rng(0))
    ctx.embeddings = features_in_space(ctx, space)
    vectors = ctx.class_embeddings if space == "class_guided" else ctx.text_features
    np.testing.assert_allclose(ctx.embeddings[:, 16:], probs @ vectors, rtol=1e-5, atol=1e-6)
    full = ACQUISITIONS.create("badge", feature_space="embedding").select(ctx, 15, np.random.default_rng(0))
    assert lazy.indices.tolist() == full.indices.tolist()


@pytest.mark.parametrize("bound", ["cells", "dense"])
def test_coreset_in_the_class_guided_space_equals_coreset_on_the_materialised_matrix(bound):
    """Coreset's dense passes read the lazy class-guided view by slices (session 18 broke them: every
    coreset-cg trial of the baselines sweep failed until session 19)."""
    from methods.feature_space import feature_view, features_in_space

    x, _ = _clustered(n=300, d=16, seed=5)
    rng = np.random.default_rng(5)
    ctx = _ctx(x, rng.choice(len(x), 3, replace=False), rng.dirichlet(np.ones(10), len(x)).astype(np.float32))
    ctx.class_embeddings = rng.normal(size=(10, 16)).astype(np.float32)
    view = feature_view(ctx, "class_guided")
    np.testing.assert_array_equal(view[2:5], view[np.arange(2, 5)])
    lazy = ACQUISITIONS.create("coreset", feature_space="class_guided", bound=bound).select(
        ctx, 40, np.random.default_rng(0))
    ctx.embeddings = features_in_space(ctx, "class_guided")
    full = ACQUISITIONS.create("coreset", feature_space="embedding", bound=bound).select(
        ctx, 40, np.random.default_rng(0))
    assert lazy.indices.tolist() == full.indices.tolist()


def test_diversity_strategies_run_in_the_round_loop():
    from tests.test_loop import _run

    for name in ("coreset", "badge"):
        results = list(_run(acq=name, rounds=2).rounds())
        assert [m["labels_spent"] for _, m, _ in results] == [0, 6, 12]


def test_bad_feature_space_and_budget_are_clear_errors():
    with pytest.raises(ValueError, match="feature_space must be one of"):
        ACQUISITIONS.create("coreset", feature_space="pixels")
    x, _ = _clustered(n=40)
    with pytest.raises(ValueError, match="exceeds the 30 unlabelled"):
        ACQUISITIONS.create("coreset").select(_ctx(x, np.arange(10)), 31, np.random.default_rng(0))
