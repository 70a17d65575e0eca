"""One sweep per workdir at a time: an exclusive ``flock`` on ``<workdir>/.sweep.lock``.

Two sweeps on one workdir would both resume the same trials from the same trial store and log them to the
same parent experiment: duplicated runs at best, interleaved round states at worst. The second one is refused
at once with who holds the lock. ``flock`` is released by the kernel when its holder dies (SIGKILL
included), so a killed sweep never leaves a stale lock behind; the file's text is only for the message.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".sweep.lock"


class WorkdirLockedError(RuntimeError):
    """Another live sweep holds the workdir."""


@contextmanager
def workdir_lock(workdir: Path | str, name: str = ""):
    path = Path(workdir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirLockedError(f"another sweep is running on {Path(workdir).resolve()} ({_holder(path)}); wait "
                                     "for it to finish, or give this one its own --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "sweep": name,
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "holder unknown"
    return f"sweep {info.get('sweep')!r}, pid {info.get('pid')}, since {info.get('since')}"
