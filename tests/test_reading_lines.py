"""Line-oriented manifests (JSON lines, CSV) cut into byte ranges that workers read alone."""

from __future__ import annotations

import json

import pytest

from vlpipe.reading.plan import plan
from vlpipe.reading.records import spec_records
from vlpipe.reading.specs import KIND_MANIFEST


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_line_manifests_split_into_byte_ranges_that_tile_every_row(tmp_path, fmt):
    rows = [(f"/photos/{i:05d} img.jpg", f"caption {i}" if i % 3 else "") for i in range(3000)]
    rows[1234] = ("", "no uri on this row")
    path = tmp_path / f"m.{fmt}"
    with path.open("w", newline="") as f:
        if fmt == "csv":
            f.write("uri,caption\n")
            f.writelines(f"{u},{t}\n" for u, t in rows)
        else:
            f.writelines(json.dumps({"uri": u, "caption": t}) + "\n" for u, t in rows)
    specs = list(plan(str(path), 100))
    assert len(specs) >= 10 and all(s.kind == KIND_MANIFEST and s.stop > s.start for s in specs)
    assert [s.start for s in specs[1:]] == [s.stop for s in specs[:-1]]  # ranges tile the file
    records = [r for s in specs for r in spec_records(s)]
    assert [r.uri for r in records if not r.failure] == [u for u, _ in rows if u]
    assert [r.text for r in records if not r.failure] == [t or None for u, t in rows if u]
    [missing] = [r for r in records if r.failure]
    assert missing.failure[0] == "missing-uri" and "no uri" in missing.failure[1]


def test_a_csv_with_quotes_is_read_whole_by_one_worker(tmp_path):
    path = tmp_path / "m.csv"
    lines = [f'/p/{i}.jpg,"a caption, with a comma\nand a newline {i}"\n' for i in range(2000)]
    path.write_text("uri,caption\n" + "".join(lines))
    [spec] = plan(str(path), 10)
    records = list(spec_records(spec))
    assert len(records) == 2000 and records[7].text == "a caption, with a comma\nand a newline 7"
