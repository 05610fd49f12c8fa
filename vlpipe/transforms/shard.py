"""ProcessShard: one DoFn call turns one shard of inputs into one atomic Parquet part.

Why not `RunInference` directly: Beam 2.77's DaskRunner drops every element a DoFn emits from
`finish_bundle`, and BatchElements (inside RunInference) and WriteToParquet emit their last batch
there, so rows silently vanish on that runner. Doing read, decode, batched inference (through the
same `VlpipeModelHandler` a user would give RunInference) and the part write inside one `process`
call per shard emits nothing from `finish_bundle`, is correct on every runner, bounds memory by the
shard size and makes the shard the unit of resume.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import apache_beam as beam
import fsspec

from vlpipe.pipeline.sources import InputRecord, read_bytes, read_tar_members
from vlpipe.schema import STAGE_DECODE, STAGE_MODEL, STAGE_READ
from vlpipe.transforms.decode import DEFAULT_MAX_PIXELS, DecodeError
from vlpipe.transforms.handlers import (
    ImageResult,
    Models,
    PreparedImage,
    VlpipeModelHandler,
    prepare_image,
)
from vlpipe.transforms.write import (
    failure_row,
    failures_table,
    part_name,
    results_table,
    write_shard,
)

log = logging.getLogger(__name__)


@dataclass
class ShardOptions:
    output: str
    decode_threads: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS
    float16: bool = True


def save_shard(url: str, records: list[InputRecord]) -> None:
    """A shard's inputs as JSON lines: the pipeline ships only the file's URL to a worker."""
    with fsspec.open(url, "w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")


def load_shard(url: str) -> list[InputRecord]:
    with fsspec.open(url, "r") as f:
        return [InputRecord(**json.loads(line)) for line in f if line.strip()]


class ProcessShard(beam.DoFn):
    """(key, [shard file URLs]) -> one summary dict per shard; parts are written as a side
    effect."""

    def __init__(self, handler: VlpipeModelHandler, options: ShardOptions):
        self._handler = handler
        self._options = options

    def setup(self) -> None:
        self._models = self._handler.load_model()  # cached per process, see handlers.py

    def process(self, element):
        _key, urls = element
        for url in urls:
            summary = process_shard(load_shard(url), self._models, self._handler, self._options)
            # Progress and timing for the launcher; the parts, not this file, are the truth.
            with fsspec.open(url + ".done.json", "w") as f:
                json.dump(summary, f)
            yield summary


def process_shard(
    records: list[InputRecord],
    models: Models,
    handler: VlpipeModelHandler,
    options: ShardOptions,
) -> dict:
    """Read, decode ahead of the model in threads, infer in batches, write one part."""
    clock = {"decode_s": 0.0, "infer_s": 0.0, "write_s": 0.0}
    results: list[dict] = []
    failures: list[dict] = []
    by_id = {r.image_id: r for r in records}
    batch: list[PreparedImage] = []

    def flush() -> None:
        start = time.perf_counter()
        done, failed = infer_with_retry(batch, models, handler)
        clock["infer_s"] += time.perf_counter() - start
        results.extend(result_row(by_id[r.image_id], p, r) for p, r in done)
        failures.extend(
            failure_row(p.image_id, by_id[p.image_id].uri, STAGE_MODEL, "model-error", err)
            for p, err in failed
        )
        batch.clear()

    for _record, item, seconds in prepare_ahead(records, models, options):
        clock["decode_s"] += seconds
        if isinstance(item, PreparedImage):
            batch.append(item)
            if len(batch) >= handler.max_batch_size:
                flush()
        else:
            failures.append(item)
    if batch:
        flush()

    start = time.perf_counter()
    dim = models.embedder.dim
    write_shard(
        options.output,
        part_name([r.image_id for r in records]),
        results_table(results, dim, options.float16),
        failures_table(failures),
    )
    clock["write_s"] = time.perf_counter() - start
    reasons = Counter(f"{f['stage']}:{f['reason']}" for f in failures)
    return {
        "seen": len(records),
        "written": len(results),
        "failed": len(failures),
        "reasons": dict(reasons),
        **clock,
    }


def result_row(record: InputRecord, prepared: PreparedImage, result: ImageResult) -> dict:
    return {
        "image_id": record.image_id,
        "uri": record.uri,
        "width": prepared.width,
        "height": prepared.height,
        "caption": result.caption,
        "embedding": result.embedding,
        "text": record.text,
        "text_score": result.text_score,
    }


def infer_with_retry(
    batch: list[PreparedImage], models: Models, handler: VlpipeModelHandler
) -> tuple[list[tuple[PreparedImage, ImageResult]], list[tuple[PreparedImage, str]]]:
    """A batch that raises is retried once as two halves; a half that raises again fails."""
    try:
        return _infer(batch, models, handler), []
    except Exception as exc:  # noqa: BLE001 - any model failure must fail rows, not the run
        log.warning("batch of %d failed (%s); retrying at half size", len(batch), exc)
        _free_accelerator_memory()
    done: list = []
    failed: list = []
    half = max(1, len(batch) // 2)
    for chunk in (batch[:half], batch[half:]):
        if not chunk:
            continue
        try:
            done.extend(_infer(chunk, models, handler))
        except Exception as exc:  # noqa: BLE001
            reason = f"{type(exc).__name__}: {exc}"
            failed.extend((p, reason) for p in chunk)
            _free_accelerator_memory()
    return done, failed


def _infer(batch, models, handler):
    return list(zip(batch, handler.run_inference(batch, models), strict=True))


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def prepare_ahead(
    records: list[InputRecord], models: Models, options: ShardOptions
) -> Iterator[tuple[InputRecord, PreparedImage | dict, float]]:
    """(record, prepared image or failure row, decode seconds) in input order.

    Decoding runs in a thread pool (Pillow releases the GIL) a bounded number of images ahead of
    the consumer, so inference never waits on decode and memory stays bounded.
    """
    tar_bytes = _read_tar_shards(records)

    def task(record: InputRecord) -> tuple[PreparedImage | dict, float]:
        start = time.perf_counter()
        return _prepare_one(record, tar_bytes, models, options), time.perf_counter() - start

    with ThreadPoolExecutor(max(1, options.decode_threads)) as pool:
        for record, (item, seconds) in _bounded_map(pool, task, records, ahead=64):
            yield record, item, seconds


def _prepare_one(record, tar_bytes, models, options) -> PreparedImage | dict:
    try:
        data = tar_bytes.pop(record.uri) if record.tar else read_bytes(record)
        if isinstance(data, Exception):
            raise data
    except Exception as exc:  # noqa: BLE001 - ReadError or any filesystem error
        reason = getattr(exc, "reason", "unreadable")
        return failure_row(record.image_id, record.uri, STAGE_READ, reason, _message(exc))
    try:
        return prepare_image(record.image_id, data, models, record.text, options.max_pixels)
    except DecodeError as exc:
        return failure_row(record.image_id, record.uri, STAGE_DECODE, exc.reason, str(exc))
    except Exception as exc:  # noqa: BLE001 - preprocess bugs on odd images fail the image only
        return failure_row(record.image_id, record.uri, STAGE_DECODE, "decode-error", _message(exc))


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _read_tar_shards(records: list[InputRecord]) -> dict[str, bytes | Exception]:
    """Tar members are read in one sequential pass per tar; keyed by record uri."""
    wanted: dict[str, list[InputRecord]] = {}
    for r in records:
        if r.tar:
            wanted.setdefault(r.tar, []).append(r)
    out: dict[str, bytes | Exception] = {}
    for tar, members in wanted.items():
        try:
            got = read_tar_members(tar, [m.member for m in members])
        except Exception as exc:  # noqa: BLE001 - an unreadable tar fails its members
            got = {m.member: exc for m in members}
        for m in members:
            out[m.uri] = got.get(m.member, KeyError(f"member {m.member} not found in {tar}"))
    return out


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: list, ahead: int):
    pending: deque[tuple[object, Future]] = deque()
    it = iter(items)
    for item in it:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= ahead:
            break
    while pending:
        item, future = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(fn, nxt)))
        yield item, future.result()
