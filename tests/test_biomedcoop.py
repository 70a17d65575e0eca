"""BiomedCoOp: its loss against the public code's computation written out, KDSP's prompt selection, the
regularisers' effect and their absence (= CoOp), and the errors (tiny CLIP, synthetic scans' attributes)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods.adaptation.prompting.biomedcoop import biomedcoop_loss, kept_prompts, prompt_ensemble
from methods.base import AdaptContext, TrainSet
from methods.registry import ADAPTATIONS

pytestmark = pytest.mark.usefixtures("one_thread")
DATASET = "synth-scans"
FAST = {"epochs": 3, "batch_size": 8, "lr": 0.01}


@pytest.fixture(scope="module")
def scans():
    from datasets.registry import get_card
    from methods.adaptation.prompting.model import frozen_clip
    from orchestrator.zeroshot import class_embeddings

    card = get_card(DATASET)
    clip = frozen_clip("tiny-clip")
    per_template = np.stack([clip.encode_texts([t.format(c) for c in card.classes]).numpy() for t in card.prompts()])
    descriptions = {c: list(card.attributes[c].positive) for c in card.classes}  # what TrialData falls back to
    text = class_embeddings(per_template)
    ctx = AdaptContext(card.num_classes, 1, text, device="cpu", class_names=list(card.classes),
                       templates=card.prompts(), descriptions=descriptions, encoder="tiny-clip")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(card.num_classes), 4)
    feats = text[labels] + 0.5 * rng.normal(size=(len(labels), text.shape[1]))
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    train = TrainSet(feats, labels, np.zeros(len(labels), bool), np.arange(len(labels)))
    return {"ctx": ctx, "train": train, "clip": clip}


def _public_code_loss(logits, labels, class_features, x, ensemble, scale, tau, sccm, kdsp):
    """The authors' trainer step, written out: median/MAD z-scores, then standardised again, then the mask."""
    scores = torch.stack([(scale * x @ ensemble[:, i].T).max(1).values.mean() for i in range(ensemble.shape[1])])
    s_bar = scores.median()
    z = (scores - s_bar) / (scores - s_bar).abs().median()
    mask = ((z - z.mean()) / z.std()).abs() <= tau
    selected = F.normalize(ensemble[:, mask].mean(1), dim=-1)
    zs_logits = scale * x @ selected.T
    mean = F.normalize(ensemble.mean(1), dim=-1)
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(zs_logits, 1), reduction="sum", log_target=True)
    return F.cross_entropy(logits, labels) + sccm * F.mse_loss(class_features, mean) + kdsp * kl / logits.numel()


def test_the_loss_equals_the_public_codes_computation_and_the_mad_step_cancels():
    g = torch.Generator().manual_seed(0)
    c, p, d, b = 5, 9, 16, 7
    ensemble = F.normalize(torch.randn(c, p, d, generator=g), dim=-1)
    ensemble[:, 3] = F.normalize(ensemble[:, 3] + 3 * torch.randn(d, generator=g), dim=-1)  # one odd member
    x = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    classes = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    labels = torch.randint(0, c, (b,), generator=g)
    logits = 20.0 * x @ classes.T
    for tau in (0.5, 1.0, 1.5):
        ours = biomedcoop_loss(logits, labels, classes, x, ensemble, 20.0, tau, 0.75, 2.0)
        theirs = _public_code_loss(logits, labels, classes, x, ensemble, 20.0, tau, 0.75, 2.0)
        assert torch.allclose(ours, theirs, atol=1e-5), tau


def test_kdsp_drops_the_outlying_prompt_and_keeps_all_when_scores_agree():
    scores = torch.tensor([1.0, 1.1, 0.9, 1.05, 0.95, 5.0])
    assert kept_prompts(scores, 1.5).tolist() == [True] * 5 + [False]
    assert kept_prompts(torch.full((4,), 2.0), 1.5).all()  # no spread: nothing is an outlier
    assert kept_prompts(torch.tensor([3.0]), 1.5).all()


def test_without_its_regularisers_biomedcoop_is_coop(scans):
    bare = ADAPTATIONS.create("biomedcoop", n_prompts=4, sccm_lambda=0, kdsp_lambda=0, **FAST)
    bare = bare.fit(scans["train"], scans["ctx"], np.random.default_rng(3))
    coop = ADAPTATIONS.create("coop", n_ctx=4, **FAST).fit(scans["train"], scans["ctx"], np.random.default_rng(3))
    np.testing.assert_allclose(bare.weight, coop.weight, atol=1e-6)


def test_sccm_pulls_the_class_features_towards_the_ensemble_mean(scans):
    ensemble = prompt_ensemble(scans["ctx"], scans["clip"], 3)
    mean = ensemble.mean(1) / np.linalg.norm(ensemble.mean(1), axis=1, keepdims=True)

    def distance(**options):
        model = ADAPTATIONS.create("biomedcoop", n_prompts=3, kdsp_lambda=0, **FAST, **options)
        weight = model.fit(scans["train"], scans["ctx"], np.random.default_rng(0)).weight
        return float(((weight - mean) ** 2).mean())

    assert distance(sccm_lambda=500.0) < distance(sccm_lambda=0.0)


def test_round_zero_is_zero_shot_and_the_context_has_four_tokens(scans):
    empty = TrainSet(np.zeros((0, scans["train"].features.shape[1]), np.float32), np.zeros(0, np.int64),
                     np.zeros(0, bool), np.zeros(0, np.int64))
    predictor = ADAPTATIONS.create("biomedcoop", n_prompts=3).fit(empty, scans["ctx"], np.random.default_rng(0))
    np.testing.assert_allclose(predictor.weight, scans["ctx"].text_features, atol=1e-6)
    assert predictor.contexts["unified"].shape[0] == 4  # "a photo of a"


def test_a_class_with_fewer_sentences_than_n_prompts_is_refused_with_its_count(scans):
    fewest = min(len(s) for s in scans["ctx"].descriptions.values())
    with pytest.raises(ValueError, match=rf"n_prompts=50 description sentences.*lower n_prompts to {fewest}"):
        ADAPTATIONS.create("biomedcoop", **FAST).fit(scans["train"], scans["ctx"], np.random.default_rng(0))
    with pytest.raises(ValueError, match="tau"):
        ADAPTATIONS.create("biomedcoop", tau=0)
