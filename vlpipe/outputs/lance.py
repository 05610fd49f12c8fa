"""Lance output (`--output-format lance`): one Lance dataset per run, beside the Parquet parts.

Why: Lance is the columnar format LanceDB reads directly (random access, vector search,
versions): `lancedb.connect("OUT/lance").open_table("images")` or `lance.dataset(
"OUT/lance/images.lance")`. Written per part, like every output, so resume stays exactly-once:
a worker writes its part's table as one Lance fragment (a data file under images.lance/data/)
and the fragment's metadata to lance/fragments/<part>.json, which the part's done marker names;
at the end of the run the driver commits every fragment the markers name as one new version of
the dataset. A part a kill interrupted is in no marker, so it is never committed, and resume
removes its metadata file. The Parquet parts stay the source of truth (resume, index, search).
"""

from __future__ import annotations

import json
import posixpath

import pyarrow as pa

from vlpipe.errors import VlpipeError
from vlpipe.outputs.base import OutputFormat, PartWriter
from vlpipe.rundir import RunDir, write_atomic

FOLDER = "lance"
FRAGMENTS = posixpath.join(FOLDER, "fragments")
#: the dataset, a LanceDB table named "images" in the database OUT/lance
DATASET = posixpath.join(FOLDER, "images.lance")
#: URL schemes Lance writes to itself (fsspec's memory:// and others it does not know)
SCHEMES = ("s3://", "gs://", "az://", "file://")


class LanceWriter(PartWriter):
    def __init__(self, run: RunDir, key: str):
        self.run = run

    def close(self, part: str, table: pa.Table) -> dict[str, int]:
        from lance.fragment import write_fragments

        fragments = write_fragments(table, dataset_uri(self.run), schema=table.schema)
        body = {
            "schema": table.schema.serialize().to_pybytes().hex(),
            "fragments": [f.to_json() for f in fragments],
        }
        name = f"{part}.json"
        size = write_atomic(self.run.fs, self.run.join(FRAGMENTS, name), json.dumps(body).encode())
        return {name: size}

    def abort(self) -> None:
        """Nothing is final before close; a data file written by a failed close is in no
        metadata file, so no commit ever names it."""


def dataset_uri(run: RunDir) -> str:
    return run.url(DATASET)


def commit(run: RunDir, markers: list[dict]) -> str | None:
    """Every fragment the markers name, as one new version (an overwrite of the fragment list:
    a rerun commits the whole run again, never a fragment twice)."""
    import lance
    from lance.fragment import FragmentMetadata

    names = sorted(n for m in markers for n in m.get(FOLDER, {}))
    if not names:
        return None
    schema, fragments, skipped = None, [], 0
    for name in names:
        with run.fs.open(run.join(FRAGMENTS, name), "rb") as f:
            body = json.load(f)
        part_schema = pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(body["schema"])))
        if schema is None:
            schema = part_schema
        if not part_schema.equals(schema):
            skipped += 1  # a source column typed differently in this part
            continue
        fragments += [FragmentMetadata.from_json(json.dumps(j)) for j in body["fragments"]]
    uri = dataset_uri(run)
    try:
        version = lance.dataset(uri).version
    except (ValueError, OSError):  # no dataset yet
        version = None
    ds = lance.LanceDataset.commit(uri, lance.LanceOperation.Overwrite(schema, fragments),
                                   read_version=version)  # fmt: skip
    line = f"lance: {ds.count_rows()} rows in {uri} (version {ds.version})"
    if skipped:
        line += f"; {skipped} parts left out: their source columns have other types"
    return line


def check(output: str) -> None:
    if "://" in output and not output.startswith(SCHEMES):
        raise VlpipeError(
            f"--output-format lance writes to a local path or"
            f" {', '.join(SCHEMES[:3])}, not {output}"
        )
    try:
        import lance  # noqa: F401
    except ImportError:
        raise VlpipeError(
            "--output-format lance needs the pylance package: pip install 'vlpipe[lance]'"
        ) from None


LANCE = OutputFormat(
    name="lance",
    help="also one Lance dataset (OUT/lance/images.lance; LanceDB table 'images' in OUT/lance)",
    folder=FOLDER,
    files=FRAGMENTS,
    open=LanceWriter,
    commit=commit,
    check=check,
)
