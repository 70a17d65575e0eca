"""Reports built from MLflow alone: a fake-but-real sweep in a SQLite store, then every output.

The sweep below follows the schema the real sweep writes (parent run + one child per trial,
step = round) with values chosen so that the means, stds and best methods are known in
advance; the expected numbers are recomputed with numpy from the same values, never with the
code under test. Noise makers: one FAILED run, one RUNNING run with a half-logged last round,
one duplicate config_hash, and one NaN AUC.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from orchestrator import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "sweep-report-test"
DATASETS = {"dsA": ("top1", 10, 0.40), "dsB": ("auc", 2, 0.55)}  # metric, classes, base score
METHODS = ["entropy+linear_probe", "margin+zeroshot", "random+linear_probe"]
BUDGETS = {"per_class_1": 1, "per_class_2": 2}
SEEDS = [0, 1, 2]
ROUNDS = [0, 1, 2, 3]
# Gain over the base per round: entropy leads rounds 0-2, margin overtakes it in round 3.
GAIN = {"entropy+linear_probe": [0.0, 0.10, 0.20, 0.25],
        "margin+zeroshot": [0.0, 0.08, 0.18, 0.30],
        "random+linear_probe": [0.0, 0.05, 0.10, 0.15]}
# Per-seed offsets; their means (0.0133, 0.01, 0.005) break round-0 ties, spreads differ.
NOISE = {"entropy+linear_probe": [0.00, 0.01, 0.03],
         "margin+zeroshot": [-0.02, 0.00, 0.05],
         "random+linear_probe": [0.00, 0.00, 0.015]}
NAN_CELL = ("dsB", "random+linear_probe", "per_class_1", 2, 0)  # AUC undefined here


def score(ds, method, budget, seed, rnd) -> float:
    """The default metric a trial logged at a round (fraction)."""
    if (ds, method, budget, seed, rnd) == NAN_CELL:
        return math.nan
    base = DATASETS[ds][2]
    return base + GAIN[method][rnd] + NOISE[method][SEEDS.index(seed)] + 0.03 * rnd * (BUDGETS[budget] - 1)


def spent(ds, budget, rnd) -> int:
    return rnd * DATASETS[ds][1] * BUDGETS[budget]


def round_metrics(ds, method, budget, seed, rnd, value=None) -> dict[str, float]:
    """Everything a trial logs for one round, as the sweep does."""
    metric, n_classes, _ = DATASETS[ds]
    v = score(ds, method, budget, seed, rnd) if value is None else value
    other = v - 0.1 if not math.isnan(v) else 0.5
    out = {
        "top1": v if metric == "top1" else other,
        "auc": v if metric == "auc" else (math.nan if rnd == 0 else other + 0.2),
        "macro_f1": other - 0.05, "ece": 0.05, "nll": 1.0 - 0.1 * rnd, "worst_class_acc": other - 0.2,
        "labels_spent": spent(ds, budget, rnd), "labels_total": spent(ds, budget, rnd) + 5 * rnd,
        "pseudo_labels": 5 * rnd, "pseudo_precision": 0.9, "seconds_select": 0.1, "seconds_adapt": 0.2,
        "seconds_evaluate": 0.05, "seconds_round": 0.35, "round": rnd,
    }
    out.update({f"class_acc/{i}": 0.5 for i in range(n_classes)})
    return out


def log_trial(client, exp_id, parent_id, ds, method, budget, seed, rounds, status, config_hash=None,
              value=None, half_round=None, error=None) -> str:
    """One child run following the schema; ``half_round`` logs labels_spent but not the score."""
    config_hash = config_hash or f"{ds}-{method}-{budget}-{seed}"
    acquisition, adaptation = method.split("+")
    tags = {"mlflow.parentRunId": parent_id, "alvlm.role": "trial", "alvlm.config_hash": config_hash}
    if error:
        tags["alvlm.error"] = error
    run = client.create_run(exp_id, tags=tags, run_name=config_hash)
    params = {"method": method, "acquisition": acquisition, "adaptation": adaptation, "dataset": ds,
              "budget": budget, "seed": str(seed), "encoder": "tiny-clip", "config_hash": config_hash,
              "git_revision": "abc123", "rounds": str(len(ROUNDS) - 1), "metric": DATASETS[ds][0]}
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now + r, r) for r in rounds
               for k, v in round_metrics(ds, method, budget, seed, r, value).items()]
    if half_round is not None:
        metrics.append(Metric("labels_spent", spent(ds, budget, half_round), now, half_round))
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The SQLite store with the fake sweep; returns (uri, parent run id, extra run ids)."""
    tmp = tmp_path_factory.mktemp("mlflow-report")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(tmp / "artifacts").as_uri())
    client.create_experiment("other-sweep", artifact_location=(tmp / "artifacts2").as_uri())
    parent = client.create_run(exp_id, tags={"alvlm.role": "sweep"}, run_name="sweep").info.run_id
    for ds in DATASETS:
        for method in METHODS:
            for budget in BUDGETS:
                for seed in SEEDS:
                    log_trial(client, exp_id, parent, ds, method, budget, seed, ROUNDS, "FINISHED")
    extra = {
        # Same config as a real trial, FINISHED but with fewer rounds and absurd values; started last.
        "duplicate": log_trial(client, exp_id, parent, "dsA", "entropy+linear_probe", "per_class_1", 0,
                               [0, 1], "FINISHED", config_hash="dsA-entropy+linear_probe-per_class_1-0",
                               value=0.99),
        "failed": log_trial(client, exp_id, parent, "dsA", "random+linear_probe", "per_class_1", 3,
                            [0, 1], "FAILED", value=0.99, error="CUDA out of memory"),
        "running": log_trial(client, exp_id, parent, "dsB", "margin+zeroshot", "per_class_2", 3,
                             [0, 1], "RUNNING", value=0.95, half_round=2),
    }
    client.set_terminated(parent, "FINISHED")
    # An experiment whose only trial failed: the CLI must refuse it with exit code 1.
    bad_id = client.create_experiment("failed-sweep", artifact_location=(tmp / "artifacts3").as_uri())
    bad_parent = client.create_run(bad_id, tags={"alvlm.role": "sweep"}).info.run_id
    log_trial(client, bad_id, bad_parent, "dsA", "random+linear_probe", "per_class_1", 0, [0], "FAILED",
              error="boom")
    return uri, parent, extra


