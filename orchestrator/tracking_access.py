"""Check an MLflow tracking server before a sweep starts: reachable, and accepting this user's credentials.

MLflow's client retries a refused connection for minutes and reports a wrong password as a traceback from
deep inside the first trial's logging. A sweep asks once, up front, with a short timeout, and stops with what
to fix. Credentials come from the environment only (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``,
or ``MLFLOW_TRACKING_TOKEN``), as MLflow's own client reads them; nothing here writes them anywhere.
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request

PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"


class TrackingAccessError(RuntimeError):
    """The tracking server cannot be reached or refuses these credentials; the message says what to fix."""


def _headers() -> dict[str, str]:
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {"Authorization": f"Bearer {token}"} if token else {}


def check_tracking_server(uri: str, timeout: float = 10.0) -> None:
    """Raise :class:`TrackingAccessError` unless an http(s) tracking URI answers a search with these credentials.

    File and database stores (``sqlite:///``, ``./mlruns``) need no server and are not checked.
    """
    if not uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(uri.rstrip("/") + PROBE, headers=_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            who = os.environ.get("MLFLOW_TRACKING_USERNAME")
            hint = (f"the server refused user {who!r}; check MLFLOW_TRACKING_PASSWORD" if who else
                    "it needs credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the "
                    "environment (never in a config file)")
            raise TrackingAccessError(f"MLflow at {uri} answered {exc.code}: {hint}") from None
        raise TrackingAccessError(f"MLflow at {uri} answered {exc.code} {exc.reason} to a search; is this an MLflow "
                                  "tracking server?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingAccessError(f"no MLflow server answers at {uri} ({reason}); start it (`mlflow server ...`), "
                                  "open the SSH tunnel to the head node, or fix --tracking-uri") from None
