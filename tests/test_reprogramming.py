"""Visual reprogramming (VP, AR, AttrVR, BioMedVR and its zero-shot variant): logits against direct computations
for a fixed perturbation, the hinge loss and the gate, parameter counts, the frozen encoder, the few-shot
sampler, the attribute files and the errors (tiny CLIP, synthetic scans, no Ray except the sweep test)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets.attributes import card_attributes
from datasets.card import DatasetCard, SourceSpec
from methods.adaptation.prompting.model import frozen_clip
from methods.adaptation.reprogramming.frames import Frame, ReprogrammingError, normalisation
from methods.adaptation.reprogramming.predictors import AttributeFusionPredictor, ReprogrammedPredictor
from methods.adaptation.reprogramming.scoring import confusion_suppression, sentence_index
from methods.base import AdaptContext, SelectionContext, TrainSet
from methods.registry import ACQUISITIONS, ADAPTATIONS
from methods.validation import AcquisitionInputError

pytestmark = pytest.mark.usefixtures("one_thread")
DATASET = "synth-scans"


@pytest.fixture(scope="module")
def scans():
    from datasets.registry import get_card
    from methods.attribute_embeddings import AttributeEmbeddings
    from orchestrator.images import DatasetImages
    from orchestrator.preparation import card_inputs
    from orchestrator.zeroshot import class_embeddings

    card = get_card(DATASET)
    clip = frozen_clip("tiny-clip")
    images = DatasetImages(DATASET, {"pool": "train", "test": "test"}, {"pool": np.arange(300), "test": np.arange(60)},
                           "tiny-clip", {"sizes": {"train": 300, "test": 60}})
    labels = np.asarray(images._source_and_transform("pool")[0].labels)[:300]
    per_template = np.stack([clip.encode_texts([t.format(c) for c in card.classes]).numpy() for t in card.prompts()])
    prepared = AttributeEmbeddings().run(card_inputs(DATASET, "tiny-clip"), np.random.default_rng(0))
    ctx = AdaptContext(card.num_classes, 1, class_embeddings(per_template), device="cpu", class_names=list(card.classes),
                       templates=card.prompts(), images=images, prepared={"attribute_embeddings": prepared})
    rows = np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(card.num_classes)])
    train = TrainSet(np.zeros((len(rows), 1), np.float32), labels[rows], np.zeros(len(rows), bool), rows)
    return {"clip": clip, "ctx": ctx, "train": train, "images": images, "prepared": prepared}


def _direct_embedding(clip, x, delta, frame):
    """Eq. 3 / VP / eq. 8 written out for one perturbation, then the frozen tower."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalisation(clip))
    if frame.kind == "full":
        inputs = x + delta
    elif frame.kind == "pad":
        keep = torch.zeros(1, 1, frame.size, frame.size)
        keep[..., frame.border: frame.size - frame.border, frame.border: frame.size - frame.border] = 1
        inputs = x + delta * (1 - keep)
    else:
        small = F.interpolate(x * std + mean, size=(frame.inner, frame.inner), mode="bilinear", align_corners=False)
        canvas = torch.sigmoid(delta).expand(len(x), -1, -1, -1).clone()
        b = frame.border
        canvas[..., b: b + frame.inner, b: b + frame.inner] = small
        inputs = (canvas - mean) / std
    with torch.no_grad():
        return F.normalize(clip.model.encode_image(inputs).float(), dim=-1)


def _topk(sims, owners, c, k):
    return torch.stack([sims[:, owners == j].topk(k, dim=1).values.mean(1) for j in range(c)], dim=1)


@pytest.mark.parametrize("name,frame", [("vp", "pad"), ("ar", "resize_pad"), ("attrvr", "resize_pad"),
                                        ("biomedvr", "resize_pad"), ("biomedvr", "full")])
