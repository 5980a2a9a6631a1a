"""Pure ASGI middleware for FastAPI and Starlette: one event per HTTP request.

Pure ASGI (not ``BaseHTTPMiddleware``): it wraps ``send`` to read the
status and never touches the body, so streaming responses, background tasks
and WebSockets behave exactly as without it. Attach it with::

    sw = Client("http://127.0.0.1:8790", source="api-1")
    app = FastAPI(lifespan=sidewire_lifespan(sw))
    app.add_middleware(SidewireMiddleware, client=sw)

See :mod:`sidewire_client._http_event` for the event's shape.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from ._client import Client, logger
from ._http_event import DEFAULT_EXCLUDED_PATHS, HTTP_EVENT_TYPE, UNMATCHED_ROUTE, RequestRecorder

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RouteResolver = Callable[[Scope], str | None]

__all__ = [
    "HTTP_EVENT_TYPE",
    "UNMATCHED_ROUTE",
    "SidewireMiddleware",
    "route_template",
    "sidewire_lifespan",
]


def route_template(scope: Scope, root_path_before: str = "") -> str | None:
    """The template of the route that handled a request, read from the scope after routing.

    Routers record what they matched in the (shared, mutated) scope:

    * FastAPI keeps an included router as one node of the route tree; the
      route it selected, with every ``include_router`` prefix joined, is in
      ``scope["fastapi"]["effective_route_context"].path_format``.
    * Starlette (and FastAPI versions that copy included routes into the
      app's router, prefixes already joined) put the route in
      ``scope["route"]``; its ``path_format`` is the template.
    * Older Starlette routers do not record the route: it is matched again
      against the routes of ``scope["app"]`` (the innermost application).
    * ``Mount`` adds the part of the path it matched to ``root_path``; that
      part (taken as is) is put in front of the template. A request that
      entered a mount but matched nothing inside it (or a mounted app with
      no router, such as ``StaticFiles``) gets ``<mount prefix>/{path}``.

    Returns None when no route matched.
    """
    root_path = scope.get("root_path", "")
    prefix = root_path[len(root_path_before) :] if root_path.startswith(root_path_before) else ""
    template: object = None
    fastapi_scope = scope.get("fastapi")
    if isinstance(fastapi_scope, dict):
        template = getattr(fastapi_scope.get("effective_route_context"), "path_format", None)
    route = scope.get("route")
    if not template and route is None:
        route = _rematch(scope)
    if not template and route is not None:
        template = getattr(route, "path_format", None)
        if isinstance(template, str) and template.endswith("/{path}") and hasattr(route, "routes"):
            # The innermost match is a Mount: root_path already holds its prefix.
            return (prefix or template.removesuffix("/{path}")) + "/{path}"
    if not isinstance(template, str) or not template:
        return None
    return prefix + template


def _rematch(scope: Scope) -> Any:
    """Find the route again, for Starlette versions whose router does not record it in the scope.

    ``scope["app"]`` is the innermost Starlette application that handled the
    request; its routes are matched against the scope as routing left it,
    with the routes' public ``matches`` method. None when nothing matches.
    """
    app = scope.get("app")
    routes = getattr(getattr(app, "router", None), "routes", None) or getattr(app, "routes", None)
    if not isinstance(routes, list):
        return None
    for candidate in routes:
        try:
            match, _ = candidate.matches(dict(scope))
        except Exception:  # a route type that cannot match this scope
            logger.debug("sidewire: route %r could not be matched again", candidate, exc_info=True)
            continue
        if getattr(match, "name", None) == "FULL":
            return candidate
    return None


class SidewireMiddleware:
    """Records each HTTP request as one event: method, route template, status, duration.

    ``exclude_paths``: raw paths not recorded (an entry ending in ``/``
    excludes everything below it); by default health probes and
    ``/metrics``. ``exclude_routes``: route templates not recorded.
    ``sample_rate``: the fraction of requests recorded (server errors are
    always recorded while ``always_record_errors`` is true).
    ``route_resolver``: a function of the scope after the request, for
    routers this middleware does not know; None falls back to the built-in
    rules (:func:`route_template`).
    """

    def __init__(
        self,
        app: ASGIApp,
        client: Client,
        *,
        event_type: str = HTTP_EVENT_TYPE,
        exclude_paths: Iterable[str] = DEFAULT_EXCLUDED_PATHS,
        exclude_routes: Iterable[str] = (),
        sample_rate: float = 1.0,
        always_record_errors: bool = True,
        unmatched_route: str = UNMATCHED_ROUTE,
        route_resolver: RouteResolver | None = None,
    ) -> None:
        self.app = app
        self.recorder = RequestRecorder(
            client,
            event_type=event_type,
            exclude_paths=exclude_paths,
            exclude_routes=exclude_routes,
            sample_rate=sample_rate,
            always_record_errors=always_record_errors,
            unmatched_route=unmatched_route,
        )
        self.route_resolver = route_resolver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.recorder.excluded_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        sampled = self.recorder.sampled()
        if not sampled and not self.recorder.always_record_errors:
            await self.app(scope, receive, send)
            return
        root_path_before = scope.get("root_path", "")
        status = 500  # what the client gets if the app raises before it answers

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            elapsed = time.perf_counter() - started
            if self.recorder.wants(sampled, status):
                self._record(scope, root_path_before, status, elapsed)

    def _record(self, scope: Scope, root_path_before: str, status: int, elapsed: float) -> None:
        try:
            if self.route_resolver is not None:
                route = self.route_resolver(scope)
            else:
                route = route_template(scope, root_path_before)
            self.recorder.record(str(scope.get("method", "")), route, status, elapsed)
        except Exception:  # observing a request must never break it
            logger.debug("sidewire: could not record a request", exc_info=True)


def sidewire_lifespan(
    client: Client,
    lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
    *,
    close_timeout: float = 5.0,
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """A lifespan that closes the client at shutdown (sending what is queued).

    ``FastAPI(lifespan=sidewire_lifespan(sw))``, or wrap the app's own
    lifespan: ``sidewire_lifespan(sw, my_lifespan)``. The client is closed
    after the wrapped lifespan's shutdown, so events it emits still go out.
    """

    @asynccontextmanager
    async def lifespan_with_client(app: Any) -> AsyncIterator[Any]:
        try:
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state
        finally:
            await client.aclose(close_timeout)

    return lifespan_with_client
