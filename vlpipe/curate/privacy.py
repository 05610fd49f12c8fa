"""What `vlpipe curate` says and does about privacy: how many kept rows hold a location or show
faces (the report and curate.json), and report thumbnails with the run's face boxes blurred.

The exported bytes themselves go through the WebDataset writer's export policy
(vlpipe.images.export), as `vlpipe run`'s do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlpipe.images.blur import blur_jpeg
from vlpipe.rundir import RunDir

LOCATION, FACES, BOXES = "exif_gps", "faces", "face_boxes"


class Counts:
    """Kept rows whose file holds a location, and kept rows with a face; None where the run
    has no such column (made before vlpipe read metadata, or without --detect-faces)."""

    def __init__(self, schema: pa.Schema):
        self.columns = [c for c in (LOCATION, FACES) if c in schema.names]
        self.totals = dict.fromkeys(self.columns, 0)

    def add(self, kept: pa.Table) -> None:
        if LOCATION in self.totals:
            self.totals[LOCATION] += _count(pc.equal(kept.column(LOCATION), True))
        if FACES in self.totals:
            self.totals[FACES] += _count(pc.greater(kept.column(FACES), 0))

    def summary(self) -> dict:
        return {"with_location": self.totals.get(LOCATION), "with_faces": self.totals.get(FACES)}


def _count(mask) -> int:
    return int(pc.sum(pc.cast(pc.fill_null(mask, False), pa.int64())).as_py() or 0)


def blurred_reader(
    run: RunDir, parts: list[str], uris: Iterable[str], read: Callable[[str, int], bytes]
) -> Callable[[str, int], bytes]:
    """`read(uri, px)` whose JPEGs have the run's face boxes of that uri blurred."""
    boxes = boxes_of(run, parts, set(uris))

    def blurred(uri: str, px: int) -> bytes:
        return blur_jpeg(read(uri, px), boxes.get(uri))

    return blurred


def boxes_of(run: RunDir, parts: list[str], uris: set[str]) -> dict[str, list]:
    """The face boxes of the rows with these uris (a few dozen: the report's thumbnails)."""
    out: dict[str, list] = {}
    if not uris:
        return out
    wanted = pa.array(sorted(uris), pa.string())
    for path in parts:
        with run.fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["uri", BOXES])
        table = table.filter(pc.is_in(table.column("uri"), value_set=wanted))
        for uri, boxes in zip(table.column("uri").to_pylist(), table.column(BOXES).to_pylist(),
                              strict=True):  # fmt: skip
            out[uri] = boxes or []
    return out
