"""Storage requests of `vlpipe run` on S3, counted at a proxy, and the cost of one progress poll.

1. The issue's runs, each as a `vlpipe run` process against the local S3 server (moto) through
   the counting proxy of bench/s3_proxy.py, with 1-30 ms added to every request (what a real
   bucket answers in): 6 WebDataset tars of 100 images (`s3://photos/shards/{00000..00005}.tar`,
   --shard-size 100) and a listing of 300 loose JPEGs (--shard-size 100). Requests by kind
   (HEAD, LIST, GET, PUT, POST, DELETE) per spec and per 1,000 images, and by area of the output.
   The progress bar is on, as a user has it (its polls are requests, and their number grows with
   the run's wall time). Goal: at most 20 requests per spec. Tiny random BLIP/CLIP models (built
   offline, as in the tests) keep inference short; the model does not change what is asked of
   storage.
2. One driver poll at 100,000 done markers (simulated: put straight into the server's memory)
   and 2 workers' progress objects: requests per poll (goal under 5) and its wall time (goal
   under 1 s; a timing: on a shared machine, mark it so).

`--tree DIR` runs another checkout of vlpipe (e.g. a `git worktree` of the commit before a
change) with the same data and the same proxy: the "before" figures. Its results go to
bench/results/storage_requests-LABEL.json.

    python -m bench.storage_requests [--tree DIR --label before] [--quick]
    python -m bench.storage_requests --smoke   # 2 tars of 4 images, 6 loose, nothing published
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import REPO, Figure, Report, load, result_name

KINDS = ("HEAD", "LIST", "GET", "PUT", "POST", "DELETE")
MARKERS = 100_000
TITLE = "Object storage: S3 requests per spec and per progress poll"

POLL_SCRIPT = r"""
import json, sys, time
from vlpipe.rundir import RunDir
from vlpipe.pipeline import progress
out, n = sys.argv[1], int(sys.argv[2])
if hasattr(progress.ProgressMonitor, "seen"):  # per-worker progress objects
    monitor = progress.ProgressMonitor(out, None, False)
    poll = monitor.seen
else:  # before: lists _done/ on every poll while a spec is still running
    class Bar:
        n = 0
        def update(self, k): self.n += k
    keys = {f"{i:020x}" for i in range(n)} | {"still-running"}
    monitor = progress.ProgressMonitor(RunDir(out), keys, None, False)
    monitor.done = {k: {"seen": 1, "done": True} for k in keys if k != "still-running"}
    bar = Bar()
    poll = lambda: monitor._poll(bar)
poll()  # connections opened, imports done
print("READY", flush=True)
sys.stdin.readline()
start = time.perf_counter()
poll()
print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=str(REPO), help="the vlpipe checkout to run")
    parser.add_argument("--label", default="", help="results name suffix (e.g. before)")
    parser.add_argument("--quick", action="store_true", help="small corpora, 10k markers")
    parser.add_argument("--smoke", action="store_true", help="tiny corpora, 200 markers")
    args = parser.parse_args(argv)
    tree = Path(args.tree).resolve()
    name = "storage_requests" + (f"-{args.label}" if args.label else "")
    report = Report(result_name(name, args.smoke), TITLE)
    with tempfile.TemporaryDirectory() as tmp, s3_server() as endpoint:
        models = tiny_models(Path(tmp))
        n_tars, per_tar, loose, shard = (6, 100, 300, 100)
        if args.quick or args.smoke:
            n_tars, per_tar, loose, shard = (2, 4, 6, 4) if args.smoke else (2, 20, 40, 10)
        make_corpora(endpoint, n_tars, per_tar, loose)
        runs = {
            "tars": (f"s3://photos/shards/{{00000..{n_tars - 1:05d}}}.tar", n_tars * per_tar),
            "listing": ("s3://photos/loose/", loose),
        }
        for kind, (source, images) in runs.items():
            result = count_run(endpoint, tree, models, source, f"s3://out/{kind}", shard)
            result["images"] = images
            result["per_spec"] = round(result["total"] / result["specs"], 1)
            result["per_1000_images"] = {
                k: round(1000 * v / images, 1) for k, v in result["by_kind"].items()
            }
            report.details[kind] = result
            print(f"{kind}: {result['total']} requests, {result['specs']} specs,"
                  f" {result['per_spec']} per spec; by kind {result['by_kind']}")  # fmt: skip
        markers = 200 if args.smoke else 10_000 if args.quick else MARKERS
        report.details["poll"] = count_poll(endpoint, tree, markers)
        print(f"poll at {markers} markers: {report.details['poll']}")
    report.details["tree"] = str(tree)
    report.details["latency_ms"] = [1, 30]
    add_figures(report, load(BEFORE) if not args.label else None)
    result = report.finish()
    from bench.report import smoke_block, update

    if args.smoke:
        smoke_block("storage_requests", result)
    elif not args.label:
        update("storage_requests", result)
    return 0


