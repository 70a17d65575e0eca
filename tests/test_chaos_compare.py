"""``benchmarks/chaos.py`` judges a faulted sweep by its comparison: it must count what differs, and only that.

The chaos run itself takes minutes (its figures are in the README); these pin the arithmetic it reports.
"""

import math
import subprocess
import sys

from benchmarks.chaos import compare
from tests.conftest import ROOT

NAN = math.nan


def _run(top1: list[float], rounds: list[int] | None = None) -> dict:
    rounds = list(range(len(top1))) if rounds is None else rounds
    return {"round": [(r, float(r)) for r in rounds], "top1": list(zip(rounds, top1)),
            "pseudo_precision": [(r, NAN) for r in rounds]}


def test_identical_runs_count_as_identical_even_with_nan_metrics():
    clean = {"a": [_run([0.5, 0.6])], "b": [_run([0.4, 0.7])]}
    faulted = {"a": [_run([0.5, 0.6])], "b": [_run([0.4, 0.7])]}
    assert compare(clean, faulted) == {"runs": 2, "identical": 2, "rounds_lost": 0, "runs_duplicated": 0,
                                       "rounds_duplicated": 0}


def test_a_changed_value_a_lost_round_a_duplicated_round_and_run_are_each_counted():
    clean = {"a": [_run([0.5, 0.6, 0.7])], "b": [_run([0.4, 0.7])], "c": [_run([0.1])]}
    faulted = {"a": [_run([0.5, 0.6, 0.8])],                      # one value differs
               "b": [_run([0.4, 0.4, 0.7], rounds=[0, 0, 1]), _run([0.4, 0.7])],  # a round and a run twice
               }                                                  # "c" lost altogether
    assert compare(clean, faulted) == {"runs": 3, "identical": 0, "rounds_lost": 1, "runs_duplicated": 1,
                                       "rounds_duplicated": 1}
    partial = {"a": [_run([0.5, 0.6])], "b": [_run([0.4, 0.7])], "c": [_run([0.1])]}
    assert compare(clean, partial)["rounds_lost"] == 1 and compare(clean, partial)["identical"] == 2


def test_an_unknown_fault_kind_is_refused_with_the_known_ones():
    out = subprocess.run([sys.executable, "benchmarks/chaos.py", "--kinds", "worker,meteor"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown fault kind(s) ['meteor']; known: worker, server, driver, store" in out.stderr
