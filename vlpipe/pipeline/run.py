"""`vlpipe run`: list inputs, skip done ones, process shards with Beam, verify, index.

source ─► list inputs ─► drop done ids ─► shards ─► GroupByKey ─► ProcessShard ─► verify ─► index
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from vlpipe import __version__
from vlpipe.pipeline.options import RunConfig, auto_shard_size, make_pipeline
from vlpipe.pipeline.resume import (
    WORK,
    archive_failures,
    check_output,
    done_ids,
    remove_temp_files,
    set_aside_corrupt,
)
from vlpipe.pipeline.sources import InputRecord, Listing, list_inputs
from vlpipe.rundir import FAILED, SUCCESS, RunDir, write_atomic, write_table_atomic
from vlpipe.schema import SCHEMA_VERSION
from vlpipe.transforms.handlers import Models, VlpipeModelHandler
from vlpipe.transforms.shard import ProcessShard, ShardOptions, save_shard
from vlpipe.transforms.write import failures_table, part_name


@dataclass
class RunSummary:
    """Counts over every input of the source, not just this run's share of it."""

    seen: int
    written: int
    failed: int
    already_done: int
    processed: int
    duplicates: int
    reasons: dict[str, int]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    corrupt_parts: list[str] = field(default_factory=list)
    index: dict | None = None

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.seen == self.written + self.failed

    def lines(self) -> list[str]:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"seen {self.seen}: written {self.written}, failed {self.failed}"
            f" ({'OK' if self.ok else 'COUNT MISMATCH'}: seen == written + failed"
            f"{'' if self.ok else ' is FALSE'})",
            f"this run: processed {self.processed} in {self.seconds:.1f} s ({rate:.1f} images/s),"
            f" {self.already_done} already done, {self.duplicates} duplicate inputs dropped",
        ]
        if self.timings:
            out.append(
                "time in shards: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
            )
        out += [f"  failed {reason}: {n}" for reason, n in sorted(self.reasons.items())]
        if self.lost or self.duplicated:
            out.append(f"LOST {self.lost} inputs, {self.duplicated} inputs in more than one row")
        out += [
            f"corrupt part set aside, its inputs processed again: {p}" for p in self.corrupt_parts
        ]
        return out


def run(config: RunConfig, echo: Callable[[str], None] = print) -> RunSummary:
    """The whole `vlpipe run`; raises VlpipeError for anything the user can fix."""
    config.validate()
    started = time.time()
    run_dir = RunDir(config.output)
    handler = make_handler(config)
    models = handler.load_model()  # fail fast on a bad model name, before any work
    check_output(run_dir, config.model_config(), config.overwrite)
    forget_cached_listings(config.source)
    listing = list_inputs(config.source)
    # The manifest goes first, _SUCCESS goes: a kill at any later point leaves a resumable run.
    run_dir.write_manifest(manifest(config, models, started, status="running"))
    if run_dir.is_complete():
        run_dir.fs.rm(run_dir.join(SUCCESS))
    remove_temp_files(run_dir)
    if config.retry_failed:
        archive_failures(run_dir)
    done = done_ids(run_dir)
    corrupt = set_aside_corrupt(run_dir)
    pending = [r for r in listing.records if r.image_id not in done]
    write_input_failures(run_dir, [f for f in listing.failures if f["image_id"] not in done])
    echo(
        f"vlpipe {__version__}: {len(listing.records) + len(listing.failures)} inputs,"
        f" {len(pending)} to process; captioner {config.captioner}, embedder {config.embedder}"
    )
    timings = run_shards(config, handler, run_dir, pending) if pending else {}
    summary = verify(run_dir, listing, len(done), len(pending), time.time() - started)
    summary.timings = timings
    summary.corrupt_parts = corrupt + summary.corrupt_parts
    run_dir.write_manifest(manifest(config, models, started, status="done", summary=summary))
    if summary.ok:
        write_atomic(run_dir.fs, run_dir.join(SUCCESS), b"")
        if config.build_index and summary.written:
            from vlpipe.index.build import build_index

            summary.index = build_index(config.output, progress=config.progress)
    return summary


def forget_cached_listings(source: str) -> None:
    """s3fs/gcsfs cache directory listings per process and open files by them: a second run in
    one process would miss new objects (listed as present, then read as missing) without this."""
    import fsspec

    try:
        fs, _ = fsspec.core.url_to_fs(source)
    except Exception:  # noqa: BLE001 - a bad source is list_inputs' error to report
        return
    fs.invalidate_cache()


def make_handler(config: RunConfig) -> VlpipeModelHandler:
    return VlpipeModelHandler(
        captioner=config.captioner,
        embedder=config.embedder,
        device=config.device,
        precision=config.precision,
        max_caption_tokens=config.max_caption_tokens,
        min_batch_size=config.min_batch_size,
        max_batch_size=config.batch_size,
    )


def write_input_failures(run_dir: RunDir, failures: list[dict]) -> None:
    """Inputs that could not even be listed (a manifest row without uri) still get their row."""
    if failures:
        name = part_name([f["image_id"] for f in failures])
        write_table_atomic(run_dir.fs, run_dir.join(FAILED, name), failures_table(failures))


