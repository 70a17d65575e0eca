"""The prepared GPU call (benchmarks/gpu_session.sh) must not need what a lent GPU machine lacks: Ray above all."""

import json
import subprocess
import sys
from pathlib import Path

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
    assert done.returncode == 2 and "fetch|dry|run|compile" in done.stderr
    script = (ROOT / "benchmarks" / "gpu_session.sh").read_text()
    for pinned in ("faiss-cpu==", "pydantic==", "pydantic-core==", "open-clip-torch=="):  # what the GPU image lacks
        assert pinned in script
