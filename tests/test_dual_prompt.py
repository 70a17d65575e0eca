"""Dual-prompt tuning (Wang, Song & Xia): the clean probability and the losses against direct computations,
the class-balanced query and the mining counts, transient labels through the round loop, exact resume, the
selector/adaptation pair, and the errors for bad pairings and options (tiny CLIP, synthetic data, no Ray)."""

import numpy as np
import pytest
import torch

from methods.acquisition.dual import DualUncertainty, class_balanced_lowest, top_per_class, top_per_column
from methods.adaptation.prompting.dual import (CLEAN_PROB, DualPrompt, DualPromptImagePredictor, DualPromptPredictor,
                                               clean_probability, complement_labels, dual_prompt_loss,
                                               two_stream_batches)
from methods.base import MINED, ORACLE, SelectionContext, TrainSet
from methods.registry import ACQUISITIONS, ADAPTATIONS, register_adaptation
from methods.validation import AcquisitionInputError
from orchestrator.budget import PerRound
from orchestrator.loop import ActiveLearningRun, RoundState, SelectionError

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"epochs": 3}


# ------------------------------------------------------------------ equations


def test_clean_probability_is_the_two_way_softmax_of_eq_3():
    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(-1, 1, (5, 4)), rng.uniform(-1, 1, (5, 4))
    direct = np.exp(pos / 0.01) / (np.exp(pos / 0.01) + np.exp(neg / 0.01))
    np.testing.assert_allclose(clean_probability(pos, neg, 100.0), direct, rtol=1e-5, atol=1e-7)
    assert np.isfinite(clean_probability(np.array([[50.0]]), np.array([[-50.0]]), 100.0)).all()


def _direct_losses(pos, neg, y, y_comp, scale, lam):
    p_clean = lambda c: torch.exp(scale * pos[range(len(y)), c]) / (  # noqa: E731
        torch.exp(scale * pos[range(len(y)), c]) + torch.exp(scale * neg[range(len(y)), c]))
    l1 = -torch.log(torch.softmax(scale * pos, dim=1)[range(len(y)), y]).mean()
    text = (-torch.log(p_clean(y)) - torch.log(1 - p_clean(y_comp))).mean()
    literal = (-torch.log(p_clean(y_comp)) + torch.log(1 - p_clean(y_comp))).mean()
    return l1 + lam * text, l1 + lam * literal


def test_both_readings_of_eq_5_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.rand((6, 5), generator=g) * 0.2, torch.rand((6, 5), generator=g) * 0.2
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    y_comp = complement_labels(y, 5, g)
    text, literal = _direct_losses(pos.double(), neg.double(), y, y_comp, 10.0, 0.7)
    assert float(dual_prompt_loss(pos, neg, y, y_comp, 10.0, 0.7, "text")) == pytest.approx(float(text), rel=1e-5)
    assert float(dual_prompt_loss(pos, neg, y, y_comp, 10.0, 0.7, "literal")) == pytest.approx(float(literal),
                                                                                                rel=1e-5)


def test_the_printed_l2_rewards_the_complement_label_and_the_text_reading_does_not():
    """Gradient of L2 w.r.t. the complement's positive similarity: the printed form pushes it up."""
    pos = torch.zeros((1, 3), requires_grad=True)
    y, y_comp = torch.tensor([0]), torch.tensor([2])
    for form, sign in (("text", 1.0), ("literal", -1.0)):
        pos.grad = None
        dual_prompt_loss(pos, torch.zeros((1, 3)), y, y_comp, 10.0, 1.0, form).backward()
        assert sign * float(pos.grad[0, 2]) > 0, form  # text: descending lowers sim^+ of the complement


def test_complement_labels_are_uniform_over_the_other_classes():
    y = torch.arange(5).repeat(4000)
    comp = complement_labels(y, 5, torch.Generator().manual_seed(1))
    assert not (comp == y).any()
    counts = np.bincount(comp[y == 0].numpy(), minlength=5)
    assert counts[0] == 0 and counts[1:].min() > 0.2 * 4000


def test_two_stream_batches_hold_16_labelled_and_64_pseudo_rows_and_cover_the_longer_stream():
    epoch = two_stream_batches(20, 300, 16, 64)(np.random.default_rng(0))
    assert len(epoch) == 5  # ceil(300 / 64) steps; the 20 labelled rows are cycled
    pseudo = np.concatenate([b[b >= 20] for b in epoch])
    assert sorted(pseudo) == list(range(20, 320))
    assert all((b < 20).sum() == 16 for b in epoch)
    assert [len(b) for b in two_stream_batches(40, 0, 16, 64)(np.random.default_rng(0))] == [16, 16, 8]
    assert all(len(b) == 64 for b in two_stream_batches(0, 128, 16, 64)(np.random.default_rng(0)))