@pytest.fixture(scope="module")
def df(store):
    uri, _, _ = store
    with pytest.warns(RuntimeWarning, match="config_hash dsA-entropy\\+linear_probe-per_class_1-0"):
        return report.load_trials(uri, EXPERIMENT)


@pytest.fixture(scope="module")
def tables(df):
    return report.comparison_tables(df)


def expected(ds, method, budget, rnd, scale=100.0):
    """(mean, std, n) over seeds with numpy, NaN scores left out, sample std."""
    vals = np.array([score(ds, method, budget, s, rnd) for s in SEEDS]) * scale
    vals = vals[~np.isnan(vals)]
    return vals.mean(), vals.std(ddof=1), len(vals)


def label(ds, budget, rnd):
    return f"r{rnd} (n={spent(ds, budget, rnd)})"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def test_dataframe_has_one_row_per_finished_run_and_round(df, store):
    _, parent, extra = store
    assert len(df) == len(DATASETS) * len(METHODS) * len(BUDGETS) * len(SEEDS) * len(ROUNDS)
    for col in report.ID_COLUMNS + ["macro_f1", "ece", "nll", "seconds_round", "pseudo_precision"]:
        assert col in df.columns, col
    assert not any(c.startswith("class_acc/") for c in df.columns)
    assert set(df["status"]) == {"FINISHED"}
    assert set(df["parent_run_id"]) == {parent}
    assert extra["duplicate"] not in set(df["run_id"]) and df.attrs["duplicates"] == [extra["duplicate"]]
    assert df.attrs["status_counts"] == {"FINISHED": 37, "FAILED": 1, "RUNNING": 1}
    assert df["seed"].tolist()[:4] == [0, 0, 0, 0] and df["round"].dtype.kind == "i"


