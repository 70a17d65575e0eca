"""Memory-bounded kernels for acquisition at ImageNet scale (torch: CPU or CUDA)."""

from .badge import badge_kmeanspp, factorised_sq_dist
from .kcenter import greedy_k_center

__all__ = ["badge_kmeanspp", "factorised_sq_dist", "greedy_k_center"]
