"""TypiClust, ProbCover, DropQuery and centroid selection: valid, seeded, and as good as scikit-activeml's.

Quality is compared on small clustered pools (make_blobs, unit-norm rows)
over three seeds, each strategy on the objective its paper optimises:

* TypiClust -- mean typicality of the picks (1 / mean distance to the 20
  nearest pool neighbours): ours >= 0.97 x scikit-activeml's (mean over seeds);
* ProbCover -- coverage (fraction of the pool within delta of a labelled or
  picked point) at the same delta: ours >= scikit-activeml's - 0.01 per seed;
* DropQuery -- k-means potential of a reference candidate set w.r.t. the
  picks: ours <= 1.10 x scikit-activeml's (mean over seeds), and the picks'
  dropout disagreement >= scikit-activeml's - 0.10;
* centroid -- k-means potential of the unlabelled pool: <= 1.10 x the same
  rule run on scikit-learn's KMeans.
"""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

import methods.acquisition.clustering  # noqa: F401  (registers the strategies)
from methods.core.predictors import LinearPredictor
from methods.base import Predictor, SelectionContext
from methods.kernels.clustering import kmeans, knn
from methods.kernels.radius import min_dist_to_other_cluster
from methods.registry import ACQUISITIONS
from methods.validation import check_selection_inputs

NAMES = ["typiclust", "probcover", "dropquery", "centroid"]
SEEDS = [0, 1, 2]


pytestmark = pytest.mark.usefixtures("one_thread")


def _pool(seed, n=1500, d=32, classes=10):
    x, y = make_blobs(n, d, centers=classes, cluster_std=2.5, random_state=seed)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def _predictor(x, y, seed, classes=10):
    """A linear head near the class means (accuracy ~ 0.8-0.95), as a fitted probe would be."""
    rng = np.random.default_rng(seed)
    w = np.stack([x[y == c].mean(0) for c in range(classes)]) + rng.normal(0, 0.3, (classes, x.shape[1]))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return LinearPredictor(w.astype(np.float32), np.zeros(classes, np.float32), 0.1)


def _ctx(x, y, labelled, predictor=None, class_guided=False, classes=10):
    labelled = np.asarray(labelled, dtype=np.int64)
    mask = np.ones(len(x), bool)
    mask[labelled] = False
    extra = {}
    if class_guided:
        extra = {"probs": predictor.predict_proba(x), "text_features": predictor.weight,
                 "class_embeddings": predictor.class_embeddings()}
    return SelectionContext(round=1, num_classes=classes, unlabelled=np.flatnonzero(mask), labelled=labelled,
                            labelled_targets=y[labelled], pool_features=x, predictor=predictor, **extra)


def _setup(seed, labelled=20, **kw):
    x, y = _pool(seed, **kw)
    rng = np.random.default_rng(seed)
    pred = _predictor(x, y, seed)
    return x, y, pred, (rng.choice(len(x), labelled, replace=False) if labelled else np.empty(0, np.int64))


def _select(name, ctx, budget, seed, cold=False, **options):
    check_selection_inputs(name, ctx, budget)
    strategy = ACQUISITIONS.create(name, **options)
    assert strategy.requires <= {"pool_features", "probs", "text_features", "class_embeddings", "predictor", "embeddings"}
    run = strategy.cold_start if cold else strategy.select
    return run(ctx, budget, np.random.default_rng(seed)).indices


def _assert_valid(picked, ctx, budget):
    assert len(picked) == budget and len(np.unique(picked)) == budget
    assert np.isin(picked, ctx.unlabelled).all()


def _y_partial(n, labelled, y):
    out = np.full(n, np.nan)
    out[labelled] = y[labelled]
    return out


# --------------------------------------------------------------------------------------------- validity


@pytest.mark.parametrize("name", NAMES)
def test_selections_are_valid_and_seeded(name):
    x, y, pred, labelled = _setup(0, n=600)
    ctx = _ctx(x, y, labelled, pred)
    first = _select(name, ctx, 25, seed=11)
    _assert_valid(first, ctx, 25)
    assert np.array_equal(first, _select(name, ctx, 25, seed=11))
    assert len(_select(name, ctx, 0, seed=11)) == 0


