"""CB and CB+SQ (Kim et al.): K = B*r, the cluster ranking, the class-guided features, the eq. 11 thresholds,
the eq. 12 split, and the SQ wrapper over other strategies -- each against a direct computation."""

import numpy as np
import pytest

from methods.acquisition.cbsq import (class_thresholds, cluster_balanced_picks, number_of_clusters,
                                      selective_query, sorted_members)
from methods.base import CLASS_EMBEDDINGS, PROBS, SelectionContext
from methods.core.predictors import softmax
from methods.feature_space import features_in_space
from methods.kernels import kmeans
from methods.registry import ACQUISITIONS
from methods.validation import check_selection_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


def _pool(seed=0, n=400, classes=6, d=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 3
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    text = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    probs = softmax(x @ text.T / 0.2).astype(np.float32)
    return x, y, probs, text


def _ctx(x, probs, text, labelled=(), targets=None, round_=1):
    labelled = np.asarray(labelled, np.int64)
    mask = np.ones(len(x), bool)
    mask[labelled] = False
    targets = np.zeros(len(labelled), np.int64) if targets is None else np.asarray(targets, np.int64)
    return SelectionContext(round=round_, num_classes=probs.shape[1], unlabelled=np.flatnonzero(mask),
                            labelled=labelled, labelled_targets=targets, pool_features=x, probs=probs,
                            class_embeddings=text, text_features=text, embeddings=x)


def test_number_of_clusters_per_rule():
    assert number_of_clusters("per_round", 10, 3, 20, 10) == 30
    assert number_of_clusters("fixed", 10, 3, 20, 10, multiple=8) == 80
    assert number_of_clusters("code", 10, 1, 0, 10) == 40
    assert number_of_clusters("code", 10, 2, 10, 10) == 50
    with pytest.raises(ValueError, match="per_round"):
        number_of_clusters("sqrt", 10, 1, 0, 10)


def test_class_guided_features_are_image_plus_probability_weighted_class_embeddings():
    x, _, probs, text = _pool(n=50)
    ctx = _ctx(x, probs, text * 2.0)  # different from the text features, so the source is visible
    f = features_in_space(ctx, "class_guided", np.arange(50))
    np.testing.assert_allclose(f[:, :16], x)
    np.testing.assert_allclose(f[:, 16:], probs @ (text * 2.0), rtol=1e-5, atol=1e-6)


def test_cluster_ranking_takes_free_clusters_largest_first_and_their_centroid_rows():
    # clusters: 0 = rows 0-4 (size 5, covered by row 0), 1 = rows 5-7 (3), 2 = rows 8-11 (4), 3 = row 12 (1)
    assignment = np.array([0] * 5 + [1] * 3 + [2] * 4 + [3])
    x = np.zeros((13, 1), np.float32)
    x[:, 0] = [0, 1, 2, 3, 4, 9, 5, 7, 2, 1, 3, 0.5, 0]  # centroid distances decide each cluster's row
    centroids = np.array([[2.0], [7.0], [1.6], [0.0]], np.float32)
    order, starts = sorted_members(x, centroids, assignment)
    labelled = np.zeros(13, bool)
    labelled[0] = True
    picks = cluster_balanced_picks(assignment, order, starts, labelled.copy(), 2)
    assert picks.tolist() == [8, 7]  # cluster 2 (4 rows) then cluster 1 (3): nearest members 8 (|2-1.6|), 7
    picks = cluster_balanced_picks(assignment, order, starts, labelled.copy(), 5)
    assert picks.tolist() == [8, 7, 12, 2, 9]  # free: 2, 1, 3; then covered 0 (row 2), then cycle to cluster 2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cb_equals_a_direct_computation_of_eq_8_to_10(precision):
    x, _, probs, text = _pool()
    labelled = np.arange(0, 40, 4)
    ctx = _ctx(x, probs, text, labelled, np.zeros(10), round_=3)
    cb = ACQUISITIONS.create("cb", precision=precision)
    picks = cb.select(ctx, 10, np.random.default_rng(7)).indices
    assert ctx.extras["cb_clusters"] == 30
    # direct: the same k-means seed, then the largest free clusters and their nearest rows
    rows = np.concatenate([labelled, ctx.unlabelled])
    f = features_in_space(ctx, "class_guided", rows)
    seed = int(np.random.default_rng(7).integers(2 ** 31))
    cent, assign = kmeans(f, 30, seed, niter=20, max_points_per_centroid=None, init_points_per_centroid=None,
                          precision={"fp32": "float32", "bf16": "bfloat16"}[precision])
    covered = set(assign[: len(labelled)].tolist())
    sizes = np.bincount(assign, minlength=30)
    free = sorted((c for c in range(30) if c not in covered and sizes[c]), key=lambda c: (-sizes[c], c))[:10]
    want = []
    for c in free:
        members = np.flatnonzero(assign == c)
        d = ((f[members] - cent[c]) ** 2).sum(1)
        want.append(rows[members[np.argmin(d)]])
    assert sorted(picks.tolist()) == sorted(want)
    assert len(set(picks.tolist())) == 10 and not set(picks.tolist()) & set(labelled.tolist())


def test_eq_11_thresholds_and_eq_12_split():
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0],  # labelled: 0, 0, 1
                      [0.8, 0.2, 0.0], [0.7, 0.3, 0.0], [0.1, 0.7, 0.2], [0.1, 0.1, 0.8]], np.float32)
    eps = class_thresholds(probs[:3], np.array([0, 0, 1]), 3)
    np.testing.assert_allclose(eps[:2], [0.75, 0.8])
    assert np.isinf(eps[2])  # class 2 has no labelled row: never pseudo-labelled
    ctx = SelectionContext(round=2, num_classes=3, unlabelled=np.arange(3, 7), labelled=np.arange(3),
                           labelled_targets=np.array([0, 0, 1]), probs=probs)
    sel = selective_query(ctx, np.array([3, 4, 5, 6]), "test")
    assert sel.pseudo_labels == {3: 0}  # 0.8 >= 0.75; 0.7 < 0.75; 0.7 < 0.8; class 2 has no threshold
    assert sel.indices.tolist() == [4, 5, 6]
    assert ctx.extras["sq_saved"] == 1


