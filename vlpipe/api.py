"""The Python API: `vlpipe.run(source, output, **options)` and `vlpipe.open(output)`, each a Run.

The CLI is a thin layer over these calls, so a notebook and `vlpipe run` do the same work and
fail with the same one-line VlpipeErrors. This is also the layer that calls both the pipeline and
the index builder, which know nothing of each other.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING

from vlpipe.errors import VlpipeError
from vlpipe.rundir import RunDir

if TYPE_CHECKING:  # loaded on use: `vlpipe index` and `vlpipe search` never import Beam
    import pyarrow as pa

    from vlpipe.frames import SearchResult
    from vlpipe.pipeline.options import RunConfig
    from vlpipe.pipeline.summary import RunSummary

__all__ = ["Run", "duplicates_line", "open", "run", "run_and_index", "run_config"]

#: RunConfig fields that are not options of `vlpipe.run` (given positionally)
_POSITIONAL = ("source", "output")
#: `vlpipe run` flags (Python names) that together make RunConfig.prompting
_PROMPTING = ("prompt", "asks", "max_image_pixels", "candidates")


def _float16(dtype: str) -> bool:
    if dtype not in ("float16", "float32"):
        raise VlpipeError(f"--embedding-dtype must be float16 or float32, not {dtype!r}")
    return dtype == "float16"


def _columns(value) -> tuple[str, ...] | None:
    """`a,b` (the flag's text) or a list of names; None keeps every source column."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else value
    return tuple(c.strip() for c in names if c.strip())


#: `vlpipe run` flags (Python names) whose RunConfig field has another name or type
_FLAGS: dict[str, tuple[str, Callable]] = {
    "embedding_dtype": ("float16", _float16),
    "save_thumbnails": ("thumbnail_px", int),
    "no_index": ("build_index", operator.not_),
    "no_progress": ("progress", operator.not_),
    "columns": ("columns", _columns),
    "scores": ("scores", tuple),
    "beam_args": ("beam_args", list),
}


def run(source: str, output: str, *, echo: Callable[[str], None] | None = None, **options) -> Run:
    """Caption and embed every image of `source` into `output`, then index it; the Run, whose
    `last` is the RunSummary. `vlpipe run` is this call with the parsed flags.

    `options` are `vlpipe run`'s flags by their Python names (`batch_size=16`,
    `output_format="lance"`, `no_index=True`, `asks=["has_text=Any text?"]`, ...; see
    run_config). Quiet unless `echo` is given (e.g. `print`). Raises VlpipeError for anything
    the user can fix.
    """
    config = run_config(source, output, **options)
    summary = run_and_index(config, echo=echo or (lambda line: None))
    result = Run(output)
    result.last = summary
    return result


def run_config(source: str, output: str, **options) -> RunConfig:
    """The one place `vlpipe run`'s options become a RunConfig (the CLI's flags and
    `vlpipe.run`'s keywords alike); an unknown name is one line naming the known ones.

    Options: the flags by their Python names (`embedding_dtype="float32"`, `save_thumbnails=64`,
    `no_index=True`, `columns="a,b"` or a list, `prompt`, `asks`, `max_image_pixels`,
    `candidates`, `scores`, `beam_args`, ...) or RunConfig's own field names (`thumbnail_px`,
    `float16`, `build_index`, `progress`, `prompting`). No progress bar unless asked.
    """
    from vlpipe.models.prompting import Prompting, parse_asks
    from vlpipe.pipeline.options import RunConfig

    fields = [f.name for f in dataclasses.fields(RunConfig) if f.name not in _POSITIONAL]
    known = sorted({*fields, *_FLAGS, *_PROMPTING})
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise VlpipeError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)};"
            f" known: {', '.join(known)}"
        )
    given = {"progress": False}
    for name, value in options.items():
        if name in _FLAGS:
            field, convert = _FLAGS[name]
            given[field] = convert(value)
        elif name not in _PROMPTING:
            given[name] = value
    if any(name in options for name in _PROMPTING):
        given["prompting"] = Prompting(
            prompt=options.get("prompt"),
            asks=parse_asks(options.get("asks") or ()),
            max_image_pixels=options.get("max_image_pixels"),
            candidates=options.get("candidates", 1),
        )
    return RunConfig(source=str(source), output=str(output), **given)


def run_and_index(config: RunConfig, echo: Callable[[str], None] = print) -> RunSummary:
    """The whole `vlpipe run`: the pipeline, then (unless `config.build_index` is off, or the
    run stored no embeddings or is incomplete) the index; raises VlpipeError for bad input."""
    from vlpipe.pipeline.run import run as run_pipeline

    summary = run_pipeline(config, echo=echo)
    if summary.ok and config.build_index and summary.written and config.mode()["embeddings"]:
        from vlpipe.index.build import build_index

        summary.index = build_index(config.output, progress=config.progress)
    return summary