@pytest.mark.parametrize("name", NAMES)
def test_class_guided_feature_space_and_cold_starts_with_nothing_labelled(name):
    x, y, pred, labelled = _setup(1, n=500)
    ctx = _ctx(x, y, labelled, pred, class_guided=True)
    strategy = ACQUISITIONS.create(name, feature_space="class_guided")
    assert {"pool_features", "probs", "class_embeddings"} <= strategy.requires
    _assert_valid(_select(name, ctx, 15, seed=2, feature_space="class_guided"), ctx, 15)
    cold = _ctx(x, y, [], pred, class_guided=True)
    for space in ("image", "class_guided"):
        picked = _select(name, cold, 15, seed=3, cold=True, feature_space=space)
        _assert_valid(picked, cold, 15)


def test_cold_starts_are_the_published_ones():
    x, y, pred, _ = _setup(2, n=500, labelled=0)
    cold = _ctx(x, y, [], pred)
    assert np.array_equal(_select("dropquery", cold, 12, seed=5, cold=True), _select("centroid", cold, 12, seed=5))
    assert np.array_equal(_select("typiclust", cold, 12, seed=5, cold=True), _select("typiclust", cold, 12, seed=5))


def test_options_are_validated_with_clear_errors():
    for name in NAMES:
        with pytest.raises(ValueError, match="feature_space must be one of"):
            ACQUISITIONS.create(name, feature_space="pixels")
    bad = [("typiclust", {"max_clusters": 0}, "max_clusters"), ("typiclust", {"k_nn": 1.5}, "k_nn"),
           ("probcover", {"delta": -1.0}, "delta"), ("probcover", {"alpha": 1.0}, "alpha"),
           ("probcover", {"purity_grid": []}, "purity_grid"), ("dropquery", {"dropout": 1.0}, "dropout"),
           ("dropquery", {"masks": 0}, "masks"), ("centroid", {"kmeans_iters": -1}, "kmeans_iters"),
           ("probcover", {"graph_sample": 0}, "graph_sample"), ("dropquery", {"backend": "jax"}, "backend")]
    for name, options, word in bad:
        with pytest.raises(ValueError, match=word):
            ACQUISITIONS.create(name, **options)
    x, y, _, labelled = _setup(0, n=60)
    with pytest.raises(ValueError, match="budget 41"):
        ACQUISITIONS.create("centroid").select(_ctx(x, y, labelled), 41, np.random.default_rng(0))


def test_dropquery_fills_with_random_points_when_too_few_predictions_flip():
    x, y, pred, labelled = _setup(0, n=400)
    constant = LinearPredictor(np.zeros_like(pred.weight), np.arange(10, dtype=np.float32), 1.0)  # never flips
    ctx = _ctx(x, y, labelled, constant)
    strategy = ACQUISITIONS.create("dropquery")
    assert not strategy.mismatches(ctx, ctx.unlabelled, np.random.default_rng(0)).any()
    picked = _select("dropquery", ctx, 30, seed=4)
    _assert_valid(picked, ctx, 30)
    assert np.array_equal(picked, _select("dropquery", ctx, 30, seed=4))
    assert not np.array_equal(picked, _select("dropquery", ctx, 30, seed=5))


def test_dropquery_can_relax_its_threshold_like_the_authors_code():
    x, y, pred, labelled = _setup(0, n=600)
    ctx = _ctx(x, y, labelled, pred)
    strict = ACQUISITIONS.create("dropquery").mismatches(ctx, ctx.unlabelled, np.random.default_rng(7))
    assert (strict > 1).sum() < 25 * 14 <= (strict > 0).sum()  # so the relaxed rule takes "changed once"
    picked = _select("dropquery", ctx, 14, seed=7, min_candidates_per_pick=25)
    _assert_valid(picked, ctx, 14)
    assert (strict[np.searchsorted(ctx.unlabelled, picked)] > 0).all()