# ------------------------------------------------------------------ query and mining


def test_query_takes_floor_b_over_c_per_class_and_the_rest_globally():
    rows = np.arange(12)
    classes = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2])
    clean = np.array([.9, .1, .2, .3, .8, .7, .05, .6, .5, .95, .99, .4])
    picked = class_balanced_lowest(rows, classes, clean, 7, 3)
    assert list(picked) == sorted([1, 2, 6, 8, 11, 9, 3])  # two per class, then the lowest left: row 3 (.3)
    assert list(class_balanced_lowest(rows, classes, clean, 2, 3)) == [1, 6]  # B < C: all global
    lonely = np.array([0, 1, 1, 1])  # class 0 has one row: its shortfall goes to the global ranking
    assert len(class_balanced_lowest(np.arange(4), lonely, np.array([.5, .1, .2, .3]), 4, 2)) == 4


def test_mining_takes_the_top_k_per_class_and_reports_short_classes():
    rows = np.arange(10, 20)
    classes = np.array([0, 0, 0, 1, 1, 1, 1, 2, 0, 1])
    clean = np.linspace(0, 1, 10)
    mined, short = top_per_class(rows, classes, clean, 2, 3)
    assert mined == {18: 0, 12: 0, 19: 1, 16: 1, 17: 2} and short == 1
    column = top_per_column(np.array([[.9, .1], [.8, .2], [.6, .4]]), np.arange(3), 2)
    assert column == {0: 0, 1: 0, 2: 1}  # rows 0, 1 are class 0's; class 1's best two are 2 and 1, 1 is taken


def _ctx(unlabelled, probs, clean, transient=None):
    labelled = np.setdiff1d(np.arange(len(probs)), unlabelled)
    return SelectionContext(1, probs.shape[1], np.asarray(unlabelled), labelled, np.zeros(len(labelled), np.int64),
                            probs=probs, transient=transient, outputs={CLEAN_PROB: clean})


def test_dual_uncertainty_queries_and_mines_disjoint_rows_and_may_query_a_mined_row():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 60).astype(np.float32)
    clean = rng.uniform(0, 1, (60, 3)).astype(np.float32)
    pseudo = probs.argmax(1)
    clean[7, pseudo[7]] = 0.0  # row 7 was mined last round; now it is the least clean row of all
    strategy = DualUncertainty(mine_k=4)
    sel = strategy.select(_ctx(np.arange(60), probs, clean, transient={7: int(pseudo[7])}), 7,
                          np.random.default_rng(0))
    assert 7 in sel.indices and len(sel.indices) == 7
    assert np.bincount(pseudo[sel.indices], minlength=3).min() >= 2  # floor(7 / 3) per class
    assert len(sel.transient_labels) == 12 and not set(sel.transient_labels) & set(sel.indices.tolist())
    assert all(pseudo[r] == c for r, c in sel.transient_labels.items())


def test_mining_more_than_the_pool_holds_is_refused_with_the_largest_k_that_fits():
    probs = np.full((20, 4), 0.25, np.float32)
    with pytest.raises(AcquisitionInputError, match=r"mine_k = 5 .*\(at most 4\)"):
        DualUncertainty(mine_k=5).select(_ctx(np.arange(20), probs, probs), 2, np.random.default_rng(0))
    with pytest.raises(AcquisitionInputError, match="bootstrap_k = 6"):
        DualUncertainty(bootstrap_k=6).bootstrap(_ctx(np.arange(20), probs, probs), np.random.default_rng(0))
    with pytest.raises(ValueError, match="dual_uncertainty"):
        ACQUISITIONS.create("dual_uncertainty", mine_k=-1)


# ------------------------------------------------------------------ the learner on real CLIP features


@pytest.fixture(scope="module")
def scans():
    """400 pool and 200 test images of the shifted synthetic set, embedded by the shipped tiny CLIP."""
    from datasets.registry import get_card
    from methods.core.encoders import load_encoder
    from orchestrator.contexts import TrialData
    from orchestrator.images import DatasetImages
    from orchestrator.zeroshot import class_embeddings

    card = get_card("synth-scans")
    images = DatasetImages("synth-scans", {"pool": "train", "test": "test"},
                           {"pool": np.arange(400), "test": np.arange(200)}, "tiny-clip",
                           {"sizes": {"train": 400, "test": 200}})
    encoder = load_encoder("tiny-clip")
    feats = {s: encoder.encode_images(images.pixels(s, np.arange(images.size(s)))).numpy() for s in ("pool", "test")}
    labels = {s: np.asarray(images._source_and_transform(s)[0].labels)[: images.size(s)] for s in ("pool", "test")}
    templates = card.prompts()
    text = encoder.encode_texts([t.format(c) for t in templates for c in card.classes]).numpy()
    return TrialData(feats["pool"], labels["pool"], feats["test"], labels["test"],
                     class_embeddings(text.reshape(len(templates), len(card.classes), -1)), "multiclass",
                     card.num_classes, "top1", class_names=list(card.classes), templates=templates, images=images)


