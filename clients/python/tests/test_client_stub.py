"""The sender's behaviour against a stub ingest hook: batching, timing, retries, refusals, bounds."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sidewire_client import Client
from stub_server import DROP, HANG, Reply, Request, StubServer, accept_all


def make_client(stub: StubServer, **options: Any) -> Client:
    settings: dict[str, Any] = {"source": "unit", "flush_interval": 0.05, "backoff_base": 0.02, "backoff_max": 0.2}
    settings.update(options)
    return Client(stub.url, **settings)


def error_reply(status: int, code: str, index: int | None = None, headers: dict[str, str] | None = None) -> Reply:
    body: dict[str, Any] = {"error": {"code": code, "message": f"stub says {code}"}}
    if index is not None:
        body["error"]["index"] = index
    return Reply(status, body, headers or {})


def test_batches_are_ndjson_with_the_contracts_fields(stub: StubServer) -> None:
    client = make_client(stub, flush_at=10, max_batch=10, token="t0k")
    try:
        for i in range(25):
            assert client.emit("query_complete", {"n": i})
        assert client.flush(5)
    finally:
        client.close(1)
    requests = stub.requests
    assert all(r.path == "/api/v1/ingest" for r in requests)
    assert all(r.headers["Content-Type"] == "application/x-ndjson" for r in requests)
    assert all(r.headers["Authorization"] == "Bearer t0k" for r in requests)
    assert all(len(r.events) <= 10 for r in requests)
    events = [e for r in requests for e in r.events]
    assert [e["data"]["n"] for e in events] == list(range(25))
    assert all(set(e) == {"type", "data", "timestamp", "id", "source"} for e in events)
    assert all(e["source"] == "unit" for e in events)
    assert len({e["id"] for e in events}) == 25
    # One kept-alive connection carried every batch.
    assert {r.connection for r in requests} == {requests[0].connection}
    assert client.stats.sent == 25


def test_flush_interval_sends_a_partial_batch_without_flush(stub: StubServer) -> None:
    client = make_client(stub, flush_at=1000, flush_interval=0.3)
    try:
        started = time.monotonic()
        client.emit("query_complete", {"n": 1})
        requests = stub.wait_for(lambda rs: len(rs) == 1, timeout=5)
        waited = requests[0].at - started
        assert 0.25 <= waited < 2.0, waited
    finally:
        client.close(1)


def test_retry_after_is_a_floor_and_the_retry_resends_the_same_ids(stub: StubServer) -> None:
    replies = iter([error_reply(503, "persist_unavailable", headers={"Retry-After": "1"})])
    stub.responder = lambda r: next(replies, None) or accept_all(r)
    client = make_client(stub, backoff_base=0.01, backoff_max=0.02)
    try:
        for i in range(3):
            client.emit("query_complete", {"n": i})
        assert client.flush(5)
    finally:
        client.close(1)
    first, second = stub.requests
    assert second.at - first.at >= 0.95, second.at - first.at
    assert first.ids == second.ids
    stats = client.stats
    assert (stats.sent, stats.retried, stats.dropped) == (3, 1, 0)


def test_a_timeout_is_retried_and_delivers(stub: StubServer) -> None:
    calls = []

    def responder(request: Request) -> Reply | str:
        calls.append(request)
        return HANG if len(calls) == 1 else accept_all(request)

    stub.responder = responder
    client = make_client(stub, timeout=0.3)
    try:
        client.emit("query_complete", {"n": 1})
        assert client.flush(5)
    finally:
        client.close(1)
    assert len(stub.requests) == 2
    assert stub.requests[0].ids == stub.requests[1].ids
    assert stub.requests[1].at - stub.requests[0].at >= 0.3
    assert client.stats.retried == 1


def test_no_busy_loop_while_the_server_keeps_failing(stub: StubServer) -> None:
    stub.responder = lambda r: error_reply(503, "persist_unavailable")
    client = make_client(stub, backoff_base=0.05, backoff_max=0.4)
    try:
        client.emit("query_complete")
        time.sleep(1.5)  # the quantity under test is the number of attempts in a span of time
        attempts = len(stub.requests)
    finally:
        client.close(0.1)
    # Delays are drawn from [c/2, c] with c = 0.05, 0.1, 0.2, 0.4, 0.4, ...:
    # 1.5 s holds at most ~9 attempts; a busy loop would make thousands.
    assert 3 <= attempts <= 10, attempts
    assert client.stats.retried >= attempts - 1


def test_server_errors_and_dropped_connections_are_retried(stub: StubServer) -> None:
    script: Iterator[Reply | str] = iter([error_reply(500, "internal"), DROP, error_reply(408, "request_timeout")])
    stub.responder = lambda r: next(script, None) or accept_all(r)
    client = make_client(stub)
    try:
        client.emit("query_complete", {"n": 1})
        assert client.flush(5)
    finally:
        client.close(1)
    assert len(stub.requests) == 4
    assert len({tuple(r.ids) for r in stub.requests}) == 1
    assert client.stats.sent == 1


def test_a_connection_closed_by_the_server_is_reopened_without_a_retry(stub: StubServer) -> None:
    def responder(request: Request) -> Reply:
        reply = accept_all(request)
        reply.close = True  # as if the server's idle timeout closed the kept-alive socket
        return reply

    stub.responder = responder
    client = make_client(stub, flush_at=1)
    try:
        for i in range(5):
            client.emit("query_complete", {"n": i})
            assert client.flush(5)
    finally:
        client.close(1)
    assert len(stub.requests) == 5
    assert client.stats.retried == 0
    assert len({r.connection for r in stub.requests}) == 5


def test_400_with_index_drops_that_event_and_sends_the_rest(stub: StubServer, caplog: pytest.LogCaptureFixture) -> None:
    def responder(request: Request) -> Reply:
        for index, event in enumerate(request.events):
            if event["data"].get("bad"):
                return error_reply(400, "reserved_stat", index=index)
        return accept_all(request)

    stub.responder = responder
    client = make_client(stub, flush_at=1000)
    try:
        with caplog.at_level(logging.WARNING, logger="sidewire_client"):
            for i in range(6):
                client.emit("query_complete", {"n": i, "bad": i in (2, 4)})
            assert client.flush(5)
    finally:
        client.close(1)
    delivered = [e["data"]["n"] for e in stub.requests[-1].events]
    assert delivered == [0, 1, 3, 5]
    assert len(stub.requests) == 3  # two refusals, then the rest in one go
    stats = client.stats
    assert (stats.sent, stats.dropped_by_reason["rejected"], stats.retried) == (4, 2, 0)
    rejected_logs = [r for r in caplog.records if "refused an event" in r.getMessage()]
    assert len(rejected_logs) == 1  # the same kind of refusal is logged once


def test_413_splits_the_batch_and_remembers_the_limit(stub: StubServer) -> None:
    stub.responder = lambda r: error_reply(413, "payload_too_large") if len(r.events) > 4 else accept_all(r)
    client = make_client(stub, flush_at=1000)
    try:
        for i in range(16):
            client.emit("query_complete", {"n": i})
        assert client.flush(5)
        sizes_first_round = [len(r.events) for r in stub.requests]
        for i in range(16, 24):
            client.emit("query_complete", {"n": i})
        assert client.flush(5)
    finally:
        client.close(1)
    assert sizes_first_round == [16, 8, 4, 4, 8, 4, 4]
    later = [len(r.events) for r in stub.requests[len(sizes_first_round) :]]
    assert later == [4, 4]  # no 413 any more: batches already fit
    assert [e["data"]["n"] for r in stub.requests if len(r.events) <= 4 for e in r.events] == list(range(24))
    assert client.stats.dropped == 0


def test_413_for_a_single_event_drops_it(stub: StubServer) -> None:
    stub.responder = lambda r: error_reply(413, "payload_too_large") if b"huge" in r.body else accept_all(r)
    client = make_client(stub, flush_at=1000)
    try:
        client.emit("query_complete", {"huge": "x" * 1000})
        client.emit("query_complete", {"small": 1})
        assert client.flush(5)
    finally:
        client.close(1)
    stats = client.stats
    assert (stats.sent, stats.dropped_by_reason["too_large"]) == (1, 1)


@pytest.mark.parametrize(
    ("status", "code", "reason"), [(401, "unauthorized", "unauthorized"), (415, "unsupported_media_type", "refused")]
)
def test_401_and_415_drop_the_batch_and_log_once(
    stub: StubServer, caplog: pytest.LogCaptureFixture, status: int, code: str, reason: str
) -> None:
    stub.responder = lambda r: error_reply(status, code)
    client = make_client(stub, flush_at=1)
    try:
        with caplog.at_level(logging.WARNING, logger="sidewire_client"):
            for i in range(3):
                client.emit("query_complete", {"n": i})
                assert client.flush(5)
    finally:
        client.close(1)
    assert len(stub.requests) == 3  # no retries: they would be refused again
    stats = client.stats
    assert (stats.sent, stats.retried, stats.dropped_by_reason[reason]) == (0, 0, 3)
    lines = [r.getMessage() for r in caplog.records if f"answered {status}" in r.getMessage()]
    assert len(lines) == 1, lines
    assert code in lines[0]


def test_full_queue_drops_the_oldest_and_counts_it(stub: StubServer) -> None:
    stub.responder = lambda r: HANG if r.events[0]["data"]["n"] == 0 else accept_all(r)
    client = make_client(stub, flush_at=1, max_queue=10, timeout=5)
    try:
        client.emit("query_complete", {"n": 0})
        stub.wait_for(lambda rs: len(rs) == 1)  # event 0 is in flight, the server does not answer
        for i in range(1, 31):
            assert client.emit("query_complete", {"n": i})  # queued; an older one makes room
        stats = client.stats
        assert stats.queued == 11  # 10 queued + 1 in flight
        assert stats.dropped_by_reason["queue_full"] == 20
        stub.responder = accept_all
        stub.release.set()
        assert client.flush(10)
    finally:
        client.close(1)
    delivered = [e["data"]["n"] for r in stub.requests[1:] for e in r.events]
    assert delivered == [0, *range(21, 31)]


def test_queue_is_bounded_in_bytes_too(stub: StubServer) -> None:
    stub.responder = lambda r: HANG
    client = make_client(stub, flush_at=1, max_queue=1000, max_queue_bytes=2000, timeout=5)
    try:
        client.emit("query_complete", {"pad": "x" * 100})
        stub.wait_for(lambda rs: len(rs) == 1)
        for _ in range(50):
            client.emit("query_complete", {"pad": "x" * 100})
        stats = client.stats
        # Each line is ~190 bytes: about 10 fit in 2000 bytes.
        assert 5 <= stats.queued - 1 <= 11
        assert stats.dropped_by_reason["queue_full"] == 50 - (stats.queued - 1)
    finally:
        stub.release.set()
        client.close(0.2)


def test_close_with_the_server_down_returns_in_time_and_counts_the_loss(stub: StubServer) -> None:
    stub.responder = lambda r: error_reply(503, "persist_unavailable", headers={"Retry-After": "30"})
    client = make_client(stub)
    for i in range(5):
        client.emit("query_complete", {"n": i})
    stub.wait_for(lambda rs: len(rs) >= 1)
    assert client.flush(0.2) is False  # the server is down: the events stay queued
    assert client.stats.queued == 5
    started = time.monotonic()
    assert client.close(0.5) is False
    assert time.monotonic() - started < 1.5
    stats = client.stats
    assert (stats.queued, stats.dropped_by_reason["shutdown"]) == (0, 5)
    # close() made one immediate last attempt despite the 30 s Retry-After.
    assert len(stub.requests) == 2


def test_close_sends_what_is_queued(stub: StubServer) -> None:
    client = make_client(stub, flush_at=1000, flush_interval=60)
    for i in range(7):
        client.emit("query_complete", {"n": i})
    assert client.close(5) is True
    assert len(stub.delivered_ids()) == 7
    assert client.emit("query_complete") is False


def test_traceparent_of_the_current_span_is_sent(stub: StubServer) -> None:
    trace = pytest.importorskip("opentelemetry.trace")
    context = trace.SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=trace.TraceFlags(1),
    )
    client = make_client(stub, flush_at=1000)
    try:
        with trace.use_span(trace.NonRecordingSpan(context)):
            client.emit("query_complete", {"n": 1})
        assert client.flush(5)
        client.emit("query_complete", {"n": 2})  # outside any span: no header
        assert client.flush(5)
    finally:
        client.close(1)
    assert stub.requests[0].headers["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert "traceparent" not in stub.requests[1].headers


def test_atexit_flushes_a_client_that_was_never_closed(stub: StubServer) -> None:
    script = textwrap.dedent(
        f"""
        from sidewire_client import Client
        client = Client({stub.url!r}, flush_at=1000, flush_interval=60)
        for i in range(3):
            client.emit("query_complete", {{"n": i}})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert len(stub.delivered_ids()) == 3


