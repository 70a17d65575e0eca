"""benchmarks/prompt_training.py: the text-tower bound beside the CoOp step, and its target check."""

import io
import math
import sys

import pytest
from rich.console import Console

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    yield load_benchmark("prompt_training")
    sys.modules.pop("prompt_training", None)


def test_text_bound_and_coop_step_run_on_the_tiny_clip(bench):
    """Both kinds train real prompts through the shipped tiny CLIP's text tower and report a rate."""
    base = {"model": "tiny-clip", "device": "cpu", "batch": 8, "steps": 2, "chunk": 256, "classes": 10}
    bound = bench._measure({**base, "kind": "text_bound"})
    step = bench._measure({**base, "kind": "coop_feature"})
    for result in (bound, step):
        assert math.isfinite(result["steps_per_s"]) and result["steps_per_s"] > 0
        assert result["peak_rss_mb"] > 0


@pytest.mark.parametrize("kind", ["coop_image", "dual_feature", "vpt", "biomedvr"])
def test_every_other_kind_trains_one_step(bench, kind):
    config = {"model": "tiny-clip", "device": "cpu", "batch": 4, "steps": 1, "chunk": 256, "classes": 5, "kind": kind}
    assert set(bench.STEPS) >= {kind, "coop_feature", "text_bound"}
    assert bench._measure(config)["steps_per_s"] > 0


def test_bound_check_passes_fails_and_says_when_unmeasured(bench):
    rows = [{"classes": 10, "step_over_bound": 1.2}, {"classes": 100, "step_over_bound": 1.9},
            {"classes": 1000, "step_over_bound": None}]
    out = bench._check_bound(rows, Console(file=io.StringIO()))
    assert [c["result"] for c in out["checks"]] == ["PASS", "FAIL", "N/A"]
    assert out["checks"][1]["detail"] == "1.90x" and out["all_pass"] is False
    assert bench._check_bound(rows[:1], Console(file=io.StringIO()))["all_pass"] is True


def test_coop_step_runs_compiled_and_the_table_compares_it_with_eager(bench):
    config = {"model": "tiny-clip", "device": "cpu", "batch": 4, "steps": 2, "chunk": 256, "classes": 5,
              "kind": "coop_feature", "compile": "default"}
    compiled = bench._measure(config)
    assert math.isfinite(compiled["steps_per_s"]) and compiled["steps_per_s"] > 0 and compiled["warmup_s"] > 0
    rows = [{"classes": 5, "feature": {"steps_per_s": compiled["steps_per_s"] / 2},
             "compiled": {"default": compiled, "reduce-overhead": {"error": "no GPU"}}}]
    console = Console(file=io.StringIO(), width=200)
    console.print(bench._compiled_table(rows, ["default", "reduce-overhead"], type("A", (), {"model": "tiny-clip"})))
    text = console.file.getvalue()
    assert "(2.00x," in text and "no GPU" in text


def test_unknown_compile_modes_are_refused_with_the_known_ones(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--compile", "default,fastest", "--classes", "5"])
    assert "unknown --compile modes ['fastest']; known: ['default', 'reduce-overhead'" in capsys.readouterr().err


def test_learner_compile_fits_coop_eager_cold_and_warm_and_compares_them():
    """benchmarks/learner_compile.py: the real learner's ``compile`` option, in a fresh inductor cache and again on
    it: the prompts learnt equal eager's to float32 rounding, and the cold and warm processes' bit for bit."""
    module = load_benchmark("learner_compile")
    out = module.main(["--classes", "5", "--class-chunk", "2", "--epochs", "1", "--rows", "16", "--modes", "default",
                       "--device", "cpu"])  # chunks of 2 + 2 + 1 class prompts: checkpointed, two shapes
    (row,) = out["coop"]
    eager, compiled = row["eager"], row["modes"]["default"]
    assert "error" not in eager and all("error" not in compiled[start] for start in ("cold", "warm")), row
    assert all(len(r["seconds"]) == 2 and min(r["seconds"]) > 0 for r in (eager, compiled["cold"], compiled["warm"]))
    assert compiled["cold"]["seconds"][0] > compiled["cold"]["seconds"][1]  # round 1 compiles, round 2 reuses it
    assert compiled["max_abs_weight_diff"] < 1e-5 and compiled["argmax_agreement"] == 1.0
    assert compiled["cold_equals_warm"] is True
    with pytest.raises(SystemExit):
        module.main(["--modes", "fastest"])
