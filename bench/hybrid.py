"""Hybrid keyword + vector search: is the fused ranking as good as the vector one, and does it find
what only the words say?

1. Recall: `vlpipe run` with vlpipe-mini over the 1,000 Flickr8k dev images (a manifest of their
   paths, no alt text: each image's only words are its own generated caption, so the keyword side
   never sees the human captions it is queried with), then `vlpipe index` as the run does it. Each
   of the 5,000 dev captions queries `Searcher.search_text` in each mode; R@K is the fraction of
   queries whose own image is among the first K hits. Goal: hybrid's R@1 and R@10 at least
   vector's (else the default mode is vector). The vector figures are checked against the eval
   protocol (vlpipe.eval.metrics.retrieval_recalls on the same embeddings).
2. Words only the alt text holds: the same images through a manifest with a `text` column, 10 of
   them (1%) given an alt text naming a made-up product ("Zorblax ..."); for the queries in
   PRODUCT_QUERIES, how many of the 10 each mode returns in its top 10.

    python -m bench.hybrid [--quick]
    python -m bench.hybrid --smoke   # 8 of examples/images and their captions, nothing published

Skips (exit 0, one line) where the Flickr8k copy at ../shared/datasets/flickr8k is absent.
"""

from __future__ import annotations

import argparse
import csv
import os
import posixpath
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, SCRATCH, Figure, Report, result_name
from bench.mini_lowres import EXAMPLES, sample_names

NAME = "hybrid"
TITLE = "Hybrid search: Flickr8k dev text-to-image recall by mode, and words only the alt text has"
FLICKR = REPO.parent / "shared" / "datasets" / "flickr8k"
ROOT = SCRATCH / NAME
MODES = ("vector", "keyword", "hybrid")
KS = (1, 10)
PRODUCT = "Zorblax"
TAGGED_EVERY = 100  # 1% of the rows get an alt text naming the product
PRODUCT_ITEMS = ("desk lamp", "travel mug", "backpack", "sneakers", "water bottle", "headphones",
                 "camping stove", "umbrella", "phone case", "wall clock")  # fmt: skip
PRODUCT_QUERIES = ("zorblax", "a zorblax on a table")


def dev_names(limit: int | None) -> list[str]:
    """Dev image names in file order (as tests/conftest.py `flickr_split` reads them)."""
    names = []
    for line in (FLICKR / "splits.csv").read_text().splitlines()[1:]:
        name, split = line.rsplit(",", 1)
        if split == "dev":
            names.append(name)
    return names[:limit] if limit else names


