"""`vlpipe curate`: a real run (tiny random CLIP) of photos made to fail or pass quality rules,
curated to a Parquet manifest that `vlpipe run` reads again and to WebDataset shards read back
with `webdataset`; the report in headless Chromium; bad input in one line with nothing written."""

from __future__ import annotations

import csv
import json
import os
import shutil
from html import escape
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

from tests.helpers.paths import EXAMPLES, REPO
from tests.helpers.reliability import config, tiny  # noqa: F401 - session fixture
from vlpipe.api import run_and_index as run
from vlpipe.cli import main
from vlpipe.curate.formats import ParquetManifest
from vlpipe.curate.run import curate
from vlpipe.dedup.run import DedupOptions, dedup
from vlpipe.errors import VlpipeError

SHARP = "sharpness >= 100"
LIT = "brightness > 0.2"


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):  # noqa: F811
    """A manifest run over photos: 4 good, a blurred, a dark, an exact copy of a good one."""
    root = tmp_path_factory.mktemp("curate")
    images = root / "images"
    images.mkdir()
    photos = sorted(EXAMPLES.glob("*.jpg"))[:4]
    names = {}
    for i, p in enumerate(photos):
        shutil.copy(p, images / f"good{i}.jpg")
        names[f"good{i}.jpg"] = "good"
    with Image.open(photos[0]) as im:
        im.convert("RGB").filter(ImageFilter.GaussianBlur(4)).save(images / "blurred.jpg")
        Image.eval(im.convert("RGB"), lambda v: v // 6).save(images / "dark.jpg")
    shutil.copy(photos[1], images / "copy-of-good1.jpg")
    names.update({"blurred.jpg": "blurred", "dark.jpg": "dark", "copy-of-good1.jpg": "copy"})
    manifest = root / "input.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "text", "license"])
        for name, kind in names.items():
            w.writerow([f"images/{name}", f"a {kind} photo", f"cc-{kind}"])
    out = root / "out"
    assert run(config(tiny, manifest, out, captioner="none", build_index=False)).ok
    return root, out


def test_parquet_manifest_is_run_again_by_vlpipe(tiny, made, tmp_path):  # noqa: F811
    root, out = made
    sub = tmp_path / "subset"
    # a random tiny model's embeddings all look alike: cluster by hashes (curate then uses it)
    dedup(str(out), DedupOptions(method="phash", full=True))
    s = curate(str(out), str(sub), [SHARP, LIT], dedup=True)
    assert s["rows"] == 7 and s["written"] == 4
    # blurred and dark fail the first rule (dark the second too), the exact copy is a duplicate;
    # dark and blurred copies of good0 share its cluster: where a rule drops its representative,
    # the member that passes stands in
    assert s["removed_by_rule"] == [2, 0] and s["failing_each_rule"] == [2, 1]
    assert s["duplicates"] == 1
    table = pq.read_table(sub / "manifest.parquet")
    assert table.column_names == ["url", "caption", "license"]
    kept = sorted(Path(u).name for u in table.column("url").to_pylist())
    one_of_pair = {"good1.jpg", "copy-of-good1.jpg"} & set(kept)
    assert len(one_of_pair) == 1  # the exact copy and its original: one of them
    assert [k for k in kept if k not in one_of_pair] == ["good0.jpg", "good2.jpg", "good3.jpg"]
    kind = {n: "copy" if n.startswith("copy") else "good" for n in kept}
    urls, captions = table.column("url").to_pylist(), table.column("caption").to_pylist()
    got = {Path(u).name: c for u, c in zip(urls, captions, strict=True)}
    assert got == {n: f"a {kind[n]} photo" for n in kept}
    again = tmp_path / "again"
    assert run(config(tiny, sub / "manifest.parquet", again, captioner="none")).ok
    rows = pq.read_table(again / "parts").to_pylist()
    assert sorted(Path(r["uri"]).name for r in rows) == kept
    for r in rows:  # the source's text and columns came through the subset
        name = Path(r["uri"]).name
        assert r["text"] == f"a {kind[name]} photo" and r["license"] == f"cc-{kind[name]}"
    assert min(r["sharpness"] for r in rows) >= 100


def test_parquet_manifest_row_groups_hold_shard_size_rows(tmp_path):
    """Kept rows arrive a batch at a time (a part's batch, often small); the manifest's row
    groups still hold --shard-size rows each, the last one the rest, in order."""
    writer = ParquetManifest(fsspec.filesystem("file"), str(tmp_path), 4, ["license"])
    uris = [f"/photos/{i}.jpg" for i in range(9)]
    at = 0
    for n in (3, 3, 0, 1, 2):
        batch = uris[at : at + n]
        at += n
        strings = {c: pa.array(v, pa.string()) for c, v in (
            ("uri", batch), ("text", [None] * n), ("caption", [f"c {u}" for u in batch]),
            ("license", ["cc0"] * n))}  # fmt: skip
        writer.add(pa.table(strings))
    assert writer.close() == [str(tmp_path / "manifest.parquet")]
    meta = pq.ParquetFile(tmp_path / "manifest.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4, 4, 1]
    table = pq.read_table(tmp_path / "manifest.parquet")
    assert table.column("url").to_pylist() == uris
    assert table.column("caption").to_pylist() == [f"c {u}" for u in uris]


def test_webdataset_subset_reads_back_with_webdataset(made, tmp_path):
    webdataset = pytest.importorskip("webdataset", reason="needs webdataset (vlpipe[test])")
    root, out = made
    sub = tmp_path / "wds"
    s = curate(str(out), str(sub), [SHARP], fmt="webdataset", shard_size=2)
    assert s["written"] == 5 and s["files"] == ["00000.tar", "00001.tar", "00002.tar"]
    parts = {r["image_id"]: r for r in pq.read_table(out / "parts").to_pylist()}
    seen = []
    tars = [str(t) for t in sorted(sub.glob("*.tar"))]
    for sample in webdataset.WebDataset(tars, shardshuffle=False):
        row = parts[sample["__key__"]]
        assert sample["jpg"] == Path(row["uri"]).read_bytes()
        meta = json.loads(sample["json"])
        assert meta["sharpness"] >= 100 and meta["license"] == row["license"]
        assert np.allclose(np.load(__import__("io").BytesIO(sample["npy"])), row["embedding"],
                           atol=1e-3)  # fmt: skip
        seen.append(Path(row["uri"]).name)
    assert "blurred.jpg" not in seen and "dark.jpg" not in seen and len(seen) == 5


def test_report_counts_histograms_and_cut_thumbnails(made, tmp_path):
    _, out = made
    sub = tmp_path / "r"
    curate(str(out), str(sub), [SHARP, LIT])
    html = (sub / "report.html").read_text()
    assert f"--where {escape(SHARP)}" in html and 'class="cut"' in html
    for signal in ("sharpness", "brightness", "entropy", "border"):
        assert f'data-column="{signal}"' in html
    near = html.split('<section class="near" data-column="sharpness">')[1].split("</section>")[0]
    below = near.split('data-side="below"')[1].split('data-side="above"')[0]
    assert "blurred.jpg" in below and "dark.jpg" in below and "good" not in below
    assert below.count("data:image/jpeg;base64,") == 2
    assert "http://" not in html and "https://" not in html and "<script" not in html


def test_report_renders_in_chromium(made, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("needs Debian's chromium package")
    _, out = made
    sub = tmp_path / "c"
    curate(str(out), str(sub), [SHARP, LIT])
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto((sub / "report.html").as_uri())
            page.wait_for_load_state("load")
            loaded = page.evaluate("() => [...document.images].map(i => i.naturalWidth > 0)")
            assert loaded and all(loaded)
            hist = page.locator('figure.hist[data-column="sharpness"]')
            assert hist.locator("rect.bar").count() == 40
            cut = hist.locator("line.cut")
            assert cut.count() == 1 and cut.bounding_box()["height"] > 50
            assert page.locator('tr[data-rule="1"] td.n').text_content() == "2"
            (REPO / "test-artifacts").mkdir(exist_ok=True)
            page.screenshot(path=str(REPO / "test-artifacts" / "curate-report.png"), full_page=True)
        finally:
            browser.close()


def test_bad_input_is_one_line_and_writes_nothing(made, tmp_path):
    _, out = made
    cases = [
        (["--where", "sharpnes > 3"], "unknown column 'sharpnes' (did you mean sharpness?)"),
        (["--where", "sharpness > 'x'"], "bad filter"),
        (["--format", "lance"], "Invalid value for '--format'"),
        (["--shard-size", "0"], "--shard-size must be at least 1"),
    ]
    for args, message in cases:
        sub = tmp_path / f"s{abs(hash(message))}"
        result = CliRunner().invoke(main, ["curate", str(out), "--to", str(sub), *args])
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output and not sub.exists()
    missing = CliRunner().invoke(main, ["curate", str(tmp_path / "nope"), "--to", str(tmp_path)])
    assert missing.exit_code == 1 and "no run directory" in missing.output


def test_a_subset_is_not_overwritten_without_overwrite(made, tmp_path):
    _, out = made
    sub = tmp_path / "twice"
    args = ["curate", str(out), "--to", str(sub), "--where", SHARP]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = (sub / "manifest.parquet").read_bytes()
    again = CliRunner().invoke(main, [*args[:-2], "--where", LIT])
    assert again.exit_code == 1 and "already holds a subset" in again.output
    assert (sub / "manifest.parquet").read_bytes() == before
    third = CliRunner().invoke(main, [*args, "--format", "webdataset", "--overwrite"])
    assert third.exit_code == 0, third.output
    assert not (sub / "manifest.parquet").exists() and list(sub.glob("*.tar"))


def test_an_older_run_without_signals_is_named_in_one_line(made, tmp_path):
    _, out = made
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for part in (old / "parts").glob("*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.drop_columns(["sharpness", "brightness", "entropy"]), part)
    with pytest.raises(VlpipeError, match="has no 'sharpness' column: it was made before"):
        curate(str(old), str(tmp_path / "sub"), [SHARP])
    assert not (tmp_path / "sub").exists()
    # a rule on columns it has still works
    s = curate(str(old), str(tmp_path / "sub2"), ["license = 'cc-good'"])
    assert s["written"] == 4