def test_logits_for_a_fixed_perturbation_equal_a_direct_computation(scans, name, frame):
    learner = ADAPTATIONS.create(name, frame=frame, epochs=1)
    predictor = learner.fit(TrainSet(np.zeros((0, 1)), np.zeros(0, np.int64), np.zeros(0, bool)), scans["ctx"],
                            np.random.default_rng(0))
    predictor.deltas = np.random.default_rng(1).normal(0, 0.3, predictor.deltas.shape).astype(np.float32)
    predictor.gate = np.array([0.3, -0.2], np.float32)
    clip, f, rows = scans["clip"], Frame(*predictor.frame), np.arange(6)
    x = scans["images"].pixels("test", rows)
    z = [_direct_embedding(clip, x, torch.as_tensor(d), f) for d in predictor.deltas]
    a, c, tau, k = predictor.arrays, scans["ctx"].num_classes, predictor.scale, 3
    prep = scans["prepared"]
    if name in ("vp", "ar"):
        logits = tau * z[0] @ torch.as_tensor(a["text"]).T
    elif name == "attrvr":
        desc = _topk(z[0] @ torch.as_tensor(prep["positive"]).T, torch.as_tensor(prep["positive_class"]), c, k)
        disc = _topk(z[0] @ torch.as_tensor(prep["discriminative"]).T, torch.as_tensor(prep["discriminative_class"]),
                     c, k)
        logits = tau * (0.5 * desc + 0.5 * disc)
    else:
        pos = torch.as_tensor(np.concatenate([prep["positive"], prep["discriminative"]]))
        pos_owner = torch.as_tensor(np.concatenate([prep["positive_class"], prep["discriminative_class"]]))
        s_pos = tau * _topk(z[0] @ pos.T, pos_owner, c, k)
        s_neg = tau * _topk(z[1] @ torch.as_tensor(prep["confusion"]).T, torch.as_tensor(prep["confusion_class"]), c, k)
        g = torch.softmax(torch.tensor([0.3, -0.2]), dim=0)
        logits = g[0] * s_pos + g[1] * s_neg
    np.testing.assert_allclose(predictor.predict_proba_images(scans["images"], "test", rows),
                               torch.softmax(logits, dim=1).numpy(), atol=2e-5)
    restored = ReprogrammedPredictor.from_state(predictor.state())
    np.testing.assert_allclose(restored.predict_proba_images(scans["images"], "test", rows),
                               predictor.predict_proba_images(scans["images"], "test", rows), atol=1e-6)


def test_confusion_suppression_is_the_hinge_on_the_strongest_other_negative():
    s_pos = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    s_neg = torch.tensor([[5.0, 1.9, 0.2], [3.0, 9.0, 0.4]])
    labels = torch.tensor([0, 1])
    # row 0: max over c != 0 of s- is 1.9 -> 1.9 - 2 + 0.5 = 0.4; row 1: 3.0 - 1 + 0.5 = 2.5
    assert float(confusion_suppression(s_pos, s_neg, labels, 0.5)) == pytest.approx((0.4 + 2.5) / 2)
    assert float(confusion_suppression(s_pos, s_neg - 10, labels, 0.5)) == 0.0  # no confusion, no loss


def test_parameter_counts_at_224_px_match_table_2():
    assert ADAPTATIONS.create("ar").parameter_count(224) == 150_528  # 0.15 M
    assert ADAPTATIONS.create("attrvr").parameter_count(224) == 150_528
    assert ADAPTATIONS.create("biomedvr").parameter_count(224) == 301_058  # 0.30 M: two experts and the gate
    assert ADAPTATIONS.create("biomedvr", experts=1).parameter_count(224) == 150_530
    frame = Frame.build("resize_pad", 224)
    assert (frame.inner, frame.border) == (192, 16) and Frame.build("pad", 224).border == 30


def test_training_moves_only_the_perturbations_and_the_gate(scans):
    clip = scans["clip"]
    before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    learner = ADAPTATIONS.create("biomedvr", epochs=3, lr=1.0)
    predictor = learner.fit(scans["train"], scans["ctx"], np.random.default_rng(0))
    after = clip.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert np.abs(predictor.deltas).max() > 0 and not np.allclose(predictor.gate, 1.0)
    assert predictor.deltas.shape == (2, 3, 32, 32) and learner.losses[-1] < learner.losses[0]