def open(output: str) -> Run:  # noqa: A001 - vlpipe.open, as in the issue and the README
    """The run in `output` (a local path or any fsspec URL); one line if there is none."""
    result = Run(output)
    result.manifest()
    return result


class Run:
    """A run directory: its rows, index, near-duplicates and summary, as `vlpipe` commands see
    them. `last` is the RunSummary of the `vlpipe.run` call that made it (None for `open`)."""

    def __init__(self, path: str):
        self.path = str(path)
        self.last: RunSummary | None = None
        self._searcher = None

    def __repr__(self) -> str:
        return f"vlpipe.Run({self.path!r})"

    def manifest(self) -> dict:
        return RunDir(self.path).require_manifest()

    def closing_lines(self) -> list[str]:
        """What `vlpipe run` prints at the end: the counts of the last `vlpipe.run`, its index,
        and what the last `vlpipe dedup` of this output found."""
        summary = self.last
        lines = summary.lines() if summary else []
        if summary and summary.index:
            index = summary.index
            lines.append(
                f"index: {index.get('kind')} over {index.get('count')} vectors"
                f" in {self.path.rstrip('/')}/index"
            )
        dedup_line = duplicates_line(self.path, summary.written if summary else 0)
        return lines + ([dedup_line] if dedup_line else [])

    def summary(self) -> dict:
        """What the run holds: status, counts, models, index and last dedup (`vlpipe run`'s
        closing lines, as data)."""
        from vlpipe.dedup.output import read_summary

        manifest = self.manifest()
        run_dir = RunDir(self.path)
        return {
            "path": self.path,
            "status": manifest.get("status"),
            "complete": run_dir.fs.exists(run_dir.join("_SUCCESS")),
            "counts": manifest.get("counts", {}),
            "models": {k: v.get("name") for k, v in manifest.get("models", {}).items()},
            "output_format": manifest.get("output_format"),
            "index": self._index_meta(),
            "dedup": read_summary(run_dir),
        }

    def index(
        self,
        kind: str = "auto",
        memory_budget: str | None = None,
        rebuild: bool = False,
        progress: bool = False,
    ) -> dict:
        """Build or update the index (`vlpipe index`); its meta.json content."""
        from vlpipe.index.build import build_index

        self._searcher = None
        return build_index(self.path, kind, memory_budget, rebuild, progress=progress)

    def dedup(self, **options) -> dict:
        """Group near-duplicates (`vlpipe dedup`); options as DedupOptions (method, threshold,
        phash_distance, near_threshold, near_phash_distance, full). Its summary.json content."""
        from vlpipe.dedup.run import DedupOptions, dedup

        fields = {f.name for f in dataclasses.fields(DedupOptions)}
        if set(options) - fields:
            raise VlpipeError(
                f"unknown dedup option(s) {', '.join(sorted(set(options) - fields))};"
                f" known: {', '.join(sorted(fields))}"
            )
        return dedup(self.path, DedupOptions(**options))

    def table(self, columns: list[str] | None = None, where: str | None = None) -> pa.Table:
        """The run's rows (every part), the named columns or all; `where` as `search --where`."""
        from vlpipe.frames import read_rows

        return read_rows(RunDir(self.path), columns, where)

    def search(
        self,
        query,
        k: int = 10,
        where: str | None = None,
        mode: str = "vector",
        columns: list[str] | None = None,
    ) -> SearchResult:
        """The k indexed images nearest to `query`: a text, a PIL image or an image's path.
        A pandas DataFrame with rank, score, image_id, uri, caption (and `columns`); in Jupyter
        it shows each hit's thumbnail."""
        from vlpipe.frames import SearchResult, query_image

        searcher = self._open_searcher()
        image = query_image(query)
        if image is not None:
            hits = searcher.search_image([image], k, where=where)[0]
        elif isinstance(query, str):
            hits = searcher.search_text([query], k, mode=mode, where=where)[0]
        else:
            raise VlpipeError(f"query: a text, a PIL image or an image path, not {type(query)}")
        wanted = list(columns or [])
        if wanted:
            from vlpipe.search.results import attach

            attach(searcher.rows(), [hits], wanted)
        return SearchResult.of_hits(hits, wanted)

    def _open_searcher(self):
        if self._searcher is None:
            from vlpipe.search.searcher import Searcher

            self._searcher = Searcher.open(self.path)
        return self._searcher

    def _index_meta(self) -> dict | None:
        from vlpipe.index.store import IndexDir

        run_dir = RunDir(self.path)
        return IndexDir.of_run(run_dir.fs, run_dir.root).read_meta()


def duplicates_line(output: str, written: int) -> str | None:
    """What the last `vlpipe dedup` of this output found, and whether rows came since."""
    from vlpipe.dedup.output import read_summary

    s = read_summary(RunDir(output))
    if s is None:
        return None
    line = f"near-duplicates: {s['duplicates']} in {s['clusters']} clusters (vlpipe dedup"
    new = written - s["images"]
    return line + (f" of {s['images']} rows; {new} rows since: run it again)" if new else ")")
