"""Dataset cards: every card validates, the paper protocols' datasets all have one, class lists have the
published sizes, and every card's source options are ones its source kind accepts."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import yaml

from datasets.card import DatasetCard
from datasets.registry import CARD_DIR, get_card, list_datasets, open_split
from datasets.sources.base import DatasetNotFoundError
from datasets.sources.registry import source_class

PROTOCOLS = Path("/work/shared/PROTOCOLS.md")

#: Dataset as PROTOCOLS.md (or BioMedVR's Table 1) names it -> card name.
PROTOCOL_DATASETS = {
    "OxfordPets": "oxford_pets", "FGVCAircraft": "fgvc_aircraft", "Caltech101": "caltech101",
    "Flowers102": "flowers102", "DTD": "dtd", "StanfordCars": "stanford_cars", "EuroSAT": "eurosat",
    "ImageNet": "imagenet", "ISIC": "isic2018", "KaoKore": "kaokore", "UCF101": "ucf101", "CheXpert": "chexpert",
    "NIH ChestX-ray14": "nih_chestxray14", "PCam": "pcam", "ISIC 2019": "isic2019", "REFUGE": "refuge",
}
BIOMEDVR_BIOMEDICAL = ["busi", "kneexray", "kvasir", "lungcolon", "octmnist", "btmri", "chmnist", "covid19",
                       "ctkidney", "dermamnist", "retina"]
BIOMEDVR_NATURAL = ["caltech101", "food101", "dtd", "oxford_pets", "flowers102", "eurosat", "ucf101"]

KNOWN_SIZES = {
    "eurosat": 10, "dtd": 47, "oxford_pets": 37, "flowers102": 102, "fgvc_aircraft": 100, "stanford_cars": 196,
    "food101": 101, "caltech101": 100, "cifar10": 10, "cifar100": 100, "imagenet": 1000, "ucf101": 101,
    "chexpert": 14, "nih_chestxray14": 14, "pcam": 2, "refuge": 2, "isic2019": 8, "isic2018": 7, "kaokore": 4,
    "btmri": 4, "busi": 3, "chmnist": 8, "covid19": 4, "ctkidney": 4, "dermamnist": 7, "kneexray": 5, "kvasir": 8,
    "lungcolon": 5, "octmnist": 4, "retina": 4,
}


@pytest.mark.parametrize("path", sorted(CARD_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_yaml_card_validates_and_is_named_after_its_file(path):
    card = DatasetCard.model_validate(yaml.safe_load(path.read_text()))
    assert card.name == path.stem
    assert card.class_source.strip() and card.source.obtain.strip() and card.splits


def test_registry_loads_all_cards():
    names = list_datasets()
    assert set(KNOWN_SIZES) <= set(names)


def test_protocol_datasets_have_cards():
    names = set(list_datasets())
    missing = {k: v for k, v in PROTOCOL_DATASETS.items() if v not in names}
    assert not missing
    assert set(BIOMEDVR_BIOMEDICAL + BIOMEDVR_NATURAL) <= names
    if PROTOCOLS.exists():  # the mapping above must keep naming what the protocols file names
        text = PROTOCOLS.read_text()
        for protocol_name in ("OxfordPets", "FGVCAircraft", "Caltech101", "Flowers102", "DTD", "StanfordCars",
                              "EuroSAT", "ImageNet", "KaoKore", "UCF101", "CheXpert", "PCam", "ISIC 2019", "REFUGE"):
            assert protocol_name in text, protocol_name


@pytest.mark.parametrize("name,size", sorted(KNOWN_SIZES.items()))
def test_class_counts_match_the_published_lists(name, size):
    assert get_card(name).num_classes == size


def test_tasks_and_metrics_follow_the_protocols():
    for name in ("chexpert", "nih_chestxray14"):
        assert get_card(name).task == "multilabel" and get_card(name).metric == "auc"
    for name in ("pcam", "refuge"):
        assert get_card(name).task == "binary" and get_card(name).metric == "auc"
    assert get_card("isic2019").metric == "auc"
    for name in BIOMEDVR_BIOMEDICAL + BIOMEDVR_NATURAL:
        assert get_card(name).metric == "accuracy"


def test_templates_have_one_slot_and_coop_templates_are_coop_s():
    for name in list_datasets():
        for protocol, items in get_card(name).templates.items():
            for t in items:
                assert t.count("{}") == 1, (name, protocol, t)
    assert get_card("eurosat").prompts("coop") == ["a centered satellite photo of {}."]
    assert get_card("dtd").prompts("coop") == ["{} texture."]
    assert get_card("oxford_pets").prompts("coop") == ["a photo of a {}, a type of pet."]
    assert get_card("ucf101").prompts("default") == ["a photo of a person doing {}."]
    assert get_card("caltech101").prompts("cbsq") == ["a photo of a {}."]
    assert len(get_card("imagenet").prompts("clip")) == 80


def test_coop_class_names_where_lists_differ():
    caltech = get_card("caltech101").classes
    assert caltech[:3] == ["face", "leopard", "motorbike"] and "background" not in caltech
    assert "Faces easy" not in caltech and "car side" in caltech
    assert get_card("stanford_cars").classes[0] == "2000 AM General Hummer SUV"
    assert get_card("flowers102").classes[92] == "ball moss"
    assert get_card("ucf101").classes[36] == "Handstand Pushups"
    assert get_card("eurosat").classes[0] == "Annual Crop Land"


def test_imagenet_names_are_clip_s_up_to_two_duplicates():
    path = Path(importlib.util.find_spec("open_clip").origin).parent / "zero_shot_metadata.py"
    spec = importlib.util.spec_from_file_location("_zsm", path)  # the module alone, without torch
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clip_names = list(module.IMAGENET_CLASSNAMES)
    card = get_card("imagenet")
    differ = [i for i, (a, b) in enumerate(zip(card.classes, clip_names)) if a != b]
    assert differ == [744, 836]
    folders = card.source.options["folder_names"]
    assert len(folders) == 1000 and folders == sorted(folders) and folders[0] == "n01440764"


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(KeyError) as err:
        get_card("no-such-dataset")
    assert "eurosat" in str(err.value) and "imagenet" in str(err.value)


@pytest.mark.parametrize("name", sorted(KNOWN_SIZES))
def test_card_source_options_fit_the_source_kind(name):
    card = get_card(name)
    params = inspect.signature(source_class(card.source.kind).__init__).parameters
    unknown = set(card.source.options) - set(params)
    assert not unknown, f"{name}: options {unknown} are not parameters of the {card.source.kind} source"


@pytest.mark.parametrize("name", sorted(KNOWN_SIZES))
def test_absent_data_fails_fast_with_the_path_looked_at(name, tmp_path):
    card = get_card(name)
    split = next(iter(card.splits))
    with pytest.raises(DatasetNotFoundError) as err:
        open_split(name, split, data_root=tmp_path)
    assert str(tmp_path) in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing downloaded
