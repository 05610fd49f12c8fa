"""ProcessShard: one DoFn call turns one shard spec into atomic Parquet parts and a done marker.

Why not `RunInference` directly: Beam 2.77's DaskRunner drops every element a DoFn emits from
`finish_bundle`, and BatchElements (inside RunInference) and WriteToParquet emit their last batch
there, so rows silently vanish on that runner. Doing read, decode, batched inference (through
ImageInference, which a user gives RunInference as VlpipeModelHandler) and the part writes inside
one `process` call per spec emits nothing from `finish_bundle`, is correct on every runner, bounds
memory by the shard size and makes the spec the unit of resume.

The spec streams: a tar is read once, sequentially, in a reader thread; decoding runs in a thread
pool a bounded number of images ahead of the model; a part is written every `shard_size` inputs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import apache_beam as beam

from vlpipe.images.decode import Filters
from vlpipe.images.export import ExportPolicy, exported
from vlpipe.images.metadata import UNKNOWN
from vlpipe.images.quality import flag_counts
from vlpipe.outputs.formats import output_format
from vlpipe.outputs.parquet import (
    failure_row,
    failures_table,
    part_name,
    results_table,
    write_chunk,
)
from vlpipe.reading.records import spec_records
from vlpipe.reading.specs import Record, ShardSpec
from vlpipe.rundir import FAILED, PARTS, RunDir
from vlpipe.schema import STAGE_INFER
from vlpipe.storage import DEFAULT_RETRIES, configure_retries
from vlpipe.worker.devices import worker_device
from vlpipe.worker.inference import ImageInference, Models, PreparedImage
from vlpipe.worker.prefetch import prepare_ahead
from vlpipe.worker.progress import WorkerProgress

log = logging.getLogger(__name__)


@dataclass
class ShardOptions:
    output: str
    shard_size: int = 1000
    decode_threads: int = 4
    filters: Filters = field(default_factory=Filters)
    float16: bool = True
    dim: int = 0  # the embedder's dimension from its config (the driver loads no weights); 0: none
    columns: tuple[str, ...] | None = None  # the source columns to keep (None: all)
    thumbnail_px: int = 0  # store a JPEG thumbnail this size per row; 0: none
    output_format: str = "parquet"  # a name in vlpipe.outputs.formats.FORMATS
    model_fields: tuple = ()  # pa.Fields of the columns the models add (--ask, --candidates)
    storage_retries: int = DEFAULT_RETRIES  # attempts per storage request (vlpipe.storage)
    detect_faces: bool = False  # faces and face_boxes columns (the detector is in Models)
    export: ExportPolicy = field(default_factory=ExportPolicy)  # what copied bytes keep


@dataclass(frozen=True)
class ShardWork:
    """A spec and what a rerun already holds for it: parts whose inputs it must not redo (from
    done markers of an earlier version of the spec, or its results when failures are retried)."""

    spec: ShardSpec
    skip_parts: tuple[str, ...] = ()
    skip_failed: tuple[str, ...] = ()


class ProcessShard(beam.DoFn):
    """ShardWork -> one summary dict per spec; parts and the marker are written as side effects."""

    def __init__(self, handler: ImageInference, options: ShardOptions):
        self._handler = handler
        self._options = options

    def setup(self) -> None:
        # One model per worker process, shared by its threads; with K GPUs, worker i -> cuda:i%K.
        configure_retries(self._options.storage_retries)  # a remote worker has no driver config
        handler = self._handler.on_device(worker_device(self._handler.device))
        self._models = handler.load_model()
        self._tower_loader = load_image_tower_in_background(self._models)
        self._progress = WorkerProgress(RunDir(self._options.output))

    def process(self, work: ShardWork):
        yield process_shard(work, self._models, self._handler, self._options, self._progress)

    def finish_bundle(self) -> None:
        self._progress.flush()  # a side effect only: nothing is emitted here (see above)


def load_image_tower_in_background(models: Models) -> threading.Thread | None:
    """Load (for a compiled graph: read, compile and warm up) the embedder's image tower in a
    thread while the first batch decodes, instead of after it (the tower's lock makes the first
    batch wait for it). Any error is left for that first batch to raise: it loads again."""
    if models.embedder is None:
        return None

    def load() -> None:
        try:
            models.embedder.load_image_tower()
        except Exception:  # noqa: BLE001, S110 - the first batch's own load reports it
            pass

    thread = threading.Thread(target=load, name="vlpipe-load-image-tower", daemon=True)
    thread.start()
    return thread


class _Tally:
    """What happened to a spec's inputs, including the ones an earlier run already holds."""

    def __init__(self, run: RunDir, work: ShardWork):
        self.by_part = {n: run.part_ids([n]) for n in work.skip_parts}
        self.by_failed = {n: run.part_ids([n], failed=True) for n in work.skip_failed}
        self.kept: dict[str, set[str]] = {PARTS: set(), FAILED: set()}
        self.seen: set[str] = set()
        self.counts = Counter()
        self.reasons = Counter()
        self.flags = Counter()  # quality flags of the rows written (vlpipe.images.quality)

    def fresh(self, records: Iterator[Record]) -> Iterator[Record]:
        """Records to process: not a repeat within the spec, not already held by a part."""
        for record in records:
            if record.image_id in self.seen:
                self.counts["duplicates"] += 1
                continue
            self.seen.add(record.image_id)
            if self._held(record.image_id):
                continue
            yield record

    def _held(self, image_id: str) -> bool:
        for sub, parts, key in (
            (PARTS, self.by_part, "written"),
            (FAILED, self.by_failed, "failed"),
        ):
            for name, ids in parts.items():
                if image_id in ids:
                    self.kept[sub].add(name)
                    self.counts[key] += 1
                    self.counts["held"] += 1
                    return True
        return False


