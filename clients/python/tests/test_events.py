"""The contract's event rules as the client applies them before queueing (section 1)."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from sidewire_client import Client
from sidewire_client._events import (
    MAX_DATA_BYTES,
    Encoder,
    IdFactory,
    InvalidEventError,
    check_ascii_field,
    check_gauges,
    check_type,
    data_depth,
    format_timestamp,
    now_timestamp,
)

WIRE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def nested(levels: int) -> dict[str, Any]:
    """``data`` with exactly ``levels`` levels (data itself is level 1)."""
    data: dict[str, Any] = {}
    inner = data
    for _ in range(levels - 1):
        child: dict[str, Any] = {}
        inner["a"] = child
        inner = child
    return data


@pytest.mark.parametrize("good", ["a", "ingestion_complete", "a.b:c-d_9", "a" * 64])
def test_type_pattern_accepts(good: str) -> None:
    assert check_type(good) == good


@pytest.mark.parametrize("bad", ["", "A", "9a", "a b", "a" * 65, "é", "connection_ack", "pong", "resume_complete"])
def test_type_pattern_and_reserved_types_refused(bad: str) -> None:
    with pytest.raises(InvalidEventError):
        check_type(bad)


def test_data_size_limit_is_in_utf8_bytes() -> None:
    enc = Encoder()
    overhead = len('{"s":""}')
    assert len(enc.encode_data({"s": "x" * (MAX_DATA_BYTES - overhead)}).encode()) == MAX_DATA_BYTES
    with pytest.raises(InvalidEventError, match="65537 bytes"):
        enc.encode_data({"s": "x" * (MAX_DATA_BYTES - overhead + 1)})
    # Two bytes per character in UTF-8: half as many characters hit the limit.
    with pytest.raises(InvalidEventError, match="bytes serialized"):
        enc.encode_data({"s": "é" * (MAX_DATA_BYTES // 2)})


def test_depth_limit_counts_data_as_level_one() -> None:
    enc = Encoder()
    enc.encode_data(nested(32))
    with pytest.raises(InvalidEventError, match="33 levels"):
        enc.encode_data(nested(33))
    arrays: dict[str, Any] = {"a": [[[[]]]]}
    assert data_depth(arrays) == 5
    # Brackets inside strings are not nesting.
    enc.encode_data({"s": "{[" * 100})


@pytest.mark.parametrize(
    "bad",
    [
        {"x": math.nan},
        {"x": math.inf},
        {"x": {1, 2}},
        {"x": object()},
        {"x": "\ud800"},
        ["not", "a", "mapping"],
        "text",
    ],
)
def test_data_that_is_not_a_json_object_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidEventError):
        Encoder().encode_data(bad)


def test_json_default_hook_serializes_custom_values() -> None:
    enc = Encoder(json_default=str)
    assert json.loads(enc.encode_data({"when": datetime(2025, 1, 2, tzinfo=UTC)})) == {
        "when": "2025-01-02 00:00:00+00:00"
    }


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a", True),
        ("x" * 128, True),
        ("", False),
        ("a b", False),
        ("x" * 129, False),
        ("é", False),
        ("a\tb", False),
        ("~!", True),
    ],
)
def test_id_is_printable_ascii(value: str, ok: bool) -> None:
    if ok:
        assert check_ascii_field("id", value, 128) == value
    else:
        with pytest.raises(InvalidEventError):
            check_ascii_field("id", value, 128)


@pytest.mark.parametrize(
    ("given", "wire"),
    [
        (datetime(2025, 12, 31, 20, 0, 0, 123456, tzinfo=UTC), "2025-12-31T20:00:00.123Z"),
        (datetime(2025, 12, 31, 22, 0, tzinfo=timezone(timedelta(hours=2))), "2025-12-31T20:00:00.000Z"),
        (datetime(2025, 12, 31, 20, 0), "2025-12-31T20:00:00.000Z"),  # naive: taken as UTC
        (1767211200.5, "2025-12-31T20:00:00.500Z"),
        (1767211200, "2025-12-31T20:00:00.000Z"),
        ("2025-12-31T15:00:00-05:00", "2025-12-31T20:00:00.000Z"),
        ("2025-12-31t20:00:00.98765z", "2025-12-31T20:00:00.987Z"),
        ("2025-12-31 20:00:00Z", "2025-12-31T20:00:00.000Z"),
    ],
)
def test_timestamps_normalize_to_utc_milliseconds(given: Any, wire: str) -> None:
    assert format_timestamp(given) == wire


@pytest.mark.parametrize("bad", ["2025-12-31", "2025-13-01T00:00:00Z", "yesterday", "2025-12-31T20:00:00", True, None])
def test_bad_timestamps_are_refused(bad: Any) -> None:
    with pytest.raises(InvalidEventError):
        format_timestamp(bad)


def test_now_timestamp_is_the_servers_form_and_current() -> None:
    stamp = now_timestamp()
    assert WIRE_TIME.fullmatch(stamp)
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 2


def test_ids_are_unique_and_reseeding_changes_the_prefix() -> None:
    ids = IdFactory()
    seen = {ids.next() for _ in range(10_000)}
    assert len(seen) == 10_000
    assert all(check_ascii_field("id", i, 128) for i in list(seen)[:10])
    prefix = ids.prefix
    ids.reseed()
    assert ids.prefix != prefix
    assert IdFactory().prefix != ids.prefix


def test_gauge_names_follow_the_stat_pattern() -> None:
    check_gauges({"totalNodes": 4, "label": "not a gauge", "_private": "text is ignored", "flag": True})
    with pytest.raises(InvalidEventError):
        check_gauges({"_bad": 1})
    with pytest.raises(InvalidEventError):
        check_gauges({"with space": 1.5})


def test_emit_never_raises_and_counts_what_it_drops() -> None:
    client = Client("http://127.0.0.1:9", source="unit")  # nothing listens on the discard port
    try:
        weird: list[tuple[Any, Any, dict[str, Any]]] = [
            ("Bad Type", {}, {}),
            (None, {}, {}),
            ("ok", {"x": object()}, {}),
            ("ok", nested(40), {}),
            ("ok", {}, {"id": "has space"}),
            ("ok", {}, {"timestamp": "noon"}),
            ("ok", 42, {}),
            ("stats_update", {"_bad": 1}, {}),
            ("pong", {}, {}),
        ]
        for event_type, data, extra in weird:
            assert client.emit(event_type, data, **extra) is False
        stats = client.stats
        assert stats.dropped == len(weird)
        assert stats.dropped_by_reason["invalid"] == len(weird)
        assert stats.queued == 0
    finally:
        client.close(0.1)
    assert client.emit("ok") is False
    assert client.stats.dropped_by_reason["closed"] == 1


def test_constructor_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="source"):
        Client("http://127.0.0.1:9", source="two words")
    with pytest.raises(ValueError, match="URL"):
        Client("ftp://example")
    with pytest.raises(ValueError, match="flush_at"):
        Client("http://127.0.0.1:9", flush_at=0)
