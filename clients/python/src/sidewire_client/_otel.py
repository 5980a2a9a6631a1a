"""W3C ``traceparent`` from the current OpenTelemetry span, when OpenTelemetry is installed.

The dependency is optional: without ``opentelemetry`` importable,
:func:`traceparent_getter` returns ``None`` and the client sends no header.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def traceparent_getter() -> Callable[[], str | None] | None:
    """A function that formats the current span as ``traceparent``, or None without OpenTelemetry."""
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional dependency, imported only when wanted
    except ImportError:
        return None

    get_current_span: Callable[[], Any] = trace.get_current_span

    def current_traceparent() -> str | None:
        try:
            context = get_current_span().get_span_context()
            if not context.is_valid:
                return None
            return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
        except Exception:  # the client never raises into the host app
            return None

    return current_traceparent
