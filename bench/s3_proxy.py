"""An HTTP proxy in front of the local S3 server that counts requests and injects faults.

Real object stores answer in tens of milliseconds and now and then with 503 SlowDown, a dropped
connection or a slow body; moto on 127.0.0.1 answers in well under a millisecond and never
fails, which hides races and untested retry paths. Pointing S3 clients at this proxy
(`AWS_ENDPOINT_URL`) brings both back, reproducibly (seeded), and counts every request by kind
(HEAD, LIST, GET, PUT, POST, DELETE) for the request budget in bench/.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect"}


@dataclass
class Faults:
    """What the proxy does to each request; probabilities are per request."""

    latency: tuple[float, float] = (0.0, 0.0)  # seconds added, uniform in [low, high]
    slowdown: float = 0.0  # answer 503 SlowDown without forwarding
    drop: float = 0.0  # close the connection: before answering, or halfway through the body
    slow_body: float = 0.0  # send the body in small pieces with pauses
    deny: tuple[str, ...] = ()  # "bucket/key prefixes" answered 403 AccessDenied (permanent)
    seed: int = 0


SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)


def request_kind(method: str, path: str) -> str:
    """HEAD, LIST, GET, PUT, POST or DELETE: a GET of a bucket (no key) is a listing."""
    if method != "GET":
        return method
    parts = urlsplit(path)
    key = parts.path.lstrip("/").partition("/")[2]
    query = parse_qs(parts.query, keep_blank_values=True)
    return "LIST" if not key and "location" not in query else "GET"


class FaultProxy:
    """Forwards to `upstream` (http://host:port); `counts` by kind, `log` of (kind, path)."""

    def __init__(self, upstream: str, faults: Faults | None = None):
        self.upstream = urlsplit(upstream)
        self.faults = faults or Faults()
        self.counts: Counter = Counter()
        self.log: list[tuple[str, str]] = []
        self.injected: Counter = Counter()
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.log.clear()
            self.injected.clear()

    def total(self) -> int:
        return sum(self.counts.values())

    def _draw(self, method: str, path: str) -> tuple[float, str | None]:
        """Count the request; its added latency and the fault to inject, if any."""
        f = self.faults
        with self._lock:
            kind = request_kind(method, path)
            self.counts[kind] += 1
            self.log.append((kind, path))
            delay = self._rng.uniform(*f.latency) if f.latency[1] > 0 else 0.0
            key = urlsplit(path).path.lstrip("/")
            r = self._rng.random()
            fault = None
            if any(key.startswith(prefix) for prefix in f.deny):
                fault = "deny"
            elif r < f.slowdown:
                fault = "slowdown"
            elif r < f.slowdown + f.drop:
                fault = "drop-early" if self._rng.random() < 0.5 else "drop-body"
            elif r < f.slowdown + f.drop + f.slow_body:
                fault = "slow-body"
            if fault:
                self.injected[fault] += 1
        return delay, fault


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._handle()

        do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

        def _handle(self) -> None:
            body = self._read_body()
            delay, fault = proxy._draw(self.command, self.path)
            if delay:
                time.sleep(delay)
            if fault == "deny":
                return self._reply(403, DENIED)
            if fault == "slowdown":
                return self._reply(503, SLOWDOWN)
            if fault == "drop-early":
                return self._drop()
            status, headers, data = self._forward(body)
            self.send_response_only(status)
            head = self.command == "HEAD"  # keeps the object's Content-Length; has no body
            for name, value in headers:
                if name.lower() not in HOP_HEADERS and (head or name.lower() != "content-length"):
                    self.send_header(name, value)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "HEAD" or not data:
                return None
            if fault == "drop-body":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                return self._drop()
            if fault == "slow-body":
                for i in range(0, len(data), 512):
                    self.wfile.write(data[i : i + 512])
                    self.wfile.flush()
                    time.sleep(0.01)
                return None
            self.wfile.write(data)
            return None

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self, body: bytes) -> tuple[int, list, bytes]:
            up = proxy.upstream
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            headers["Content-Length"] = str(len(body))
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.getheaders(), data
            finally:
                conn.close()

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response_only(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _drop(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler


@contextlib.contextmanager
def proxied(upstream: str, faults: Faults | None = None) -> Iterator[FaultProxy]:
    """Every S3 client made inside the block (this process and the subprocesses it starts)
    goes through a new proxy in front of `upstream`."""
    import s3fs

    proxy = FaultProxy(upstream, faults).start()
    before = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield proxy
    finally:
        if before is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = before
        s3fs.S3FileSystem.clear_instance_cache()
        proxy.stop()
