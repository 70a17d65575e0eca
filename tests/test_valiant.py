"""VALIANT on a black box: SPSA-GC against its expectation, the black box's contract and counter, the segmentation
codes, the three losses and the instability against direct computations, resume, and a real Tune sweep with
queries per round in MLflow (tiny CLIP as both the VIPD's encoder and the black box; synthetic lesions)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods.adaptation.blackbox.decoder import build_decoder, seeded_init, upsampling_plan
from methods.adaptation.blackbox.valiant import (VIPDPredictor, instability, kl_rows, make_batch, valiant_terms)
from methods.base import AdaptContext, SelectionContext, TrainSet
from methods.core.spsa import SPSAGC
from methods.registry import ACQUISITIONS, ADAPTATIONS
from methods.segmentation_codes import SegmentationCodes, segment

pytestmark = pytest.mark.usefixtures("one_thread")
DATASET = "synth-lesions"
FAST = {"steps": 3, "batch_size": 8, "draws": 2}


def test_one_spsa_draw_is_exact_along_its_direction_and_the_estimate_is_unbiased_on_a_quadratic():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g)
    hessian, b, w = a @ a.T + torch.eye(6), torch.randn(6, generator=g), torch.randn(6, generator=g)

    def loss(v):
        return float(0.5 * v @ hessian @ v + b @ v)

    grad = hessian @ w + b
    one = SPSAGC(draws=1)
    for _ in range(5):
        state = g.get_state()
        estimate = one.gradient(loss, w, 0.01, g)
        g.set_state(state)
        delta = one.perturbation(6, g)
        torch.testing.assert_close(estimate * delta, torch.full((6,), float(delta @ grad)), rtol=1e-3, atol=1e-3)
    mean = torch.stack([SPSAGC(draws=50).gradient(loss, w, 0.01, g) for _ in range(200)]).mean(0)
    assert torch.allclose(mean, grad, atol=0.15 * float(grad.abs().max()))


def test_spsa_gc_reduces_a_smooth_loss():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(20, generator=g)

    def loss(v):
        return float(((v - target) ** 2).sum() + 0.1 * torch.cos(v).sum())

    start = torch.zeros(20)
    end = SPSAGC(a=0.05, c=0.01).minimise(loss, start, 300, g)
    assert loss(end) < 0.2 * loss(start)
    with pytest.raises(ValueError, match="a > 0"):
        SPSAGC(a=0)


@pytest.fixture(scope="module")
def lesions():
    from datasets.registry import get_card
    from methods.adaptation.prompting.model import frozen_clip
    from methods.core.blackbox import ClipBlackBoxSpec
    from orchestrator.images import DatasetImages
    from orchestrator.preparation import card_inputs
    from orchestrator.zeroshot import class_embeddings

    card = get_card(DATASET)
    clip = frozen_clip("tiny-clip")
    n = 64
    images = DatasetImages(DATASET, {"pool": "train", "test": "test"}, {"pool": np.arange(n), "test": np.arange(16)},
                           "tiny-clip", {"sizes": {"train": n, "test": 16}})
    inputs = card_inputs(DATASET, "tiny-clip", images=images)
    segmentation = SegmentationCodes(epochs=3).run(inputs, np.random.default_rng(0))
    per_template = np.stack([clip.encode_texts([t.format(c) for c in card.classes]).numpy() for t in card.prompts()])
    spec = ClipBlackBoxSpec("tiny-clip", tuple(card.classes), tuple(card.prompts()))
    ctx = AdaptContext(card.num_classes, 0, class_embeddings(per_template), device="cpu",
                       class_names=list(card.classes), images=images, blackbox=spec.open(),
                       prepared={"segmentation_codes": segmentation})
    return {"clip": clip, "images": images, "segmentation": segmentation, "ctx": ctx, "spec": spec, "n": n}


def test_the_black_box_answers_distributions_counts_every_image_and_refuses_anything_else(lesions):
    box = lesions["spec"].open()
    pixels = lesions["images"].pixels("pool", np.arange(5))
    out = box.query(pixels)
    assert out.shape == (5, 2) and np.allclose(out.sum(1), 1, atol=1e-5) and (out >= 0).all()
    box.query(pixels[:3])
    assert box.queries == 8
    for name in ("encode_images", "features", "gradients", "model", "weights"):
        with pytest.raises(AttributeError, match="answers query.*nothing else"):
            getattr(box, name)
    with pytest.raises(ValueError, match=r"expected images \(n, 3, H, W\)"):
        box.query(pixels[0])
    assert box.queries == 8


def test_segment_maps_are_one_hot_ordered_by_intensity_and_the_codes_cover_the_pool(lesions):
    two_halves = torch.zeros(1, 3, 32, 32)
    two_halves[..., 16:] = 2.0
    maps = segment(two_halves, k=2, size=8)
    assert maps.shape == (1, 2, 8, 8) and torch.equal(maps.sum(1), torch.ones(1, 8, 8))
    assert maps[0, 0, :, :4].all() and maps[0, 1, :, 4:].all()  # dark half is segment 0
    seg = lesions["segmentation"]
    assert seg["codes"].shape == (lesions["n"], 512) and np.isfinite(seg["codes"]).all()
    assert float(seg["loss"]) < np.log(4)  # better than guessing one of four segments


def test_the_loss_terms_and_the_instability_equal_direct_computations(lesions):
    clip, ctx, seg = lesions["clip"], lesions["ctx"], lesions["segmentation"]
    g = torch.Generator().manual_seed(0)
    decoder = build_decoder(ctx.text_features.shape[1] + 512, clip.image_size)
    seeded_init(decoder, g)
    rows = np.arange(6)
    batch = make_batch(lesions["images"].pixels("pool", rows).float(), seg["codes"][rows], clip, seg, 0.1, g)
    box = lesions["spec"].open()
    terms = valiant_terms(decoder, batch, box, clip, (1.0, 1.0, 1.0))
    with torch.no_grad():
        p, pp = decoder(batch.fx, batch.cx), decoder(batch.fxp, batch.cxp)
    y, yp = box.query(batch.x + p), box.query(batch.xp + pp)
    assert box.queries == 2 * 2 * len(rows)  # L_sens asked about X + P and X^p + P^p, twice here
    assert terms["sens"] == pytest.approx(-np.mean(np.sum(y * np.log(y / yp), 1)), rel=1e-4, abs=1e-7)
    direct_coh = ((clip.encode_images(batch.x + p) - clip.encode_images(batch.x)) ** 2).sum(1).mean()
    assert terms["coh"] == pytest.approx(float(direct_coh), rel=1e-4, abs=1e-7)
    cos = (p.flatten(1) * pp.flatten(1)).sum(1) / (p.flatten(1).norm(dim=1) * pp.flatten(1).norm(dim=1))
    assert terms["div"] == pytest.approx(float(1 - cos.mean()), rel=1e-4, abs=1e-6)
    assert kl_rows(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 0.5]])).item() == pytest.approx(0)

    state = g.get_state()
    scores = instability(decoder, lesions["images"], seg["codes"], clip, seg, 0.1, g, batch=64)
    g.set_state(state)
    x = lesions["images"].pixels("pool", np.arange(lesions["n"])).float()
    b = make_batch(x, seg["codes"], clip, seg, 0.1, g)
    with torch.no_grad():
        direct = 1 - F.cosine_similarity(decoder(b.fx, b.cx).flatten(1), decoder(b.fxp, b.cxp).flatten(1))
    np.testing.assert_allclose(scores, direct.numpy(), atol=1e-6)


def test_the_decoder_grows_a_small_seed_map_to_the_input_size():
    assert upsampling_plan(224) == (7, 5) and upsampling_plan(32) == (8, 2)
    decoder = build_decoder(10, 224)
    assert decoder(torch.zeros(2, 4), torch.zeros(2, 6)).shape == (2, 3, 224, 224)


def test_the_vipd_trains_once_counts_its_queries_and_is_reused_from_the_checkpoint(lesions):
    ctx = lesions["ctx"]
    empty = TrainSet(np.zeros((0, 1), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64))
    learner = ADAPTATIONS.create("vipd", **FAST)
    box = ctx.blackbox
    before = box.queries
    predictor = learner.fit(empty, ctx, np.random.default_rng(0))
    assert box.queries - before == FAST["steps"] * FAST["draws"] * 2 * 2 * FAST["batch_size"]
    assert predictor.instability.shape == (lesions["n"],) and np.isfinite(predictor.instability).all()
    again = VIPDPredictor.from_state(predictor.state())
    np.testing.assert_array_equal(again.decoder, predictor.decoder)
    ctx.previous, spent = again, box.queries
    reused = learner.fit(empty, ctx, np.random.default_rng(5))
    ctx.previous = None
    assert box.queries == spent and np.array_equal(reused.instability, predictor.instability)
    same = ADAPTATIONS.create("vipd", **FAST).fit(empty, ctx, np.random.default_rng(0))
    np.testing.assert_array_equal(same.instability, predictor.instability)  # a function of the seed

    sel = SelectionContext(1, 2, np.arange(2, lesions["n"]), np.arange(2), np.zeros(2, np.int64),
                           outputs={"instability": predictor.instability})
    picked = ACQUISITIONS.create("valiant").select(sel, 5, np.random.default_rng(0)).indices
    top = 2 + np.argsort(-predictor.instability[2:])[:5]
    assert sorted(picked) == sorted(top)


def test_baps_trains_on_the_labelled_rows_through_the_black_box_and_scores_the_unlabelled_ones(lesions):
    from methods.adaptation.blackbox.baps import BAPSPredictor, prompted_loss

    answers, labels = np.array([[0.8, 0.2], [0.3, 0.7]]), np.array([0, 1])
    assert prompted_loss(answers, labels) == pytest.approx(-np.log([0.8, 0.7]).mean())
    vectors = np.array([[1, 0], [1, 1]])
    assert prompted_loss(answers, vectors) == pytest.approx(
        -np.mean(vectors * np.log(answers) + (1 - vectors) * np.log(1 - answers)))
    assert SPSAGC(a=1.0, schedule="step").step_sizes(299)[0] == 1.0
    assert SPSAGC(a=1.0, schedule="step").step_sizes(300)[0] == pytest.approx(0.33)

    ctx, n = lesions["ctx"], lesions["n"]
    labelled = np.arange(16)  # two batches of 8
    pool_labels = np.asarray(lesions["images"]._source_and_transform("pool")[0].labels)[:n]
    train = TrainSet(np.zeros((16, 1), np.float32), pool_labels[labelled], np.zeros(16, bool), labelled)
    ctx.unlabelled, box = np.arange(16, n), ctx.blackbox
    try:
        before = box.queries
        first = ADAPTATIONS.create("baps", **FAST).fit(train, ctx, np.random.default_rng(0))
        assert box.queries - before == FAST["steps"] * FAST["draws"] * 2 * FAST["batch_size"] + (n - 16)
        assert np.isnan(first.prompted[labelled]).all() and np.allclose(first.prompted[16:].sum(1), 1, atol=1e-5)
        ctx.previous = BAPSPredictor.from_state(first.state())
        second = ADAPTATIONS.create("baps", **FAST).fit(train, ctx, np.random.default_rng(1))
        assert not np.array_equal(second.decoder, first.decoder)  # continued training, from the last round's
    finally:
        ctx.previous, ctx.unlabelled = None, None
    sel = SelectionContext(1, 2, np.arange(16, n), labelled, pool_labels[labelled],
                           outputs={"prompted_probs": first.prompted})
    picked = ACQUISITIONS.create("baps").select(sel, 4, np.random.default_rng(0)).indices
    p = first.prompted[16:]
    top = 16 + np.argsort((p * np.log(p)).sum(1))[:4]
    assert sorted(picked) == sorted(top)


def test_all_zero_lambdas_and_a_black_box_less_sweep_are_refused(tmp_path, session_cache):
    from orchestrator.config import ConfigError, load_config
    from tests.test_sweep import _config

    with pytest.raises(ValueError, match="all 0, so there is nothing to train"):
        ADAPTATIONS.create("vipd", lambda_sens=0, lambda_coh=0, lambda_div=0)
    methods = [{"name": "valiant", "acquisition": "valiant", "adaptation": "linear_probe",
                "selector": {"adaptation": "vipd"}}]
    with pytest.raises(ConfigError, match="query a black box, but the sweep configures none"):
        load_config(_config(tmp_path, session_cache, datasets=[DATASET], methods=methods))
    methods = [{"name": "valiant-zs", "acquisition": "valiant", "adaptation": "zeroshot"}]
    with pytest.raises(ConfigError, match="instability"):
        load_config(_config(tmp_path, session_cache, datasets=[DATASET], methods=methods, blackbox={}))


def test_valiant_runs_in_a_real_sweep_with_its_queries_per_round_in_mlflow(ray_cluster, tmp_path, session_cache):
    from orchestrator.config import load_config
    from orchestrator.sweep import run_sweep
    from tests.test_sweep import _config, _trial_runs

    methods = [{"name": "valiant", "acquisition": "valiant", "adaptation": "linear_probe",
                "selector": {"adaptation": "vipd", "adaptation_options": FAST}},
               {"name": "baps", "acquisition": "baps", "adaptation": "linear_probe",
                "selector": {"adaptation": "baps", "adaptation_options": FAST}},
               {"name": "random", "acquisition": "random", "adaptation": "linear_probe"}]
    path = _config(tmp_path, session_cache, name="valiant", datasets=[DATASET], methods=methods, seeds=[0], rounds=2,
                   dataset_options={DATASET: {"sizes": {"train": 120, "test": 60}}},
                   budgets={"b": {"kind": "per_round", "count": 10}}, blackbox={"cost_per_1000": 0.5})
    config = load_config(path)
    outcome = run_sweep(config)
    assert outcome.trials == 3 and not outcome.failed
    client, runs, _ = _trial_runs(config.tracking_uri, "valiant")
    by_method = {r.data.params["method"]: r for r in runs}
    spent = FAST["steps"] * FAST["draws"] * 2 * 2 * FAST["batch_size"]
    history = {m.step: m.value for m in client.get_metric_history(by_method["valiant"].info.run_id,
                                                                 "cost_blackbox_queries")}
    assert history == {0: spent, 1: spent, 2: spent}  # trained once at round 0, reused after
    cost = {m.step: m.value for m in client.get_metric_history(by_method["valiant"].info.run_id, "blackbox_cost")}
    assert cost[2] == pytest.approx(spent / 1000 * 0.5)
    assert not client.get_metric_history(by_method["random"].info.run_id, "cost_blackbox_queries") or \
        {m.value for m in client.get_metric_history(by_method["random"].info.run_id, "cost_blackbox_queries")} == {0}
    baps = {m.step: m.value for m in client.get_metric_history(by_method["baps"].info.run_id, "cost_blackbox_queries")}

    def training(labelled):  # images asked about in one round's SPSA steps: near-equal batches of <= 8 rows
        sizes = [len(b) for b in np.array_split(np.arange(labelled), -(-labelled // FAST["batch_size"]))]
        return FAST["draws"] * 2 * sum(sizes[k % len(sizes)] for k in range(FAST["steps"]))

    first, second = training(10) + 110, training(20) + 100  # + one query per unlabelled row after training
    assert baps == {0: 120, 1: 120 + first, 2: 120 + first + second}
    labels = {m.step: m.value for m in client.get_metric_history(by_method["valiant"].info.run_id, "labels_spent")}
    assert labels == {0: 0, 1: 10, 2: 20}
    assert {m.step for m in client.get_metric_history(by_method["valiant"].info.run_id, "auc")} == {0, 1, 2}
    from orchestrator.report import comparison_tables, load_trials

    table = comparison_tables(load_trials(config.tracking_uri, "valiant", metrics=("cost_blackbox_queries",)))
    queries = table["blackbox_queries"].attrs["mean"]
    assert queries.loc["valiant"].tolist() == [spent] * 3 and queries.loc["random"].tolist() == [0, 0, 0]
    assert queries.loc["baps"].iloc[-1] == 120 + first + second


def test_a_resumed_valiant_run_equals_an_uninterrupted_one(lesions):
    from orchestrator.budget import PerRound
    from orchestrator.contexts import TrialData
    from orchestrator.loop import ActiveLearningRun, RoundState

    clip, images, ctx = lesions["clip"], lesions["images"], lesions["ctx"]
    feats = {s: clip.encode_images(images.pixels(s, np.arange(images.size(s)))).numpy() for s in ("pool", "test")}
    labels = {s: np.asarray(images._source_and_transform(s)[0].labels)[: images.size(s)] for s in ("pool", "test")}
    data = TrialData(feats["pool"], labels["pool"], feats["test"], labels["test"], ctx.text_features, "binary", 2,
                     "auc", class_names=ctx.class_names, images=images, blackbox=lesions["spec"],
                     prepared={"segmentation_codes": lesions["segmentation"]})

    def run():
        return ActiveLearningRun(("valiant", {}), ("linear_probe", {}), PerRound(count=5), 3, seed=1, data=data,
                                 remote=False, selector=("vipd", FAST))

    def strip(metrics):
        return {k: v for k, v in metrics.items() if not k.startswith("seconds")}

    rounds = list(run().rounds())
    saved = RoundState.from_bytes(rounds[1][0].to_bytes())
    resumed = list(run().rounds(resume=saved))
    np.testing.assert_equal([strip(m) for _, m, _ in resumed], [strip(m) for _, m, _ in rounds[2:]])
    assert [q for _, _, q in resumed] == [q for _, _, q in rounds[2:]]
    spent = FAST["steps"] * FAST["draws"] * 2 * 2 * FAST["batch_size"]
    assert {m["cost_blackbox_queries"] for _, m, _ in rounds} == {spent}  # trained once; the checkpoint keeps it
