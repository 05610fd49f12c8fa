"""The writer interface every output format implements, and the entry that names a format.

A run always writes Parquet parts (resume, index, search and dedup read them); `--output-format`
adds one more writer beside them, fed the same rows. A format is one module with one
`OutputFormat` entry, listed once in vlpipe.outputs.formats.FORMATS: the CLI's choices, the
config check, the worker (which keeps the source bytes only for a format that wants them),
resume (which clears a format's unreferenced files), the done marker and the end-of-run commit
all read that table.

A writer's life is one part: `add` every row as the model returns it (with the image's source
bytes when the format asks for them), then `close` with the part's name and its finished Arrow
table (the one the Parquet part holds), which makes the files final and returns their names and
sizes for the done marker; or `abort` if the part fails.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from vlpipe.rundir import RunDir


class PartWriter(ABC):
    """One part's rows in one format, made final only by `close`."""

    def add(self, row: dict, image: bytes | None) -> None:  # noqa: B027 - optional
        """One result row as it comes; `image` is the source's bytes when the format needs them
        (else None). A format that writes the finished table in `close` ignores this."""

    @abstractmethod
    def close(self, part: str, table: pa.Table) -> dict[str, int]:
        """Finish under the part's name (`part-<key>-<digest>`, no suffix), given the part's
        table; {file name: size} of the files written in the format's `files` folder."""

    @abstractmethod
    def abort(self) -> None:
        """Drop what was written; the final names are never written."""


@dataclass(frozen=True)
class OutputFormat:
    """A choice of --output-format: what it writes beside the Parquet parts, and how."""

    name: str
    help: str
    #: the run's folder it owns (removed by --overwrite); None: nothing beside the parts
    folder: str | None = None
    #: the folder, under the run, of the files its writers name; done markers list them under
    #: the key `folder`, and resume removes any file there that no marker names
    files: str | None = None
    #: whether `add` gets the source image's bytes (kept in memory from read to write)
    needs_image_bytes: bool = False
    #: a writer for one part of spec `key`: (run, key) -> PartWriter
    open: Callable[[RunDir, str], PartWriter] | None = None
    #: the driver's last step, given every done marker (a Lance commit): a line to print or None
    commit: Callable[[RunDir, list[dict]], str | None] | None = None
    #: a check of the --output before any work (a format that cannot write there): raises
    check: Callable[[str], None] | None = None