BEFORE = "storage_requests-before"


def add_figures(report: Report, before: dict | None) -> None:
    """Requests per spec against the goal (and against the code before, where its results are
    saved), and the poll at 100k markers against its goals."""
    lower = {"higher_is_better": False}
    for kind in ("tars", "listing"):
        now = report.details[kind]["per_spec"]
        name = f"S3 requests per spec, {kind} run"
        goal = 1.0 if kind == "tars" else None  # the goal is for the 600-image run
        label = "goal: 20" if goal else "20, the tars run's goal"
        report.add(Figure(name, now, 20.0, label, unit="requests", goal=goal, **lower))
        if before:
            old = before["details"][kind]["per_spec"]
            report.add(
                Figure(f"{name}, vs before", now, old, "before issue 27", "requests", **lower)
            )
    poll = report.details["poll"]
    at = f"at {poll['markers']:,} done markers"
    count, seconds = poll["requests_per_poll"], poll["poll_seconds"]
    report.add(Figure(f"requests per progress poll {at}", count, 5.0, "goal: under 5",
                      unit="requests", goal=0.99, **lower))  # fmt: skip
    report.add(Figure(f"wall time of a progress poll {at} (shared machine)", seconds, 1.0,
                      "goal: under 1 s", unit="s", goal=0.99, **lower))  # fmt: skip
    if before:
        old = before["details"]["poll"]["requests_per_poll"]
        report.add(Figure(f"requests per progress poll {at}, vs before", count, old,
                          "before issue 27", unit="requests", **lower))  # fmt: skip


def markdown(result: dict) -> str:
    """Requests by kind per spec and per 1,000 images, before (where saved) and now; the poll."""
    before = load(BEFORE)
    lines = ["| run | code | wall s | specs | requests | per spec | per 1,000 images: "
             + ", ".join(KINDS) + " |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind in ("tars", "listing"):
        for label, res in (("before", before), ("after", result)):
            if not res:
                continue
            r = res["details"][kind]
            per = " / ".join(f"{r['per_1000_images'][k]:,.0f}" for k in KINDS)
            lines.append(f"| {kind} ({r['images']} images) | {label} | {r['seconds']:.0f} |"
                         f" {r['specs']} | {r['total']:,} | {r['per_spec']} | {per} |")  # fmt: skip
    lines += ["", "Requests by area of the output (after):", ""]
    for kind in ("tars", "listing"):
        areas = result["details"][kind]["by_area"]
        lines.append(f"- {kind}: " + "; ".join(
            f"{a} " + ", ".join(f"{n} {k}" for k, n in sorted(c.items())) for a, c in areas.items()
        ))  # fmt: skip
    lines.append("")
    for label, res in (("before", before), ("after", result)):
        if res:
            p = res["details"]["poll"]
            lines.append(f"Poll at {p['markers']:,} done markers and {p['workers']} workers"
                         f" ({label}): {p['requests_per_poll']} requests"
                         f" ({', '.join(f'{n} {k}' for k, n in p['by_kind'].items() if n)}),"
                         f" {p['poll_seconds']} s wall (measured while other jobs shared the"
                         " 2 CPU cores).  ")  # fmt: skip
    return "\n".join(lines) + "\n"


class s3_server:  # noqa: N801 - a context manager
    """moto's S3 server in this process; the AWS variables point every client at it."""

    def __enter__(self) -> str:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint,
            AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )  # fmt: skip
        return endpoint

    def __exit__(self, *exc) -> None:
        self.server.stop()


def tiny_models(root: Path) -> dict[str, str]:
    from bench.hf_tiny import build_tiny_blip, build_tiny_clip

    build_tiny_blip(root / "blip")
    build_tiny_clip(root / "clip")
    return {"blip": str(root / "blip"), "clip": str(root / "clip")}


