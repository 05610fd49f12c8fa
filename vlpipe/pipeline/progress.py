"""Progress from what workers write under --output (done markers and progress files), so it
works on any runner whose workers share the output filesystem, remote ones included."""

from __future__ import annotations

import threading

from vlpipe.rundir import RunDir

POLL_SECONDS = 1.0


class ProgressMonitor(threading.Thread):
    """A tqdm bar over the specs of this run; reads each marker once, progress files each poll."""

    def __init__(self, run: RunDir, keys: set[str], total: int | None, enabled: bool = True):
        super().__init__(daemon=True)
        self.run_dir = run
        self.keys = keys
        self.total = total
        self.enabled = enabled
        self.done: dict[str, dict] = {}
        self._stopping = threading.Event()  # not _stop: Thread has a _stop() of its own

    def run(self) -> None:
        from tqdm import tqdm

        with tqdm(total=self.total, unit="img", disable=not self.enabled, smoothing=0.1) as bar:
            while not self._stopping.wait(POLL_SECONDS):
                self._poll(bar)
            self._poll(bar)

    def _poll(self, bar) -> None:
        try:
            if len(self.done) < len(self.keys):
                new = [
                    k for k in self.run_dir.marker_keys() if k in self.keys and k not in self.done
                ]
                for key, marker in self.run_dir.read_markers(new).items():
                    if marker.get("done"):
                        self.done[key] = marker
            running = {k: n for k, n in self.run_dir.progress().items() if k not in self.done}
        except OSError:
            return  # a listing that races a worker's rename: the next poll sees it
        seen = sum(m["seen"] for m in self.done.values()) + sum(running.values())
        bar.update(max(0, seen - bar.n))

    def stop(self) -> None:
        self._stopping.set()
        self.join()

    def timings(self) -> dict[str, float]:
        keys = ("decode_s", "infer_s", "write_s")
        return {k: sum(m.get(k, 0.0) for m in self.done.values()) for k in keys}
