"""The claims check: each claim read at its point of the curve, tested by pairs, and said to hold or not;
the CLI on a real MLflow store; the sweep's own report with its `report:` section on a real mini-sweep."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from experiments import claims as cli
from orchestrator.reporting.claims import (ABSENT, FAILS, HOLDS, LAST, Claim, check_claim, mined_labels, queries_spent,
                                           selective_savings)
from orchestrator.reporting.stats import labels_to_reach

COLUMNS = ["method", "dataset", "budget", "seed", "round", "value", "metric_name", "labels_spent", "labels_total"]


def _frame(rows, extra=()):
    return pd.DataFrame(rows, columns=COLUMNS + list(extra))


def _runs(method, budget, rnd, values, dataset="d"):
    return [(method, dataset, budget, s, rnd, v, "top1", 10 * rnd, 10 * rnd) for s, v in enumerate(values)]


def test_a_claim_is_the_seed_mean_difference_with_paired_tests_at_its_point():
    better, worse = [0.50, 0.56, 0.61], [0.40, 0.47, 0.49]
    df = _frame(_runs("biomedvr", "shots", 3, better) + _runs("attrvr", "shots", 3, worse)
                + _runs("biomedvr", "shots", 1, [0.2] * 3) + _runs("attrvr", "shots", 1, [0.3] * 3))
    row = check_claim(df, Claim("16 shots", "biomedvr", "attrvr", 1, "shots_16", (("shots", 3),)))
    diff = 100 * (np.array(better) - np.array(worse))
    assert row["result"] == HOLDS and row["at"] == "shots, r3" and row["pairs"] == 3
    assert row["difference"] == pytest.approx(diff.mean(), abs=0.01)
    assert row["p_t"] == pytest.approx(stats.ttest_rel(100 * np.array(better), 100 * np.array(worse)).pvalue,
                                       abs=1e-4)
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(diff).pvalue, abs=1e-4)
    assert row["better"].startswith("biomedvr 55.7 ± ")
    four = check_claim(df, Claim("4 shots", "biomedvr", "attrvr", 1, "shots_4", (("shots", 1),)))
    assert four["result"] == FAILS and four["difference"] == pytest.approx(-10.0)


def test_missing_methods_or_rounds_are_said_so_and_aliases_resolve():
    df = _frame(_runs("valiant_single", "cumulative", 1, [0.7, 0.8]) + _runs("random+linear_probe", "cumulative", 1,
                                                                          [0.6, 0.6]))
    alias = check_claim(df, Claim("v > r", "valiant_single", ("random", "random+linear_probe"), 1))
    assert alias["result"] == HOLDS and alias["worse"].startswith("random+linear_probe")
    assert alias["pairs"] == 2 and alias["p_t"] is None  # fewer than three pairs: no test
    assert check_claim(df, Claim("late", "valiant_single", "random+linear_probe", 5))["result"] == ABSENT
    last = check_claim(df, Claim("last", "valiant_single", "random+linear_probe", LAST))
    assert last["at"] == "r1" and last["result"] == HOLDS  # the last round both reached
    assert check_claim(df, Claim("bald", "valiant_single", "bald", 1))["result"] == ABSENT


def test_selective_savings_interpolate_the_curve_without_selective_querying():
    rows = []
    for s in range(2):
        rows += [("cbsq", "d", "b", s, r, acc, "top1", spent, 10 * r)
                 for r, acc, spent in [(0, 0.2, 0), (1, 0.5, 8), (2, 0.7, 14)]]
        rows += [("cb", "d", "b", s, r, acc, "top1", 10 * r, 10 * r) for r, acc in [(0, 0.2), (1, 0.4), (2, 0.8)]]
    out = selective_savings(_frame(rows), "cbsq", "cb")
    assert [r["round"] for r in out] == [1, 2]
    assert out[1]["spent (SQ)"] == 14 and out[1]["saved %"] == pytest.approx(30.0)
    need = labels_to_reach([0, 10, 20], [20, 40, 80], 70.0)
    assert out[1]["no-SQ labels for the SQ score"] == pytest.approx(need) == pytest.approx(17.5)
    claim = cli.savings_claim(out)
    assert claim["result"] == HOLDS and claim["difference"] == pytest.approx(3.5)
    assert cli.savings_claim([])["result"] == ABSENT


def test_mined_labels_and_queries_are_tabulated():
    rows = [("ours", "d", "b", s, r, 0.3, "top1", 10 * r, 10 * r, 5.0, 0.4 + 0.1 * r) for s in range(2) for r in (0, 1)]
    assert mined_labels(_frame(rows, ["labels_transient", "precision_transient"])) == [
        {"method": "ours", "r0": "40.0 % of 5", "r1": "50.0 % of 5"}]
    frame = _frame([("valiant_single", "d", "b", s, r, 0.7, "auc", 10, 10, 640.0) for s in range(2) for r in (0, 5)]
                   + [("random", "d", "b", s, 5, 0.6, "auc", 10, 10, float("nan")) for s in range(2)],
                   ["cost_blackbox_queries"])
    assert queries_spent(frame) == [{"method": "valiant_single", "queries": "640", "final": "70.0"}]


def test_every_paper_has_claims_and_unknown_papers_are_refused():
    assert {"cec", "cbsq", "dualprompt", "biomedvr", "valiant"} <= set(cli.CLAIMS)
    assert cli.papers_to_check(None, "all", "x") == list(cli.CLAIMS)
    assert cli.papers_to_check(None, None, "cec-offline") == ["cec"]
    assert cli.papers_to_check(["valiant"], "all", "cec-offline") == ["valiant"]
    with pytest.raises(ValueError, match="papers with claims: .*biomedvr"):
        cli.claims_report(_frame(_runs("a", "b", 1, [0.1])), ["cecc"])


def test_cli_reads_a_finished_sweep_and_ends_with_json(capsys, tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.test_report import EXPERIMENT, log_trial

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp, tags={"alvlm.role": "sweep"}).info.run_id
    for seed, (cec, entropy) in enumerate([(0.61, 0.52), (0.58, 0.55), (0.66, 0.51)]):
        log_trial(client, exp, parent, "dsA", "cec+coop", "per_class_1", seed, [0, 1, 2], "FINISHED", value=cec)
        log_trial(client, exp, parent, "dsA", "entropy+coop", "per_class_1", seed, [0, 1, 2], "FINISHED",
                  value=entropy)
    summary = cli.main(["--tracking-uri", uri, "--experiment", EXPERIMENT, "--paper", "cec"])
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == json.loads(json.dumps(summary))
    rows = {r["claim"]: r for r in summary["papers"]["cec"]["claims"]}
    first = rows["CEC above Entropy at 1 % (Table 1)"]
    assert first["result"] == HOLDS and first["pairs"] == 3
    assert first["difference"] == pytest.approx(100 * (np.mean([0.61, 0.58, 0.66]) - np.mean([0.52, 0.55, 0.51])),
                                                abs=0.01)
    assert rows["CEC above Random at 1 %"]["result"] == ABSENT
    assert summary["holds"] == 2 and summary["not in this sweep"] == 6  # 1 % and 2 % hold; the rest absent
    with pytest.raises(SystemExit, match="go together"):
        cli.main(["--tracking-uri", uri])


def test_the_sweeps_report_section_adds_baseline_and_claims(ray_cluster, tmp_path, session_cache):
    from experiments import sweep
    from orchestrator.report import load_trials
    from tests.test_sweep import _config

    path = _config(tmp_path, session_cache, name="claimed", datasets=["synth-lesions"],
                   methods=["random+linear_probe", "entropy+linear_probe"], seeds=[0, 1, 2], rounds=1,
                   report={"baseline": "random+linear_probe", "claims": ["valiant"]})
    summary = sweep.main([str(path)])
    out = tmp_path / "claimed" / "report"
    claims = json.loads((out / "claims.json").read_text())["papers"]["valiant"]["claims"]
    row = next(r for r in claims if r["claim"].startswith("VALIANT above Random at the first"))
    assert row["result"] == ABSENT  # no valiant_single in this sweep: said, not dropped
    assert str(out / "claims.md") in summary["report"]
    assert "Against random+linear_probe" in (out / "efficiency__b1.md").read_text()
    assert "The papers&#x27; claims" in (out / "report.html").read_text()
    df = load_trials(f"sqlite:///{tmp_path}/claimed/mlflow.db", "claimed")
    measured = check_claim(df, Claim("e > r", "entropy+linear_probe", "random+linear_probe", 1))
    final = df[df["round"] == 1].groupby("method")["value"].mean() * 100
    assert measured["difference"] == pytest.approx(final["entropy+linear_probe"] - final["random+linear_probe"],
                                                   abs=0.01)
    _paper_rows_beside_a_real_sweep(df, final["entropy+linear_probe"], tmp_path)


def _paper_rows_beside_a_real_sweep(df, measured: float, tmp_path):
    """A reference file naming this sweep's cell: its number sits under the measured row, with the difference."""
    from orchestrator.report import comparison_tables, to_markdown
    from orchestrator.reporting.interleave import add_reference

    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "toy.yaml").write_text(
        "paper: toy\ntext: toy.txt\nconfigs: []\n"
        "columns: [source, dataset, backbone, budget, round, method, value, std, p_value]\nrows:\n"
        "  - [Table 9, synth-lesions, tiny-clip, b1, 1, entropy+linear_probe, 50.0]\n"
        "  - [Table 9, synth-lesions, tiny-clip, b1, 1, bald+linear_probe, 50.0]\n")
    tables, unmatched = add_reference(comparison_tables(df), df, tmp_path / "refs", "toy")
    text = to_markdown(tables["dataset__synth-lesions__b1"])
    assert "| entropy+linear_probe · toy (Table 9) | — | 50.0 |" in text
    assert f"| entropy+linear_probe · Δ (measured − toy) | — | {measured - 50.0:+.1f} |" in text
    assert unmatched["method"].tolist() == ["bald+linear_probe"]


