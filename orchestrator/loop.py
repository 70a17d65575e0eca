"""One active-learning run: round 0 evaluation, then select -> label -> adapt -> evaluate per round.

The run knows no method by name: it builds the acquisition strategy and the
learner from the registries, asks them what inputs they need, and computes
only those. Selection and adaptation run as Ray tasks (inside a Tune trial
they land in the trial's placement group, with a GPU when the trial has one);
the big arrays travel by object reference, so no trial copies the pool.

Every random choice derives from ``(seed, round, phase)``, and the round
state (ledger, predictor weights, history) is checkpointed after each round,
so a run resumed from any round's checkpoint yields exactly the metrics of
an uninterrupted run.
"""

from __future__ import annotations

import importlib
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from methods.base import (EMBEDDINGS, POOL_FEATURES, PREDICTOR, PROBS, TEXT_FEATURES, AdaptContext, ImageAccess,
                          ImagePredictor, Predictor, Selection, SelectionContext, TrainSet)
from methods.registry import ACQUISITIONS, ADAPTATIONS, load_plugins
from methods.validation import check_selection_inputs

from .budget import BudgetLedger, BudgetSchedule
from .metrics import evaluate

_PHASE_SELECT, _PHASE_ADAPT = 1, 2


class SelectionError(ValueError):
    """A strategy returned an unusable selection; names the strategy and what was wrong."""


@dataclass
class TrialData:
    """A trial's arrays, each either a numpy array or a Ray ObjectRef to one."""

    pool_features: Any
    pool_labels: Any
    test_features: Any
    test_labels: Any
    text_features: Any  # (C, D) class embeddings (template ensemble)
    task: str
    num_classes: int
    metric: str  # the dataset's default metric key
    # What prompt learners need to drive the encoder's towers themselves (see methods.base.AdaptContext).
    encoder: str = "tiny-clip"
    precision: str = "fp32"
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    descriptions: dict[str, list[str]] = field(default_factory=dict)
    images: ImageAccess | None = None  # pixels of pool and test, for learners that adapt the image path


def _get(value):
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def phase_rng(seed: int, round_: int, phase: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(round_), int(phase)])


# ----------------------------------------------------------- round state


@dataclass
class RoundState:
    """Everything needed to continue a run after round ``round``."""

    round: int
    ledger: BudgetLedger
    predictor: Predictor
    history: list[dict] = field(default_factory=list)
    selections: list[list[int]] = field(default_factory=list)
    finished: bool = False

    def to_bytes(self) -> bytes:
        meta = {"round": self.round, "ledger": self.ledger.state(), "history": self.history,
                "selections": self.selections, "finished": self.finished,
                "predictor": f"{type(self.predictor).__module__}:{type(self.predictor).__qualname__}"}
        arrays = {f"predictor/{k}": np.asarray(v) for k, v in self.predictor.state().items()}
        buf = io.BytesIO()
        np.savez(buf, meta=np.asarray(json.dumps(meta)), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "RoundState":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("predictor/")}
        module, qualname = meta["predictor"].split(":")
        predictor_cls = getattr(importlib.import_module(module), qualname)
        return cls(meta["round"], BudgetLedger.from_state(meta["ledger"]), predictor_cls.from_state(arrays),
                   meta["history"], meta["selections"], meta["finished"])


# ------------------------------------------------------------ Ray tasks


def _select(strategy_spec: tuple[str, dict], pool_features_ref, predictor: Predictor, labelled: np.ndarray,
            labelled_targets: np.ndarray, pool_size: int, num_classes: int, text_features, round_: int,
            budget: int, seed: int, plugins: tuple[str, ...] = (), cold: bool = False,
            images: ImageAccess | None = None) -> tuple[Selection, float]:
    """Build the strategy, compute only its declared inputs, and select.

    An image-path predictor (VPT, MaPLe) scores the pool by re-encoding its
    pixels here, inside the task that holds the trial's GPU.
    """
    t0 = time.perf_counter()
    load_plugins(plugins)
    strategy = ACQUISITIONS.create(strategy_spec[0], **strategy_spec[1])
    needs = strategy.requires
    features = _get(pool_features_ref) if needs & {POOL_FEATURES, PROBS, EMBEDDINGS, PREDICTOR} else None
    on_pixels = isinstance(predictor, ImagePredictor)
    mask = np.ones(pool_size, bool)
    mask[labelled] = False
    probs = embeddings = None
    if PROBS in needs:
        probs = predictor.predict_proba_images(images, "pool") if on_pixels else predictor.predict_proba(features)
    if EMBEDDINGS in needs:
        embeddings = predictor.embed_images(images, "pool") if on_pixels else predictor.embed(features)
    ctx = SelectionContext(
        round=round_, num_classes=num_classes, unlabelled=np.flatnonzero(mask), labelled=labelled,
        labelled_targets=labelled_targets,
        pool_features=features if POOL_FEATURES in needs else None,
        probs=probs, embeddings=embeddings,
        text_features=_get(text_features) if TEXT_FEATURES in needs else None,
        predictor=predictor if PREDICTOR in needs else None,
    )
    check_selection_inputs(strategy_spec[0], ctx, budget)
    choose = strategy.cold_start if cold else strategy.select
    selection = choose(ctx, budget, phase_rng(seed, round_, _PHASE_SELECT))
    _check_selection(strategy_spec[0], selection, ctx, budget)
    return selection, time.perf_counter() - t0


