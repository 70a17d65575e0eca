"""MaPLe: coupled text and vision prompts on the shipped tiny CLIP (CPU, no Ray)."""
# ruff: noqa: F811  -- pytest fixtures imported from test_vpt are parameters of the tests below

import numpy as np
import pytest
import torch

from methods.adaptation.prompting.maple import MaPLe
from methods.adaptation.prompting.vpt import VPTPredictor
from tests.test_vpt import _ctx, _train, setup  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(setup, train, seed=1, **options):
    torch.manual_seed(seed)
    return MaPLe(**options).fit(train, _ctx(setup, class_names=list(setup["classes"])), np.random.default_rng(seed))


def test_maple_trains_only_prompts_and_couplings(setup, trained_parameters):
    model = setup["enc"].model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seen = trained_parameters
    predictor = _fit(setup, _train(setup, 2), epochs=1, depth=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    model_params = {id(p) for p in model.parameters()}
    assert seen and not any(id(p) in model_params for p in seen)
    assert all(p.grad is not None for p in seen)  # every prompt / coupling tensor received gradients
    assert predictor.prompts.shape == (3, 4, 128)  # depth x ("a photo of a" = 4 tokens) x vision width


def test_maple_is_deterministic_and_round_trips(setup):
    train = _train(setup, 2)
    a, b = _fit(setup, train, seed=5, epochs=1), _fit(setup, train, seed=5, epochs=1)
    c = _fit(setup, train, seed=6, epochs=1)
    assert np.array_equal(a.prompts, b.prompts) and np.array_equal(a.text, b.text)
    assert not np.array_equal(a.prompts, c.prompts)
    again = VPTPredictor.from_state(a.state())
    rows = np.arange(64)
    again.device = a.device = "cpu"
    assert np.array_equal(again.predict_proba_images(setup["images"], "test", rows),
                          a.predict_proba_images(setup["images"], "test", rows))


def test_maple_beats_zero_shot_on_the_shifted_set(setup):
    labels = setup["test_labels"]
    zero = _fit(setup, _train(setup, 0))
    zero_shot = (zero.predict_proba_images(setup["images"], "test").argmax(1) == labels).mean()
    tuned = (_fit(setup, _train(setup, 16), recipe="coop_al", epochs=100).predict_proba_images(setup["images"], "test")
             .argmax(1) == labels).mean()
    print(f"synth-scans top-1: zero-shot {zero_shot:.3f}, maple {tuned:.3f}")
    assert tuned >= zero_shot + 0.05
