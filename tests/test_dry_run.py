"""``experiments/sweep.py CONFIG --dry-run``: the grid, what is on this machine, and the labels it will spend,
without Ray, MLflow, the network or a download. Exit 0 ready, 3 something missing, 2 a config that cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from experiments.sweep import main

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT / "experiments" / "configs" / "papers"


def _run(capsys, *argv) -> tuple[int, dict, str]:
    """Run the CLI in this process; returns (exit code, the JSON summary on stdout, the tables on stderr)."""
    try:
        main([*map(str, argv), "--dry-run"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code)
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


def _config(tmp_path: Path, **fields) -> Path:
    config = {"name": "dry", "encoder": "tiny-clip", "datasets": ["synth-shapes"], "methods": ["random+zeroshot"],
              "budgets": {"pct": {"kind": "fraction", "fraction": 0.01}}, "seeds": [0], "rounds": 2,
              "workdir": str(tmp_path / "runs"), **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def empty_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "empty-data-root"
    root.mkdir()
    monkeypatch.setenv("ALVLM_DATA_ROOT", str(root))
    return root


def _group(summary: dict, dataset: str, budget: str) -> dict:
    return next(g for g in summary["labels"] if g["dataset"] == dataset and g["budget"] == budget)


def test_the_offline_default_is_ready_with_its_trial_count_and_labels(capsys, tmp_path):
    code, summary, err = _run(capsys, "--set", f"cache={tmp_path / 'cache'}")  # the shipped default config
    assert code == 0 and summary["ready"] and summary["missing"] == []
    assert summary["trials"] == 36  # 10 methods x 1 % budget + 2 few-shot methods x shots budget, 3 seeds
    assert all(d["present"] for d in summary["datasets"].values())
    assert summary["encoders"]["tiny-clip"]["available"]
    groups = {g["budget"]: g for g in summary["labels"]}
    # 1 % of a 2,000-image pool per round, 3 rounds; 4 / 8 / 16 shots x 10 classes, cumulative
    assert groups["pct_1"]["per_round"] == [20, 20, 20] and groups["pct_1"]["trials"] == 30
    assert groups["shots"]["per_round"] == [40, 40, 80] and groups["shots"]["trials"] == 6
    assert groups["shots"]["methods"] == ["biomedvr", "attrvr"]  # only the methods that list the budget
    assert summary["labels_total"] == 30 * 60 + 6 * 160
    assert summary["datasets"]["synth-scans"]["pool_size"] == 2000
    assert "36 trials" in err and "ready (exit 0)" in err


def test_the_family_grid_is_ready_with_its_trial_count_and_labels(capsys, tmp_path):
    config = str(ROOT / "experiments" / "configs" / "family.yaml")
    code, summary, err = _run(capsys, config, "--set", f"cache={tmp_path / 'cache'}")
    assert code == 0 and summary["trials"] == 144  # 4 sets x 6 methods x 2 budgets x 3 seeds
    per_trial = {(g["dataset"], g["budget"]): g["labels_per_trial"] for g in summary["labels"]}
    # per_class budgets: classes x multiple per round, 5 rounds (shapes 10, patterned 36, scans 10, lesions 2)
    assert per_trial == {("synth-shapes", "per_class_1"): 50, ("synth-shapes", "per_class_2"): 100,
                         ("synth-patterned-shapes", "per_class_1"): 180, ("synth-patterned-shapes", "per_class_2"): 360,
                         ("synth-scans", "per_class_1"): 50, ("synth-scans", "per_class_2"): 100,
                         ("synth-lesions", "per_class_1"): 10, ("synth-lesions", "per_class_2"): 20}
    assert all(g["trials"] == 18 for g in summary["labels"])
    assert summary["labels_total"] == 18 * sum(per_trial.values()) == 15_660
    assert summary["datasets"]["synth-shapes"]["pool_size"] == 5000


def test_an_absent_real_dataset_exits_3_naming_it_and_how_to_get_it(capsys, tmp_path, empty_root):
    code, summary, err = _run(capsys, _config(tmp_path, datasets=["dtd"]))
    assert code == 3 and not summary["ready"]
    dtd = summary["datasets"]["dtd"]
    assert not dtd["present"]
    assert str(empty_root / "dtd" / "split_zhou_DescribableTextures.json") in dtd["splits"][0]["error"]
    assert "CoOp's DATASETS.md" in dtd["obtain"] and "how to get it" in err and "dtd/images/<class>" in err
    assert any(m.startswith("dataset dtd") for m in summary["missing"])
    # 1 % of the pool needs its size: the card states 2,820 train images, so 28 per round.
    group = _group(summary, "dtd", "pct")
    assert (dtd["pool_size"], dtd["pool_size_from"]) == (2820, "card")
    assert group["per_round"] == [28, 28] and group["labels_per_trial"] == 56


def test_a_pool_of_unknown_size_prints_the_fraction(capsys, tmp_path, empty_root):
    card = {"name": "dry-unsized", "display_name": "no stated size", "classes": ["a", "b"], "class_source": "test",
            "templates": {"default": ["a photo of a {}."]}, "modality": "photo",
            "splits": {"train": "the user's images", "test": "the user's images"},
            "source": {"kind": "npz", "options": {"file": "unsized.npz"}, "obtain": "write unsized.npz"}}
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    code, summary, err = _run(capsys, _config(tmp_path, datasets=["dry-unsized"], cards=[str(tmp_path / "card.yaml")]))
    assert code == 3
    group = _group(summary, "dry-unsized", "pct")
    assert group["per_round"] is None and summary["labels_total"] is None
    assert group["text"] == "1 % of the pool per round (size unknown until the data is present)"
    assert "write unsized.npz" in err


@pytest.mark.parametrize("encoder, reason", [("ViT-B-16:no-such-tag", "not a pretrained tag of ViT-B-16"),
                                             ("no-such-encoder", "unknown encoder 'no-such-encoder'")])
def test_an_unknown_encoder_is_reported(capsys, tmp_path, encoder, reason):
    code, summary, err = _run(capsys, _config(tmp_path, encoder=encoder))
    assert code == 3
    status = summary["encoders"][encoder]
    assert not status["available"] and reason in status["error"]
    assert any(encoder in m for m in summary["missing"]) and encoder in err


def test_present_files_count_the_pool_and_missing_images_are_caught(capsys, tmp_path, empty_root):
    """A CoOp split file with its images is present (pool counted from it); without the images it is not."""
    rows = [[f"{c}/{c}_{i:04d}.jpg", k, c] for k, c in enumerate(["banded", "blotchy"]) for i in range(150)]
    (empty_root / "dtd").mkdir()
    (empty_root / "dtd" / "split_zhou_DescribableTextures.json").write_text(
        json.dumps({"train": rows[:100] + rows[150:250], "val": [], "test": rows[100:150] + rows[250:]}))
    code, summary, _ = _run(capsys, _config(tmp_path, datasets=["dtd"], cache=str(tmp_path / "cache")))
    assert code == 3 and "images not copied" in summary["datasets"]["dtd"]["splits"][0]["error"]
    for path, *_ in rows:
        (empty_root / "dtd" / "images" / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(empty_root / "dtd" / "images" / path)
    code, summary, _ = _run(capsys, _config(tmp_path, datasets=["dtd"], cache=str(tmp_path / "cache")))
    dtd = summary["datasets"]["dtd"]
    assert code == 0 and dtd["present"] and (dtd["pool_size"], dtd["pool_size_from"]) == (200, "data")
    assert _group(summary, "dtd", "pct")["per_round"] == [2, 2]


def test_a_torchvision_card_is_never_downloaded(capsys, tmp_path, empty_root):
    path = _config(tmp_path, datasets=["fgvc_aircraft"], dataset_options={"fgvc_aircraft": {"download": True}})
    code, summary, _ = _run(capsys, path)
    assert code == 3 and not summary["datasets"]["fgvc_aircraft"]["present"]
    assert list(empty_root.iterdir()) == []  # nothing fetched, no folder created


def test_a_budget_larger_than_the_pool_exits_2(capsys, tmp_path):
    code, summary, _ = _run(capsys, _config(tmp_path, budgets={"huge": {"kind": "per_round", "count": 4000}}))
    assert code == 2 and "pool has only 5000 images" in summary["config_errors"][0]



def test_only_a_pool_counted_on_disk_refuses_a_sweep_before_ray_starts(tmp_path, empty_root):
    """The sweep's pre-check: a card's stated size (dtd: 2,820) is no ground for refusal, a counted pool is."""
    from orchestrator.config import load_config
    from orchestrator.dry_run import certain_budget_errors

    huge = {"huge": {"kind": "per_round", "count": 4000}, "ok": {"kind": "per_round", "count": 10}}
    assert certain_budget_errors(load_config(_config(tmp_path, datasets=["dtd"], budgets=huge))) == []
    errors = certain_budget_errors(load_config(_config(tmp_path, budgets=huge)))
    assert len(errors) == 1 and errors[0].startswith("synth-shapes, budget 'huge'") and "only 5000" in errors[0]


# The paper configs name real datasets and ViT weights, so on this machine they are missing (exit 3); the trial
# counts and label totals are what the configs' comments derive from the papers.
PAPER_CONFIGS = {
    # 6 datasets x 8 methods x 3 seeds; 6 rounds x round(1 % of CoOp's train split)
    "cec.yaml": (144, "ViT-B-16:openai", {"dtd": 168, "caltech101": 246, "eurosat": 810, "fgvc_aircraft": 198,
                                          "flowers102": 246, "ucf101": 456}),
    # Table 2: 3 datasets x (5 strategies x {VPT, MaPLe} + zero-shot) x 3 seeds
    "cec_vpt_maple.yaml": (99, "ViT-B-16:openai", {"dtd": 168, "flowers102": 246, "ucf101": 456}),
    # 7 datasets x 6 methods x 3 seeds; 8 rounds x B = number of classes
    "cbsq.yaml": (126, "ViT-B-32:openai", {"oxford_pets": 296, "fgvc_aircraft": 800, "caltech101": 800,
                                           "flowers102": 816, "dtd": 376, "stanford_cars": 1568, "eurosat": 80}),
    # Table 11: 6 datasets x (random + 3 cold starts x 2 feature spaces) x 3 seeds; one round of B = C
    "cbsq_cold_start.yaml": (126, "ViT-B-32:openai", {"caltech101": 100, "oxford_pets": 37, "stanford_cars": 196,
                                                      "flowers102": 102, "fgvc_aircraft": 100, "dtd": 47}),
    # Table 1: 6 datasets x 10 methods; Tables 2-3: 3 datasets x 12 methods; 3 seeds; CEC's 1 % rounds
    "dualprompt.yaml": (288, "ViT-B-16:openai", {"dtd": 168, "caltech101": 246, "eurosat": 810, "fgvc_aircraft": 198,
                                                 "flowers102": 246, "ucf101": 456}),
}
#: Methods per dataset where a paper config restricts some methods to some datasets.
METHODS_PER_DATASET = {"dualprompt.yaml": {"dtd": 22, "flowers102": 22, "ucf101": 22, "caltech101": 10,
                                           "eurosat": 10, "fgvc_aircraft": 10}}


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_configs_resolve_and_report_what_is_missing(capsys, empty_root, name):
    from methods.core.encoders import EncoderUnavailableError, parse_encoder
    from methods.registry import ACQUISITIONS, load_plugins

    load_plugins([])
    needed = {"cb", "cbsq", "gcnal", "cec", "pcb", "typiclust", "probcover", "dropquery"}
    assert needed <= set(ACQUISITIONS.names()), f"strategies not registered yet: {needed - set(ACQUISITIONS.names())}"
    trials, encoder, per_trial = PAPER_CONFIGS[name]
    code, summary, _ = _run(capsys, PAPERS / name)
    assert code == 3 and summary["trials"] == trials
    assert set(summary["datasets"]) == set(per_trial)
    assert not any(d["present"] for d in summary["datasets"].values())
    assert {g["dataset"]: g["labels_per_trial"] for g in summary["labels"]} == per_trial
    methods = {g["dataset"]: len(g["methods"]) for g in summary["labels"]}
    if name in METHODS_PER_DATASET:
        assert methods == METHODS_PER_DATASET[name]
    assert summary["labels_total"] == sum(3 * methods[d] * n for d, n in per_trial.items())
    try:
        parse_encoder(encoder)
        available = True
    except EncoderUnavailableError:
        available = False
    assert summary["encoders"][encoder]["available"] is available
    if name.startswith("cbsq"):  # the learners train with class descriptions, read from the cards' files
        assert all(d["descriptions"]["source"] == "file" and not d["descriptions"]["present"]
                   for d in summary["datasets"].values())


def test_a_method_can_run_on_some_datasets_only(tmp_path):
    from orchestrator.config import ConfigError, load_config

    methods = ["random+zeroshot", {"acquisition": "entropy", "adaptation": "zeroshot", "datasets": ["synth-scans"]}]
    path = _config(tmp_path, datasets=["synth-shapes", "synth-scans"], methods=methods)
    trials = load_config(path).trials()
    assert sorted((t["dataset"], t["method"]["name"]) for t in trials) == [
        ("synth-scans", "entropy+zeroshot"), ("synth-scans", "random+zeroshot"), ("synth-shapes", "random+zeroshot")]
    assert "datasets" not in trials[0]["method"]  # the list shapes the grid, not the trial's identity
    methods[1]["datasets"] = ["synth-lesions"]
    with pytest.raises(ConfigError, match="lists datasets \\['synth-lesions'\\] that the sweep does not run"):
        load_config(_config(tmp_path, datasets=["synth-shapes", "synth-scans"], methods=methods))


def test_the_biomedvr_config_counts_its_grid_and_names_the_missing_attribute_files(capsys, empty_root):
    from datasets.registry import get_card

    code, summary, _ = _run(capsys, PAPERS / "biomedvr.yaml")
    assert code == 3 and summary["trials"] == (11 * 12 + 7 * 6) * 3 * 3  # Table 1 + ablations, Table 3; 3 x 3
    busi = summary["datasets"]["busi"]["attributes"]
    assert busi["present"] is False and busi["source"] == "files"
    assert busi["files"]["confusion"]["path"].endswith("attributes/busi/confusion.json")
    assert sum("attribute sentences" in m for m in summary["missing"]) == 18
    # BiomedCoOp's prompt file is needed (and checked) only where BiomedCoOp runs: the 11 biomedical sets
    assert summary["datasets"]["busi"]["descriptions"]["path"].endswith("descriptions/biomedcoop_prompts.json")
    assert summary["datasets"]["ucf101"]["descriptions"] is None
    assert sum("class descriptions" in m for m in summary["missing"]) == 11
    shots = {(g["dataset"], g["budget"]): g["labels_per_trial"] for g in summary["labels"]}
    n = get_card("busi").num_classes
    assert [shots[("busi", b)] for b in ("shots_4", "shots_8", "shots_16")] == [4 * n, 8 * n, 16 * n]


def test_offline_twins_with_attributes_are_ready(capsys):
    code, summary, _ = _run(capsys, PAPERS / "biomedvr-offline.yaml")
    assert code == 0 and summary["trials"] == 90
    assert summary["datasets"]["synth-scans"]["attributes"] == {"source": "card", "files": {}, "present": True,
                                                              "classes": 10}


def test_the_valiant_config_counts_its_grid_and_reads_chexperts_val_split_as_its_test(capsys, empty_root):
    code, summary, _ = _run(capsys, PAPERS / "valiant.yaml")
    assert code == 3 and summary["trials"] == 5 * 10 * 10  # 5 datasets x 10 methods (with VALIANT_Multi) x 10 runs
    assert [s["split"] for s in summary["datasets"]["chexpert"]["splits"]] == ["train", "val"]
    refuge = next(g for g in summary["labels"] if g["dataset"] == "refuge")
    assert refuge["per_round"] == [40] * 10 and refuge["labels_per_trial"] == 400  # 10 %, ..., 100 % of 400


def test_the_valiant_twin_is_ready_and_a_split_rename_for_an_unknown_dataset_is_refused(capsys, tmp_path):
    from orchestrator.config import ConfigError, load_config

    code, summary, _ = _run(capsys, PAPERS / "valiant-offline.yaml")
    assert code == 0 and summary["trials"] == 2 * 10 * 3
    methods = [{"acquisition": "random", "adaptation": "linear_probe"}]
    with pytest.raises(ConfigError, match="dataset_splits names 'chexpert', which the sweep does not run"):
        load_config(_config(tmp_path, methods=methods, dataset_splits={"chexpert": {"test": "val"}}))
