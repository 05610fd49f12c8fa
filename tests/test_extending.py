"""The extension points of docs/extending.md hold: an output format is one entry in one table
(vlpipe.outputs.formats.FORMATS) that the CLI's choices, validation, the worker, the done marker
and resume all read, so a format registered there at runtime runs end to end."""

from __future__ import annotations

import csv
import io

import pytest

import vlpipe
from tests.helpers.images import image_bytes
from tests.helpers.reliability import tiny  # noqa: F401 - session fixture
from vlpipe.errors import VlpipeError
from vlpipe.outputs import formats
from vlpipe.outputs.base import OutputFormat, PartWriter


def test_the_clis_output_format_choices_are_the_formats_table():
    from vlpipe.cli.run import command

    [option] = [p for p in command.params if p.name == "output_format"]
    assert list(option.type.choices) == list(formats.FORMATS)
    assert option.default == formats.DEFAULT
    for name, entry in formats.FORMATS.items():
        assert entry.name == name and f"{name}: {entry.help}" in option.help
    with pytest.raises(VlpipeError, match="--output-format: 'tsv' is not one of parquet|"):
        formats.output_format("tsv")


class CaptionsCsv(PartWriter):
    """A format a user might add: per part, a CSV of uri, caption and the image's first bytes."""

    def __init__(self, run, key: str):
        self.run, self.rows = run, []

    def add(self, row: dict, image: bytes | None) -> None:
        self.rows.append((row["uri"], row["caption"], image[:3].hex()))

    def close(self, part: str, table) -> dict[str, int]:
        text = io.StringIO()
        csv.writer(text).writerows(self.rows)
        data = text.getvalue().encode()
        name = f"{part}.csv"
        self.run.fs.makedirs(self.run.join("csv"), exist_ok=True)
        self.run.fs.pipe_file(self.run.join("csv", name), data)
        return {name: len(data)}

    def abort(self) -> None:
        self.rows = []


CSV_FORMAT = OutputFormat(
    name="captions-csv",
    help="a CSV of uri, caption, image magic per part",
    folder="csv",
    files="csv",
    needs_image_bytes=True,
    open=CaptionsCsv,
)


def test_a_format_added_to_the_table_runs_end_to_end(tiny, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(formats.FORMATS, CSV_FORMAT.name, CSV_FORMAT)
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i in range(5):
        (src / f"p{i}.jpg").write_bytes(image_bytes((40 + 4 * i, 36), "JPEG", i))
    options = dict(captioner=tiny["blip"], embedder=tiny["clip"], batch_size=4,
                   max_caption_tokens=4, shard_size=3, no_index=True)  # fmt: skip
    run = vlpipe.run(src, out, output_format="captions-csv", **options)
    assert run.last.ok and run.last.written == 5

    # the worker fed the writer every row with its source bytes; one CSV beside each part
    rows = run.table(columns=["uri", "caption"]).to_pylist()
    files = sorted((out / "csv").iterdir())
    assert len(files) == len(list((out / "parts").iterdir())) >= 2
    got = [r for f in files for r in csv.reader(f.read_text().splitlines())]
    assert sorted(got) == sorted([r["uri"], r["caption"], "ffd8ff"] for r in rows)  # JPEG
    # the done markers name the files; resume clears one that no marker names
    (out / "csv" / "part-stray.csv").write_text("left by a killed run")
    again = vlpipe.run(src, out, output_format="captions-csv", **options)
    assert again.last.processed == 0 and again.last.already_done == 5
    assert sorted((out / "csv").iterdir()) == files
