"""Squared Euclidean distances from one bfloat16 matrix product per block, with a certified error bound.

On a CPU that multiplies bfloat16 natively (AVX512-BF16 or AMX) a bfloat16
product runs at 2-2.5x the float32 rate (330-390 against 150 GFLOP/s on the
two cores these figures come from). The kernels use it as a *prefilter*: a
distance whose bfloat16 value lies farther from a threshold (or a minimum)
than its worst-case error is decided by it, and the few within the error are
recomputed exactly (:func:`exact_sq_dist`, float64 differences). Decisions are
therefore those of float64 arithmetic on the float32 inputs, whatever the
bfloat16 rounding did.

One product gives the whole squared distance: the rows are augmented as
``[x, hi(|x|^2), lo(|x|^2), 1, 1, -hi(s), -lo(s)]`` and
``[-2y, 1, 1, hi(|y|^2), lo(|y|^2), 1, 1]``, where ``hi + lo`` is a float32
value split into two bfloat16 values (16 significant bits), so no float32
pass over the block adds the norms, and the product is ``|x - y|^2 - s``
for a per-row shift ``s`` (a threshold: the bfloat16 rounding of the output
is then relative to the distance *from the threshold*, small where it
matters). Values compare as int16 (:func:`bf16_ordinal`): for bfloat16 the
bit pattern orders non-negative values, and every negative one sits below
them, which is all a comparison with a positive limit needs -- at a third
of the time of a bfloat16 comparison in torch.

Error of one bfloat16 value ``a`` against the exact ``t = |x - y|^2`` (u =
2^-8, bfloat16's unit roundoff; gamma_n = n 2^-24 / (1 - n 2^-24)):

* inputs rounded to bfloat16: ``2 (2u + u^2) |x| |y|`` on the cross term;
* the norms: float32 sums of squares (gamma_d) split into hi + lo (u^2),
  the shift split likewise (u^2 |s|);
* float32 accumulation of the d + 6 exact bfloat16 products:
  ``gamma_{d+6} (1 + u)^2 (2 |x| |y| + |x|^2 + |y|^2 + |s|)``;
* the output rounded to bfloat16 (even truncated): ``kappa |a|`` with
  ``kappa = 2u / (1 - 2u)``.

so ``|a - (t - s)| <= kappa |a| + E`` with
``E = 1.01 (A |x| |y| + B (|x|^2 + |y|^2) + C |s|)`` (:func:`bf16_error_terms`;
the 1.01 covers the float32 norms the bound itself is computed from). Per
row the largest ``|y|`` stands in for ``|y|``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

BF16_UNIT = 2.0 ** -8  # unit roundoff of bfloat16's 8 significant bits
FLOAT32_UNIT = 2.0 ** -24
#: Relative error of a bfloat16 output, even if truncated rather than rounded.
KAPPA = 2 * BF16_UNIT / (1 - 2 * BF16_UNIT)
#: Entries of one product block: 32 MB of bfloat16, where the products ran fastest here (1,024 x 20,000 at
#: 400 GFLOP/s against 290 for 3,355 x 20,000).
BLOCK_ENTRIES = 1 << 24


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (without, the prefilter would be slower, not faster)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(device: str, prefilter: str) -> bool:
    """Whether a kernel's ``prefilter`` option (``auto``, ``bf16``, ``none``) asks for bfloat16 products here.

    ``auto`` uses them on a CPU with native bfloat16 only; a GPU keeps
    float32, which is fast there and whose bfloat16 reductions may run in
    reduced precision.
    """
    if prefilter not in ("auto", "bf16", "none"):
        raise ValueError(f"prefilter must be 'auto', 'bf16' or 'none', got {prefilter!r}")
    if prefilter == "none":
        return False
    return device == "cpu" and (prefilter == "bf16" or cpu_has_native_bf16())


def _gamma(n: int) -> float:
    return n * FLOAT32_UNIT / (1 - n * FLOAT32_UNIT)


def bf16_error_terms(dim: int) -> tuple[float, float, float]:
    """``(A, B, C)`` of the module docstring's bound ``E = 1.01 (A |x| |y| + B (|x|^2 + |y|^2) + C |s|)``."""
    u, g = BF16_UNIT, _gamma(dim + 6)
    a = 2 * (2 * u + u * u) + 2 * g * (1 + u) ** 2
    b = u * u + _gamma(dim) + g * (1 + u) ** 2 * (1 + _gamma(dim))
    c = u * u + g * (1 + u) ** 2
    return a, b, c


def float32_margin(dim: int) -> float:
    """Worst-case error of a float32 squared distance, per unit of ``(||x|| + ||c||)^2``: the dot
    product and both norms over ``dim`` terms (gamma_dim each, counted generously) and the two sums."""
    return (3 * dim + 4) * FLOAT32_UNIT * 1.01


def _split(values):
    """``(hi, lo)`` bfloat16 tensors with ``hi + lo`` equal to the float32 ``values`` to about 16 bits."""
    hi = values.bfloat16()
    return hi, (values - hi.float()).bfloat16()


