"""One contract for every registered plug-in, in the spirit of scikit-activeml's template tests.

For each strategy and each learner in the registries, on a small real pool
(synth-shapes pixels embedded by the shipped tiny CLIP): a seeded run is
reproducible, cold start works, every declared input is needed (dropping it
breaks or changes the selection) and nothing undeclared is given, the
predictor's state round-trips through a checkpoint with its class embeddings,
and a bad option is refused. A new plug-in is covered by adding its file.
"""

from dataclasses import replace

import numpy as np
import pytest

from methods.base import (BLACKBOX, CLASS_EMBEDDINGS, EMBEDDINGS, IMAGES, POOL_FEATURES, POOL_LABELS, PREDICTOR,
                          PROBS, PROVENANCE, TEXT_FEATURES, output_name)
from methods.registry import ACQUISITIONS, ADAPTATIONS
from orchestrator.budget import BudgetLedger, PerRound
from orchestrator.contexts import LedgerView, TrialData, selection_context
from orchestrator.loop import ActiveLearningRun, AdaptRequest, _adapt

pytestmark = pytest.mark.usefixtures("one_thread")
FIELD_OF = {POOL_FEATURES: "pool_features", PROBS: "probs", TEXT_FEATURES: "text_features",
            CLASS_EMBEDDINGS: "class_embeddings", EMBEDDINGS: "embeddings", PREDICTOR: "predictor",
            IMAGES: "images", BLACKBOX: "blackbox", PROVENANCE: "labelled_sources", POOL_LABELS: "pool_labels"}


@pytest.fixture(scope="module")
def tiny_data() -> TrialData:
    """120 pool and 40 test images of synth-shapes, embedded in-process by the tiny CLIP (no Ray needed)."""
    from datasets.registry import get_card
    from methods.attribute_embeddings import AttributeEmbeddings
    from methods.core.encoders import load_encoder
    from orchestrator.preparation import card_inputs
    from methods.core.blackbox import ClipBlackBoxSpec
    from methods.segmentation_codes import SegmentationCodes
    from orchestrator.images import DatasetImages
    from orchestrator.zeroshot import class_embeddings

    card = get_card("synth-shapes")
    sizes = {"sizes": {"train": 120, "test": 40}}
    images = DatasetImages("synth-shapes", {"pool": "train", "test": "test"},
                           {"pool": np.arange(120), "test": np.arange(40)}, "tiny-clip", sizes)
    encoder = load_encoder("tiny-clip")
    feats = {s: encoder.encode_images(images.pixels(s, np.arange(images.size(s)))).numpy() for s in ("pool", "test")}
    labels = {s: np.asarray(images._source_and_transform(s)[0].labels)[: images.size(s)] for s in ("pool", "test")}
    templates = card.prompts()
    text = encoder.encode_texts([t.format(c) for t in templates for c in card.classes]).numpy()
    attributes = AttributeEmbeddings().run(card_inputs("synth-shapes", "tiny-clip"), np.random.default_rng(0))
    segmentation = SegmentationCodes(epochs=2).run(card_inputs("synth-shapes", "tiny-clip", images=images),
                                                   np.random.default_rng(0))
    blackbox = ClipBlackBoxSpec("tiny-clip", tuple(card.classes), tuple(templates))
    shared = _shared_decoder(images, segmentation, blackbox, encoder.encode_texts(["a"]).shape[1])
    return TrialData(feats["pool"], labels["pool"], feats["test"], labels["test"],
                     class_embeddings(text.reshape(len(templates), len(card.classes), -1)), "multiclass",
                     card.num_classes, "top1", class_names=list(card.classes), templates=templates,
                     attributes={c: a.model_dump() for c, a in card.attributes.items()}, images=images,
                     prepared={"attribute_embeddings": attributes, "segmentation_codes": segmentation,
                               "vipd_shared": shared},
                     blackbox=blackbox)


#: Options that fit a learner's defaults to the test pool: the card's 3 descriptions per class (BiomedCoOp takes
#: 50), and a few SPSA steps for the black-box learners.
SPSA_FAST = {"steps": 2, "batch_size": 8, "draws": 1}
SMALL_LEARNER = {"biomedcoop": {"n_prompts": 3}, "vipd": SPSA_FAST, "baps": SPSA_FAST, "vipd_multi": SPSA_FAST}


def _shared_decoder(images, segmentation, blackbox, feature_dim: int) -> dict:
    """VALIANT_Multi's shared decoder over this one pool (what the engine would train before the sweep)."""
    from methods.adaptation.blackbox.valiant_multi import PoolSource

    source = PoolSource("synth-shapes", images, segmentation, blackbox.open())
    return ADAPTATIONS.create("vipd_multi", **SPSA_FAST).train_shared([source], "tiny-clip", "fp32", feature_dim)


