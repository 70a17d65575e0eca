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
            check_reachable(address)
            ray.init(address=address, **kwargs)
        else:
            # "local", not None: ray.init() would otherwise join whatever cluster this machine last started
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                     _system_config={"num_workers_soft_limit": idle_worker_limit(num_cpus)}, **kwargs)
    ctx = DataContext.get_current()
    if quiet:
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False


def idle_worker_limit(num_cpus: int | None) -> int:
    """How many worker processes a local node keeps alive when idle: one per CPU, plus room for encoder actors.

    Ray's default (one per CPU) counts actor processes too, so while an encoder session's actors lived, Ray
    killed a warm decode worker after every embed call and started a new one part-way through the next,
    which imported torch again (4 CPU-seconds, a fifth of a 20K-image call on two cores).
    """
    return (num_cpus or os.cpu_count() or 1) + 2


class RayAddressError(RuntimeError):
    """Nothing answers at the Ray address the sweep was told to join."""


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail within seconds when no Ray head listens at ``host:port`` (``ray.init`` waits minutes, then times out).

    ``auto`` and ``local`` are resolved by Ray itself from this machine's session files and are not probed.
    """
    import socket

    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise RayAddressError(f"Ray address {address!r} is not HOST:PORT (or ray://HOST:PORT, auto); e.g. "
                              "--address 10.0.0.5:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as exc:
        raise RayAddressError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start it (`ray start "
                              "--head` or `ray up cluster.yaml`), run the sweep on the head node, or fix --address "
                              "/ RAY_ADDRESS") from None


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))
