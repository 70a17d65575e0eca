"""Shared fixtures: one real single-node Ray cluster for the whole test session."""

import os
import sys
from pathlib import Path

# Local test clusters run without Ray's token auth; real clusters keep it on.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests write to SQLite stores of their own
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


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
