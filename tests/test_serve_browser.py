"""End to end: `vlpipe serve` in a subprocess, driven by headless Chromium through Playwright.

Needs Debian's `chromium` (apt-get install chromium) and the `playwright` Python package; browser
downloads (`playwright install`) do not work offline, so the system browser is launched directly.
Keeps a screenshot in test-artifacts/serve.png.
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

from tests.conftest import REPO
from tests.test_serve import make_indexed_run

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
    yield url, out, sorted(captions)
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def page(server):
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
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server[0])
        yield page
        browser.close()


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
