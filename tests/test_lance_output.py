"""`--output-format lance`: one Lance dataset per run, read back with the real `lance` and
`lancedb` packages, exactly once across resumed runs; and the output-format table itself."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from tests.helpers.images import image_bytes
from tests.helpers.reliability import config, read_output, tiny  # noqa: F401 - session fixture
from vlpipe.api import run_and_index as run
from vlpipe.cli import main
from vlpipe.errors import VlpipeError
from vlpipe.outputs import formats
from vlpipe.outputs.base import OutputFormat, PartWriter

lance = pytest.importorskip("lance", reason="needs pylance (pip install 'vlpipe[lance]')")


def _photos(folder, n: int, first: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(first, first + n):
        path = folder / f"p{i:02d}.jpg"
        path.write_bytes(image_bytes((50 + i, 40 + i), "JPEG", i))
        out.append(str(path))
    return out


def _dataset(out):
    return lance.dataset(str(out / "lance" / "images.lance"))


def test_lance_dataset_holds_every_row_once_and_lancedb_searches_it(tiny, tmp_path):  # noqa: F811
    lancedb = pytest.importorskip("lancedb")
    src, out = tmp_path / "src", tmp_path / "out"
    _photos(src, 7)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    summary = run(config(tiny, src, out, output_format="lance", shard_size=3))
    assert summary.ok and summary.written == 7 and summary.failed == 1
    rows, _ = read_output(str(out))
    table = _dataset(out).to_table()
    assert sorted(table.column("image_id").to_pylist()) == sorted(r["image_id"] for r in rows)
    by_id = {r["image_id"]: r for r in rows}
    for row in table.to_pylist():  # the same columns and values as the Parquet parts
        assert row["caption"] == by_id[row["image_id"]]["caption"]
        assert np.allclose(row["embedding"], by_id[row["image_id"]]["embedding"])
    parts = len(list((out / "parts").glob("*.parquet")))
    assert len(list((out / "lance" / "fragments").glob("*.json"))) == parts > 1
    db = lancedb.connect(str(out / "lance"))
    images = db.open_table("images")
    assert images.count_rows() == 7
    query = np.asarray(rows[3]["embedding"], dtype=np.float32)
    hit = images.search(query).metric("cosine").limit(1).to_list()[0]
    assert hit["image_id"] == rows[3]["image_id"]


def test_lance_resume_adds_new_parts_once_and_drops_leftovers(tiny, tmp_path):  # noqa: F811
    src, out = tmp_path / "src", tmp_path / "out"
    _photos(src, 4)
    assert run(config(tiny, src, out, output_format="lance", shard_size=2)).ok
    first = _dataset(out).version
    # a part an interrupted spec wrote: its metadata is in no done marker
    stray = out / "lance" / "fragments" / "part-interrupted.json"
    stray.write_text(json.dumps({"schema": "", "fragments": []}))
    _photos(src, 3, first=4)
    summary = run(config(tiny, src, out, output_format="lance", shard_size=2))
    assert summary.ok and summary.written == 7
    ds = _dataset(out)
    ids = ds.to_table(columns=["image_id"]).column("image_id")
    assert len(ids) == 7 == len(pc.unique(ids))  # every row once, none twice
    assert ds.version > first and not stray.exists()
    again = run(config(tiny, src, out, output_format="lance", shard_size=2))  # nothing to do
    assert again.processed == 0 and _dataset(out).count_rows() == 7


def test_lance_output_is_refused_where_lance_cannot_write(tiny):  # noqa: F811
    with pytest.raises(VlpipeError, match="lance writes to a local path"):
        config(tiny, "memory://src", "memory://out", output_format="lance").validate()
    result = CliRunner().invoke(main, ["run", "src", "-o", "o", "--output-format", "orc"])
    assert result.exit_code != 0 and "parquet" in result.output and "lance" in result.output


class _Listing(PartWriter):
    """A toy format: the image ids of each part, one per line."""

    def __init__(self, run_dir, key: str):
        self.run_dir, self.ids = run_dir, []

    def add(self, row: dict, image: bytes | None) -> None:
        assert image is not None  # asked for with needs_image_bytes
        self.ids.append(row["image_id"])

    def close(self, part: str, table) -> dict[str, int]:
        data = "\n".join(self.ids).encode()
        with self.run_dir.fs.open(self.run_dir.join("ids", f"{part}.txt"), "wb") as f:
            f.write(data)
        return {f"{part}.txt": len(data)}

    def abort(self) -> None:
        self.ids = []


def test_a_new_format_is_one_table_entry(tiny, tmp_path, monkeypatch):  # noqa: F811
    """The writer interface carries a format end to end: the worker feeds it, the done marker
    names its files, and resume removes its files that no marker names."""
    listing = OutputFormat("ids", "image ids per part", "ids", "ids", True, _Listing)
    monkeypatch.setitem(formats.FORMATS, "ids", listing)
    src, out = tmp_path / "src", tmp_path / "out"
    _photos(src, 5)
    (out / "ids").mkdir(parents=True)
    (out / "ids" / "left-over.txt").write_text("x")
    summary = run(config(tiny, src, out, output_format="ids", shard_size=2))
    assert summary.ok
    rows, _ = read_output(str(out))
    listed = [line for p in (out / "ids").glob("*.txt") for line in p.read_text().split()]
    assert sorted(listed) == sorted(r["image_id"] for r in rows)
    assert not (out / "ids" / "left-over.txt").exists()
    markers = [json.loads(p.read_text()) for p in (out / "_done").glob("*.json")]
    assert sum(len(m["ids"]) for m in markers) == len(list((out / "ids").glob("*.txt")))
