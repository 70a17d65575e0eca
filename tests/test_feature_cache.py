"""The Ray Data embedding stage on a real single-node cluster: correctness, reuse, recovery, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.card import DatasetCard, SourceSpec
from datasets.registry import open_split, register_card
from methods.core.encoders import load_encoder, parse_encoder
from orchestrator.features import (CacheNotWritableError, CorruptImagesError, EmbedOptions, embed_class_texts,
                                   embed_split, embed_splits, split_cache, verify)

SMALL = {"sizes": {"train": 300, "test": 120}}


def test_pipeline_matches_direct_encoding_and_is_reused(ray_cluster, tmp_path):
    first = embed_split("synth-shapes", "train", "tiny-clip", tmp_path, EmbedOptions(batch_size=64),
                        source_options=SMALL)
    assert not first.reused and len(first) == 300 and first.features.shape[1] == 128
    assert isinstance(first.features, np.memmap)
    source = open_split("synth-shapes", "train", **SMALL)
    assert np.array_equal(first.labels, source.labels) and np.array_equal(first.indices, np.arange(300))
    assert verify(first)
    manifest = first.manifest
    for key in ("dataset", "split", "encoder", "preprocess", "count", "dim", "dtype", "checksum"):
        assert key in manifest

    enc = load_encoder("tiny-clip")
    idx = [0, 7, 123, 299]
    direct = enc.encode_images(torch.stack([enc.preprocess(source.load(i)) for i in idx])).numpy()
    assert np.allclose(np.asarray(first.features[idx]), direct, atol=1e-5)

    again = embed_split("synth-shapes", "train", "tiny-clip", tmp_path, source_options=SMALL)
    assert again.reused and np.array_equal(np.asarray(again.features), np.asarray(first.features))


def test_partial_cache_is_completed_to_identical_features(ray_cluster, tmp_path):
    opts = EmbedOptions(batch_size=50, shard_size=100)
    full = embed_split("synth-scans", "train", "tiny-clip", tmp_path, opts, source_options=SMALL)
    reference = np.array(full.features)
    directory = full.directory
    # Simulate a run killed mid-way: no manifest, no consolidated arrays, one shard missing, one truncated.
    for name in ("manifest.json", "features.npy", "labels.npy", "indices.npy"):
        (directory / name).unlink()
    (directory / "shard-000000100-000000200.parquet").unlink()
    (directory / "shard-000000200-000000300.parquet").write_bytes(b"PAR1 truncated")
    resumed = embed_split("synth-scans", "train", "tiny-clip", tmp_path, opts, source_options=SMALL)
    assert not resumed.reused and resumed.manifest["resumed_shards"] == 1
    assert np.allclose(np.asarray(resumed.features), reference, atol=1e-6)


def test_caches_of_different_sources_or_preprocessing_never_mix(tmp_path):
    spec = parse_encoder("tiny-clip")
    a = split_cache(tmp_path, spec, "synth-shapes", open_split("synth-shapes", "train", **SMALL), 4096)
    b = split_cache(tmp_path, spec, "synth-shapes", open_split("synth-shapes", "train", seed=1, **SMALL), 4096)
    c = split_cache(tmp_path, parse_encoder("tiny-clip", "bf16"), "synth-shapes",
                    open_split("synth-shapes", "train", **SMALL), 4096)
    assert len({a.directory, b.directory, c.directory}) == 3


def test_text_embeddings_cover_every_class_and_template(ray_cluster, tmp_path):
    text = embed_class_texts("synth-patterned-shapes", "tiny-clip", tmp_path)
    assert text["embeddings"].shape == (3, 36, 128) and not text["reused"]
    assert np.allclose(np.linalg.norm(text["embeddings"], axis=-1), 1.0, atol=1e-5)
    assert embed_class_texts("synth-patterned-shapes", "tiny-clip", tmp_path)["reused"]


@pytest.fixture
def folder_with_a_corrupt_image(tmp_path):
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / "train" / cls / f"{i}.png")
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"this is not a png")
    register_card(DatasetCard(
        name="tmp-pets", display_name="tmp", classes=["cat", "dog"], class_source="test",
        templates={"default": ["a photo of a {}."]}, modality="natural", splits={"train": "test"},
        source=SourceSpec(kind="imagefolder", options={"root": str(root)}, obtain="made by the test"),
    ))
    return bad


def test_corrupt_images_are_reported_then_skipped_on_request(ray_cluster, tmp_path, folder_with_a_corrupt_image):
    with pytest.raises(CorruptImagesError) as err:
        embed_split("tmp-pets", "train", "tiny-clip", tmp_path / "c", EmbedOptions(batch_size=4))
    assert str(folder_with_a_corrupt_image) in str(err.value) and "--on-corrupt skip" in str(err.value)
    kept = embed_split("tmp-pets", "train", "tiny-clip", tmp_path / "c", EmbedOptions(batch_size=4, on_corrupt="skip"))
    assert len(kept) == 10 and len(kept.manifest["skipped"]) == 1
    assert kept.manifest["skipped"][0] not in set(kept.indices.tolist())


def test_unwritable_cache_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(CacheNotWritableError, match="--cache"):
        embed_split("synth-shapes", "test", "tiny-clip", blocker / "cache", source_options=SMALL)


def test_embed_cli_prints_one_json_line_and_reuses(ray_cluster, tmp_path, capsys):
    from experiments.embed import main

    args = ["--dataset", "synth-lesions", "--cache", str(tmp_path), "--zeroshot",
            "--source-option", json.dumps(SMALL["sizes"]).join(["sizes=", ""])]
    first = main(args)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == first
    assert first["splits"]["train"]["count"] == 300 and first["dim"] == 128 and not first["reused"]
    assert 0.0 <= first["zeroshot"]["auc"] <= 1.0
    assert main(args)["reused"]
    listing = main(["--list"])
    assert "synth-shapes" in listing["datasets"] and "tiny-clip" in listing["encoders"]


def test_several_datasets_share_one_pipeline(ray_cluster, tmp_path):
    out = embed_splits([("synth-shapes", "test"), ("synth-lesions", "test")], "tiny-clip", tmp_path,
                       source_options=SMALL)
    assert {k: len(v) for k, v in out.items()} == {("synth-shapes", "test"): 120, ("synth-lesions", "test"): 120}


def _alive_encoder_actors(wait_for_none_s: float = 0.0) -> set[str]:
    """Encoder actors the GCS reports alive (Ray's state API needs the dashboard, which tests do not start).

    ``ray.kill`` is asynchronous: with ``wait_for_none_s`` the answer is re-read until it is empty or time is up.
    """
    import time

    import ray._private.state as gcs

    deadline = time.monotonic() + wait_for_none_s
    while True:
        alive = {a["ActorID"] for a in gcs.actors().values()
                 if a["ActorClassName"] == "EncoderWorker" and a["State"] != "DEAD"}
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


def test_a_session_reuses_its_encoder_actors_and_frees_them_at_its_end(ray_cluster, tmp_path):
    from orchestrator.encoder_pool import encoder_session

    cold = embed_split("synth-lesions", "train", "tiny-clip", tmp_path / "cold", source_options=SMALL)
    assert _alive_encoder_actors(wait_for_none_s=10) == set()  # a call outside a session frees its actors
    with encoder_session():
        train = embed_split("synth-lesions", "train", "tiny-clip", tmp_path / "warm", source_options=SMALL)
        started = _alive_encoder_actors()
        test = embed_split("synth-lesions", "test", "tiny-clip", tmp_path / "warm", source_options=SMALL)
        text = embed_class_texts("synth-lesions", "tiny-clip", tmp_path / "warm")
        assert len(started) == 1 and _alive_encoder_actors() == started  # one actor served all three
    assert _alive_encoder_actors(wait_for_none_s=10) == set()
    assert np.array_equal(np.asarray(train.features), np.asarray(cold.features)) and len(test) == 120
    assert np.allclose(text["embeddings"], embed_class_texts("synth-lesions", "tiny-clip", tmp_path / "new")
                       ["embeddings"], atol=1e-6)


def test_a_failed_call_in_a_session_leaves_no_actor_for_the_next(ray_cluster):
    from orchestrator.encoder_pool import PoolShape, encoder_pool, encoder_session

    shape = PoolShape(parse_encoder("tiny-clip"))
    with encoder_session():
        with pytest.raises(RuntimeError, match="mid-call"), encoder_pool(shape) as broken:
            assert broken.encode_texts(["a photo"]).shape == (1, 128)
            raise RuntimeError("mid-call")
        assert not broken.actors and _alive_encoder_actors(wait_for_none_s=10) == set()
        with encoder_pool(shape) as fresh:
            assert fresh is not broken and fresh.encode_texts(["a photo"]).shape == (1, 128)


def test_embed_cli_unknown_dataset_lists_the_known_ones():
    from experiments.embed import main

    with pytest.raises(SystemExit, match="unknown dataset 'synth-shape'.*synth-shapes"):
        main(["--dataset", "synth-shape"])


def test_pixel_transform_closed_form_equals_the_real_transform_and_travels_without_torch(tmp_path):
    import pickle
    import subprocess
    import sys

    from torchvision import transforms as T

    from orchestrator.pixels import PixelTransform, _closed_form_holds

    spec = parse_encoder("tiny-clip")
    pixels_of, real = PixelTransform.of(spec), load_encoder("tiny-clip").preprocess
    assert pixels_of.normalise is not None and pixels_of.shape == (3, 32, 32)
    rng = np.random.default_rng(0)
    for size in ((32, 32), (50, 70)):  # the model's input size (closed form) and another (the real transform)
        images = rng.integers(0, 256, (4, *size, 3), dtype=np.uint8)
        expected = np.stack([real(Image.fromarray(a)).numpy() for a in images])
        assert np.allclose(pixels_of.uint8_batch(images), expected, atol=1e-6)
    mean, std = pixels_of.normalise
    norm = T.Normalize(mean.ravel().tolist(), std.ravel().tolist())
    assert _closed_form_holds(T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor(), norm]), (mean, std), (3, 32, 32))
    assert not _closed_form_holds(T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(), norm]), (mean, std),
                                  (3, 32, 32))

    (tmp_path / "p.pkl").write_bytes(pickle.dumps(pixels_of))
    code = ("import pickle, sys; import numpy as np; p = pickle.loads(open(sys.argv[1], 'rb').read()); "
            "p.uint8_batch(np.zeros((2, 32, 32, 3), np.uint8)); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.pkl")], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"  # a decode worker never imports torch for model-sized images
