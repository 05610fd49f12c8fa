"""`vlpipe dedup`: near-duplicate clusters of a real run (vlpipe-mini over real photos and
copies made from them), exact copies by sha256, the incremental run, the keep list, search
--dedup and the one-line errors."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from bench.dedup_set import make_copy, save
from tests.helpers.paths import EXAMPLES, REPO
from vlpipe.dedup.run import DedupOptions, dedup
from vlpipe.errors import VlpipeError

ORIGINALS = 14  # distinct example photos
COPIED = 3  # of which this many get copies
COPIES = ("jpeg", "resize", "grayscale", "tone", "overlay")
LATER = 4  # example photos added by a second run


def vlpipe(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "vlpipe", *args], cwd=REPO, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def photos() -> list[Path]:
    return sorted(EXAMPLES.glob("*.jpg"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A folder of example photos, copies of the first COPIED and one byte-for-byte copy under
    another name, run with the built-in model (real embeddings, real phash)."""
    root = tmp_path_factory.mktemp("dedup")
    src = root / "src"
    src.mkdir()
    rng = random.Random(0)
    group = {}
    for i, photo in enumerate(photos()[:ORIGINALS]):
        shutil.copy(photo, src / photo.name)
        group[photo.name] = photo.stem
        if i < COPIED:
            with Image.open(photo) as im:
                for t in COPIES:
                    image, how = make_copy(im, t, rng)
                    save(image, src / f"{photo.stem}__{t}.jpg", how)
                    group[f"{photo.stem}__{t}.jpg"] = photo.stem
    exact = photos()[5]
    shutil.copy(exact, src / "renamed_copy.jpg")
    group["renamed_copy.jpg"] = exact.stem
    out = root / "out"
    vlpipe("run", str(src), "--output", str(out), "--shard-size", "16", "--no-progress")
    return {"root": root, "src": src, "out": out, "group": group}


def clusters(out: Path) -> dict[str, dict]:
    """clusters.parquet by file name."""
    rows = pq.read_table(out / "dedup" / "clusters.parquet").to_pylist()
    parts = pq.read_table(out / "parts", columns=["image_id", "uri"]).to_pylist()
    name = {r["image_id"]: Path(r["uri"]).name for r in parts}
    return {name[r["image_id"]]: {**r, "cluster": name[r["cluster_id"]]} for r in rows}


def test_copies_are_found_and_distinct_photos_are_not_merged(corpus):
    summary = dedup(str(corpus["out"]))
    got = clusters(corpus["out"])
    assert set(got) == set(corpus["group"])  # every row accounted for
    for name, group in corpus["group"].items():
        same = {n for n, g in corpus["group"].items() if g == group}
        members = {n for n, r in got.items() if r["cluster_id"] == got[name]["cluster_id"]}
        assert members == same, (name, members)
    # the representative has the most pixels of its cluster, then the most bytes
    size = {p.name: (Image.open(p).size, p.stat().st_size) for p in corpus["src"].iterdir()}
    for name, r in got.items():
        (w, h), nbytes = size[name]
        (rw, rh), rbytes = size[r["cluster"]]
        assert (rw * rh, rbytes) >= (w * h, nbytes), name
        assert r["is_representative"] == (r["cluster"] == name)
        assert "__resize" not in r["cluster"]
    expected_dups = COPIED * len(COPIES) + 1
    assert summary["duplicates"] == expected_dups and summary["clusters"] == COPIED + 1
    assert summary["kept"] == summary["images"] - expected_dups
    assert sum(summary["histogram"]["counts"]) == summary["images"]


def test_exact_bytes_pair_by_sha256_under_any_method(corpus):
    dedup(str(corpus["out"]), DedupOptions(method="embedding", threshold=1.0, full=True))
    got = clusters(corpus["out"])
    original = photos()[5].name
    assert got["renamed_copy.jpg"]["cluster_id"] == got[original]["cluster_id"]
    assert {got["renamed_copy.jpg"]["method"], got[original]["method"]} == {"sha256"}
    # at cosine 1.0 nothing else pairs: every made copy stands alone
    assert all(r["cluster_size"] == 1 for n, r in got.items() if "__" in n)


def test_phash_method_misses_nothing_it_should_find(corpus):
    s = dedup(str(corpus["out"]), DedupOptions(method="phash", full=True))
    got = clusters(corpus["out"])
    for name in corpus["group"]:
        if "__" in name:
            original = name.split("__")[0] + ".jpg"
            assert got[name]["cluster_id"] == got[original]["cluster_id"], name
    assert s["histogram_of"] == "1 - phash bits/64" and s["by_method"]["embedding"] == 0


