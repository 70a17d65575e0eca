"""Evaluation of one active-learning round: accuracy, macro-F1, AUC, ECE, NLL, per-class accuracy.

Pure numpy + scikit-learn (no torch, no Ray), so it runs inside any Ray task or on a laptop,
and its output (a flat ``dict[str, float]``) can go straight to ``mlflow.log_metrics`` or
``tune.report``.

Conventions (chosen once, here, so that every method is scored the same way):

* ``multiclass`` / ``binary``: ``probs`` is ``(N, C)`` with rows summing to 1 (``C == 2`` for
  binary, column 1 is the positive class); ``labels`` is ``(N,)`` of integers in ``[0, C)``.
  The prediction is ``argmax`` (ties go to the lowest class index).
* ``multilabel``: ``probs`` is ``(N, C)`` of independent per-label probabilities, ``labels`` is
  ``(N, C)`` of 0/1. Each label is predicted positive when its probability is ``>= 0.5``.
* ``top1``: accuracy; for multilabel the mean per-label accuracy at 0.5 (i.e. the fraction of
  the ``N * C`` label decisions that are right).
* ``macro_f1``: unweighted mean of per-class F1 over the classes that occur in the labels or in
  the predictions (scikit-learn's default class set); a class that is neither in the test set
  nor ever predicted carries no information and is left out instead of being scored 0.
  NaN for multilabel when no label is ever positive nor predicted positive.
* ``auc``: binary: ROC AUC of the positive class. Multiclass: one-vs-rest ROC AUC averaged
  (unweighted) over the classes present in ``labels`` (equal to scikit-learn's
  ``roc_auc_score(multi_class="ovr", average="macro")`` when all classes are present).
  Multilabel: mean ROC AUC over the labels that take both values. NaN, never an exception,
  when undefined (e.g. only one class in the test set).
* ``ece``: top-label expected calibration error with ``n_bins`` equal-width bins
  ``(0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]``: ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` with
  ``conf`` the probability of the predicted class. For multilabel, every label decision is a
  binary prediction with confidence ``max(p, 1 - p)``, and the ECE is over all ``N * C`` of them.
* ``nll``: mean negative log-likelihood of the true class (multilabel: mean binary
  cross-entropy over all ``N * C`` entries); probabilities are clipped to
  ``[eps, 1 - eps]`` with ``eps`` the float64 machine epsilon, as scikit-learn's ``log_loss``
  does, so a confidently wrong prediction costs about 36 nats instead of infinity.
* ``class_acc/<i>``: recall of class ``i`` (multilabel: accuracy of label ``i``). NaN for a
  class with no test example; ``worst_class_acc`` is the minimum over the defined ones.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

KNOWN_TASKS = ("multiclass", "binary", "multilabel")
ROW_SUM_TOL = 1e-3
_EPS = float(np.finfo(np.float64).eps)

__all__ = ["KNOWN_TASKS", "ROW_SUM_TOL", "evaluate", "expected_calibration_error"]


def evaluate(probs: np.ndarray, labels: np.ndarray, task: str, n_bins: int = 15) -> dict[str, float]:
    """Score test-set predictions of one round; see the module docstring for the conventions.

    Returns a flat dict of Python floats with keys ``top1``, ``macro_f1``, ``auc``, ``ece``,
    ``nll``, ``class_acc/<i>`` for every class ``i`` in ``range(C)``, and ``worst_class_acc``.
    Raises ``ValueError`` with the problem and the fix for malformed input.
    """
    probs, labels = _validate(probs, labels, task, n_bins)
    if task == "multilabel":
        return _evaluate_multilabel(probs, labels, n_bins)
    return _evaluate_single_label(probs, labels, task, n_bins)


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE of predictions with the given confidences and 0/1 correctness, equal-width bins.

    Bin ``b`` (0-based) holds confidences in ``(b/n, (b+1)/n]``; a confidence of exactly 0
    goes to the first bin. Empty bins contribute nothing.
    """
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    corr = np.asarray(correct, dtype=np.float64).ravel()
    if conf.shape != corr.shape:
        raise ValueError(
            f"confidences has {conf.size} entries but correct has {corr.size}; "
            "pass one correctness flag per confidence."
        )
    if conf.size == 0:
        raise ValueError("no predictions to calibrate; pass at least one confidence.")
    # Same edges and (lower, upper] comparison as the reference implementation of Guo et al.
    # (2017): bin b holds edges[b] < conf <= edges[b + 1].
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=corr, minlength=n_bins)
    # sum_b |B_b|/N * |acc_b - conf_b| == sum_b |acc_sum_b - conf_sum_b| / N
    return float(np.abs(acc_sum - conf_sum).sum() / conf.size)


# --------------------------------------------------------------------------- validation


