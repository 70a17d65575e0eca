"""benchmarks/acquisition_scale.py end to end on a tiny pool: per-strategy child processes, the
scikit-activeml comparison, and the one-line JSON summary."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "acquisition_scale.py"


def test_acquisition_scale_tiny_run_compares_with_scikit_activeml(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--n", "600", "--dim", "16", "--classes", "5", "--budget", "10",
           "--labelled", "20", "--strategies", "random,entropy,coreset,badge,no_such_strategy",
           "--compare-skactiveml", "--targets", "--data-dir", str(tmp_path / "pools")]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    assert {"params", "machine", "data", "skipped", "strategies", "targets"} <= set(out)
    assert out["params"]["n"] == 600 and out["params"]["compare_skactiveml"] is True
    assert {"cpu_count", "torch_device"} <= set(out["machine"])
    assert out["skipped"] == {"no_such_strategy": "not registered"}
    assert list(out["strategies"]) == ["random", "entropy", "coreset", "badge"]
    for name, entry in out["strategies"].items():
        ours = entry["ours"]
        assert ours["status"] == "ok", (name, ours)
        assert ours["selected"] == 10 and not ours["problems"]
        assert ours["seconds"] >= 0 and ours["peak_rss_mb"] >= ours["baseline_rss_mb"] > 0
        assert ours["working_mb"] >= 0
    assert "kcenter_radius" in out["strategies"]["coreset"]["quality"]
    assert out["strategies"]["random"]["skactiveml"]["status"] == "no counterpart"

    for name in ("entropy", "coreset", "badge"):
        ref = out["strategies"][name]["skactiveml"]
        assert ref["status"] == "ok", (name, ref)
        assert {"seconds", "peak_rss_mb", "working_mb", "speedup", "jaccard"} <= set(ref)
    coreset = out["strategies"]["coreset"]
    # Our chunked greedy k-center picks exactly what scikit-activeml's CoreSet picks, in the same order.
    assert coreset["skactiveml"]["jaccard"] == 1.0 and coreset["skactiveml"]["same_order"]
    assert coreset["skactiveml"]["quality"]["kcenter_radius"] == coreset["quality"]["kcenter_radius"]
    assert out["strategies"]["entropy"]["skactiveml"]["jaccard"] == 1.0
    # No target is defined at this size; the flag says so instead of failing.
    assert out["targets"]["checks"] == [] and "no target" in out["targets"]["note"]


def test_acquisition_scale_passes_per_strategy_options_and_refuses_bad_ones(tmp_path):
    base = [sys.executable, str(SCRIPT), "--n", "600", "--dim", "16", "--classes", "5", "--budget", "10",
            "--labelled", "20", "--data-dir", str(tmp_path / "pools")]
    options = {"pcb": {"max_candidates": 40, "base_options": {"max_passes": 3}}, "probcover": {"graph_sample": 100}}
    proc = subprocess.run(base + ["--strategies", "pcb,probcover", "--options", json.dumps(options)],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["params"]["options"] == options
    assert out["strategies"]["probcover"]["ours"]["options"]["graph_sample"] == 100
    assert all(out["strategies"][name]["ours"]["status"] == "ok" for name in options)
    for bad, message in (('{"pcb": {"gamma": 5}}', "gamma"), ('{"coreset": {}}', "not in --strategies"),
                         ("[1]", "must be a JSON object"), ("{pcb", "not valid JSON")):
        proc = subprocess.run(base + ["--strategies", "pcb", "--options", bad], check=False, capture_output=True,
                              text=True, cwd=ROOT, timeout=120)
        assert proc.returncode != 0 and message in proc.stderr, (bad, proc.stderr[-500:])


def test_dropquery_precision_compares_float32_and_bfloat16_picks(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "dropquery_precision.py"), "--n", "800", "--dim", "16",
           "--classes", "5", "--labelled", "20", "--budget", "10", "--seeds", "2", "--data-dir", str(tmp_path)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out["summary"]) == {"fp32", "bf16"} and len(out["per_seed"]) == 2
    fp32, bf16 = out["summary"]["fp32"], out["summary"]["bf16"]
    assert fp32["flips_equal"]["mean"] == 1.0 and bf16["flips_equal"]["mean"] > 0.9
    for figures in (fp32, bf16):
        assert figures["candidates"]["mean"] > 0 and figures["potential"]["mean"] > 0
        assert 0 < figures["radius"]["mean"] and figures["select_s"]["median"] > 0


def test_cell_knn_benchmark_scores_each_search_against_the_exact_neighbours(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cell_knn.py"), "--n", "3000", "--dim", "16", "--classes", "10",
           "--labelled", "50", "--k", "10", "--queries", "100", "--data-dir", str(tmp_path)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out["results"]) == {"faiss-ivf", "cells", "cells-bf16"} and out["rows"] == 2950
    for figures in out["results"].values():
        assert figures["seconds"] > 0 and 0.5 < figures["recall"] <= 1.0 and figures["kth_ratio"] >= 1.0 - 1e-5
    bad = subprocess.run(cmd[:2] + ["--methods", "cells,hnsw"], check=False, capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "unknown --methods ['hnsw']" in bad.stderr
