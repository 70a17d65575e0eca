"""Round states on disk, keyed by config hash: how a re-run sweep resumes and skips.

Tune's own checkpoints live inside one Tune experiment; a sweep re-run after
a killed driver is a new Tune experiment. This store survives both: each
trial writes its latest round state atomically to ``<workdir>/trials/<hash>``
after every round, so the next invocation resumes unfinished trials from
their last finished round and skips finished ones.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path

from .loop import RoundState

log = logging.getLogger(__name__)

STATE_FILE = "round-state.npz"


class TrialStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, config_hash: str) -> Path:
        return self.root / config_hash / STATE_FILE

    def save(self, config_hash: str, state: RoundState) -> Path:
        target = self.path(config_hash)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".state-")
        with os.fdopen(fd, "wb") as f:
            f.write(state.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return target

    def load(self, config_hash: str) -> RoundState | None:
        """The trial's last saved round, or None when there is none or the file is damaged (truncated,
        overwritten): then the trial resumes from its newest Tune checkpoint, or starts over -- never from a
        half-read state."""
        target = self.path(config_hash)
        if not target.exists():
            return None
        try:
            return RoundState.from_bytes(target.read_bytes())
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("trial state %s is damaged (%s: %s); ignoring it: the trial resumes from its newest Tune "
                        "checkpoint or starts over", target, type(exc).__name__, exc)
            return None

    def hashes(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{STATE_FILE}"))
