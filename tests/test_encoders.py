"""Encoders load offline through open_clip's own code path, and fail fast when weights are absent."""

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from methods.core.encoders import (TINY_CLIP_CHECKPOINT, EncoderUnavailableError, FrozenEncoder, build_preprocess,
                                   load_encoder, parse_encoder)
from tests.conftest import ROOT


def _probe_images(n=8, seed=0):
    from datasets.registry import open_split

    source = open_split("synth-shapes", "test")
    return source, [source.load(i) for i in range(n)]


def test_tiny_clip_is_a_regular_open_clip_checkpoint():
    import open_clip

    enc = load_encoder("tiny-clip")
    direct, _, _ = open_clip.create_model_and_transforms("tiny-clip", pretrained=str(TINY_CLIP_CHECKPOINT))
    for (name, a), (_, b) in zip(enc.model.state_dict().items(), direct.state_dict().items()):
        assert torch.equal(a, b), name
    assert TINY_CLIP_CHECKPOINT.stat().st_size <= 25 * 2**20


def test_preprocess_from_config_equals_open_clip_transform():
    spec = parse_encoder("tiny-clip")
    assert repr(build_preprocess(spec)) == repr(FrozenEncoder(spec).preprocess)


def test_local_checkpoint_path_and_local_dir_give_identical_embeddings(tmp_path):
    _, images = _probe_images()
    default = load_encoder("tiny-clip")
    pixels = torch.stack([default.preprocess(im) for im in images])
    ref = default.encode_images(pixels)

    by_path = load_encoder(f"tiny-clip:{TINY_CLIP_CHECKPOINT}")
    assert torch.allclose(by_path.encode_images(pixels), ref, atol=1e-6)

    folder = tmp_path / "air-gapped-model"
    folder.mkdir()
    shutil.copy(TINY_CLIP_CHECKPOINT, folder / "open_clip_pytorch_model.bin")
    model_cfg = json.loads((ROOT / "methods/core/model_configs/tiny-clip.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    by_dir = load_encoder(f"local-dir:{folder}")
    assert torch.allclose(by_dir.encode_images(pixels), ref, atol=1e-6)
    assert parse_encoder(f"local-dir:{folder}").key != parse_encoder("tiny-clip").key


def test_embeddings_are_normalised_and_deterministic():
    _, images = _probe_images()
    enc = load_encoder("tiny-clip")
    pixels = torch.stack([enc.preprocess(im) for im in images])
    a, b = enc.encode_images(pixels), enc.encode_images(pixels)
    assert torch.equal(a, b)
    assert np.allclose(a.norm(dim=1).numpy(), 1.0, atol=1e-5)
    t = enc.encode_texts(["a photo of a circle.", "a photo of a star."])
    assert t.shape == (2, a.shape[1])


def test_missing_pretrained_weights_fail_fast_with_instructions():
    start = time.time()
    with pytest.raises(EncoderUnavailableError) as err:
        parse_encoder("ViT-B-16:openai", cache_dir="/nonexistent-cache")
    msg = str(err.value)
    assert "ViT-B-16" in msg and "openai" in msg and "ViT-B-16:/path/to/weights" in msg
    assert time.time() - start < 10


def test_bad_encoder_names_list_what_is_known():
    with pytest.raises(ValueError, match="tiny-clip"):
        parse_encoder("clip-large")
    with pytest.raises(ValueError, match="known tags"):
        parse_encoder("ViT-B-16:no-such-tag")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        parse_encoder("ViT-Z-99:openai")
    with pytest.raises(EncoderUnavailableError, match="no checkpoint file"):
        parse_encoder("ViT-B-16:/does/not/exist.bin")


def test_precision_is_part_of_the_cache_identity():
    assert parse_encoder("tiny-clip", "fp32").key != parse_encoder("tiny-clip", "bf16").key


def test_our_datasets_package_is_not_shadowed_and_stack_imports_cleanly():
    code = ("import orchestrator.features, ray.data, ray.tune, mlflow, open_clip, datasets, sys;"
            "print(datasets.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith(str(ROOT / "datasets"))