def _adapt_ctx(data, round_=1):
    from methods.base import AdaptContext

    return AdaptContext(data.num_classes, round_, data.text_features, device="cpu", class_names=data.class_names,
                        templates=data.templates, images=data.images)


def _train(data, n_queried=20, n_mined=40):
    rows = np.arange(n_queried + n_mined)
    labels = data.pool_labels[rows].copy()
    labels[n_queried::3] = (labels[n_queried::3] + 1) % data.num_classes  # some wrong pseudo labels
    pseudo = np.arange(len(rows)) >= n_queried
    return TrainSet(data.pool_features[rows], labels, pseudo, rows)


def test_clean_prob_of_the_fitted_predictor_equals_eq_3_on_its_own_prompts(scans):
    predictor = DualPrompt(**FAST).fit(_train(scans), _adapt_ctx(scans), np.random.default_rng(0))
    x = scans.test_features / np.linalg.norm(scans.test_features, axis=1, keepdims=True)
    scale = 1.0 / predictor.temperature  # tau of eq. 3 is the classifier's (CLIP's logit scale by default)
    assert predictor.clean_scale == pytest.approx(scale)
    direct = 1 / (1 + np.exp(-scale * (x @ predictor.weight.T - x @ predictor.negative.T)))
    np.testing.assert_allclose(predictor.predict_output(CLEAN_PROB, scans.test_features), direct, atol=1e-5)
    assert not np.allclose(predictor.weight, predictor.negative)
    restored = DualPromptPredictor.from_state(predictor.state())
    np.testing.assert_allclose(restored.predict_output(CLEAN_PROB, x), predictor.predict_output(CLEAN_PROB, x))


def test_untrained_model_is_zero_shot_with_clean_probability_one_half(scans):
    predictor = DualPrompt().fit(TrainSet(np.zeros((0, 1)), np.zeros(0, np.int64), np.zeros(0, bool)),
                                 _adapt_ctx(scans, 0), np.random.default_rng(0))
    text = scans.text_features / np.linalg.norm(scans.text_features, axis=1, keepdims=True)
    np.testing.assert_allclose(predictor.weight, text, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_output(CLEAN_PROB, scans.test_features[:5]), 0.5)


def test_options_change_the_model_and_each_fit_is_seeded(scans, trained_parameters):
    train, ctx = _train(scans), _adapt_ctx(scans)
    base = DualPrompt(**FAST).fit(train, ctx, np.random.default_rng(0))
    np.testing.assert_array_equal(base.weight, DualPrompt(**FAST).fit(train, ctx, np.random.default_rng(0)).weight)
    shapes = {tuple(p.shape) for p in trained_parameters}
    assert shapes == {(16, 64)}, shapes  # M = 16 context vectors of the tiny text tower's width, both polarities
    csc = DualPrompt(class_specific=True, **FAST).fit(train, ctx, np.random.default_rng(0))
    assert csc.contexts["positive"].shape == (scans.num_classes, 16, 64)
    literal = DualPrompt(l2_form="literal", **FAST).fit(train, ctx, np.random.default_rng(0))
    assert not np.allclose(literal.negative, base.negative)


def test_visual_prompts_train_on_pixels_and_round_trip(scans):
    learner = ADAPTATIONS.create("dual_prompt", visual="vpt", visual_tokens=4, epochs=2)
    assert "images" in learner.requires and "output:clean_prob" in learner.provides
    predictor = learner.fit(_train(scans), _adapt_ctx(scans), np.random.default_rng(0))
    assert isinstance(predictor, DualPromptImagePredictor) and predictor.prompts.shape[:2] == (1, 4)
    clean = predictor.predict_output_images(CLEAN_PROB, scans.images, "test", np.arange(8))
    assert clean.shape == (8, scans.num_classes) and 0 < clean.min() and clean.max() < 1
    restored = DualPromptImagePredictor.from_state(predictor.state())
    np.testing.assert_allclose(restored.predict_output_images(CLEAN_PROB, scans.images, "test", np.arange(8)), clean,
                               atol=1e-5)