def make_corpora(endpoint: str, n_tars: int, per_tar: int, loose: int) -> None:
    import io
    import tarfile

    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=endpoint)
    fs.mkdir("photos")
    fs.mkdir("out")
    for t in range(n_tars):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(per_tar):
                for member, data in (
                    (f"{t}{i:04d}.jpg", image_bytes((64, 48), "JPEG", t * 1000 + i)),
                    (f"{t}{i:04d}.txt", f"photo {t} {i}".encode()),
                ):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        fs.pipe(f"photos/shards/{t:05d}.tar", buf.getvalue())
    fs.pipe({f"photos/loose/{i:05d}.jpg": image_bytes((64, 48), "JPEG", i) for i in range(loose)})


def image_bytes(size: tuple[int, int], fmt: str, seed: int) -> bytes:
    """A small noise image (each seed its own bytes)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def count_run(endpoint: str, tree: Path, models: dict, source: str, out: str, shard: int) -> dict:
    from bench.s3_proxy import FaultProxy, Faults

    proxy = FaultProxy(endpoint, Faults(latency=(0.001, 0.03), seed=0)).start()
    argv = [
        sys.executable,
        "-m",
        "vlpipe",
        "run",
        source,
        "--output",
        out,
        "--captioner",
        models["blip"],
        "--embedder",
        models["clip"],
        "--batch-size",
        "16",
        "--max-caption-tokens",
        "6",
        "--shard-size",
        str(shard),
    ]  # fmt: skip (the progress bar stays on, as a user has it: its polls are requests too)
    env = {**os.environ, "PYTHONPATH": str(tree), "AWS_ENDPOINT_URL": proxy.endpoint,
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    started = time.time()
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False)
    proxy.stop()
    if done.returncode != 0:
        raise SystemExit(f"vlpipe run failed:\n{done.stdout}\n{done.stderr}")
    specs = int(done.stdout.split(" shards (", 1)[0].rsplit(" ", 1)[1])
    by_area: dict[str, Counter] = {}
    for kind, path in proxy.log:
        by_area.setdefault(area(path, out), Counter())[kind] += 1
    return {
        "command": " ".join(argv[2:]),
        "seconds": round(time.time() - started, 1),
        "specs": specs,
        "total": proxy.total(),
        "by_kind": {k: proxy.counts.get(k, 0) for k in KINDS},
        "by_area": {a: dict(c) for a, c in sorted(by_area.items())},
        "summary": [line for line in done.stdout.splitlines() if line.startswith("seen ")],
    }


def area(path: str, out: str) -> str:
    """Which part of the run a request was about: the source, or a folder of the output."""
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(path)
    key = unquote(parts.path.lstrip("/"))
    prefix = parse_qs(parts.query).get("prefix", [""])[0]
    full = key if "/" in key else f"{key}/{prefix}"
    root = out.removeprefix("s3://").rstrip("/") + "/"
    if not full.startswith(root):
        return "source" if full.startswith("photos") else "other"
    rest = full[len(root) :]
    top = rest.split("/", 1)[0]
    return top if "/" in rest else ("(root)" if not top.startswith(".vlpipe") else "probe")


def count_poll(endpoint: str, tree: Path, markers: int) -> dict:
    """One steady-state poll of a run with `markers` done markers and 2 workers at work."""
    from moto.s3.models import s3_backends

    from bench.s3_proxy import FaultProxy

    backend = s3_backends["123456789012"]["global"]
    backend.create_bucket("polls", "us-east-1")
    started = time.time()
    for i in range(markers):
        backend.put_object("polls", f"out/_done/{i:020x}.json", b'{"seen": 1, "done": true}')
    for w in ("w1", "w2"):
        backend.put_object("polls", f"out/_progress/{w}.json", b'{"seen": 5}')
    simulated = round(time.time() - started, 1)
    proxy = FaultProxy(endpoint).start()
    env = {**os.environ, "PYTHONPATH": str(tree), "AWS_ENDPOINT_URL": proxy.endpoint}
    proc = subprocess.Popen(
        [sys.executable, "-c", POLL_SCRIPT, "s3://polls/out", str(markers)], cwd=tree, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "READY"
    proxy.reset()
    proc.stdin.write("\n")
    proc.stdin.flush()
    timing = json.loads(proc.stdout.readline())
    proc.wait(timeout=600)
    proxy.stop()
    return {
        "markers": markers,
        "workers": 2,
        "requests_per_poll": proxy.total(),
        "by_kind": {k: proxy.counts.get(k, 0) for k in KINDS},
        "poll_seconds": round(timing["seconds"], 3),
        "poll_seconds_note": "wall time on a shared 2-core machine (other processes running)",
        "simulate_seconds": simulated,
    }


if __name__ == "__main__":
    sys.exit(main())
