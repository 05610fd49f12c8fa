"""What every benchmark shares: the hardware record, figures with ratios, result files, peak RSS.

A figure is vlpipe's number beside a baseline's number measured in the same run on the same data,
with their ratio and the goal it is held to. Every result file records the hardware, the load
average before and after (this machine is shared), and the exact command that produced it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SCRATCH = RESULTS / "tmp"  # git-ignored: run outputs of the end-to-end benchmarks


def result_name(name: str, smoke: bool) -> str:
    """Where a run's result file goes: a smoke run (tiny sizes, a code-path check) saves under
    the git-ignored tmp/, so it never overwrites a real measurement."""
    return f"tmp/{name}-smoke" if smoke else name


@dataclass
class Figure:
    """One comparison. `higher_is_better` says which way the ratio vlpipe/baseline should go."""

    metric: str
    vlpipe: float
    baseline: float
    baseline_name: str
    unit: str = ""
    goal: float | None = None  # the ratio vlpipe/baseline must reach (or stay under)
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.vlpipe / self.baseline if self.baseline else float("nan")

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        return self.ratio >= self.goal if self.higher_is_better else self.ratio <= self.goal

    def as_dict(self) -> dict:
        return {
            "metric": self.metric,
            "unit": self.unit,
            "vlpipe": round(self.vlpipe, 4),
            "baseline": round(self.baseline, 4),
            "baseline_name": self.baseline_name,
            "ratio": round(self.ratio, 3),
            "goal": None
            if self.goal is None
            else f"{'>=' if self.higher_is_better else '<='} {self.goal}",
            "met": self.met,
            "note": self.note,
        }


@dataclass
class Report:
    """Collects one benchmark's figures and extra tables, then prints and saves them."""

    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    load_before: list[float] = field(default_factory=lambda: load_average())

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def finish(self) -> dict:
        result = {
            "name": self.name,
            "title": self.title,
            "command": command(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - self.started, 1),
            "hardware": hardware(),
            "load_average": {"before": self.load_before, "after": load_average()},
            "figures": [f.as_dict() for f in self.figures],
            "details": self.details,
        }
        print_result(result)
        path = save(self.name, result)
        print(f"saved {path}")
        return result


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: figures from a busy shared machine say so."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    """Cores, CPU model, GPU and the library versions that decide the figures."""
    import apache_beam
    import PIL
    import torch
    import torchvision

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": cpu_model(),
        "memory_gb": round(_mem_total_kb() / 1e6, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "apache_beam": apache_beam.__version__,
        "pillow": PIL.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _mem_total_kb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def command() -> str:
    """The command that reproduces this run, as typed from the repository root."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = (
        ["python", "-m", spec.name.removesuffix(".__main__")] if spec else ["python", sys.argv[0]]
    )
    return shlex.join(head + sys.argv[1:])


def save(name: str, result: dict) -> Path:
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def print_result(result: dict) -> None:
    hw = result["hardware"]
    print(f"\n== {result['title']} ==")
    print(f"command: {result['command']}")
    print(
        f"hardware: {hw['cores']} cores, {hw['cpu']}, GPU {hw['gpu'] or 'none'};"
        f" torch {hw['torch']}, beam {hw['apache_beam']}, pillow {hw['pillow']}"
    )
    print(
        f"load average before {result['load_average']['before']},"
        f" after {result['load_average']['after']}; took {result['seconds']} s"
    )
    rows = [["metric", "vlpipe", "baseline", "ratio", "goal", ""]]
    for f in result["figures"]:
        met = {True: "met", False: "NOT MET", None: ""}[f["met"]]
        rows.append(
            [
                f"{f['metric']} ({f['unit']})" if f["unit"] else f["metric"],
                fmt(f["vlpipe"]),
                f"{fmt(f['baseline'])} [{f['baseline_name']}]",
                f"{f['ratio']:.2f}x",
                f["goal"] or "",
                met,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


class PeakRss(threading.Thread):
    """Samples the summed RSS of a process and all its descendants (Beam workers, DataLoader
    workers) every `interval` seconds; `peak` is the largest sum seen, in bytes."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self._done = threading.Event()  # not _stop: Thread has a _stop() of its own

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._done.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                break
            self.peak = max(self.peak, total)
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


@dataclass
class ChildRun:
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    output: dict  # the JSON object the child printed as its last stdout line
    stderr_tail: str


def run_child(
    argv: list[str], env: dict | None = None, timeout: float | None = None, cwd: Path = REPO
) -> ChildRun:
    """Run one measured contender in a fresh process: its own imports, model load and memory."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    sampler = PeakRss(proc.pid)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # a time cap ends the child, not only the wait
        proc.communicate()
        raise
    finally:
        peak = sampler.stop()
    wall = time.perf_counter() - start
    lines = [line for line in out.splitlines() if line.startswith("{")]
    output = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or not output:
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}):\n{err[-3000:]}")
    return ChildRun(proc.returncode, wall, peak, output, err[-2000:])


def git_tree(revision: str) -> Path:
    """A checkout of `revision` (a `git worktree`, made once) under bench/results/tmp/trees/:
    the "before" side of a benchmark that compares vlpipe now with an earlier commit. Run code
    there with cwd and PYTHONPATH set to the tree, in this virtualenv."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    tree = SCRATCH / "trees" / commit[:12]
    if not (tree / "vlpipe").exists():
        import shutil

        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO,
                       check=True, capture_output=True)  # fmt: skip
    return tree
