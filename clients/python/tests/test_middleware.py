"""ASGI (FastAPI under uvicorn) and WSGI (Flask under werkzeug) middleware, events into the real binary."""

from __future__ import annotations

import asyncio
import http.client
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Sidewire, free_port, wait_until
from sidewire_client import Client
from sidewire_client.asgi import SidewireMiddleware, route_template, sidewire_lifespan
from sidewire_client.log_handler import SidewireLogHandler
from sidewire_client.wsgi import SidewireWSGIMiddleware
from stub_server import StubServer


def get(port: int, path: str, method: str = "GET", body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def requests_seen(server: Sidewire) -> list[tuple[str, str, int]]:
    """(method, route, status) of every recorded request, sorted.

    Sorted because the event of a request is emitted when the server has
    finished with it, which may be after the test client already read the
    response and sent the next request (the servers are multi-threaded).
    """
    events = server.events("http_request")
    for event in events:
        assert set(event["data"]) == {"method", "route", "status", "durationMs"}
        assert event["data"]["durationMs"] >= 0
    return sorted((e["data"]["method"], e["data"]["route"], e["data"]["status"]) for e in events)


def build_fastapi_app(client: Client, shutdown_log: list[str]) -> Any:
    from contextlib import asynccontextmanager

    from fastapi import APIRouter, FastAPI
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    @asynccontextmanager
    async def app_lifespan(app: Any) -> Any:
        yield
        shutdown_log.append("app lifespan ended")
        client.emit("app_stopped")  # still delivered: the client closes after this

    items = APIRouter(prefix="/items")

    @items.get("/{item_id}")
    def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @items.post("")
    def create_item(item: dict[str, Any]) -> dict[str, Any]:
        return item

    users = APIRouter(prefix="/users")

    @users.get("/{user_id}/orders/{order_id}")
    def get_order(user_id: int, order_id: int) -> dict[str, int]:
        return {"user": user_id, "order": order_id}

    admin = APIRouter(prefix="/admin")
    admin.include_router(users)

    app = FastAPI(lifespan=sidewire_lifespan(client, app_lifespan))
    app.include_router(items, prefix="/v1")
    app.include_router(admin)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello {request.path_params['name']}")

    app.mount("/sub", Starlette(routes=[Route("/hello/{name}", hello)]))
    app.add_middleware(SidewireMiddleware, client=client)
    return app


def test_fastapi_under_uvicorn_records_route_templates(sidewire: Sidewire) -> None:
    import uvicorn

    client = Client(sidewire.url, flush_interval=0.05)
    shutdown_log: list[str] = []
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_fastapi_app(client, shutdown_log), host="127.0.0.1", port=port, log_level="critical")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15, what="uvicorn to start")
    try:
        assert get(port, "/v1/items/3?secret=token") == 200
        assert get(port, "/v1/items/abc") == 422
        assert get(port, "/v1/items", "POST", b'{"name": "x"}') == 200
        assert get(port, "/admin/users/7/orders/9") == 200
        assert get(port, "/nope/123") == 404
        assert get(port, "/nope/456") == 404
        assert get(port, "/healthz") == 200  # excluded by default
        assert get(port, "/boom") == 500
        assert get(port, "/sub/hello/bob") == 200
    finally:
        server.should_exit = True
        thread.join(15)
    # The lifespan closed the client at shutdown, after the app's own lifespan.
    assert shutdown_log == ["app lifespan ended"]
    assert client.emit("late") is False
    assert requests_seen(sidewire) == sorted(
        [
            ("GET", "/v1/items/{item_id}", 200),
            ("GET", "/v1/items/{item_id}", 422),
            ("POST", "/v1/items", 200),
            ("GET", "/admin/users/{user_id}/orders/{order_id}", 200),
            ("GET", "<unmatched>", 404),
            ("GET", "<unmatched>", 404),
            ("GET", "/boom", 500),
            ("GET", "/sub/hello/{name}", 200),
        ]
    )
    assert len(sidewire.events("app_stopped")) == 1


