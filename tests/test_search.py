"""Search end to end: real photos embedded with a tiny real CLIP, a real index, the real CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.helpers.paths import EXAMPLES, REPO
from tests.helpers.runs import embedder_record, make_run
from vlpipe.cli import main
from vlpipe.errors import VlpipeError
from vlpipe.search.searcher import Searcher

N_PHOTOS = 16


@pytest.fixture(autouse=True)
def _faiss_threads(one_faiss_thread):
    """One FAISS thread in every test here (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from bench.hf_tiny import build_tiny_clip, build_tiny_siglip

    root = tmp_path_factory.mktemp("models")
    return {"clip": build_tiny_clip(root / "clip"), "siglip": build_tiny_siglip(root / "siglip")}


def index_photos(embedder_name: str, out, n_photos: int = N_PHOTOS) -> dict:
    """A run dir over n_photos example photos (one human caption each), indexed."""
    from vlpipe.models.registry import load_embedder

    embedder = load_embedder(embedder_name, device="cpu")
    captions = {}
    with open(EXAMPLES.parent / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            captions.setdefault(row["image"], row["caption"])
    names = sorted(captions)[:n_photos]
    photos = [EXAMPLES / n for n in names]
    pixels = torch.stack([embedder.preprocess(Image.open(p).convert("RGB")) for p in photos])
    vectors = embedder.embed_images(pixels)
    uris = [str(p) for p in photos]
    caps = [captions[n] for n in names]
    make_run(out, vectors, uris=uris, captions=caps, part_rows=n_photos // 2,
             embedder=embedder_record(embedder_name, embedder), index=True)  # fmt: skip
    stored = vectors.astype(np.float16).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    return {
        "out": str(out),
        "uris": uris,
        "captions": caps,
        "vectors": stored,
        "embedder": embedder,
    }


@pytest.fixture(scope="module")
def indexed(models, tmp_path_factory):
    return index_photos(models["clip"], tmp_path_factory.mktemp("search") / "out")


@pytest.fixture(scope="module")
def mini_indexed(tmp_path_factory):
    """The same photos embedded by the shipped vlpipe-mini."""
    torch.set_num_threads(2)
    return index_photos("mini", tmp_path_factory.mktemp("search-mini") / "out", n_photos=8)


def test_an_image_query_returns_its_own_image_first(indexed):
    searcher = Searcher.open(indexed["out"], device="cpu")
    queries = [Image.open(indexed["uris"][i]) for i in (0, 5, 11)]
    results = searcher.search_image(queries, k=3)
    for i, hits in zip((0, 5, 11), results, strict=True):
        assert hits[0].uri == indexed["uris"][i]
        assert hits[0].caption == indexed["captions"][i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert [h.rank for h in hits] == [1, 2, 3]
        assert hits[0].score >= hits[1].score >= hits[2].score


def test_text_search_equals_brute_force_and_loads_only_the_text_tower(indexed):
    searcher = Searcher.open(indexed["out"], device="cpu")
    texts = ["a dog running on the grass", "two children playing", "a man on a bike"]
    results = searcher.search_text(texts, k=5)
    assert searcher._embedder.loaded_towers == ["text"]
    q = searcher._embedder.embed_texts(texts)
    scores = q @ indexed["vectors"].T
    for row, hits in zip(scores, results, strict=True):
        order = np.argsort(-row)[:5]
        assert [h.uri for h in hits] == [indexed["uris"][i] for i in order]
        np.testing.assert_allclose([h.score for h in hits], row[order], atol=1e-5)


def test_another_embedder_is_refused(indexed, models):
    with pytest.raises(VlpipeError, match="embeds differently") as err:
        Searcher.open(indexed["out"], embedder=models["siglip"], device="cpu")
    assert "\n" not in str(err.value)
    # the index's own embedder named explicitly (same weights, same space) is fine
    assert Searcher.open(indexed["out"], embedder=models["clip"], device="cpu").size == N_PHOTOS


def test_empty_queries_are_refused(indexed):
    searcher = Searcher.open(indexed["out"], device="cpu")
    for queries in ([""], ["  "], [], ["ok", ""]):
        with pytest.raises(VlpipeError, match="empty query"):
            searcher.search_text(queries)


# ---- CLI ----


def cli(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def test_cli_search_in_a_fresh_process_prints_json_and_never_imports_beam(indexed):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["-X", "importtime", "-m", "vlpipe", "search", "a dog", "--index", indexed["out"]]
    proc = subprocess.run(
        [sys.executable, *args, "-k", "3", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line]
    assert "faiss" in imported and "torch" in imported
    assert not [m for m in imported if m.startswith("apache_beam")]
    hits = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert {h["query"] for h in hits} == {"a dog"} and {h["query_type"] for h in hits} == {"text"}
    assert all(h["uri"] in indexed["uris"] and h["caption"] for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_cli_table_for_text_image_and_query_file(indexed, tmp_path):
    result = cli("search", "children playing", "--index", indexed["out"], "-k", "4")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["rank", "score", "uri", "caption"] and len(lines) == 5
    assert lines[1].split()[0] == "1" and lines[1].split()[2] in indexed["uris"]

    photo = indexed["uris"][3]
    result = cli("search", "--image", photo, "--index", indexed["out"], "-k", "2")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].split()[2] == photo

    queries = tmp_path / "queries.txt"
    queries.write_text("a dog\n\n  a red car  \n")
    result = cli("search", "--queries", str(queries), "--index", indexed["out"], "-k", "2")
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("query:")] == [
        "query: a dog",
        "query: a red car",
    ]
    result = cli("search", "--queries", "-", "--index", indexed["out"], "--json", input="cat\n")
    assert {json.loads(line)["query"] for line in result.output.splitlines()} == {"cat"}
    # k above the index size returns what the index holds
    result = cli("search", "x", "--index", indexed["out"], "-k", "1000", "--json")
    assert len(result.output.splitlines()) == N_PHOTOS


def test_cli_refusals_are_one_line(indexed, models, tmp_path):
    out = indexed["out"]
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not an image")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    meta = json.loads((broken / "index" / "meta.json").read_text())
    (broken / "index" / meta["files"]["index"]).write_bytes(b"\x00" * 64)
    cases = {
        "empty query": ["search", "", "--index", out],
        "-k must be between 1 and 1000, got 0": ["search", "dog", "--index", out, "-k", "0"],
        "-k must be between 1 and 1000, got 1001": ["search", "dog", "--index", out, "-k", "1001"],
        "give exactly one of QUERY, --image or --queries (got QUERY and --image)": [
            "search",
            "dog",
            "--image",
            str(text_file),
            "--index",
            out,
        ],
        "give exactly one of QUERY, --image or --queries": ["search", "--index", out],
        "cannot read image": ["search", "--image", str(text_file), "--index", out],
        "No such file": ["search", "--image", str(tmp_path / "nope.jpg"), "--index", out],
        "no queries in": ["search", "--queries", str(empty), "--index", out],
        "no index at": ["search", "dog", "--index", str(tmp_path / "missing")],
        "corrupt or missing index file": ["search", "dog", "--index", str(broken)],
        "embeds differently": ["search", "dog", "--index", out, "--embedder", models["siglip"]],
    }
    for expected, args in cases.items():
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, result.output)
        assert "Traceback" not in result.output


def test_cli_index_builds_then_reports_up_to_date(tmp_path):
    run = make_run(tmp_path / "out", 600, dim=16, part_rows=300)
    result = cli("index", run.path, "--kind", "flat", "-q")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("built flat (Flat) over 600 vectors")
    result = cli("index", run.path, "-q")
    assert result.output.startswith("index up to date: flat")
    result = cli("index", run.path, "--kind", "hnsw", "-q", "--memory-budget", "1GB")
    assert "rebuilt: kind flat -> hnsw" in result.output and "recall@10" in result.output
    result = cli("index", str(tmp_path / "nope"))
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        f"Error: no run directory at {tmp_path / 'nope'}"
    ]
    result = cli("index", run.path, "--memory-budget", "lots")
    assert result.exit_code == 1 and "bad memory budget 'lots'" in result.output


def test_opening_an_index_imports_neither_torch_nor_beam(indexed):
    """torch arrives with the embedder on the first text or image query, Beam never."""
    code = (
        "import sys; from vlpipe.search.searcher import Searcher; import vlpipe.cli.search;"
        f"s = Searcher.open({indexed['out']!r}); s.search_vectors(s._index.reconstruct(0), 3);"
        "print(sorted(m for m in ('torch', 'transformers', 'apache_beam') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_mini_text_search_in_a_fresh_process_needs_neither_torch_nor_transformers(mini_indexed):
    """vlpipe-mini's text queries run on its NumPy text path: a cold search skips torch."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vlpipe", "search", "a dog runs on the grass",
         "--index", mini_indexed["out"], "-k", "8", "--json"],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "faiss" in imported and "tokenizers" in imported
    assert not imported & {"torch", "transformers", "apache_beam"}
    hits = [json.loads(line) for line in proc.stdout.splitlines()]
    # the same ranking as brute force over the stored vectors with the torch text tower
    query = mini_indexed["embedder"].embed_texts(["a dog runs on the grass"])[0]
    scores = mini_indexed["vectors"] @ query
    expected = [mini_indexed["uris"][i] for i in np.argsort(-scores)]
    assert [h["uri"] for h in hits] == expected
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(scores)[::-1], atol=2e-3)


def test_mini_numpy_text_path_equals_the_torch_text_tower(mini_indexed):
    from vlpipe.models.mini import SHIPPED_DIR
    from vlpipe.models.mini.text_query import MiniTextQueries

    texts = ["a dog runs on the grass", "TWO children, in a fountain!", "x", "sofa " * 300]
    numpy_path = MiniTextQueries(SHIPPED_DIR)
    torch_path = mini_indexed["embedder"]
    assert numpy_path.fingerprint() == torch_path.fingerprint()
    np.testing.assert_allclose(
        numpy_path.embed_texts(texts), torch_path.embed_texts(texts), atol=1e-5
    )
