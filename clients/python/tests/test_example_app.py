"""The example FastAPI app (examples/fastapi_app) end to end: uvicorn, the client, a real sidewire."""

from __future__ import annotations

import http.client
import importlib.util
import json
import logging
import sys
import threading
from typing import Any

import pytest

from conftest import REPO, Sidewire, free_port, wait_until

APP_PATH = REPO / "examples" / "fastapi_app" / "app.py"


def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def test_example_app_reports_ingestions_queries_gauges_requests_and_errors(
    sidewire: Sidewire, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    monkeypatch.setenv("SIDEWIRE_URL", sidewire.url)
    monkeypatch.setenv("SIDEWIRE_SOURCE", "example-test")
    spec = importlib.util.spec_from_file_location("sidewire_example_app", APP_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(module.app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 15, what="uvicorn")
        text = b"Sidewire is a sidecar.\n\nIt streams events to dashboards.\n\nAttach a backend in three lines."
        assert call(port, "PUT", "/api/v1/documents/intro", text) == (201, {"document": "intro", "nodesCreated": 3})
        status, answer = call(port, "POST", "/api/v1/query", json.dumps({"q": "attach a backend"}).encode())
        assert status == 200
        assert answer["answers"][0]["text"] == "Attach a backend in three lines."
        assert call(port, "PUT", "/api/v1/documents/bad", b"\xff\xfe")[0] == 400  # logged warning -> error event
        assert call(port, "GET", "/healthz")[0] == 200
    finally:
        server.should_exit = True
        thread.join(15)
        for handler in root.handlers:
            if handler not in handlers_before:
                root.removeHandler(handler)
    # The lifespan closed the client: everything was delivered at shutdown.
    assert module.sidewire.stats.queued == 0 and module.sidewire.stats.dropped == 0
    stats = sidewire.stats()
    assert (stats["filesProcessed"], stats["queriesCompleted"], stats["errors"]) == (1, 1, 1)
    assert (stats["totalNodes"], stats["totalFiles"]) == (3, 1)
    (ingest,) = sidewire.events("ingestion_complete")
    assert ingest["source"] == "example-test"
    assert ingest["data"]["file"] == "intro" and ingest["data"]["nodesCreated"] == 3
    (error,) = sidewire.events("error")
    assert error["data"]["component"] == "example" and "not UTF-8" in error["data"]["message"]
    # Sorted: a request's event may be emitted after the next request started.
    routes = sorted(
        (e["data"]["method"], e["data"]["route"], e["data"]["status"]) for e in sidewire.events("http_request")
    )
    assert routes == sorted(
        [
            ("PUT", "/api/v1/documents/{name}", 201),
            ("POST", "/api/v1/query", 200),
            ("PUT", "/api/v1/documents/{name}", 400),
        ]
    )
