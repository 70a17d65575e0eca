"""Strategies that query the current model itself: BALD, ALFA-Mix, and the PCB class-balancing wrapper.

BALD and ALFA-Mix perturb the *inputs* of the current predictor (dropout
masks, feature mixing) and watch its predictions move, so they declare
``PREDICTOR`` and work on the cached pool features the predictor consumes.
PCB wraps any registered strategy and re-balances its picks across the
classes the model predicts.

Every pool-wide pass runs in row chunks, so memory grows with the chunk,
never with N x C x T, N x d x C or N^2. Randomness comes only from the
``rng`` handed to ``select``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..base import (POOL_FEATURES, PREDICTOR, PROBS, TEXT_FEATURES, AcquisitionStrategy, AdaptContext, Predictor,
                    Selection, SelectionContext, TrainSet)
from ..feature_space import FeatureSpace, features_in_space, space_inputs
from ..kernels import kmeans
from ..kernels.clustering import nearest_members
from ..options import Int, Number, PluginOptions
from ..registry import ACQUISITIONS, ADAPTATIONS, register_acquisition
from ..validation import AcquisitionInputError
from .clustering import WorkingMB
from .uncertainty import prediction_entropy, top_k


def mutual_information(samples: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """BALD's score from stacked draws ``samples`` (T, n, C): ``H(mean_t p_t) - mean_t H(p_t)``
    (multi-label: summed over labels, each a Bernoulli)."""
    samples = np.asarray(samples, dtype=np.float64)
    return prediction_entropy(samples.mean(axis=0), multilabel) - prediction_entropy(samples, multilabel).mean(axis=0)


def _require_feature_predictor(strategy: str, predictor: Predictor | None) -> Predictor:
    if predictor is None:
        raise AcquisitionInputError(f"{strategy}: no predictor in the selection context; "
                                    f"the loop passes it only to strategies whose `requires` has {PREDICTOR!r}")
    if predictor.on_pixels:
        raise AcquisitionInputError(
            f"{strategy}: the current learner ({type(predictor).__name__}) adapts the image path and cannot score "
            "perturbed cached features; pair this strategy with a feature-path learner (zeroshot, linear_probe)")
    return predictor


# ------------------------------------------------------------------ BALD


def mc_dropout_scores(predictor: Predictor, features: np.ndarray, rows: np.ndarray, p: float, samples: int,
                      rng: np.random.Generator, chunk: int = 4096) -> np.ndarray:
    """Mutual information of ``rows`` under ``samples`` dropout masks on the predictor's input features.

    Inverted dropout: a kept feature is scaled by ``1 / (1 - p)``. For each
    chunk of rows, pass ``t`` draws its mask as ``rng.random((len(chunk), d),
    dtype=float32) >= p``, chunks in order and passes in order inside a chunk
    (so the draws depend on ``chunk``, which is part of the options). Only
    running sums of the probabilities and of the entropies are kept: memory
    is O(chunk x (C + d)). A softmax head (``linear_head()``) is scored in
    float32 torch from the same masks; any other predictor in float64 numpy.
    """
    rows = np.asarray(rows, dtype=np.int64)
    head = predictor.linear_head()
    if head is not None:
        return _linear_mc_dropout_scores(head, features, rows, p, samples, rng, chunk)
    out = np.empty(len(rows), dtype=np.float64)
    scale = np.float32(1.0 / (1.0 - p))
    multilabel = bool(getattr(predictor, "multilabel", False))
    for s in range(0, len(rows), chunk):
        x = np.asarray(features[rows[s: s + chunk]], dtype=np.float32)
        mean_p = None
        mean_h = np.zeros(len(x), dtype=np.float64)
        for _ in range(samples):
            keep = rng.random(x.shape, dtype=np.float32) >= p
            probs = np.asarray(predictor.predict_proba(x * keep * scale), dtype=np.float64)
            mean_p = probs if mean_p is None else mean_p + probs
            mean_h += prediction_entropy(probs, multilabel)
        out[s: s + chunk] = prediction_entropy(mean_p / samples, multilabel) - mean_h / samples
    return out


def _linear_mc_dropout_scores(head, features: np.ndarray, rows: np.ndarray, p: float, samples: int,
                              rng: np.random.Generator, chunk: int) -> np.ndarray:
    """:func:`mc_dropout_scores` for a softmax head, in float32 torch: the same masks, from the same draws.

    The float64 numpy softmax and entropies cost about as much as the matrix products at C = 1,000; here
    ``log_softmax`` gives the log-probabilities the entropy needs without a clip, and every pass runs on all
    cores (8.1 s -> 5.7 s at 20,000 rows x 1,000 classes, T = 20, two cores). Scores differ from the float64
    path by float32 rounding (measured: at most 2e-6 absolute, 6e-6 relative), which can reorder only rows
    whose scores tie to that precision. The logits, log-probabilities and probabilities of a pass are
    written into three buffers allocated once: a fresh 16 MB tensor per pass cost as much in page faults as
    the softmax itself (60 -> 35 ms per pass of 4,096 rows at C = 1,000; the same numbers).
    """
    import torch

    w = torch.as_tensor(np.asarray(head.weight, np.float32)).T.contiguous()
    b = torch.as_tensor(np.asarray(head.bias, np.float32))
    scale = np.float32(1.0 / (1.0 - p)) / np.float32(head.temperature)
    bias = b / head.temperature
    out = np.empty(len(rows), dtype=np.float64)
    logits, logp, probs = (torch.empty(min(chunk, len(rows)), len(bias)) for _ in range(3))
    for s in range(0, len(rows), chunk):
        x = np.asarray(features[rows[s: s + chunk]], dtype=np.float32)
        n = len(x)
        sum_p = torch.zeros(n, len(bias))
        sum_h = torch.zeros(n, dtype=torch.float64)
        for _ in range(samples):
            dropped = torch.from_numpy(np.multiply(x, rng.random(x.shape, dtype=np.float32) >= p))
            torch.addmm(bias, dropped, w, alpha=float(scale), out=logits[:n])
            torch.log_softmax(logits[:n], dim=1, out=logp[:n])
            torch.exp(logp[:n], out=probs[:n])
            sum_p += probs[:n]
            sum_h -= probs[:n].mul_(logp[:n]).sum(1, dtype=torch.float64)
        mutual_info = torch.special.entr(sum_p / samples).sum(1, dtype=torch.float64) - sum_h / samples
        out[s: s + chunk] = mutual_info.numpy()
    return out


def ensemble_scores(heads: list[Predictor], features: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Mutual information of ``rows`` across the heads' predictions, chunk by chunk."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty(len(rows), dtype=np.float64)
    for s in range(0, len(rows), chunk):
        x = np.asarray(features[rows[s: s + chunk]], dtype=np.float32)
        out[s: s + chunk] = mutual_information(np.stack([h.predict_proba(x) for h in heads]),
                                               bool(getattr(heads[0], "multilabel", False)))
    return out


@register_acquisition("bald")
class Bald(AcquisitionStrategy):
    """BALD (Houlsby et al., 2011; deep version Gal, Islam & Ghahramani, ICML 2017).

    Score: the mutual information between a point's label and the model,
    ``I = H(mean_t p_t) - mean_t H(p_t)``, over T stochastic predictions;
    the ``budget`` highest (ties to the lower row id) are queried.

    * ``mode="mc_dropout"`` (default): T = ``samples`` passes of the current
      predictor over the unlabelled features with dropout ``p`` on those
      features (inverted scaling, masks from ``rng``).
    * ``mode="ensemble"``: ``ensemble_size`` linear probes
      (:class:`methods.adaptation.linear_probe.LinearProbe`, options
      ``probe_options``, text-feature init) fitted on bootstrap resamples of
      the labelled set's cached features; T = the heads.

    Deviations from the papers:

    * The dropout sits on the *input* of the predictor (the frozen CLIP
      features), the only place a head on cached features has; the
      published MC dropout uses the dropout layers the network was trained
      with. The heads here are trained without dropout, so the masks are a
      perturbation of a point estimate, not samples of a variational
      posterior. ``p = 0.2`` follows Srivastava et al. (JMLR 2014), whose
      experiments typically keep input units with probability 0.8 and hidden
      ones with 0.5: these masks hit the head's inputs, and 0.5 would wipe
      out half of every embedding.
    * Ensemble members differ only through the bootstrap (the text-initialised
      probe is deterministic), and pseudo-labelled rows count as labelled.
      With fewer than two labelled rows the heads cannot disagree, so the
      round falls back to ``mc_dropout`` scores (noted in ``extras``).
    * Selection is top-B, not BatchBALD's joint batch score.
    """

    multilabel = True  # per-label Bernoulli mutual information, summed

    class Options(PluginOptions):
        mode: Literal["mc_dropout", "ensemble"] = "mc_dropout"
        samples: Int = Field(20, ge=2, description="dropout passes; one pass has no disagreement")
        p: Number = Field(0.2, gt=0, lt=1, description="dropout probability on the features")
        ensemble_size: Int = Field(5, ge=2, description="bootstrapped probes")
        probe_options: dict | None = Field(None, description="linear_probe options of the ensemble's heads")
        chunk: Int = Field(4096, ge=1, description="rows per block")

        @field_validator("probe_options")
        @classmethod
        def _probe(cls, options):
            try:
                ADAPTATIONS.resolve_options("linear_probe", options or {})
            except ValueError as err:
                raise ValueError(f"probe_options: {err}") from None
            return options

    def configure(self) -> None:
        self.probe_options = dict(self.probe_options or {})
        self.requires = frozenset({PREDICTOR, POOL_FEATURES}) | (
            frozenset({TEXT_FEATURES}) if self.mode == "ensemble" else frozenset())

    def _heads(self, ctx: SelectionContext, rng: np.random.Generator) -> list[Predictor]:
        import torch

        from ..adaptation.linear_probe import LinearProbe

        labelled = np.asarray(ctx.labelled, dtype=np.int64)
        targets = np.asarray(ctx.labelled_targets, dtype=np.int64)
        x = np.asarray(ctx.pool_features[labelled], dtype=np.float32)
        actx = AdaptContext(ctx.num_classes, ctx.round, np.asarray(ctx.text_features, dtype=np.float32), device="cpu",
                            task=ctx.task)
        heads = []
        threads = torch.get_num_threads()
        if len(labelled) <= 4096:  # a few hundred rows: OpenMP threads only contend (6x slower on 2 busy cores)
            torch.set_num_threads(1)
        try:
            for _ in range(self.ensemble_size):
                boot = rng.integers(len(labelled), size=len(labelled))
                train = TrainSet(x[boot], targets[boot], np.zeros(len(boot), bool), rows=labelled[boot])
                heads.append(LinearProbe(**self.probe_options).fit(train, actx, rng))
        finally:
            torch.set_num_threads(threads)
        return heads

    def scores(self, ctx: SelectionContext, rng: np.random.Generator) -> np.ndarray:
        """BALD scores of ``ctx.unlabelled``, in that order."""
        if self.mode == "ensemble" and len(ctx.labelled) >= 2:
            return ensemble_scores(self._heads(ctx, rng), ctx.pool_features, ctx.unlabelled, self.chunk)
        if self.mode == "ensemble":
            ctx.extras["bald_fallback"] = "mc_dropout (fewer than 2 labelled rows)"
        predictor = _require_feature_predictor("bald", ctx.predictor)
        return mc_dropout_scores(predictor, ctx.pool_features, ctx.unlabelled, self.p, self.samples, rng, self.chunk)

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        unlabelled = np.asarray(ctx.unlabelled, dtype=np.int64)
        return Selection(top_k(self.scores(ctx, rng), unlabelled, budget))


# -------------------------------------------------------------- ALFA-Mix


def alfamix_anchors(ctx: SelectionContext) -> tuple[np.ndarray, str, np.ndarray]:
    """The mixing anchors, in the predictor's input space; where they came from; and, per class, the index
    of the anchor standing for it.

    With labels: the mean cached feature of each labelled class, plus (as in
    the authors' code, which uses it for every class without labels) the mean
    of all labelled features when some class has none -- the anchor of every
    unlabelled class. With no labels: the class text features (CLIP's joint
    space; a deviation, so round 1 works under ``cold_start: none``).
    """
    features = ctx.pool_features
    labelled = np.asarray(ctx.labelled, dtype=np.int64)
    if len(labelled) == 0:
        if ctx.text_features is None:
            raise AcquisitionInputError("alfamix: no labelled rows and no class text features to anchor on")
        text = np.asarray(ctx.text_features, dtype=np.float32)
        if text.shape[1] != features.shape[1]:
            raise AcquisitionInputError(
                f"alfamix: with no labelled rows the anchors are the class text features, but they have "
                f"{text.shape[1]} dims and the pool features {features.shape[1]}; label a few rows first "
                "(cold_start: random) or use an encoder whose towers share one space")
        return text, "text", np.arange(ctx.num_classes)
    targets = np.asarray(ctx.labelled_targets, dtype=np.int64)
    x = np.asarray(features[labelled], dtype=np.float64)
    sums = np.zeros((ctx.num_classes, x.shape[1]))
    np.add.at(sums, targets, x)
    counts = np.bincount(targets, minlength=ctx.num_classes)
    present = counts > 0
    anchors = sums[present] / counts[present, None]
    anchor_of = np.full(ctx.num_classes, len(anchors), dtype=np.int64)  # the all-labelled mean, appended below
    anchor_of[present] = np.arange(len(anchors))
    if not present.all():
        anchors = np.vstack([anchors, x.mean(axis=0, keepdims=True)])
    return anchors.astype(np.float32), "labelled", anchor_of


def _nearest_class_anchors(probs, anchor_of: np.ndarray | None, k: int | None):
    """(r, k) anchor indices of each row's k most probable classes, or None for every anchor."""
    import torch

    if k is None or anchor_of is None or k >= len(anchor_of):
        return None
    top = torch.as_tensor(probs).topk(k, dim=1).indices
    return torch.as_tensor(anchor_of, device=top.device)[top]


def _mix_block(x, anchors, predictor: Predictor, alpha_cap: float, search: str, levels: np.ndarray,
               device: str, want_alpha: bool = False, anchor_of: np.ndarray | None = None,
               per_point: int | None = None):
    """Mix one block of rows with every anchor; return (changed (r, A), margin (r,), alpha (r, A, d) or None).

    With ``per_point=k`` and ``anchor_of`` (see :func:`alfamix_anchors`) each
    row is mixed only with the anchors of its k most probable classes, and
    ``changed`` is (r, k).

    ``gradient`` (a :class:`LinearPredictor`): per dimension ``alpha_j = cap``
    where moving towards the anchor increases the cross-entropy of the
    predicted label to first order (``g_j (z*_j - z_j) > 0``, ``g`` its
    analytic input gradient ``W^T (p - onehot(y)) / T``), else 0: the exact
    maximiser of the linearised loss over the box ``0 <= alpha <= cap``.
    ``grid``: one scalar ``alpha`` per mix from ``levels``; the reported alpha
    is the smallest level that changed the label (``cap`` if none did).
    """
    import torch

    r, d = x.shape
    a = torch.as_tensor(anchors, device=device)
    head = predictor.linear_head() if search == "gradient" else None
    if head is not None:
        w = torch.as_tensor(head.weight, device=device)
        b = torch.as_tensor(head.bias, device=device)
        xt = torch.as_tensor(x, device=device)
        logits = xt @ w.T + b
        pred = logits.argmax(1)
        probs = torch.softmax(logits / head.temperature, dim=1)
        top2 = probs.topk(min(2, probs.shape[1]), dim=1).values
        margin = (top2[:, 0] - top2[:, -1]).cpu().numpy()
        chosen = _nearest_class_anchors(probs, anchor_of, per_point)
        probs[torch.arange(r, device=device), pred] -= 1.0
        grad = probs @ w  # (r, d): d CE / d x up to the positive factor 1/T
        # keep_j = [g_j (z*_j - z_j) > 0] keeps the part of z* - z that climbs the loss; z + keep * (z* - z)
        # equals clamp(z*, lo, hi) with lo = z where g >= 0 (else -inf) and hi = z where g <= 0 (else +inf).
        # One fused pass over (r, A, d) instead of building z* - z, the mask and the mix separately.
        inf = torch.tensor(float("inf"), device=device)
        lo = torch.where(grad >= 0, xt, -inf)[:, None, :]
        hi = torch.where(grad <= 0, xt, inf)[:, None, :]
        targets = a[None, :, :].expand(r, -1, -1) if chosen is None else a[chosen]
        moved = torch.clamp(targets, min=lo, max=hi)  # z + keep * (z* - z)
        # logits of z + cap * keep * (z* - z) = (1 - cap) l(z) + cap l(z + keep * (z* - z)); l is affine
        mixed = (moved.reshape(-1, d) @ w.T).reshape(r, -1, w.shape[0]).mul_(alpha_cap)
        mixed.add_(((1.0 - alpha_cap) * (xt @ w.T))[:, None, :]).add_(b)
        changed = mixed.argmax(-1) != pred[:, None]
        if want_alpha:
            keep = (targets - xt[:, None, :]) * grad[:, None, :] > 0
            alpha = (keep.to(xt.dtype) * alpha_cap).cpu().numpy()
        else:
            alpha = None
        return changed.cpu().numpy(), margin, alpha
    probs = np.asarray(predictor.predict_proba(x), dtype=np.float64)
    pred = probs.argmax(1)
    top2 = -np.sort(-probs, axis=1)[:, :2]
    margin = top2[:, 0] - top2[:, -1]
    chosen = _nearest_class_anchors(probs, anchor_of, per_point)
    targets = anchors[None, :, :] if chosen is None else anchors[chosen.numpy()]
    width = targets.shape[1]
    changed = np.zeros((r, width), dtype=bool)
    alpha = np.full((r, width), alpha_cap, dtype=np.float32)
    for level in levels[::-1]:  # largest first, so the smallest flipping level is written last
        mixed = (1.0 - level) * x[:, None, :] + level * targets
        flipped = np.asarray(predictor.predict_proba(mixed.reshape(-1, d))).argmax(1).reshape(r, -1) != pred[:, None]
        changed |= flipped
        alpha[flipped] = level
    full = np.broadcast_to(alpha[:, :, None], (r, width, d)).copy() if want_alpha else None
    return changed, margin, full


@register_acquisition("alfamix")
class AlfaMix(AcquisitionStrategy):
    """ALFA-Mix (Parvaneh et al., CVPR 2022, "Active Learning by Feature Mixing").

    For every unlabelled feature ``z`` and anchor ``z*`` (per-class mean of the
    labelled features) the mix ``(1 - alpha) z + alpha z*`` with
    ``0 <= alpha <= alpha_cap`` (per dimension; 0.2 as in the authors' runs)
    is fed to the current predictor; points whose predicted label changes for
    some anchor are candidates. If there are more candidates than the budget,
    k-means (K = budget) on the L2-normalised candidate features (in
    ``feature_space``) picks the candidate nearest each centre, as published.
    Otherwise all candidates are taken and the rest is filled (``fill``):
    ``random`` -- uniformly from the other unlabelled rows, as the authors'
    code does (without its replacement bug); ``margin`` -- the smallest top-2
    probability margins, ties to the lower row id.

    Choosing alpha (``alpha_search``):

    * ``gradient`` (``auto`` with a ``LinearPredictor``): the analytic input
      gradient of the cross-entropy of the predicted label gives the closed
      form ``alpha_j = cap * [g_j (z*_j - z_j) > 0]``, the maximiser of the
      first-order loss over the box ``[0, cap]^d``. Deviation: the paper's
      closed form (its Eq. 5, ``eps ||z* - z|| / ||g|| * g / (z* - z)``) solves
      an L2-relaxed problem whose per-dimension alpha is unbounded (it
      divides by ``z* - z``; the authors' code also scales the cap by
      ``1/sqrt(d)``); the box solution keeps every alpha within the cap.
    * ``grid`` (``auto`` with any other predictor, which only offers
      ``predict_proba``): a scalar alpha tried at ``alpha_grid`` evenly spaced
      levels in ``(0, cap]``; no gradient is available.

    Other deviations: mixing happens in the space the predictor consumes (the
    cached pool features), since a generic predictor cannot be run from
    another space; ``feature_space`` only chooses where k-means clusters.
    The authors' code raises the cap in steps of 0.2 until there are more
    candidates than the budget; the cap here is fixed and the rest filled.
    With no labelled rows (``cold_start: none``) the anchors are the class text
    features (CLIP's joint space); the paper always starts from labels.
    Cost: O(N x A x d x C) for A anchors, in blocks of ``working_mb``: with
    A = C = 1,000 at N = 1.28 M that is ~1.3e15 multiply-adds, hours on a
    CPU. ``anchors_per_point=k`` (an approximation, off by default) mixes each
    point only towards the anchors of its k most probable classes -- the
    classes a small step can flip it to -- at O(N k d C); every flip it finds
    is a flip of the full rule, and the tests measure how many it misses.
    """

    class Options(PluginOptions):
        alpha_cap: Number = Field(0.2, gt=0, le=1, description="the largest mixing coefficient")
        alpha_search: Literal["auto", "gradient", "grid"] = Field(
            "auto", description="auto: gradient for a linear head, else grid")
        alpha_grid: Int = Field(4, ge=1, description="levels tried by the grid search")
        fill: Literal["random", "margin"] = Field("random", description="how a short candidate set is filled")
        feature_space: FeatureSpace = "image"
        working_mb: WorkingMB = 256
        anchors_per_point: Int | None = Field(None, ge=1, description="anchors of the k most probable classes; "
                                                                       "None: every anchor")

    def configure(self) -> None:
        space = space_inputs("alfamix", self.feature_space)
        self.requires = frozenset({PREDICTOR, POOL_FEATURES, TEXT_FEATURES}) | space

    def _search(self, predictor: Predictor) -> str:
        linear = predictor.linear_head() is not None
        if self.alpha_search == "gradient" and not linear:
            raise AcquisitionInputError(
                f"alfamix: alpha_search='gradient' needs a predictor with a linear head (analytic input gradient), "
                f"got {type(predictor).__name__}; use alpha_search='grid' or 'auto'")
        return "gradient" if (self.alpha_search == "auto" and linear) or self.alpha_search == "gradient" else "grid"

    def levels(self) -> np.ndarray:
        return (self.alpha_cap * np.arange(1, self.alpha_grid + 1) / self.alpha_grid).astype(np.float32)

    def mixing(self, ctx: SelectionContext, rows: np.ndarray | None = None) -> dict:
        """The mixing used, for inspection on small inputs: alpha (n, A, d), changed (n, A), anchors, search."""
        predictor = _require_feature_predictor("alfamix", ctx.predictor)
        anchors, source, _ = alfamix_anchors(ctx)
        rows = ctx.unlabelled if rows is None else rows
        x = np.asarray(ctx.pool_features[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
        search = self._search(predictor)
        changed, margin, alpha = _mix_block(x, anchors, predictor, self.alpha_cap, search, self.levels(), "cpu", True)
        return {"alpha": alpha, "changed": changed, "margin": margin, "anchors": anchors, "anchor_source": source,
                "search": search}

    def candidates(self, ctx: SelectionContext) -> tuple[np.ndarray, np.ndarray]:
        """Whether each unlabelled row's label flips for some anchor, and its top-2 margin (both in row order)."""
        from ..core.devices import pick_device

        predictor = _require_feature_predictor("alfamix", ctx.predictor)
        anchors, source, anchor_of = alfamix_anchors(ctx)
        ctx.extras["alfamix_anchors"] = source
        search = self._search(predictor)
        device = pick_device() if search == "gradient" else "cpu"
        unlabelled = np.asarray(ctx.unlabelled, dtype=np.int64)
        d = anchors.shape[1]
        width = len(anchors) if self.anchors_per_point is None else min(len(anchors), self.anchors_per_point)
        step = max(1, (self.working_mb << 20) // (4 * 4 * width * d))  # ~4 live (r, A, d) float blocks
        flips = np.zeros(len(unlabelled), dtype=bool)
        margins = np.empty(len(unlabelled), dtype=np.float64)
        levels = self.levels()
        for s in range(0, len(unlabelled), step):
            x = np.asarray(ctx.pool_features[unlabelled[s: s + step]], dtype=np.float32)
            changed, margin, _ = _mix_block(x, anchors, predictor, self.alpha_cap, search, levels, device,
                                            anchor_of=anchor_of, per_point=self.anchors_per_point)
            flips[s: s + step] = changed.any(1)
            margins[s: s + step] = margin
        return flips, margins

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        unlabelled = np.asarray(ctx.unlabelled, dtype=np.int64)
        if budget == 0:
            return Selection(np.empty(0, dtype=np.int64))
        flips, margins = self.candidates(ctx)
        cand = unlabelled[flips]
        ctx.extras["alfamix_candidates"] = len(cand)
        if len(cand) > budget:
            z = features_in_space(ctx, self.feature_space, cand)
            z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
            centres, labels = kmeans(z, budget, int(rng.integers(2**31)))
            nearest = nearest_members(z, centres, labels, self.working_mb << 20)
            chosen = cand[nearest[nearest >= 0]]  # the published rule; an empty cluster is filled below
        else:
            chosen = cand
        short = budget - len(chosen)
        if short > 0:  # too few candidates (or an empty cluster): fill from the other unlabelled rows
            rest_mask = ~np.isin(unlabelled, chosen)
            rest = unlabelled[rest_mask]
            if self.fill == "margin":
                extra = top_k(-margins[rest_mask], rest, short)
            else:
                extra = rng.choice(rest, size=short, replace=False)
            chosen = np.concatenate([chosen, extra])
        return Selection(np.asarray(chosen, dtype=np.int64))


# ------------------------------------------------------------------- PCB


@register_acquisition("pcb")
class PseudoClassBalance(AcquisitionStrategy):
    """PCB (Bang et al., CVPR 2024, "Active Prompt Learning in Vision Language Models").

    A wrapper: the ``base`` strategy (BADGE in the paper) picks
    ``max(budget, ceil(gamma * |unlabelled|))`` candidates; each candidate is
    pseudo-labelled with the current model's prediction (argmax of
    ``probs``). Then, until the budget is spent, the class with the fewest
    examples so far (labelled rows by ``labelled_targets`` -- true or pseudo
    -- plus rows already chosen this round, ties to the lower class id) gives
    one of its candidates: uniformly at random (``within_class="random"``, as
    in the authors' code) or the base's earliest pick (``"base_order"``).

    Deviations: the authors' code looks for the least-counted class among
    *all* classes, and when that class has no candidate left it draws a random
    candidate without counting it, so one empty class turns the rest of the
    round into random sampling; here only classes that still have candidates
    compete. The authors take ``int(gamma * |U|)`` candidates, which can be
    fewer than the budget; here at least the budget. Pseudo labels a base may
    return are dropped (PCB queries its picks).
    """

    class Options(PluginOptions):
        base: str = Field("badge", description="the registered strategy whose picks are re-balanced")
        base_options: dict | None = Field(None, description="the base strategy's options")
        gamma: Number = Field(0.1, gt=0, le=1, description="candidate fraction of the unlabelled pool")
        within_class: Literal["random", "base_order"] = Field(
            "random", description="which of a class's candidates goes first")
        max_candidates: Int | None = Field(None, ge=1, description="cap on the candidates; None: no cap")

        @field_validator("base")
        @classmethod
        def _registered(cls, base):
            if base == "pcb":
                raise ValueError("base cannot be 'pcb' itself; pick the strategy PCB re-balances, e.g. 'badge'")
            try:
                ACQUISITIONS.get(base)
            except KeyError as err:
                raise ValueError(f"base: {err.args[0]}") from None
            return base

        @model_validator(mode="after")
        def _base_options(self):
            try:
                ACQUISITIONS.resolve_options(self.base, self.base_options or {})
            except ValueError as err:
                raise ValueError(f"base {self.base!r}: {err}") from None
            return self

    def configure(self) -> None:
        self.base_name = self.options.base
        self.base = ACQUISITIONS.create(self.base_name, **(self.base_options or {}))
        self.requires = frozenset(self.base.requires) | {PROBS}

    def candidate_count(self, unlabelled: int, budget: int) -> int:
        """gamma of the pool, at least the budget; ``max_candidates`` caps it (the base's cost grows with it:
        BADGE draws gamma * N centres in up to ``max_passes`` passes over the pool, 37 s at N = 100,000 here
        and about 5e14 multiply-adds at ImageNet's 1.28 M x (1,000 + 512))."""
        count = max(budget, math.ceil(self.gamma * unlabelled))
        if self.max_candidates is not None:
            count = max(budget, min(count, self.max_candidates))
        return min(unlabelled, count)

    def select(self, ctx: SelectionContext, budget: int, rng: np.random.Generator) -> Selection:
        unlabelled = np.asarray(ctx.unlabelled, dtype=np.int64)
        if budget == 0:
            return Selection(np.empty(0, dtype=np.int64))
        want = self.candidate_count(len(unlabelled), budget)
        cand = np.asarray(self.base.select(ctx, want, rng).indices, dtype=np.int64)
        _, first = np.unique(cand, return_index=True)
        cand = cand[np.sort(first)]  # keep base order, drop repeats
        if len(cand) < budget:
            raise AcquisitionInputError(f"pcb: base {self.base_name!r} returned {len(cand)} distinct candidates for "
                                        f"a budget of {budget}; use a base that fills its budget")
        return Selection(self.balance(ctx, cand, budget, rng))

    def balance(self, ctx: SelectionContext, cand: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
        """Pseudo-class-balanced pick of ``budget`` rows from ``cand`` (in base order)."""
        num_classes = ctx.num_classes
        targets = np.asarray(ctx.labelled_targets, dtype=np.int64)
        if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
            raise AcquisitionInputError(f"pcb: labelled targets must be class ids in [0, {num_classes}), got "
                                        f"{int(targets.min())}..{int(targets.max())}")
        counts = np.bincount(targets, minlength=num_classes).astype(np.int64)
        pred = np.asarray(ctx.probs[cand]).argmax(1)
        queues = []
        for c in range(num_classes):
            members = cand[pred == c]
            queues.append(list(rng.permutation(members) if self.within_class == "random" else members))
        heads = np.zeros(num_classes, dtype=np.int64)
        sizes = np.asarray([len(q) for q in queues])
        chosen = []
        big = np.iinfo(np.int64).max
        for _ in range(budget):
            open_counts = np.where(heads < sizes, counts, big)
            c = int(np.argmin(open_counts))
            chosen.append(queues[c][heads[c]])
            heads[c] += 1
            counts[c] += 1
        return np.asarray(chosen, dtype=np.int64)