def asgi_call(app: Any, path: str) -> int:
    """Run one HTTP request through an ASGI app in-process; return the status."""
    status = 0

    async def run() -> None:
        nonlocal status
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [],
            "scheme": "http",
            "server": ("test", 80),
            "client": ("127.0.0.1", 1),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        try:
            await app(scope, receive, send)
        except RuntimeError:
            status = status or 500

    asyncio.run(run())
    return status


def test_sampling_keeps_server_errors_and_marks_the_rate(stub: StubServer) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def fail(request: Request) -> PlainTextResponse:
        raise RuntimeError("fail")

    client = Client(stub.url, flush_interval=0.05)
    inner = Starlette(routes=[Route("/ok/{n}", ok), Route("/fail", fail)])
    app = SidewireMiddleware(inner, client, sample_rate=0.0, exclude_routes=["/never"])
    try:
        for n in range(20):
            assert asgi_call(app, f"/ok/{n}") == 200
        assert asgi_call(app, "/fail") == 500
        assert client.flush(5)
    finally:
        client.close(1)
    events = [e for r in stub.requests for e in r.events]
    assert [e["data"] for e in events] == [
        {
            "method": "GET",
            "route": "/fail",
            "status": 500,
            "durationMs": events[0]["data"]["durationMs"],
            "sampleRate": 0.0,
        }
    ]


def test_route_template_without_a_router_is_none() -> None:
    assert route_template({"type": "http", "path": "/x", "root_path": ""}) is None


@pytest.fixture
def flask_server(sidewire: Sidewire) -> Iterator[tuple[int, Client]]:
    from flask import Blueprint, Flask, Response
    from werkzeug.serving import make_server

    app = Flask(__name__)
    api = Blueprint("api", __name__, url_prefix="/api")

    @api.get("/items/<int:item_id>")
    def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @api.get("/files/<path:name>")
    def get_file(name: str) -> str:
        return name

    @app.get("/stream")
    def stream() -> Response:
        return Response((chunk for chunk in (b"a", b"b", b"c")), status=206)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    app.register_blueprint(api)
    client = Client(sidewire.url, flush_interval=0.05)
    app.wsgi_app = SidewireWSGIMiddleware(app.wsgi_app, client)  # type: ignore[method-assign]
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, client
    finally:
        server.shutdown()
        thread.join(10)
        client.close(2)


def test_flask_through_wsgi_records_route_templates(sidewire: Sidewire, flask_server: tuple[int, Client]) -> None:
    port, client = flask_server
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    assert get(port, "/api/items/5?q=secret") == 200
    assert get(port, "/api/files/a/b/c.txt") == 200
    assert get(port, "/api/items/x") == 404  # the int converter does not match: unmatched
    assert get(port, "/stream") == 206
    assert get(port, "/boom") == 500
    assert get(port, "/healthz") == 404  # excluded by default, even when unmatched
    assert client.flush(10)
    assert requests_seen(sidewire) == sorted(
        [
            ("GET", "/api/items/{item_id}", 200),
            ("GET", "/api/files/{name}", 200),
            ("GET", "<unmatched>", 404),
            ("GET", "/stream", 206),
            ("GET", "/boom", 500),
        ]
    )


def test_log_handler_sends_warnings_but_never_its_own_records(stub: StubServer) -> None:
    client = Client(stub.url, flush_interval=0.05)
    handler = SidewireLogHandler(client)
    app_log = logging.getLogger("myapp.worker")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        app_log.info("not sent: below WARNING")
        app_log.warning("disk %d%% full", 91)
        try:
            raise ValueError("bad input")
        except ValueError:
            app_log.exception("job failed")
        logging.getLogger("sidewire_client").warning("the client's own line: never sent")
        assert client.flush(5)
    finally:
        root.removeHandler(handler)
        client.close(1)
    events = [e for r in stub.requests for e in r.events]
    assert [e["type"] for e in events] == ["error", "error"]
    first, second = (e["data"] for e in events)
    assert first == {
        "message": "disk 91% full",
        "component": "myapp.worker",
        "level": "WARNING",
        "location": first["location"],
    }
    assert first["location"].startswith("test_middleware:")
    assert second["exception"] == "ValueError: bad input"
    assert "Traceback" in second["traceback"] and second["level"] == "ERROR"