def test_incremental_run_compares_only_new_rows_and_equals_a_full_run(corpus, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(corpus["src"], src)
    vlpipe("run", str(src), "--output", str(out), "--shard-size", "16", "--no-progress")
    first = dedup(str(out))
    assert first["run"] == "first run" and first["queried"]["vectors"] == first["images"]
    added = photos()[ORIGINALS : ORIGINALS + LATER]
    for photo in added:
        shutil.copy(photo, src / photo.name)
    rng = random.Random(1)
    with Image.open(added[0]) as im:  # a copy of a new photo, and one of an old photo
        image, how = make_copy(im, "jpeg", rng)
        save(image, src / "new__jpeg.jpg", how)
    with Image.open(photos()[0]) as im:
        image, how = make_copy(im, "resize", rng)
        save(image, src / "old__resize.jpg", how)
    rerun = vlpipe("run", str(src), "--output", str(out), "--shard-size", "16", "--no-progress")
    # the run's summary says what the last dedup found, and that rows came since
    assert f"near-duplicates: {first['duplicates']} in {first['clusters']} clusters" in rerun.stdout
    assert f"{LATER + 2} rows since" in rerun.stdout
    second = dedup(str(out))
    new_rows = LATER + 2
    assert second["run"] == "incremental" and second["new_rows"] == new_rows
    assert second["queried"] == {"vectors": new_rows, "hashes": new_rows}
    incremental = {n: (r["cluster_id"], r["is_representative"]) for n, r in clusters(out).items()}
    full = dedup(str(out), DedupOptions(full=True))
    assert full["queried"]["vectors"] == first["images"] + new_rows
    assert {
        n: (r["cluster_id"], r["is_representative"]) for n, r in clusters(out).items()
    } == incremental
    got = clusters(out)
    assert got["new__jpeg.jpg"]["cluster_id"] == got[added[0].name]["cluster_id"]
    assert got["old__resize.jpg"]["cluster_id"] == got[photos()[0].name]["cluster_id"]
    assert got["new__jpeg.jpg"]["cluster_size"] == 2


def test_cli_keep_list_summary_and_search_collapse(corpus, tmp_path):
    out = corpus["out"]
    keep = tmp_path / "keep.txt"
    proc = vlpipe("dedup", str(out), "--keep-list", str(keep), "--full", "--no-report")
    assert f"{COPIED * len(COPIES) + 1} duplicates in {COPIED + 1} clusters" in proc.stdout
    kept = keep.read_text().split()
    reps = {r["cluster_id"] for r in clusters(out).values()}
    assert set(kept) == reps and len(kept) == len(corpus["group"]) - COPIED * len(COPIES) - 1
    # search: an original's own copies crowd its top hits; --dedup shows the cluster once
    query = str(corpus["src"] / photos()[0].name)
    plain = vlpipe("search", "--index", str(out), "--image", query, "-k", "4", "--json")
    collapsed = vlpipe(
        "search", "--index", str(out), "--image", query, "-k", "4", "--json", "--dedup"
    )
    import json

    plain_hits = [json.loads(x) for x in plain.stdout.splitlines()]
    hits = [json.loads(x) for x in collapsed.stdout.splitlines()]
    assert sum(photos()[0].stem in h["uri"] for h in plain_hits) >= 3
    rep = clusters(out)[photos()[0].name]["cluster_id"]
    assert hits[0]["image_id"] == rep and hits[0]["duplicates"] == len(COPIES)
    assert sum(photos()[0].stem in h["uri"] for h in hits) == 1 and len(hits) == 4
    assert len({h["image_id"] for h in hits}) == 4


def test_bad_input_is_one_line(corpus, tmp_path):
    for args, message in [
        (["dedup", str(corpus["out"]), "--threshold", "1.5"], "outside (0, 1]"),
        (["dedup", str(corpus["out"]), "--phash-distance", "40"], "outside 0..24"),
        (["dedup", str(tmp_path / "nothing")], "no run directory"),
    ]:
        proc = vlpipe(*args, check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    captions_only = tmp_path / "captions"
    vlpipe(
        "run",
        str(corpus["src"]),
        "--output",
        str(captions_only),
        "--embedder",
        "none",
        "--no-progress",
    )
    proc = vlpipe("dedup", str(captions_only), check=False)
    assert (
        proc.returncode == 1 and "no embeddings" in proc.stderr and "Traceback" not in proc.stderr
    )
    with pytest.raises(VlpipeError, match="no embeddings"):
        dedup(str(captions_only), DedupOptions(method="both"))
    assert dedup(str(captions_only), DedupOptions(method="phash"))["duplicates"] >= COPIED * 3
