"""The tiny CLIP's training script is deterministic for a seed (a short run, twice)."""

import torch

from experiments.train_tiny_clip import main


def test_training_is_deterministic_for_a_seed(tmp_path):
    args = ["--steps", "3", "--corpus-size", "512", "--batch-size", "64", "--warmup", "1", "--eval-size", "50",
            "--threads", "1"]
    first = main(args + ["--out", str(tmp_path / "a.pt")])
    second = main(args + ["--out", str(tmp_path / "b.pt")])
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first["zero_shot_top1"] == second["zero_shot_top1"]
    assert (tmp_path / "a.json").exists()
