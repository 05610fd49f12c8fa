"""The output formats by name: the one table `--output-format` is read from.

Adding a format: a module in vlpipe/outputs/ with an `OutputFormat` entry (see base.py), and
its line here.
"""

from __future__ import annotations

from vlpipe.errors import VlpipeError
from vlpipe.outputs.base import OutputFormat
from vlpipe.outputs.lance import LANCE
from vlpipe.outputs.parquet import PARQUET
from vlpipe.outputs.webdataset import WEBDATASET

FORMATS: dict[str, OutputFormat] = {f.name: f for f in (PARQUET, WEBDATASET, LANCE)}
DEFAULT = PARQUET.name


def output_format(name: str) -> OutputFormat:
    """The format called `name`; a one-line error naming the choices otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise VlpipeError(f"--output-format: {name!r} is not one of {'|'.join(FORMATS)}") from None


def beside_parts() -> list[OutputFormat]:
    """The formats that write files beside the parts: resume clears their leftovers and
    --overwrite their folders, whichever format the run at hand asked for."""
    return [f for f in FORMATS.values() if f.folder]
