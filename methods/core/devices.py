"""Which torch device a kernel, learner or encoder runs on."""

from __future__ import annotations


def pick_device(device: str | None = None) -> str:
    """The requested device, else CUDA when present, else CPU."""
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"
