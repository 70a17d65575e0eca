"""Shared fixtures: one real single-node Ray cluster for the whole test session."""

import importlib.util
import os
import sys
import time
from pathlib import Path

# Local test clusters run without Ray's token auth; real clusters keep it on.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests write to SQLite stores of their own
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


def wait_until(condition, limit: float, what: str, proc=None) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` when ``limit`` seconds pass, or at once when the
    subprocess ``proc`` that should bring it about has exited (a fault test must not wait for a dead sweep)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        if condition():
            return
        assert proc is None or proc.poll() is None, f"the sweep ended before {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}")


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module, registered while it executes (dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from orchestrator.ray_runtime import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One feature cache shared by every test of the session (embeddings are reused, as in a sweep)."""
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded torch and faiss for modules of tiny models and pools.

    On a 2-core machine two intra-op threads oversubscribe the cores; these
    workloads ran 10-100x slower multi-threaded under load. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import faiss
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])


@pytest.fixture
def trained_parameters(monkeypatch):
    """Every tensor handed to the prompt learners' training loop during the test (param groups flattened)."""
    from methods.adaptation.prompting import recipes

    seen = []
    real_train = recipes.train

    def spy(parameters, *args, **kwargs):
        parameters = list(parameters)
        seen.extend(p for g in parameters for p in (g["params"] if isinstance(g, dict) else [g]))
        return real_train(parameters, *args, **kwargs)

    monkeypatch.setattr(recipes, "train", spy)
    return seen
