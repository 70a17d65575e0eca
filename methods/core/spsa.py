"""SPSA with gradient correction: zero-order training for models whose loss goes through a black box.

VALIANT (eq. 1) trains its prompt decoder this way, after BlackVIP (Oh et al.,
CVPR 2023), because the foundation model answers distributions and nothing
else. With Δ a random vector of entries ±U[0.5, 1] (random signs) the two-sided
estimate is

    ĝ = (L(w + c_k·Δ) − L(w − c_k·Δ)) / (2·c_k) · Δ⁻¹   (element-wise inverse),

averaged over ``draws`` independent Δ. For a quadratic L one draw is exact along
Δ (ĝ_i·Δ_i = Δᵀ∇L for every i) and the estimate is unbiased, because the cross terms
Δ_j/Δ_i have mean zero under independent signs (both are tested). The step
sizes decay as a_k = a/(k + o)^α and c_k = c/k^γ (k counted from 1), and the
"gradient correction" is Nesterov-style momentum: m ← β·m + ĝ, then
w ← w − a_k·(ĝ + β·m). Defaults are BlackVIP's (o = 1, c = 0.01, a = 0.01,
α = 0.4, γ = 0.1, β = 0.9, 5 draws), so every step costs 2 × draws loss
evaluations -- the figure a black-box method multiplies its query count by.
BAPS (Paranjape et al., MICCAI 2024) uses the same estimator with a step
decay, a_k = a·0.33^(k // 300) (``schedule: step``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SPSAGC:
    a: float = 0.01
    c: float = 0.01
    o: float = 1.0
    alpha: float = 0.4
    gamma: float = 0.1
    beta: float = 0.9
    draws: int = 5
    schedule: str = "power"  # a_k = a/(k + o)^α; "step": a·ratio^(k // every) (BAPS)
    ratio: float = 0.33
    every: int = 300

    def __post_init__(self):
        if min(self.a, self.c) <= 0 or self.draws < 1 or not 0 <= self.beta < 1:
            raise ValueError(f"SPSA-GC needs a > 0, c > 0, draws >= 1 and 0 <= beta < 1; got {self}")
        if self.schedule not in ("power", "step") or self.every < 1:
            raise ValueError(f"SPSA-GC schedule must be 'power' or 'step' (every >= 1), got {self}")

    def step_sizes(self, k: int) -> tuple[float, float]:
        """(a_k, c_k) of step ``k`` (from 1)."""
        if self.schedule == "power":
            return self.a / (k + self.o) ** self.alpha, self.c / k ** self.gamma
        return self.a * self.ratio ** (k // self.every), self.c / k ** self.gamma

    @staticmethod
    def perturbation(n: int, generator):
        """Δ with entries ±U[0.5, 1], independent random signs."""
        import torch

        magnitude = 0.5 + 0.5 * torch.rand(n, generator=generator)
        sign = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
        return magnitude * sign

    def gradient(self, loss: Callable, w, c_k: float, generator):
        """The two-sided estimate at ``w``, averaged over ``draws`` perturbations."""
        import torch

        total = torch.zeros_like(w)
        for _ in range(self.draws):
            delta = self.perturbation(len(w), generator).to(w)
            diff = float(loss(w + c_k * delta)) - float(loss(w - c_k * delta))
            total += diff / (2 * c_k) / delta
        return total / self.draws

    def step(self, loss: Callable, w, m, k: int, generator):
        """Step ``k`` (from 1) from ``w`` with momentum ``m``; returns the new (w, m)."""
        import torch

        a_k, c_k = self.step_sizes(k)
        g = self.gradient(loss, w, c_k, generator)
        if not torch.isfinite(g).all():
            raise FloatingPointError(f"SPSA-GC: the loss gave a non-finite gradient estimate at step {k}; "
                                     "lower a or c, or check the loss for NaNs")
        m = self.beta * m + g
        return w - a_k * (g + self.beta * m), m

    def minimise(self, loss: Callable, w0, steps: int, generator):
        """``steps`` SPSA-GC steps from ``w0`` on one fixed loss; returns the final vector."""
        import torch

        w = torch.as_tensor(w0, dtype=torch.float32).clone()
        m = torch.zeros_like(w)
        for k in range(1, steps + 1):
            w, m = self.step(loss, w, m, k, generator)
        return w


def flat_parameters(module) -> np.ndarray:
    """A module's parameters as one float32 vector (the order of ``module.parameters()``)."""
    import torch

    return torch.cat([p.detach().reshape(-1).float() for p in module.parameters()]).cpu().numpy()


def load_flat(module, vector) -> None:
    """Write a flat vector (from :func:`flat_parameters`) back into a module's parameters."""
    import torch

    vector = torch.as_tensor(vector, dtype=torch.float32)
    if len(vector) != sum(p.numel() for p in module.parameters()):
        raise ValueError(f"a vector of {len(vector)} values does not fit {type(module).__name__}'s "
                         f"{sum(p.numel() for p in module.parameters())} parameters")
    start = 0
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(vector[start: start + p.numel()].view_as(p))
            start += p.numel()
