"""VPT: the prompted ViT tower, the learner and its predictor (CPU, tiny-clip, synthetic data, no Ray)."""

import io

import numpy as np
import pytest
import torch

from datasets.registry import get_card, open_split
from methods.adaptation.prompting.model import frozen_clip
from methods.adaptation.prompting.vision import PromptedVisionTower
from methods.adaptation.prompting.vpt import VPT, VPTPredictor
from methods.base import AdaptContext, TrainSet
from methods.registry import ADAPTATIONS
from orchestrator.images import DatasetImages
from orchestrator.zeroshot import class_embeddings

DATASET = "synth-scans"
N_POOL, N_TEST = 5000, 1000


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    card = get_card(DATASET)
    enc = frozen_clip("tiny-clip", "fp32", "cpu")
    templates = card.prompts()
    emb = enc.encode_texts([t.format(c) for t in templates for c in card.classes]).numpy()
    text = class_embeddings(emb.reshape(len(templates), len(card.classes), -1))
    images = DatasetImages(DATASET, {"pool": "train", "test": "test"},
                           {"pool": np.arange(N_POOL), "test": np.arange(N_TEST)}, "tiny-clip")
    pool_labels = open_split(DATASET, "train").labels[:N_POOL]
    test_labels = open_split(DATASET, "test").labels[:N_TEST]
    return {"enc": enc, "text": text, "images": images, "pool_labels": pool_labels, "test_labels": test_labels,
            "classes": card.classes}


def _ctx(setup, **kw):
    return AdaptContext(len(setup["classes"]), 1, setup["text"], device="cpu", encoder="tiny-clip",
                        images=setup["images"], **kw)


def _train(setup, per_class: int, seed: int = 0) -> TrainSet:
    rng = np.random.default_rng(seed)
    labels = setup["pool_labels"]
    rows = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                           for c in range(len(setup["classes"]))])
    return TrainSet(np.zeros((len(rows), 1), np.float32), labels[rows], np.zeros(len(rows), bool), rows=rows)


def _fit(setup, train, seed=1, **options):
    torch.manual_seed(seed)  # as the loop does before every fit
    return VPT(**options).fit(train, _ctx(setup), np.random.default_rng(seed))


# ------------------------------------------------------------------ the tower


def test_tower_without_prompts_is_the_visual_tower_exactly(setup):
    visual = setup["enc"].model.visual
    pixels = setup["images"].pixels("test", np.arange(48))
    tower = PromptedVisionTower(visual)
    with torch.no_grad():
        assert torch.equal(tower(pixels), visual(pixels))
        assert torch.equal(tower(pixels, None, [None] * tower.num_layers), visual(pixels))
    assert (tower.width, tower.num_layers, tower.output_dim) == (128, 4, 128)
    assert list(tower.parameters()) == [] and len(tower.state_dict()) == 0  # owns nothing of the encoder


def test_shallow_and_deep_prompts_change_the_output_and_reach_every_layer(setup):
    tower = PromptedVisionTower(setup["enc"].model.visual)
    pixels = setup["images"].pixels("test", np.arange(16))
    g = torch.Generator().manual_seed(0)
    p = torch.randn(4, 8, tower.width, generator=g)
    with torch.no_grad():
        plain = tower(pixels)
        shallow = tower(pixels, p[0])
        deep = tower(pixels, p[0], [None, p[1], p[2], p[3]])
        deep_same = tower(pixels, None, [p[0], p[1], p[2], p[3]])  # deep[0] is the shallow slot
        last_only = tower(pixels, p[0], [None, None, None, p[3]])
    assert shallow.shape == plain.shape == (16, tower.output_dim)
    assert not torch.allclose(shallow, plain, atol=1e-4)
    assert not torch.allclose(deep, shallow, atol=1e-4)
    assert not torch.allclose(last_only, shallow, atol=1e-4)  # the last block's replacement matters too
    assert torch.equal(deep, deep_same)


