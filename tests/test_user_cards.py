"""User dataset cards: YAML files outside the package, loaded by path (load_card_files, embed.py --card,
DatasetImages.card_files), with clear errors for missing files, invalid cards and name clashes."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from datasets import registry
from datasets.registry import get_card, list_datasets, load_card_files

ROOT = Path(__file__).resolve().parents[1]
NAME = "my-npz-shapes"
CLASSES = ["square", "circle", "triangle"]


def _card(npz: Path, **changes) -> dict:
    card = {
        "name": NAME,
        "display_name": "My tiny npz dataset",
        "classes": CLASSES,
        "class_source": "the user's own label ids 0..2",
        "templates": {"default": ["a photo of a {}."]},
        "modality": "synthetic-photo",
        "splits": {"train": "6 images", "test": "3 images"},
        "source": {"kind": "npz", "options": {"file": str(npz)}, "obtain": "written by the test"},
    }
    return {**card, **changes}


@pytest.fixture
def card_file(tmp_path) -> Path:
    """A real npz dataset (distinct images per index) and the card that describes it."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "shapes.npz"
    np.savez(npz, train_images=rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8),
             train_labels=np.array([0, 1, 2, 0, 1, 2]).reshape(-1, 1),
             test_images=rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8),
             test_labels=np.array([2, 1, 0]).reshape(-1, 1))
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(_card(npz)))
    return path


@pytest.fixture(autouse=True)
def _isolated_registry(monkeypatch):
    """Each test registers its cards into a copy, so no user card leaks into other tests."""
    list_datasets()  # built-in cards first
    monkeypatch.setattr(registry, "_CARDS", dict(registry._CARDS))


def _env() -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def test_load_registers_the_card_and_is_idempotent(card_file):
    assert NAME not in list_datasets()
    assert load_card_files([card_file]) == [NAME]
    card = get_card(NAME)
    assert card.classes == CLASSES and card.source.kind == "npz"
    assert load_card_files([str(card_file), card_file]) == [NAME, NAME]  # same file again: fine
    assert get_card(NAME) is card
    source = registry.open_split(NAME, "train")
    assert source.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_relative_paths_resolve_from_the_callers_cwd(card_file, monkeypatch):
    monkeypatch.chdir(card_file.parent)
    assert load_card_files(["my.yaml"]) == [NAME]


def test_missing_file_names_the_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        load_card_files(["nope/missing.yaml"])
    assert str(tmp_path.resolve() / "nope" / "missing.yaml") in str(err.value)


def test_invalid_card_names_the_file_and_the_problem(card_file, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_card(tmp_path / "shapes.npz", task="ranking")))
    with pytest.raises(ValueError) as err:
        load_card_files([bad])
    assert str(bad) in str(err.value) and "task" in str(err.value)

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ValueError) as err:
        load_card_files([broken])
    assert str(broken) in str(err.value)
    assert NAME not in list_datasets()


def test_name_clash_with_a_builtin_card_is_refused(tmp_path):
    clash = tmp_path / "eurosat.yaml"
    clash.write_text(yaml.safe_dump(_card(tmp_path / "shapes.npz", name="eurosat")))
    with pytest.raises(ValueError) as err:
        load_card_files([clash])
    message = str(err.value)
    assert "'eurosat'" in message and str(clash) in message and "clashes with a registered card" in message
    assert "rename it" in message
    assert get_card("eurosat").num_classes == 10  # the built-in card is untouched


def test_name_clash_between_two_user_files_is_refused(card_file, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(_card(tmp_path / "shapes.npz", classes=list(reversed(CLASSES)))))
    with pytest.raises(ValueError, match="clashes with a registered card"):
        load_card_files([card_file, other])


def test_embed_list_shows_user_cards(card_file):
    out = subprocess.run([sys.executable, "experiments/embed.py", "--card", str(card_file), "--list"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout.strip().splitlines()[-1])
    assert NAME in listing["datasets"] and "eurosat" in listing["datasets"]


def test_embed_missing_card_file_stops_with_the_path(tmp_path):
    missing = tmp_path / "missing.yaml"
    out = subprocess.run([sys.executable, "experiments/embed.py", "--card", str(missing), "--list"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and str(missing) in out.stderr


FRESH_WORKER = """
import pickle, sys
import numpy as np
from datasets.registry import list_datasets
assert {name!r} not in list_datasets(), "the fresh process must not know the user card yet"
images = pickle.loads(open(sys.argv[1], "rb").read())
pool = images.pixels("pool", np.array([0, 1]))
test = images.pixels("test", np.array([0]))
assert pool.shape[0] == 2 and test.shape[0] == 1 and pool.shape[1] == 3, (pool.shape, test.shape)
assert not bool((pool[0] == pool[1]).all()), "distinct images must give distinct pixels"
source = images._source_and_transform("pool")[0]
print(source.render([4]).tolist() == np.load(sys.argv[2])["train_images"][[4]].tolist())
"""


def test_pickled_dataset_images_read_user_pixels_in_a_fresh_process(card_file, tmp_path):
    from orchestrator.images import DatasetImages

    images = DatasetImages(dataset=NAME, splits={"pool": "train", "test": "test"},
                           source_indices={"pool": np.arange(6), "test": np.arange(3)},
                           card_files=(str(card_file.resolve()),))
    blob = tmp_path / "images.pkl"
    blob.write_bytes(pickle.dumps(pickle.loads(pickle.dumps(images))))
    out = subprocess.run([sys.executable, "-c", FRESH_WORKER.format(name=NAME), str(blob),
                          str(tmp_path / "shapes.npz")],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True"


def test_a_sweep_config_names_a_card_file_and_runs_it(card_file, tmp_path, ray_cluster, session_cache):
    """`cards: [file]` in a sweep config: validated before Ray work, embedded, and run as real Tune trials."""
    from orchestrator.config import ConfigError, load_config
    from orchestrator.sweep import run_sweep

    config = {"name": "user-card", "datasets": [NAME], "methods": ["random+linear_probe"], "rounds": 2,
              "budgets": {"two": {"kind": "per_round", "count": 2}}, "cards": [str(card_file)],
              "workdir": str(tmp_path / "run"), "cache": str(session_cache), "retries": 0}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    assert loaded.trials()[0]["cards"] == [str(card_file.resolve())]
    outcome = run_sweep(loaded)
    assert outcome.trials == 1 and not outcome.failed
    path.write_text(yaml.safe_dump({**config, "cards": [str(tmp_path / "missing.yaml")]}))
    with pytest.raises(ConfigError, match="could not load dataset cards.*missing.yaml"):
        load_config(path)