def test_the_zero_shot_variant_never_trains_and_fuses_both_scores(scans):
    ctx, prep = scans["ctx"], scans["prepared"]
    learner = ADAPTATIONS.create("biomedvr_zs")
    untrained = learner.fit(TrainSet(np.zeros((0, 1)), np.zeros(0, np.int64), np.zeros(0, bool)), ctx, None)
    trained = learner.fit(scans["train"], ctx, np.random.default_rng(0))
    features = scans["clip"].encode_images(scans["images"].pixels("test", np.arange(10))).numpy()
    np.testing.assert_array_equal(untrained.predict_proba(features), trained.predict_proba(features))
    z = torch.as_tensor(features)
    c, tau = ctx.num_classes, untrained.scale
    pos = torch.as_tensor(np.concatenate([prep["positive"], prep["discriminative"]]))
    owner = torch.as_tensor(np.concatenate([prep["positive_class"], prep["discriminative_class"]]))
    s_pos = tau * _topk(z @ pos.T, owner, c, 3)
    s_neg = tau * _topk(z @ torch.as_tensor(prep["confusion"]).T, torch.as_tensor(prep["confusion_class"]), c, 3)
    np.testing.assert_allclose(untrained.predict_proba(features), torch.softmax(0.5 * s_pos - 0.5 * s_neg, 1).numpy(),
                               atol=1e-5)
    added = AttributeFusionPredictor.from_state({**untrained.state(), "fusion": np.asarray("add")})
    np.testing.assert_allclose(added.predict_proba(features), torch.softmax(0.5 * s_pos + 0.5 * s_neg, 1).numpy(),
                               atol=1e-5)


# ------------------------------------------------------------------ the few-shot sampler


def test_few_shot_draws_k_random_rows_per_class_with_the_seed():
    labels = np.repeat(np.arange(4), 10)
    ctx = SelectionContext(1, 4, np.arange(40), np.zeros(0, np.int64), np.zeros(0, np.int64), pool_labels=labels)
    sampler = ACQUISITIONS.create("few_shot")
    picked = sampler.select(ctx, 12, np.random.default_rng(0)).indices
    assert np.bincount(labels[picked], minlength=4).tolist() == [3, 3, 3, 3]
    assert np.array_equal(picked, sampler.select(ctx, 12, np.random.default_rng(0)).indices)
    assert len(sampler.select(ctx, 13, np.random.default_rng(0)).indices) == 13
    with pytest.raises(AcquisitionInputError, match="11 shots of class 0 asked, but the pool holds 10"):
        sampler.select(ctx, 44, np.random.default_rng(0))


# ------------------------------------------------------------------ bad input


def test_a_class_without_enough_sentences_for_top_k_is_refused(scans):
    with pytest.raises(ValueError, match="top-9 attribute scoring needs at least 9 positive\\+discriminative sentences per class"):
        ADAPTATIONS.create("biomedvr", k=9, epochs=1).fit(scans["train"], scans["ctx"], np.random.default_rng(0))
    with pytest.raises(ValueError, match="classes \\['b'\\] have \\[1\\]"):
        sentence_index(np.array([0, 0, 1]), 2, 2, "positive", ["a", "b"])


def _card(tmp_path, files):
    return DatasetCard(name="mini", display_name="mini", classes=["benign tumour", "malignant"], class_source="test",
                       templates={"default": ["a scan of {}."]}, modality="ultrasound", splits={"train": "2"},
                       source=SourceSpec(kind="npz", options={}, obtain="none"), attribute_files=files)


def test_attribute_files_replace_their_kind_and_must_match_the_card(tmp_path):
    good = tmp_path / "confusion.json"
    good.write_text(json.dumps({"Benign_Tumour": ["a, b", "c"], "malignant": ["d"]}))
    attrs = card_attributes(_card(tmp_path, {"confusion": str(good)}))
    assert attrs["benign tumour"]["confusion"] == ["a, b", "c"] and attrs["malignant"]["positive"] == []
    bad = tmp_path / "positive.json"
    bad.write_text(json.dumps({"benign tumour": ["x"], "cyst": ["y"]}))
    with pytest.raises(ValueError, match="positive attributes: .* no sentences for 1 of the card's 2 classes: "
                                         "\\['malignant'\\]"):
        card_attributes(_card(tmp_path, {"positive": str(bad)}))
    with pytest.raises(FileNotFoundError, match="discriminative attributes: .*not found"):
        card_attributes(_card(tmp_path, {"discriminative": str(tmp_path / "absent.json")}))