# ------------------------------------------------------------------ the round loop


def _run(data, rounds=3, adaptation=("dual_prompt", FAST), **kw):
    return ActiveLearningRun(("dual_uncertainty", {"mine_k": 4, "bootstrap_k": 4}), adaptation,
                             PerRound(count=12), rounds, seed=1, data=data, remote=False, **kw)


@pytest.fixture(scope="module")
def ours(scans):
    run = _run(scans)
    return run, list(run.rounds())


def test_mined_labels_are_replaced_every_round_free_and_never_spent(ours):
    _, results = ours
    truth = ours[0]._pool_labels
    metrics = [m for _, m, _ in results]
    # K = 4 per class x 10 classes, less where zero-shot assigns a class fewer rows
    assert 30 <= metrics[0]["labels_bootstrap"] == len(results[0][0].ledger.transient) <= 40
    assert metrics[0]["labels_spent"] == 0 and 0 <= metrics[0]["precision_transient"] <= 1
    assert [m["labels_spent"] for m in metrics] == [0, 12, 24, 36]
    previous = set(results[0][0].ledger.transient)
    for state, m, queried in results[1:]:
        mined = set(state.ledger.transient)
        assert {state.ledger.sources[r] for r in mined} == {MINED} and m["labels_transient"] == len(mined) <= 40
        assert m["labels_total"] == m["labels_spent"] + len(mined)  # the old set is gone, not accumulated
        assert not mined & set(queried) and mined != previous
        rows = np.asarray(sorted(mined))
        precision = np.mean([state.ledger.targets[r] == truth[r] for r in rows])
        assert m["precision_mined"] == pytest.approx(precision) == m["precision_transient"]
        previous = mined
    assert all(src == ORACLE for r, src in results[-1][0].ledger.sources.items() if r not in previous)


def test_resume_from_a_checkpoint_with_mined_labels_is_exact(ours):
    run, results = ours
    saved = RoundState.from_bytes(results[1][0].to_bytes())
    assert saved.ledger.transient == results[1][0].ledger.transient
    resumed = [({k: v for k, v in m.items() if not k.startswith("seconds")}, q) for _, m, q in run.rounds(saved)]
    expected = [({k: v for k, v in m.items() if not k.startswith("seconds")}, q) for _, m, q in results[2:]]
    np.testing.assert_equal(resumed, expected)


def test_a_selector_chooses_while_coop_on_the_queried_labels_is_evaluated(scans, ours):
    pair = _run(scans, rounds=1, adaptation=("coop", {"epochs": 3}), selector=("dual_prompt", FAST),
                adaptation_labels="queried")
    results = list(pair.rounds())
    state = results[-1][0]
    assert state.selector is not None and type(state.predictor).__name__ == "PromptedLinearPredictor"
    assert results[0][1]["labels_bootstrap"] >= 30 and len(state.ledger.transient) > 0  # the selector's mining
    assert results[1][1]["labels_spent"] == 12


def test_a_selector_with_another_class_list_is_refused_before_round_one(scans):
    @register_adaptation("test_eleven_classes")  # registered here, not at import: the learner contract skips it
    class ElevenClasses(DualPrompt):
        """Scores one class too many: a selector whose class list is not the dataset's."""

        def fit(self, train, ctx, rng):
            predictor = super().fit(train, ctx, rng)
            predictor.weight = np.vstack([predictor.weight, predictor.weight[:1]])
            predictor.bias = np.zeros(len(predictor.weight), np.float32)
            return predictor

    with pytest.raises(SelectionError, match="selector 'test_eleven_classes' scores 11 classes .* dataset has 10"):
        list(_run(scans, rounds=1, selector=("test_eleven_classes", FAST)).rounds())


def test_dual_uncertainty_over_a_learner_without_clean_probability_is_refused_at_config_load(tmp_path):
    import yaml

    from orchestrator.config import ConfigError, load_config

    config = {"name": "bad", "datasets": ["synth-scans"], "methods": ["dual_uncertainty+coop"],
              "budgets": {"b": {"kind": "per_round", "count": 5}}, "workdir": str(tmp_path)}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"needs \['output:clean_prob'\], which learner 'coop' does not provide"
                                          r".*selector"):
        load_config(path)
    config["methods"] = [{"acquisition": "dual_uncertainty", "adaptation": "coop", "adaptation_labels": "queried",
                          "selector": {"adaptation": "dual_prompt"}}]
    path.write_text(yaml.safe_dump(config))
    assert load_config(path).trials()[0]["method"]["selector"]["adaptation"] == "dual_prompt"