def run_shards(
    config: RunConfig, handler: VlpipeModelHandler, run_dir: RunDir, pending: list[InputRecord]
) -> dict[str, float]:
    """Write shard files, run the Beam pipeline over their URLs, show progress while it runs."""
    import apache_beam as beam

    work = run_dir.url(WORK, uuid.uuid4().hex[:12])
    size = config.shard_size or auto_shard_size(len(pending), config.workers)
    urls = []
    for i in range(0, len(pending), size):
        urls.append(f"{work}/shard-{i // size:06d}.jsonl")
        save_shard(urls[-1], pending[i : i + size])
    options = ShardOptions(config.output, config.decode_threads, config.max_pixels, config.float16)
    monitor = ProgressMonitor(urls, len(pending), enabled=config.progress)
    monitor.start()
    try:
        pipeline = make_pipeline(config, n_shards=len(urls))
        try:
            with pipeline:
                _ = (
                    pipeline
                    | "Shards" >> beam.Create(list(enumerate(urls)))
                    | "GroupByShard" >> beam.GroupByKey()
                    | "ProcessShard" >> beam.ParDo(ProcessShard(handler, options))
                )
        finally:
            close_runner_client(getattr(pipeline, "result", None))
    finally:
        monitor.stop()
    timings = monitor.timings()
    run_dir.fs.rm(run_dir.join(WORK), recursive=True)
    return timings


def close_runner_client(result) -> None:
    """The DaskRunner opens a dask.distributed Client and never closes it; left open, it logs
    connection errors when the cluster goes away after the run."""
    client = getattr(result, "client", None)
    if client is not None and hasattr(client, "close"):
        client.close()


class ProgressMonitor(threading.Thread):
    """Polls the per-shard summary files; works on any runner that shares the output filesystem."""

    def __init__(self, shard_urls: list[str], total: int, enabled: bool = True):
        super().__init__(daemon=True)
        self.urls = shard_urls
        self.total = total
        self.enabled = enabled
        self.done: dict[str, dict] = {}
        self._stopping = threading.Event()  # not _stop: Thread has a _stop() of its own

    def run(self) -> None:
        from tqdm import tqdm

        with tqdm(total=self.total, unit="img", disable=not self.enabled, smoothing=0.1) as bar:
            while not self._stopping.wait(1.0):
                self._poll(bar)
            self._poll(bar)

    def _poll(self, bar) -> None:
        import json

        import fsspec

        for url in self.urls:
            if url in self.done:
                continue
            try:
                with fsspec.open(url + ".done.json", "r") as f:
                    self.done[url] = json.load(f)
            except (FileNotFoundError, ValueError):
                continue
            bar.update(self.done[url]["seen"])

    def stop(self) -> None:
        self._stopping.set()
        self.join()

    def timings(self) -> dict[str, float]:
        keys = ("decode_s", "infer_s", "write_s")
        return {k: sum(s.get(k, 0.0) for s in self.done.values()) for k in keys}


def verify(
    run_dir: RunDir, listing: Listing, already: int, processed: int, seconds: float
) -> RunSummary:
    """Count every input of the source in the output: exactly one row each, none lost."""
    listed = {r.image_id for r in listing.records} | {f["image_id"] for f in listing.failures}
    rows = Counter()
    for batch in run_dir.iter_batches(["image_id"]):
        rows.update(i for i in batch.column(0).to_pylist() if i in listed)
    written = len(rows)
    reasons: Counter = Counter()
    for batch in run_dir.iter_batches(["image_id", "stage", "reason"], failed=True):
        for image_id, stage, reason in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            if image_id in listed:
                if image_id not in rows:
                    reasons[f"{stage}:{reason}"] += 1
                rows[image_id] += 1
    failed = sum(reasons.values())
    return RunSummary(
        seen=len(listed),
        written=written,
        failed=failed,
        already_done=min(already, len(listed)),
        processed=processed,
        duplicates=listing.duplicates,
        reasons=dict(reasons),
        seconds=seconds,
        lost=len(listed - set(rows)),
        duplicated=sum(1 for n in rows.values() if n > 1),
        corrupt_parts=list(run_dir.corrupt),
    )


def manifest(
    config: RunConfig,
    models: Models,
    started: float,
    status: str,
    summary: RunSummary | None = None,
) -> dict:
    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")

    body = {
        "vlpipe_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "source": config.source,
        "started": iso(started),
        "finished": iso(time.time()) if summary else None,
        "config": config.model_config(),
        "models": {
            "captioner": {"name": config.captioner, "config": models.captioner.describe()},
            "embedder": {
                "name": config.embedder,
                "config": models.embedder.describe(),
                "fingerprint": models.embedder.fingerprint(),
                "dim": models.embedder.dim,
            },
        },
        "embedding_dtype": "float16" if config.float16 else "float32",
        "options": {
            "batch_size": config.batch_size,
            "max_caption_tokens": config.max_caption_tokens,
            "device": config.device,
            "precision": config.precision,
            "workers": config.workers,
            "beam_args": config.beam_args,
        },
    }
    if summary:
        body["counts"] = {
            "seen": summary.seen,
            "written": summary.written,
            "failed": summary.failed,
            "failed_by_reason": summary.reasons,
            "duplicates_dropped": summary.duplicates,
            "processed_this_run": summary.processed,
            "lost": summary.lost,
        }
        body["timings"] = summary.timings
    return body
