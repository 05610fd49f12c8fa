"""Build or update a run's FAISS index from its Parquet parts.

Vectors stream from the parts batch by batch (Arrow buffers to NumPy, never Python objects per
row), are re-normalised, deduplicated by image_id and added to the index (vlpipe.index.adder);
the id map keeps image_id, uri and caption per index row, and where the row is in the parts
(part file and row), so search reads a hit's columns, embedding or thumbnail without a scan.
Approximate kinds are trained on a sample and their search knob tuned to recall@10 >= 0.95
against exact search (vlpipe.index.tune).

Incremental: meta.json lists the parts already indexed. A later call adds only new parts' vectors
(every kind here accepts `add`), and rebuilds from scratch when it must: another embedder, a part
gone, a size that calls for another kind, IVF lists that the corpus has outgrown, or an id map
of an older vlpipe that does not record locations or has no keyword index beside it.
Every generation also gets a keyword index (BM25 over caption + alt text, vlpipe.index.keyword),
rebuilt from the whole id map each time: it has no incremental add.
`kind="auto"` keeps a kind the user chose explicitly before (pass rebuild=True to choose again).
"""

from __future__ import annotations

import logging
import posixpath
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from vlpipe.errors import VlpipeError
from vlpipe.index.adder import Adder, valid_vectors
from vlpipe.index.select import KINDS, IndexPlan, parse_memory, plan_index
from vlpipe.index.store import (
    FORMAT_VERSION,
    IDMAP_COLUMNS,
    LOCATION_COLUMNS,
    TEXT_COLUMN,
    IndexDir,
    captions_only,
    captions_only_error,
)
from vlpipe.rundir import PARTS, RunDir
from vlpipe.version import __version__

__all__ = ["build_index"]

log = logging.getLogger(__name__)

BATCH_ROWS = 16384  # x 256-d float32 = 16 MB per batch: small transient copies
RETRAIN_GROWTH = 4  # IVF lists are retrained once the corpus is 4x what they were trained on