def test_gradient_checkpointing_gives_the_same_features_and_gradients(setup):
    visual = setup["enc"].model.visual
    pixels = setup["images"].pixels("test", np.arange(8))
    p = torch.randn(4, 3, 128, generator=torch.Generator().manual_seed(1))
    out = []
    for ckpt in (False, True):
        q = p.clone().requires_grad_(True)
        f = PromptedVisionTower(visual, grad_checkpointing=ckpt)(pixels, q[0], [None, q[1], q[2], q[3]])
        f.square().sum().backward()
        out.append((f.detach(), q.grad))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-5) and torch.allclose(out[0][1], out[1][1], atol=1e-5)


@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_pooling_never_sees_the_prompt_tokens(pool_type):
    """With no blocks the prompts cannot influence other tokens, so stripping them must restore the output."""
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=16, patch_size=8, width=32, layers=0, heads=2, mlp_ratio=2.0,
                            output_dim=16, pool_type=pool_type).eval()
    tower = PromptedVisionTower(vit)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(tower(x), vit(x))
        assert torch.allclose(tower(x, torch.randn(5, 32) * 10), vit(x), atol=1e-6)


def test_prompt_shape_errors_are_explained(setup):
    tower = PromptedVisionTower(setup["enc"].model.visual)
    pixels = setup["images"].pixels("test", np.arange(2))
    with pytest.raises(ValueError, match="width=128"):
        tower(pixels, torch.zeros(4, 64))
    with pytest.raises(ValueError, match="5 entries for a tower of 4 blocks"):
        tower(pixels, None, [None] * 5)
    with pytest.raises(ValueError, match="carries 4"):
        tower(pixels, torch.zeros(4, 128), [None, torch.zeros(3, 128)])
    with pytest.raises(ValueError, match="not both"):
        tower(pixels, torch.zeros(4, 128), [torch.zeros(4, 128)])


def test_a_non_vit_image_tower_is_refused_with_a_clear_message():
    import open_clip

    model = open_clip.create_model("RN50")  # random init: nothing is downloaded
    with pytest.raises(ValueError, match="VPT, MaPLe.*need an open_clip ViT image tower") as err:
        PromptedVisionTower(model.visual)
    assert "ModifiedResNet" in str(err.value) and "ViT" in str(err.value)


# ------------------------------------------------------------------ the learner


def test_options_are_validated():
    with pytest.raises(ValueError, match=r"variant must be one of \['shallow', 'deep'\].*got 'wide'"):
        VPT(variant="wide")
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="tokens must be an integer >= 1"):
            VPT(tokens=bad)
    with pytest.raises(ValueError, match=r"init must be one of \['token-mean', 'xavier', 'normal'\].*got 'orthogonal'"):
        VPT(init="orthogonal")
    with pytest.raises(ValueError, match="unknown recipe 'slow'"):
        VPT(recipe="slow")
    with pytest.raises(ValueError, match="invalid recipe setting"):
        VPT(epochs=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        VPT(temperature=0.0)
    assert ADAPTATIONS.get("vpt") is VPT and VPT.num_gpus == 1.0
    assert VPT(epochs=3, lr=0.5).recipe.epochs == 3 and VPT(epochs=3, lr=0.5).recipe.lr == 0.5


def test_fit_leaves_the_encoder_bit_identical_and_trains_only_the_prompts(setup, trained_parameters):
    model = setup["enc"].model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seen = trained_parameters
    _fit(setup, _train(setup, 2), variant="deep", epochs=2, lr=1.0, augment=True)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert len(seen) == 1 and tuple(seen[0].shape) == (4, 8, 128)  # one (layers, tokens, width) prompt tensor
    assert not any(seen[0] is p for p in model.parameters())


def test_same_seed_same_prompts(setup):
    train = _train(setup, 2)
    a = _fit(setup, train, seed=3, epochs=2, lr=1.0, augment=True)
    b = _fit(setup, train, seed=3, epochs=2, lr=1.0, augment=True)
    c = _fit(setup, train, seed=4, epochs=2, lr=1.0, augment=True)
    assert np.array_equal(a.prompts, b.prompts)
    assert not np.array_equal(a.prompts, c.prompts)


def test_round_zero_is_zero_shot(setup):
    empty = TrainSet(np.zeros((0, 1), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), rows=np.zeros(0, np.int64))
    pred = VPT().fit(empty, _ctx(setup), np.random.default_rng(0))
    rows = np.arange(64)
    probs = pred.predict_proba_images(setup["images"], "test", rows)
    feats = setup["enc"].encode_images(setup["images"].pixels("test", rows)).numpy()
    assert pred.prompts.shape[0] == 0
    assert np.array_equal(probs.argmax(1), (feats @ setup["text"].T).argmax(1))
    assert np.allclose(pred.embed_images(setup["images"], "test", rows), feats, atol=1e-5)


def test_predictor_state_round_trips_through_npz_without_pickle(setup):
    pred = _fit(setup, _train(setup, 1), variant="deep", epochs=1, lr=1.0)
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in pred.state().values())
    buf = io.BytesIO()
    np.savez(buf, **pred.state())
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as z:
        again = VPTPredictor.from_state({k: z[k] for k in z.files})
    assert again.device is None  # a restored predictor runs wherever it lands (CUDA when present) ...
    again.device = pred.device  # ... so pin it to the fit's device to compare bit for bit
    rows = np.arange(100)
    assert np.array_equal(pred.predict_proba_images(setup["images"], "test", rows),
                          again.predict_proba_images(setup["images"], "test", rows))
    assert (again.variant, again.encoder, again.precision, again.scale) == ("deep", "tiny-clip", "fp32", pred.scale)