def test_probcover_goes_random_once_the_pool_is_covered():
    x, y, _, labelled = _setup(0, n=400)
    ctx = _ctx(x, y, labelled)
    picked = _select("probcover", ctx, 40, seed=1, delta=1.5)  # a couple of balls cover everything
    _assert_valid(picked, ctx, 40)
    centres = np.concatenate([labelled, picked[:3]])
    assert (cdist(x, x[centres]).min(1) < 1.5).all()


# --------------------------------------------------------------------------------------------- quality


def _typicality(x, k=20):
    d, _ = knn(x, k)
    return 1.0 / np.sqrt(d).mean(1)


def test_typiclust_picks_are_as_typical_as_scikit_activeml():
    from skactiveml.pool import TypiClust

    ours, theirs, rand = [], [], []
    for seed in SEEDS:
        x, y, _, labelled = _setup(seed)
        ctx = _ctx(x, y, labelled)
        typ = _typicality(x)
        ours.append(typ[_select("typiclust", ctx, 30, seed)].mean())
        picked = TypiClust(random_state=seed, k=20).query(x, _y_partial(len(x), labelled, y), batch_size=30)
        theirs.append(typ[picked].mean())
        rand.append(typ[np.random.default_rng(seed).choice(ctx.unlabelled, 30, replace=False)].mean())
    print(f"typicality ours {np.mean(ours):.4f} skactiveml {np.mean(theirs):.4f} random {np.mean(rand):.4f}")
    assert np.mean(ours) >= 0.97 * np.mean(theirs)
    assert np.mean(ours) > np.mean(rand)


@pytest.mark.filterwarnings("ignore:The maximum purity was")  # scikit-activeml warns whenever given one delta
def test_probcover_covers_as_much_as_scikit_activeml_and_its_delta_meets_the_purity_rule():
    from skactiveml.pool import ProbCover

    for seed in SEEDS:
        x, y, _, labelled = _setup(seed)
        ctx = _ctx(x, y, labelled)
        for delta in (0.45, 0.55):  # about the 10th-neighbour distance of these pools
            ours = _select("probcover", ctx, 15, seed, delta=delta)
            theirs = ProbCover(deltas=[delta], n_classes=10, random_state=seed).query(
                x, _y_partial(len(x), labelled, y), batch_size=15)
            rand = np.random.default_rng(seed).choice(ctx.unlabelled, 15, replace=False)

            def coverage(picked, x=x, labelled=labelled, delta=delta):
                return (cdist(x, x[np.concatenate([labelled, picked])]).min(1) < delta).mean()

            print(f"seed {seed} delta {delta}: coverage ours {coverage(ours):.4f} "
                  f"skactiveml {coverage(theirs):.4f} random {coverage(rand):.4f}")
            assert coverage(ours) >= coverage(theirs) - 0.01
            assert coverage(ours) > coverage(rand)
    # The purity rule: the delta it picks leaves >= alpha of the balls pure w.r.t. a K = #classes clustering.
    strategy = ACQUISITIONS.create("probcover")
    x, y, _, _ = _setup(0)
    delta = strategy.estimate_delta(x, 10, np.random.default_rng(0))
    _, clusters = kmeans(x, 10, seed=int(np.random.default_rng(0).integers(2 ** 31)))
    d_other = min_dist_to_other_cluster(x, clusters)
    assert (d_other >= delta).mean() >= 0.95 > (d_other >= delta + 1e-6).mean()
    # On a grid, with the same clustering, scikit-activeml's purity search lands on the same delta.

    class SameClusters:
        def __init__(self, n_clusters=None, random_state=None):
            pass

        def fit_predict(self, X):
            return clusters

    grid = np.round(np.arange(0.05, 1.5, 0.05), 2)
    reference = ProbCover(deltas=grid, n_classes=10, cluster_algo=SameClusters, random_state=0)
    reference.query(x, np.full(len(x), np.nan), batch_size=1)
    ours = ACQUISITIONS.create("probcover", purity_grid=list(grid)).estimate_delta(x, 10, np.random.default_rng(0))
    assert ours == pytest.approx(reference.delta_max_) and ours <= delta


def _dropout_disagreement(pred, x, masks=30, seed=1234):
    rng = np.random.default_rng(seed)
    clean = pred.predict_proba(x).argmax(1)
    flips = np.zeros(len(x))
    for _ in range(masks):
        keep = rng.random(x.shape) < 0.25
        flips += pred.predict_proba((x * keep / 0.25).astype(np.float32)).argmax(1) != clean
    return flips / masks


