"""The prepared GPU call (benchmarks/gpu_session.sh) must not need what a lent GPU machine lacks: Ray above all."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_the_vit_stage_alone_runs_without_ray_and_says_why_it_skips_on_a_cpu():
    probe = ("import json, sys; sys.path.insert(0, 'benchmarks'); import embed_throughput as e; "
             "out = e.main(['--gpu-vit-only', '--n', '8', '--batch-size', '4']); "
             "print(json.dumps({'out': out, 'ray': 'ray' in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ray"] is False
    assert result["out"]["gpu_vit_b16"] == {"skipped": "no CUDA device"}


def test_the_session_script_names_its_modes():
    done = subprocess.run(["bash", "benchmarks/gpu_session.sh", "launch"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "fetch|dry|run|compile|papers" in done.stderr
    script = (ROOT / "benchmarks" / "gpu_session.sh").read_text()
    for pinned in ("faiss-cpu==", "pydantic==", "pydantic-core==", "open-clip-torch=="):  # what the GPU image lacks
        assert pinned in script


def test_the_papers_stage_passes_options_each_strategy_accepts():
    from methods.registry import ACQUISITIONS

    read = 'source <(sed -n "/^CB_SCALE=/,/^PAPER_OPTIONS=/p" benchmarks/gpu_session.sh); echo "$PAPER_OPTIONS"'
    done = subprocess.run(["bash", "-c", read], cwd=ROOT, capture_output=True, text=True, check=True)
    options = json.loads(done.stdout)
    assert set(options) == {"cb", "cbsq", "cec"} and options["cec"]["knn"] == "cells"
    for name, opts in options.items():
        ACQUISITIONS.create(name, **opts)  # an unknown or ill-typed option raises, naming it


def test_the_image_tower_stage_times_eager_and_compiled_and_keeps_a_failed_mode_apart():
    """The GPU stage's core on the CPU (tiny CLIP): eager and a compiled mode are timed; a mode torch.compile
    refuses is reported as an error beside them instead of losing their figures."""
    import torch

    from methods.core.encoders import register_model_configs

    embed_throughput = load_benchmark("embed_throughput")
    register_model_configs()
    out = embed_throughput.image_tower_rates("tiny-clip", "cpu", torch.float32, 16, 8, ("default", "no-such-mode"))
    assert out["images_per_s"] > 0 and out["precision"] == "float32"
    compiled = out["compiled"]["default"]
    assert compiled["images_per_s"] > 0 and compiled["warmup_s"] > 0 and compiled["over_eager"] > 0
    assert "no-such-mode" in out["compiled"]["no-such-mode"]["error"]