def test_reinit_false_continues_from_the_previous_round(setup):
    train = _train(setup, 1)
    first = _fit(setup, train, epochs=1, lr=1.0)
    torch.manual_seed(0)
    cont = VPT(epochs=1, lr=1e-12, reinit=False).fit(train, _ctx(setup, previous=first), np.random.default_rng(9))
    fresh = VPT(epochs=1, lr=1e-12).fit(train, _ctx(setup, previous=first), np.random.default_rng(9))
    assert np.allclose(cont.prompts, first.prompts, atol=1e-6)
    assert not np.allclose(fresh.prompts, first.prompts, atol=1e-3)


# ------------------------------------------------------------------ quality


# Measured on this split (16 labels/class from rng 0, first 1,000 test images; zero-shot 0.250):
# VPT-deep with these settings 0.296 / 0.278 / 0.300 over fit seeds 1 / 2 / 3 (60 epochs: 0.293 / 0.308 / 0.318).
# VPT-shallow stays within about -1..+3 points of zero-shot for every lr / batch / weight decay / epoch
# budget tried under ~20 s (see vpt.py's docstring), so the asserted margin is the deep variant's, and 3 points.
QUALITY = dict(variant="deep", tokens=8, init="token-mean", epochs=50, lr=5.0, batch_size=32, augment=True)


def test_vpt_deep_beats_zero_shot_on_the_shifted_set(setup):
    images, labels = setup["images"], setup["test_labels"]
    empty = TrainSet(np.zeros((0, 1), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), rows=np.zeros(0, np.int64))
    zero_shot = (VPT().fit(empty, _ctx(setup), np.random.default_rng(0))
                 .predict_proba_images(images, "test").argmax(1) == labels).mean()
    tuned = (_fit(setup, _train(setup, 16), seed=1, **QUALITY)
             .predict_proba_images(images, "test").argmax(1) == labels).mean()
    print(f"synth-scans top-1: zero-shot {zero_shot:.3f}, vpt-deep {tuned:.3f}")
    assert 0.2 <= zero_shot <= 0.3
    assert tuned >= zero_shot + 0.03


def test_vpt_with_a_learned_head_beats_zero_shot_by_five_points(setup):
    """VPT as published trains a linear head next to the prompts (here initialised from the text classifier)."""
    images, labels = setup["images"], setup["test_labels"]
    empty = TrainSet(np.zeros((0, 1), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), rows=np.zeros(0, np.int64))
    zero_shot = (VPT().fit(empty, _ctx(setup), np.random.default_rng(0))
                 .predict_proba_images(images, "test").argmax(1) == labels).mean()
    tuned = (_fit(setup, _train(setup, 16), seed=1, recipe="vpt", variant="deep", epochs=30, head="learned")
             .predict_proba_images(images, "test").argmax(1) == labels).mean()
    print(f"synth-scans top-1: zero-shot {zero_shot:.3f}, vpt-deep + learned head {tuned:.3f}")
    assert tuned >= zero_shot + 0.05
