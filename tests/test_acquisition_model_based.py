"""Uncertainty scores against scikit-activeml, BALD, ALFA-Mix, PCB, and bad inputs failing with their fix."""

import math

import numpy as np
import pytest
import torch

import methods.acquisition.model_based as mb
from methods.core.predictors import LinearPredictor, softmax
from methods.base import ImagePredictor, Predictor, SelectionContext
from methods.registry import ACQUISITIONS
from methods.validation import AcquisitionInputError, check_selection_inputs


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The probes and mixing blocks are tiny; spinning OpenMP threads on a shared machine only slows them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n=1200, d=16, k=4, seed=0, noise=2.5):
    """Unit-norm features around k unit-norm centres, and a linear head on those centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (k, d))
    y = rng.integers(k, size=n)
    x = centres[y] + rng.normal(0, noise, (n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    w = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    return x, y, w


def _ctx(x, labelled, targets, predictor=None, text=None, num_classes=None, probs="auto"):
    mask = np.ones(len(x), bool)
    mask[np.asarray(labelled, dtype=np.int64)] = False
    if isinstance(probs, str) and predictor is not None:
        probs = predictor.predict_proba(x)
    elif isinstance(probs, str):
        probs = None
    num_classes = num_classes or (len(text) if text is not None else probs.shape[1])
    return SelectionContext(round=1, num_classes=num_classes, unlabelled=np.flatnonzero(mask),
                            labelled=np.asarray(labelled, dtype=np.int64),
                            labelled_targets=np.asarray(targets, dtype=np.int64), pool_features=x, probs=probs,
                            text_features=text, embeddings=x, predictor=predictor)


def _blob_ctx(seed=0, labelled=40, **kw):
    x, y, w = _blobs(seed=seed, **kw)
    rows = np.random.default_rng(seed).choice(len(x), labelled, replace=False)
    predictor = LinearPredictor(w, np.zeros(len(w), np.float32), 0.05)
    return _ctx(x, rows, y[rows], predictor, text=w), y


def _margin(probs):
    top2 = -np.sort(-probs, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def _check_selection(sel, ctx, budget):
    idx = np.asarray(sel.indices)
    assert len(idx) == budget and len(np.unique(idx)) == budget
    assert np.isin(idx, ctx.unlabelled).all()


# ----------------------------------------------------- uncertainty vs scikit-activeml


class _FixedProbabilities:
    """A scikit-activeml classifier whose predict_proba returns given rows of a fixed matrix (X holds row ids)."""

    @staticmethod
    def make(probs, num_classes):
        from skactiveml.base import SkactivemlClassifier

        class Fixed(SkactivemlClassifier):
            def __init__(self, probs=None, classes=None, missing_label=np.nan, random_state=None):
                super().__init__(classes=classes, missing_label=missing_label, random_state=random_state)
                self.probs = probs

            def fit(self, X, y, sample_weight=None):
                return self

            def predict_proba(self, X):
                return self.probs[np.asarray(X)[:, 0].astype(int)]

        return Fixed(probs, classes=np.arange(num_classes))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ours, theirs", [("entropy", "entropy"), ("margin", "margin_sampling"),
                                          ("least_confidence", "least_confident")])
def test_uncertainty_scores_select_exactly_what_scikit_activeml_selects(seed, ours, theirs):
    from skactiveml.pool import UncertaintySampling, uncertainty_scores

    rng = np.random.default_rng(seed)
    n, classes, budget = 5000, 10, 30
    probs = rng.dirichlet(np.ones(classes), n)
    labelled = rng.choice(n, 100, replace=False)
    y = np.full(n, np.nan)
    y[labelled] = rng.integers(classes, size=len(labelled))
    ctx = _ctx(np.zeros((n, 1), np.float32), labelled, y[labelled], probs=probs, num_classes=classes)
    # No ties among the top scores, so the reference's random tie-break never fires.
    utilities = np.sort(uncertainty_scores(probs[ctx.unlabelled], method=theirs))[::-1]
    assert (np.diff(utilities[: budget + 1]) < 0).all()
    reference = UncertaintySampling(method=theirs, random_state=seed).query(
        np.arange(n, dtype=float)[:, None], y, _FixedProbabilities.make(probs, classes), fit_clf=False,
        batch_size=budget)
    got = ACQUISITIONS.create(ours).select(ctx, budget, np.random.default_rng(seed)).indices
    assert got.tolist() == reference.tolist()  # same rows, same order (both best first)


# ------------------------------------------------------------------------- BALD


def test_mutual_information_formula():
    rng = np.random.default_rng(0)
    samples = rng.dirichlet(np.ones(3), (4, 5))  # T=4 passes, n=5 rows, C=3
    want = []
    for i in range(5):
        mean = samples[:, i].mean(0)
        h_mean = -sum(p * math.log(p) for p in mean)
        mean_h = np.mean([-sum(p * math.log(p) for p in samples[t, i]) for t in range(4)])
        want.append(h_mean - mean_h)
    assert np.allclose(mb.mutual_information(samples), want, atol=1e-12)
    certain_but_opposed = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert np.allclose(mb.mutual_information(certain_but_opposed), math.log(2))
    agreeing = np.repeat(samples[:1], 3, axis=0)
    assert np.allclose(mb.mutual_information(agreeing), 0.0, atol=1e-12)


def test_mc_dropout_scores_equal_a_direct_numpy_computation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    predictor = LinearPredictor(w, np.zeros(3, np.float32), 0.5)
    p, passes = 0.3, 4
    draw = np.random.default_rng(5)
    direct = []
    for _ in range(passes):
        keep = draw.random(x.shape, dtype=np.float32) >= p
        logits = (x.astype(np.float64) * keep / (1 - p)) @ w.T.astype(np.float64) / 0.5
        direct.append(softmax(logits))
    want = mb.mutual_information(np.stack(direct))
    got = mb.mc_dropout_scores(predictor, x, np.arange(7), p, passes, np.random.default_rng(5), chunk=64)
    assert np.allclose(got, want, rtol=1e-4, atol=1e-5)
    ctx = _ctx(x, [], [], predictor, text=w)
    sel = ACQUISITIONS.create("bald", samples=passes, p=p).select(ctx, 3, np.random.default_rng(5))
    assert sel.indices.tolist() == np.argsort(-want, kind="stable")[:3].tolist()


def test_the_float32_torch_path_of_a_linear_head_matches_float64_within_its_stated_tolerance():
    """Linear heads score in float32 torch (1.4x faster at 20K x 1,000 classes); any other predictor in float64
    numpy. Same masks, so the two agree to float32 rounding: 1e-5 absolute here, and the same top picks."""

    class Opaque(LinearPredictor):  # no linear head: takes the numpy path
        def linear_head(self):
            return None

    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.normal(size=(100, 64)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    args = (np.arange(3000), 0.2, 20)
    fast = mb.mc_dropout_scores(LinearPredictor(w, np.zeros(100, np.float32), 0.05), x, *args,
                                np.random.default_rng(1), chunk=1024)
    exact = mb.mc_dropout_scores(Opaque(w, np.zeros(100, np.float32), 0.05), x, *args, np.random.default_rng(1),
                                 chunk=1024)
    assert np.abs(fast - exact).max() < 1e-5 and exact.max() - exact.min() > 0.1
    assert np.argsort(-fast, kind="stable")[:300].tolist() == np.argsort(-exact, kind="stable")[:300].tolist()


def _disagreement_example(k=32):
    """Rows 0-9 rest on one feature per class (dropout flips them); the rest spread their evidence."""
    d = 2 * k
    w = np.zeros((2, d), np.float32)
    w[0, :k] = 1.0
    w[1, k:] = 1.0
    rng = np.random.default_rng(0)
    fragile = np.zeros((10, d), np.float32)
    fragile[np.arange(10), rng.integers(k, size=10)] = 5.0
    fragile[np.arange(10), k + rng.integers(k, size=10)] = 4.6  # leaning to class 0: entropy below log 2
    even = np.full((20, d), 0.1, np.float32)  # maximal entropy, stable under dropout
    confident = np.zeros((70, d), np.float32)
    confident[:, :k] = 0.2
    return np.vstack([fragile, even, confident]), w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bald_picks_the_points_dropout_disagrees_on(seed):
    x, w = _disagreement_example()
    predictor = LinearPredictor(w, np.zeros(2, np.float32), 1.0)
    ctx = _ctx(x, [], [], predictor, text=w)
    picked = ACQUISITIONS.create("bald").select(ctx, 10, np.random.default_rng(seed)).indices
    assert sorted(picked.tolist()) == list(range(10))
    # Entropy cannot tell fragile from evenly uncertain rows: it prefers the stable maximal-entropy ones.
    by_entropy = ACQUISITIONS.create("entropy").select(ctx, 10, np.random.default_rng(seed)).indices
    assert not set(by_entropy.tolist()) & set(range(10))


@pytest.mark.parametrize("mode", ["mc_dropout", "ensemble"])
def test_bald_is_deterministic_per_seed_and_chunking_only_changes_draws(mode):
    ctx, _ = _blob_ctx()
    strategy = ACQUISITIONS.create("bald", mode=mode, probe_options={"epochs": 30})
    assert strategy.requires >= {"predictor", "pool_features"}
    assert ("text_features" in strategy.requires) == (mode == "ensemble")
    first = strategy.select(ctx, 25, np.random.default_rng(0))
    again = strategy.select(ctx, 25, np.random.default_rng(0))
    _check_selection(first, ctx, 25)
    assert first.indices.tolist() == again.indices.tolist()
    others = [strategy.select(ctx, 25, np.random.default_rng(s)).indices.tolist() for s in (1, 2)]
    assert any(o != first.indices.tolist() for o in others)
    scores = strategy.scores(ctx, np.random.default_rng(0))
    assert scores.shape == (len(ctx.unlabelled),) and scores.max() > 1e-4 and scores.min() > -1e-9
    if mode == "mc_dropout":  # chunking changes the draws only: with many passes both estimates agree
        many = [ACQUISITIONS.create("bald", samples=200, chunk=c).scores(ctx, np.random.default_rng(0))
                for c in (7, 4096)]
        assert np.corrcoef(*many)[0, 1] > 0.95


def test_bald_ensemble_without_labels_falls_back_to_dropout():
    ctx, _ = _blob_ctx(labelled=0)
    sel = ACQUISITIONS.create("bald", mode="ensemble").select(ctx, 10, np.random.default_rng(0))
    _check_selection(sel, ctx, 10)
    assert "mc_dropout" in ctx.extras["bald_fallback"]


@pytest.mark.parametrize("options, message", [
    ({"mode": "laplace"}, "mode must be"), ({"samples": 1}, "samples must be"),
    ({"p": 1.0}, r"p must be in \(0, 1\) \(dropout probability"),
    ({"ensemble_size": 1}, "ensemble_size"), ({"chunk": 0}, "chunk"),
    ({"probe_options": {"epochs": 0}}, "probe_options: adaptation learner 'linear_probe': epochs"),
    ({"probe_options": {"epoch": 5}},
     "probe_options: .*'linear_probe' got unknown option.*'epoch' .*did you mean 'epochs'"),
])
def test_bald_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        ACQUISITIONS.create("bald", **options)


# --------------------------------------------------------------------- ALFA-Mix


class _Opaque(Predictor):
    """A predictor that only answers predict_proba (no weights to differentiate)."""

    def __init__(self, inner):
        self.inner = inner

    def predict_proba(self, features):
        return self.inner.predict_proba(features)

    def state(self):
        return self.inner.state()

    @classmethod
    def from_state(cls, state):
        return cls(LinearPredictor.from_state(state))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alfamix_selects_points_near_decision_boundaries(seed):
    ctx, _ = _blob_ctx(seed=seed)
    strategy = ACQUISITIONS.create("alfamix")
    flips, margins = strategy.candidates(ctx)
    assert 30 < flips.sum() < len(flips) // 4  # enough candidates to cluster, and a real filter
    assert margins[flips].mean() < margins[~flips].mean() - 0.2  # candidates sit near a decision boundary
    picked = strategy.select(ctx, 30, np.random.default_rng(seed)).indices
    _check_selection(strategy.select(ctx, 30, np.random.default_rng(seed)), ctx, 30)
    assert picked.tolist() == strategy.select(ctx, 30, np.random.default_rng(seed)).indices.tolist()
    assert np.isin(picked, ctx.unlabelled[flips]).all()  # more candidates than budget: k-means picks among them
    margin = _margin(ctx.probs)
    random_margin = np.mean([margin[np.random.default_rng(100 + s).choice(ctx.unlabelled, 30, replace=False)].mean()
                             for s in range(20)])
    assert margin[picked].mean() < 0.85 * random_margin


@pytest.mark.parametrize("search", ["gradient", "grid"])
def test_alfamix_mixing_respects_the_alpha_cap_and_flags_real_label_changes(search):
    ctx, _ = _blob_ctx()
    strategy = ACQUISITIONS.create("alfamix", alpha_search=search, alpha_cap=0.2)
    mixing = strategy.mixing(ctx)
    alpha, changed, anchors = mixing["alpha"], mixing["changed"], mixing["anchors"]
    assert mixing["search"] == search and mixing["anchor_source"] == "labelled"
    assert alpha.shape == (len(ctx.unlabelled), len(anchors), ctx.pool_features.shape[1])
    assert alpha.min() >= 0.0 and alpha.max() <= 0.2 + 1e-7
    if search == "grid":
        assert set(np.unique(alpha)) <= set(strategy.levels().tolist())
    x = ctx.pool_features[ctx.unlabelled]
    pred = ctx.predictor.predict_proba(x).argmax(1)
    mixed = x[:, None, :] + alpha * (anchors[None] - x[:, None, :])
    mixed_pred = ctx.predictor.predict_proba(mixed.reshape(-1, x.shape[1])).argmax(1).reshape(changed.shape)
    flipped = mixed_pred != pred[:, None]
    assert changed.any() and (flipped == changed).mean() > 0.999


@pytest.mark.parametrize("search", ["gradient", "grid"])
def test_alfamix_anchors_per_point_finds_a_subset_of_the_flips_and_most_of_them(search):
    """The ImageNet-scale approximation mixes each point only towards its k most probable classes' anchors:
    every flip it reports is a flip of the full rule (a subset), and it finds most of them."""
    ctx, _ = _blob_ctx(seed=3, labelled=40, k=20, n=2000, d=32, noise=4.0)  # 18 of 20 classes labelled
    assert len(np.unique(ctx.labelled_targets)) < 20
    full, _ = ACQUISITIONS.create("alfamix", alpha_search=search).candidates(ctx)
    if search == "grid":
        ctx.predictor = _Opaque(ctx.predictor)
    near, _ = ACQUISITIONS.create("alfamix", alpha_search=search, anchors_per_point=3).candidates(ctx)
    recall = (near & full).sum() / full.sum()
    print(f"{search}: {full.sum()} flips with every anchor, {near.sum()} with 3 per point, recall {recall:.3f}")
    assert full.sum() > 50 and not (near & ~full).any() and recall >= 0.8
    picked = ACQUISITIONS.create("alfamix", alpha_search=search, anchors_per_point=3).select(
        ctx, 30, np.random.default_rng(0))
    _check_selection(picked, ctx, 30)


def test_alfamix_round_one_without_labels_anchors_on_text_features():
    ctx, _ = _blob_ctx(labelled=0)
    strategy = ACQUISITIONS.create("alfamix")
    assert strategy.mixing(ctx)["anchor_source"] == "text"
    sel = strategy.select(ctx, 20, np.random.default_rng(0))
    _check_selection(sel, ctx, 20)
    assert ctx.extras["alfamix_anchors"] == "text"


def test_alfamix_without_weights_searches_a_grid_and_fills_short_candidate_sets():
    ctx, _ = _blob_ctx()
    ctx.predictor = _Opaque(ctx.predictor)
    assert ACQUISITIONS.create("alfamix").mixing(ctx)["search"] == "grid"
    _check_selection(ACQUISITIONS.create("alfamix").select(ctx, 20, np.random.default_rng(0)), ctx, 20)
    with pytest.raises(AcquisitionInputError, match="alpha_search='gradient' needs a predictor with a linear head"):
        ACQUISITIONS.create("alfamix", alpha_search="gradient").select(ctx, 20, np.random.default_rng(0))
    # A tiny cap leaves fewer candidates than the budget: all are taken, the rest filled.
    tiny = ACQUISITIONS.create("alfamix", alpha_cap=1e-3, fill="margin")
    flips, margins = tiny.candidates(ctx)
    assert flips.sum() < 40
    picked = tiny.select(ctx, 40, np.random.default_rng(0)).indices
    cand = ctx.unlabelled[flips]
    assert picked[: len(cand)].tolist() == cand.tolist()
    rest = ~flips
    assert picked[len(cand):].tolist() == mb.top_k(-margins[rest], ctx.unlabelled[rest], 40 - len(cand)).tolist()
    filled = ACQUISITIONS.create("alfamix", alpha_cap=1e-3).select(ctx, 40, np.random.default_rng(0))
    _check_selection(filled, ctx, 40)


@pytest.mark.parametrize("options, message", [
    ({"alpha_cap": 0}, "alpha_cap"), ({"alpha_cap": 1.5}, "alpha_cap"), ({"alpha_search": "adam"}, "alpha_search"),
    ({"alpha_grid": 0}, "alpha_grid"), ({"anchors_per_point": 0}, "anchors_per_point"),
    ({"fill": "typical"}, "fill must be"), ({"feature_space": "pixels"}, "feature_space must be one of"),
])
def test_alfamix_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        ACQUISITIONS.create("alfamix", **options)


def test_model_based_strategies_refuse_image_path_predictors():
    class Pixels(ImagePredictor):
        def predict_proba_images(self, images, split, rows=None):
            raise AssertionError

        def state(self):
            return {}

        @classmethod
        def from_state(cls, state):
            return cls()

    ctx, _ = _blob_ctx()
    ctx.predictor = Pixels()
    for name in ("bald", "alfamix"):
        with pytest.raises(AcquisitionInputError, match=f"{name}: .*adapts the image path"):
            ACQUISITIONS.create(name).select(ctx, 5, np.random.default_rng(0))


# -------------------------------------------------------------------------- PCB


def _one_class_heavy(seed=0, n=1000, classes=5):
    """Probabilities whose highest-entropy rows are mostly predicted as class 0."""
    rng = np.random.default_rng(seed)
    pred = np.where(np.arange(n) < 600, 0, 1 + (np.arange(n) - 600) // 100)
    boost = np.where(pred == 0, np.linspace(0.05, 0.5, n), np.tile(np.linspace(0.05, 3.0, 100), n // 100))
    logits = np.zeros((n, classes))
    logits[np.arange(n), pred] = boost
    perm = rng.permutation(n)
    return softmax(logits[perm]), pred[perm]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pcb_spreads_a_one_class_candidate_set_across_predicted_classes(seed):
    probs, pred = _one_class_heavy(seed)
    ctx = _ctx(np.zeros((len(probs), 2), np.float32), [], [], probs=probs, num_classes=5)
    strategy = ACQUISITIONS.create("pcb", base="entropy", gamma=0.3)
    cand = ACQUISITIONS.create("entropy").select(ctx, strategy.candidate_count(len(probs), 20), None).indices
    counts = np.bincount(pred[cand], minlength=5)
    assert len(cand) == 300 and counts[0] > 0.7 * len(cand) and counts.min() >= 4  # dominated by class 0
    by_entropy = ACQUISITIONS.create("entropy").select(ctx, 20, None).indices
    assert np.bincount(pred[by_entropy], minlength=5)[0] >= 15
    picked = strategy.select(ctx, 20, np.random.default_rng(seed)).indices
    _check_selection(strategy.select(ctx, 20, np.random.default_rng(seed)), ctx, 20)
    assert np.isin(picked, cand).all()
    assert np.bincount(pred[picked], minlength=5).tolist() == [4, 4, 4, 4, 4]
    # "base_order" takes each class's best candidate first.
    ordered = ACQUISITIONS.create("pcb", base="entropy", gamma=0.3, within_class="base_order").select(
        ctx, 5, np.random.default_rng(seed)).indices
    assert ordered.tolist() == [int(cand[pred[cand] == c][0]) for c in range(5)]


def test_pcb_counts_labelled_targets_and_skips_classes_without_candidates():
    probs, pred = _one_class_heavy(0)
    labelled = np.flatnonzero(pred == 1)[:3]
    ctx = _ctx(np.zeros((len(probs), 2), np.float32), labelled, [1, 1, 1], probs=probs, num_classes=5)
    picked = ACQUISITIONS.create("pcb", base="entropy", gamma=0.3).select(ctx, 7, np.random.default_rng(0)).indices
    assert np.bincount(pred[picked], minlength=5).tolist() == [2, 0, 2, 2, 1]
    # Only classes 0 and 1 among the candidates: the budget goes to them, alternating.
    two = probs.copy()
    two[:, 2:] = 0.0
    two /= two.sum(1, keepdims=True)
    ctx2 = _ctx(np.zeros((len(two), 2), np.float32), [], [], probs=two, num_classes=5)
    picked = ACQUISITIONS.create("pcb", base="entropy", gamma=1.0).select(ctx2, 10, np.random.default_rng(0)).indices
    counts = np.bincount(two[picked].argmax(1), minlength=5)
    assert counts[2:].sum() == 0 and counts[0] == counts[1] == 5


@pytest.mark.parametrize("base", ["entropy", "badge", "coreset"])
def test_pcb_wraps_common_bases_within_budget(base):
    ctx, _ = _blob_ctx()
    strategy = ACQUISITIONS.create("pcb", base=base, gamma=0.05)
    assert strategy.requires == frozenset(ACQUISITIONS.create(base).requires) | {"probs"}
    assert strategy.candidate_count(len(ctx.unlabelled), 30) == max(30, math.ceil(0.05 * len(ctx.unlabelled)))
    sel = strategy.select(ctx, 30, np.random.default_rng(0))
    _check_selection(sel, ctx, 30)
    assert sel.indices.tolist() == strategy.select(ctx, 30, np.random.default_rng(0)).indices.tolist()
    counts = np.bincount(ctx.probs[sel.indices].argmax(1), minlength=ctx.num_classes)
    assert counts.max() - counts.min() <= 1 + np.bincount(ctx.labelled_targets, minlength=ctx.num_classes).max()


@pytest.mark.parametrize("options, message", [
    ({"base": "pcb"}, "base cannot be 'pcb'"), ({"base": "entropyy"}, "did you mean 'entropy'"),
    ({"base": "coreset", "base_options": {"feature_space": "pixels"}}, "'pcb': base 'coreset'.*feature_space"),
    ({"base_options": {"bogus": 1}}, "unknown option"), ({"gamma": 0}, "gamma"),
    ({"within_class": "best"}, "within_class"),
])
def test_pcb_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        ACQUISITIONS.create("pcb", **options)


# ----------------------------------------------------------------- in the round loop


@pytest.mark.parametrize("name", ["bald", "alfamix", "pcb"])
def test_model_based_strategies_run_in_the_round_loop(name):
    from tests.test_loop import _run

    results = list(_run(acq=name, rounds=2).rounds())
    assert [m["labels_spent"] for _, m, _ in results] == [0, 6, 12]


# ------------------------------------------------------------------- bad input


class _Scores(Predictor):
    """Returns whatever matrix it is told to, to feed broken probabilities through the loop."""

    def __init__(self, out):
        self.out = out

    def predict_proba(self, features):
        return self.out

    def state(self):
        return {"out": self.out}

    @classmethod
    def from_state(cls, state):
        return cls(state["out"])


def _bad_case(case):
    """(strategy spec, features, predictor, labelled, budget, expected message parts) for one broken input."""
    x, _, w = _blobs(n=60, d=8, k=3)
    good = LinearPredictor(w, np.zeros(3, np.float32), 0.05)
    labelled = np.arange(5)
    if case == "nan_features":
        x = x.copy()
        x[17, 2] = np.nan
        return ("bald", {}), x, good, labelled, 5, ["bald:", "pool features contain NaN or inf", "pool row 17",
                                                    "re-embed"]
    if case == "inf_probabilities":
        probs = good.predict_proba(x)
        probs[23, 0] = np.inf
        return ("pcb", {"base": "entropy"}), x, _Scores(probs), labelled, 5, [
            "pcb:", "class probabilities contain NaN or inf", "pool row 23", "lower its learning rate"]
    if case == "probabilities_not_summing_to_one":
        return ("pcb", {"base": "entropy"}), x, _Scores(good.predict_proba(x) * 2), labelled, 5, [
            "pcb:", "pool row 0 sum to 2.0000", "softmax probabilities, not logits"]
    if case == "budget_over_unlabelled":
        return ("alfamix", {}), x, good, labelled, 56, ["alfamix:", "budget 56 is larger than the 55 unlabelled",
                                                        "lower the budget"]
    if case == "labelled_covers_pool":
        return ("bald", {}), x, good, np.arange(60), 1, ["bald:", "covers the whole pool (60 rows)",
                                                         "fewer rounds or a smaller per-round budget"]
    if case == "duplicate_labelled":
        return ("alfamix", {}), x, good, np.array([0, 1, 1, 2]), 5, ["alfamix:", "pool row 1 more than once",
                                                                     "deduplicate"]
    raise AssertionError(case)


BAD_CASES = ["nan_features", "inf_probabilities", "probabilities_not_summing_to_one", "budget_over_unlabelled",
             "labelled_covers_pool", "duplicate_labelled"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_named_with_its_fix_by_check_selection_inputs(case):
    (name, options), x, predictor, labelled, budget, parts = _bad_case(case)
    strategy = ACQUISITIONS.create(name, **options)
    mask = np.ones(len(x), bool)
    mask[labelled] = False
    ctx = SelectionContext(round=1, num_classes=3, unlabelled=np.flatnonzero(mask), labelled=labelled,
                           labelled_targets=np.zeros(len(labelled), np.int64), pool_features=x,
                           probs=predictor.predict_proba(x) if "probs" in strategy.requires else None,
                           predictor=predictor)
    with pytest.raises(AcquisitionInputError) as err:
        check_selection_inputs(name, ctx, budget)
    for part in parts:
        assert part in str(err.value)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_named_with_its_fix_by_the_loop_select_task(case):
    from orchestrator.contexts import LedgerView, TrialData
    from orchestrator.loop import SelectRequest, _select

    spec, x, predictor, labelled, budget, parts = _bad_case(case)
    _, _, w = _blobs(n=60, d=8, k=3)
    labelled = np.asarray(labelled, np.int64)  # a view built by hand: the ledger itself refuses duplicates
    view = LedgerView(labelled, np.zeros(len(labelled), np.int64), np.full(len(labelled), "oracle"), {}, len(x))
    data = TrialData(x, np.zeros(len(x), np.int64), x[:1], np.zeros(1, np.int64), w, "multiclass", 3, "top1")
    with pytest.raises(AcquisitionInputError) as err:
        _select(SelectRequest(spec, 1, budget, 0), data, predictor, view)
    for part in parts:
        assert part in str(err.value)


def test_pcb_candidate_cap_bounds_the_base_strategy():
    from methods.registry import ACQUISITIONS

    capped = ACQUISITIONS.create("pcb", max_candidates=500)
    assert capped.candidate_count(100_000, 100) == 500
    assert capped.candidate_count(100_000, 800) == 800  # never fewer than the budget
    assert ACQUISITIONS.create("pcb").candidate_count(100_000, 100) == 10_000
    with pytest.raises(ValueError, match="max_candidates"):
        ACQUISITIONS.create("pcb", max_candidates=0)


def test_bald_scores_match_a_float64_computation_at_a_thousand_classes():
    """At C = 1,000 the scores equal a direct float64 computation with the same masks (1e-5 absolute, the
    entropies themselves being ~7 nats), so a faster entropy path must keep to that."""
    from methods.acquisition.uncertainty import prediction_entropy

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    w = rng.normal(size=(1000, 16)).astype(np.float32)
    predictor = LinearPredictor(w, np.zeros(1000, np.float32), 2.0)
    draw, p, passes = np.random.default_rng(9), 0.25, 5
    probs = []
    for _ in range(passes):
        keep = draw.random(x.shape, dtype=np.float32) >= p
        probs.append(np.asarray(predictor.predict_proba(x * keep * np.float32(1 / (1 - p))), np.float64))
    want = prediction_entropy(np.mean(probs, 0)) - np.mean([prediction_entropy(q) for q in probs], 0)
    got = mb.mc_dropout_scores(predictor, x, np.arange(300), p, passes, np.random.default_rng(9))  # one chunk
    assert np.abs(got - want).max() < 1e-5 and want.max() > 1e-2
