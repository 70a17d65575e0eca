"""One active-learning run: round 0 evaluation, then select -> label -> adapt -> evaluate per round.

The run knows no method by name: it builds the acquisition strategy and the
learner(s) from the registries, and the phase tasks give each plug-in a
context holding exactly what it declared (:mod:`.contexts`). Selection and
adaptation run as Ray tasks (inside a Tune trial they land in the trial's
placement group, with a GPU when the trial has one); the big arrays travel
by object reference, so no trial copies the pool.

A method may name a *selector* learner besides its evaluated one: both are
fitted every round on the same ledger, the strategy sees the selector's
predictor, and the metrics are the evaluated learner's. A strategy may give
free labels before the round-0 fit (``bootstrap``). Every random choice
derives from ``(seed, round, phase)``, and the round state (ledger, both
predictors, history) is checkpointed after each round, so a run resumed from
any round's checkpoint yields exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import importlib
import io
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from methods.base import BOOTSTRAP, ORACLE, SOURCES, Predictor, Selection, SelectionContext
from methods.registry import ACQUISITIONS, ADAPTATIONS, load_plugins
from methods.validation import check_selection_inputs

from .budget import BudgetLedger, BudgetSchedule, as_target
from .contexts import LedgerView, TrialData, adapt_context, get, open_blackbox, selection_context, train_set
from .metrics import evaluate

__all__ = ["ActiveLearningRun", "RoundState", "SelectionError", "TrialData", "phase_rng"]

_PHASE_SELECT, _PHASE_ADAPT, _PHASE_SELECTOR, _PHASE_BOOTSTRAP = 1, 2, 3, 4
BLACKBOX_QUERIES = "blackbox_queries"


class SelectionError(ValueError):
    """A strategy returned an unusable selection; names the strategy and what was wrong."""


def phase_rng(seed: int, round_: int, phase: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(round_), int(phase)])


# ----------------------------------------------------------- round state


def _predictor_name(predictor: Predictor) -> str:
    return f"{type(predictor).__module__}:{type(predictor).__qualname__}"


def _load_predictor(name: str, arrays: dict) -> Predictor:
    module, qualname = name.split(":")
    return getattr(importlib.import_module(module), qualname).from_state(arrays)


@dataclass
class PackedPredictor:
    """A predictor as its class name and plain arrays, for crossing into a Ray task.

    A worker unpickles a task's arguments before the task body runs, so a
    predictor class from a user's plug-in file would be unknown there; packed,
    it is rebuilt after the task has loaded the plug-ins.
    """

    name: str
    state: dict

    @classmethod
    def of(cls, predictor: Predictor | None) -> "PackedPredictor | None":
        return None if predictor is None else cls(_predictor_name(predictor), predictor.state())

    def unpack(self) -> Predictor:
        return _load_predictor(self.name, self.state)


def _unpack(packed: PackedPredictor | None) -> Predictor | None:
    return None if packed is None else packed.unpack()


@dataclass
class RoundState:
    """Everything needed to continue a run after round ``round``."""

    round: int
    ledger: BudgetLedger
    predictor: Predictor
    history: list[dict] = field(default_factory=list)
    selections: list[list[int]] = field(default_factory=list)
    finished: bool = False
    selector: Predictor | None = None  # the selector learner's predictor, when the method has one

    @property
    def selecting(self) -> Predictor:
        """The predictor the strategy sees: the selector's, else the evaluated one."""
        return self.selector if self.selector is not None else self.predictor

    def to_bytes(self) -> bytes:
        meta = {"round": self.round, "ledger": self.ledger.state(), "history": self.history,
                "selections": self.selections, "finished": self.finished,
                "predictor": _predictor_name(self.predictor)}
        arrays = {f"predictor/{k}": np.asarray(v) for k, v in self.predictor.state().items()}
        if self.selector is not None:
            meta["selector"] = _predictor_name(self.selector)
            arrays.update({f"selector/{k}": np.asarray(v) for k, v in self.selector.state().items()})
        buf = io.BytesIO()
        np.savez(buf, meta=np.asarray(json.dumps(meta)), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "RoundState":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {part: {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(f"{part}/")}
                      for part in ("predictor", "selector")}
        selector = _load_predictor(meta["selector"], arrays["selector"]) if "selector" in meta else None
        return cls(meta["round"], BudgetLedger.from_state(meta["ledger"]),
                   _load_predictor(meta["predictor"], arrays["predictor"]), meta["history"], meta["selections"],
                   meta["finished"], selector)


# ------------------------------------------------------------ Ray tasks


@dataclass
class SelectRequest:
    """One ``select`` (or ``cold_start``, or ``bootstrap``) call, as shipped to its Ray task."""

    strategy: tuple[str, dict]
    round: int
    budget: int
    seed: int
    mode: str = "select"  # "select", "cold" or "bootstrap"
    plugins: tuple[str, ...] = ()


def _select(request: SelectRequest, data: TrialData, predictor: Predictor | PackedPredictor, view: LedgerView
            ) -> tuple[Selection, dict, float]:
    """Build the strategy, give it exactly its declared inputs, select, and check what it returned."""
    t0 = time.perf_counter()
    load_plugins(request.plugins)
    if isinstance(predictor, PackedPredictor):
        predictor = predictor.unpack()
    name = request.strategy[0]
    strategy = ACQUISITIONS.create(name, **request.strategy[1])
    blackbox = open_blackbox(strategy.requires, data)
    ctx = selection_context(strategy.requires, data, predictor, view, request.round, blackbox)
    rng = phase_rng(request.seed, request.round, _PHASE_BOOTSTRAP if request.mode == "bootstrap" else _PHASE_SELECT)
    if request.mode == "bootstrap":
        selection = strategy.bootstrap(ctx, rng) or Selection(np.empty(0, np.int64))
        if len(selection.indices):
            raise SelectionError(f"strategy {name!r}: a bootstrap gives free labels only; it queried "
                                 f"{len(selection.indices)} rows")
    else:
        check_selection_inputs(name, ctx, request.budget)
        choose = strategy.cold_start if request.mode == "cold" else strategy.select
        selection = choose(ctx, request.budget, rng)
    _check_selection(name, selection, ctx, request.budget)
    if blackbox is not None:
        selection.costs[BLACKBOX_QUERIES] = selection.costs.get(BLACKBOX_QUERIES, 0.0) + blackbox.queries
    return selection, ctx.extras, time.perf_counter() - t0


def _check_labels(name: str, what: str, labels: dict, num_classes: int) -> None:
    for row, label in labels.items():
        try:
            target = as_target(label)
        except ValueError as exc:
            raise SelectionError(f"strategy {name!r}: {what} of row {row}: {exc}") from None
        ok = len(target) == num_classes if isinstance(target, tuple) else 0 <= target < num_classes
        if not ok:
            raise SelectionError(f"strategy {name!r}: {what} of row {row} is {label!r}; a label is a class id in "
                                 f"[0, {num_classes}) or a 0/1 vector of length {num_classes}")


def _check_selection(name: str, sel: Selection, ctx: SelectionContext, budget: int) -> None:
    idx = np.asarray(sel.indices, dtype=np.int64)
    sel.indices = idx
    if len(np.unique(idx)) != len(idx):
        raise SelectionError(f"strategy {name!r} returned duplicate indices; each pool row may be chosen once")
    if len(idx) > budget:
        raise SelectionError(f"strategy {name!r} queried {len(idx)} rows but the round's budget is {budget}")
    pool_size = len(ctx.unlabelled) + len(ctx.labelled)
    queried, pseudo = set(idx.tolist()), set(map(int, sel.pseudo_labels))
    transient = set(map(int, sel.transient_labels or {}))
    everything = queried | pseudo | transient
    if everything and (min(everything) < 0 or max(everything) >= pool_size):
        raise SelectionError(f"strategy {name!r} returned row ids outside the pool")
    taken = everything & set(ctx.labelled.tolist())
    if taken:
        raise SelectionError(f"strategy {name!r} chose already-labelled rows {sorted(taken)[:5]}")
    for a, b, what in ((queried, pseudo, "queried and pseudo-labelled"), (queried, transient, "queried and mined"),
                       (pseudo, transient, "gave permanent and transient labels to")):
        if a & b:
            raise SelectionError(f"strategy {name!r} both {what} the same rows {sorted(a & b)[:5]}")
    _check_labels(name, "pseudo label", sel.pseudo_labels, ctx.num_classes)
    _check_labels(name, "transient label", sel.transient_labels or {}, ctx.num_classes)


@dataclass
class AdaptRequest:
    """One ``fit`` call, as shipped to its Ray task."""

    learner: tuple[str, dict]
    round: int
    seed: int
    phase: int = _PHASE_ADAPT
    queried_only: bool = False  # train on the oracle's labels alone
    plugins: tuple[str, ...] = ()


def _adapt(request: AdaptRequest, data: TrialData, ledger: BudgetLedger, previous: PackedPredictor | None
           ) -> tuple[PackedPredictor, float, float]:
    """Fit a learner on the ledger's rows; returns the packed predictor, black-box queries spent, seconds."""
    import torch

    t0 = time.perf_counter()
    load_plugins(request.plugins)
    previous = _unpack(previous)
    learner = ADAPTATIONS.create(request.learner[0], **request.learner[1])
    blackbox = open_blackbox(learner.requires, data)
    ctx = adapt_context(learner.requires, data, ledger, request.round, previous, blackbox)
    rng = phase_rng(request.seed, request.round, request.phase)
    torch.manual_seed(int(phase_rng(request.seed, request.round, request.phase).integers(2**31)))
    predictor = learner.fit(train_set(data, ledger, request.queried_only), ctx, rng)
    queries = float(blackbox.queries if blackbox is not None else 0)
    queries += float(getattr(predictor, "shared_queries", 0.0))  # a decoder trained once for several trials
    return PackedPredictor.of(predictor), queries, time.perf_counter() - t0


def _predict_images(predictor: PackedPredictor, images, split: str, plugins: tuple[str, ...] = (),
                    rows: np.ndarray | None = None) -> np.ndarray:
    load_plugins(plugins)
    return predictor.unpack().predict_proba_images(images, split, rows)


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
    selector: tuple[str, dict] | None = None  # a learner fitted only for the strategy to select with
    adaptation_labels: str = "all"  # "queried": the evaluated learner trains on the oracle's labels alone
    selector_labels: str = "all"

    def __post_init__(self):
        load_plugins(self.plugins)
        self._pool_labels = np.asarray(get(self.data.pool_labels))
        self._oracle = None if self.data.oracle_labels is None else np.asarray(get(self.data.oracle_labels))
        self.pool_size = len(self._pool_labels)
        self.budgets = self.schedule.resolve(self.pool_size, self.data.num_classes, self.rounds_total)
        self._bootstraps = ACQUISITIONS.create(self.acquisition[0], **self.acquisition[1]).has_bootstrap

    def _call(self, fn: Callable, *args, gpus: float | None = None):
        """Run a phase as a Ray task (remote) or in-process (unit tests, benchmarks)."""
        if not self.remote:
            return fn(*args)
        import ray

        gpus = self.num_gpus if gpus is None else gpus
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=gpus, max_retries=0)(fn)
        return ray.get(task.remote(*args))

    def _gpus_for(self, learner: str) -> float:
        """The trial's GPU share goes to an adapt task only when its learner trains on a GPU."""
        return self.num_gpus if getattr(ADAPTATIONS.get(learner), "num_gpus", 0.0) > 0 else 0.0

    @property
    def adapt_gpus(self) -> float:
        return self._gpus_for(self.adaptation[0])

    def _fit(self, learner: tuple[str, dict], phase: int, queried_only: bool, ledger: BudgetLedger, round_: int,
             previous: Predictor | None) -> tuple[Predictor, float, float]:
        request = AdaptRequest(learner, round_, self.seed, phase, queried_only, self.plugins)
        packed, queries, seconds = self._call(_adapt, request, self.data, ledger, PackedPredictor.of(previous),
                                              gpus=self._gpus_for(learner[0]))
        return packed.unpack(), queries, seconds

    def _fit_models(self, ledger: BudgetLedger, round_: int, previous: RoundState | None
                    ) -> tuple[Predictor, Predictor | None, float]:
        """Fit the evaluated learner (and the selector, if any); their black-box queries go to the ledger."""
        t0 = time.perf_counter()
        predictor, queries, _ = self._fit(self.adaptation, _PHASE_ADAPT, self.adaptation_labels == "queried",
                                          ledger, round_, previous.predictor if previous else None)
        selector = None
        if self.selector is not None:
            selector, more, _ = self._fit(self.selector, _PHASE_SELECTOR, self.selector_labels == "queried",
                                          ledger, round_, previous.selector if previous else None)
            queries += more
            if round_ == 0:  # once, before any round is written; the learners do not change their classes later
                self._check_selector_classes(predictor, selector)
        ledger.add_cost(BLACKBOX_QUERIES, queries)
        return predictor, selector, time.perf_counter() - t0

    def _classes_of(self, predictor: Predictor) -> int:
        """How many classes a predictor scores (one test row, through the pixels for an image predictor)."""
        if predictor.on_pixels:
            return self._call(_predict_images, PackedPredictor.of(predictor), self.data.images, "test",
                              self.plugins, np.zeros(1, np.int64), gpus=self.adapt_gpus).shape[1]
        return predictor.predict_proba(np.asarray(get(self.data.test_features)[:1])).shape[1]

    def _check_selector_classes(self, predictor: Predictor, selector: Predictor) -> None:
        """A selector must score the evaluated learner's class list, or its picks mean other classes."""
        widths = {"selector": self._classes_of(selector), "adaptation": self._classes_of(predictor)}
        if set(widths.values()) != {self.data.num_classes}:
            raise SelectionError(
                f"selector {self.selector[0]!r} scores {widths['selector']} classes and adaptation "
                f"{self.adaptation[0]!r} {widths['adaptation']}, but the dataset has {self.data.num_classes} "
                f"({', '.join(self.data.class_names[:5])}{', ...' if len(self.data.class_names) > 5 else ''}); "
                "both learners must score the dataset's class list -- check their options and plug-ins")

    def _select_now(self, request: SelectRequest, predictor: Predictor, ledger: BudgetLedger
                    ) -> tuple[Selection, dict, float]:
        return self._call(_select, request, self.data, PackedPredictor.of(predictor),
                          LedgerView.of(ledger, self.pool_size))

    def _evaluate(self, predictor: Predictor, ledger: BudgetLedger, round_: int) -> tuple[dict, float]:
        t0 = time.perf_counter()
        if predictor.on_pixels:
            probs = self._call(_predict_images, PackedPredictor.of(predictor), self.data.images, "test", self.plugins,
                               gpus=self.adapt_gpus)
        else:
            probs = predictor.predict_proba(get(self.data.test_features))
        metrics = evaluate(probs, np.asarray(get(self.data.test_labels)), self.data.task)
        metrics.update({"round": float(round_), **ledger_metrics(ledger, self._pool_labels)})
        return metrics, time.perf_counter() - t0

    def _bootstrap(self, ledger: BudgetLedger, predictor: Predictor) -> None:
        """Free labels from the strategy before the round-0 fit (e.g. zero-shot top-K per class)."""
        request = SelectRequest(self.acquisition, 0, 0, self.seed, "bootstrap", self.plugins)
        selection, _, _ = self._select_now(request, predictor, ledger)
        apply_selection(ledger, selection, self._pool_labels, source=BOOTSTRAP, oracle_labels=self._oracle)

    def initial_state(self) -> tuple[RoundState, dict]:
        ledger = BudgetLedger()
        t0 = time.perf_counter()
        predictor, selector, adapt_work = self._fit_models(ledger, 0, None)
        if self._bootstraps:
            self._bootstrap(ledger, selector or predictor)
            predictor, selector, adapt_work = self._fit_models(ledger, 0, None)
        t_adapt = time.perf_counter() - t0
        metrics, t_eval = self._evaluate(predictor, ledger, 0)
        metrics.update({"seconds_select": 0.0, "seconds_adapt": t_adapt, "seconds_evaluate": t_eval,
                        "seconds_select_work": 0.0, "seconds_adapt_work": adapt_work,
                        "seconds_round": t_adapt + t_eval})
        state = RoundState(0, ledger, predictor, [metrics], [[]], finished=self.rounds_total == 0, selector=selector)
        return state, metrics

    def _request(self, r: int) -> SelectRequest:
        strategy, mode = self.acquisition, "select"
        if r == 1 and self.cold_start != "none":
            mode = "cold"
            if self.cold_start != "method":
                strategy = (self.cold_start, {})
        return SelectRequest(strategy, r, self.budgets[r - 1], self.seed, mode, self.plugins)

    def step(self, state: RoundState) -> tuple[RoundState, dict, list[int]]:
        """Run round ``state.round + 1`` and return the new state, its metrics and the queried rows."""
        r = state.round + 1
        t0 = time.perf_counter()
        selection, extras, select_work = self._select_now(self._request(r), state.selecting, state.ledger)
        t_select = time.perf_counter() - t0
        ledger = BudgetLedger.from_state(state.ledger.state())
        apply_selection(ledger, selection, self._pool_labels, oracle_labels=self._oracle)
        t1 = time.perf_counter()
        predictor, selector, adapt_work = self._fit_models(ledger, r, state)
        t_adapt = time.perf_counter() - t1
        metrics, t_eval = self._evaluate(predictor, ledger, r)
        # *_work is time inside the task; the rest of seconds_select/_adapt is Ray dispatch overhead.
        metrics.update({"seconds_select": t_select, "seconds_adapt": t_adapt, "seconds_evaluate": t_eval,
                        "seconds_select_work": select_work, "seconds_adapt_work": adapt_work,
                        "seconds_round": time.perf_counter() - t0, **extras_metrics(extras)})
        queried = selection.indices.tolist()
        new_state = RoundState(r, ledger, predictor, state.history + [metrics], state.selections + [queried],
                               finished=r >= self.rounds_total, selector=selector)
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