def test_dataframe_values_follow_the_logged_metrics(df):
    row = df[(df.dataset == "dsB") & (df.method == "margin+zeroshot") & (df.budget == "per_class_2")
             & (df.seed == 1) & (df["round"] == 3)].iloc[0]
    assert row["metric_name"] == "auc"
    assert row["value"] == pytest.approx(score("dsB", "margin+zeroshot", "per_class_2", 1, 3))
    assert row["labels_spent"] == spent("dsB", "per_class_2", 3) == 12
    assert row["labels_total"] == 12 + 15
    assert row["top1"] == pytest.approx(row["value"] - 0.1)
    a0 = df[(df.dataset == "dsA") & (df["round"] == 0)]
    assert a0["auc"].isna().all() and set(a0["metric_name"]) == {"top1"}
    nan_row = df[(df.dataset == "dsB") & (df.method == "random+linear_probe") & (df.budget == "per_class_1")
                 & (df.seed == 2) & (df["round"] == 0)]
    assert len(nan_row) == 1 and math.isnan(nan_row["value"].iloc[0])


def test_include_unfinished_adds_completed_rounds_only(store):
    uri, _, extra = store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        full = report.load_trials(uri, EXPERIMENT, include_unfinished=True, metrics=())
    assert len(full) == 144 + 2 + 2
    running = full[full.run_id == extra["running"]]
    assert running["round"].tolist() == [0, 1]  # round 2 logged labels_spent only: not completed
    failed = full[full.run_id == extra["failed"]]
    assert failed["status"].unique().tolist() == ["FAILED"] and failed["value"].tolist() == [0.99, 0.99]
    assert extra["duplicate"] not in set(full["run_id"])
    assert "macro_f1" not in full.columns  # metrics=() fetches only what the tables need


def test_one_history_request_per_needed_key(store, monkeypatch):
    uri, _, _ = store
    calls = []
    original = MlflowClient.get_metric_history

    def counting(self, run_id, key):
        calls.append((run_id, key))
        return original(self, run_id, key)

    monkeypatch.setattr(MlflowClient, "get_metric_history", counting)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        report.load_trials(uri, EXPERIMENT, metrics=())
    assert len(calls) == len(set(calls)) == 36 * 3
    assert {k for _, k in calls} == {"top1", "auc", "labels_spent", "labels_total"}
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        report.load_trials(uri, EXPERIMENT)
    keys = {k for _, k in calls}
    assert not any(k.startswith("class_acc/") for k in keys) and "round" not in keys
    assert len(calls) == len(set(calls)) == 36 * 14


def test_unknown_experiment_lists_existing(store):
    uri, _, _ = store
    with pytest.raises(report.ExperimentNotFoundError, match="other-sweep") as err:
        report.load_trials(uri, "no-such-sweep")
    assert EXPERIMENT in err.value.available and "no-such-sweep" in str(err.value)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def test_table_keys_and_shape(tables):
    assert list(tables)[:3] == ["average__per_class_1", "average__per_class_2", "final_round"]
    assert set(tables) == {"average__per_class_1", "average__per_class_2", "final_round"} | {
        f"dataset__{d}__{b}" for d in DATASETS for b in BUDGETS} | {f"efficiency__{b}" for b in BUDGETS}
    t = tables["dataset__dsA__per_class_2"]
    assert list(t.index) == METHODS
    assert list(t.columns) == ["r0 (n=0)", "r1 (n=20)", "r2 (n=40)", "r3 (n=60)"]


@pytest.mark.parametrize("ds", list(DATASETS))
@pytest.mark.parametrize("budget", list(BUDGETS))
def test_dataset_table_numbers_match_numpy(tables, ds, budget):
    t = tables[f"dataset__{ds}__{budget}"]
    for method in METHODS:
        for rnd in ROUNDS:
            mean, std, n = expected(ds, method, budget, rnd)
            col = label(ds, budget, rnd)
            assert t.attrs["mean"].loc[method, col] == pytest.approx(mean, rel=1e-9)
            assert t.attrs["std"].loc[method, col] == pytest.approx(std, rel=1e-9)
            assert t.attrs["n_seeds"].loc[method, col] == n
            assert t.loc[method, col] == f"{mean:.1f} ± {std:.1f}"


def test_nan_score_left_out_of_its_cell(tables):
    t = tables["dataset__dsB__per_class_1"]
    col = label("dsB", "per_class_1", 0)
    assert t.attrs["n_seeds"].loc["random+linear_probe", col] == 2
    assert t.attrs["mean"].loc["random+linear_probe", col] == pytest.approx(55.0)  # seeds 0, 1 only
    assert "NaN scores left out" in t.attrs["caption"]


