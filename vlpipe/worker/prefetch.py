"""Keep the model fed: records are read in a thread of their own (a tar streams in while the
model runs) and decoded in a thread pool (Pillow releases the GIL) a bounded number ahead, so
inference never waits on I/O or decode and memory stays bounded."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from vlpipe.images.decode import DecodeError, FilterError
from vlpipe.outputs.formats import output_format
from vlpipe.outputs.parquet import failure_row
from vlpipe.reading.files import read_bytes
from vlpipe.reading.specs import Record
from vlpipe.schema import STAGE_DECODE, STAGE_FILTER, STAGE_INPUT, STAGE_READ
from vlpipe.worker.inference import Models, PreparedImage, prepare_image

#: records per decode task: a task per image would cost more than a missing file's whole path
GROUP = 8
#: groups decoded ahead of the model, and groups read ahead of the decoders (64 images each)
AHEAD = 8
_END = object()


def prepare_ahead(
    records: Iterable[Record], models: Models, options
) -> Iterator[tuple[Record, PreparedImage | dict, float]]:
    """(record, prepared image or failure row, decode seconds), in record order."""

    def task(group: list[Record]) -> list[tuple[PreparedImage | dict, float]]:
        out = []
        for record in group:
            start = time.perf_counter()
            item = prepare_one(record, models, options)
            out.append((item, time.perf_counter() - start))
        return out

    groups = read_ahead(_grouped(records, GROUP), AHEAD)
    with ThreadPoolExecutor(max(1, options.decode_threads)) as pool:
        for group, prepared in _bounded_map(pool, task, groups):
            for record, (item, seconds) in zip(group, prepared, strict=True):
                yield record, item, seconds


def _grouped(items: Iterable, size: int) -> Iterator[list]:
    group = []
    for item in items:
        group.append(item)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group


def prepare_one(record: Record, models: Models, options) -> PreparedImage | dict:
    """A record to a prepared image, or to its failure row (never an exception). `options`:
    a ShardOptions (filters, thumbnail size, whether to keep the bytes for WebDataset)."""
    if record.failure:
        reason, message = record.failure
        return failure_row(record.image_id, record.uri, STAGE_INPUT, reason, message)
    try:
        data = record.data if record.data is not None else read_bytes(record.uri)
        if isinstance(data, Exception):
            raise data
    except Exception as exc:  # noqa: BLE001 - ReadError or any filesystem error
        reason = getattr(exc, "reason", "unreadable")
        return failure_row(record.image_id, record.uri, STAGE_READ, reason, _message(exc))
    record.data = None  # the bytes are not needed after decode; do not keep them alive
    try:
        return prepare_image(
            record.image_id, data, models, record.text, options.filters.max_pixels,
            options.filters, options.thumbnail_px,
            output_format(options.output_format).needs_image_bytes,
            blur_faces=options.export.blur_faces,
        )  # fmt: skip
    except FilterError as exc:
        return failure_row(record.image_id, record.uri, STAGE_FILTER, exc.reason, str(exc))
    except DecodeError as exc:
        return failure_row(record.image_id, record.uri, STAGE_DECODE, exc.reason, str(exc))
    except Exception as exc:  # noqa: BLE001 - preprocess bugs on odd images fail the image only
        return failure_row(record.image_id, record.uri, STAGE_DECODE, "decode-error", _message(exc))


def read_ahead(items: Iterable, size: int) -> Iterator:
    """Iterate `items` in a thread of its own, at most `size` ahead of the consumer; an exception
    in the reader is raised in the consumer."""
    buffer: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            buffer.put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="vlpipe-read-ahead")
    thread.start()
    try:
        while (item := buffer.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterator) -> Iterator:
    pending: deque[tuple[object, Future]] = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= AHEAD:
            break
    while pending:
        item, future = pending.popleft()
        nxt = next(items, _END)
        if nxt is not _END:
            pending.append((nxt, pool.submit(fn, nxt)))
        yield item, future.result()


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