def _validate(probs, labels, task, n_bins) -> tuple[np.ndarray, np.ndarray]:
    if task not in KNOWN_TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(KNOWN_TASKS)}.")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}; e.g. n_bins=15.")
    try:
        probs = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"probs must be a numeric (N, C) array ({e}); pass predict_proba output.") from None
    labels = np.asarray(labels)

    if probs.ndim != 2:
        raise ValueError(
            f"probs must be 2-D (N, C), got shape {probs.shape}; for binary tasks pass both "
            "columns, e.g. np.stack([1 - p, p], axis=1)."
        )
    n, c = probs.shape
    if n == 0 or c == 0 or labels.size == 0:
        raise ValueError(
            f"empty input (probs shape {probs.shape}, labels shape {labels.shape}); "
            "evaluate on a non-empty test set with at least one class."
        )
    if not np.isfinite(probs).all():
        bad = int((~np.isfinite(probs)).any(axis=1).sum())
        raise ValueError(
            f"probs contains NaN or inf in {bad} of {n} rows; fix the learner's output "
            "(e.g. a diverged fit or a division by zero) before evaluating."
        )
    if probs.min() < -ROW_SUM_TOL or probs.max() > 1 + ROW_SUM_TOL:
        raise ValueError(
            f"probs must lie in [0, 1], got values in [{probs.min():.4g}, {probs.max():.4g}]; "
            "pass probabilities (softmax/sigmoid outputs), not logits."
        )
    probs = np.clip(probs, 0.0, 1.0)

    if task == "multilabel":
        if labels.shape != probs.shape:
            raise ValueError(
                f"multilabel labels must have the same shape as probs {probs.shape}, got "
                f"{labels.shape}; pass a 0/1 indicator matrix with one column per label."
            )
        lab = _as_integer_labels(labels, "multilabel labels")
        if ((lab != 0) & (lab != 1)).any():
            raise ValueError(
                "multilabel labels must be 0/1, got values "
                f"{np.unique(lab)[:10].tolist()}; binarise them (e.g. labels > 0)."
            )
        return probs, lab

    if task == "binary" and c != 2:
        raise ValueError(
            f"binary task needs probs with 2 columns (negative, positive), got {c}; "
            "for a 1-D positive-class probability p pass np.stack([1 - p, p], axis=1), "
            "or use task='multiclass' for more classes."
        )
    if labels.ndim != 1:
        raise ValueError(
            f"{task} labels must be 1-D class indices of shape ({n},), got {labels.shape}; "
            "convert one-hot labels with labels.argmax(axis=1)."
        )
    if labels.shape[0] != n:
        raise ValueError(
            f"probs has {n} rows but labels has {labels.shape[0]} entries; pass predictions "
            "and labels for the same test examples, in the same order."
        )
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_TOL
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(
            f"{int(off.sum())} of {n} rows of probs do not sum to 1 (tolerance {ROW_SUM_TOL}); "
            f"e.g. row {i} sums to {sums[i]:.6g}. Apply softmax to logits, or use "
            "task='multilabel' for independent per-class probabilities."
        )
    lab = _as_integer_labels(labels, f"{task} labels")
    if lab.min() < 0 or lab.max() >= c:
        raise ValueError(
            f"{task} labels must lie in [0, {c}) to index the {c} columns of probs, got "
            f"min {lab.min()} and max {lab.max()}; remap class ids to 0..{c - 1} or pass "
            "probs with one column per class."
        )
    return probs, lab


def _as_integer_labels(labels: np.ndarray, what: str) -> np.ndarray:
    if labels.dtype == bool:
        return labels.astype(np.int64)
    if np.issubdtype(labels.dtype, np.integer):
        return labels.astype(np.int64)
    try:
        as_float = labels.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be integers, got dtype {labels.dtype}; map them to class ids.") from None
    if not np.isfinite(as_float).all() or (as_float != np.round(as_float)).any():
        raise ValueError(f"{what} must be whole numbers, got non-integer values; pass class indices.")
    return as_float.astype(np.int64)


# --------------------------------------------------------------------------- metrics


def _evaluate_single_label(probs: np.ndarray, labels: np.ndarray, task: str, n_bins: int) -> dict[str, float]:
    n, c = probs.shape
    pred = probs.argmax(axis=1)
    correct = pred == labels

    out: dict[str, float] = {"top1": float(correct.mean())}
    out["macro_f1"] = float(f1_score(labels, pred, average="macro", zero_division=0))

    if task == "binary":
        out["auc"] = _safe_auc(labels == 1, probs[:, 1])
    else:
        per_class = [_safe_auc(labels == k, probs[:, k]) for k in np.unique(labels)]
        out["auc"] = _nanmean(per_class)

    out["ece"] = expected_calibration_error(probs[np.arange(n), pred], correct, n_bins)
    p_true = np.clip(probs[np.arange(n), labels], _EPS, 1.0 - _EPS)
    out["nll"] = float(-np.log(p_true).mean())

    class_acc = []
    for k in range(c):
        mask = labels == k
        class_acc.append(float(correct[mask].mean()) if mask.any() else math.nan)
    _add_class_acc(out, class_acc)
    return out


def _evaluate_multilabel(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> dict[str, float]:
    pred = (probs >= 0.5).astype(np.int64)
    correct = pred == labels
    per_label_acc = correct.mean(axis=0)

    out: dict[str, float] = {"top1": float(per_label_acc.mean())}
    active = np.flatnonzero(labels.any(axis=0) | pred.any(axis=0))
    out["macro_f1"] = (
        float(f1_score(labels, pred, average="macro", labels=active, zero_division=0))
        if active.size
        else math.nan
    )
    out["auc"] = _nanmean([_safe_auc(labels[:, k] == 1, probs[:, k]) for k in range(probs.shape[1])])

    conf = np.where(pred == 1, probs, 1.0 - probs)
    out["ece"] = expected_calibration_error(conf, correct, n_bins)
    p = np.clip(probs, _EPS, 1.0 - _EPS)
    out["nll"] = float(-(labels * np.log(p) + (1 - labels) * np.log1p(-p)).mean())

    _add_class_acc(out, [float(a) for a in per_label_acc])
    return out


def _add_class_acc(out: dict[str, float], class_acc: list[float]) -> None:
    for k, acc in enumerate(class_acc):
        out[f"class_acc/{k}"] = acc
    defined = [a for a in class_acc if not math.isnan(a)]
    out["worst_class_acc"] = min(defined) if defined else math.nan


def _safe_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, or NaN when ``y_true`` holds a single value (AUC undefined)."""
    y_true = np.asarray(y_true, dtype=bool)
    if y_true.all() or not y_true.any():
        return math.nan
    return float(roc_auc_score(y_true, score))


def _nanmean(values) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan
