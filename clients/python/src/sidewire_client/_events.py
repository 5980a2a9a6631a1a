"""Event validation and serialization, following the wire contract (section 1).

Everything here runs inside ``Client.emit`` on the caller's thread, so it is
written for speed: one JSON encoding of ``data`` (reused for the size check
and for the wire), cheap checks first, the expensive depth walk only when a
cheap bound cannot rule it out.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from base64 import b32encode
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

#: ``type`` must match this (contract section 1).
TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
#: Types only the server sends; the server refuses them from a client.
RESERVED_TYPES = frozenset({"connection_ack", "pong", "resume_complete"})
#: Names of gauges in a ``stats_update`` event's ``data``.
STAT_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
#: Serialized ``data`` may be at most this many bytes.
MAX_DATA_BYTES = 64 * 1024
#: ``data`` may nest objects/arrays at most this deep (``data`` is level 1).
MAX_DATA_DEPTH = 32
MAX_ID_LEN = 128
MAX_SOURCE_LEN = 64

# RFC 3339 date-time, as chrono's parse_from_rfc3339 accepts it (T, t or a
# space between date and time; Z, z or a numeric offset).
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


class InvalidEventError(ValueError):
    """An event breaks a rule of the wire contract; the message says which."""


def is_printable_ascii(value: str, max_len: int) -> bool:
    """1..max_len characters in 0x21-0x7E (printable ASCII without space)."""
    return 0 < len(value) <= max_len and value.isascii() and value.isprintable() and " " not in value


def check_type(event_type: object) -> str:
    """Return ``event_type`` if the contract allows a client to send it."""
    if not isinstance(event_type, str):
        raise InvalidEventError(f"field `type`: must be a string, got {type(event_type).__name__}")
    if TYPE_PATTERN.fullmatch(event_type) is None:
        raise InvalidEventError(f"field `type`: {event_type!r} must match ^[a-z][a-z0-9_.:-]{{0,63}}$")
    if event_type in RESERVED_TYPES:
        raise InvalidEventError(f"field `type`: {event_type!r} is sent by the server only")
    return event_type


def check_ascii_field(name: str, value: object, max_len: int) -> str:
    """Validate ``id``/``source``: 1..max_len printable ASCII characters."""
    if not isinstance(value, str) or not is_printable_ascii(value, max_len):
        raise InvalidEventError(f"field `{name}`: must be 1-{max_len} printable ASCII characters (0x21-0x7E)")
    return value


def data_depth(data: object) -> int:
    """Nesting depth of objects/arrays, counting ``data`` itself as level 1.

    Iterative, so a pathological input cannot hit Python's recursion limit.
    """
    deepest = 0
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DATA_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


class Encoder:
    """Serializes events to one compact JSON line each.

    One ``json.JSONEncoder`` instance is reused: ``json.dumps`` with keyword
    arguments builds a new encoder on every call, which costs more than the
    encoding of a small event.
    """

    def __init__(self, json_default: Callable[[Any], Any] | None = None) -> None:
        # check_circular=False: a cycle still fails (RecursionError, caught
        # below), and skipping the per-container id bookkeeping is measurably faster.
        self._encode = json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=json_default, check_circular=False
        ).encode

    def encode_data(self, data: Mapping[str, Any] | None) -> str:
        """The compact JSON of ``data``, checked against the size and depth limits."""
        if data is None:
            return "{}"
        if type(data) is not dict and not isinstance(data, Mapping):  # exact dict first: cheaper than the ABC check
            raise InvalidEventError(f"field `data`: must be a mapping, got {type(data).__name__}")
        try:
            text = self._encode(data)
        except (TypeError, ValueError) as exc:  # a value JSON cannot hold (NaN, a set, an object)
            raise InvalidEventError(f"field `data`: not serializable as JSON ({exc})") from exc
        except RecursionError as exc:
            raise InvalidEventError("field `data`: nested too deeply") from exc
        # ASCII text (the common case) is one byte per character; anything
        # else is measured in UTF-8, which also catches lone surrogates.
        if text.isascii():
            size = len(text)
        else:
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise InvalidEventError("field `data`: contains a lone surrogate (not UTF-8)") from exc
        if size > MAX_DATA_BYTES:
            raise InvalidEventError(f"field `data`: {size} bytes serialized, at most {MAX_DATA_BYTES}")
        # Each level of nesting needs an opening bracket in the text (brackets
        # inside strings only overcount), so a short count proves the depth
        # is fine without walking the object.
        if text.count("{") + text.count("[") > MAX_DATA_DEPTH:
            depth = data_depth(data)
            if depth > MAX_DATA_DEPTH:
                raise InvalidEventError(f"field `data`: nested {depth} levels deep, at most {MAX_DATA_DEPTH}")
        return text

    def encode_str(self, value: str) -> str:
        """A JSON string literal (for ids that may hold quotes or backslashes)."""
        return self._encode(value)


def format_timestamp(value: object) -> str:
    """Normalize a caller's timestamp to the server's form: UTC, milliseconds, ``Z``.

    Accepts an aware ``datetime`` (a naive one is taken as UTC, the way the
    server would read an offset-less time if it accepted one), seconds since
    the epoch as ``int``/``float``, or an RFC 3339 string.
    """
    if isinstance(value, datetime):
        moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidEventError(f"field `timestamp`: {value!r} is out of range") from exc
    elif isinstance(value, str):
        match = _RFC3339.fullmatch(value)
        if match is None:
            raise InvalidEventError(f"field `timestamp`: {value!r} is not RFC 3339")
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        micros = int(((fraction or ".0")[1:] + "000000")[:6])
        iso_offset = "+00:00" if offset in ("Z", "z") else offset
        try:
            moment = datetime.fromisoformat(
                f"{year}-{month}-{day}T{hour}:{minute}:{second}.{micros:06d}{iso_offset}"
            ).astimezone(UTC)
        except (ValueError, OverflowError) as exc:
            raise InvalidEventError(f"field `timestamp`: {value!r} is not a valid date-time") from exc
    else:
        raise InvalidEventError(
            f"field `timestamp`: must be a datetime, epoch seconds or an RFC 3339 string, got {type(value).__name__}"
        )
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# Cache of the second-resolution part of "now": strftime is the slow part,
# and it changes once a second. A (second, text) tuple is replaced whole, so
# concurrent readers see either the old or the new pair, never a mix.
_now_cache: tuple[int, str] = (-1, "")
# ".000Z" ... ".999Z": a list lookup is cheaper than formatting the milliseconds.
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def now_timestamp() -> str:
    """The current time as the server writes it: ``2025-12-31T20:00:00.000Z``."""
    global _now_cache  # noqa: PLW0603 - a deliberate process-wide cache
    now_ms = time.time_ns() // 1_000_000
    second = now_ms // 1000
    cached_second, prefix = _now_cache
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _now_cache = (second, prefix)
    return prefix + _MILLIS[now_ms - second * 1000]


class IdFactory:
    """Unique event ids: a random per-client prefix plus a counter.

    80 random bits make a collision between two clients (or two processes)
    negligible; the counter keeps ids within one client unique and costs far
    less than a ``uuid4`` per event. ``itertools.count`` is safe to share
    between threads in CPython (``next`` runs without releasing the GIL).
    After a fork the child must call :meth:`reseed`, otherwise parent and
    child would produce the same ids and the server would drop the child's
    events as duplicates.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = "sw-" + b32encode(os.urandom(10)).decode("ascii").lower() + "-"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return self.prefix + str(next(self._counter))


def check_gauges(data: Mapping[str, Any]) -> None:
    """A ``stats_update`` event's numeric fields set gauges: their names have a pattern."""
    for name, value in data.items():
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if is_number and (not isinstance(name, str) or STAT_NAME_PATTERN.fullmatch(name) is None):
            raise InvalidEventError(f"gauge `{name}` in `data` must match ^[A-Za-z][A-Za-z0-9_]{{0,63}}$")
