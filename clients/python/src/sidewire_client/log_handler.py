"""A ``logging.Handler`` that sends WARNING and worse records to sidewire as ``error`` events.

::

    logging.getLogger().addHandler(SidewireLogHandler(sw))

Records of the client's own logger (``sidewire_client``) are never sent:
the client logs when the sidecar is unreachable, and sending those lines to
the unreachable sidecar would feed on itself. A per-thread guard also stops
any record logged *while* a record is being sent.
"""

from __future__ import annotations

import logging
import threading
import traceback

from ._client import Client

__all__ = ["SidewireLogHandler"]

_OWN_LOGGER = "sidewire_client"


class SidewireLogHandler(logging.Handler):
    """Turns log records (WARNING and above by default) into events.

    Each event's ``data``: ``message`` (the formatted message, truncated to
    ``max_message_chars``), ``component`` (the logger name), ``level``,
    ``location`` (``module:line``) and, when the record carries an
    exception, ``exception`` (``Type: text``) and ``traceback`` (its last
    ``max_traceback_chars`` characters). The event's timestamp is the
    record's creation time.
    """

    def __init__(
        self,
        client: Client,
        level: int = logging.WARNING,
        *,
        event_type: str = "error",
        max_message_chars: int = 4000,
        max_traceback_chars: int = 8000,
    ) -> None:
        super().__init__(level)
        self.client = client
        self.event_type = event_type
        self.max_message_chars = max_message_chars
        self.max_traceback_chars = max_traceback_chars
        self._guard = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == _OWN_LOGGER or record.name.startswith(_OWN_LOGGER + "."):
            return
        if getattr(self._guard, "active", False):
            return
        self._guard.active = True
        try:
            data: dict[str, object] = {
                "message": record.getMessage()[: self.max_message_chars],
                "component": record.name,
                "level": record.levelname,
                "location": f"{record.module}:{record.lineno}",
            }
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                data["exception"] = f"{exc.__class__.__name__}: {exc}"[: self.max_message_chars]
                text = "".join(traceback.format_exception(exc))
                data["traceback"] = text[-self.max_traceback_chars :]
            self.client.emit(self.event_type, data, timestamp=record.created)
        except Exception:
            self.handleError(record)
        finally:
            self._guard.active = False
