"""WSGI middleware for Flask, Django and any WSGI app: the same per-request event as the ASGI one.

Flask::

    app.wsgi_app = SidewireWSGIMiddleware(app.wsgi_app, sw)

Django (``wsgi.py``)::

    application = SidewireWSGIMiddleware(get_wsgi_application(), sw)

The event is emitted when the server closes the response iterable (PEP
3333), so the duration includes streaming the body and the status is known
even when ``start_response`` is called late, as generators do. The route is
resolved when the app calls ``start_response`` (while the framework's
request is still alive), else at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from ._client import Client, logger
from ._http_event import (
    DEFAULT_EXCLUDED_PATHS,
    HTTP_EVENT_TYPE,
    UNMATCHED_ROUTE,
    RequestRecorder,
    brace_params,
)

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
RouteResolver = Callable[[Environ], str | None]

__all__ = ["HTTP_EVENT_TYPE", "UNMATCHED_ROUTE", "SidewireWSGIMiddleware", "wsgi_route_template"]


def wsgi_route_template(environ: Environ) -> str | None:
    """The route template of a finished request, for Flask/Werkzeug and Django.

    * Flask (Werkzeug): the request object stores itself in
      ``environ["werkzeug.request"]`` and keeps the matched ``url_rule``;
      blueprint prefixes are part of the rule.
    * Django: when Django is loaded, the path is resolved again against the
      URLconf (``django.urls.resolve``), whose ``route`` joins ``include()``
      prefixes.

    Parameters are written ``{name}``. None when nothing matched.
    """
    request = environ.get("werkzeug.request")
    rule = getattr(getattr(request, "url_rule", None), "rule", None)
    if isinstance(rule, str):
        return str(environ.get("SCRIPT_NAME", "")) + brace_params(rule)
    if "django.urls" in sys.modules:
        return _django_route(environ)
    return None


def _django_route(environ: Environ) -> str | None:
    from django.urls import Resolver404, resolve  # noqa: PLC0415 - only when Django is loaded

    try:
        match = resolve(environ.get("PATH_INFO", "/") or "/")
    except Resolver404:
        return None
    route = getattr(match, "route", None)
    if not isinstance(route, str):  # "" is the root pattern, path("")
        return None
    return str(environ.get("SCRIPT_NAME", "")) + brace_params(route)


class SidewireWSGIMiddleware:
    """Records each request of a WSGI app as one event (see :mod:`sidewire_client.asgi` for the options)."""

    def __init__(
        self,
        app: WSGIApp,
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
        self.route_resolver = route_resolver or wsgi_route_template

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self.recorder.excluded_path(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        sampled = self.recorder.sampled()
        if not sampled and not self.recorder.always_record_errors:
            return self.app(environ, start_response)
        started = time.perf_counter()
        status = [500]
        # Resolved when the app starts its response: Flask clears
        # environ["werkzeug.request"] when its request context ends, which is
        # before the server iterates and closes the body.
        route: list[str | None] = [None]

        def start_and_watch(
            status_line: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            try:
                status[0] = int(status_line.split(" ", 1)[0])
            except ValueError:
                status[0] = 500
            route[0] = self._resolve(environ)
            if exc_info is None:
                return start_response(status_line, headers)
            return start_response(status_line, headers, exc_info)

        def finished() -> None:
            if self.recorder.wants(sampled, status[0]):
                elapsed = time.perf_counter() - started
                try:
                    self.recorder.record(
                        str(environ.get("REQUEST_METHOD", "")), route[0] or self._resolve(environ), status[0], elapsed
                    )
                except Exception:  # observing a request must never break it
                    logger.debug("sidewire: could not record a request", exc_info=True)

        try:
            result = self.app(environ, start_and_watch)
        except BaseException:
            status[0] = 500
            finished()
            raise
        return _ObservedBody(result, finished)

    def _resolve(self, environ: Environ) -> str | None:
        try:
            return self.route_resolver(environ)
        except Exception:  # a resolver bug must not break the request
            logger.debug("sidewire: could not resolve a route", exc_info=True)
            return None


class _ObservedBody:
    """Passes the app's response through and reports when the server closes it."""

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._body = body
        self._on_close: Callable[[], None] | None = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()