def _check_selection(name: str, sel: Selection, ctx: SelectionContext, budget: int) -> None:
    idx = np.asarray(sel.indices, dtype=np.int64)
    sel.indices = idx
    if len(np.unique(idx)) != len(idx):
        raise SelectionError(f"strategy {name!r} returned duplicate indices; each pool row may be chosen once")
    taken = set(ctx.labelled.tolist())
    chosen = set(idx.tolist()) | set(map(int, sel.pseudo_labels))
    if chosen & taken:
        raise SelectionError(f"strategy {name!r} chose already-labelled rows {sorted(chosen & taken)[:5]}")
    if set(idx.tolist()) & set(map(int, sel.pseudo_labels)):
        raise SelectionError(f"strategy {name!r} both queried and pseudo-labelled the same rows")
    if len(idx) > budget:
        raise SelectionError(f"strategy {name!r} queried {len(idx)} rows but the round's budget is {budget}")
    if idx.size and (idx.min() < 0 or idx.max() >= len(ctx.unlabelled) + len(ctx.labelled)):
        raise SelectionError(f"strategy {name!r} returned row ids outside the pool")


def _adapt(learner_spec: tuple[str, dict], train: TrainSet, ctx: AdaptContext, seed: int,
           plugins: tuple[str, ...] = ()) -> tuple[Predictor, float]:
    import torch

    t0 = time.perf_counter()
    load_plugins(plugins)
    learner = ADAPTATIONS.create(learner_spec[0], **learner_spec[1])
    torch.manual_seed(int(phase_rng(seed, ctx.round, _PHASE_ADAPT).integers(2**31)))
    predictor = learner.fit(train, ctx, phase_rng(seed, ctx.round, _PHASE_ADAPT))
    return predictor, time.perf_counter() - t0


def _predict_images(predictor: ImagePredictor, images: ImageAccess, split: str) -> np.ndarray:
    return predictor.predict_proba_images(images, split)


# ------------------------------------------------------------ the run