def test_atexit_does_not_hang_when_the_server_is_away() -> None:
    script = textwrap.dedent(
        """
        from sidewire_client import Client
        client = Client("http://127.0.0.1:9", atexit_timeout=0.5)
        client.emit("query_complete")
        """
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert time.monotonic() - started < 5


def test_emit_from_many_threads_loses_nothing(stub: StubServer) -> None:
    client = make_client(stub, flush_at=50)
    try:

        def worker(t: int) -> None:
            for i in range(500):
                client.emit("query_complete", {"t": t, "i": i})

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert client.flush(10)
    finally:
        client.close(1)
    events = [e for r in stub.requests for e in r.events]
    assert len(events) == 4000
    assert len({e["id"] for e in events}) == 4000
    for t in range(8):  # each thread's events in its order
        assert [e["data"]["i"] for e in events if e["data"]["t"] == t] == list(range(500))


def test_aflush_and_aclose_do_not_block_the_event_loop(stub: StubServer) -> None:
    import asyncio

    async def main() -> tuple[bool, bool, int]:
        client = make_client(stub, flush_at=1000, flush_interval=60)
        client.emit("query_complete")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        stub.responder = lambda r: error_reply(503, "persist_unavailable", headers={"Retry-After": "30"})
        flushed = await client.aflush(0.3)  # cannot finish: the server is down
        stub.responder = accept_all
        closed = await client.aclose(2)
        task.cancel()
        return flushed, closed, ticks

    flushed, closed, ticks = asyncio.run(main())
    assert flushed is False
    assert closed is True  # close() retried once at once and the server was back
    assert ticks >= 10  # the loop kept running while flush waited


def test_json_payload_of_an_event_is_what_the_caller_gave(stub: StubServer) -> None:
    client = make_client(stub)
    data = {"text": "naïve ünïcode ✓", "nested": {"list": [1, 2.5, None, True]}, "quote": '"\\'}
    try:
        client.emit("query_complete", data, id='id-"quoted"\\', timestamp="2025-12-31T15:00:00-05:00")
        assert client.flush(5)
    finally:
        client.close(1)
    (event,) = stub.requests[0].events
    assert event["data"] == data
    assert event["id"] == 'id-"quoted"\\'
    assert event["timestamp"] == "2025-12-31T20:00:00.000Z"
    json.loads(stub.requests[0].body)  # one event: the body is plain JSON too


def test_batches_respect_the_byte_limit(stub: StubServer) -> None:
    client = make_client(stub, flush_at=1000, max_batch_bytes=1000)
    try:
        for i in range(20):
            client.emit("query_complete", {"n": i, "pad": "x" * 100})
        assert client.flush(5)
    finally:
        client.close(1)
    assert all(len(r.body) <= 1000 for r in stub.requests)
    assert len(stub.requests) >= 4
    assert [e["data"]["n"] for r in stub.requests for e in r.events] == list(range(20))


def test_emit_survives_arguments_that_fail_even_to_be_described() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

        def __hash__(self) -> int:
            raise RuntimeError("no hash")

    client = Client("http://127.0.0.1:9")
    try:
        assert client.emit(Hostile()) is False  # type: ignore[arg-type]
        assert client.emit("ok", {"x": Hostile()}) is False
        assert client.stats.dropped_by_reason["invalid"] == 2
    finally:
        client.close(0.1)


def test_an_unexpected_error_in_the_sender_drops_the_batch_and_the_thread_carries_on(
    stub: StubServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(stub, flush_at=1000)
    real_post = client._transport.post
    calls = []

    def broken_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("a bug")
        return real_post(*args, **kwargs)

    client._transport.post = broken_once  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.ERROR, logger="sidewire_client"):
            client.emit("query_complete", {"n": 1})
            client.emit("query_complete", {"n": 2})
            assert client.flush(5)
        client.emit("query_complete", {"n": 3})
        assert client.flush(5)
    finally:
        client.close(1)
    stats = client.stats
    assert (stats.sent, stats.dropped_by_reason["error"], stats.queued) == (1, 2, 0)
    assert any("unexpected error" in r.getMessage() for r in caplog.records)
    assert [e["data"]["n"] for e in stub.requests[0].events] == [3]