def sq_norms(x):
    """Squared row norms of a float32 tensor (a tenth of the time of ``(x * x).sum(1)`` on a CPU)."""
    import torch

    return torch.linalg.vector_norm(x, dim=1).square_()


def augment_rows(x, shift: float = 0.0):
    """``([x, hi(|x|^2), lo(|x|^2), 1, 1, -hi(s), -lo(s)]`` in bfloat16, ``|x|^2``): the left factor."""
    import torch

    x = x.float()
    norms = sq_norms(x)
    hi, lo = _split(norms)
    s_hi, s_lo = _split(torch.full((len(x),), -float(shift), device=x.device))
    ones = torch.ones((len(x), 2), dtype=torch.bfloat16, device=x.device)
    return torch.cat([x.bfloat16(), hi[:, None], lo[:, None], ones, s_hi[:, None], s_lo[:, None]], dim=1), norms


def augment_targets(t):
    """``[-2 t, 1, 1, hi(|t|^2), lo(|t|^2), 1, 1]`` in bfloat16, and the largest ``|t|``: the right factor."""
    import torch

    t = t.float()
    norms = sq_norms(t)
    hi, lo = _split(norms)
    ones = torch.ones((len(t), 2), dtype=torch.bfloat16, device=t.device)
    largest = float(norms.max().sqrt()) if len(t) else 0.0
    return torch.cat([(-2 * t).bfloat16(), ones, hi[:, None], lo[:, None], ones], dim=1), largest


def error_bound(row_sq_norms, max_target_norm: float, dim: int, shift: float = 0.0):
    """Per row, ``E`` of the module docstring against targets no longer than ``max_target_norm``."""
    a, b, c = bf16_error_terms(dim)
    return 1.01 * (a * row_sq_norms.sqrt() * max_target_norm + b * (row_sq_norms + max_target_norm ** 2)
                   + c * abs(float(shift)))


def bf16_ordinal(limits):
    """int16 patterns of the smallest bfloat16 values ``>= limits`` (positive float32 tensor): a bfloat16
    value ``a`` viewed as int16 is below one of them exactly when ``a`` is below that bfloat16 value."""
    import torch

    rounded = limits.bfloat16()
    return rounded.view(torch.int16) + (rounded.float() < limits).to(torch.int16)


class Bf16SqDist:
    """Squared distances from blocks of rows to fixed ``targets`` (CPU), one bfloat16 product each.

    ``block(x, start, stop, shift)`` returns ``(a, err)``: the bfloat16
    matrix of approximate squared distances from the rows ``x`` to targets
    ``start:stop``, less ``shift``, and per row ``E`` of the module docstring
    against the largest target: ``|a_ij - (t_ij - shift)| <= KAPPA |a_ij| + err_i``. The
    augmented targets are kept row-major, so a range of them is a contiguous
    slice that the product reads transposed in place.
    """

    def __init__(self, targets: np.ndarray, rows: np.ndarray | None = None, chunk: int = 65536):
        """``targets``: float32 array; ``rows``: which of its rows, in which order (default all); built chunk
        by chunk, so no float32 copy of the selected rows is ever whole."""
        import torch

        rows = np.arange(len(targets)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.dim = targets.shape[1]
        parts = [augment_targets(torch.from_numpy(np.take(targets, rows[s: s + chunk], axis=0)))
                 for s in range(0, max(1, len(rows)), chunk)]
        self.augmented = torch.cat([p[0] for p in parts])
        self.max_norm = max(p[1] for p in parts)
        self._buffer = None

    def block(self, x, start: int = 0, stop: int | None = None, shift: float = 0.0):
        """The product for rows ``x`` against targets ``start:stop``, written into one buffer that every call
        reuses (a fresh output each call cost 15-20 % of the product in page faults): use it before the
        next call."""
        import torch

        left, norms = augment_rows(x, shift)
        right = self.augmented[start:stop]
        size = len(left) * len(right)
        if self._buffer is None or self._buffer.numel() < size:
            self._buffer = torch.empty(size, dtype=torch.bfloat16)
        out = self._buffer[:size].view(len(left), len(right))
        torch.mm(left, right.T, out=out)
        return out, error_bound(norms, self.max_norm, self.dim, shift)


def exact_sq_dist(x: np.ndarray, left: np.ndarray, right: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``|x[left] - x[right]|^2`` in float64 from the differences, pair by pair: symmetric and the same
    number for a pair wherever it sits in the batch (numpy's pairwise sum over each contiguous row). Small
    chunks keep the float64 rows in cache (3x faster than 16K-pair chunks)."""
    out = np.empty(len(left), dtype=np.float64)
    for s in range(0, len(left), chunk):
        diff = np.take(x, left[s: s + chunk], axis=0).astype(np.float64)
        diff -= np.take(x, right[s: s + chunk], axis=0)
        out[s: s + chunk] = np.square(diff, out=diff).sum(1)
    return out