def process_shard(
    work: ShardWork,
    models: Models,
    handler: ImageInference,
    options: ShardOptions,
    progress: WorkerProgress | None = None,
) -> dict:
    """Read, decode ahead of the model, infer in batches, write a part every shard_size inputs,
    then the done marker."""
    run = RunDir(options.output)
    progress = progress or WorkerProgress(run)
    tally = _Tally(run, work)
    parts = _Parts(run, work.spec, models, handler, options, tally, progress)
    records = tally.fresh(spec_records(work.spec))
    for record, item, seconds in prepare_ahead(records, models, options):
        parts.clock["decode_s"] += seconds
        parts.add(record, item)
    parts.close()
    marker = _marker(work.spec, tally, parts.written, parts.clock, options.filters)
    run.write_marker(marker)
    progress.finish(work.spec.key, marker["seen"])
    return marker


class _Parts:
    """Batches prepared images through the model and writes a part every shard_size inputs."""

    def __init__(self, run, spec, models, handler, options, tally, progress):
        self.run, self.spec, self.models, self.handler = run, spec, models, handler
        self.options, self.tally, self.progress = options, tally, progress
        self.clock = Counter()
        self.format = output_format(options.output_format)  # what is written beside the parts
        self.written: dict[str, dict] = {PARTS: {}, FAILED: {}}
        if self.format.folder:
            self.written[self.format.folder] = {}
        self.extra_fields: list | None = None  # the source's column types, for the parts
        self.batch: list[tuple[Record, PreparedImage]] = []
        self.results: list[dict] = []
        self.failures: list[dict] = []
        self.ids: list[str] = []
        self.writer = None  # the format's writer of the part being filled

    def add(self, record: Record, item: PreparedImage | dict) -> None:
        self.ids.append(record.image_id)
        if self.extra_fields is None and record.extra_fields:
            self.extra_fields = record.extra_fields
        if isinstance(item, PreparedImage):
            self.batch.append((record, item))
            if len(self.batch) >= self.handler.max_batch_size:
                self._infer()
        else:
            self.failures.append(item)
        if len(self.ids) >= self.options.shard_size:
            self._write()

    def close(self) -> None:
        if self.ids:
            self._write()

    def _writer(self):
        """The format's writer for the part being filled, opened at its first row."""
        if self.writer is None:
            self.writer = self.format.open(self.run, self.spec.key)
        return self.writer

    def _infer(self) -> None:
        start = time.perf_counter()
        by_id = {p.image_id: r for r, p in self.batch}
        done, failed = infer_with_retry([p for _, p in self.batch], self.models, self.handler)
        rows = [result_row(by_id[p.image_id], p, res, self.options.columns) for p, res in done]
        self.results.extend(rows)
        self.tally.counts.update(privacy_counts(rows))
        if self.format.open and rows:
            writer = self._writer()
            for (prepared, _), row in zip(done, rows, strict=True):
                writer.add(*exported(row, prepared.raw, self.options.export))
        self.failures.extend(
            failure_row(p.image_id, by_id[p.image_id].uri, STAGE_INFER, "model-error", err)
            for p, err in failed
        )
        self.batch.clear()
        self.clock["infer_s"] += time.perf_counter() - start

    def _write(self) -> None:
        if self.batch:
            self._infer()
        start = time.perf_counter()
        counts = self.tally.counts
        counts["written"] += len(self.results)
        counts["failed"] += len(self.failures)
        self.tally.reasons.update(f"{f['stage']}:{f['reason']}" for f in self.failures)
        self.tally.flags.update(flag_counts(self.results))
        opts = self.options
        name = part_name(self.spec.key, self.ids)
        table = results_table(
            self.results,
            opts.dim,
            opts.float16,
            bool(opts.thumbnail_px),
            [*(self.extra_fields or []), *opts.model_fields],
            faces=opts.detect_faces,
        )
        written = write_chunk(self.run, name, table, failures_table(self.failures))
        for sub in (PARTS, FAILED):
            self.written[sub].update(written[sub])
        if self.writer is not None:  # the format's files beside the part, named like it
            files = self.writer.close(name.removesuffix(".parquet"), table)
            self.written[self.format.folder].update(files)
            self.writer = None
        self.results, self.failures, self.ids = [], [], []
        self.progress.update(self.spec.key, len(self.tally.seen))
        self.clock["write_s"] += time.perf_counter() - start


