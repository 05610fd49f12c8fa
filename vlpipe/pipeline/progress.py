"""Progress from what workers write under --output, so it works on any runner whose workers share
the output filesystem, remote ones included.

Each worker keeps one small progress object (`_progress/<worker>.json`: inputs seen so far), so a
poll is one read per worker, whatever the number of specs (and a listing of `_progress/`, to
find new workers, every few polls); the done markers are read once, by the final count. The
poller has a filesystem instance of its own, without listing cache, so nothing it lists can
change what a worker's write sees. Polls grow further apart as the run goes on: a run of hours
is polled every half minute, not every second. Without a progress bar nothing is polled.
"""

from __future__ import annotations

import threading
import time

from vlpipe.rundir import RunDir
from vlpipe.storage import StorageError

MIN_POLL_SECONDS = 2.0
MAX_POLL_SECONDS = 30.0
#: the interval is this share of the time the run has taken so far (within the bounds above)
POLL_SHARE = 0.1
#: polls between two listings of _progress/ (which finds workers that started since)
LIST_EVERY = 5


def poll_interval(elapsed: float) -> float:
    """Seconds until the next poll, `elapsed` seconds into the run: 2 s for the first 20 s,
    then 10% of the run's length so far, at most 30 s (from 5 minutes on)."""
    return min(MAX_POLL_SECONDS, max(MIN_POLL_SECONDS, POLL_SHARE * elapsed))


class ProgressMonitor(threading.Thread):
    """A tqdm bar over the inputs this run processes, from the workers' progress objects."""

    def __init__(self, output: str, total: int | None, enabled: bool = True):
        super().__init__(daemon=True)
        self.run_dir = RunDir(output, private=True)
        self.total = total
        self.enabled = enabled
        self.polls = 0
        self.states: dict[str, dict] = {}  # each worker's last progress object
        self._stopping = threading.Event()  # not _stop: Thread has a _stop() of its own

    def run(self) -> None:
        if not self.enabled:
            return  # nobody sees the bar: no request spent on it
        from tqdm import tqdm

        started = time.monotonic()
        with tqdm(total=self.total, unit="img", smoothing=0.1) as bar:
            while not self._stopping.wait(poll_interval(time.monotonic() - started)):
                self.poll(bar)
            self.poll(bar)

    def seen(self) -> int | None:
        """Inputs the workers have seen so far, or None when the storage did not answer."""
        relist = self.polls % LIST_EVERY == 0  # the first poll, then every few
        self.polls += 1
        try:
            states = self.run_dir.progress(None if relist else list(self.states))
        except StorageError:
            return None  # progress only: the next poll tries again
        self.states.update(states)
        return sum(int(s.get("seen", 0)) for s in self.states.values())

    def poll(self, bar) -> None:
        seen = self.seen()
        if seen is not None:
            bar.update(max(0, seen - bar.n))

    def stop(self) -> None:
        self._stopping.set()
        self.join()