# ------------------------------------------------------------ ledger bookkeeping


def apply_selection(ledger: BudgetLedger, selection: Selection, pool_labels: np.ndarray, source: str | None = None,
                    oracle_labels: np.ndarray | None = None) -> None:
    """Spend the selection on the ledger: oracle labels (noisy ones where the pool has them, the truth kept
    beside each error), free labels, transient labels, costs."""
    rows = selection.indices
    if oracle_labels is None:
        ledger.query(rows, pool_labels[rows])
    else:
        ledger.query(rows, oracle_labels[rows], pool_labels[rows])
    if selection.pseudo_labels:
        ledger.add_pseudo(selection.pseudo_labels, **({"source": source} if source else {}))
    if selection.transient_labels is not None:
        ledger.replace_transient(selection.transient_labels, **({"source": source} if source else {}))
    for name, amount in selection.costs.items():
        ledger.add_cost(name, amount)


def ledger_metrics(ledger: BudgetLedger, pool_labels: np.ndarray) -> dict[str, float]:
    """Labels by source, the pseudo labels' precision against the truth, and every cost counter."""
    rows, targets, pseudo = ledger.arrays()
    sources = ledger.sources_of(rows)
    correct = _matches(targets, pool_labels[rows])
    oracle_rows = max(1, int((~pseudo).sum()))
    transient = np.isin(rows, list(ledger.transient))
    out = {"labels_spent": float(ledger.spent), "labels_total": float(len(rows)), "pseudo_labels": float(pseudo.sum()),
           "pseudo_precision": float(correct[pseudo].mean()) if pseudo.any() else float("nan"),
           "labels_transient": float(transient.sum())}
    if transient.any():  # the transient set in force, whoever gave it (a bootstrap, then each round's mining)
        out["precision_transient"] = float(correct[transient].mean())
    if ledger.oracle_errors:  # a noisy oracle: the share of its answers that were wrong
        out["oracle_noise"] = float(len(ledger.oracle_errors) / oracle_rows)
    for source in SOURCES:
        mine = sources == source
        if source != ORACLE and mine.any():
            out[f"labels_{source}"] = float(mine.sum())
            out[f"precision_{source}"] = float(correct[mine].mean())
    out.update({f"cost_{name}": float(value) for name, value in sorted(ledger.costs.items())})
    return out


def _matches(targets: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Whether each label equals the truth (a whole 0/1 vector for multi-label rows)."""
    if len(targets) == 0:
        return np.zeros(0, bool)
    equal = np.asarray(targets) == np.asarray(truth)
    return equal.all(axis=1) if equal.ndim > 1 else equal


def extras_metrics(extras: dict) -> dict[str, float]:
    """A strategy's numeric notes (``ctx.extras``) as round metrics ``select_<key>``; other notes are dropped
    from MLflow but kept in the round's history under ``notes``."""
    numeric = {f"select_{k}": float(v) for k, v in extras.items()
               if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}
    notes = {k: str(v) for k, v in extras.items() if f"select_{k}" not in numeric}
    return {**numeric, **({"notes": notes} if notes else {})}
