"""Fuzzed sweep configs: thousands of generated bad values, each refused with a ConfigError (a message naming
the field), never a traceback from deep inside; the count is printed."""

import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config import ConfigError, SweepConfig, load_config

BASE = {
    "name": "fuzz", "datasets": ["synth-shapes"], "methods": ["random+linear_probe", "entropy+zeroshot"],
    "budgets": {"b1": {"kind": "per_class", "multiple": 1}, "s": {"kind": "shots", "shots": [1, 2]}},
    "seeds": [0], "rounds": 2, "cold_start": "none", "resources": {"cpu": 0.5, "gpu": 0, "driver_cpu": 0.1},
    "retries": 0, "dataset_options": {"synth-shapes": {"sizes": {"train": 300, "test": 100}}},
    "report": {"baseline": "random+linear_probe"},
}
#: Paths into BASE whose value the fuzzer replaces (a value of the wrong type, range or name).
PATHS = [("name",), ("datasets",), ("methods",), ("budgets",), ("budgets", "b1"), ("budgets", "b1", "multiple"),
         ("budgets", "b1", "kind"), ("budgets", "s", "shots"), ("seeds",), ("rounds",), ("cold_start",),
         ("resources",), ("resources", "cpu"), ("resources", "gpu"), ("retries",), ("dataset_options",),
         ("report",), ("report", "baseline"), ("methods", 0), ("methods", 1)]
JUNK = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                    | st.text(max_size=12), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
COUNTS = {"refused": 0, "accepted": 0}


def _mutate(config: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(config)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@settings(max_examples=1500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=JUNK, extra=st.none() | st.text(min_size=1, max_size=8))
def test_generated_bad_configs_get_a_config_error_never_a_traceback(tmp_path, path, value, extra):
    config = _mutate(BASE, path, value)
    if extra and extra not in config:
        config[extra] = 1  # an unknown top-level key
    target = tmp_path / "fuzz.yaml"
    try:
        target.write_text(yaml.safe_dump(config))
    except yaml.YAMLError:
        return
    _load_counting(target, COUNTS)


def _load_counting(path, counts: dict) -> None:
    """Load a generated config: a valid SweepConfig, or a ConfigError that says something; tally which."""
    try:
        loaded = load_config(path)
    except ConfigError as err:
        assert str(err).strip(), "a refusal must say what is wrong"
        counts["refused"] += 1
        return
    assert isinstance(loaded, SweepConfig)
    counts["accepted"] += 1


def _report_counts(counts: dict, what: str, refused_share: float) -> None:
    """Print the tally (the issue asks for the count) and check the fuzzer mostly generated bad input."""
    total = sum(counts.values())
    print(f"fuzzed {what}: {total} generated, {counts['refused']} refused with a ConfigError, "
          f"{counts['accepted']} valid")
    if total == 0:
        pytest.skip(f"run together with the {what} fuzz test")
    assert counts["refused"] > refused_share * total


def test_the_fuzzer_refused_most_of_what_it_generated():
    _report_counts(COUNTS, "configs", 0.5)


CARD_PATHS = [("classes",), ("templates",), ("templates", "default"), ("modality",), ("splits",), ("source",),
              ("source", "kind"), ("source", "options"), ("source", "options", "file"), ("task",), ("name",)]
CARD_COUNTS = {"refused": 0, "accepted": 0}


@pytest.fixture
def isolated_cards(monkeypatch):
    """Fuzzed cards register into a copy of the registry, so none leaks into other tests."""
    from datasets import registry

    registry.list_datasets()
    monkeypatch.setattr(registry, "_CARDS", dict(registry._CARDS))


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(CARD_PATHS), value=JUNK)
def test_generated_bad_dataset_cards_get_a_config_error(tmp_path, isolated_cards, path, value):
    n = sum(CARD_COUNTS.values())
    name = f"fuzz-card-{n}"  # one name per example: no clash with an earlier example's card
    card = {"name": name, "display_name": "fuzzed", "classes": ["a", "b"], "class_source": "fuzz",
            "templates": {"default": ["a photo of a {}."]}, "modality": "synthetic-photo",
            "splits": {"train": "6 images", "test": "3 images"},
            "source": {"kind": "npz", "options": {"file": str(tmp_path / "absent.npz")}, "obtain": "fuzz"}}
    card = _mutate(card, path, value)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(card))
    sweep = {**BASE, "datasets": [card["name"] if isinstance(card.get("name"), str) else name],
             "cards": [str(tmp_path / f"{name}.yaml")], "dataset_options": {}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    _load_counting(tmp_path / "sweep.yaml", CARD_COUNTS)


def test_the_card_fuzzer_generated_and_refused_cards():
    _report_counts(CARD_COUNTS, "cards", 0.3)
