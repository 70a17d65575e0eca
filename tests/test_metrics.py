"""Tests of orchestrator/metrics.py: hand-computed cases, reference implementations, validation."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss, roc_auc_score

from orchestrator.metrics import KNOWN_TASKS, evaluate, expected_calibration_error


def _keys(c: int) -> set[str]:
    return {"top1", "macro_f1", "auc", "ece", "nll", "worst_class_acc"} | {f"class_acc/{i}" for i in range(c)}


def _reference_ece(conf, correct, n_bins):
    """Independent ECE: a loop over (lower, upper] bins as in Guo et al. (2017)."""
    conf = np.asarray(conf, dtype=float).ravel()
    correct = np.asarray(correct, dtype=float).ravel()
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- hand-computed multiclass example
# Six samples, three classes. Predictions argmax = [0, 0, 1, 1, 2, 0]; confidences
# [.9, .85, .7, .65, .45, .5]; correct [1, 0, 1, 0, 1, 1]. No confidence sits on a bin edge
# for n_bins in (1, 5), so every ECE convention agrees (torchmetrics 1.9.0's
# MulticlassCalibrationError gives the same 0.358333 for n_bins=5).
P6 = np.array(
    [
        [0.90, 0.05, 0.05],
        [0.85, 0.10, 0.05],
        [0.10, 0.70, 0.20],
        [0.30, 0.65, 0.05],
        [0.25, 0.30, 0.45],
        [0.50, 0.30, 0.20],
    ]
)
Y6 = np.array([0, 1, 1, 0, 2, 0])


def test_hand_computed_multiclass():
    m = evaluate(P6, Y6, "multiclass", n_bins=5)
    assert set(m) == _keys(3)
    assert all(type(v) is float for v in m.values())
    assert m["top1"] == pytest.approx(4 / 6)
    # per-class F1: class 0 P=R=2/3, class 1 P=R=1/2, class 2 F1=1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # one-vs-rest AUCs counted pair by pair: 7/9, 5/8, 5/5
    assert m["auc"] == pytest.approx((7 / 9 + 5 / 8 + 1) / 3)
    # bins (.8,1]: acc .5 conf .875; (.6,.8]: acc .5 conf .675; (.4,.6]: acc 1 conf .475
    assert m["ece"] == pytest.approx((2 * 0.375 + 2 * 0.175 + 2 * 0.525) / 6)
    assert m["ece"] == pytest.approx(2.15 / 6)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.7, 0.3, 0.45, 0.5])))
    assert m["class_acc/0"] == pytest.approx(2 / 3)
    assert m["class_acc/1"] == pytest.approx(1 / 2)
    assert m["class_acc/2"] == pytest.approx(1.0)
    assert m["worst_class_acc"] == pytest.approx(0.5)


def test_ece_single_bin_is_gap_between_accuracy_and_mean_confidence():
    m = evaluate(P6, Y6, "multiclass", n_bins=1)
    assert m["ece"] == pytest.approx(abs(4 - (0.9 + 0.85 + 0.7 + 0.65 + 0.45 + 0.5)) / 6)


def test_ece_bins_are_right_closed():
    # conf 0.5 is the upper edge of bin (0.25, 0.5] with n_bins=4, it must not join 0.6 in (0.5, 0.75]
    conf = np.array([0.5, 0.6])
    correct = np.array([1.0, 0.0])
    assert expected_calibration_error(conf, correct, 4) == pytest.approx((0.5 + 0.6) / 2)
    assert expected_calibration_error(conf, correct, 1) == pytest.approx(abs(0.5 - 0.55))


# ---------------------------------------------------------------- binary / multilabel by hand


def test_hand_computed_binary():
    p1 = np.array([0.9, 0.8, 0.3, 0.6, 0.2])
    y = np.array([1, 0, 0, 1, 1])
    m = evaluate(np.stack([1 - p1, p1], axis=1), y, "binary", n_bins=4)
    assert set(m) == _keys(2)
    # predictions [1, 1, 0, 1, 0]
    assert m["top1"] == pytest.approx(3 / 5)
    # positives .9 .6 .2 vs negatives .8 .3: 3 of 6 pairs ordered
    assert m["auc"] == pytest.approx(0.5)
    assert m["class_acc/0"] == pytest.approx(1 / 2)
    assert m["class_acc/1"] == pytest.approx(2 / 3)
    assert m["worst_class_acc"] == pytest.approx(1 / 2)
    # class 1: P=2/3 R=2/3; class 0: P=1/2 R=1/2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.7, 0.6, 0.2])))
    # confidences .9 .8 .7 .6 .8, correct 1 0 1 1 0: bin (.5,.75] holds .7 .6 (both right),
    # bin (.75,1] holds .9 .8 .8 (one right) -> (|2 - 1.3| + |1 - 2.5|) / 5
    assert m["ece"] == pytest.approx(2.2 / 5)


def test_hand_computed_multilabel():
    p = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4], [0.1, 0.8]])
    y = np.array([[1, 0], [0, 1], [0, 1], [0, 1]])
    m = evaluate(p, y, "multilabel", n_bins=4)
    assert set(m) == _keys(2)
    # predictions [[1,0],[1,1],[0,0],[0,1]]: 3/4 right on each label
    assert m["class_acc/0"] == pytest.approx(0.75)
    assert m["class_acc/1"] == pytest.approx(0.75)
    assert m["top1"] == pytest.approx(0.75)
    assert m["worst_class_acc"] == pytest.approx(0.75)
    assert m["auc"] == pytest.approx(1.0)
    # label 0: P=1/2 R=1 -> 2/3; label 1: P=1 R=2/3 -> 0.8
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # per-decision confidences max(p, 1-p): bin (.5,.75] holds .6 .7 .7 .6 with 2 right,
    # bin (.75, 1] holds .9 .8 .9 .8 all right -> (|2 - 2.6| + |4 - 3.4|) / 8
    assert m["ece"] == pytest.approx(1.2 / 8)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.7, 0.7, 0.4, 0.9, 0.8])))


# ---------------------------------------------------------------- behaviour on typical predictors


def test_perfect_one_hot_predictor():
    y = np.array([0, 1, 2, 3, 2, 1, 0, 3])
    m = evaluate(np.eye(4)[y], y, "multiclass")
    assert m["top1"] == 1.0
    assert m["macro_f1"] == 1.0
    assert m["auc"] == 1.0
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    assert m["nll"] < 1e-10
    assert m["worst_class_acc"] == 1.0


def test_perfect_but_underconfident_predictor():
    y = np.arange(40) % 4
    probs = np.full((40, 4), 0.1 / 3)
    probs[np.arange(40), y] = 0.9
    m = evaluate(probs, y, "multiclass")
    assert m["top1"] == 1.0 and m["auc"] == 1.0
    assert m["ece"] == pytest.approx(0.1)  # always right, 0.9 confident
    assert m["nll"] == pytest.approx(-math.log(0.9))


def test_random_predictor_is_at_chance():
    rng = np.random.default_rng(7)
    n, c = 6000, 5
    probs = rng.dirichlet(np.ones(c), size=n)
    y = rng.integers(0, c, size=n)
    m = evaluate(probs, y, "multiclass")
    assert m["top1"] == pytest.approx(1 / c, abs=0.03)
    assert m["auc"] == pytest.approx(0.5, abs=0.03)
    assert m["macro_f1"] == pytest.approx(1 / c, abs=0.03)
    assert m["ece"] > 0.2  # confident-looking but uninformative
    assert m["nll"] > math.log(c)


def test_calibrated_predictor_has_small_ece_and_overconfident_one_large():
    rng = np.random.default_rng(3)
    n, c = 20000, 4
    probs = _softmax(rng.normal(size=(n, c)) * 2.0)
    y = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)  # y ~ Categorical(probs)
    y = np.minimum(y, c - 1)
    calibrated = evaluate(probs, y, "multiclass")["ece"]
    overconfident = evaluate(_softmax(np.log(probs) * 4.0), y, "multiclass")["ece"]
    assert calibrated < 0.02
    assert overconfident > 0.1


@pytest.mark.parametrize("n_bins", [1, 3, 10, 15, 37])
def test_ece_matches_independent_implementation(n_bins):
    rng = np.random.default_rng(n_bins)
    probs = _softmax(rng.normal(size=(500, 6)) * 3.0)
    y = rng.integers(0, 6, size=500)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    expected = _reference_ece(conf, pred == y, n_bins)
    assert evaluate(probs, y, "multiclass", n_bins=n_bins)["ece"] == pytest.approx(expected, abs=1e-12)


def test_ece_matches_torchmetrics_when_installed():
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.classification")
    rng = np.random.default_rng(11)
    for n_bins in (5, 15):
        probs = _softmax(rng.normal(size=(1000, 7)) * 2.0)
        y = rng.integers(0, 7, size=1000)
        ref = tm.MulticlassCalibrationError(num_classes=7, n_bins=n_bins, norm="l1")(
            torch.tensor(probs), torch.tensor(y)
        )
        # torchmetrics works in float32 and uses [lower, upper) bins: equal off the edges.
        assert evaluate(probs, y, "multiclass", n_bins=n_bins)["ece"] == pytest.approx(float(ref), abs=1e-5)


def test_matches_sklearn_for_f1_nll_and_ovr_auc():
    rng = np.random.default_rng(5)
    probs = _softmax(rng.normal(size=(300, 5)))
    y = rng.integers(0, 5, size=300)
    m = evaluate(probs, y, "multiclass")
    assert m["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    assert m["nll"] == pytest.approx(log_loss(y, probs, labels=range(5)))
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_multiclass_auc_only_over_classes_present():
    rng = np.random.default_rng(2)
    probs = _softmax(rng.normal(size=(200, 4)))
    y = rng.choice([0, 2, 3], size=200)  # class 1 never occurs
    m = evaluate(probs, y, "multiclass")
    expected = np.mean([roc_auc_score(y == k, probs[:, k]) for k in (0, 2, 3)])
    assert m["auc"] == pytest.approx(expected)
    assert math.isnan(m["class_acc/1"])
    assert m["worst_class_acc"] == pytest.approx(min(m[f"class_acc/{k}"] for k in (0, 2, 3)))


def test_undefined_auc_is_nan_without_exception_or_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mc = evaluate(np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]), np.array([0, 0]), "multiclass")
        bi = evaluate(np.array([[0.2, 0.8], [0.4, 0.6]]), np.array([1, 1]), "binary")
        ml = evaluate(np.array([[0.2, 0.8], [0.4, 0.6]]), np.array([[0, 1], [0, 1]]), "multilabel")
    assert math.isnan(mc["auc"]) and math.isnan(bi["auc"]) and math.isnan(ml["auc"])
    assert mc["top1"] == 1.0 and bi["top1"] == 1.0


def test_multilabel_auc_skips_constant_labels():
    rng = np.random.default_rng(4)
    probs = rng.random((100, 3))
    y = (rng.random((100, 3)) < 0.5).astype(int)
    y[:, 1] = 0
    m = evaluate(probs, y, "multilabel")
    expected = np.mean([roc_auc_score(y[:, k], probs[:, k]) for k in (0, 2)])
    assert m["auc"] == pytest.approx(expected)


def test_multilabel_f1_matches_sklearn_when_every_label_occurs():
    rng = np.random.default_rng(9)
    probs = rng.random((200, 4))
    y = (rng.random((200, 4)) < probs).astype(int)
    m = evaluate(probs, y, "multilabel")
    assert m["macro_f1"] == pytest.approx(f1_score(y, (probs >= 0.5).astype(int), average="macro"))
    eps = np.finfo(float).eps
    p = np.clip(probs, eps, 1 - eps)
    assert m["nll"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_confidently_wrong_nll_is_finite():
    m = evaluate(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 1]), "binary")
    assert math.isfinite(m["nll"]) and m["nll"] > 10


def test_rows_within_tolerance_and_list_input_are_accepted():
    m = evaluate([[0.6004, 0.4], [0.2, 0.7996]], [0, 1], "binary")
    assert m["top1"] == 1.0
    m = evaluate(np.eye(3)[[0, 1, 2]], np.array([0.0, 1.0, 2.0]), "multiclass")  # float labels
    assert m["top1"] == 1.0


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "probs, labels, task, match",
    [
        (np.full((3, 2), 0.5), np.array([0, 1]), "binary", r"3 rows but labels has 2"),
        (np.full((2, 2), 0.5), np.array([[0, 1], [1, 0], [0, 0]]), "multilabel", r"same shape"),
        (np.full(4, 0.25), np.array([0]), "multiclass", r"must be 2-D"),
        (np.array([[0.5, np.nan], [0.5, 0.5]]), np.array([0, 1]), "binary", r"NaN or inf"),
        (np.array([[0.5, np.inf], [0.5, 0.5]]), np.array([0, 1]), "multilabel", r"NaN or inf"),
        (np.array([[0.5, 0.6], [0.5, 0.5]]), np.array([0, 1]), "binary", r"do not sum to 1.*softmax"),
        (np.array([[0.3, 0.3, 0.3]]), np.array([0]), "multiclass", r"do not sum to 1"),
        (np.array([[2.0, -1.0]]), np.array([0]), "binary", r"\[0, 1\].*not logits"),
        (np.array([[0.5, 0.5]]), np.array([2]), "binary", r"labels must lie in \[0, 2\)"),
        (np.array([[0.5, 0.5]]), np.array([-1]), "multiclass", r"labels must lie in \[0, 2\)"),
        (np.array([[0.5, 0.5]]), np.array([[0, 2]]), "multilabel", r"must be 0/1"),
        (np.array([[0.5, 0.5]]), np.array([0.5]), "multiclass", r"whole numbers"),
        (np.array([[0.2, 0.3, 0.5]]), np.array([0]), "binary", r"2 columns"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "multiclass", r"empty input"),
        (np.zeros((0, 3)), np.zeros((0, 3), dtype=int), "multilabel", r"empty input"),
    ],
)
def test_invalid_input_raises_clear_error(probs, labels, task, match):
    with pytest.raises(ValueError, match=match):
        evaluate(probs, labels, task)


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError) as err:
        evaluate(np.array([[0.5, 0.5]]), np.array([0]), "regression")
    assert "regression" in str(err.value)
    for task in KNOWN_TASKS:
        assert task in str(err.value)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_bad_n_bins(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        evaluate(np.array([[0.5, 0.5]]), np.array([0]), "binary", n_bins=n_bins)


def test_inputs_are_not_modified():
    probs, y = P6.copy(), Y6.copy()
    evaluate(probs, y, "multiclass")
    np.testing.assert_array_equal(probs, P6)
    np.testing.assert_array_equal(y, Y6)


def test_module_imports_without_torch_or_ray():
    code = (
        "import sys, orchestrator.metrics; "
        "bad = [m for m in ('torch', 'ray', 'mlflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)
