"""The papers' reference files: every number occurs in the paper, every name is one the configs know."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import check_references  # noqa: E402
from orchestrator.reporting.references import (ReferenceError, available_papers, load_reference,  # noqa: E402
                                               match_references, numbers_missing_from_text)

PAPERS = available_papers(check_references.REFERENCES)


def test_the_five_papers_have_reference_files():
    assert set(PAPERS) == {"biomedvr", "cbsq", "cec", "dualprompt", "valiant"}


@pytest.mark.parametrize("paper", PAPERS)
def test_reference_file_is_clean(paper):
    if not check_references.papers_dir().is_dir():
        pytest.skip("the papers' texts are not beside this checkout (set ALVLM_PAPERS)")
    assert check_references.problems(paper) == []


def _write(tmp_path, rows, dataset="dtd"):
    text = ("paper: toy\ntext: toy.txt\nconfigs: [cec]\n"
            "columns: [source, dataset, backbone, budget, round, method, value, std, p_value]\nrows:\n"
            + "".join(f"  - {r}\n" for r in rows))
    (tmp_path / "toy.yaml").write_text(text)
    return load_reference(tmp_path, "toy")


def test_a_typed_number_missing_from_the_text_is_found(tmp_path):
    ref = _write(tmp_path, ["[Table 1, dtd, ViT-B-16:openai, pool_1pct, 1, cec+coop, 53.2, 0.5]",
                            "[Table 1, dtd, ViT-B-16:openai, pool_1pct, 2, cec+coop, 61.75]"])
    missing = numbers_missing_from_text(ref, "Table 1: CEC 53.20 ± 0.5 and 61.7")
    assert missing == [("value", 61.75)]
    padded = _write(tmp_path, ["[Table 1, dtd, ViT-B-16:openai, pool_1pct, 1, cec+coop, 7.6]"])
    assert numbers_missing_from_text(padded, "26.3% 07.6% 30.1%") == []  # a column printed with two digits
    assert numbers_missing_from_text(padded, "26.3% 17.6% 30.1%") == [("value", 7.6)]


def test_a_typo_d_dataset_is_refused_with_the_known_names(tmp_path):
    from datasets.registry import list_datasets
    from orchestrator.config import load_config
    from orchestrator.reporting.references import validate_reference

    ref = _write(tmp_path, ["[Table 1, dtdd, ViT-B-16:openai, pool_1pct, 1, cec+coop, 53.2]"])
    errors = validate_reference(ref, [load_config(ROOT / "experiments/configs/papers/cec.yaml")],
                                set(list_datasets()))
    assert len(errors) == 1 and "dtdd" in errors[0] and "'dtd'" in errors[0]


def test_an_unknown_paper_lists_the_known_ones(tmp_path):
    with pytest.raises(ReferenceError, match="known papers"):
        load_reference(check_references.REFERENCES, "no-such-paper")


def test_matching_puts_the_difference_beside_each_row_and_lists_the_rest(tmp_path):
    ref = _write(tmp_path, ["[Table 1, dtd, ViT-B-16:openai, pool_1pct, 1, cec+coop, 53.2]",
                            "[Table 1, dtd, ViT-B-16:openai, pool_1pct, 2, cec+coop, 60.0]"])
    measured = pd.DataFrame([{"dataset": "dtd", "backbone": "ViT-B-16:openai", "budget": "pool_1pct", "round": 1,
                              "method": "cec+coop", "mean": 50.0, "std": 1.0, "n_seeds": 3}])
    matched, unmatched = match_references(measured, ref)
    assert matched["difference"].round(6).tolist() == [-3.2]
    assert unmatched["round"].tolist() == [2]


def test_an_average_matches_only_an_average_over_the_same_datasets(tmp_path):
    from orchestrator.config import load_config
    from orchestrator.reporting.references import validate_reference

    ref = _write(tmp_path, ["[Table 1, dtd, ViT-B-16:openai, pool_1pct, 0, random+zeroshot, 44.3]",
                            "[Table 1, eurosat, ViT-B-16:openai, pool_1pct, 0, random+zeroshot, 47.7]",
                            "[Table 1, average, ViT-B-16:openai, pool_1pct, 0, random+zeroshot, 46.0]",
                            "[Table 2, dtd, ViT-B-16:openai, pool_1pct, 1, random+vpt, 50.0]",
                            "[Table 2, average, ViT-B-16:openai, pool_1pct, 0, random+zeroshot, 44.3]"])
    assert ref.rows["scope"].tolist() == ["", "", "dtd,eurosat", "", "dtd"]
    cell = {"dataset": "average", "backbone": "ViT-B-16:openai", "budget": "pool_1pct", "round": 0,
            "method": "random+zeroshot", "std": 0.0, "n_seeds": 3}
    measured = pd.DataFrame([{**cell, "scope": "dtd,eurosat", "mean": 45.0}, {**cell, "scope": "dtd", "mean": 44.0}])
    matched, unmatched = match_references(measured, ref)
    assert sorted(zip(matched["source"], matched["difference"].round(6))) == [("Table 1", -1.0), ("Table 2", -0.3)]
    assert validate_reference(ref, [load_config(ROOT / "experiments/configs/papers/cec.yaml"),
                                    load_config(ROOT / "experiments/configs/papers/cec_vpt_maple.yaml")],
                              {"dtd", "eurosat"}) == []
    only = _write(tmp_path, ["[Table 9, average, ViT-B-16:openai, pool_1pct, 1, cec+coop, 50.0]"])
    errors = validate_reference(only, [load_config(ROOT / "experiments/configs/papers/cec.yaml")], {"dtd"})
    assert any("averages: {Table 9: [...]}" in e for e in errors)
