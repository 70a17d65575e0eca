"""VALIANT_Multi: one prompt decoder trained on the union of several pools, through each pool's black box,
cached once and shared by the trials of those datasets; its queries charged to each trial's round 0."""

import json

import numpy as np
import pytest

from methods.adaptation.blackbox.valiant import VIPDPredictor, instability
from methods.adaptation.blackbox.valiant_multi import PoolSource
from methods.base import AdaptContext, TrainSet
from methods.core.spsa import load_flat
from methods.preparation import SHARED_VIPD
from methods.registry import ADAPTATIONS
from methods.segmentation_codes import SegmentationCodes

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"steps": 4, "batch_size": 8, "draws": 2}
DATASETS = ["synth-lesions", "synth-scans"]


@pytest.fixture(scope="module")
def pools():
    from datasets.registry import get_card
    from methods.core.blackbox import ClipBlackBoxSpec
    from orchestrator.images import DatasetImages
    from orchestrator.preparation import card_inputs

    out = {}
    for name, n in zip(DATASETS, (40, 24)):
        card = get_card(name)
        images = DatasetImages(name, {"pool": "train", "test": "test"}, {"pool": np.arange(n), "test": np.arange(8)},
                               "tiny-clip", {"sizes": {"train": n, "test": 8}})
        codes = SegmentationCodes(epochs=2).run(card_inputs(name, "tiny-clip", images=images),
                                                np.random.default_rng(0))
        out[name] = {"images": images, "codes": codes, "card": card, "n": n,
                     "spec": ClipBlackBoxSpec("tiny-clip", tuple(card.classes), tuple(card.prompts()))}
    return out


def _sources(pools):
    return [PoolSource(d, pools[d]["images"], pools[d]["codes"], pools[d]["spec"].open()) for d in DATASETS]


def _context(pool, shared, previous=None):
    from orchestrator.zeroshot import class_embeddings
    from methods.adaptation.prompting.model import frozen_clip

    card, clip = pool["card"], frozen_clip("tiny-clip")
    per_template = np.stack([clip.encode_texts([t.format(c) for c in card.classes]).numpy() for t in card.prompts()])
    return AdaptContext(card.num_classes, 0, class_embeddings(per_template), device="cpu",
                        class_names=list(card.classes), images=pool["images"], previous=previous,
                        prepared={"segmentation_codes": pool["codes"], SHARED_VIPD: shared})


def test_the_shared_decoder_trains_on_both_pools_counts_each_black_box_and_is_a_function_of_the_seed(pools):
    learner = ADAPTATIONS.create("vipd_multi", **FAST)
    shared = learner.train_shared(_sources(pools), "tiny-clip", "fp32", feature_dim=128)
    per_step = FAST["draws"] * 2 * 2 * FAST["batch_size"]  # two loss evaluations x (X + P, X^p + P^p) per draw
    assert shared["queries"].sum() == FAST["steps"] * per_step
    assert (shared["queries"] % per_step == 0).all()  # every step's batch came from one pool
    assert shared["pool_sizes"].tolist() == [40, 24]
    again = ADAPTATIONS.create("vipd_multi", **FAST).train_shared(_sources(pools), "tiny-clip", "fp32", 128)
    np.testing.assert_array_equal(again["decoder"], shared["decoder"])
    other = ADAPTATIONS.create("vipd_multi", **FAST).train_shared(_sources(pools), "tiny-clip", "fp32", 128, seed=1)
    assert not np.array_equal(other["decoder"], shared["decoder"])


def test_a_trial_ranks_its_own_pool_with_the_shared_weights_and_queries_nothing(pools):
    import torch

    from methods.adaptation.prompting.model import frozen_clip

    learner = ADAPTATIONS.create("vipd_multi", **FAST)
    shared = learner.train_shared(_sources(pools), "tiny-clip", "fp32", 128)
    pool = pools["synth-scans"]
    empty = TrainSet(np.zeros((0, 1), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64))
    predictor = learner.fit(empty, _context(pool, shared), np.random.default_rng(3))
    np.testing.assert_array_equal(predictor.decoder, shared["decoder"])
    assert predictor.shared_queries == shared["queries"].sum()  # charged to the round that fitted it
    decoder = learner._decoder(128, pool["codes"]["codes"].shape[1], 32, torch.Generator().manual_seed(0))
    load_flat(decoder, shared["decoder"])
    generator = torch.Generator().manual_seed(int(np.random.default_rng(3).integers(2**31)))
    direct = instability(decoder, pool["images"], np.asarray(pool["codes"]["codes"], np.float32),
                         frozen_clip("tiny-clip"), pool["codes"], 0.1, generator)
    np.testing.assert_allclose(predictor.instability, direct, rtol=1e-5, atol=1e-6)
    reused = learner.fit(empty, _context(pool, shared, previous=VIPDPredictor.from_state(predictor.state())),
                         np.random.default_rng(9))
    assert reused.shared_queries == 0 and np.array_equal(reused.instability, predictor.instability)
    assert "blackbox" not in learner.requires  # the trial itself never queries


