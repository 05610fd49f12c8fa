"""Which rows of a run a curated subset keeps: every `--where` rule holds, and with `--dedup`
only one row per near-duplicate cluster (its representative, or where a rule drops that, the
first member that passes).

It streams: parts are read batch by batch (only the columns asked for), and the dedup clusters
(OUT/dedup/clusters.parquet, one row per run row in the dedup state's part order) are read in
lockstep with them, so memory holds a batch and the ids of clusters whose representative a rule
dropped, never the run.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.errors import VlpipeError
from vlpipe.images.quality import COLUMNS as SIGNALS
from vlpipe.rundir import CLUSTERS, DEDUP, PARTS, RunDir
from vlpipe.search.where import Where, parse_where, tokenize
from vlpipe.search.where_rows import run_schema

BATCH_ROWS = 8192
_ROW = "__vlpipe_row"
DEDUP_COLUMNS = ["image_id", "cluster_id", "is_representative", "cluster_size"]


@dataclass
class Selection:
    """What the rules and dedup did, counted as the rows stream by."""

    rules: list[Where]
    seen: int = 0
    kept: int = 0
    failing: list[int] = field(default_factory=list)  # rows each rule fails, alone
    removed: list[int] = field(default_factory=list)  # rows each rule removed, rules in order
    duplicates: int = 0  # rows passing every rule, dropped as another row's duplicate

    def __post_init__(self):
        self.failing = [0] * len(self.rules)
        self.removed = [0] * len(self.rules)


def check_rules(run: RunDir, texts: list[str], parts: list[str]) -> tuple[list[Where], pa.Schema]:
    """Each --where parsed against the run's columns; one line for an unknown column, and for a
    quality signal an older run does not have."""
    schema = run_schema(run, parts)
    rules = []
    for text in texts:
        for token in tokenize(text):
            if token.kind == "name" and token.text in SIGNALS and token.text not in schema.names:
                raise VlpipeError(
                    f"{run.path} has no {token.text!r} column: it was made before vlpipe computed"
                    " quality signals; run it again (vlpipe run --overwrite) to filter on them"
                )
        rules.append(parse_where(text, schema))
    return rules, schema


def evaluate(table: pa.Table, where: Where) -> np.ndarray:
    """The rows of `table` the rule keeps (a null comparison keeps nothing, as in SQL)."""
    numbered = table.append_column(_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    try:
        kept = numbered.filter(where.expression).column(_ROW)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise VlpipeError(
            f"bad filter {where.text!r}: {' '.join(str(exc).split())[:200]}"
        ) from None
    mask = np.zeros(table.num_rows, bool)
    mask[kept.to_numpy()] = True
    return mask


def part_order(run: RunDir, dedup: bool) -> list[str]:
    """Part paths in the order the rows are streamed: the dedup state's order with --dedup (its
    clusters.parquet rows follow it), else sorted."""
    names = sorted(posixpath.basename(p) for p in run.parts())
    if not names:
        raise VlpipeError(f"{run.path} has no result parts to curate")
    if dedup:
        state = json.loads(run.fs.cat_file(run.join(DEDUP, "state", "state.json")))
        ordered = [name for name, _ in state["parts"]]
        if sorted(ordered) != names:
            raise VlpipeError(f"{run.path}: the dedup output is older than the parts; run dedup")
        names = ordered
    return [run.join(PARTS, n) for n in names]


def _batches(run: RunDir, parts: list[str], columns: list[str], schema: pa.Schema):
    for path in parts:
        for batch in run.iter_part_batches(path, columns, BATCH_ROWS):
            table = pa.Table.from_batches([batch])
            for name in columns:  # a column older parts lack is null there
                if name not in table.column_names:
                    f = schema.field(name)
                    table = table.append_column(f, pa.nulls(table.num_rows, f.type))
            yield table


def _clusters(run: RunDir) -> Iterator[pa.RecordBatch]:
    pf = pq.ParquetFile(run.fs.open(run.join(CLUSTERS), "rb"))
    yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=DEDUP_COLUMNS)


class _Lockstep:
    """clusters.parquet rows, taken n at a time in step with the parts' batches."""

    def __init__(self, run: RunDir):
        self.batches = _clusters(run)
        self.pending: pa.Table = pa.table({c: [] for c in DEDUP_COLUMNS})

    def take(self, n: int) -> pa.Table:
        while self.pending.num_rows < n:
            batch = next(self.batches, None)
            if batch is None:
                raise VlpipeError("the dedup output has fewer rows than the parts; run dedup")
            self.pending = pa.concat_tables(
                [self.pending.cast(batch.schema), pa.Table.from_batches([batch])]
            )
        head, self.pending = self.pending.slice(0, n), self.pending.slice(n)
        return head


def _passes(table: pa.Table, rules: list[Where]) -> list[np.ndarray]:
    return [evaluate(table, rule) for rule in rules]


def orphan_clusters(run: RunDir, parts, rules, schema) -> set[str]:
    """Clusters (of two or more rows) whose representative a rule drops: their first member
    that passes is kept instead. One pass over the rules' columns only."""
    if not rules:
        return set()
    columns = sorted({c for r in rules for c in r.columns} | {"image_id"})
    lockstep, out = _Lockstep(run), set()
    for table in _batches(run, parts, columns, schema):
        clusters = lockstep.take(table.num_rows)
        ok = np.logical_and.reduce(_passes(table, rules))
        rep = clusters.column("is_representative").to_numpy(zero_copy_only=False)
        big = clusters.column("cluster_size").to_numpy(zero_copy_only=False) > 1
        lost = np.flatnonzero(rep & big & ~ok)
        out.update(clusters.column("cluster_id").take(pa.array(lost)).to_pylist())
    return out


def select(
    run: RunDir, parts: list[str], rules: list[Where], schema: pa.Schema, columns: list[str],
    dedup: bool,
) -> Iterator[tuple[pa.Table, pa.Table, Selection]]:  # fmt: skip
    """(batch of every row, the rows kept, counts so far) for each batch, in part order."""
    selection = Selection(rules)
    orphans = orphan_clusters(run, parts, rules, schema) if dedup else set()
    lockstep = _Lockstep(run) if dedup else None
    taken: set[str] = set()  # orphan clusters whose stand-in is already kept
    wanted = sorted(set(columns) | {c for r in rules for c in r.columns})
    for table in _batches(run, parts, wanted, schema):
        passes = _passes(table, rules)
        keep = np.ones(table.num_rows, bool)
        for i, ok in enumerate(passes):
            selection.failing[i] += int((~ok).sum())
            selection.removed[i] += int((keep & ~ok).sum())
            keep &= ok
        if lockstep is not None:
            keep = _one_per_cluster(lockstep.take(table.num_rows), keep, orphans, taken, selection)
        selection.seen += table.num_rows
        selection.kept += int(keep.sum())
        yield table, table.filter(pa.array(keep)), selection


def _one_per_cluster(clusters: pa.Table, keep, orphans, taken, selection) -> np.ndarray:
    rep = clusters.column("is_representative").to_numpy(zero_copy_only=False)
    cluster = clusters.column("cluster_id").to_pylist()
    out = keep & rep
    for i in np.flatnonzero(keep & ~rep):
        if cluster[i] in orphans and cluster[i] not in taken:
            taken.add(cluster[i])
            out[i] = True
    selection.duplicates += int((keep & ~out).sum())
    return out
