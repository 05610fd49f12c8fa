"""A worker's progress object: inputs seen, summed over every spec this worker took.

One object per worker, rewritten at most every few seconds (and at the end of each bundle), so
progress costs O(workers) requests per driver poll and a few PUTs per worker, never O(specs).
Progress only: the count check reads the done markers.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

from vlpipe.rundir import RunDir

WRITE_EVERY_SECONDS = 2.0


class WorkerProgress:
    def __init__(self, run: RunDir, every: float = WRITE_EVERY_SECONDS):
        self.run = run
        self.every = every
        self.worker = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.finished = 0  # inputs of the specs this worker finished
        self.specs = 0
        self.current: dict[str, int] = {}  # inputs seen so far of the specs it is in
        self._written_at = 0.0
        self._dirty = False

    @property
    def seen(self) -> int:
        return self.finished + sum(self.current.values())

    def update(self, key: str, seen: int) -> None:
        self.current[key] = seen
        self._changed()

    def finish(self, key: str, seen: int) -> None:
        self.current.pop(key, None)
        self.finished += seen
        self.specs += 1
        self._changed()

    def flush(self) -> None:
        """Write what changed since the last write (a bundle ends: nothing may be left out)."""
        if self._dirty:
            self._write()

    def _changed(self) -> None:
        self._dirty = True
        if time.monotonic() - self._written_at >= self.every:
            self._write()

    def _write(self) -> None:
        state = {"seen": self.seen, "specs": self.specs, "time": time.time()}
        self.run.write_progress(self.worker, state)
        self._written_at = time.monotonic()
        self._dirty = False