def test_log_handler_does_not_feed_on_the_clients_failures(caplog: pytest.LogCaptureFixture) -> None:
    # A sidecar that is away makes the client log warnings; with the handler on
    # the root logger those must not turn into more events (and more warnings).
    client = Client("http://127.0.0.1:9", flush_interval=0.01, backoff_base=0.01, backoff_max=0.02, log_interval=0.0)
    handler = SidewireLogHandler(client)
    logging.getLogger().addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING):
            logging.getLogger("myapp").warning("one real warning")
            wait_until(lambda: client.stats.retried >= 5, 10, what="retries")
        assert client.stats.queued == 1  # only the app's warning, never the client's own lines
    finally:
        logging.getLogger().removeHandler(handler)
        client.close(0.1)


def test_django_through_wsgi_records_route_templates(stub: StubServer) -> None:
    import sys
    import types
    from wsgiref.util import setup_testing_defaults

    pytest.importorskip("django")
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.http import HttpRequest, HttpResponse
    from django.urls import include, path

    def item(request: HttpRequest, item_id: int) -> HttpResponse:
        return HttpResponse(str(item_id))

    def home(request: HttpRequest) -> HttpResponse:
        return HttpResponse("home")

    api_urls = types.ModuleType("sidewire_test_api_urls")
    api_urls.urlpatterns = [path("items/<int:item_id>/", item)]  # type: ignore[attr-defined]
    root_urls = types.ModuleType("sidewire_test_root_urls")
    root_urls.urlpatterns = [path("", home), path("api/v1/", include(api_urls))]  # type: ignore[attr-defined]
    sys.modules[api_urls.__name__] = api_urls
    sys.modules[root_urls.__name__] = root_urls
    if not settings.configured:
        settings.configure(ROOT_URLCONF=root_urls.__name__, ALLOWED_HOSTS=["*"], DEBUG=False, SECRET_KEY="test")
    client = Client(stub.url, flush_interval=0.05)
    app = SidewireWSGIMiddleware(get_wsgi_application(), client)

    def call(path_info: str) -> int:
        environ: dict[str, Any] = {"PATH_INFO": path_info}
        setup_testing_defaults(environ)
        status: list[int] = []

        def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status.append(int(line.split(maxsplit=1)[0]))
            return lambda chunk: None

        body = app(environ, start_response)
        try:
            b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return status[0]

    try:
        assert call("/api/v1/items/42/") == 200
        assert call("/") == 200
        assert call("/missing/") == 404
        assert client.flush(5)
    finally:
        client.close(1)
        for name in (api_urls.__name__, root_urls.__name__):
            sys.modules.pop(name, None)
    events = [e["data"] for r in stub.requests for e in r.events]
    assert [(d["route"], d["status"]) for d in events] == [
        ("/api/v1/items/{item_id}/", 200),
        ("/", 200),
        ("<unmatched>", 404),
    ]


def test_routes_are_found_again_when_the_router_did_not_record_them(stub: StubServer) -> None:
    # Older Starlette routers did not put the route in the scope; simulate that
    # by removing what today's routers leave there.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def text(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(
        routes=[
            Route("/items/{item_id:int}", text),
            Mount("/sub/{tenant}", Starlette(routes=[Route("/hi/{name}", text)])),
        ]
    )

    async def forgetful(scope: Any, receive: Any, send: Any) -> None:
        await inner(scope, receive, send)
        scope.pop("route", None)
        scope.pop("fastapi", None)

    client = Client(stub.url, flush_interval=0.05)
    app = SidewireMiddleware(forgetful, client)
    try:
        assert asgi_call(app, "/items/5") == 200
        assert asgi_call(app, "/sub/acme/hi/bob") == 200
        assert asgi_call(app, "/nothing") == 404
        assert client.flush(5)
    finally:
        client.close(1)
    routes = [e["data"]["route"] for r in stub.requests for e in r.events]
    assert routes == ["/items/{item_id}", "/sub/acme/hi/{name}", "<unmatched>"]