def _potential(x, rows, picked):
    return cdist(x[rows], x[picked], "sqeuclidean").min(1).sum()


def test_dropquery_matches_scikit_activeml_on_diversity_and_uncertainty():
    from skactiveml.base import SkactivemlClassifier
    from skactiveml.pool import DropQuery

    class Frozen(SkactivemlClassifier):
        """Our predictor behind scikit-activeml's classifier interface (already fitted)."""

        def __init__(self, predictor=None, classes=None, missing_label=np.nan, random_state=None):
            super().__init__(classes=classes, missing_label=missing_label, random_state=random_state)
            self.predictor = predictor

        def fit(self, X, y, sample_weight=None):
            return self

        def predict_proba(self, X):
            return self.predictor.predict_proba(np.asarray(X, np.float32))

        def predict(self, X):
            return self.predict_proba(X).argmax(1)

    pot_ours, pot_theirs, pot_rand, dis_ours, dis_theirs = [], [], [], [], []
    for seed in SEEDS:
        x, y, pred, labelled = _setup(seed)
        ctx = _ctx(x, y, labelled, pred)
        ours = _select("dropquery", ctx, 20, seed)
        # zero-bias linear head: dropout's 1/(1-p) rescaling does not change its argmax, so both see the same rule
        theirs = DropQuery(n_dropout_samples=3, random_state=seed,
                           cluster_algo_dict={"random_state": seed, "n_init": 1}).query(
            x, _y_partial(len(x), labelled, y), Frozen(pred, classes=np.arange(10)), fit_clf=False, batch_size=20)
        rand = np.random.default_rng(seed).choice(ctx.unlabelled, 20, replace=False)
        reference = ctx.unlabelled[ACQUISITIONS.create("dropquery").mismatches(
            ctx, ctx.unlabelled, np.random.default_rng(999)) > 1]  # an independent draw of the candidates
        pot_ours.append(_potential(x, reference, ours))
        pot_theirs.append(_potential(x, reference, theirs))
        pot_rand.append(_potential(x, reference, rand))
        disagreement = _dropout_disagreement(pred, x)
        dis_ours.append(disagreement[ours].mean())
        dis_theirs.append(disagreement[theirs].mean())
    print(f"candidate potential ours {np.mean(pot_ours):.2f} skactiveml {np.mean(pot_theirs):.2f} "
          f"random {np.mean(pot_rand):.2f}; disagreement ours {np.mean(dis_ours):.3f} "
          f"skactiveml {np.mean(dis_theirs):.3f}")
    assert np.mean(pot_ours) <= 1.10 * np.mean(pot_theirs)
    assert np.mean(pot_ours) < np.mean(pot_rand)
    assert np.mean(dis_ours) >= np.mean(dis_theirs) - 0.10


