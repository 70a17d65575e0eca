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


@dataclass
class BudgetLedger:
    """Every label is either queried (costs budget) or pseudo (free, flagged).

    ``order`` keeps labelled rows in the order they were added, which makes a
    round's training set, and so its result, independent of dict ordering.
    """

    order: list[int] = field(default_factory=list)
    targets: dict[int, int] = field(default_factory=dict)
    pseudo: set[int] = field(default_factory=set)
    spent: int = 0

    def query(self, rows: np.ndarray, oracle_labels: np.ndarray) -> None:
        for r, y in zip(rows.tolist(), oracle_labels.tolist()):
            if r in self.targets:
                raise ValueError(f"row {r} is already labelled")
            self.order.append(r)
            self.targets[r] = int(y)
        self.spent += len(rows)

    def add_pseudo(self, labels: dict[int, int]) -> None:
        for r, y in labels.items():
            if r in self.targets:
                raise ValueError(f"row {r} is already labelled")
            self.order.append(int(r))
            self.targets[int(r)] = int(y)
            self.pseudo.add(int(r))

    def labelled(self) -> np.ndarray:
        return np.asarray(self.order, dtype=np.int64)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = self.labelled()
        return rows, np.asarray([self.targets[r] for r in self.order], np.int64), \
            np.asarray([r in self.pseudo for r in self.order], bool)

    def state(self) -> dict:
        return {"order": list(self.order), "targets": [self.targets[r] for r in self.order],
                "pseudo": sorted(self.pseudo), "spent": self.spent}

    @classmethod
    def from_state(cls, state: dict) -> "BudgetLedger":
        order = [int(r) for r in state["order"]]
        return cls(order, dict(zip(order, (int(t) for t in state["targets"]))),
                   set(int(p) for p in state["pseudo"]), int(state["spent"]))
