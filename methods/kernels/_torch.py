"""Chunk sizing and array transfer shared by the kernels."""

from __future__ import annotations

import numpy as np


#: Bytes of a temporary block that the allocator recycles: a fresh 32 MB buffer costs ~3 ms of page faults
#: on the machines measured (as much as the pass that fills it), a 4 MB one is reused from the heap.
CACHE_BLOCK_BYTES = 4 << 20


def rows_per_chunk(n_cols: int, working_bytes: int, itemsize: int = 4) -> int:
    """How many rows of an ``n_cols``-wide float block fit in ``working_bytes``."""
    return max(1, int(working_bytes // max(1, n_cols * itemsize)))


def as_tensor(x: np.ndarray, device: str):
    import torch

    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