def test_dropquery_torch_backend_sees_the_same_dropout_as_the_numpy_one():
    """The device path (torch masks, argmax of the linear head) must flip the same points as often as the
    predictor-calling numpy path: per-point flip counts over 40 masks agree closely."""
    x, y, pred, labelled = _setup(0, n=800)
    ctx = _ctx(x, y, labelled, pred)
    flips = {(backend, seed): ACQUISITIONS.create("dropquery", masks=40, backend=backend).mismatches(
        ctx, ctx.unlabelled, np.random.default_rng(seed)) for backend in ("numpy", "torch") for seed in (5, 6)}
    across = np.corrcoef(flips["numpy", 5], flips["torch", 5])[0, 1]
    within = np.corrcoef(flips["numpy", 5], flips["numpy", 6])[0, 1]  # what mask noise alone allows
    print(f"mean flips numpy {flips['numpy', 5].mean():.2f} torch {flips['torch', 5].mean():.2f}; "
          f"correlation numpy-torch {across:.3f}, numpy-numpy {within:.3f}")
    assert abs(flips["numpy", 5].mean() - flips["torch", 5].mean()) < 0.05 * 40
    assert across > within - 0.1 and within > 0.5
    picked = _select("dropquery", ctx, 20, seed=3, backend="torch")
    _assert_valid(picked, ctx, 20)
    assert np.array_equal(picked, _select("dropquery", ctx, 20, seed=3, backend="torch"))

    class Opaque(Predictor):  # answers predict_proba only: no linear head to hand to the device
        def predict_proba(self, features):
            return pred.predict_proba(features)

        def state(self):
            return {}

        @classmethod
        def from_state(cls, state):
            return cls()

    head_flips = ACQUISITIONS.create("dropquery", precision="fp32").mismatches(
        ctx, ctx.unlabelled, np.random.default_rng(8))
    ctx.predictor = Opaque()
    with pytest.raises(ValueError, match="linear head"):
        _select("dropquery", ctx, 20, seed=3, backend="torch")
    _assert_valid(_select("dropquery", ctx, 20, seed=3), ctx, 20)  # the numpy path takes any predictor
    # The same masks through the head's float32 logits or through any predictor's probabilities: the same flips.
    assert np.array_equal(ACQUISITIONS.create("dropquery").mismatches(ctx, ctx.unlabelled, np.random.default_rng(8)),
                          head_flips)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ["dropquery", "centroid"])
def test_dropquery_and_centroid_select_in_either_precision(name, precision):
    x, y, pred, labelled = _setup(0, n=600)
    ctx = _ctx(x, y, labelled, pred)
    picked = _select(name, ctx, 25, seed=4, precision=precision)
    _assert_valid(picked, ctx, 25)
    assert ctx.extras["bf16_products"] == int(precision == "bf16")  # logged as select_bf16_products
    assert np.array_equal(picked, _select(name, ctx, 25, seed=4, precision=precision))


def test_precision_auto_is_bfloat16_only_where_the_cpu_multiplies_it_natively():
    from methods.acquisition.clustering import uses_bf16
    from methods.kernels.lowp import cpu_has_native_bf16

    assert uses_bf16("bf16") and not uses_bf16("fp32")
    assert uses_bf16("auto") == (cpu_has_native_bf16() and not torch.cuda.is_available())
    x, y, pred, labelled = _setup(0, n=300)
    ctx = _ctx(x, y, labelled, pred)
    _select("dropquery", ctx, 5, seed=0)  # default auto: the round records what it became here
    assert ctx.extras["bf16_products"] == int(uses_bf16("auto"))
    with pytest.raises(ValueError, match="precision"):
        ACQUISITIONS.create("dropquery", precision="fp16")


def test_bfloat16_dropout_flips_agree_with_the_float32_ones():
    """bfloat16 logits move a prediction only where the dropped-out logits are within its rounding of a tie."""
    x, y, pred, labelled = _setup(0)
    ctx = _ctx(x, y, labelled, pred)
    flips = {p: ACQUISITIONS.create("dropquery", precision=p).mismatches(ctx, ctx.unlabelled, np.random.default_rng(3))
             for p in ("fp32", "bf16")}
    same = (flips["fp32"] == flips["bf16"]).mean()
    print(f"flip counts equal on {same:.4f} of the rows; mean {flips['fp32'].mean():.3f} vs {flips['bf16'].mean():.3f}")
    assert same > 0.98 and abs(flips["fp32"].mean() - flips["bf16"].mean()) < 0.05


def test_linear_head_flips_equal_a_float64_reference_whatever_the_block():
    from methods.acquisition.clustering import dropout_keep_mask, linear_head_flips

    x, y, pred, _ = _setup(1, n=700)
    head, rows, keep = pred.linear_head(), np.arange(5, 700), 0.25
    rng, expected = np.random.default_rng(9), []
    for s in range(0, len(rows), 256):  # the masks of a chunk are drawn in turn, then applied
        part = x[rows[s: s + 256]].astype(np.float64)
        masks = [dropout_keep_mask(rng, part.shape, keep) for _ in range(3)]
        clean = (part @ head.weight.T + head.bias).argmax(1)
        expected.append(sum(((part * m / keep) @ head.weight.T + head.bias).argmax(1) != clean for m in masks))
    for block in (100, 256, 2048):
        got = linear_head_flips(x, head, rows, np.random.default_rng(9), keep, 3, chunk=256, block=block)
        assert np.array_equal(got, np.concatenate(expected))


