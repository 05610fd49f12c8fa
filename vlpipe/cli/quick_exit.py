"""Ending the `vlpipe` process without the interpreter's teardown.

After a command has finished, Python's normal exit frees every module it imported, one object at
a time: with torch, transformers, Beam and OpenVINO loaded that is about 1 s of CPU (measured on
a 2-core machine after a `vlpipe run` of CLIP B/32, and 0.5 s with torch and transformers alone)
spent on memory the OS takes back at once anyway. So the command-line entry point, once the
command is done, takes the first two steps of Python's own exit: wait for the other non-daemon
threads (thread pools shut down, as at a normal exit) and run the atexit handlers (logging's
flush, temporary files' clean-up); then it flushes stdout and stderr and ends the process with
its exit code, leaving out the third step, the teardown.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading


def exit_now(code: object) -> None:
    """End the process with `code` (a SystemExit's: None or an int) as Python's exit would,
    without its teardown; returns (the caller then exits normally) for a message code or where
    this Python lacks the hooks or this is not the main thread."""
    wait_for_threads = getattr(threading, "_shutdown", None)  # what Python's exit calls first
    run_atexit = getattr(atexit, "_run_exitfuncs", None)
    if code is not None and not isinstance(code, int):
        return  # sys.exit("message"): Python prints it; keep that
    if (
        not (wait_for_threads and run_atexit)
        or threading.current_thread() is not threading.main_thread()
    ):
        return
    wait_for_threads()
    run_atexit()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`vlpipe search ... | head`) or stream
            pass
    _flush_c_streams()
    os._exit(code or 0)


def _flush_c_streams() -> None:
    """What a native library printed through C's stdio (exit() flushes it; os._exit does not)."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to call by that name here
        pass
