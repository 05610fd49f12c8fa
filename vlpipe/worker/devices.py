"""Spread worker processes over the GPUs of a machine: worker i uses cuda:(i mod K).

Beam does not tell a DoFn which worker process it runs in, so each process claims the lowest
free slot number on its machine with an exclusive lock on a small file, held until the process
exits (the OS drops the lock even after a SIGKILL). Slots count per machine, which is what a
device index is.
"""

from __future__ import annotations

import fcntl
import os
import tempfile

_claimed: dict[str, tuple[int, int]] = {}  # lock folder -> (slot, fd) held by this process
MAX_SLOTS = 1024


def worker_device(device: str, gpus: int | None = None, lock_dir: str | None = None) -> str:
    """`auto`/`cuda` on a machine with several GPUs -> `cuda:<slot mod K>`; else as given."""
    if device not in ("auto", "cuda"):
        return device
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    if gpus <= 1:
        return device
    return f"cuda:{claim_slot(lock_dir) % gpus}"


def claim_slot(lock_dir: str | None = None) -> int:
    """This process's slot: the lowest number no other live process on the machine holds."""
    folder = lock_dir or os.path.join(tempfile.gettempdir(), f"vlpipe-slots-{os.getuid()}")
    if folder in _claimed:
        return _claimed[folder][0]
    os.makedirs(folder, exist_ok=True)
    for slot in range(MAX_SLOTS):
        fd = os.open(os.path.join(folder, f"slot-{slot}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _claimed[folder] = (slot, fd)  # the fd stays open: the lock lives as long as we do
        return slot
    raise RuntimeError(f"no free worker slot in {folder}")
