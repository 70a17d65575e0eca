"""Multi-label tasks end to end: the synthetic findings member, the zero-shot head (positive vs negative prompt
per label), the probe's independent sigmoids, per-label entropies, refusals, and a real sweep whose macro AUC in
MLflow equals sklearn's on the checkpointed predictor."""

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from methods.acquisition.model_based import mutual_information
from methods.acquisition.uncertainty import prediction_entropy
from methods.base import AdaptContext, SelectionContext, TrainSet
from methods.core.predictors import LinearPredictor, sigmoid
from methods.registry import ACQUISITIONS, ADAPTATIONS

pytestmark = pytest.mark.usefixtures("one_thread")
DATASET = "synth-findings"
FAST = {"steps": 2, "batch_size": 8, "draws": 1}


def test_the_findings_member_draws_independent_labels_and_draws_what_it_labels():
    from datasets.registry import get_card, open_split

    card = get_card(DATASET)
    assert card.task == "multilabel" and card.metric == "auc" and card.negative_templates
    source = open_split(DATASET, "train", sizes={"train": 400})
    labels = np.asarray(source.labels)
    assert labels.shape == (400, 4) and set(np.unique(labels)) == {0, 1}
    assert np.allclose(labels.mean(0), 0.3, atol=0.08)
    assert ((labels.sum(1) > 1).mean()) > 0.2  # findings co-occur
    pixels = source.render(np.arange(400)).astype(np.float32)
    bright = (pixels.mean(-1) > 200).sum((1, 2))
    assert bright[labels.sum(1) == 0].mean() < bright[labels.sum(1) >= 2].mean()
    np.testing.assert_array_equal(pixels[:5], source.render(np.arange(5)))


def test_pathologies_on_the_multilabel_member_are_refused():
    from datasets.registry import open_split

    with pytest.raises(ValueError, match="defined for single-label members"):
        open_split(DATASET, "train", sizes={"train": 20}, pathologies={"label_noise": 0.1})


def test_a_multilabel_card_without_negative_prompts_is_refused():
    from datasets.registry import get_card

    card = get_card(DATASET).model_dump()
    card["negative_templates"] = []
    with pytest.raises(ValueError, match="needs negative_templates"):
        type(get_card(DATASET)).model_validate(card)


def test_zero_shot_scores_each_label_by_its_positive_against_its_negative_prompt():
    rng = np.random.default_rng(0)
    pos, neg, x = rng.normal(size=(4, 8)), rng.normal(size=(4, 8)), rng.normal(size=(5, 8))
    ctx = AdaptContext(4, 0, pos - neg, task="multilabel")
    probs = ADAPTATIONS.create("zeroshot").fit(None, ctx, rng).predict_proba(x)
    pair = np.stack([x @ pos.T, x @ neg.T], -1) / 0.01
    direct = np.exp(pair[..., 0] - np.logaddexp(pair[..., 0], pair[..., 1]))
    np.testing.assert_allclose(probs, direct, rtol=1e-4, atol=1e-6)
    assert not np.allclose(probs.sum(1), 1)


def test_the_black_box_of_a_multilabel_task_answers_per_label_probabilities():
    from datasets.registry import get_card, open_split
    from methods.core.blackbox import ClipBlackBoxSpec
    from orchestrator.images import DatasetImages

    card = get_card(DATASET)
    spec = ClipBlackBoxSpec("tiny-clip", tuple(card.classes), tuple(card.prompts()),
                            negative_templates=tuple(card.negative_templates))
    images = DatasetImages(DATASET, {"pool": "train"}, {"pool": np.arange(8)}, "tiny-clip", {"sizes": {"train": 8}})
    answers = spec.open().query(images.pixels("pool", np.arange(8)))
    assert answers.shape == (8, 4) and ((answers > 0) & (answers < 1)).all()
    assert not np.allclose(answers.sum(1), 1)
    assert open_split(DATASET, "train", sizes={"train": 8}).labels.shape == (8, 4)


def test_the_probe_fits_independent_sigmoids_with_binary_cross_entropy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    truth = rng.normal(size=(3, 6))
    y = (x @ truth.T > 0).astype(np.int64)
    ctx = AdaptContext(3, 1, np.zeros((3, 6), np.float32), task="multilabel")
    probe = ADAPTATIONS.create("linear_probe", init="zeros", text_anchor=0, temperature=1.0, epochs=200, lr=0.05)
    predictor = probe.fit(TrainSet(x, y, np.zeros(200, bool)), ctx, rng)
    assert predictor.multilabel
    probs = predictor.predict_proba(x)
    np.testing.assert_allclose(probs, sigmoid(x @ predictor.weight.T + predictor.bias), rtol=1e-5, atol=1e-6)
    assert roc_auc_score(y, probs, average="macro") > 0.95
    again = LinearPredictor.from_state(predictor.state())
    assert again.multilabel and again.linear_head() is None


