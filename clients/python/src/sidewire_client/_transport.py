"""One kept-alive HTTP/1.1 connection to the ingest hook, and what its answers mean.

The sender thread is the only user of a :class:`Transport`, so nothing here
is locked. Every outcome of a request (an answer, a refused connection, a
timeout) becomes a :class:`Response` or an exception the caller classifies;
nothing here retries except the one case that is never the server's fault: a
kept-alive connection that the server closed while it sat idle.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ._version import __version__

INGEST_PATH = "/api/v1/ingest"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the ingest hook is: scheme, host, port and the full path."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Accept the sidecar's base URL (``http://127.0.0.1:8790``) or the full ingest URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"sidewire URL must be http(s)://host[:port][/prefix], got {url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"sidewire URL must not have a query or fragment: {url!r}")
        path = parts.path.rstrip("/")
        if not path.endswith(INGEST_PATH):
            path += INGEST_PATH
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, path)


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed answer of the ingest hook."""

    status: int
    body: dict[str, Any]
    retry_after: float | None

    @property
    def error_code(self) -> str | None:
        error = self.body.get("error")
        return error.get("code") if isinstance(error, dict) else None

    @property
    def error_message(self) -> str:
        error = self.body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        return f"HTTP {self.status}"

    @property
    def error_index(self) -> int | None:
        """The 0-based index of the event to blame, when the server named one."""
        error = self.body.get("error")
        index = error.get("index") if isinstance(error, dict) else None
        return index if isinstance(index, int) and not isinstance(index, bool) else None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


class Transport:
    """A reusable connection to the ingest hook, reopened when it goes stale.

    ``idle_reconnect`` should stay below the server's ``server.idle_timeout_secs``
    (10 s by default): reconnecting ourselves after an idle spell avoids the
    race where the server closes the socket just as a batch is written to it.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        token: str | None,
        timeout: float,
        idle_reconnect: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.idle_reconnect = idle_reconnect
        self._ssl_context = ssl_context
        self._conn: http.client.HTTPConnection | None = None
        self._requests_on_conn = 0
        self._last_used = 0.0
        self._headers = {
            "User-Agent": f"sidewire-client-python/{__version__}",
            "Accept": "application/json",
        }
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        now = time.monotonic()
        if self._conn is not None and now - self._last_used > self.idle_reconnect:
            self.close()
        if self._conn is None:
            if self.endpoint.scheme == "https":
                self._conn = http.client.HTTPSConnection(
                    self.endpoint.host, self.endpoint.port, timeout=timeout, context=self._ssl_context
                )
            else:
                self._conn = http.client.HTTPConnection(self.endpoint.host, self.endpoint.port, timeout=timeout)
            self._requests_on_conn = 0
        else:
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
        return self._conn

    def post(
        self,
        body: bytes,
        content_type: str = "application/x-ndjson",
        *,
        traceparent: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        """POST ``body`` to the ingest hook; raise ``OSError``/``HTTPException`` when no answer came.

        A request on a kept-alive connection that fails before any answer is
        retried once on a fresh connection: the server may have closed the
        idle socket. That is safe because ingest is idempotent by ``id``.
        A timeout is not retried here: the server may just be slow, and the
        caller's backoff is the right answer to that.
        """
        headers = dict(self._headers)
        headers["Content-Type"] = content_type
        if traceparent:
            headers["traceparent"] = traceparent
        effective_timeout = self.timeout if timeout is None else timeout
        for attempt in (1, 2):
            conn = self._connection(effective_timeout)
            reused = self._requests_on_conn > 0
            try:
                conn.request("POST", self.endpoint.path, body=body, headers=headers)
                raw = conn.getresponse()
                payload = raw.read()
            except TimeoutError:
                self.close()
                raise
            except (OSError, http.client.HTTPException):
                self.close()
                if reused and attempt == 1:
                    continue
                raise
            self._requests_on_conn += 1
            self._last_used = time.monotonic()
            if raw.will_close:
                self.close()
            try:
                parsed = json.loads(payload) if payload else {}
            except ValueError:
                parsed = {}
            return Response(
                status=raw.status,
                body=parsed if isinstance(parsed, dict) else {},
                retry_after=parse_retry_after(raw.getheader("Retry-After")),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None
        self._requests_on_conn = 0

    def forget(self) -> None:
        """Drop the connection without touching its socket (a forked child must not use the parent's)."""
        self._conn = None
        self._requests_on_conn = 0