def test_best_per_column(tables):
    for ds in DATASETS:
        for budget in BUDGETS:
            best = tables[f"dataset__{ds}__{budget}"].attrs["best"]
            winners = [best.index[best[c]].tolist() for c in best.columns]
            assert winners == [["entropy+linear_probe"]] * 3 + [["margin+zeroshot"]], (ds, budget)


def test_averaged_table(tables):
    for budget in BUDGETS:
        t = tables[f"average__{budget}"]
        assert t.attrs["kind"] == "average" and t.attrs["datasets"] == ["dsA", "dsB"]
        n = [np.mean([spent(d, budget, r) for d in DATASETS]) for r in ROUNDS]
        assert list(t.columns) == [f"r{r} (n={x:.0f})" for r, x in zip(ROUNDS, n)]
        for method in METHODS:
            for rnd, col in zip(ROUNDS, t.columns):
                per_ds = [expected(d, method, budget, rnd) for d in DATASETS]
                assert t.attrs["mean"].loc[method, col] == pytest.approx(np.mean([m for m, _, _ in per_ds]))
                assert t.attrs["std"].loc[method, col] == pytest.approx(np.mean([s for _, s, _ in per_ds]))
        assert "mean of the per-dataset stds" in t.attrs["caption"]
        assert "top1: dsA" in t.attrs["caption"] and "auc: dsB" in t.attrs["caption"]
        assert t.attrs["best"].loc["margin+zeroshot"].tolist() == [False, False, False, True]


def test_average_needs_every_dataset(df):
    """A method that misses a round on one dataset gets no averaged cell there (no flattering)."""
    gap = (df.dataset == "dsB") & (df.method == "margin+zeroshot") & (df["round"] == 3)
    tables = report.comparison_tables(df[~gap])
    avg = tables["average__per_class_1"]
    col = avg.columns[-1]
    assert math.isnan(avg.attrs["mean"].loc["margin+zeroshot", col])
    assert avg.loc["margin+zeroshot", col] == report.MISSING
    assert avg.attrs["best"][col].tolist() == [True, False, False]  # entropy wins without margin
    assert tables["final_round"].loc["margin+zeroshot"].tolist() == [report.MISSING] * 2
    assert tables["dataset__dsB__per_class_1"].loc["margin+zeroshot", col.replace("n=18", "n=6")] == report.MISSING


def test_final_round_summary(tables):
    t = tables["final_round"]
    assert list(t.columns) == ["per_class_1 (r3)", "per_class_2 (r3)"] and list(t.index) == METHODS
    for budget, col in zip(BUDGETS, t.columns):
        for method in METHODS:
            want = np.mean([expected(d, method, budget, 3)[0] for d in DATASETS])
            assert t.attrs["mean"].loc[method, col] == pytest.approx(want)
    assert t.attrs["best"]["per_class_1 (r3)"].tolist() == [False, True, False]


# ---------------------------------------------------------------------------------------------
# Renderers and files
# ---------------------------------------------------------------------------------------------


def test_markdown_bolds_the_best(tables):
    t = tables["dataset__dsA__per_class_1"]
    md = report.to_markdown(t)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    margin, entropy = lines["margin+zeroshot"].split(" | "), lines["entropy+linear_probe"].split(" | ")
    cell = t.loc["margin+zeroshot", "r3 (n=30)"]
    assert margin[-1].rstrip(" |") == f"**{cell}**"
    assert entropy[1] == f"**{t.loc['entropy+linear_probe', 'r0 (n=0)']}**"
    assert "**" not in lines["random+linear_probe"]
    assert md.count("**") == 2 * (1 + 4)  # title + one best per column


def test_csv_is_numeric(tables):
    import io

    import pandas as pd

    t = tables["dataset__dsA__per_class_1"]
    back = pd.read_csv(io.StringIO(report.to_csv(t)), index_col="method")
    assert list(back.columns[:2]) == ["r0 (n=0) mean", "r0 (n=0) std"]
    mean, std, _ = expected("dsA", "margin+zeroshot", "per_class_1", 3)
    assert back.loc["margin+zeroshot", "r3 (n=30) mean"] == pytest.approx(mean, abs=1e-4)
    assert back.loc["margin+zeroshot", "r3 (n=30) std"] == pytest.approx(std, abs=1e-4)
    assert "*" not in report.to_csv(t) and "±" not in report.to_csv(t)