def test_a_frame_wider_than_half_the_input_is_refused():
    with pytest.raises(ReprogrammingError, match="covers the whole 32 px input"):
        Frame.build("pad", 32, border_at_224=120)
    with pytest.raises(ValueError, match="frame"):
        ADAPTATIONS.create("ar", frame="corner")


def test_an_encoder_whose_preprocessing_cannot_be_inverted_is_refused():
    from torchvision import transforms

    encoder = SimpleNamespace(preprocess=transforms.Compose([transforms.Resize(32), transforms.ToTensor()]),
                              spec=SimpleNamespace(model="no-normalize"))
    with pytest.raises(ReprogrammingError, match="no Normalize step to invert"):
        normalisation(encoder)


def test_attribute_files_are_written_through_an_openai_compatible_endpoint(tmp_path):
    """A real HTTP server on 127.0.0.1 stands in for the user's LLM endpoint (the command is never run in sweeps)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from datasets.descriptions import load_descriptions
    from datasets.registry import get_card
    from experiments.attributes import main

    asked = []

    class Chat(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append((self.path, body["messages"][0]["content"]))
            reply = "1. a dark oval region\n- an irregular margin\n* posterior shadowing\na dark oval region\n"
            payload = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Chat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        paths = main(["--dataset", "busi", "--base-url", f"http://127.0.0.1:{server.server_port}/v1",
                      "--model", "any", "--kinds", "confusion", "--per-class", "5", "--out", str(tmp_path)])
    finally:
        server.shutdown()
    card = get_card("busi")
    assert [p.name for p in paths] == ["confusion.json"] and len(asked) == card.num_classes
    assert asked[0][0] == "/v1/chat/completions"
    assert "Generate the most visually confusing negative descriptions for class" in asked[0][1]
    loaded = load_descriptions(paths[0], card.classes)
    assert loaded[card.classes[0]] == ["a dark oval region", "an irregular margin", "posterior shadowing"]


def test_every_vr_learner_and_biomedcoop_run_in_a_real_sweep_few_shot_and_behind_an_acquisition(
        ray_cluster, tmp_path, session_cache):
    from orchestrator.config import load_config
    from orchestrator.sweep import run_sweep
    from tests.test_sweep import _config, _trial_runs

    fast = {"epochs": 2, "lr": 1.0}
    methods = [{"name": n, "acquisition": "few_shot", "adaptation": n, "adaptation_options": fast}
               for n in ("vp", "ar", "attrvr", "biomedvr")]
    methods += [{"name": "biomedvr_zs", "acquisition": "few_shot", "adaptation": "biomedvr_zs"},
                {"acquisition": "cec", "adaptation": "biomedvr", "adaptation_options": fast},
                {"name": "biomedcoop", "acquisition": "few_shot", "adaptation": "biomedcoop",
                 "adaptation_options": {"epochs": 2, "n_prompts": 4}}]
    path = _config(tmp_path, session_cache, name="vr", datasets=[DATASET], methods=methods, seeds=[0], rounds=2,
                   dataset_options={DATASET: {"sizes": {"train": 200, "test": 60}}},
                   budgets={"shots": {"kind": "shots", "shots": [1, 2]}})
    config = load_config(path)
    outcome = run_sweep(config)
    assert outcome.trials == 7 and not outcome.failed
    client, runs, _ = _trial_runs(config.tracking_uri, "vr")
    assert {r.data.params["method"] for r in runs} == {"vp", "ar", "attrvr", "biomedvr", "biomedvr_zs",
                                                       "cec+biomedvr", "biomedcoop"}
    for run in runs:
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "labels_spent")}
        assert history == {0: 0, 1: 10, 2: 20}, run.data.params["method"]
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "top1")) == [0, 1, 2]
