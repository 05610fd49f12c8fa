"""Progress from what workers write under --output, so it works on any runner whose workers share
the output filesystem, remote ones included.

Each worker keeps one small progress object (`_progress/<worker>.json`: inputs seen so far), so a
poll is one listing of `_progress/` and one read per worker, whatever the number of specs; the
done markers are read once, by the final count. The poller has a filesystem instance of its own,
without listing cache, so nothing it lists can change what a worker's write sees. Polls grow
further apart as the run goes on: a run of hours is polled every half minute, not every second.
"""

from __future__ import annotations

import threading
import time

from vlpipe.rundir import RunDir
from vlpipe.storage import StorageError

FIRST_POLL_SECONDS = 1.0
MAX_POLL_SECONDS = 30.0
#: the interval is this share of the time the run has taken so far (within the bounds above)
POLL_SHARE = 0.02


def poll_interval(elapsed: float) -> float:
    """Seconds until the next poll, `elapsed` seconds into the run: 1 s for the first minute,
    then 2% of the run's length so far, at most 30 s."""
    return min(MAX_POLL_SECONDS, max(FIRST_POLL_SECONDS, POLL_SHARE * elapsed))


class ProgressMonitor(threading.Thread):
    """A tqdm bar over the inputs this run processes, from the workers' progress objects."""

    def __init__(self, output: str, total: int | None, enabled: bool = True):
        super().__init__(daemon=True)
        self.run_dir = RunDir(output, private=True)
        self.total = total
        self.enabled = enabled
        self.polls = 0
        self._stopping = threading.Event()  # not _stop: Thread has a _stop() of its own

    def run(self) -> None:
        from tqdm import tqdm

        started = time.monotonic()
        with tqdm(total=self.total, unit="img", disable=not self.enabled, smoothing=0.1) as bar:
            while not self._stopping.wait(poll_interval(time.monotonic() - started)):
                self.poll(bar)
            self.poll(bar)

    def seen(self) -> int | None:
        """Inputs the workers have seen so far, or None when the storage did not answer."""
        self.polls += 1
        try:
            states = self.run_dir.progress()
        except StorageError:
            return None  # progress only: the next poll tries again
        return sum(int(s.get("seen", 0)) for s in states.values())

    def poll(self, bar) -> None:
        seen = self.seen()
        if seen is not None:
            bar.update(max(0, seen - bar.n))

    def stop(self) -> None:
        self._stopping.set()
        self.join()
