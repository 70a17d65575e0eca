"""Budget schedules (how many labels each round may query) and the ledger that spends them.

The papers use five ways to say "how many labels": a fixed count per round,
a fraction of the pool per round (CEC: 1 %), a multiple of the number of
classes per round (CB+SQ: B = C), k shots per class, and cumulative targets
(VALIANT: 10 %, 20 %, ..., 100 % of the pool). All of them resolve, for a given
pool and class count, to a list of per-round increments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from methods.base import MINED, ORACLE, SELECTIVE, SOURCES


class BudgetError(ValueError):
    """A budget that cannot be spent on this pool; the message says what to change."""


class _Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def increments(self, pool_size: int, num_classes: int, rounds: int) -> list[int]:
        raise NotImplementedError

    def resolve(self, pool_size: int, num_classes: int, rounds: int, already: int = 0) -> list[int]:
        """Per-round query counts, checked against the unlabelled pool."""
        if pool_size <= 0:
            raise BudgetError("the pool is empty: there is nothing to label (check the dataset's train split)")
        if rounds <= 0:
            raise BudgetError(f"rounds must be at least 1, got {rounds}")
        steps = self.increments(pool_size, num_classes, rounds)
        if any(s <= 0 for s in steps):
            raise BudgetError(f"budget {self.describe()} gives a round with {min(steps)} labels on a pool of "
                              f"{pool_size}; every round must query at least one label")
        total = already + sum(steps)
        if total > pool_size:
            raise BudgetError(
                f"budget {self.describe()} asks for {total} labels over {rounds} rounds"
                f"{f' (after {already} cold-start labels)' if already else ''} but the pool has only {pool_size} "
                "images; lower the budget or the number of rounds"
            )
        return steps

    def describe(self) -> str:
        return f"{self.kind}({', '.join(f'{k}={v}' for k, v in self.model_dump().items() if k != 'kind')})"


class PerRound(_Schedule):
    kind: Literal["per_round"] = "per_round"
    count: int = Field(gt=0)

    def increments(self, pool_size, num_classes, rounds):
        return [self.count] * rounds


class PoolFraction(_Schedule):
    kind: Literal["fraction"] = "fraction"
    fraction: float = Field(gt=0, le=1)

    def increments(self, pool_size, num_classes, rounds):
        return [max(1, round(self.fraction * pool_size))] * rounds


class PerClass(_Schedule):
    kind: Literal["per_class"] = "per_class"
    multiple: float = Field(gt=0)

    def increments(self, pool_size, num_classes, rounds):
        return [max(1, round(self.multiple * num_classes))] * rounds


class Shots(_Schedule):
    """Cumulative k-shot targets, e.g. [1, 2, 4, 8, 16]: round r ends with shots[r] x C labels."""

    kind: Literal["shots"] = "shots"
    shots: list[int]

    @model_validator(mode="after")
    def _increasing(self):
        if not self.shots or any(b <= a for a, b in zip([0] + self.shots, self.shots)):
            raise ValueError(f"shots must be positive and strictly increasing, got {self.shots}")
        return self

    def increments(self, pool_size, num_classes, rounds):
        if rounds != len(self.shots):
            raise BudgetError(f"shots {self.shots} define {len(self.shots)} rounds but the sweep asks for {rounds}")
        totals = [k * num_classes for k in self.shots]
        return [b - a for a, b in zip([0] + totals, totals)]


class Cumulative(_Schedule):
    """Cumulative targets as fractions of the pool (0.1, 0.2, ...) or absolute counts."""

    kind: Literal["cumulative"] = "cumulative"
    targets: list[float]

    @model_validator(mode="after")
    def _increasing(self):
        if not self.targets or any(b <= a for a, b in zip([0] + self.targets, self.targets)):
            raise ValueError(f"cumulative targets must be positive and strictly increasing, got {self.targets}")
        return self

    def increments(self, pool_size, num_classes, rounds):
        if rounds != len(self.targets):
            raise BudgetError(f"cumulative targets {self.targets} define {len(self.targets)} rounds, "
                              f"the sweep asks for {rounds}")
        totals = [math.floor(t * pool_size) if t <= 1 else int(t) for t in self.targets]
        return [b - a for a, b in zip([0] + totals, totals)]


BudgetSchedule = Annotated[Union[PerRound, PoolFraction, PerClass, Shots, Cumulative], Field(discriminator="kind")]


Target = int | tuple[int, ...]  # a class id, or a 0/1 label vector of a multi-label task


def as_target(label) -> Target:
    """A label as the ledger stores it: an int, or a tuple of 0/1 ints for a multi-label row."""
    array = np.asarray(label)
    if array.ndim == 0:
        return int(array)
    if array.ndim == 1 and np.isin(array, (0, 1)).all():
        return tuple(int(v) for v in array)
    raise ValueError(f"a label must be a class id or a 0/1 label vector, got {label!r}")


@dataclass
class BudgetLedger:
    """The single truth of every label and cost in a run.

    Each labelled row has a target (a class id or a 0/1 vector) and a source:
    ``oracle`` (queried: costs budget), ``selective`` (permanent free pseudo
    label), ``bootstrap``, or ``mined``. *Transient* rows (``transient``) are
    free labels that the next selection replaces wholesale and that may
    still be queried; the others are permanent. ``costs`` counts what a run
    spent besides labels (black-box queries, anything a method reports).
    ``order`` keeps rows in the order they were added, which makes a round's
    training set, and so its result, independent of dict ordering.
    """

    order: list[int] = field(default_factory=list)
    targets: dict[int, Target] = field(default_factory=dict)
    sources: dict[int, str] = field(default_factory=dict)
    transient: set[int] = field(default_factory=set)
    spent: int = 0
    costs: dict[str, float] = field(default_factory=dict)
    oracle_errors: dict[int, Target] = field(default_factory=dict)  # row -> true label, where the oracle erred

    @property
    def pseudo(self) -> set[int]:
        return {r for r, s in self.sources.items() if s != ORACLE}

    def _add(self, row: int, label, source: str) -> None:
        if row in self.targets:
            raise ValueError(f"row {row} is already labelled ({self.sources[row]})")
        self.order.append(row)
        self.targets[row] = as_target(label)
        self.sources[row] = source

    def _drop(self, rows) -> None:
        rows = set(rows)
        self.order = [r for r in self.order if r not in rows]
        for r in rows:
            del self.targets[r], self.sources[r]
            self.oracle_errors.pop(r, None)
        self.transient -= rows

    def query(self, rows: np.ndarray, oracle_labels: np.ndarray, truth: np.ndarray | None = None) -> None:
        """Oracle labels for ``rows``; a row holding a transient pseudo label gets the oracle's label instead.

        ``truth`` (when the oracle is noisy) records, for every row the oracle got wrong, the true label,
        so a study of label noise can see what was queried, what the oracle said and what was so.
        """
        rows = [int(r) for r in np.asarray(rows).tolist()]
        self._drop(r for r in rows if r in self.transient)
        for k, (r, y) in enumerate(zip(rows, oracle_labels)):
            self._add(r, y, ORACLE)
            if truth is not None and as_target(truth[k]) != self.targets[r]:
                self.oracle_errors[r] = as_target(truth[k])
        self.spent += len(rows)

    def add_pseudo(self, labels: dict, source: str = SELECTIVE) -> None:
        """Permanent free labels (selective querying, a bootstrap): never queried, never replaced."""
        self._drop(r for r in map(int, labels) if r in self.transient)
        for r, y in labels.items():
            self._add(int(r), y, source)

    def replace_transient(self, labels: dict, source: str = MINED) -> None:
        """Drop every transient label in force and put ``labels`` in their place."""
        self._drop(list(self.transient))
        for r, y in labels.items():
            self._add(int(r), y, source)
            self.transient.add(int(r))

    def add_cost(self, name: str, amount: float) -> None:
        if amount:
            self.costs[name] = self.costs.get(name, 0.0) + float(amount)

    def labelled(self) -> np.ndarray:
        """Every labelled row, transient ones included (what learners train on)."""
        return np.asarray(self.order, dtype=np.int64)

    def permanent(self) -> np.ndarray:
        """Rows labelled for good: strategies may not pick them again."""
        return np.asarray([r for r in self.order if r not in self.transient], dtype=np.int64)

    def targets_of(self, rows) -> np.ndarray:
        """Targets as an array: (n,) class ids, or (n, C) 0/1 for multi-label rows."""
        values = [self.targets[int(r)] for r in rows]
        return np.asarray(values, np.int64) if values else np.zeros(0, np.int64)

    def sources_of(self, rows) -> np.ndarray:
        return np.asarray([self.sources[int(r)] for r in rows], dtype=str)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, targets, is_pseudo) of every labelled row, in the order they were added."""
        rows = self.labelled()
        return rows, self.targets_of(rows), np.asarray([self.sources[r] != ORACLE for r in self.order], bool)

    def counts(self) -> dict[str, int]:
        """How many labelled rows each source holds."""
        out = {s: 0 for s in SOURCES}
        for s in self.sources.values():
            out[s] += 1
        return out

    def state(self) -> dict:
        return {"order": list(self.order), "targets": [self.targets[r] for r in self.order],
                "sources": [self.sources[r] for r in self.order], "transient": sorted(self.transient),
                "spent": self.spent, "costs": dict(self.costs),
                **({"oracle_errors": [[r, t] for r, t in sorted(self.oracle_errors.items())]}
                   if self.oracle_errors else {})}

    @classmethod
    def from_state(cls, state: dict) -> "BudgetLedger":
        """Also reads the first version's state (``pseudo`` rows, int targets), so old trial stores resume."""
        order = [int(r) for r in state["order"]]
        targets = {r: as_target(t) for r, t in zip(order, state["targets"])}
        if "sources" in state:
            sources = dict(zip(order, state["sources"]))
        else:
            pseudo = set(int(p) for p in state["pseudo"])
            sources = {r: SELECTIVE if r in pseudo else ORACLE for r in order}
        return cls(order, targets, sources, set(int(r) for r in state.get("transient", ())), int(state["spent"]),
                   {k: float(v) for k, v in state.get("costs", {}).items()},
                   {int(r): as_target(t) for r, t in state.get("oracle_errors", ())})