def test_latex_textbf_on_the_right_cell(tables):
    t = tables["dataset__dsA__per_class_1"]
    tex = report.to_latex(t)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    rows = {line.split(" & ")[0]: line for line in tex.splitlines() if " & " in line}
    margin = rows[r"margin+zeroshot"].split(" & ")
    mean, std, _ = expected("dsA", "margin+zeroshot", "per_class_1", 3)
    assert margin[-1] == rf"\textbf{{{mean:.1f} $\pm$ {std:.1f}}} \\"
    assert r"\textbf" not in " & ".join(margin[:-1])
    assert r"\textbf" not in rows[r"random+linear\_probe"]
    assert tex.count(r"\textbf") == 4


def test_rich_table(tables):
    from rich.console import Console

    t = tables["average__per_class_1"]
    rt = report.rich_table(t)
    assert rt.row_count == 3 and len(rt.columns) == 5
    console = Console(record=True, width=200)
    console.print(rt)
    text = console.export_text()
    assert "margin+zeroshot" in text and t.loc["margin+zeroshot", t.columns[-1]] in text


def test_efficiency_table_matches_a_direct_computation(df):
    """AULC by np.trapezoid over labels spent; saved labels and the paired tests against random."""
    from scipy import stats

    t = report.comparison_tables(df, baseline="random+linear_probe")["efficiency__per_class_2"]
    numbers = t.attrs["numbers"]
    for method in METHODS:
        per_dataset = []
        for ds in DATASETS:
            x = np.array([spent(ds, "per_class_2", r) for r in ROUNDS], dtype=float)
            runs = [np.trapezoid([100 * score(ds, method, "per_class_2", s, r) for r in ROUNDS], x) / x[-1]
                    for s in SEEDS]
            per_dataset.append(np.mean(runs))
        assert numbers.at[method, "aulc"] == pytest.approx(np.mean(per_dataset))
    finals = lambda m: [100 * score(ds, m, "per_class_2", s, 3) for ds in DATASETS for s in SEEDS]  # noqa: E731
    a, b = finals("entropy+linear_probe"), finals("random+linear_probe")
    assert numbers.at["entropy+linear_probe", "pairs"] == 6
    assert numbers.at["entropy+linear_probe", "p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert numbers.at["entropy+linear_probe", "p_t"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert numbers.at["random+linear_probe", "saved"] == pytest.approx(0.0)
    assert 0 < numbers.at["entropy+linear_probe", "saved"] < 1
    assert t.loc["random+linear_probe", "p (Wilcoxon)"] == "1.000"


def test_html_page_holds_the_tables_numbers(df, tmp_path):
    """Parse the page (stdlib HTMLParser) and compare a summary table's cells with the tables' own numbers."""
    from html.parser import HTMLParser

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.best, self.images, self._row, self._cell = [], [], 0, None, None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self._row = []
            elif tag == "td":
                self._cell = ""
                if ("class", "best") in attrs:
                    self.best.append(len(self.rows))
            elif tag == "img" and dict(attrs).get("src", "").startswith("data:image/png;base64,"):
                self.images += 1

        def handle_data(self, data):
            if self._cell is not None:
                self._cell += data

        def handle_endtag(self, tag):
            if tag == "td" and self._row is not None:
                self._row.append(self._cell)
                self._cell = None
            elif tag == "tr" and self._row:
                self.rows.append(self._row)
                self._row = None

    tables = report.comparison_tables(df, baseline="random+linear_probe")
    paths = report.write_report(df, tmp_path / "h", formats=("html",), tables=tables, config={"name": "x"})
    page = next(p for p in paths if p.suffix == ".html")
    parser = Cells()
    parser.feed(page.read_text())
    assert parser.images == len(DATASETS)
    average = tables["average__per_class_1"]
    first = next(r for r in parser.rows if r[0] == average.index[0])  # the average table comes first
    assert first[1:] == list(average.iloc[0])
    assert parser.best


def test_reference_rows_sit_beside_the_measured_ones(df, tmp_path):
    from orchestrator.reporting.references import (load_reference, match_references, measured_cells,
                                                   reference_table)

    (tmp_path / "toy.yaml").write_text(
        "paper: toy\ntext: toy.txt\nconfigs: []\naverages: {Table 1: [dsA, dsB]}\n"  # its average covers both
        "columns: [source, dataset, backbone, budget, round, method, value, std, p_value]\nrows:\n"
        "  - [Table 1, dsA, tiny-clip, per_class_1, 2, entropy+linear_probe, 61.5, 0.4]\n"
        "  - [Table 1, average, tiny-clip, per_class_1, 3, margin+zeroshot, 70.0]\n"
        "  - [Table 1, dsA, ViT-B-16:openai, per_class_1, 2, entropy+linear_probe, 61.5]\n")
    ref = load_reference(tmp_path, "toy")
    tables = report.comparison_tables(df)
    matched, unmatched = match_references(measured_cells(tables, df), ref)
    assert len(matched) == 2 and unmatched["backbone"].tolist() == ["ViT-B-16:openai"]
    row = matched.set_index("dataset").loc["dsA"]
    assert row["difference"] == pytest.approx(expected("dsA", "entropy+linear_probe", "per_class_1", 2)[0] - 61.5)
    average = tables["average__per_class_1"].attrs["mean"].loc["margin+zeroshot"].iloc[3]
    assert matched.set_index("dataset").loc["average", "measured"] == pytest.approx(average)
    table = reference_table(ref, matched, unmatched)
    assert "1 of the paper's rows have no measured twin" in table.attrs["caption"]
    assert "61.5 ± 0.4" in report.to_markdown(table)


def test_the_papers_rows_sit_under_each_measured_row(df, tmp_path):
    from orchestrator.reporting.interleave import add_reference

    (tmp_path / "toy.yaml").write_text(
        "paper: toy\ntext: toy.txt\nconfigs: []\n"
        "columns: [source, dataset, backbone, budget, round, method, value, std, p_value]\nrows:\n"
        "  - [Table 1, dsA, tiny-clip, per_class_1, 2, entropy+linear_probe, 61.5, 0.4]\n"
        "  - [Table 2, dsA, tiny-clip, per_class_1, 3, entropy+linear_probe, 65.0]\n")
    tables, unmatched = add_reference(report.comparison_tables(df), df, tmp_path, "toy")
    table = tables["dataset__dsA__per_class_1"]
    rows = list(table.index)
    at = rows.index("entropy+linear_probe")
    assert rows[at + 1] == "entropy+linear_probe · toy (Table 1, Table 2)"
    assert rows[at + 2] == "entropy+linear_probe · Δ (measured − toy)"
    measured = table.attrs["mean"].loc["entropy+linear_probe"]
    assert list(table.iloc[at + 1]) == ["—", "—", "61.5", "65.0"]
    assert table.iloc[at + 2, 2] == f"{measured.iloc[2] - 61.5:+.1f}" and table.iloc[at + 2, 0] == "—"
    assert not table.attrs["best"].iloc[at + 1].any()  # the paper's number is never marked best
    assert "entropy+linear_probe · toy (Table 1, Table 2) | — | — | 61.5 | 65.0 |" in report.to_markdown(table)
    assert "61.5" in report.to_csv(table) and unmatched.empty
    untouched = tables["dataset__dsB__per_class_1"]
    assert len(untouched) == len(report.comparison_tables(df)["dataset__dsB__per_class_1"])


def test_cli_unknown_paper_lists_the_known_ones(store, tmp_path):
    uri, _, _ = store
    with pytest.raises(SystemExit, match="known papers: biomedvr, cbsq, cec, dualprompt, valiant"):
        _cli().main(["--tracking-uri", uri, "--experiment", EXPERIMENT, "--out", str(tmp_path), "--paper", "cecc"])


def test_an_unknown_baseline_lists_the_methods(df):
    with pytest.raises(ValueError, match="random\\+linear_probe"):
        report.comparison_tables(df, baseline="randm")


def test_learning_curve_figure(df):
    fig = report.plot_learning_curves(df, "dsB")
    axes = fig.get_axes()
    assert len(axes) == 2
    ax = axes[0]
    assert ax.get_ylabel() == "auc (%)" and ax.get_xlabel() == "labels spent"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == METHODS
    line = ax.get_lines()[1]  # margin+zeroshot
    np.testing.assert_allclose(line.get_xdata(), [spent("dsB", "per_class_1", r) for r in ROUNDS])
    np.testing.assert_allclose(line.get_ydata(),
                               [expected("dsB", "margin+zeroshot", "per_class_1", r)[0] for r in ROUNDS])
    assert len(ax.collections) == 3  # one ± std band per method


def test_curves_against_rounds_and_black_box_queries(df):
    by_round = report.plot_learning_curves(df, "dsB", x="round").get_axes()[0]
    assert by_round.get_xlabel() == "round"
    np.testing.assert_allclose(by_round.get_lines()[1].get_xdata(), ROUNDS)
    queried = df.assign(cost_blackbox_queries=np.where(df["method"] == "margin+zeroshot", 100.0 * df["round"],
                                                       np.nan))
    ax = report.plot_learning_curves(queried, "dsB", x="queries").get_axes()[0]
    assert ax.get_xlabel() == "black-box queries"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["margin+zeroshot"]  # only the method that queried
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [100.0 * r for r in ROUNDS])
    with pytest.raises(ValueError, match="choose from \\['labels', 'queries', 'round'\\]"):
        report.plot_learning_curves(df, "dsB", x="budget")


