"""Chunk sizing and array transfer shared by the kernels."""

from __future__ import annotations

import numpy as np


def rows_per_chunk(n_cols: int, working_bytes: int, itemsize: int = 4) -> int:
    """How many rows of an ``n_cols``-wide float block fit in ``working_bytes``."""
    return max(1, int(working_bytes // max(1, n_cols * itemsize)))


def as_tensor(x: np.ndarray, device: str):
    import torch

    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
