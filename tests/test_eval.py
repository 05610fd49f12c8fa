"""`evaluate_run` and `vlpipe eval` on real run directories embedded with a tiny real CLIP."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.helpers.runs import embedder_record, make_run
from vlpipe.cli import main
from vlpipe.eval.evaluate import KEYS, evaluate_run
from vlpipe.eval.metrics import caption_scores, retrieval_recalls
from vlpipe.rundir import RunDir

WORDS = "dog cat red blue runs sits grass snow ball man woman child water beach".split()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from bench.hf_tiny import build_tiny_clip
    from vlpipe.models.registry import load_embedder

    path = build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
    return str(path), load_embedder(str(path), device="cpu")


def _caption(i: int, variant: int) -> str:
    """Caption A (variant 0) of image i has 3 + i words, caption B 13 + i: every caption has its
    own length, which keeps them apart even for a tokenizer that knows none of the words."""
    rng = np.random.default_rng(1000 * variant + i)
    return "a " + " ".join(rng.choice(WORDS, size=2 + i + 10 * variant))


@pytest.fixture(scope="module")
def labelled_run(clip, tmp_path_factory):
    """10 images with 2 reference captions each (A and B) and 2 images without references.

    Each image's stored vector is the embedding of its caption A, and its generated caption is
    caption A, so the true answers are known without trusting the tiny model's quality.
    """
    name, embedder = clip
    root = tmp_path_factory.mktemp("eval")
    refs = {f"img{i:02d}.jpg": [_caption(i, 0), _caption(i, 1)] for i in range(10)}
    extra = {"not-in-run.jpg": ["a dog runs on the grass"]}
    with open(root / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for image, captions in (refs | extra).items():
            writer.writerows([image, c] for c in captions)
    names = list(refs) + ["unlabelled-0.jpg", "unlabelled-1.jpg"]
    first = embedder.embed_texts([refs[n][0] if n in refs else "a cat" for n in names])
    # uris as sources give them: nested folders, a WebDataset tar member, a '#' in a file name
    uris = [f"/data/set/sub{i % 3}/{n}" for i, n in enumerate(names)]
    uris[5] = f"/data/shards/00001.tar#{names[5]}"
    uris[6] = f"s3://bucket/odd#dir/{names[6]}"
    captions = [refs.get(n, ["a cat"])[0] for n in names]
    out = root / "out"
    make_run(out, first[::-1], uris=uris[::-1], captions=captions[::-1], part_rows=6,
             embedder=embedder_record(name, embedder), dtype="float32", success=True)  # fmt: skip
    return out, root / "captions.csv", refs


def test_evaluate_run_on_known_answers(labelled_run, clip):
    out, captions_csv, refs = labelled_run
    scores = evaluate_run(str(out), str(captions_csv), device="cpu")
    assert list(scores) == list(KEYS)
    assert (scores["n_images"], scores["n_queries"], scores["n_unmatched"]) == (10, 20, 2)
    # Every caption A finds its own image first (its stored vector IS that caption's embedding),
    # and every image finds its caption A first.
    embedder = clip[1]
    a = embedder.embed_texts([c[0] for c in refs.values()])
    assert len({tuple(np.round(v, 5)) for v in a}) == 10, (
        "the tiny CLIP gives different captions the same vector: nothing can be tested with it"
    )
    assert scores["t2i_r1"] >= 0.5
    assert scores["i2t_r1"] == 1.0
    # Generated captions equal one reference each: BLEU-4 is exactly 1 (brevity penalty 1, every
    # n-gram matched); CIDEr-D is the reference scorer's value on the same tokens.
    assert scores["bleu4"] == pytest.approx(1.0)
    assert scores["cider"] == pytest.approx(
        caption_scores({n: c[0] for n, c in refs.items()}, refs)["cider"]
    )
    # Recalls equal the metric on the same vectors, built here independently of evaluate_run.
    texts = [c for captions in refs.values() for c in captions]
    query_image = np.repeat(np.arange(10), 2)
    expected = retrieval_recalls(embedder.embed_texts(texts), a, query_image)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value)


def test_eval_cli_json_and_table(labelled_run):
    out, captions_csv, _ = labelled_run
    result = CliRunner().invoke(main, ["eval", str(out), "--captions", str(captions_csv), "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    scores = json.loads(lines[0])
    assert set(scores) == set(KEYS) and scores["n_images"] == 10
    table = CliRunner().invoke(main, ["eval", str(out), "--captions", str(captions_csv)])
    assert table.exit_code == 0, table.output
    assert "R@10" in table.stdout and "CIDEr" in table.stdout
    assert f"{scores['t2i_r1']:.3f}" in table.stdout and f"{scores['cider']:.3f}" in table.stdout


def test_eval_float16_run_matches_float32(labelled_run, clip, tmp_path):
    """The pipeline stores float16 vectors; they are re-normalised and score the same here."""
    out, captions_csv, _ = labelled_run
    run = RunDir(str(out))
    rows = [r for b in run.iter_batches(["uri", "caption", "embedding"]) for r in b.to_pylist()]
    half = tmp_path / "half"
    make_run(half, np.array([r["embedding"] for r in rows]), uris=[r["uri"] for r in rows],
             captions=[r["caption"] for r in rows], part_rows=(len(rows) + 1) // 2,
             embedder=embedder_record(*clip), dtype="float16", success=True)  # fmt: skip
    got = evaluate_run(str(half), str(captions_csv), device="cpu")
    want = evaluate_run(str(out), str(captions_csv), device="cpu")
    assert got["i2t_r1"] == want["i2t_r1"] and got["bleu4"] == want["bleu4"]
    assert got["n_images"] == want["n_images"]


def _eval_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, ["eval", *args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_eval_errors_are_one_line(labelled_run, tmp_path):
    out, captions_csv, _ = labelled_run
    assert "no manifest.json" in _eval_error([str(tmp_path), "--captions", str(captions_csv)])
    assert "not found" in _eval_error([str(out), "--captions", str(tmp_path / "missing.csv")])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,text\nimg00.jpg,a dog\n")
    assert "'image' and 'caption' columns" in _eval_error([str(out), "--captions", str(bad)])
    other = tmp_path / "other.csv"
    other.write_text("image,caption\nelsewhere.jpg,a dog\n")
    assert "no image of" in _eval_error([str(out), "--captions", str(other)])


def test_eval_with_flickr_references(clip, flickr, tmp_path):
    """The real Flickr8k captions.csv (quoted captions with commas, 5 per image) matched by file
    name to a run over 6 dev images; the rest of the CSV is ignored."""
    from tests.helpers.paths import flickr_split

    name, embedder = clip
    with open(flickr / "captions.csv", newline="") as f:
        refs: dict[str, list[str]] = {}
        for row in csv.DictReader(f):
            refs.setdefault(row["image"], []).append(row["caption"])
    images = flickr_split(flickr, "dev", limit=6)
    vectors = embedder.embed_texts([refs[n][0] for n in images])
    out = tmp_path / "out"
    make_run(out, vectors, uris=[str(flickr / "images" / n) for n in images],
             captions=[refs[n][0] for n in images], part_rows=3,
             embedder=embedder_record(name, embedder), dtype="float32", success=True)  # fmt: skip
    scores = evaluate_run(str(out), str(flickr / "captions.csv"), device="cpu")
    assert scores["n_images"] == 6 and scores["n_unmatched"] == 0
    assert scores["n_queries"] == sum(len(refs[n]) for n in images)
    assert scores["bleu4"] == pytest.approx(1.0)  # each generated caption is a reference