def _fast(name: str) -> dict:
    """Options that keep any learner's fit to seconds: one or two epochs where it has epochs."""
    fast = {"epochs": 2} if "epochs" in ADAPTATIONS.resolve_options(name, {}) else {}
    return {**fast, **SMALL_LEARNER.get(name, {})}


#: Options that fit a strategy's defaults to the 120-row test pool (dual-prompt mining takes 16 per class).
SMALL_POOL = {"dual_uncertainty": {"mine_k": 4, "bootstrap_k": 4}}


def _run(data, acq, ada, cold="none", rounds=2):
    return ActiveLearningRun((acq, SMALL_POOL.get(acq, {})), (ada, _fast(ada)), PerRound(count=6), rounds, seed=5, data=data,
                             cold_start=cold, remote=False)


def _history(run):
    return [({k: v for k, v in m.items() if not k.startswith("seconds")}, q) for _, m, q in run.rounds()]


#: The learner whose predictor gives a strategy's declared output.
OUTPUT_PARTNER = {"clean_prob": "dual_prompt", "instability": "vipd", "prompted_probs": "baps"}


def _partner(strategy) -> str:
    """The learner a strategy is tested with: the linear probe, unless it needs an output only another gives."""
    wanted = [OUTPUT_PARTNER[n] for n in map(output_name, strategy.requires) if n]
    return wanted[0] if wanted else "linear_probe"


def _partner_predictor(data, learner: str):
    """Zero-shot for the probe's partners; a dual-prompt model fitted on a quarter of the pool for its partners;
    the black-box selectors fitted without labels."""
    if learner == "linear_probe":
        return ADAPTATIONS.create("zeroshot").fit(None, _zeroshot_ctx(data), None)
    ledger = BudgetLedger()  # the selection below sees no labelled row, so the black-box selectors fit on none
    if learner == "dual_prompt":
        ledger.query(np.arange(0, 120, 4), data.pool_labels[::4])
    return _adapt(AdaptRequest((learner, _fast(learner)), 1, seed=2), data, ledger, None)[0].unpack()


@pytest.mark.parametrize("name", ACQUISITIONS.names())
def test_strategy_is_seeded_cold_starts_and_needs_what_it_declares(tiny_data, name):
    strategy = ACQUISITIONS.create(name, **SMALL_POOL.get(name, {}))
    learner = _partner(strategy)
    first = _history(_run(tiny_data, name, learner))
    np.testing.assert_equal(first, _history(_run(tiny_data, name, learner)))
    cold = _history(_run(tiny_data, name, learner, cold="method", rounds=1))
    assert len(cold[1][1]) == 6
    predictor = _partner_predictor(tiny_data, learner)
    view = LedgerView.of(BudgetLedger(), len(tiny_data.pool_labels))
    ctx = selection_context(strategy.requires, tiny_data, predictor, view, 1, None)
    base = strategy.select(ctx, 6, np.random.default_rng(0)).indices
    for token in strategy.requires:
        field = "outputs" if output_name(token) else FIELD_OF[token]
        reduced = replace(ctx, **{field: {} if field == "outputs" else None})
        try:
            picked = strategy.select(reduced, 6, np.random.default_rng(0)).indices
        except Exception:
            continue  # it needed the input
        assert not np.array_equal(picked, base), f"{name} declares {token!r} but selects the same without it"


def _zeroshot_ctx(data):
    from methods.base import AdaptContext

    return AdaptContext(data.num_classes, 0, data.text_features)


@pytest.mark.parametrize("name", ADAPTATIONS.names())
def test_learner_is_seeded_round_trips_and_refuses_bad_options(tiny_data, name):
    ledger = BudgetLedger()
    ledger.query(np.arange(0, 120, 4), tiny_data.pool_labels[::4])
    request = AdaptRequest((name, _fast(name)), 1, seed=2)
    predictor = _adapt(request, tiny_data, ledger, None)[0].unpack()
    again = _adapt(request, tiny_data, ledger, None)[0].unpack()
    restored = type(predictor).from_state(predictor.state())

    def scores(p):
        if p.on_pixels:
            return p.predict_proba_images(tiny_data.images, "test")
        return p.predict_proba(tiny_data.test_features)

    np.testing.assert_allclose(scores(predictor), scores(again), atol=1e-5)
    np.testing.assert_allclose(scores(restored), scores(predictor), atol=1e-5)
    emb = predictor.class_embeddings()
    assert emb.shape[0] == tiny_data.num_classes and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(restored.class_embeddings(), emb, atol=1e-5)
    with pytest.raises(ValueError, match=name):
        ADAPTATIONS.create(name, no_such_option=1)


@pytest.mark.parametrize("registry", [ACQUISITIONS, ADAPTATIONS], ids=["strategies", "learners"])
def test_every_option_refuses_a_value_of_the_wrong_kind(registry):
    class Nonsense:
        pass

    for name in registry.names():
        for option in registry.resolve_options(name, {}):
            with pytest.raises((ValueError, TypeError), match=name):
                registry.create(name, **{option: Nonsense()})
