"""RUN/dedup/report.html over a real pipeline run (built-in mini models) of real photos and
copies made of them: counts, histogram, thumbnails, placeholders, escaping, and the page as
headless Chromium renders it (screenshot in test-artifacts/dedup-report.png)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from html import unescape
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers.paths import REPO
from tests.helpers.runs import DEDUP_PHOTOS as N_PHOTOS
from tests.helpers.runs import make_dedup_run
from vlpipe.dedup.output import read_summary
from vlpipe.dedup.report import biggest_clusters, write_report
from vlpipe.rundir import CLUSTERS, RunDir

DATA_IMG = '<img src="data:image/jpeg;base64,'
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def dedup_run(tmp_path_factory):
    return make_dedup_run(tmp_path_factory.mktemp("dedup-report"))


@pytest.fixture(scope="module")
def report(dedup_run) -> tuple[Path, str]:
    out, _ = dedup_run
    path = write_report(str(out))
    return Path(path), Path(path).read_text("utf-8")


def _sections(html: str) -> list[str]:
    return re.findall(r'<section class="cluster".*?</section>', html, flags=re.S)


def _stat(html: str, name: str) -> str:
    return re.search(rf'data-stat="{name}"><dt>{name}</dt><dd>([^<]*)</dd>', html).group(1)


def test_report_shows_counts_histogram_and_the_clusters(dedup_run, report):
    out, expected = dedup_run
    path, html = report
    assert path == out / "dedup" / "report.html"
    assert _stat(html, "images") == str(N_PHOTOS + 4)
    assert _stat(html, "duplicates") == "4" and _stat(html, "kept") == str(N_PHOTOS)
    assert _stat(html, "clusters") == "3" and _stat(html, "largest cluster") == "3"
    assert _stat(html, "by sha256") == "1"  # the exact copy; the others by phash or embedding
    summary = read_summary(RunDir(str(out)))
    cosine, bits = summary["threshold"], summary["phash_distance"]
    assert f"embedding cosine &gt;= {cosine} or phash differs in &lt;= {bits} of 64 bits" in html
    assert "<svg" in html and 'class="threshold"' in html and f"threshold {cosine:.3g}<" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html
    sections = _sections(html)
    assert len(sections) == 3
    shown = [
        {unescape(n) for n in re.findall(r'<div class="name">(.*?)</div>', s)} for s in sections
    ]
    # biggest first; clusters of one size come in cluster_id order (ids hash the uris)
    assert shown[0] == expected[0] and sorted(map(sorted, shown)) == sorted(map(sorted, expected))
    for section, names in zip(sections, shown, strict=True):
        assert section.count(DATA_IMG) == len(names)  # one thumbnail per member shown
        assert section.count('<figure class="rep"') == 1
        assert section.index('<figure class="rep"') < section.index('<figure class="dup"')
        assert f"<h3>{len(names)} images" in section
    assert html.count(DATA_IMG) == 7
    for data in re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", html):
        thumb = Image.open(io.BytesIO(base64.b64decode(data)))
        assert thumb.format == "JPEG" and max(thumb.size) <= 128


def test_report_escapes_names_from_the_data(report):
    _, html = report
    assert "<b onload" not in html
    assert "copy &lt;b onload=x&gt;exact &amp; &quot;q&quot;.jpg" in html


def test_report_renders_in_chromium(dedup_run, report):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("needs Debian's chromium package")
    path, _ = report
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            loaded = page.evaluate(
                "() => [...document.images].map(i => i.complete && i.naturalWidth > 0)"
            )
            assert loaded == [True] * 7
            line = page.locator("svg line.threshold")
            assert line.count() == 1 and line.bounding_box()["height"] > 50
            bars = page.locator("svg rect.bar")
            assert bars.count() == 50
            label = page.locator("svg text.threshold-label").text_content()
            cosine = read_summary(RunDir(str(dedup_run[0])))["threshold"]
            assert label == f"threshold {cosine:.3g}"  # a cosine: the histogram is of cosines
            first = page.locator("section.cluster").first.locator("figure")
            boxes = [first.nth(i).bounding_box() for i in range(first.count())]
            assert [b["y"] for b in boxes] == [boxes[0]["y"]] * 3  # side by side
            assert boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dedup-report.png"), full_page=True)
        finally:
            browser.close()


def test_a_deleted_source_shows_a_placeholder(dedup_run, tmp_path):
    out, _ = dedup_run
    half = next(p for p in (out.parent / "images").glob("copy-half.png"))
    moved = tmp_path / half.name
    shutil.move(half, moved)
    try:
        html = Path(write_report(str(out))).read_text("utf-8")
    finally:
        shutil.move(moved, half)
    assert html.count(DATA_IMG) == 6
    [placeholder] = re.findall(r'<div class="missing">(.*?)</div>', html)
    assert "no longer readable" in placeholder
    assert '<div class="name">copy-half.png</div>' in html  # still listed, with its size
    write_report(str(out))  # the shared report again, as the other tests expect it


def test_stored_thumbnails_are_used_when_every_source_is_gone(tmp_path):
    out, expected = make_dedup_run(tmp_path, thumbnail_px=64)
    shutil.rmtree(tmp_path / "images")
    html = Path(write_report(str(out), thumb_px=96)).read_text("utf-8")
    assert html.count(DATA_IMG) == sum(len(names) for names in expected)
    assert 'class="missing"' not in html
    for data in re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", html):
        assert max(Image.open(io.BytesIO(base64.b64decode(data))).size) <= 64


def test_a_run_without_duplicates_says_so(tmp_path):
    from tests.helpers.runs import make_run
    from vlpipe.dedup.run import DedupOptions, dedup

    run = make_run(tmp_path / "run", 40, dim=16, part_rows=20)
    summary = dedup(run.path, DedupOptions(method="embedding", threshold=0.9999))
    assert summary["clusters"] == 0
    html = Path(write_report(run.path)).read_text("utf-8")
    assert "No duplicates found" in html and "<svg" in html
    assert DATA_IMG not in html and '<section class="cluster"' not in html


def test_biggest_clusters_streams_batches_and_keeps_few_members(tmp_path, monkeypatch):
    """Clusters picked across many small batches: by size then cluster_id, representative
    first then most similar, at most `per_cluster` members each."""
    import vlpipe.dedup.report as report_module

    monkeypatch.setattr(report_module, "CLUSTER_BATCH", 37)
    rows = []

    def cluster(cid: str, size: int) -> None:
        for i in range(size):
            rows.append(
                {"image_id": f"{cid}{i:04d}", "cluster_id": f"{cid}0000",
                 "is_representative": i == 0, "cluster_size": size,
                 "similarity": 0.5 + i / 1000, "method": None if i == 0 else "phash"}
            )  # fmt: skip

    for i in range(200):
        cluster(f"s{i:03d}", 1)
    cluster("zz", 300)  # the biggest, its members spread over many batches
    cluster("cc", 5)
    cluster("bb", 5)  # same size as cc: cluster_id decides
    cluster("aa", 2)
    rows.reverse()  # representatives last: the merge must keep them anyway
    run = RunDir(str(tmp_path))
    (tmp_path / "dedup").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), run.join(CLUSTERS), row_group_size=50)
    picked = biggest_clusters(run, max_clusters=3, per_cluster=4)
    assert [(c.cluster_id, c.size) for c in picked] == [("zz0000", 300), ("bb0000", 5),
                                                         ("cc0000", 5)]  # fmt: skip
    zz = [m.image_id for m in picked[0].members]
    assert zz == ["zz0000", "zz0299", "zz0298", "zz0297"]
    assert picked[0].members[0].is_representative and not picked[0].members[1].is_representative
    assert [len(c.members) for c in picked] == [4, 4, 4]
