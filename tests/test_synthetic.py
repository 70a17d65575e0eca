"""The synthetic family is deterministic, sized as promised, and disjoint from the pre-training corpus."""

import hashlib

import numpy as np
import pytest

from datasets.registry import get_card, open_split
from datasets.synthetic.family import FAMILY, corpus_sample, stream_id


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_members_are_deterministic_per_seed(name):
    a = open_split(name, "test", sizes={"test": 50})
    b = open_split(name, "test", sizes={"test": 50})
    c = open_split(name, "test", seed=1, sizes={"test": 50})
    assert np.array_equal(a.render(range(50)), b.render(range(50)))
    assert not np.array_equal(a.render(range(50)), c.render(range(50)))
    assert np.array_equal(a.labels, b.labels)
    # Any subset renders the same pixels as the full batch: Ray can shard by index freely.
    assert np.array_equal(a.render([7, 3])[0], a.render(range(50))[7])


def test_default_sizes_and_family_shape():
    sizes = {n: (len(open_split(n, "train")), len(open_split(n, "test"))) for n in FAMILY}
    assert all(tr >= 5000 and te >= 1000 for tr, te in sizes.values())
    assert get_card("synth-shapes").num_classes == 10
    assert get_card("synth-patterned-shapes").num_classes >= 30
    lesions = open_split("synth-lesions", "train")
    assert get_card("synth-lesions").metric == "auc" and 0.07 < lesions.labels.mean() < 0.13
    shapes = open_split("synth-shapes", "train")
    assert np.bincount(shapes.labels).min() == np.bincount(shapes.labels).max()


def test_scans_are_grayscale_and_low_contrast():
    img = open_split("synth-scans", "test", sizes={"test": 20}).render(range(20)).astype(int)
    assert np.abs(img[..., 0] - img[..., 1]).max() == 0
    photo = open_split("synth-shapes", "test", sizes={"test": 20}).render(range(20)).astype(int)
    assert img.std(axis=(1, 2, 3)).mean() < photo.std(axis=(1, 2, 3)).mean()


def test_cards_carry_templates_and_attributes():
    card = get_card("synth-patterned-shapes")
    assert all("{}" in t for t in card.prompts())
    assert set(card.attributes) == set(card.classes)
    assert card.attributes["dotted circle"].confusion  # confusion-aware attributes exist


def test_pretraining_corpus_does_not_overlap_benchmark_splits():
    streams = {stream_id(n, s) for n in FAMILY for s in ("train", "test")}
    assert stream_id("pretrain-corpus") not in streams
    corpus = {hashlib.sha1(corpus_sample(i, 0)[0].tobytes()).hexdigest() for i in range(1500)}
    for name in FAMILY:
        test = open_split(name, "test", sizes={"test": 300}).render(range(300))
        assert not corpus & {hashlib.sha1(im.tobytes()).hexdigest() for im in test}


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(KeyError, match="synth-shapes"):
        get_card("synth-shape")
