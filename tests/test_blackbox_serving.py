"""The black box behind a real HTTP endpoint (Ray Serve on 127.0.0.1): the same answers as the local one, counted
on both sides, clear errors for a bad batch and for an endpoint that is down, and a sweep that drives VALIANT
through it with the server's count equal to the queries the trials logged."""

import socket

import numpy as np
import pytest

from methods.core.blackbox import BlackBoxUnreachable, ClipBlackBoxSpec, ServedBlackBoxSpec, served_queries

DATASET = "synth-lesions"
SIZES = {"sizes": {"train": 80, "test": 40}}  # one small pool for the module's sweeps, embedded once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _free_port()  # Serve's HTTP proxy binds once per cluster: every test here shares it


@pytest.fixture(scope="module")
def served(ray_cluster):
    from datasets.registry import get_card
    from orchestrator.serving import serve_blackboxes, stop_blackboxes

    card = get_card(DATASET)
    spec = ClipBlackBoxSpec("tiny-clip", tuple(card.classes), tuple(card.prompts()))
    url = serve_blackboxes({DATASET: spec}, PORT)
    yield url, spec
    stop_blackboxes([DATASET])


def test_the_served_black_box_answers_what_the_local_one_does_and_both_sides_count(served):
    from orchestrator.images import DatasetImages

    url, spec = served
    images = DatasetImages(DATASET, {"pool": "train"}, {"pool": np.arange(12)}, "tiny-clip", {"sizes": {"train": 12}})
    pixels = images.pixels("pool", np.arange(12))
    remote = ServedBlackBoxSpec(url, DATASET, 2).open()
    before = served_queries(url, DATASET)
    answers = remote.query(pixels)
    np.testing.assert_allclose(answers, spec.open().query(pixels), atol=1e-6)
    remote.query(pixels[:5])
    assert remote.queries == 17 == served_queries(url, DATASET) - before
    with pytest.raises(AttributeError, match="nothing else"):
        remote.encode_images  # noqa: B018
    with pytest.raises(ValueError, match=r"expected images \(n, 3, H, W\)"):
        remote.query(pixels[0])


def test_an_endpoint_that_is_down_is_a_clear_error_that_names_the_retry():
    dead = ServedBlackBoxSpec(f"http://127.0.0.1:{_free_port()}/blackbox", DATASET, 2, timeout=5).open()
    with pytest.raises(BlackBoxUnreachable, match="did not answer.*retry resumes from its last finished round"):
        dead.query(np.zeros((2, 3, 32, 32), np.float32))
    assert dead.queries == 0


def test_a_sweep_drives_valiant_through_ray_serve_and_the_server_counts_what_mlflow_logged(ray_cluster, tmp_path,
                                                                                          session_cache):
    from mlflow.tracking import MlflowClient

    from orchestrator.config import load_config
    from orchestrator.sweep import run_sweep
    from tests.test_sweep import _config, _trial_runs

    fast = {"steps": 2, "batch_size": 8, "draws": 1}
    methods = [{"name": "valiant", "acquisition": "valiant", "adaptation": "linear_probe",
                "selector": {"adaptation": "vipd", "adaptation_options": fast}}]
    path = _config(tmp_path, session_cache, name="served", datasets=[DATASET], methods=methods, seeds=[0],
                   rounds=1, dataset_options={DATASET: SIZES},
                   budgets={"b": {"kind": "per_round", "count": 5}}, blackbox={"serve": True, "port": PORT})
    config = load_config(path)
    outcome = run_sweep(config)
    assert outcome.trials == 1 and not outcome.failed
    client, runs, _ = _trial_runs(config.tracking_uri, "served")
    logged = sum(client.get_metric_history(r.info.run_id, "cost_blackbox_queries")[-1].value for r in runs)
    assert logged == fast["steps"] * fast["draws"] * 2 * 2 * fast["batch_size"]
    parent = MlflowClient(config.tracking_uri).search_runs(
        [client.get_experiment_by_name("served").experiment_id], "tags.`alvlm.sweep` = 'served'")
    served = [r.data.metrics.get(f"served_queries/{DATASET}") for r in parent]
    assert logged in served


def test_the_black_box_benchmark_prints_its_figures_side_by_side(served, capsys):
    import torch

    from benchmarks.blackbox import main

    threads = torch.get_num_threads()
    try:
        result = main(["--pools", "120", "--steps", "1", "--serve-seconds", "0.5", "--port", str(PORT)])
    finally:
        torch.set_num_threads(threads)
    row = result["pools"][0]
    assert row["vipd_queries_once"] == 1 * 5 * 2 * 2 * 30  # one step, 5 draws, 120 rows in 4 batches of 30
    assert row["baps_queries_per_round"] == 5 * 2 * 25 + 20  # 100 labelled rows in 4 batches of 25, + 20 scored
    assert result["serving"]["served_queries_per_s"] > 0
    assert "through Ray Serve" in capsys.readouterr().out


def test_an_endpoint_down_fails_the_trial_clearly_and_the_rerun_finishes_it(served, tmp_path, session_cache):
    from orchestrator.config import load_config
    from orchestrator.serving import serve_blackboxes, stop_blackboxes
    from orchestrator.sweep import run_sweep
    from tests.test_sweep import _config, _trial_runs

    url, spec = served
    stop_blackboxes([DATASET])  # the route now answers 404: the black box is "down"
    methods = [{"name": "valiant", "acquisition": "valiant", "adaptation": "linear_probe",
                "selector": {"adaptation": "vipd", "adaptation_options": {"steps": 1, "batch_size": 8, "draws": 1}}}]
    path = _config(tmp_path, session_cache, name="down", datasets=[DATASET], methods=methods, seeds=[0], rounds=1,
                   dataset_options={DATASET: SIZES}, retries=0,
                   budgets={"b": {"kind": "per_round", "count": 5}}, blackbox={"url": url})
    config = load_config(path)
    try:
        first = run_sweep(config)
    finally:
        serve_blackboxes({DATASET: spec}, PORT)  # back up, for this test's rerun and the module's other tests
    assert first.failed
    client, runs, _ = _trial_runs(config.tracking_uri, "down")
    assert "the trial fails now and its retry resumes" in runs[0].data.tags["alvlm.error"]
    again = run_sweep(config)
    assert not again.failed
    client, runs, _ = _trial_runs(config.tracking_uri, "down")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 1
    assert [m.step for m in client.get_metric_history(finished[0].info.run_id, "labels_spent")] == [0, 1]