@pytest.mark.parametrize("keep", [0.25, 0.8, 0.999])
def test_dropout_keep_masks_keep_each_feature_at_the_rate_asked(keep):
    from methods.acquisition.clustering import dropout_keep_mask

    masks = dropout_keep_mask(np.random.default_rng(0), (400, 513), keep)  # an odd size: a part-used last draw
    assert masks.shape == (400, 513) and masks.dtype == bool
    assert abs(masks.mean() - keep) < 4 * np.sqrt(keep * (1 - keep) / masks.size) + 2 ** -16
    assert np.array_equal(masks, dropout_keep_mask(np.random.default_rng(0), (400, 513), keep))
    assert abs(np.corrcoef(masks[:, :-1].ravel(), masks[:, 1:].ravel())[0, 1]) < 0.01  # neighbours independent


def test_centroid_selection_is_as_representative_as_scikit_learn_kmeans():
    ours, theirs = [], []
    for seed in SEEDS:
        x, y, _, labelled = _setup(seed)
        ctx = _ctx(x, y, labelled)
        unl = ctx.unlabelled
        ours.append(_potential(x, unl, _select("centroid", ctx, 20, seed)))
        km = KMeans(20, random_state=seed).fit(x[unl])
        theirs.append(_potential(x, unl, unl[km.transform(x[unl]).argmin(0)]))
    print(f"pool potential ours {np.mean(ours):.2f} scikit-learn {np.mean(theirs):.2f}")
    assert np.mean(ours) <= 1.10 * np.mean(theirs)


def test_clustering_strategies_run_in_the_round_loop():
    from tests.test_loop import _run

    for name in NAMES:
        results = list(_run(acq=name, rounds=2, cold_start="method").rounds())
        assert [m["labels_spent"] for _, m, _ in results] == [0, 6, 12]


def test_probcover_sampled_graph_covers_nearly_as_much_as_the_exact_graph():
    """Above ``graph_sample`` unlabelled points ProbCover counts coverage on a seeded sample of targets
    (O(N sample d) instead of O(N^2 d)); its picks must still cover the whole pool almost as well."""
    gaps = []
    for seed in SEEDS:
        x, y, _, labelled = _setup(seed, n=3000)
        ctx = _ctx(x, y, labelled)
        delta = 0.5

        def coverage(picked, x=x, labelled=labelled):
            return (cdist(x, x[np.concatenate([labelled, picked])]).min(1) < delta).mean()

        exact = _select("probcover", ctx, 15, seed, delta=delta, graph_sample=None)
        sampled = _select("probcover", ctx, 15, seed, delta=delta, graph_sample=1200)
        _assert_valid(sampled, ctx, 15)
        assert np.array_equal(sampled, _select("probcover", ctx, 15, seed, delta=delta, graph_sample=1200))
        rand = np.random.default_rng(seed).choice(ctx.unlabelled, 15, replace=False)
        print(f"seed {seed}: coverage exact {coverage(exact):.4f} sampled {coverage(sampled):.4f} "
              f"random {coverage(rand):.4f}")
        gaps.append(coverage(exact) - coverage(sampled))
        assert coverage(sampled) > coverage(rand) + 0.1
    assert np.mean(gaps) <= 0.02 and max(gaps) <= 0.04
    # Too many edges for the sample: it is halved (with a warning) until the graph fits.
    with pytest.warns(UserWarning, match="halving the coverage sample"):
        halved = _select("probcover", ctx, 15, seed=0, delta=delta, graph_sample=1200, max_edges=20000)
    _assert_valid(halved, ctx, 15)
    assert coverage(halved) > coverage(rand) + 0.1
    # A budget larger than the sample can cover is filled from the whole unlabelled pool, not just the sample.
    x, y, _, labelled = _setup(0, n=800)
    ctx = _ctx(x, y, labelled)
    picked = _select("probcover", ctx, 300, seed=4, delta=1.5, graph_sample=200)
    _assert_valid(picked, ctx, 300)
