"""What `vlpipe run` does, as library calls: the pipeline, then the index over its output.

The pipeline and the index builder know nothing of each other; this layer calls both, so the CLI
and a notebook get the same run.
"""

from __future__ import annotations

from collections.abc import Callable

from vlpipe.pipeline.options import RunConfig
from vlpipe.pipeline.summary import RunSummary


def run_and_index(config: RunConfig, echo: Callable[[str], None] = print) -> RunSummary:
    """The whole `vlpipe run`: the pipeline, then (unless `config.build_index` is off, or the
    run stored no embeddings or is incomplete) the index; raises VlpipeError for bad input."""
    from vlpipe.pipeline.run import run

    summary = run(config, echo=echo)
    if summary.ok and config.build_index and summary.written and config.mode()["embeddings"]:
        from vlpipe.index.build import build_index

        summary.index = build_index(config.output, progress=config.progress)
    return summary
