"""A fault injector and request counter in front of an OpenAI-compatible server. A test fake, not a server.

It forwards requests to the real upstream (the llama.cpp server the tests start), counts every chat request
by its body (so repeated requests can be counted), tracks requests in flight, and can misbehave on purpose:
``500`` (an error status), ``hang`` (no answer until the client times out), ``garbage`` (200 with a body
that is not JSON), ``drop`` (the connection closes without an answer), ``down`` (503 for everything); and it
can refuse requests as a server refuses a prompt it will never accept (HTTP 400, as vLLM answers a prompt over
the context length): the first request containing ``reject_first`` and every later copy of it, or every
request containing ``reject_all``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class FaultProxy:
    """Start on 127.0.0.1 with ``start()``; ``url`` is its OpenAI base URL; ``stop()`` shuts it down.

    Args:
        upstream: the real server's base URL, e.g. http://127.0.0.1:8000/v1.
        faults: actions for successive chat requests ("ok", "500", "hang", "garbage", "drop"); then all ok.
        hang_seconds: how long a "hang" holds the request unanswered (longer than the client's timeout).
    """

    def __init__(
        self,
        upstream: str,
        faults: list[str] | None = None,
        hang_seconds: float = 50.0,
        reject_first: str | None = None,
        reject_all: str | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = list(faults or [])
        self.reject_first, self.reject_all = reject_first, reject_all
        self.rejected: Counter[str] = Counter()  # body digest -> times refused
        self.down = False
        self.bodies: Counter[str] = Counter()
        self.answered = 0
        self.injected: Counter[str] = Counter()
        self.in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.hang_seconds = hang_seconds  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def requests(self) -> int:
        """Chat requests received (each attempt, retries included)."""
        return sum(self.bodies.values())

    @property
    def repeated(self) -> int:
        """Chat requests whose exact body had been received before."""
        return sum(n - 1 for n in self.bodies.values())

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_fault(self) -> str:
        with self._lock:
            return self.faults.pop(0) if self.faults else "ok"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if proxy.down:
                    return self._reply(503, b'{"error": "down"}')
                upstream = requests.get(proxy.upstream + self.path.removeprefix("/v1"), timeout=30)
                self._reply(upstream.status_code, upstream.content)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.down:
                    return self._reply(503, b'{"error": "down"}')
                digest = hashlib.sha256(json.dumps(json.loads(body), sort_keys=True).encode()).hexdigest()
                text = body.decode()
                with proxy._lock:
                    refuse = digest in proxy.rejected or bool(proxy.reject_all and proxy.reject_all in text)
                    if not refuse and proxy.reject_first and proxy.reject_first in text and not proxy.rejected:
                        refuse = True
                    if refuse:
                        proxy.bodies[digest] += 1
                        proxy.rejected[digest] += 1
                if refuse:
                    message = "This model's maximum context length is 2048 tokens (injected refusal)"
                    error = {"error": {"message": message, "type": "invalid_request_error", "code": 400}}
                    return self._reply(400, json.dumps(error).encode())
                fault = proxy._next_fault()
                with proxy._lock:
                    proxy.bodies[digest] += 1
                    if fault != "ok":
                        proxy.injected[fault] += 1
                    proxy.in_flight += 1
                try:
                    if fault == "500":
                        return self._reply(500, b'{"error": {"message": "injected server error"}}')
                    if fault == "garbage":
                        return self._reply(200, b"<html>not json</html>", "application/json")
                    if fault == "drop":
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return None
                    if fault == "hang":
                        time.sleep(self.server.hang_seconds)  # type: ignore[attr-defined]
                        return None
                    upstream = requests.post(
                        proxy.upstream + self.path.removeprefix("/v1"),
                        data=body, headers={"Content-Type": "application/json"}, timeout=600,
                    )  # fmt: skip
                    with proxy._lock:
                        proxy.answered += 1
                    return self._reply(upstream.status_code, upstream.content)
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1

        return Handler
