"""Shared fixtures. `http_server`: a real HTTP server on 127.0.0.1 with scripted replies;
`chromium`: the system's Chromium for Playwright, required in CI."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> str:
    """Chromium's path; skipped without it or Playwright, except in CI, which must run it."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    elif importlib.util.find_spec("playwright") is None:
        problem = "the playwright package is missing (pip install -e '.[test]')"
    if problem and os.environ.get("CI"):
        pytest.fail(f"CI must run the browser test: {problem}")
    if problem:
        pytest.skip(problem)
    return str(CHROMIUM)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "image/jpeg"
    headers: dict[str, str] = field(default_factory=dict)
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    drip_s: float = 0.0  # > 0: send the body one byte at a time, this far apart


# A route is a list of replies, served in order with the last one repeating, or a function of
# the query string.
Route = list[Reply] | Callable[[dict[str, list[str]]], Reply]


class LoopbackServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()  # by path, query string left out
        self.requests: list[tuple[float, str]] = []  # (monotonic time, path with query)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._httpd.server_port}"

    def start(self) -> None:
        thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str) -> str:
        return self.base + path

    def reply_for(self, raw_path: str) -> Reply:
        parts = urlsplit(raw_path)
        with self._lock:
            count = self.hits[parts.path]
            self.hits[parts.path] += 1
            self.requests.append((time.monotonic(), raw_path))
        route = self.routes.get(parts.path, [Reply(404, b"not found", "text/html")])
        if callable(route):
            return route(parse_qs(parts.query))
        return route[min(count, len(route) - 1)]


def _handler_for(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            reply = server.reply_for(self.path)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            if reply.send_length:
                self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            # The client may give up mid-body: a timeout test, a killed process.
            with contextlib.suppress(OSError):
                self._send_body(reply)

        def _send_body(self, reply: Reply) -> None:
            if not reply.drip_s:
                self.wfile.write(reply.body)
                return
            for index in range(len(reply.body)):
                self.wfile.write(reply.body[index : index + 1])
                self.wfile.flush()
                time.sleep(reply.drip_s)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    return Handler


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    server.start()
    yield server
    server.stop()