@pytest.mark.parametrize("report, message", [
    ({"paper": "cecc"}, "known papers: biomedvr, cbsq, cec"),
    ({"claims": ["cecc"]}, "papers with claims"),
])
def test_an_unknown_paper_in_the_report_section_fails_before_any_trial(tmp_path, session_cache, capsys, report,
                                                                       message):
    from experiments import sweep
    from tests.test_sweep import _config

    path = _config(tmp_path, session_cache, name="bad", report=report)
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(path)])
    assert exit_info.value.code == 2 and message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "bad" / "mlflow.db").exists()


def test_config_refuses_an_unknown_baseline_or_budget(tmp_path, session_cache):
    from orchestrator.config import ConfigError, load_config
    from tests.test_sweep import _config

    with pytest.raises(ConfigError, match="report.baseline 'randm' .*random\\+linear_probe"):
        load_config(_config(tmp_path, session_cache, report={"baseline": "randm"}))
    methods = ["random+linear_probe", {"acquisition": "entropy", "adaptation": "zeroshot", "budgets": ["b9"]}]
    with pytest.raises(ConfigError, match="lists budgets \\['b9'\\].*\\['b1', 'b2'\\]"):
        load_config(_config(tmp_path, session_cache, methods=methods,
                            budgets={"b1": {"kind": "per_class", "multiple": 1},
                                     "b2": {"kind": "per_class", "multiple": 2}}))


def test_a_method_runs_only_under_the_budgets_it_lists(tmp_path, session_cache):
    from orchestrator.config import load_config
    from tests.test_sweep import _config

    budgets = {"b1": {"kind": "per_class", "multiple": 1}, "shots": {"kind": "shots", "shots": [1, 2]}}
    methods = ["random+linear_probe", {"acquisition": "few_shot", "adaptation": "zeroshot", "budgets": ["shots"]}]
    config = load_config(_config(tmp_path, session_cache, methods=methods, budgets=budgets))
    grid = {(t["method"]["name"], t["budget_name"]) for t in config.trials()}
    assert grid == {("random+linear_probe", "b1"), ("random+linear_probe", "shots"), ("few_shot+zeroshot", "shots")}
    plain = load_config(_config(tmp_path, session_cache, name="plain", methods=["few_shot+zeroshot"],
                                budgets={"shots": budgets["shots"]}))
    hashes = {t["config_hash"] for t in config.trials() if t["method"]["name"] == "few_shot+zeroshot"}
    assert hashes == {t["config_hash"] for t in plain.trials()}  # listing budgets does not change a trial's hash
