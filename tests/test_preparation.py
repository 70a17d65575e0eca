"""Per-dataset preparation steps: the built-in attribute embeddings and the engine's cache."""

import json
import logging

import numpy as np
import pytest

from methods.preparation import (PREPARATIONS, Preparation, PreparationInputs, create_preparation, prepared_name,
                                 prepared, register_preparation)
from orchestrator.preparation import (PreparationRequest, card_inputs, compute_preparation, requested_names,
                                      run_preparations)

pytestmark = pytest.mark.usefixtures("one_thread")

CALLS = {"n": 0}


@register_preparation("_test_counting_step")
class CountingStep(Preparation):
    """Test-only step: counts its runs and draws from the rng it is given."""

    version = 1

    def __init__(self, width: int = 3):
        if width < 1:
            raise ValueError("_test_counting_step: width must be >= 1")
        super().__init__(width=width)

    def run(self, inputs, rng):
        CALLS["n"] += 1
        return {"noise": rng.normal(size=(len(inputs.class_names), self.options["width"])).astype(np.float32),
                "ids": np.arange(len(inputs.class_names))}


@pytest.fixture
def calls():
    CALLS["n"] = 0
    return CALLS


@pytest.fixture(scope="module")
def tiny():
    from methods.core.encoders import load_encoder

    return load_encoder("tiny-clip")


def test_tokens_round_trip():
    assert prepared("attribute_embeddings") == "prepared:attribute_embeddings"
    assert prepared_name(prepared("attribute_embeddings")) == "attribute_embeddings"
    assert prepared_name("pool_features") is None and prepared_name("prepared:") is None
    assert requested_names({"probs", prepared("b"), prepared("a")}) == ["a", "b"]


