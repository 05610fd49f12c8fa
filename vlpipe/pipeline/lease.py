"""One run per output: a lease under --output (`_lease.json`: holder, host, pid, heartbeat).

Two `vlpipe run`s into one output (a retry started while the first still runs, two machines
given the same command) would fight over its temp files and markers. The first run creates the
lease with a conditional create (S3's `If-None-Match: *`, an exclusive create on a local disk),
so of two runs starting together exactly one gets it; it renews the heartbeat while it runs and
deletes the lease at the end. A second run is refused in one line naming the holder, unless the
holder is gone: its heartbeat is older than the timeout, or it ran on this host and its process
has exited (a killed run resumes at once), or the user says so (`--take-over`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from vlpipe.errors import VlpipeError
from vlpipe.rundir import LEASE, RunDir
from vlpipe.storage import StorageError, put, put_new

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 60.0  # a read and a write each: 2 requests a minute
#: a lease whose heartbeat is older than this belongs to a run that is gone
TIMEOUT_SECONDS = 300.0


@dataclass
class Lease:
    """A held lease; `release()` when the run ends (its heartbeat thread stops)."""

    run: RunDir
    body: dict
    heartbeat: float = HEARTBEAT_SECONDS
    lost: bool = False
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Lease:
        self._thread = threading.Thread(target=self._beat, daemon=True, name="vlpipe-lease")
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stopping.wait(self.heartbeat):
            try:
                if read_lease(self.run).get("holder") != self.body["holder"]:
                    log.warning("%s: the lease was taken over by another run", self.run.path)
                    self.lost = True
                    return
                self.body["heartbeat"] = time.time()
                put(self.run.fs, self.run.join(LEASE), encode(self.body))
            except StorageError as exc:  # a missed heartbeat is not fatal; the next may pass
                log.warning("lease heartbeat: %s", exc)

    def release(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if read_lease(self.run).get("holder") == self.body["holder"]:
                self.run.remove_file(LEASE)
        except StorageError as exc:
            log.warning("could not release the lease: %s", exc)


def acquire(
    run: RunDir,
    take_over: bool = False,
    timeout: float = TIMEOUT_SECONDS,
    heartbeat: float = HEARTBEAT_SECONDS,
) -> Lease:
    """The output's lease for this run, or a VlpipeError naming the run that holds it."""
    body = new_body()
    try:
        created = put_new(run.fs, run.join(LEASE), encode(body))
    except StorageError as exc:  # the first write of a run: a permanent error shows here
        raise VlpipeError(f"cannot write to output {run.path}: {exc}") from None
    if created:
        return Lease(run, body, heartbeat).start()
    held = read_lease(run)
    gone = why_gone(held, timeout)
    if not (take_over or gone):
        raise VlpipeError(
            f"{run.path} is in use by another vlpipe run ({describe(held)}); wait for it to"
            " finish, or pass --take-over if it is gone"
        )
    log.warning("taking over the lease of %s from %s (%s)", run.path, describe(held),
                gone or "--take-over")  # fmt: skip
    put(run.fs, run.join(LEASE), encode(body))
    if read_lease(run).get("holder") != body["holder"]:
        raise VlpipeError(f"{run.path}: another run took the lease at the same moment; retry")
    return Lease(run, body, heartbeat).start()


def new_body() -> dict:
    now = time.time()
    return {
        "holder": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now,
        "heartbeat": now,
    }


def encode(body: dict) -> bytes:
    return json.dumps(body).encode()


def read_lease(run: RunDir) -> dict:
    """The lease's content; {} if there is none, or it is not one of ours."""
    blob = run.read(LEASE)
    try:
        held = json.loads(blob) if blob is not None else {}
    except ValueError:
        return {}
    return held if isinstance(held, dict) else {}


def why_gone(held: dict, timeout: float) -> str | None:
    """Why the holder of this lease no longer runs, or None if it may still run."""
    if not held:
        return "no readable lease"
    age = time.time() - float(held.get("heartbeat", 0))
    if age > timeout:
        return f"no heartbeat for {age:.0f} s"
    if held.get("host") == socket.gethostname() and not _alive(held.get("pid")):
        return f"process {held.get('pid')} on this host has exited"
    return None


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def describe(held: dict) -> str:
    age = time.time() - float(held.get("heartbeat", 0))
    return (
        f"holder {held.get('holder', '?')[:12]}, host {held.get('host', '?')},"
        f" pid {held.get('pid', '?')}, heartbeat {age:.0f} s ago"
    )