def _marker(
    spec: ShardSpec, tally: _Tally, written: dict, clock: Counter, filters: Filters
) -> dict:
    """The spec's done marker: its counts over all its inputs and every part that holds them."""
    counts = tally.counts
    return {
        "key": spec.key,
        "kind": spec.kind,
        "url": spec.url,
        "first": spec.first,
        "last": spec.last,
        "digest": spec.digest,
        "done": True,
        "seen": len(tally.seen),
        "written": counts["written"],
        "failed": counts["failed"],
        "processed": len(tally.seen) - counts["held"],
        "duplicates": counts["duplicates"],
        "with_location": counts["with_location"],  # of the rows this pass wrote
        "with_faces": counts["with_faces"],
        "reasons": dict(tally.reasons),
        "flags": dict(tally.flags),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "parts": {**{n: None for n in tally.kept[PARTS]}, **written[PARTS]},
        "failed_parts": {**{n: None for n in tally.kept[FAILED]}, **written[FAILED]},
        **{key: files for key, files in written.items() if key not in (PARTS, FAILED)},
        "filters": filters.describe(),
        **{k: round(v, 3) for k, v in clock.items()},
    }


def result_row(
    record: Record, prepared: PreparedImage, result, columns: tuple[str, ...] | None = None
) -> dict:
    extra = record.extra
    if extra and columns is not None:
        extra = {k: v for k, v in extra.items() if k in columns}
    if getattr(result, "columns", None):  # the models' own columns come after the source's;
        extra = {  # a tar's .json key of the same name moves aside, as reserved names do
            (f"json.{k}" if k in result.columns else k): v for k, v in (extra or {}).items()
        } | result.columns
    return {
        "image_id": record.image_id,
        "uri": record.uri,
        "width": prepared.width,
        "height": prepared.height,
        "orig_width": prepared.orig_width,
        "orig_height": prepared.orig_height,
        "bytes": prepared.nbytes,
        "format": prepared.format,
        "phash": prepared.phash,
        "sha256": prepared.sha256,
        **(prepared.quality or {}),
        "caption": result.caption,
        "embedding": result.embedding,
        "text": record.text,
        "text_score": result.text_score,
        **photo_columns(prepared),
        "thumbnail": prepared.thumbnail,
        "extra": extra,
    }


def photo_columns(prepared: PreparedImage) -> dict:
    """The metadata columns, and the face columns when faces were looked for."""
    facts = prepared.facts or UNKNOWN
    out = {"exif_gps": facts.exif_gps, "camera": facts.camera, "taken_at": facts.taken_at}
    if prepared.face_boxes is not None:
        boxes = [[round(float(v), 4) for v in box] for box in prepared.face_boxes]
        out.update(faces=len(boxes), face_boxes=boxes)
    return out


def privacy_counts(rows: list[dict]) -> Counter:
    """Rows whose file holds a location, and rows with at least one face found."""
    return Counter(
        with_location=sum(r.get("exif_gps") is True for r in rows),
        with_faces=sum((r.get("faces") or 0) > 0 for r in rows),
    )


def infer_with_retry(
    batch: list[PreparedImage], models: Models, handler: ImageInference
) -> tuple[list, list[tuple[PreparedImage, str]]]:
    """A batch that raises (out of memory, or one image the model cannot take) is retried in
    halves, and those halves in halves, down to single images: only an image that fails alone
    becomes a failure row."""
    try:
        return _infer(batch, models, handler), []
    except Exception as exc:  # noqa: BLE001 - any model failure must fail rows, not the run
        _free_accelerator_memory()
        if len(batch) == 1:
            return [], [(batch[0], f"{type(exc).__name__}: {exc}")]
        half = len(batch) // 2
        log.warning(
            "batch of %d failed (%s); retrying as batches of %d and %d",
            len(batch), _first_line(exc), half, len(batch) - half,
        )  # fmt: skip
    done: list = []
    failed: list = []
    for chunk in (batch[:half], batch[half:]):
        ok, bad = infer_with_retry(chunk, models, handler)
        done.extend(ok)
        failed.extend(bad)
    return done, failed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _infer(batch, models, handler):
    return list(zip(batch, handler.run_inference(batch, models), strict=True))


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
