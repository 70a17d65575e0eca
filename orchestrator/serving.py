"""The sweep's black box served over HTTP with Ray Serve: what an API foundation model looks like to a method.

``blackbox: {serve: true}`` in a sweep config starts one Ray Serve application
per dataset on the cluster (``/blackbox/<dataset>`` on 127.0.0.1, the port
from the config) wrapping the local zero-shot black box
(:class:`methods.core.blackbox.ClipBlackBoxSpec`), and hands trials a
:class:`methods.core.blackbox.ServedBlackBoxSpec` instead: every query then
crosses HTTP, and the server counts what it answered (``GET`` on the route),
which the tests compare with the ledger's count. ``blackbox: {url: ...}``
points trials at an endpoint someone else runs with the same protocol. The
replica takes no CPU reservation, so it never blocks a trial from being
scheduled on a small machine.
"""

from __future__ import annotations

from methods.core.blackbox import ClipBlackBoxSpec, _from_npy, _npy

APP_PREFIX = "blackbox-"


def _deployment():
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
    class BlackBoxServer:
        """One dataset's foundation model: POST an .npy image batch, get .npy distributions; GET the count."""

        def __init__(self, spec: ClipBlackBoxSpec):
            self.box = spec.open()

        async def __call__(self, request: Request):
            if request.method == "GET":
                return JSONResponse({"queries": int(self.box.queries)})
            try:
                answer = self.box.query(_from_npy(await request.body()))
            except ValueError as exc:  # a malformed batch: the client's error, said plainly
                return Response(str(exc), status_code=400)
            return Response(_npy(answer), media_type="application/octet-stream")

    return BlackBoxServer


def serve_blackboxes(specs: dict[str, ClipBlackBoxSpec], port: int = 8000, host: str = "127.0.0.1") -> str:
    """Start (or replace) one application per dataset; returns the base URL trials post to."""
    from ray import serve

    serve.start(http_options={"host": host, "port": int(port)})
    server = _deployment()
    for dataset, spec in specs.items():
        serve.run(server.bind(spec), name=f"{APP_PREFIX}{dataset}", route_prefix=f"/blackbox/{dataset}")
    url = f"http://{host}:{int(port)}/blackbox"
    _check_reachable(url, next(iter(specs)))
    return url


def _check_reachable(url: str, dataset: str) -> None:
    """Serve's HTTP proxy binds once per cluster; an instance started earlier keeps its own port."""
    from methods.core.blackbox import served_queries

    try:
        served_queries(url, dataset)
    except OSError as exc:
        raise RuntimeError(f"the black box was deployed but {url}/{dataset} does not answer ({exc}); Ray Serve may "
                           "already run on this cluster on another port (`serve status`): set blackbox.port to "
                           "it") from None


def stop_blackboxes(datasets) -> None:
    """Delete the applications :func:`serve_blackboxes` started (the Serve instance itself stays up)."""
    from ray import serve

    for dataset in datasets:
        serve.delete(f"{APP_PREFIX}{dataset}")
