"""`vlpipe serve` beyond loopback needs its token: real `vlpipe serve` processes, real HTTP."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers.paths import REPO
from tests.helpers.runs import make_indexed_run

pytest.importorskip("uvicorn", reason="needs the 'serve' extra: pip install 'vlpipe[serve]'")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    return make_indexed_run(tmp_path_factory.mktemp("token"))[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`vlpipe serve` in a subprocess, its stderr in a file, stopped at exit."""

    def __init__(self, index, host: str, log, *extra: str, env: dict | None = None):
        self.port = _free_port()
        self.log = log
        thumbs = str(log.parent / "thumbs")
        argv = [sys.executable, "-m", "vlpipe", "serve", "--index", str(index), "--host", host,
                "--port", str(self.port), "--cache-dir", thumbs, *extra]  # fmt: skip
        environ = {k: v for k, v in os.environ.items() if k != "VLPIPE_TOKEN"} | (env or {})
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=environ, stderr=out, stdout=out)

    def __enter__(self) -> Served:
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"vlpipe serve exited: {self.log.read_text()}")
            if "serving" in self.log.read_text():
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
                except OSError:
                    pass
            time.sleep(0.3)
        pytest.fail("vlpipe serve did not start")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()


def _printed_token(log) -> str:
    return re.search(r"\?token=([A-Za-z0-9_\-]+)", log.read_text()).group(1)


def test_beyond_loopback_every_request_needs_the_printed_token(indexed, tmp_path):
    with Served(indexed, "0.0.0.0", tmp_path / "serve.log") as served:
        token = _printed_token(served.log)
        assert len(token) >= 40
        image_id = json.loads(served.get(f"/api/search?q=dog&k=1&token={token}")[2])["results"][0][
            "image_id"
        ]
        for path in ("/", "/api/search?q=dog", f"/thumb/{image_id}", "/api/duplicates"):
            status, headers, body = served.get(path)
            assert status == 401 and "token" in json.loads(body)["error"]  # no data, no image
            assert (
                served.get(path + ("&" if "?" in path else "?") + "token=" + "x" * len(token))[0]
                == 401
            )
        status, headers, page = served.get(f"/?token={token}")
        assert status == 200 and b"<html" in page.lower()
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        # the page's own requests carry the cookie only
        status, _, body = served.get("/api/search?q=dog&k=2", {"Cookie": cookie})
        assert status == 200 and len(json.loads(body)["results"]) == 2
        status, headers, jpeg = served.get(f"/thumb/{image_id}", {"Cookie": cookie})
        assert status == 200 and jpeg[:2] == b"\xff\xd8"
        bearer = {"Authorization": f"Bearer {token}"}
        assert served.get("/api/search?q=dog&k=1", bearer)[0] == 200
        assert served.get("/api/search?q=dog&k=1", {"Authorization": "Bearer nope"})[0] == 401
    # printed once, in the URL to open; never in a log line of the requests that carried it
    assert served.log.read_text().count(token) == 1


def test_loopback_is_open_unless_a_token_is_asked_for(indexed, tmp_path):
    with Served(indexed, "127.0.0.1", tmp_path / "open.log") as served:
        assert served.get("/api/search?q=dog&k=1")[0] == 200
        assert "token" not in served.log.read_text()
    env = {"VLPIPE_TOKEN": "env-secret-token"}
    with Served(indexed, "127.0.0.1", tmp_path / "env.log", env=env) as served:
        assert served.get("/api/search?q=dog&k=1")[0] == 401
        assert served.get("/api/search?q=dog&k=1&token=env-secret-token")[0] == 200
