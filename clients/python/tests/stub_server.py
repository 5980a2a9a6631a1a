"""A tiny stdlib HTTP server that plays the ingest hook for timing tests.

Each test sets ``responder``: a function of the recorded request returning
what to do - a status with a JSON body and headers, ``HANG`` (answer nothing
until released, to trigger client timeouts) or ``DROP`` (close the
connection without an answer). Every request is recorded with its arrival
time, and tests wait on :meth:`StubServer.wait_for` instead of sleeping.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG = "hang"
DROP = "drop"


@dataclass
class Request:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.body.split(b"\n") if line.strip()]

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.events]


@dataclass
class Reply:
    status: int = 202
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


Responder = Callable[["Request"], "Reply | str"]


def accept_all(request: Request) -> Reply:
    n = len(request.events)
    return Reply(202, {"accepted": n, "duplicates": 0, "seqs": list(range(1, n + 1))})


class StubServer:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.responder: Responder = accept_all
        self.cond = threading.Condition()
        self.release = threading.Event()
        self._connections = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with stub.cond:
                    stub._connections += 1
                    self.connection_number = stub._connections

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                request = Request(time.monotonic(), self.path, dict(self.headers.items()), body, self.connection_number)
                action = stub.responder(request)
                with stub.cond:
                    stub.requests.append(request)
                    stub.cond.notify_all()
                if action == HANG:
                    stub.release.wait(30)
                    self.close_connection = True
                    return
                if action == DROP or not isinstance(action, Reply):
                    self.close_connection = True
                    return
                payload = json.dumps(action.body if action.body is not None else {}).encode()
                self.send_response(action.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in action.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
                if action.close:
                    # Close without a "Connection: close" header: what a server's
                    # idle timeout looks like to a client with a kept-alive socket.
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait_for(self, predicate: Callable[[list[Request]], bool], timeout: float = 10.0) -> list[Request]:
        """Block until ``predicate(requests)`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.requests):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"stub: condition not met in {timeout} s; got {len(self.requests)} requests")
                self.cond.wait(remaining)
            return list(self.requests)

    def delivered_ids(self) -> list[str]:
        with self.cond:
            return [i for r in self.requests for i in r.ids]