def references(data: Path, names: list[str]) -> dict[str, list[str]]:
    """Each image's reference captions, from data/captions.csv."""
    refs: dict[str, list[str]] = {n: [] for n in names}
    with open(data / "captions.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["image"] in refs:
                refs[row["image"]].append(row["caption"])
    return refs


def write_manifest(path: Path, uris: list[str], names: list[str], tagged: dict | None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"uri": uris}
    if tagged is not None:
        columns["text"] = [tagged.get(n) for n in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def vlpipe_run(manifest: Path, out: Path) -> dict:
    """`vlpipe run` (captions and embeddings with vlpipe-mini, then the index), timed."""
    argv = [sys.executable, "-m", "vlpipe", "run", str(manifest), "--output", str(out),
            "--captioner", "mini", "--embedder", "mini", "--device", "cpu", "--overwrite",
            "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"vlpipe run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return {"command": "python -m vlpipe run " + " ".join(argv[4:]), "seconds": round(seconds, 1)}


def ranks(results: list[list], targets: list[str]) -> list[int | None]:
    """1-based rank of each query's own image among its hits (None: not returned)."""
    out = []
    for hits, target in zip(results, targets, strict=True):
        names = [posixpath.basename(h.uri) for h in hits]
        out.append(names.index(target) + 1 if target in names else None)
    return out


def recall_table(searcher, out: Path, names: list[str], refs: dict[str, list[str]]) -> dict:
    queries = [c for n in names for c in refs[n]]
    targets = [n for n in names for _ in refs[n]]
    table = {}
    for mode in MODES:
        start = time.perf_counter()
        results = searcher.search_text(queries, k=max(KS), mode=mode)
        seconds = time.perf_counter() - start
        found = ranks(results, targets)
        table[mode] = {f"r{k}": sum(r is not None and r <= k for r in found) / len(found)
                       for k in KS}  # fmt: skip
        table[mode] |= {
            "ms_per_query": round(1000 * seconds / len(queries), 3),
            "queries_with_no_hit": sum(not hits for hits in results),
        }
        if mode == "hybrid":
            table[mode]["found_by_top1"] = _count(h[0].found_by for h in results if h)
        print(f"{mode}: {table[mode]}", flush=True)
    table["queries"] = len(queries)
    table["eval_protocol_vector"] = _eval_protocol(out, queries, targets, refs)
    return table


def _eval_protocol(out: Path, queries, targets, refs) -> dict:
    """Vector R@K as `vlpipe eval` computes it (every similarity, ties against the query), from
    the run's stored embeddings."""
    import numpy as np

    from vlpipe.eval.evaluate import embed_texts, read_run
    from vlpipe.eval.metrics import retrieval_recalls
    from vlpipe.models.base import l2_normalize
    from vlpipe.models.registry import load_embedder
    from vlpipe.rundir import RunDir

    names, _, vectors, _ = read_run(RunDir(str(out)), refs)
    text = embed_texts(load_embedder("mini", device="cpu"), queries)
    index = {n: i for i, n in enumerate(names)}
    got = retrieval_recalls(l2_normalize(text), l2_normalize(vectors),
                            np.array([index[t] for t in targets]), ks=KS)  # fmt: skip
    return {f"r{k}": round(got[f"t2i_r{k}"], 4) for k in KS}


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def product_table(searcher, tagged: dict[str, str]) -> dict:
    table = {}
    for query in PRODUCT_QUERIES:
        table[query] = {}
        for mode in MODES:
            hits = searcher.search_text([query], k=10, mode=mode)[0]
            found = [h for h in hits if posixpath.basename(h.uri) in tagged]
            table[query][mode] = {
                "found_in_top10": len(found),
                "hits": len(hits),
                "ranks": [h.rank for h in found],
                "found_by": _count(h.found_by for h in found),
            }
        hits = searcher.search_text([query], k=20, mode="hybrid")[0]
        table[query]["hybrid_top20"] = sum(posixpath.basename(h.uri) in tagged for h in hits)
        print(f"{query!r}: {table[query]}", flush=True)
    return table


def run(args) -> dict:
    from vlpipe.search.searcher import Searcher

    report = Report(result_name(NAME, args.smoke), TITLE)
    data, root = (EXAMPLES, SCRATCH / f"{NAME}-smoke") if args.smoke else (FLICKR, ROOT)
    names = sample_names(args.images) if args.smoke else dev_names(args.images)
    refs = references(data, names)
    if args.smoke:  # one query per image: the same code paths, a fifth of the searches
        refs = {n: r[:1] for n, r in refs.items()}
    uris = [str(data / "images" / n) for n in names]
    plain = write_manifest(root / "dev.parquet", uris, names, None)
    tagged = {n: f"{PRODUCT} {item}"
              for n, item in zip(names[::TAGGED_EVERY], PRODUCT_ITEMS, strict=False)}  # fmt: skip
    with_alt = write_manifest(root / "dev-alt.parquet", uris, names, tagged)

    runs = {"plain": vlpipe_run(plain, root / "out-plain")}
    searcher = Searcher.open(str(root / "out-plain"))
    runs["plain"]["keyword_index"] = searcher.meta.get("keyword")
    recall = recall_table(searcher, root / "out-plain", names, refs)
    runs["alt"] = vlpipe_run(with_alt, root / "out-alt")
    alt = Searcher.open(str(root / "out-alt"))
    runs["alt"]["keyword_index"] = alt.meta.get("keyword")
    product = product_table(alt, tagged)

    vec, hyb, key = recall["vector"], recall["hybrid"], recall["keyword"]
    for k in KS:
        report.add(Figure(f"text-to-image R@{k}, hybrid vs vector", hyb[f"r{k}"], vec[f"r{k}"],
                          "vector", goal=1.0, note="5,000 dev captions as queries"))  # fmt: skip
    for k in KS:
        report.add(Figure(f"text-to-image R@{k}, keyword vs vector", key[f"r{k}"],
                          vec[f"r{k}"], "vector"))  # fmt: skip
    for query in PRODUCT_QUERIES:
        report.add(Figure(f"alt-text product images in the top 10 for {query!r}, hybrid",
                          product[query]["hybrid"]["found_in_top10"], len(tagged),
                          f"all {len(tagged)} tagged images"))  # fmt: skip
    keep = all(hyb[f"r{k}"] >= vec[f"r{k}"] for k in KS)
    report.details = {
        "images": len(names),
        "tagged": tagged,
        "runs": runs,
        "recall": recall,
        "product": product,
        "hybrid_not_worse": keep,
        "verdict": "hybrid stays the default" if keep else "vector is to be the default",
    }
    print(f"verdict: {report.details['verdict']}")
    return report.finish()


def markdown(result: dict) -> str:
    d = result["details"]
    r = d["recall"]
    verdict = (
        "Hybrid is not worse than vector: it is the default mode where an index has keywords."
        if d["hybrid_not_worse"]
        else "Hybrid is below vector on R@1 or R@10, so vector stays the default mode"
        ' (`Searcher.search_text(..., mode="hybrid")` asks for it).'
    )
    lines = [
        f"{d['images']:,} Flickr8k dev images through `vlpipe run` (vlpipe-mini captions and"
        f" embeddings, then its index: FAISS + BM25 over caption and alt text), {r['queries']:,}"
        " dev captions as text queries; R@K = the query's own image among the first K hits."
        " The images have no alt text here: the keyword side matches the query against the"
        " generated caption only.",
        "",
        "| mode | R@1 | R@10 | ms per query | queries with no hit |",
        "|---|---|---|---|---|",
    ]
    for mode in MODES:
        m = r[mode]
        lines.append(f"| {mode} | {m['r1']:.3f} | {m['r10']:.3f} | {m['ms_per_query']} |"
                     f" {m['queries_with_no_hit']} |")  # fmt: skip
    e = r["eval_protocol_vector"]
    lines += [
        "",
        f"Vector, as `vlpipe eval` computes it on the same embeddings: R@1 {e['r1']:.3f}, R@10"
        f" {e['r10']:.3f}. Hybrid's first hits were found by"
        f" {', '.join(f'{k} {v:,}' for k, v in r['hybrid']['found_by_top1'].items())}."
        f" {verdict}",
        "",
        f"The same images with {len(d['tagged'])} (1%) given an alt text naming a made-up"
        f" product ({', '.join(repr(t) for t in list(d['tagged'].values())[:3])}, ...): how many"
        " of them each mode returns in its top 10.",
        "",
        "| query | vector | keyword | hybrid | hybrid, top 20 |",
        "|---|---|---|---|---|",
    ]
    for query, p in d["product"].items():
        lines.append(
            f"| {query} | {p['vector']['found_in_top10']} | {p['keyword']['found_in_top10']}"
            f" (of {p['keyword']['hits']} hits) | {p['hybrid']['found_in_top10']} (ranks"
            f" {', '.join(map(str, p['hybrid']['ranks'])) or '-'}) | {p['hybrid_top20']} |"
        )
    kw = d["runs"]["plain"].get("keyword_index") or {}
    lines += [
        "",
        f"Keyword index: {kw.get('documents'):,} documents, {kw.get('vocabulary')} words, built in"
        f" {kw.get('build_seconds')} s. `vlpipe run` (captions, embeddings, index) took"
        f" {d['runs']['plain']['seconds']} s and {d['runs']['alt']['seconds']} s.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hybrid", description=TITLE)
    parser.add_argument("--images", type=int, default=None, help="first N dev images (all)")
    parser.add_argument("--quick", action="store_true", help="the first 200 dev images")
    parser.add_argument("--smoke", action="store_true", help="8 of examples/images")
    args = parser.parse_args(argv)
    if args.quick:
        args.images = args.images or 200
    if args.smoke:
        args.images = 8
    elif not (FLICKR / "captions.csv").exists():
        print(f"bench.hybrid: skipped: needs the Flickr8k copy at {FLICKR} (absent here)")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shutil.rmtree(SCRATCH / f"{NAME}-smoke" if args.smoke else ROOT, ignore_errors=True)
    from bench.report import run_and_publish

    return run_and_publish(NAME, lambda: run(args), args.smoke)


if __name__ == "__main__":
    sys.exit(main())
