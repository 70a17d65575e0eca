"""Starting or joining Ray, the same way for every entry point."""

from __future__ import annotations

import logging
import os


def ensure_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
               quiet: bool = True) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start a single-node local cluster.

    Local mode in current Ray is a real single-node cluster; ``local_mode=True``
    no longer exists. Progress bars of Ray Data are silenced when ``quiet``, so
    logs of CI and of sweeps stay readable.
    """
    import ray
    from ray.data import DataContext

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # workers inherit it: nothing reaches for a model hub
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=not quiet)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
    ctx = DataContext.get_current()
    if quiet:
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))
