"""Every node must write, and see, the paths trials write to: checked before the first trial.

Trials write their round states (the trial store) and Tune writes their checkpoints (the storage path)
from whichever worker they run on; the driver reads both back to resume. On a cluster these paths must
be one shared file system (``/mnt/shared`` in ``cluster.yaml``). A path that is node-local, read-only or
unmounted on some worker would otherwise surface as trials failing one by one, or worse, as a resume that
silently starts over. The check writes a marker from the driver, then asks one zero-CPU task pinned to
each alive node to find that marker and to write a file of its own, and names every node that cannot. A node
that leaves the cluster under the check (a spot worker reclaimed) is skipped with a warning: no trial will run
there, and refusing the sweep would blame the file system for it.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 30.0
FIX = ("mount the same shared file system at that path on every node (cluster.yaml mounts EFS at /mnt/shared), or "
       "point the sweep's workdir and ALVLM_STORAGE_PATH at one")


class SharedStorageError(RuntimeError):
    """A path trials write to is not writable, or not shared, on some node."""


def check_shared_paths(paths: dict[str, Path], timeout: float = PROBE_TIMEOUT_S) -> int:
    """Raise :class:`SharedStorageError` naming each node and path at fault; return the number of nodes checked.

    ``paths`` maps what a path is for ("trial store") to the path. A single-node cluster needs only the
    driver's own check (the trials run on its machine).
    """
    import ray

    token = secrets.token_hex(8)
    markers = {label: _write_marker(label, Path(path), token) for label, path in paths.items()}
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() else []
        if len(nodes) > 1:
            _probe_nodes(nodes, {label: str(path) for label, path in paths.items()}, token, timeout)
        return max(len(nodes), 1)
    finally:
        for marker in markers.values():
            marker.unlink(missing_ok=True)


def _write_marker(label: str, path: Path, token: str) -> Path:
    marker = path / f".alvlm-shared-{token}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
    except OSError as exc:
        raise SharedStorageError(f"the driver cannot write the {label} {path} ({exc.strerror or exc}); fix the "
                                 "path, or its permissions, before the sweep starts") from None
    return marker


def _probe_nodes(nodes: list[dict], paths: dict[str, str], token: str, timeout: float) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(probe_paths)
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
        paths, token): n for n in nodes}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    problems = [f"node {refs[ref]['NodeManagerAddress']} did not answer the storage check within {timeout:.0f} s"
                for ref in late]
    for ref in ready:
        node = refs[ref]["NodeManagerAddress"]
        try:
            problems += [f"node {node}: {p}" for p in ray.get(ref)]
        except (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError):
            log.warning("node %s (%s) left the cluster during the storage check; no trial will run there",
                        node, refs[ref]["NodeID"][:8])
        except Exception as exc:  # noqa: BLE001 - a probe that crashed on a live node is a finding
            problems.append(f"node {node}: the storage check failed ({type(exc).__name__}: {exc})")
    for ref in late:
        ray.cancel(ref, force=True)
    if problems:
        raise SharedStorageError("; ".join(problems) + f". To fix: {FIX}")


def probe_paths(paths: dict[str, str], token: str) -> list[str]:
    """On one node: what is wrong with each path there (empty when it is shared and writable)."""
    problems = []
    for label, path in paths.items():
        marker = Path(path) / f".alvlm-shared-{token}"
        if not marker.exists():
            problems.append(f"the {label} {path} is not the driver's (its marker is missing: a node-local "
                            "directory or an unmounted share)")
            continue
        own = Path(path) / f".alvlm-probe-{token}-{os.getpid()}"
        try:
            own.write_text(token)
            own.unlink()
        except OSError as exc:
            problems.append(f"cannot write the {label} {path} ({exc.strerror or exc})")
    return problems