def test_attribute_embeddings_equal_the_text_tower(tmp_path, tiny):
    from datasets.registry import get_card

    card = get_card("synth-scans")
    assert any(a.positive for a in card.attributes.values()) and any(a.confusion for a in card.attributes.values())
    out = run_preparations([("synth-scans", "attribute_embeddings")], tmp_path)[("synth-scans", "attribute_embeddings")]
    arrays = out.arrays
    for kind in ("positive", "confusion"):
        sentences = [s for c in card.classes for s in getattr(card.attributes[c], kind)]
        owners = [i for i, c in enumerate(card.classes) for _ in getattr(card.attributes[c], kind)]
        assert arrays[kind].shape == (len(sentences), tiny.encode_texts(["x"]).shape[1])
        assert arrays[kind].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(arrays[kind], axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(arrays[kind], tiny.encode_texts(sentences).numpy(), atol=1e-5)
        np.testing.assert_array_equal(arrays[f"{kind}_class"], owners)


def test_classes_without_attributes_add_no_rows():
    inputs = card_inputs("synth-scans", "tiny-clip")
    keep = inputs.class_names[1]
    inputs.attributes = {keep: {"positive": ["a faint round region"], "confusion": []}}
    arrays = compute_preparation("attribute_embeddings", {}, inputs, seed=0)
    assert arrays["positive"].shape[0] == 1 and arrays["confusion"].shape[0] == 0
    assert arrays["confusion"].shape[1] == arrays["positive"].shape[1]
    np.testing.assert_array_equal(arrays["positive_class"], [1])


def test_dataset_without_attributes_says_how_to_add_them(tmp_path):
    with pytest.raises(ValueError, match=r"dataset cifar10 has no attribute sentences in its card; add `attributes:`"):
        run_preparations([("cifar10", "attribute_embeddings")], tmp_path)
    assert not list(tmp_path.rglob("manifest.json"))


def test_cache_is_written_with_a_manifest_and_reused(tmp_path, calls):
    first = run_preparations([("synth-scans", "_test_counting_step")], tmp_path, seed=7)[
        ("synth-scans", "_test_counting_step")]
    assert calls["n"] == 1 and not first.reused
    manifest = json.loads((first.directory / "manifest.json").read_text())
    assert manifest["dataset"] == "synth-scans" and manifest["preparation"] == "_test_counting_step"
    assert manifest["version"] == 1 and manifest["options"] == {"width": 3} and manifest["seed"] == 7
    assert manifest["arrays"]["noise"] == {"shape": [10, 3], "dtype": "float32"}
    assert manifest["precision"] == "fp32" and manifest["encoder"]["name"] == "tiny-clip"
    assert {"checksum", "seconds", "created"} <= set(manifest)
    from methods.core.encoders import parse_encoder

    assert first.directory.parent == tmp_path / "prepared" / "synth-scans" / parse_encoder("tiny-clip").key
    assert first.directory.name.startswith("_test_counting_step-v1-")
    second = run_preparations([("synth-scans", "_test_counting_step")], tmp_path, seed=7)[
        ("synth-scans", "_test_counting_step")]
    assert calls["n"] == 1 and second.reused and second.directory == first.directory
    np.testing.assert_array_equal(second.arrays["noise"], first.arrays["noise"])


def test_seeded(tmp_path, calls):
    inputs = card_inputs("synth-scans", "tiny-clip")
    a = compute_preparation("_test_counting_step", {}, inputs, seed=1)["noise"]
    np.testing.assert_array_equal(a, compute_preparation("_test_counting_step", {}, inputs, seed=1)["noise"])
    assert not np.array_equal(a, compute_preparation("_test_counting_step", {}, inputs, seed=2)["noise"])
    d1 = run_preparations([("synth-scans", "_test_counting_step")], tmp_path, seed=1)
    d2 = run_preparations([("synth-scans", "_test_counting_step")], tmp_path, seed=2)
    assert d1[("synth-scans", "_test_counting_step")].directory != d2[("synth-scans", "_test_counting_step")].directory


def test_killed_run_without_manifest_is_recomputed(tmp_path, calls):
    req = [("synth-scans", "_test_counting_step")]
    done = run_preparations(req, tmp_path)[req[0]]
    (done.directory / "manifest.json").unlink()  # as if killed after the arrays, before the manifest
    again = run_preparations(req, tmp_path)[req[0]]
    assert calls["n"] == 2 and not again.reused and (again.directory / "manifest.json").exists()


def test_checksum_mismatch_is_logged_and_recomputed(tmp_path, calls, caplog):
    req = [("synth-scans", "_test_counting_step")]
    done = run_preparations(req, tmp_path)[req[0]]
    path = done.directory / "arrays.npz"
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    with caplog.at_level(logging.WARNING, logger="orchestrator.preparation"):
        again = run_preparations(req, tmp_path)[req[0]]
    assert calls["n"] == 2 and not again.reused and "checksum" in caplog.text
    np.testing.assert_array_equal(again.arrays["noise"], done.arrays["noise"])
    assert run_preparations(req, tmp_path)[req[0]].reused


def test_changed_option_or_version_changes_the_directory(tmp_path, calls, monkeypatch):
    base = run_preparations([("synth-scans", "_test_counting_step")], tmp_path)[("synth-scans", "_test_counting_step")]
    wider = run_preparations([("synth-scans", "_test_counting_step", {"width": 4})], tmp_path)[
        ("synth-scans", "_test_counting_step")]
    assert wider.directory != base.directory and wider.arrays["noise"].shape == (10, 4)
    same = run_preparations([PreparationRequest("synth-scans", "_test_counting_step", {"width": 3})], tmp_path)[
        ("synth-scans", "_test_counting_step")]
    assert same.directory == base.directory and same.reused  # the default, spelt out, is the same key
    monkeypatch.setattr(CountingStep, "version", 2)
    key = ("synth-scans", "_test_counting_step")
    bumped = run_preparations([key], tmp_path)[key]
    assert bumped.directory != base.directory and bumped.directory.name.startswith("_test_counting_step-v2-")
    assert calls["n"] == 3


def test_changed_card_attributes_change_the_directory(tmp_path, calls):
    def edited(dataset):
        inputs = card_inputs(dataset, "tiny-clip")
        inputs.attributes = {inputs.class_names[0]: {"positive": ["edited"], "confusion": []}}
        return inputs

    req = [("synth-scans", "_test_counting_step")]
    a = run_preparations(req, tmp_path)[req[0]].directory
    assert run_preparations(req, tmp_path, inputs_for=edited)[req[0]].directory != a


def test_bad_names_and_options_fail_clearly(tmp_path):
    with pytest.raises(KeyError, match=r"unknown preparation step 'atribute_embeddings'.*did you mean "
                                       r"'attribute_embeddings'.*known: .*attribute_embeddings"):
        run_preparations([("synth-scans", "atribute_embeddings")], tmp_path)
    assert "attribute_embeddings" in PREPARATIONS.names()
    with pytest.raises(ValueError, match="exactly one"):
        create_preparation("attribute_embeddings", {"template": "no slot"})
    with pytest.raises(ValueError, match="unknown option.*'widht'.*did you mean 'width'"):
        create_preparation("_test_counting_step", {"widht": 2})
    with pytest.raises(ValueError, match="different options"):
        run_preparations([("synth-scans", "_test_counting_step"), ("synth-scans", "_test_counting_step",
                                                                   {"width": 5})], tmp_path)
    with pytest.raises(ValueError, match="name encoder"):
        run_preparations([("synth-scans", "_test_counting_step")], tmp_path,
                         inputs_for=lambda d: card_inputs(d, "tiny-clip", "bf16"))


def test_outputs_must_be_plain_arrays():
    @register_preparation("_test_object_step")
    class ObjectStep(Preparation):
        def run(self, inputs, rng):
            return {"names": np.asarray(inputs.class_names, dtype=object)}

    inputs = PreparationInputs("synth-scans", "tiny-clip", "fp32", ["a"], {})
    with pytest.raises(TypeError, match="no pickles"):
        compute_preparation("_test_object_step", {}, inputs, seed=0)
    with pytest.raises(ValueError, match="takes no options"):
        create_preparation("_test_object_step", {"x": 1})
