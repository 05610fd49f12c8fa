"""`vlpipe run`: plan shard specs, skip done ones, process the rest with Beam, count.

driver:  source ─► plan (streamed specs) ─► drop done specs (markers) ─► Beam
workers: ProcessShard(spec) ─► parts every shard-size inputs ─► done marker
driver:  sum the markers' counts ─► manifest.json + _SUCCESS
(vlpipe.api then builds the index: the pipeline never imports the index builder)

The driver's memory grows with the number of specs (about 1 KB each), never with the number of
images; it opens no image and no tar, and loads no model weights.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable

from vlpipe.errors import VlpipeError
from vlpipe.models.backends import resolve_backend
from vlpipe.models.describe import describe_models
from vlpipe.models.faces import check_detector
from vlpipe.models.precision import Precision, resolve_precision
from vlpipe.models.prompting import check_columns, model_fields
from vlpipe.models.registry import bf16_measured_on_cpu, runs_compiled_on_cpu
from vlpipe.outputs.formats import output_format
from vlpipe.pipeline.lease import acquire
from vlpipe.pipeline.options import RunConfig, make_pipeline
from vlpipe.pipeline.progress import ProgressMonitor
from vlpipe.pipeline.resume import LAYOUT_VERSION, Resume, check_output
from vlpipe.pipeline.summary import RunSummary, count
from vlpipe.reading.files import MANIFEST_EXTENSIONS, ext
from vlpipe.reading.plan import plan
from vlpipe.reading.records import save_page
from vlpipe.reading.specs import KIND_MANIFEST, KIND_PAGE, ShardSpec
from vlpipe.rundir import PLAN, PROGRESS, SUCCESS, RunDir, write_atomic
from vlpipe.schema import RESERVED_COLUMNS, SCHEMA_VERSION
from vlpipe.storage import StorageError, configure_retries
from vlpipe.version import __version__
from vlpipe.worker.inference import ImageInference
from vlpipe.worker.shard import ProcessShard, ShardOptions, ShardWork

__all__ = ["RunSummary", "run"]


def run(config: RunConfig, echo: Callable[[str], None] = print) -> RunSummary:
    """The pipeline part of `vlpipe run` (vlpipe.api.run_and_index adds the index); raises
    VlpipeError for anything the user can fix."""
    config.validate()
    started = time.time()
    configure_retries(config.storage_retries)
    run_dir = RunDir(config.output)
    precision = driver_precision(config)
    config.backend = driver_backend(config, echo)
    runtime = {"device": config.device, "precision": config.precision, "backend": config.backend}
    models = describe_models(config.captioner, config.embedder, config.prompting, **runtime)
    if config.detect_faces:
        check_detector()  # one line now, not a failure row per image in the workers
    check_answer_columns(config)  # before the manifest: a refused run leaves nothing behind
    if config.scores:  # heads' shapes and classifiers' labels checked before any work
        from vlpipe.models.scorers import describe_scores

        models["scorers"] = describe_scores(config.score_specs(), models["embedder"]["dim"])
    lease = acquire(run_dir, config.take_over)  # one run per output, before anything changes
    try:
        return _run(config, echo, run_dir, models, precision, started)
    finally:
        lease.release()


def _run(
    config: RunConfig,
    echo: Callable[[str], None],
    run_dir: RunDir,
    models: dict,
    precision: Precision,
    started: float,
) -> RunSummary:
    check_output(run_dir, config.model_config(), config.overwrite)
    forget_cached_listings(config.source)
    # The manifest goes first, _SUCCESS goes: a kill at any later point leaves a resumable run.
    run_dir.write_manifest(manifest(config, models, started, "running", precision=precision))
    run_dir.remove_file(SUCCESS)
    resume = Resume.load(run_dir, config.retry_failed, config.filters())
    specs, todo = plan_work(config, run_dir, resume)
    echo(
        f"vlpipe {__version__}: {len(specs)} shards ({_inputs(specs)} inputs), {len(todo)} to"
        f" process; captioner {config.captioner}, embedder {config.embedder}"
        + ("" if all(config.mode().values()) else f" ({_mode_name(config)})")
        + f"; precision {precision.describe()}, backend {config.backend}"
    )
    if todo:
        run_shards(config, todo, models["embedder"]["dim"])
    summary = count(run_dir, specs, {w.spec.key for w in todo}, time.time() - started)
    if not config.detect_faces:
        summary.with_faces = None
    summary.corrupt_parts = resume.corrupt + summary.corrupt_parts
    if summary.seen == 0:
        raise VlpipeError(f"no images found in {config.source}")
    fmt = output_format(config.output_format)
    if fmt.commit:  # a format made whole at the end (Lance): every part a marker names
        line = fmt.commit(run_dir, list(run_dir.markers().values()))
        if line:
            echo(line)
    run_dir.write_manifest(manifest(config, models, started, "done", summary, precision))
    if summary.ok:
        if any(s.kind == KIND_PAGE for s in specs):  # only listings save pages under _plan/
            run_dir.remove(PLAN)
        run_dir.remove(PROGRESS)
        write_atomic(run_dir.fs, run_dir.join(SUCCESS), b"")
    return summary


def plan_work(
    config: RunConfig, run_dir: RunDir, resume: Resume
) -> tuple[list[ShardSpec], list[ShardWork]]:
    """Every spec of the source and the work left. A source too small to give each local worker
    a few specs at the shard size is planned again in smaller specs (cheap: it is small)."""
    specs, todo = _plan(config, config.shard_size, run_dir, resume)
    wanted = 4 * config.workers
    if config.workers > 1 and len(specs) < wanted:
        inputs = sum(s.count if s.count is not None else config.shard_size for s in specs)
        smaller = max(1, inputs // wanted)
        if smaller < config.shard_size:
            specs, todo = _plan(config, smaller, run_dir, resume)
    return specs, todo


def _plan(
    config: RunConfig, target: int, run_dir: RunDir, resume: Resume
) -> tuple[list[ShardSpec], list[ShardWork]]:
    """A listing page still to do is saved under --output for its worker; the other pages are
    dropped as they stream by, so the driver never holds a listing."""
    specs: list[ShardSpec] = []
    todo: list[ShardWork] = []
    for spec in plan(config.source, target, config.columns):
        work = resume.work(spec)
        if work is not None and spec.kind == KIND_PAGE:
            url = run_dir.url(PLAN, f"{spec.key}.jsonl")
            save_page(url, spec.uris)
            work = ShardWork(spec.without_uris(url), work.skip_parts, work.skip_failed)
        specs.append(spec.without_uris())
        if work is not None:
            todo.append(work)
    return specs, todo


def check_answer_columns(config: RunConfig) -> None:
    """An --ask NAME (or caption_score) that is also a column of vlpipe's or of a manifest
    source is refused before any work (a tar's .json key of that name moves to json.NAME)."""
    names = config.prompting.columns()
    if not names:
        return
    check_columns(config.prompting, RESERVED_COLUMNS)
    if ext(config.source.split("?")[0]) not in MANIFEST_EXTENSIONS:
        return
    from vlpipe.reading.manifests import manifest_columns

    for url in dict.fromkeys(s.url for s in plan(config.source, 10**9) if s.kind == KIND_MANIFEST):
        check_columns(config.prompting, set(manifest_columns(url, config.columns)))


def _mode_name(config: RunConfig) -> str:
    return "captions only" if config.embedder == "none" else "embeddings only"


def _inputs(specs: list[ShardSpec]) -> str:
    known = sum(s.count or 0 for s in specs)
    return f"{known}" if all(s.count is not None for s in specs) else f"{known}+ (tars uncounted)"


def forget_cached_listings(source: str) -> None:
    """s3fs/gcsfs cache directory listings per process and open files by them: a second run in
    one process would miss new objects (listed as present, then read as missing) without this."""
    import fsspec

    try:
        fs, _ = fsspec.core.url_to_fs(source)
    except Exception:  # noqa: BLE001 - a bad source is plan's error to report
        return
    fs.invalidate_cache()


def driver_precision(config: RunConfig) -> Precision:
    """The precision `auto` resolves to on this machine, printed and recorded. Workers resolve
    it again on their own hardware (the same answer on the in-process runners)."""
    roles = ((config.captioner, "captioner"), (config.embedder, "embedder"))
    measured = all(bf16_measured_on_cpu(name, role) for name, role in roles)
    return resolve_precision(_device_type(config), config.precision, bf16_measured=measured)


def driver_backend(config: RunConfig, echo: Callable[[str], None]) -> str:
    """The runtime of vlpipe-mini's tower and hub CLIP / SigLIP image towers (other models run
    torch); a missing runtime is said once here and the workers are handed torch."""
    roles = ((config.captioner, "captioner"), (config.embedder, "embedder"))
    if not any(runs_compiled_on_cpu(name, role) for name, role in roles):
        return "torch"
    return resolve_backend(config.backend, _device_type(config), warn=echo)


def _device_type(config: RunConfig) -> str:
    if config.device != "auto":
        return config.device.split(":", 1)[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_handler(config: RunConfig) -> ImageInference:
    return ImageInference.for_run(config)


def run_shards(config: RunConfig, todo: list[ShardWork], dim: int) -> None:
    """The Beam pipeline over the specs to do; progress comes from the workers' progress
    objects under --output. A worker's storage error ends the run in one line."""
    import apache_beam as beam

    options = ShardOptions(
        config.output,
        config.shard_size,
        config.decode_threads,
        config.filters(),
        config.float16,
        dim,
        config.columns,
        config.thumbnail_px,
        config.output_format,
        (*model_fields(config.prompting), *config.score_fields()),
        config.storage_retries,
        detect_faces=config.detect_faces,
        export=config.export_policy(),
    )
    counts = [w.spec.count for w in todo]
    total = sum(counts) if None not in counts else None
    monitor = ProgressMonitor(config.output, total, config.progress)
    monitor.start()
    try:
        pipeline = make_pipeline(config, n_shards=len(todo))
        try:
            with pipeline:
                _ = (
                    pipeline
                    | "Specs" >> beam.Create(todo, reshuffle=False)
                    | "Spread" >> beam.Reshuffle()
                    | "ProcessShard" >> beam.ParDo(ProcessShard(make_handler(config), options))
                )
        except Exception as exc:
            storage = worker_storage_error(exc)
            if storage is None:
                raise
            raise VlpipeError(f"{storage} (a rerun resumes where this run stopped)") from exc
        finally:
            close_runner_client(getattr(pipeline, "result", None))
    finally:
        monitor.stop()


def worker_storage_error(exc: BaseException) -> str | None:
    """The one line of a worker's StorageError, however the runner passed it on (the exception
    itself, or the text of a remote traceback)."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, StorageError):
            return str(err).split("\n", 1)[0].split(" [while running", 1)[0]
        err = err.__cause__ or err.__context__
    found = re.search(r"StorageError: ([^\n]+)", str(exc))
    return found.group(1).split(" [while running", 1)[0].strip() if found else None


def close_runner_client(result) -> None:
    """The DaskRunner opens a dask.distributed Client and never closes it; left open, it logs
    connection errors when the cluster goes away after the run."""
    client = getattr(result, "client", None)
    if client is not None and hasattr(client, "close"):
        client.close()


def manifest(
    config: RunConfig,
    models: dict,
    started: float,
    status: str,
    summary: RunSummary | None = None,
    precision: Precision | None = None,
) -> dict:
    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")

    body = {
        "vlpipe_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "layout_version": LAYOUT_VERSION,
        "status": status,
        "source": config.source,
        "started": iso(started),
        "finished": iso(time.time()) if summary else None,
        "config": config.model_config(),
        "models": models,
        "mode": config.mode(),
        "embedding_dtype": "float16" if config.float16 else "float32",
        "filters": config.filters().describe(),
        "columns": list(config.columns) if config.columns is not None else None,
        "thumbnail_px": config.thumbnail_px or None,
        "output_format": config.output_format,
        "privacy": {
            "keep_metadata": config.keep_metadata,
            "detect_faces": config.detect_faces,
            "blur_faces": config.blur_faces,
        },
        "options": {
            "batch_size": config.batch_size,
            "shard_size": config.shard_size,
            "max_caption_tokens": config.max_caption_tokens,
            "device": config.device,
            "precision": precision.name if precision else config.precision,
            "precision_requested": config.precision,
            "precision_reason": precision.reason if precision else None,
            "backend": config.backend,
            "workers": config.workers,
            "storage_retries": config.storage_retries,
            "beam_args": config.beam_args,
        },
    }
    if summary:
        body["counts"] = summary.counts()
        body["timings"] = summary.timings
    return body
