"""CEC (Safaei & Patel): every formula against a direct computation, the weighted k-means objective
against scikit-learn's, the Fig. 3 ablations, and the outlier behaviour the neighbour term exists for."""

import numpy as np
import pytest
from sklearn.cluster import KMeans

from methods.acquisition.cec import (calibrated_probs, contextual_prior, entropy, neighbour_uncertainty,
                                     _most_uncertain_per_cluster)
from methods.base import SelectionContext
from methods.core.predictors import softmax
from methods.kernels import kmeans
from methods.registry import ACQUISITIONS
from methods.validation import check_selection_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


def _pool(seed=0, n=300, classes=5, d=16, outliers=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 3
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(size=(n, d))
    if outliers:
        x[:outliers] = rng.normal(size=(outliers, d)) * 25  # far from everything
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    text = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    probs = softmax(x @ text.T.astype(np.float32) / 0.3).astype(np.float32)
    if outliers:  # outliers are maximally uncertain, as CLIP is on images of no class
        probs[:outliers] = 1.0 / classes
    return x, y, probs


def _ctx(x, probs, labelled=()):
    labelled = np.asarray(labelled, np.int64)
    mask = np.ones(len(x), bool)
    mask[labelled] = False
    return SelectionContext(round=1, num_classes=probs.shape[1], unlabelled=np.flatnonzero(mask), labelled=labelled,
                            labelled_targets=np.zeros(len(labelled), np.int64), pool_features=x, probs=probs)


def test_calibration_and_entropy_follow_eq_2_to_5():
    _, _, probs = _pool()
    prior = contextual_prior(probs, 10)
    direct = np.array([np.sort(probs[:, i])[-10:].mean() for i in range(probs.shape[1])])
    np.testing.assert_allclose(prior, direct, rtol=1e-6)
    cal = calibrated_probs(probs, prior)
    row = probs[7] / direct
    np.testing.assert_allclose(cal[7], row / row.sum(), rtol=1e-6)
    np.testing.assert_allclose(entropy(cal)[7], -(cal[7] * np.log(cal[7])).sum(), rtol=1e-9)


def test_neighbour_term_follows_eq_6():
    x, _, probs = _pool(n=80)
    h = entropy(probs)
    ours = neighbour_uncertainty(x, h, k=5, alpha=0.5)
    d2 = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    for i in (0, 13, 79):
        nn = np.argsort(d2[i], kind="stable")[:5]
        np.testing.assert_allclose(ours[i], (np.exp(-0.5 * d2[i, nn]) * h[nn]).mean(), rtol=1e-4)


def test_weighted_kmeans_objective_matches_scikit_learn():
    x, _, probs = _pool(n=400)
    w = entropy(probs) + 0.05

    def objective(centres):
        d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1).min(1)
        return float((w * d2).sum())

    ours = np.median([objective(kmeans(x, 8, seed, niter=50, weights=w, max_points_per_centroid=None,
                                       init_points_per_centroid=None)[0]) for seed in range(3)])
    ref = np.median([objective(KMeans(8, n_init=1, random_state=seed).fit(x, sample_weight=w).cluster_centers_)
                     for seed in range(3)])
    assert ours <= 1.05 * ref


@pytest.mark.parametrize("options", [{}, {"calibrate": False}, {"neighbours": False}, {"clustering": "nearest"},
                                     {"clustering": "greedy"}, {"precision": "bf16"}])
def test_selections_are_distinct_unlabelled_and_seeded(options):
    x, _, probs = _pool()
    ctx = _ctx(x, probs, labelled=[1, 2, 3])
    strategy = ACQUISITIONS.create("cec", **options)
    check_selection_inputs("cec", ctx, 12)
    first = strategy.select(ctx, 12, np.random.default_rng(4)).indices
    assert len(set(first.tolist())) == 12 and not set(first.tolist()) & {1, 2, 3}
    assert np.array_equal(first, strategy.select(ctx, 12, np.random.default_rng(4)).indices)