def test_write_report_and_log_to_parent(df, store, tmp_path):
    from PIL import Image

    uri, parent, _ = store
    paths = report.write_report(df, tmp_path / "out")
    assert len(paths) == 9 * 3 + 2
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    pngs = sorted(p.name for p in paths if p.suffix == ".png")
    assert pngs == ["curves__dsA.png", "curves__dsB.png"]
    for p in paths:
        if p.suffix == ".png":
            with Image.open(p) as img:
                img.verify()
                assert img.format == "PNG" and img.size[0] > 500
    assert (tmp_path / "out" / "final_round.tex").read_text().startswith(r"\begin{table}")
    with pytest.raises(ValueError, match="unknown report format"):
        report.write_report(df, tmp_path / "x", formats=("docx",))

    report.log_report_to_mlflow(uri, parent, paths)
    client = MlflowClient(tracking_uri=uri)
    logged = {Path(a.path).name for a in client.list_artifacts(parent, "report")}
    assert logged == {p.name for p in paths}
    trial = df["run_id"].iloc[0]
    with pytest.raises(ValueError, match="not 'sweep'"):
        report.log_report_to_mlflow(uri, trial, paths[:1])


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("report_cli", ROOT / "experiments" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_prints_tables_and_paths(store, tmp_path, capsys):
    uri, parent, _ = store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = _cli().main(["--tracking-uri", uri, "--experiment", EXPERIMENT, "--out", str(tmp_path / "r"),
                              "--format", "md", "--format", "latex", "--log-to-parent", parent,
                              "--baseline", "random+linear_probe"])
    out = capsys.readouterr().out
    assert "label efficiency — per_class_1" in out and "p (Wilcoxon)" in out
    assert not any(line.lstrip().startswith("{") for line in out.splitlines())  # no JSON line
    assert "average over datasets — per_class_1" in out and "final round" in out
    assert "dsA — per_class_1" not in out  # per-dataset tables go to files only
    assert result["runs"] == 36 and len(result["paths"]) == 9 * 2 + 2
    for p in result["paths"]:
        assert p in out and Path(p).exists()
    assert not any(p.endswith(".csv") for p in result["paths"])
    assert f"logged {len(result['paths'])} files to run {parent}" in out


def test_cli_errors(store):
    uri, _, _ = store
    cli = _cli()
    with pytest.raises(SystemExit) as err:
        cli.main(["--tracking-uri", uri, "--experiment", "nope"])
    assert "'nope' not found" in str(err.value.code) and EXPERIMENT in str(err.value.code)
    with pytest.raises(SystemExit) as err:
        cli.main(["--tracking-uri", uri, "--experiment", "failed-sweep"])
    assert "no finished trial runs" in err.value.code and "1 FAILED" in err.value.code


def test_cli_script_exit_code(store):
    uri, _, _ = store
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), "--tracking-uri", uri,
                           "--experiment", "nope"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "existing experiments" in proc.stderr and EXPERIMENT in proc.stderr
