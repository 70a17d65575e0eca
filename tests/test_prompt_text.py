"""Text-prompt learners (CoOp, CoOp-CSC, dual, descriptions, CoCoOp) on the shipped tiny CLIP."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.registry import get_card, open_split
from methods.adaptation.prompting.model import frozen_clip
from methods.adaptation.prompting.text import PromptedTextEncoder, PromptLayoutError, build_layout
from methods.base import AdaptContext, TrainSet
from methods.registry import ADAPTATIONS
from orchestrator.images import DatasetImages
from orchestrator.zeroshot import class_embeddings

ROOT = Path(__file__).resolve().parents[1]
DATASET = "synth-scans"  # the shifted set: tiny CLIP zero-shot is ~25 %


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip():
    return frozen_clip("tiny-clip")


@pytest.fixture(scope="module")
def scans(clip):
    """16 labelled images per class from train, the first 1,000 test images, and the zero-shot classifier."""
    card = get_card(DATASET)
    images = DatasetImages(DATASET, {"pool": "train", "test": "test"},
                           {"pool": np.arange(5000), "test": np.arange(1000)}, "tiny-clip")
    labels = open_split(DATASET, "train").labels
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.choice(np.flatnonzero(labels == c), 16, replace=False) for c in range(card.num_classes)])
    x_train = clip.encode_images(images.pixels("pool", rows)).numpy()
    x_test = clip.encode_images(images.pixels("test", np.arange(1000))).numpy()
    y_test = open_split(DATASET, "test").labels[:1000]
    per_template = np.stack([clip.encode_texts([t.format(c) for c in card.classes]).numpy() for t in card.prompts()])
    ctx = AdaptContext(card.num_classes, 1, class_embeddings(per_template), class_names=list(card.classes),
                       templates=card.prompts(), images=images,
                       descriptions={c: list(a.positive) for c, a in card.attributes.items()})
    train = TrainSet(x_train, labels[rows], np.zeros(len(rows), bool), rows)
    return {"ctx": ctx, "train": train, "x_test": x_test, "y_test": y_test, "images": images}


def accuracy(predictor, data) -> float:
    return float((predictor.predict_proba(data["x_test"]).argmax(1) == data["y_test"]).mean())


def fit(name, data, seed=1, **options):
    return ADAPTATIONS.create(name, **options).fit(data["train"], data["ctx"], np.random.default_rng(seed))


# ------------------------------------------------------------------ prompt layout and the text tower


def test_word_initialised_context_reproduces_encode_text(clip):
    names = ["stellate mass", "ring-enhancing lesion", "x-ray opacity"]
    layout = build_layout(clip.tokenizer, names, n_ctx=4)
    text = PromptedTextEncoder(clip.model, layout, "cpu")
    ours = text.class_features(text.word_context(clip.tokenizer, "a photo of a"))
    reference = clip.encode_texts([f"a photo of a {n}." for n in names])
    assert torch.allclose(ours, reference, atol=1e-5)
    assert text.length < clip.tokenizer.context_length  # cut after the longest EOT (exact under the causal mask)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_context_slots_sit_where_the_position_says(clip, position):
    layout = build_layout(clip.tokenizer, ["cat"], n_ctx=4, position=position)
    slots = layout.ctx_positions[0].tolist()
    name_at = {"end": 5, "middle": 3, "front": 1}[position]
    assert layout.ids[0, name_at] == clip.tokenizer.encode("cat")[0]
    assert name_at not in slots and len(slots) == 4 and layout.ids[0, 0] == clip.tokenizer.sot_token_id


def test_chunked_checkpointed_encoding_equals_one_pass(clip):
    names = [f"class {i}" for i in range(7)]
    layout = build_layout(clip.tokenizer, names, n_ctx=3)
    ctx = torch.randn(len(names), 3, 64, generator=torch.Generator().manual_seed(0))
    grads = []
    for chunk in (256, 2):
        param = torch.nn.Parameter(ctx.clone())
        out = PromptedTextEncoder(clip.model, layout, "cpu", chunk=chunk, checkpoint=True).class_features(param)
        out.square().sum().backward()
        grads.append((out.detach(), param.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def test_bad_prompt_settings_fail_clearly(clip, scans):
    with pytest.raises(PromptLayoutError, match="use at most"):
        build_layout(clip.tokenizer, ["cat"], n_ctx=40)  # the tiny CLIP's text tower holds 32 tokens
    with pytest.raises(PromptLayoutError, match="no descriptions"):
        build_layout(clip.tokenizer, ["cat"], n_ctx=4, descriptions={"dog": ["barks"]})
    with pytest.raises(ValueError, match="exactly one"):
        ADAPTATIONS.create("coop", ctx_init="a {} photo of a {}")
    with pytest.raises(ValueError, match="class_position"):
        ADAPTATIONS.create("coop", class_position="side")
    with pytest.raises(ValueError, match="unknown recipe"):
        ADAPTATIONS.create("coop", recipe="coop_fast")
    with pytest.raises(ValueError, match="compile.*'default'.*'reduce-overhead'"):
        ADAPTATIONS.create("coop", compile="fastest")
    ctx = scans["ctx"]
    short = AdaptContext(ctx.num_classes, 1, ctx.text_features, class_names=ctx.class_names[:-1])
    with pytest.raises(ValueError, match="class names are missing"):
        ADAPTATIONS.create("coop", epochs=1).fit(scans["train"], short, np.random.default_rng(0))
    with pytest.raises(PromptLayoutError, match="use at most"):
        ADAPTATIONS.create("coop", ctx_init=None, n_ctx=40, epochs=1).fit(scans["train"], ctx, np.random.default_rng(0))


# ------------------------------------------------------------------ learners


def test_feature_path_logits_equal_the_image_path(scans, clip, ray_cluster, session_cache):
    """CoOp trains and predicts on cached features; running the frozen encoder on the pixels gives the same logits."""
    from orchestrator.features import embed_split

    predictor = fit("coop", scans, epochs=3)
    cached = embed_split(DATASET, "test", "tiny-clip", session_cache)
    rows = np.arange(200)
    from_cache = np.log(predictor.predict_proba(np.asarray(cached.features)[rows]))
    pixels = scans["images"].pixels("test", np.asarray(cached.indices)[rows])
    from_images = np.log(predictor.predict_proba(clip.encode_images(pixels).numpy()))
    scale = 1.0 / predictor.temperature
    assert np.abs(from_cache - from_images).max() < 1e-4 * scale


def test_coop_beats_zero_shot_by_ten_points_on_the_shifted_set(scans):
    zero_shot = float(((scans["x_test"] @ scans["ctx"].text_features.T).argmax(1) == scans["y_test"]).mean())
    coop = accuracy(fit("coop", scans), scans)
    assert coop >= zero_shot + 0.10, (coop, zero_shot)


def test_coop_is_deterministic_and_leaves_clip_untouched(scans, clip):
    before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    a = fit("coop", scans, seed=3, ctx_init=None, n_ctx=4, epochs=5)
    b = fit("coop", scans, seed=3, ctx_init=None, n_ctx=4, epochs=5)
    c = fit("coop", scans, seed=4, ctx_init=None, n_ctx=4, epochs=5)
    assert np.array_equal(a.weight, b.weight) and not np.array_equal(a.weight, c.weight)
    assert all(torch.equal(before[k], v) for k, v in clip.model.state_dict().items())
    assert all(p.grad is None for p in clip.model.parameters())


def test_compile_without_a_compiler_names_the_option(tmp_path):
    """No C++ compiler (as on a bare CPU image): the first call fails naming ``compile``, not deep in inductor."""
    probe = ("import torch\n"
             "from methods.adaptation.prompting.model import frozen_clip\n"
             "from methods.adaptation.prompting.text import PromptedTextEncoder, build_layout\n"
             "clip = frozen_clip('tiny-clip')\n"
             "text = PromptedTextEncoder(clip.model, build_layout(clip.tokenizer, ['cat', 'dog'], n_ctx=4), 'cpu',\n"
             "                           compile_mode='default')\n"
             "text.class_features(torch.zeros(4, text.width, requires_grad=True))\n")
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: compile: 'default'") and "set compile: null" in last, done.stderr[-2000:]


@pytest.mark.parametrize("name,options", [("coop_csc", {}), ("coop_dual", {}), ("coop", {"descriptions": "ensemble"}),
                                          ("coop", {"class_position": "middle", "ctx_init": None, "n_ctx": 4})])
def test_coop_variants_learn(scans, name, options):
    zero_shot = float(((scans["x_test"] @ scans["ctx"].text_features.T).argmax(1) == scans["y_test"]).mean())
    assert accuracy(fit(name, scans, epochs=80, lr=0.01, **options), scans) > zero_shot + 0.03


def test_round_zero_is_zero_shot_and_warm_start_continues(scans):
    empty = TrainSet(np.zeros((0, 128), np.float32), np.zeros(0, int), np.zeros(0, bool), np.zeros(0, int))
    zero = ADAPTATIONS.create("coop").fit(empty, scans["ctx"], np.random.default_rng(0))
    assert np.array_equal(zero.weight, scans["ctx"].text_features)
    first = fit("coop", scans, epochs=5)
    ctx = scans["ctx"]
    warm_ctx = AdaptContext(ctx.num_classes, 2, ctx.text_features, class_names=ctx.class_names, previous=first)
    again = ADAPTATIONS.create("coop", epochs=1, lr=1e-9, reinit=False).fit(scans["train"], warm_ctx,
                                                                           np.random.default_rng(0))
    assert np.allclose(again.contexts["unified"], first.contexts["unified"], atol=1e-6)


def test_cocoop_trains_predicts_and_round_trips(scans):
    predictor = fit("cocoop", scans, epochs=2)
    probs = predictor.predict_proba(scans["x_test"][:50])
    assert probs.shape == (50, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    again = type(predictor).from_state(predictor.state())
    assert np.allclose(again.predict_proba(scans["x_test"][:50]), probs, atol=1e-6)