def test_cbsq_queries_everything_in_round_1_and_saves_labels_later():
    x, y, probs, text = _pool()
    cbsq = ACQUISITIONS.create("cbsq")
    first = cbsq.select(_ctx(x, probs, text), 12, np.random.default_rng(0))
    assert len(first.indices) == 12 and not first.pseudo_labels
    labelled = first.indices
    second = cbsq.select(_ctx(x, probs, text, labelled, y[labelled], round_=2), 12, np.random.default_rng(1))
    assert len(second.indices) + len(second.pseudo_labels) == 12
    assert second.pseudo_labels, "a well-separated pool should let SQ pseudo-label some candidates"
    assert not set(second.indices.tolist()) & set(second.pseudo_labels)
    same = ACQUISITIONS.create("cb").select(_ctx(x, probs, text, labelled, y[labelled], round_=2), 12,
                                            np.random.default_rng(1))
    assert sorted(same.indices.tolist()) == sorted(second.indices.tolist() + list(second.pseudo_labels))


@pytest.mark.parametrize("base", ["coreset", "entropy", "pcb"])
def test_sq_wraps_any_strategy_and_keeps_its_candidates(base):
    x, y, probs, text = _pool(n=200)
    labelled = np.arange(0, 60, 3)
    ctx = _ctx(x, probs, text, labelled, y[labelled], round_=2)
    sq = ACQUISITIONS.create("sq", base=base)
    assert PROBS in sq.requires
    check_selection_inputs("sq", ctx, 10)
    sel = sq.select(ctx, 10, np.random.default_rng(3))
    plain = ACQUISITIONS.create(base).select(_ctx(x, probs, text, labelled, y[labelled], round_=2), 10,
                                             np.random.default_rng(3))
    assert sorted(sel.indices.tolist() + list(sel.pseudo_labels)) == sorted(plain.indices.tolist())


def test_bad_input_is_refused_with_the_fix():
    x, _, probs, text = _pool(n=40)
    with pytest.raises(ValueError, match="not smaller than the pool"):
        ACQUISITIONS.create("cb").select(_ctx(x, probs, text, round_=5), 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="per_round"):
        ACQUISITIONS.create("cb", k="sqrt")
    with pytest.raises(ValueError, match="known"):
        ACQUISITIONS.create("sq", base="nope")
    with pytest.raises(ValueError, match="selectively already"):
        ACQUISITIONS.create("sq", base="cbsq")
    assert CLASS_EMBEDDINGS in ACQUISITIONS.create("cbsq").requires
    assert CLASS_EMBEDDINGS not in ACQUISITIONS.create("cb", feature_space="image").requires


def test_pairing_refuses_learners_that_cannot_feed_cbsq_or_sq():
    from methods.base import Learner
    from orchestrator.config import pairing_errors

    class ProbsOnly(Learner):
        name, provides = "probs_only", frozenset({PROBS})

        def fit(self, train, ctx, rng):  # never called: the pair is refused before any fit
            raise AssertionError

    class NoProbs(ProbsOnly):
        name, provides = "no_probs", frozenset({CLASS_EMBEDDINGS})

    errors = pairing_errors(ACQUISITIONS.create("cbsq"), ProbsOnly(), [ProbsOnly()], False)
    assert errors and "class_embeddings" in errors[0] and "selector" in errors[0]
    errors = pairing_errors(ACQUISITIONS.create("sq", base="random"), NoProbs(), [NoProbs()], False)
    assert errors and "'probs'" in errors[0]
    assert not pairing_errors(ACQUISITIONS.create("cb", feature_space="image"), NoProbs(), [NoProbs()], False)
