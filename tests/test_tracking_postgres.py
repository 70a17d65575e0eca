"""MLflow with a PostgreSQL backend store, the choice when a cluster's server has several writers.

A real ``postgres`` (``initdb`` into a temporary directory, 127.0.0.1 only) behind a real authenticated
``mlflow server``; a sweep logs through it, and the database itself holds the rounds. Skipped, with the
install command, where PostgreSQL's server programs are absent (they are a Debian package, not a wheel).
"""

import pytest

from orchestrator.rehearsal import LocalPostgres, MlflowServer, find_postgres_bin

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' (SQLAlchemy's PostgreSQL driver)")
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    with LocalPostgres() as server:
        yield server


def test_a_sweep_logs_through_an_mlflow_server_on_postgresql(postgres, ray_cluster, tmp_path, session_cache,
                                                             monkeypatch):
    import psycopg
    from mlflow.tracking import MlflowClient

    from orchestrator.config import load_config
    from orchestrator.sweep import run_sweep
    from tests.test_sweep import _config

    server = MlflowServer(tmp_path / "mlflow", backend_uri=postgres.uri).start(timeout=300)  # first start migrates
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.password)
        config = load_config(_config(tmp_path, session_cache, name="on-postgres", datasets=["synth-shapes"],
                                     seeds=[0], rounds=1, methods=["random+zeroshot"]),
                             [f"tracking.uri={server.uri}"])
        outcome = run_sweep(config)
        assert outcome.trials == 1 and not outcome.failed and not outcome.unlogged
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("on-postgres")
        runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("alvlm.role") == "trial"]
        assert [r.data.params["seed"] for r in runs] == ["0"]
        assert all({m.step for m in client.get_metric_history(r.info.run_id, "top1")} == {0, 1} for r in runs)
    finally:
        server.kill()
    with psycopg.connect(postgres.uri) as db:  # the rounds are in PostgreSQL, not in a file next to the server
        (rows,) = db.execute("SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                             "WHERE m.key = 'top1' AND r.run_uuid = ANY(%s)", ([r.info.run_id for r in runs],)
                             ).fetchone()
    assert rows == 2  # rounds 0 and 1
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()
