"""The Python API: `vlpipe.run(source, output, **options)` and `vlpipe.open(output)`, each a Run.

The CLI is a thin layer over these calls, so a notebook and `vlpipe run` do the same work and
fail with the same one-line VlpipeErrors. This is also the layer that calls both the pipeline and
the index builder, which know nothing of each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from vlpipe.errors import VlpipeError
from vlpipe.pipeline.options import RunConfig
from vlpipe.pipeline.summary import RunSummary
from vlpipe.rundir import RunDir

if TYPE_CHECKING:
    import pyarrow as pa

    from vlpipe.frames import SearchResult

__all__ = ["Run", "open", "run", "run_and_index", "run_config"]

#: RunConfig fields that are not options of `vlpipe.run` (given positionally)
_POSITIONAL = ("source", "output")


def run_and_index(config: RunConfig, echo: Callable[[str], None] = print) -> RunSummary:
    """The whole `vlpipe run`: the pipeline, then (unless `config.build_index` is off, or the
    run stored no embeddings or is incomplete) the index; raises VlpipeError for bad input."""
    from vlpipe.pipeline.run import run as run_pipeline

    summary = run_pipeline(config, echo=echo)
    if summary.ok and config.build_index and summary.written and config.mode()["embeddings"]:
        from vlpipe.index.build import build_index

        summary.index = build_index(config.output, progress=config.progress)
    return summary


def run(source: str, output: str, *, echo: Callable[[str], None] | None = None, **options) -> Run:
    """Caption and embed every image of `source` into `output`, then index it; the Run.

    `options` are `vlpipe run`'s flags by their Python names (`batch_size=16`,
    `output_format="lance"`, `overwrite=True`, ...; see vlpipe.pipeline.options.RunConfig).
    Quiet unless `echo` is given (e.g. `print`). Raises VlpipeError for anything the user can fix.
    """
    config = run_config(source, output, **options)
    summary = run_and_index(config, echo=echo or (lambda line: None))
    result = Run(output)
    result.last = summary
    return result


def run_config(source: str, output: str, **options) -> RunConfig:
    """A RunConfig from keyword options; an unknown name is one line naming the known ones."""
    known = [f.name for f in dataclasses.fields(RunConfig) if f.name not in _POSITIONAL]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise VlpipeError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)};"
            f" known: {', '.join(known)}"
        )
    options.setdefault("progress", False)
    return RunConfig(source=str(source), output=str(output), **options)


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

    def index(self, kind: str = "auto", memory_budget: str | None = None, rebuild: bool = False):
        """Build or update the index (`vlpipe index`); its meta.json content."""
        from vlpipe.index.build import build_index

        self._searcher = None
        return build_index(self.path, kind, memory_budget, rebuild, progress=False)

    def dedup(self, **options) -> dict:
        """Group near-duplicates (`vlpipe dedup`); options as DedupOptions (method, threshold,
        phash_distance, full). Its summary.json content."""
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
