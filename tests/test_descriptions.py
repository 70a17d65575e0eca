"""Class-description files ({"class": ["sentence", ...]}, Menon & Vondrick / CuPL form) named by a dataset card:
parsing, tolerant key matching, clear errors, and the path into a learner's AdaptContext.descriptions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from datasets import registry
from datasets.card import DatasetCard
from datasets.descriptions import (DescriptionsMismatchError, DescriptionsNotFoundError, card_descriptions,
                                   load_descriptions, match_descriptions)
from datasets.registry import get_card, list_datasets, load_card_files

SHAPES = get_card("synth-shapes")
CLASSES = list(SHAPES.classes)  # circle, square, triangle, star, cross, ring, crescent, bar, hexagon, diamond


def _sentences(cls: str) -> list[str]:
    return [f"a {cls} drawn in one colour", f"the outline of a {cls}"]


def _write(root: Path, data, name: str = "descriptors/descriptors_shapes.json") -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(autouse=True)
def _isolated_registry(monkeypatch):
    """User cards of a test go into a copy of the registry, so none leaks into other tests."""
    list_datasets()
    monkeypatch.setattr(registry, "_CARDS", dict(registry._CARDS))


def test_a_published_style_file_gives_every_class_its_sentences_in_card_order(tmp_path):
    # Keys as the published files write them: other case, underscores, another order than the card's.
    raw = {c.upper().replace(" ", "_"): _sentences(c) for c in reversed(CLASSES)}
    raw["unicorn"] = ["not a class of this card"]  # extra keys are ignored
    _write(tmp_path, raw)
    got = load_descriptions("descriptors/descriptors_shapes.json", CLASSES, data_root=tmp_path)
    assert list(got) == CLASSES
    assert got["hexagon"] == _sentences("hexagon")


def test_matching_ignores_case_underscores_whitespace_and_word_order_but_not_hyphens():
    classes = ["polka-dotted", "Annual Crop Land", "2012 Audi S4 Sedan"]
    raw = {"polka-dotted": ["dots"], "annual_crop  land": ["fields"], "Audi S4 Sedan 2012": ["a car"]}
    assert match_descriptions(raw, classes) == {"polka-dotted": ["dots"], "Annual Crop Land": ["fields"],
                                                "2012 Audi S4 Sedan": ["a car"]}
    with pytest.raises(DescriptionsMismatchError, match=r"'polka-dotted'"):
        match_descriptions({"polka dotted": ["dots"]}, ["polka-dotted"])


def test_keys_map_names_that_differ_beyond_spelling():
    raw = {"industrial buildings or commercial buildings": ["chimneys"], "forest": ["trees"]}
    got = match_descriptions(raw, ["Industrial Buildings", "Forest"],
                             keys={"Industrial Buildings": "industrial buildings or commercial buildings"})
    assert got == {"Industrial Buildings": ["chimneys"], "Forest": ["trees"]}


def test_missing_classes_are_listed_all_at_once_with_the_closest_keys(tmp_path):
    raw = {c: _sentences(c) for c in CLASSES if c not in ("star", "crescent")}
    raw["crescent moon"] = ["a thin curve"]
    raw["bar"] = []  # an empty list is no description either
    _write(tmp_path, raw)
    with pytest.raises(DescriptionsMismatchError) as err:
        load_descriptions("descriptors/descriptors_shapes.json", CLASSES, data_root=tmp_path)
    message = str(err.value)
    assert "3 of the card's 10 classes" in message and "['star', 'crescent', 'bar']" in message
    assert "descriptors_shapes.json" in message and "'crescent moon'" in message and "keys" in message


def test_a_missing_file_names_the_path_and_how_to_get_it(tmp_path):
    with pytest.raises(DescriptionsNotFoundError) as err:
        load_descriptions("descriptors/none.json", CLASSES, data_root=tmp_path,
                          obtain="copy PCB's descriptors/ folder into the data root")
    assert str(tmp_path / "descriptors" / "none.json") in str(err.value)
    assert "copy PCB's descriptors/ folder" in str(err.value)
    assert isinstance(err.value, ValueError)  # the sweep CLI reports it as a config problem (exit 2)


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    (json.dumps(["circle", "square"]), "must hold a JSON object"),
    (json.dumps({"circle": "one sentence, not a list"}), "not lists of strings"),
])
def test_malformed_files_are_refused_with_the_reason(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DescriptionsMismatchError, match=match):
        load_descriptions(path, CLASSES)


def test_keys_that_read_as_the_same_class_are_ambiguous():
    with pytest.raises(DescriptionsMismatchError, match="all read as class 'Sea Lake'"):
        match_descriptions({"sea_lake": ["a"], "SEA LAKE": ["b"]}, ["Sea Lake"])


def _card_dict(**changes) -> dict:
    card = SHAPES.model_dump(mode="json")
    card.update(name="synth-shapes-described", **changes)
    return card


def test_the_card_field_takes_a_path_or_a_mapping_and_checks_its_keys():
    assert DatasetCard.model_validate(_card_dict(descriptions="d.json")).descriptions.file == "d.json"
    spec = DatasetCard.model_validate(_card_dict(descriptions={"file": "d.json", "keys": {"circle": "disc"}}))
    assert spec.descriptions.keys == {"circle": "disc"}
    with pytest.raises(ValueError, match="descriptions.keys given for classes not in the class list: \\['disk'\\]"):
        DatasetCard.model_validate(_card_dict(descriptions={"file": "d.json", "keys": {"disk": "disc"}}))
    assert SHAPES.descriptions is None  # cards without the field keep their attributes


def _described_card(tmp_path: Path, monkeypatch) -> Path:
    """A user card over the synthetic shapes naming a description file under the data root."""
    monkeypatch.setenv("ALVLM_DATA_ROOT", str(tmp_path / "data"))
    _write(tmp_path / "data", {c: _sentences(c) for c in CLASSES})
    path = tmp_path / "described.yaml"
    path.write_text(yaml.safe_dump(_card_dict(descriptions="descriptors/descriptors_shapes.json")))
    return path


def _sweep(tmp_path: Path, card: Path, learner: dict) -> Path:
    config = {"name": "described", "datasets": ["synth-shapes-described"], "cards": [str(card)],
              "methods": [{"acquisition": "random", **learner}],
              "budgets": {"b": {"kind": "per_class", "multiple": 1}}, "seeds": [0], "rounds": 1,
              "workdir": str(tmp_path / "runs")}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_sweep_whose_learner_uses_descriptions_hands_the_files_sentences_to_the_learner(tmp_path, monkeypatch):
    from methods.base import DESCRIPTIONS
    from orchestrator.budget import BudgetLedger
    from orchestrator.config import load_config
    from orchestrator.contexts import TrialData, adapt_context
    from orchestrator.sweep import sweep_descriptions

    card = _described_card(tmp_path, monkeypatch)
    config = load_config(_sweep(tmp_path, card, {"adaptation": "coop",
                                                 "adaptation_options": {"descriptions": "ensemble"}}))
    loaded = sweep_descriptions(config)
    assert loaded["synth-shapes-described"]["ring"] == _sentences("ring")
    described = get_card("synth-shapes-described")
    data = TrialData(np.zeros((3, 4), np.float32), np.zeros(3, np.int64), np.zeros((1, 4), np.float32),
                     np.zeros(1, np.int64), np.zeros((10, 4), np.float32), "multiclass", 10, "top1",
                     class_names=CLASSES, attributes={c: a.model_dump() for c, a in described.attributes.items()},
                     class_descriptions=loaded["synth-shapes-described"])
    ctx = adapt_context(frozenset({DESCRIPTIONS}), data, BudgetLedger(), 1, None, None)
    assert ctx.descriptions == {c: _sentences(c) for c in CLASSES}
    # Without a description file the card's attributes stay the source, as before.
    fallback = TrialData(*[getattr(data, f) for f in ("pool_features", "pool_labels", "test_features", "test_labels",
                                                      "text_features", "task", "num_classes", "metric")],
                         attributes=data.attributes)
    assert fallback.descriptions["circle"] == list(SHAPES.attributes["circle"].positive)


def test_build_run_carries_the_sentences_into_the_trials_data(tmp_path, monkeypatch):
    """prepare_data puts each dataset's sentences under class_descriptions; build_run hands them to TrialData."""
    from orchestrator.config import load_config
    from orchestrator.sweep import build_run, sweep_descriptions

    card = _described_card(tmp_path, monkeypatch)
    config = load_config(_sweep(tmp_path, card, {"adaptation": "coop",
                                                 "adaptation_options": {"descriptions": "ensemble"}}))
    trial = config.trials()[0]
    rng = np.random.default_rng(0)
    data = {"pool_features": rng.normal(size=(40, 4)).astype(np.float32), "pool_labels": np.arange(40) % 10,
            "test_features": rng.normal(size=(10, 4)).astype(np.float32), "test_labels": np.arange(10),
            "text_features": np.eye(10, 4, dtype=np.float32), "task": "multiclass", "num_classes": 10,
            "metric": "top1", "class_names": CLASSES, "attributes": {},
            "class_descriptions": sweep_descriptions(config)["synth-shapes-described"]}
    run = build_run(trial, data, remote=False)
    assert run.data.descriptions == {c: _sentences(c) for c in CLASSES}


def test_the_file_is_read_only_when_a_learner_uses_descriptions(tmp_path, monkeypatch):
    from orchestrator.config import load_config
    from orchestrator.sweep import sweep_descriptions

    card = _described_card(tmp_path, monkeypatch)
    (tmp_path / "data" / "descriptors" / "descriptors_shapes.json").unlink()
    plain = load_config(_sweep(tmp_path, card, {"adaptation": "linear_probe"}))
    assert sweep_descriptions(plain) == {}  # nothing needs it, so its absence stops nothing
    described = load_config(_sweep(tmp_path, card, {"adaptation": "coop",
                                                    "adaptation_options": {"descriptions": "ensemble"}}))
    with pytest.raises(DescriptionsNotFoundError, match="dataset 'synth-shapes-described'.*descriptors_shapes.json"):
        sweep_descriptions(described)


def test_card_descriptions_is_none_without_the_field():
    assert card_descriptions(SHAPES) is None
    load_card_files([])  # the registry stays usable
