"""Tracking calls that outlive an outage of the MLflow server.

The driver is MLflow's only writer (:mod:`.tracking`), so a tracking server that dies mid-sweep would
otherwise end the sweep at the next round's log call. Instead each call goes through an
:class:`OutageQueue`: while the server does not answer, calls wait in arrival order (a round is never
logged before the one it follows, so the tracker's "newer than the last logged round" rule still holds)
and are replayed once it answers again. Before the first replay the tracker re-reads the server, because
a call cut off by the outage may have been committed with its answer lost: the replay then neither
creates a second run for a trial nor logs a round twice.

Trials never wait for the server. What is still queued when the sweep ends is retried for
``wait_seconds``; what cannot be delivered by then is still in the trial store, and the next run of the
same sweep logs it (:func:`orchestrator.sweep.reconcile`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque

log = logging.getLogger(__name__)

# MLflow's own HTTP retries (7, doubling back-off: minutes) would block Tune's event loop inside one call;
# the driver fails fast and queues instead. Users may still set their own values.
FAST_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
OUTAGE_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def fail_fast() -> None:
    for key, value in FAST_FAILURE.items():
        os.environ.setdefault(key, value)


def is_outage(exc: BaseException) -> bool:
    """A server that does not answer (refused, reset, timed out, 5xx), as opposed to a call it rejects."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in OUTAGE_CODES
    try:
        import requests

        if isinstance(exc, requests.RequestException):
            return True
    except ImportError:  # pragma: no cover - requests ships with mlflow
        pass
    return isinstance(exc, OSError)


class OutageQueue:
    """Tracker calls in arrival order, delivered now when the server answers, later when it does not."""

    def __init__(self, tracker, say=None, retry_every: float = 2.0):
        self.tracker = tracker
        self.say = say
        self.retry_every = retry_every
        self.pending: deque[tuple[str, tuple]] = deque()
        self.down_since: float | None = None
        self.back_after: float | None = None  # seconds from the first refused call to the first delivered one
        self.last_attempt = 0.0
        self.outages = 0
        self.replayed = 0

    def __getstate__(self):
        return {**self.__dict__, "say": None}  # Tune pickles its callbacks; a console holds locks

    def call(self, name: str, *args) -> None:
        self.pending.append((name, args))
        if self.down_since is None or time.monotonic() - self.last_attempt >= self.retry_every:
            self.drain()

    def drain(self) -> bool:
        """Deliver what is queued, oldest first; False (and the rest kept) at the first call the outage refuses."""
        self.last_attempt = time.monotonic()
        try:
            if self.down_since is not None and self.pending:
                self.tracker.refresh()  # what the server committed before it went away
            while self.pending:
                name, args = self.pending[0]
                getattr(self.tracker, name)(*args)
                self.pending.popleft()
                if self.down_since is not None:
                    self.replayed += 1
                    self.back_after = self.back_after or time.monotonic() - self.down_since
        except Exception as exc:  # noqa: BLE001 - anything else is re-raised below
            if not is_outage(exc):
                raise
            self._went_down(exc)
            return False
        if self.down_since is not None:
            self._tell(f"MLflow answers again after {self.back_after or 0:.0f} s; {self.replayed} queued call(s) "
                       f"delivered in {time.monotonic() - self.down_since - (self.back_after or 0):.0f} s")
            self.down_since, self.replayed, self.back_after = None, 0, None
        return True

    def drain_within(self, wait_seconds: float) -> bool:
        """At the end of a sweep: keep trying for up to ``wait_seconds``; True when nothing is left."""
        deadline = time.monotonic() + wait_seconds
        while not self.drain():
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(self.retry_every, max(0.0, deadline - time.monotonic())))
        return True

    def _went_down(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.outages += 1
            uri = getattr(self.tracker, "tracking_uri", "the tracking server")
            self._tell(f"MLflow at {uri} does not answer ({type(exc).__name__}); trials go on, their rounds "
                       "are queued and logged when it is back")

    def _tell(self, message: str) -> None:
        if self.say is not None:
            self.say(message)
        else:
            log.warning(message)