def _multi(**extra):
    return {"name": "valiant_multi", "acquisition": "valiant", "adaptation": "linear_probe",
            "selector": {"adaptation": "vipd_multi", "adaptation_options": {**FAST, **extra}}}


@pytest.mark.parametrize("method, blackbox, message", [
    (_multi(), None, "trains its decoder through the black box"),
    (_multi(datasets=["synth-lesions", "synth-shapes"]), {}, "not datasets of the sweep"),
    (_multi(datasets=["synth-lesions"]), {}, "runs on \\['synth-scans'\\], which are not in its vipd_multi"),
])
def test_a_union_the_sweep_cannot_build_is_refused_before_ray_starts(tmp_path, session_cache, method, blackbox,
                                                                     message):
    from orchestrator.config import ConfigError, load_config
    from tests.test_sweep import _config

    extra = {} if blackbox is None else {"blackbox": blackbox}
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, session_cache, datasets=DATASETS, methods=[method], **extra))


def test_two_unions_over_one_dataset_are_refused(tmp_path, session_cache):
    from orchestrator.config import ConfigError, load_config
    from tests.test_sweep import _config

    first = {**_multi(), "datasets": DATASETS}
    second = {**_multi(steps=5), "name": "valiant_multi_5"}
    with pytest.raises(ConfigError, match="is in two vipd_multi unions"):
        load_config(_config(tmp_path, session_cache, datasets=DATASETS, methods=[first, second], blackbox={}))


def test_valiant_multi_in_a_real_sweep_trains_once_and_every_trial_pays_its_queries(ray_cluster, tmp_path,
                                                                                     session_cache):
    from orchestrator.config import load_config
    from orchestrator.sweep import run_sweep
    from tests.test_sweep import _config, _trial_runs

    sizes = {"sizes": {"train": 60, "test": 30}}
    path = _config(tmp_path, session_cache, name="multi", datasets=DATASETS, methods=[_multi()], seeds=[0, 1],
                   rounds=1, dataset_options={d: sizes for d in DATASETS}, blackbox={},
                   budgets={"b": {"kind": "per_round", "count": 6}})
    config = load_config(path)
    outcome = run_sweep(config)
    assert outcome.trials == 4 and not outcome.failed
    shared = list((session_cache / "prepared" / "_shared").glob(f"*/{SHARED_VIPD}-v1-*/manifest.json"))
    manifests = [json.loads(p.read_text()) for p in shared]
    mine = [m for m in manifests if m["datasets"] == DATASETS and m["key"]["options"]["steps"] == FAST["steps"]]
    assert len(mine) == 1, "one shared decoder for the whole sweep"
    queries = mine[0]["queries"]
    assert queries == FAST["steps"] * FAST["draws"] * 2 * 2 * FAST["batch_size"]
    client, runs, _ = _trial_runs(config.tracking_uri, "multi")
    assert {r.data.params["dataset"] for r in runs} == set(DATASETS)
    for run in runs:
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "cost_blackbox_queries")}
        assert history == {0: queries, 1: queries}  # charged once, at round 0
    mtime = shared[0].stat().st_mtime
    again = run_sweep(load_config(_config(tmp_path, session_cache, name="multi2", datasets=DATASETS,
                                          methods=[_multi()], seeds=[2], rounds=1, blackbox={},
                                          dataset_options={d: sizes for d in DATASETS},
                                          budgets={"b": {"kind": "per_round", "count": 6}})))
    assert not again.failed and shared[0].stat().st_mtime == mtime  # reused from the cache, not retrained