def test_ablations_change_the_picks_and_greedy_takes_the_most_uncertain_row_per_cluster():
    x, _, probs = _pool(seed=2)
    ctx = _ctx(x, probs)
    picks = {c: tuple(ACQUISITIONS.create("cec", clustering=c).select(ctx, 10, np.random.default_rng(0)).indices)
             for c in ("weighted", "nearest", "greedy")}
    assert len(set(picks.values())) == 3
    u = np.array([3.0, 1.0, 2.0, 5.0, 4.0])
    assert _most_uncertain_per_cluster(u, np.array([0, 0, 1, 1, 2]), 3).tolist() == [3, 4, 0]
    assert _most_uncertain_per_cluster(u, np.array([0, 0, 0, 0, 0]), 3).tolist() == [3, 4, 0]  # filled by U


def test_the_neighbour_term_and_weighted_clusters_steer_away_from_uncertain_outliers():
    """Sec. 4.2-4.3 and Fig. 3: entropy alone picks the maximally uncertain outliers; CEC far fewer, and
    fewer than without its neighbour term or with Fig. 3's greedy clusters (measured: 16 vs 22 vs 24 vs 45
    outliers over three pools, 15 of 400 rows outliers, 15 picks each)."""
    hits = {"entropy": 0, "cec": 0, "no_neighbours": 0, "greedy": 0}
    variants = {"entropy": ("entropy", {}), "cec": ("cec", {}), "no_neighbours": ("cec", {"neighbours": False}),
                "greedy": ("cec", {"clustering": "greedy"})}
    for seed in (3, 4, 5):
        x, _, probs = _pool(seed=seed, n=400, outliers=15)
        ctx = _ctx(x, probs)
        for key, (name, options) in variants.items():
            picked = ACQUISITIONS.create(name, **options).select(ctx, 15, np.random.default_rng(1)).indices
            hits[key] += int((picked < 15).sum())
    assert hits["entropy"] == 45
    assert hits["cec"] < hits["no_neighbours"] < hits["entropy"] and hits["cec"] < hits["greedy"]


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="'cec': k_nn must be"):
        ACQUISITIONS.create("cec", k_nn=0)
    with pytest.raises(ValueError, match="clustering must be one of"):
        ACQUISITIONS.create("cec", clustering="spectral")


@pytest.mark.parametrize("search", ["approximate", "cells"])
def test_approximate_neighbour_term_is_close_to_the_exact_one(search):
    x, _, probs = _pool(n=1500, classes=10, d=32)
    h = entropy(probs)
    exact = neighbour_uncertainty(x, h, k=20, alpha=0.1)
    approximate = neighbour_uncertainty(x, h, k=20, alpha=0.1, search=search, seed=0)
    assert np.abs(approximate - exact).max() <= 0.05 * exact.max()
    assert np.corrcoef(approximate, exact)[0, 1] > 0.99
    picked = ACQUISITIONS.create("cec", knn=search).select(_ctx(x, probs), 10, np.random.default_rng(0))
    assert len(set(picked.indices.tolist())) == 10
    everywhere = neighbour_uncertainty(x, h, k=20, alpha=0.1, search=search, seed=0, nprobe=10**6)  # every cell
    np.testing.assert_allclose(everywhere, exact, rtol=1e-4)
    with pytest.raises(ValueError, match="knn_probes"):
        ACQUISITIONS.create("cec", knn=search, knn_probes=0)


def test_prior_and_entropy_read_in_blocks_equal_the_whole_matrix():
    from methods.acquisition.cec import calibrated_entropy

    _, _, probs = _pool(n=200)
    rows = np.random.default_rng(4).permutation(200)[:150]
    prior = contextual_prior(probs, 10, rows, chunk=16)  # blocks smaller than N exercise the running top-N
    np.testing.assert_allclose(prior, contextual_prior(probs[rows], 10), rtol=1e-12)
    np.testing.assert_allclose(calibrated_entropy(probs, rows, prior, chunk=7),
                               entropy(calibrated_probs(probs[rows], prior)), rtol=1e-12)