@dataclass
class ActiveLearningRun:
    """A fully resolved trial: method, budget, seed, data. ``rounds()`` yields one result per round."""

    acquisition: tuple[str, dict]
    adaptation: tuple[str, dict]
    schedule: BudgetSchedule
    rounds_total: int
    seed: int
    data: TrialData
    cold_start: str = "none"
    remote: bool = True
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    plugins: tuple[str, ...] = ()

    def __post_init__(self):
        load_plugins(self.plugins)
        self._pool_labels = np.asarray(_get(self.data.pool_labels))
        self.pool_size = len(self._pool_labels)
        self.budgets = self.schedule.resolve(self.pool_size, self.data.num_classes, self.rounds_total)

    def _call(self, fn: Callable, *args, gpus: float | None = None):
        """Run a phase as a Ray task (remote) or in-process (unit tests, benchmarks)."""
        if not self.remote:
            return fn(*args)
        import ray

        gpus = self.num_gpus if gpus is None else gpus
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=gpus, max_retries=0)(fn)
        return ray.get(task.remote(*args))

    @property
    def adapt_gpus(self) -> float:
        """The trial's GPU share goes to the adapt task only when the learner trains on a GPU."""
        return self.num_gpus if getattr(ADAPTATIONS.get(self.adaptation[0]), "num_gpus", 0.0) > 0 else 0.0

    def _adapt_now(self, ledger: BudgetLedger, round_: int, previous: Predictor | None = None
                   ) -> tuple[Predictor, float]:
        rows, targets, pseudo = ledger.arrays()
        pool = _get(self.data.pool_features)
        train = TrainSet(np.asarray(pool[rows], dtype=np.float32), targets, pseudo, rows=rows)
        d = self.data
        ctx = AdaptContext(d.num_classes, round_, np.asarray(_get(d.text_features)), encoder=d.encoder,
                           precision=d.precision, class_names=list(d.class_names), templates=list(d.templates),
                           descriptions=dict(d.descriptions), images=d.images, previous=previous)
        return self._call(_adapt, self.adaptation, train, ctx, self.seed, self.plugins, gpus=self.adapt_gpus)

    def _evaluate(self, predictor: Predictor, ledger: BudgetLedger, round_: int) -> tuple[dict, float]:
        t0 = time.perf_counter()
        if isinstance(predictor, ImagePredictor):
            probs = self._call(_predict_images, predictor, self.data.images, "test", gpus=self.adapt_gpus)
        else:
            probs = predictor.predict_proba(_get(self.data.test_features))
        metrics = evaluate(probs, np.asarray(_get(self.data.test_labels)), self.data.task)
        rows, targets, pseudo = ledger.arrays()
        truth = self._pool_labels[rows]
        metrics.update({
            "round": float(round_),
            "labels_spent": float(ledger.spent),
            "labels_total": float(len(rows)),
            "pseudo_labels": float(pseudo.sum()),
            "pseudo_precision": float((targets[pseudo] == truth[pseudo]).mean()) if pseudo.any() else float("nan"),
        })
        return metrics, time.perf_counter() - t0

    def initial_state(self) -> tuple[RoundState, dict]:
        ledger = BudgetLedger()
        t0 = time.perf_counter()
        predictor, adapt_work = self._adapt_now(ledger, 0)
        t_adapt = time.perf_counter() - t0
        metrics, t_eval = self._evaluate(predictor, ledger, 0)
        metrics.update({"seconds_select": 0.0, "seconds_adapt": t_adapt, "seconds_evaluate": t_eval,
                        "seconds_select_work": 0.0, "seconds_adapt_work": adapt_work,
                        "seconds_round": t_adapt + t_eval})
        state = RoundState(0, ledger, predictor, [metrics], [[]], finished=self.rounds_total == 0)
        return state, metrics

    def step(self, state: RoundState) -> tuple[RoundState, dict, list[int]]:
        """Run round ``state.round + 1`` and return the new state, its metrics and the queried rows."""
        r = state.round + 1
        t0 = time.perf_counter()
        strategy, cold = self.acquisition, False
        if r == 1 and self.cold_start != "none":
            cold = True
            if self.cold_start != "method":
                strategy = (self.cold_start, {})
        labelled, targets, _ = state.ledger.arrays()
        selection, select_work = self._call(
            _select, strategy, self.data.pool_features, state.predictor, labelled, targets, self.pool_size,
            self.data.num_classes, self.data.text_features, r, self.budgets[r - 1], self.seed, self.plugins, cold,
            self.data.images)
        t_select = time.perf_counter() - t0
        ledger = BudgetLedger.from_state(state.ledger.state())
        ledger.query(selection.indices, self._pool_labels[selection.indices])
        ledger.add_pseudo({int(k): int(v) for k, v in selection.pseudo_labels.items()})
        t1 = time.perf_counter()
        predictor, adapt_work = self._adapt_now(ledger, r, previous=state.predictor)
        t_adapt = time.perf_counter() - t1
        metrics, t_eval = self._evaluate(predictor, ledger, r)
        # *_work is time inside the task; the rest of seconds_select/_adapt is Ray dispatch overhead.
        metrics.update({"seconds_select": t_select, "seconds_adapt": t_adapt, "seconds_evaluate": t_eval,
                        "seconds_select_work": select_work, "seconds_adapt_work": adapt_work,
                        "seconds_round": time.perf_counter() - t0})
        queried = selection.indices.tolist()
        new_state = RoundState(r, ledger, predictor, state.history + [metrics], state.selections + [queried],
                               finished=r >= self.rounds_total)
        return new_state, metrics, queried

    def rounds(self, resume: RoundState | None = None) -> Iterator[tuple[RoundState, dict, list[int]]]:
        """Yield (state, metrics, queried rows) for every round not yet in ``resume``."""
        state = resume
        if state is None:
            state, metrics = self.initial_state()
            yield state, metrics, []
        while state.round < self.rounds_total:
            state, metrics, queried = self.step(state)
            yield state, metrics, queried
