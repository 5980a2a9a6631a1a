"""What the ASGI and WSGI middleware share: the per-request event and its options.

One event per HTTP request, type ``http_request`` by default::

    {"method": "GET", "route": "/items/{item_id}", "status": 200, "durationMs": 3.417}

``route`` is the route *template*, never the raw path, so a dashboard can
group by it and the number of distinct values stays bounded; requests that
matched no route all share :data:`UNMATCHED_ROUTE`. Bodies, query strings and
headers are never recorded. With sampling, ``sampleRate`` is added so counts
can be scaled back up.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from ._client import Client

#: Default event type of the middleware's per-request event.
HTTP_EVENT_TYPE = "http_request"
#: ``route`` of requests that matched no route (404s from the router, scanners...).
UNMATCHED_ROUTE = "<unmatched>"
#: Paths excluded by default: probes and scrapes would drown the real traffic.
DEFAULT_EXCLUDED_PATHS: tuple[str, ...] = ("/healthz", "/readyz", "/livez", "/metrics", "/favicon.ico")


class RequestRecorder:
    """Decides which requests to record and emits their events."""

    def __init__(
        self,
        client: Client,
        *,
        event_type: str = HTTP_EVENT_TYPE,
        exclude_paths: Iterable[str] = DEFAULT_EXCLUDED_PATHS,
        exclude_routes: Iterable[str] = (),
        sample_rate: float = 1.0,
        always_record_errors: bool = True,
        unmatched_route: str = UNMATCHED_ROUTE,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError("sample_rate must be between 0 and 1")
        self.client = client
        self.event_type = event_type
        paths = tuple(exclude_paths)
        # An entry ending in "/" excludes everything under it ("/static/").
        self._exact = frozenset(p for p in paths if not p.endswith("/"))
        self._prefixes = tuple(p for p in paths if p.endswith("/"))
        self._excluded_routes = frozenset(exclude_routes)
        self.sample_rate = sample_rate
        self.always_record_errors = always_record_errors
        self.unmatched_route = unmatched_route

    def excluded_path(self, path: str) -> bool:
        return path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))

    def sampled(self) -> bool:
        """Whether this request is in the sample (decided before it runs)."""
        return self.sample_rate >= 1.0 or random.random() < self.sample_rate

    def wants(self, sampled: bool, status: int) -> bool:
        """Record a request that is in the sample, and server errors always (when so configured)."""
        return sampled or (self.always_record_errors and status >= 500)

    def record(self, method: str, route: str | None, status: int, seconds: float) -> None:
        """Emit the request's event (never raises: ``Client.emit`` does not)."""
        route = route or self.unmatched_route
        if route in self._excluded_routes:
            return
        data: dict[str, object] = {
            "method": method,
            "route": route,
            "status": status,
            "durationMs": round(seconds * 1000.0, 3),
        }
        if self.sample_rate < 1.0:
            data["sampleRate"] = self.sample_rate
        self.client.emit(self.event_type, data)


_FLASK_PARAM = re.compile(r"<(?:[a-zA-Z_][a-zA-Z0-9_]*(?:\([^)]*\))?:)?([a-zA-Z_][a-zA-Z0-9_]*)>")


def brace_params(rule: str) -> str:
    """Write Flask/Werkzeug and Django route parameters the way ASGI routers do.

    ``/items/<int:item_id>`` and ``items/<int:item_id>`` both become
    ``/items/{item_id}``, so one dashboard groups routes of every framework
    the same way.
    """
    converted = _FLASK_PARAM.sub(r"{\1}", rule)
    return converted if converted.startswith("/") else "/" + converted
