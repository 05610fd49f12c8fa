"""End to end: `vlpipe serve` in a subprocess, driven by headless Chromium through Playwright.

Needs Debian's `chromium` (apt-get install chromium) and the `playwright` Python package; browser
downloads (`playwright install`) do not work offline, so the system browser is launched directly.
Keeps screenshots in test-artifacts/serve.png and test-artifacts/serve-duplicates.png.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.helpers.paths import REPO
from tests.helpers.runs import make_indexed_run

sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium package"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("uvicorn", reason="needs the 'serve' extra")
    root = tmp_path_factory.mktemp("browser")
    out, captions = make_indexed_run(root)
    for url in _serve(out, root):
        yield url, out, sorted(captions)


def _serve(out, root):
    """`vlpipe serve` over the run `out` until the generator is closed; yields its URL."""
    port = _free_port()
    log = open(root / "serve.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlpipe", "serve", "--index", str(out), "--port", str(port),
         "--cache-dir", str(root / "thumbs")],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail(f"vlpipe serve did not start:\n{log.read()}")
            time.sleep(0.3)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Playwright's sync API allows one at a time)."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(server, browser):
    yield from _page(browser, server[0])


def _page(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    yield page
    page.close()


LOADED_THUMBS = """n => [...document.querySelectorAll('#grid .card img')]
    .filter(img => img.complete && img.naturalWidth > 0).length >= n"""


def test_query_shows_thumbnails_and_click_searches_by_image(page):
    page.fill("#q", "a dog runs on the grass")
    page.press("#q", "Enter")
    page.wait_for_function(LOADED_THUMBS, arg=12, timeout=30_000)
    cards = page.locator("#grid .card")
    assert cards.count() == 13  # 24 asked, the index holds 13
    page.wait_for_selector(".nothumb")  # the indexed file that is not an image: a placeholder
    assert page.locator(".nothumb").count() == 1
    assert "results for" in page.inner_text("#status")
    first = cards.nth(0)
    assert first.locator(".caption").inner_text().strip()
    assert first.locator(".score").inner_text().startswith("score ")
    assert first.locator(".rank").inner_text() == "#1"
    assert cards.nth(1).locator(".rank").inner_text() == "#2"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve.png"))

    photos = [i for i in range(1, cards.count()) if cards.nth(i).locator("img").count()]
    clicked = cards.nth(photos[2])  # a photo (not the placeholder) some way down the grid
    clicked_uri = clicked.locator(".uri").inner_text()
    clicked.click()
    page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('results for images like')"
    )
    page.wait_for_function(LOADED_THUMBS, arg=8, timeout=30_000)
    assert page.locator("#grid .card").nth(0).locator(".uri").inner_text() == clicked_uri


def test_uploaded_image_searches_by_image(page, server):
    _, out, names = server
    photo = out.parent / "images" / names[-1]
    page.set_input_files("#file", str(photo))
    page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('results for ' + "
        f"{photo.name!r})"
    )
    assert page.locator("#grid .card").nth(0).locator(".uri").inner_text() == str(photo)


def test_error_from_the_api_is_shown(page):
    # the box stops typing at 500 characters, the API refuses longer queries all the same
    page.evaluate("document.getElementById('q').removeAttribute('maxlength')")
    page.fill("#q", "x" * 600)
    page.press("#q", "Enter")
    page.wait_for_function("() => document.getElementById('status').className === 'error'")
    assert "500 characters" in page.inner_text("#status")


def test_the_filter_field_narrows_the_results(page):
    page.fill("#q", "a dog runs on the grass")
    page.fill("#where", "uri LIKE '%notes.jpg' OR caption LIKE '%dog%'")
    page.press("#q", "Enter")
    page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('results for')"
    )
    cards = page.locator("#grid .card")
    assert 0 < cards.count() < 13  # the index holds 13; the filter keeps fewer
    for i in range(cards.count()):
        card = cards.nth(i)
        assert (
            card.locator(".uri").inner_text().endswith("notes.jpg")
            or "dog" in card.locator(".caption").inner_text().lower()
        )
    page.fill("#where", "read_csv('/etc/passwd')")  # refused by the server, shown on the page
    page.press("#q", "Enter")
    page.wait_for_function("() => document.getElementById('status').className === 'error'")
    assert "functions are not allowed" in page.inner_text("#status")
    page.fill("#where", "")


# ---- near-duplicates: the Duplicates view and "collapse duplicates" ---------------------------


@pytest.fixture(scope="module")
def dup_server(tmp_path_factory):
    """`vlpipe serve` over a real run (mini models) of photos and copies, deduplicated."""
    pytest.importorskip("uvicorn", reason="needs the 'serve' extra")
    from tests.helpers.runs import make_dedup_run

    root = tmp_path_factory.mktemp("browser-dedup")
    out, expected = make_dedup_run(root)
    for url in _serve(out, root):
        yield url, expected


@pytest.fixture(scope="module")
def dup_page(dup_server, browser):
    yield from _page(browser, dup_server[0])


def test_duplicates_view_shows_each_cluster_side_by_side(dup_page, dup_server):
    _, expected = dup_server
    page = dup_page
    page.click("#dupstab")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#clusters .member img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length === 7",
        timeout=30_000,
    )
    assert page.locator("#grid").is_hidden() and page.locator("#dupview").is_visible()
    assert "3 groups of near-duplicates" in page.inner_text("#status")
    clusters = page.locator("#clusters .cluster")
    assert clusters.count() == 3
    shown = []
    for i in range(3):
        members = clusters.nth(i).locator(".member")
        boxes = [members.nth(j).bounding_box() for j in range(members.count())]
        assert len({round(b["y"]) for b in boxes}) == 1  # one row, side by side
        assert [b["x"] for b in boxes] == sorted(b["x"] for b in boxes)
        assert members.nth(0).get_attribute("class") == "member rep"
        assert members.nth(0).locator(".badge").inner_text() == "representative"
        assert members.locator(".badge").count() == 1
        shown.append({members.nth(j).locator(".name").inner_text() for j in range(len(boxes))})
    assert shown[0] == expected[0]
    assert sorted(map(sorted, shown)) == sorted(map(sorted, expected))
    assert page.locator("#dupnext").is_disabled() and page.locator("#dupprev").is_disabled()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-duplicates.png"))


def test_collapse_duplicates_shows_each_cluster_once(dup_page, dup_server):
    from tests.helpers.runs import DEDUP_PHOTOS as N_PHOTOS

    _, expected = dup_server
    page = dup_page
    page.fill("#q", "a dog")
    page.check("#dedup")
    page.press("#q", "Enter")
    page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('results for')"
    )
    assert page.locator("#grid").is_visible() and page.locator("#dupview").is_hidden()
    cards = page.locator("#grid .card")
    assert cards.count() == N_PHOTOS  # 12 images, 8 after collapsing the 3 clusters
    notes = sorted(page.locator("#grid .card .dups").all_inner_texts())
    assert notes == ["+1 duplicate", "+1 duplicate", "+2 duplicates"]
    names = {u.rsplit("/", 1)[-1] for u in page.locator("#grid .card .uri").all_inner_texts()}
    assert all(len(names & cluster) == 1 for cluster in expected)
    page.uncheck("#dedup")
    page.press("#q", "Enter")
    page.wait_for_function(
        f"() => document.querySelectorAll('#grid .card').length === {N_PHOTOS + 4}"
    )
    assert page.locator("#grid .card .dups").count() == 0