def build_index(
    run_dir: str,
    kind: str = "auto",
    memory_budget: str | int | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> dict:
    """Index the run at `run_dir` into `run_dir/index/`; returns the index's meta.json content.

    `memory_budget` bounds the index's size ('4GB'; default half the physical memory).
    The returned dict's `last_action` says what happened: built, added or up-to-date.
    """
    if kind not in KINDS:
        raise VlpipeError(f"unknown index kind {kind!r}: use one of {', '.join(KINDS)}")
    run = RunDir(run_dir)
    embedder = _run_embedder(run, run_dir)
    store = IndexDir.of_run(run.fs, run.root)
    parts = [posixpath.basename(p) for p in run.parts()]
    budget = parse_memory(memory_budget)
    job = _Job(run, store, embedder, parts, kind, budget, progress)
    meta = None if rebuild else _previous(store)
    if meta is not None:
        reason = job.update_or_reason(meta)
        if isinstance(reason, dict):
            return reason
    else:
        reason = "requested" if rebuild else "no index yet"
    return job.build(reason)


def _run_embedder(run: RunDir, run_dir: str) -> dict:
    manifest = run.require_manifest()
    if captions_only(manifest):
        raise captions_only_error(run_dir)
    try:
        embedder = dict(manifest["models"]["embedder"])
        embedder["dim"] = int(embedder["dim"])
        embedder["fp16"] = manifest.get("embedding_dtype", "float16") == "float16"
        embedder["fingerprint"]  # noqa: B018 - required
    except (KeyError, TypeError, ValueError):
        raise VlpipeError(f"manifest.json in {run_dir} does not record the embedder") from None
    return embedder


def _previous(store: IndexDir) -> dict | None:
    try:
        return store.read_meta()
    except VlpipeError as exc:
        log.warning("%s; rebuilding the index", exc)
        return None


class _Job:
    """One build_index call: its inputs and the two ways it can go (full build, update)."""

    def __init__(self, run, store, embedder, parts, kind, budget, progress):
        self.run, self.store, self.embedder = run, store, embedder
        self.parts, self.kind, self.budget, self.progress = parts, kind, budget, progress
        self.dim, self.fp16 = embedder["dim"], embedder["fp16"]
        self.with_thumbnails: set[str] = set()  # parts (of those counted) with stored thumbnails
        self.with_text: set[str] = set()  # parts (of those counted) with an alt text column

    # ---- full build ----------------------------------------------------------------------------

    def build(self, reason: str) -> dict:
        start = time.perf_counter()
        counts = self._row_counts(self.parts)
        total = sum(counts.values())
        if total == 0:
            raise VlpipeError(f"no embeddings to index in {self.run.path} (no readable parts)")
        plan = plan_index(total, self.dim, self.kind, self.budget, self.fp16)
        log.info("building %s (%s) over up to %d vectors", plan.kind, plan.factory, total)
        import faiss

        index = faiss.index_factory(self.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
        gt = None
        if plan.needs_tuning:
            from vlpipe.index.tune import ExactTopK, make_queries, query_count

            nq = query_count(total)
            sample = self._sample(counts, plan.train_size + nq)
            # tuning queries come from vectors the index was not trained on: IVF lists fit their
            # training vectors, so queries made from them would overstate recall (~0.01 at 1M)
            order = np.random.default_rng(1).permutation(len(sample))
            _train(index, plan, sample[order[nq:]])
            gt = ExactTopK(make_queries(sample[order[:nq]]))
        locate = True  # where each row is: filters, columns and thumbnails read only the hits
        adder = Adder(index, gt, ids=None, dim=self.dim, locate=locate)
        done = self._add_parts(adder, list(counts), total)
        meta = {
            "vlpipe_version": __version__,
            "built": _now(),
            "embedder": {k: v for k, v in self.embedder.items() if k != "fp16"},
            "dim": self.dim,
            "metric": "inner_product",
            "normalized": True,
            "kind": plan.kind,
            "requested_kind": self.kind,
            "factory": plan.factory,
            "params": plan.params,
            "memory_budget": self.budget,
            "estimated_bytes": plan.estimated_bytes,
            "trained_count": total if plan.needs_training else 0,
            "parts": done,
            "locations": locate,
        }
        action = {"action": "built", "reason": reason}
        return self._finish(adder, meta, plan.kind, action, start, "build_seconds")

    # ---- incremental update --------------------------------------------------------------------

    def update_or_reason(self, meta: dict) -> dict | str:
        """The updated meta when an in-place add is possible, else why a rebuild is needed."""
        if meta.get("format") != FORMAT_VERSION:
            return "index format changed"
        if meta["embedder"].get("fingerprint") != self.embedder["fingerprint"]:
            return "the run's embedder changed"
        indexed = set(meta["parts"])
        gone = sorted(indexed - set(self.parts))
        if gone:
            return f"{len(gone)} indexed part(s) no longer in the run ({gone[0]}...)"
        kind = self.kind
        if kind == "auto" and meta.get("requested_kind", "auto") != "auto":
            kind = self.kind = meta["requested_kind"]  # keep the kind the user chose
        if kind not in ("auto", meta["kind"]):
            return f"kind {meta['kind']} -> {kind}"
        missing = [
            f for f in meta["files"].values() if not self.store.fs.exists(self.store.join(f))
        ]
        if missing:
            return f"index file {missing[0]} is missing"
        new = [p for p in self.parts if p not in indexed]
        if not new:
            return {**meta, "last_action": {"action": "up-to-date"}}
        counts = self._row_counts(new)
        total = meta["count"] + sum(counts.values())
        target = plan_index(total, self.dim, kind, self.budget, self.fp16)
        if target.kind != meta["kind"]:
            return f"{total} vectors call for {target.kind}, not {meta['kind']}"
        if target.is_ivf and total > RETRAIN_GROWTH * meta["trained_count"]:
            return f"IVF lists trained on {meta['trained_count']} vectors, the run now has {total}"
        if not meta.get("locations"):
            return "the id map of an older index does not record where each row is"
        if not meta["files"].get("keyword"):
            return "the index predates keyword search: its id map lacks the rows' alt texts"
        return self._add_new(meta, counts)

    def _add_new(self, meta: dict, counts: dict[str, int]) -> dict | str:
        from vlpipe.index.tune import ExactTopK

        start = time.perf_counter()
        locate = bool(meta.get("locations"))
        columns = IDMAP_COLUMNS + LOCATION_COLUMNS if locate else IDMAP_COLUMNS
        columns = columns + [TEXT_COLUMN]  # an index with a keyword index has it
        try:
            index = self.store.read_index(meta)
            idmap = self.store.read_idmap(meta, columns)
            tuning = self.store.read_tuning(meta)
        except (VlpipeError, OSError, ValueError) as exc:
            return f"the index on disk is unreadable ({exc})"
        gt = ExactTopK(tuning["queries"], state=tuning) if tuning is not None else None
        ids = idmap.column("image_id")
        adder = Adder(index, gt, ids=ids, dim=self.dim, idmap=idmap, locate=locate)
        done = self._add_parts(adder, list(counts), sum(counts.values()))
        action = {"action": "added", "parts": len(done)}
        if adder.added == 0 and not done:  # only corrupt parts: nothing to write
            return {**meta, "last_action": {**action, **adder.report(self.run.corrupt)}}
        meta = {**meta, "parts": meta["parts"] + done}
        return self._finish(adder, meta, meta["kind"], action, start, "update_seconds")

    # ---- shared steps --------------------------------------------------------------------------

    def _finish(self, adder, meta, kind, action, start, timer) -> dict:
        if adder.index.ntotal == 0:
            raise VlpipeError(f"no valid embeddings to index in {self.run.path}")
        tuning_state = None
        meta["count"] = int(adder.index.ntotal)
        if adder.gt is not None:
            from vlpipe.index.tune import TARGET_RECALL, tune

            tuning_state = adder.gt.state()
            meta.update(tune(adder.index, kind, tuning_state, meta["params"].get("nlist")))
            if meta["recall_at_10_lower_bound"] < TARGET_RECALL:
                log.warning(
                    "index recall@10 is %.3f, below %.2f at its largest setting: a larger "
                    "--memory-budget allows a better index",
                    meta["recall_at_10"],
                    TARGET_RECALL,
                )
        else:
            meta.update(
                {
                    "search_params": {},
                    "recall_at_10": 1.0,
                    "recall_at_10_lower_bound": 1.0,
                    "tuning_queries": 0,
                }
            )
        from vlpipe.index.keyword import KeywordIndex

        idmap = adder.idmap()
        keyword = KeywordIndex.build(idmap)  # every row, in id map order: doc id = row
        meta[timer] = round(time.perf_counter() - start, 3)
        meta["updated"] = _now()
        meta["last_action"] = {**action, **adder.report(self.run.corrupt)}
        return self.store.write(adder.index, idmap, tuning_state, meta, keyword)

    def _row_counts(self, names: list[str]) -> dict[str, int]:
        """Rows per readable part, from Parquet footers (corrupt parts are left out)."""
        counts = {}
        for name in names:
            pf = self.run.open_part(self.run.join(PARTS, name))
            if pf is not None:
                self._check_dim(pf.schema_arrow, name)
                counts[name] = pf.metadata.num_rows
                if TEXT_COLUMN in pf.schema_arrow.names:
                    self.with_text.add(name)
                if "thumbnail" in pf.schema_arrow.names:
                    self.with_thumbnails.add(name)
        return counts

    def _check_dim(self, schema: pa.Schema, name: str) -> None:
        if "embedding" not in schema.names:
            raise VlpipeError(f"part {name} has no embedding column")
        if pa.types.is_null(schema.field("embedding").type):  # a manifest that did not say so
            raise captions_only_error(self.run.path)
        size = getattr(schema.field("embedding").type, "list_size", None)
        if size != self.dim:
            raise VlpipeError(
                f"part {name} holds embeddings of dimension {size}, the manifest's embedder "
                f"has {self.dim}"
            )

    def _batches(self, name: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """Record batches of one part; a part that is or turns out corrupt is noted in
        `run.corrupt` and logged by RunDir, not fatal (its earlier batches are still yielded)."""
        return self.run.iter_part_batches(self.run.join(PARTS, name), columns, BATCH_ROWS)

    def _sample(self, counts: dict[str, int], size: int) -> np.ndarray:
        """`size` vectors drawn uniformly from the parts (one pass over the embedding column)."""
        total = sum(counts.values())
        chosen = np.sort(np.random.default_rng(0).choice(total, min(size, total), replace=False))
        picked, offset = [], 0
        for name, rows in counts.items():
            local = chosen[(chosen >= offset) & (chosen < offset + rows)] - offset
            offset += rows
            start = 0
            for batch in self._batches(name, ["embedding"]) if len(local) else ():
                vectors, valid = valid_vectors(batch.column(0), self.dim)
                take = local[(local >= start) & (local < start + len(vectors))] - start
                picked.append(vectors[take[valid[take]]])
                start += len(vectors)
        if not picked:
            raise VlpipeError(f"no readable embeddings in {self.run.path}")
        return np.concatenate(picked)

    def _add_parts(self, adder: Adder, names: list[str], total: int) -> list[str]:
        """Stream `names` into the index; returns the parts read whole."""
        from tqdm import tqdm

        done = []
        bar = tqdm(
            total=total, unit="vec", desc="indexing", disable=not self.progress, file=sys.stderr
        )
        with bar:
            for name in names:
                corrupt_before = len(self.run.corrupt)
                row = 0  # of the part: batches come in file order
                text = [TEXT_COLUMN] if name in self.with_text else []
                for batch in self._batches(name, ["embedding", *IDMAP_COLUMNS, *text]):
                    adder.add(batch, name, row)
                    bar.update(batch.num_rows)
                    row += batch.num_rows
                if len(self.run.corrupt) == corrupt_before:
                    done.append(name)
        return done


def _train(index, plan: IndexPlan, sample: np.ndarray) -> None:
    import faiss

    if plan.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = plan.params["efConstruction"]
    if index.is_trained:
        return
    sample = np.ascontiguousarray(sample[: plan.train_size], dtype=np.float32)
    faiss.normalize_L2(sample)
    ivf = faiss.extract_index_ivf(index) if plan.is_ivf else None
    if ivf is not None:
        # faiss's default is 25: on 200k vectors / 2048 lists, 10 gave the same recall@10 at
        # every nprobe in 2.4x less time
        ivf.cp.niter = 10
        # exact assignment while k-means runs; the HNSW quantizer is filled afterwards
        exact = faiss.IndexFlatIP(ivf.d)
        ivf.clustering_index = exact
    log.info("training %s on %d vectors", plan.factory, len(sample))
    index.train(sample)
    if ivf is not None:
        ivf.clustering_index = None  # `exact` is freed on return: leave no dangling pointer


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