def test_uncertainty_sums_the_binary_entropies_of_the_labels():
    p = np.array([[0.5, 0.5, 0.9], [0.1, 0.99, 0.5]])
    direct = -(p * np.log(p) + (1 - p) * np.log(1 - p)).sum(1)
    np.testing.assert_allclose(prediction_entropy(p, multilabel=True), direct)
    ctx = SelectionContext(1, 3, np.arange(2), np.zeros(0, np.int64), np.zeros((0, 3)), probs=p, task="multilabel")
    assert ACQUISITIONS.create("entropy").select(ctx, 1, None).indices.tolist() == [int(np.argmax(direct))]
    draws = np.stack([p, np.clip(p + 0.05, 0, 1)])
    expected = prediction_entropy(draws.mean(0), True) - prediction_entropy(draws, True).mean(0)
    np.testing.assert_allclose(mutual_information(draws, multilabel=True), expected)


def test_strategies_and_learners_that_cannot_do_multilabel_are_refused_before_ray(tmp_path, session_cache):
    from orchestrator.config import ConfigError, load_config
    from tests.test_sweep import _config

    methods = [{"name": "margin", "acquisition": "margin", "adaptation": "linear_probe"},
               {"name": "coop", "acquisition": "random", "adaptation": "coop"}]
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, session_cache, datasets=[DATASET], methods=methods))
    message = str(err.value)
    assert "acquisition 'margin' cannot handle the multi-label task" in message and "'entropy'" in message
    assert "adaptation 'coop' cannot handle" in message and "'linear_probe'" in message
    only_elsewhere = [{**methods[0], "datasets": ["synth-lesions"]}]
    load_config(_config(tmp_path, session_cache, datasets=[DATASET, "synth-lesions"], methods=only_elsewhere))


def test_a_multilabel_sweep_reports_macro_auc_equal_to_sklearns(ray_cluster, tmp_path, session_cache):
    from datasets.registry import open_split
    from orchestrator.config import load_config
    from orchestrator.sweep import run_sweep
    from orchestrator.trial_store import TrialStore
    from tests.test_sweep import _config, _trial_runs

    sizes = {"sizes": {"train": 150, "test": 80}}
    methods = [{"name": "random", "acquisition": "random", "adaptation": "linear_probe"},
               {"name": "entropy", "acquisition": "entropy", "adaptation": "linear_probe"},
               {"name": "bald", "acquisition": "bald", "adaptation": "linear_probe"},
               {"name": "zeroshot", "acquisition": "random", "adaptation": "zeroshot"},
               {"name": "valiant", "acquisition": "valiant", "adaptation": "linear_probe",
                "selector": {"adaptation": "vipd", "adaptation_options": FAST}},
               {"name": "baps", "acquisition": "baps", "adaptation": "linear_probe",
                "selector": {"adaptation": "baps", "adaptation_options": FAST}}]
    path = _config(tmp_path, session_cache, name="ml", datasets=[DATASET], methods=methods, seeds=[0], rounds=2,
                   dataset_options={DATASET: sizes}, budgets={"b": {"kind": "per_round", "count": 15}}, blackbox={})
    config = load_config(path)
    outcome = run_sweep(config)
    assert outcome.trials == 6 and not outcome.failed
    client, runs, _ = _trial_runs(config.tracking_uri, "ml")
    store = TrialStore(yaml.safe_load(path.read_text())["workdir"] + "/trials")
    test = open_split(DATASET, "test", **sizes)
    test_labels = np.asarray(test.labels)
    for run in runs:
        auc = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "auc")}
        assert sorted(auc) == [0, 1, 2]
        state = store.load(run.data.params["config_hash"])
        assert state.finished and state.ledger.targets_of(state.ledger.order).shape == (30, 4)
        features = _test_features(config, session_cache)
        probs = state.predictor.predict_proba(features)
        assert auc[2] == pytest.approx(roc_auc_score(test_labels, probs, average="macro"), abs=1e-6)


def _test_features(config, cache):
    from orchestrator.features import EmbedOptions, embed_splits

    cached = embed_splits([(DATASET, "test")], config.encoder, cache, EmbedOptions(),
                          source_options=config.dataset_options[DATASET])
    return np.asarray(cached[(DATASET, "test")].features, np.float32)
