"""The `vlpipe` command ends without the interpreter's teardown (vlpipe.cli.quick_exit) and
otherwise as Python's own exit: its exit code, all of its output through a pipe, its atexit
handlers and a still running non-daemon thread waited for. Run as real processes."""

from __future__ import annotations

import os
import subprocess
import sys

# `vlpipe ARGS...` as the console script runs it, in a process that also holds an object whose
# finaliser runs only in the interpreter's teardown, an atexit handler and a non-daemon thread
# that is still working when the command ends; each leaves a line in $MARKS.
_CLI = """
import atexit, os, sys, threading, time

def mark(word, path=os.environ["MARKS"], _open=open):  # usable in the teardown too
    with _open(path, "a") as f:
        f.write(word + "\\n")

class Teardown:
    def __del__(self, mark=mark):
        mark("teardown")

kept = Teardown()
atexit.register(mark, "atexit")
threading.Thread(target=lambda: (time.sleep(0.5), mark("thread"))).start()
from vlpipe.cli import main
sys.argv = ["vlpipe", *sys.argv[1:]]
main()
"""


def _vlpipe(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    marks = tmp_path / "marks.txt"
    marks.unlink(missing_ok=True)
    env = {**os.environ, "MARKS": str(marks)}
    argv = [sys.executable, "-c", _CLI, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    return proc, marks.read_text().split() if marks.exists() else []


def test_a_command_ends_without_teardown_after_threads_and_atexit(tmp_path):
    proc, marks = _vlpipe(tmp_path, "--help")
    assert proc.returncode == 0
    # the same help from a process that exits the normal way (args given: called as code)
    code = "from vlpipe.cli import main; main(['--help'], prog_name='vlpipe')"
    normal = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert normal.returncode == 0 and "Commands:" in normal.stdout
    assert proc.stdout == normal.stdout
    assert marks == ["thread", "atexit"]  # waited for, run, and no teardown after them


def test_a_failing_command_keeps_its_exit_code_and_line(tmp_path):
    proc, marks = _vlpipe(tmp_path, "search", "a dog", "--index", str(tmp_path / "none"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"Error: no index at {tmp_path / 'none'}: the path does not exist"
    ]
    assert marks == ["thread", "atexit"]
