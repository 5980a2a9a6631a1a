"""The client against the real sidewire release binary (see conftest.py for how it is found)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

from conftest import Sidewire, wait_until
from sidewire_client import Client

FAST_RETRY: dict[str, Any] = {"backoff_base": 0.05, "backoff_max": 0.3, "flush_interval": 0.05}


def test_events_arrive_with_their_seqs_in_emit_order(sidewire: Sidewire) -> None:
    client = Client(sidewire.url, source="backend-1", **FAST_RETRY)
    try:
        ids = []
        for i in range(300):
            event_id = f"evt-{i}"
            ids.append(event_id)
            assert client.emit("query_complete", {"n": i, "latencyMs": 12.5}, id=event_id)
        assert client.flush(10)
    finally:
        client.close(2)
    events = sidewire.events("query_complete")
    assert [e["id"] for e in events] == ids
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 300 and seqs[0] >= 1
    assert all(e["source"] == "backend-1" for e in events)
    assert all(e["timestamp"].endswith("Z") and len(e["timestamp"]) == 24 for e in events)
    assert [e["data"]["n"] for e in events] == list(range(300))
    assert client.stats.sent == 300 and client.stats.duplicates == 0
    assert sidewire.stats()["queriesCompleted"] == 300


def test_helpers_move_the_default_counters_and_gauges(sidewire: Sidewire) -> None:
    with Client(sidewire.url, **FAST_RETRY) as client:
        assert client.ingestion_complete("report.pdf", nodes_created=12, duration_ms=840)
        assert client.ingestion_complete("batch.zip", filesProcessed=5)
        assert client.query_complete("what is sidewire?", latency_ms=321)
        assert client.error("index unavailable", component="search", code="E42")
        assert client.gauge(totalNodes=45, queueDepth=3)
        assert client.flush(10)
    stats = sidewire.stats()
    assert (stats["filesProcessed"], stats["queriesCompleted"], stats["errors"]) == (6, 1, 1)
    assert (stats["totalNodes"], stats["queueDepth"]) == (45, 3)
    (ingest, _) = sidewire.events("ingestion_complete")
    assert ingest["data"] == {"file": "report.pdf", "nodesCreated": 12, "durationMs": 840}
    (error,) = sidewire.events("error")
    assert error["data"] == {"message": "index unavailable", "component": "search", "code": "E42"}


class ResponseDroppingProxy:
    """A loopback TCP proxy that forwards requests but can swallow the server's answer.

    With ``drop_answers`` set, the connection is closed right after the
    server's answer arrived, without passing it on: the client cannot know
    its batch was stored, exactly as when a response is lost on the way.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.drop_answers = threading.Event()
        self.answers_dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except OSError:
            client.close()
            return
        client.settimeout(10)

        def pump_requests() -> None:
            try:
                while data := client.recv(65536):
                    upstream.sendall(data)
            except OSError:
                pass
            finally:
                upstream.close()

        threading.Thread(target=pump_requests, daemon=True).start()
        try:
            while data := upstream.recv(65536):
                if self.drop_answers.is_set():
                    self.answers_dropped += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown() before close(): the other thread is blocked in recv on
            # these sockets, and close() alone would not send the FIN until it returns.
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.listener.close()


def test_a_retry_after_a_lost_answer_and_a_server_restart_is_not_doubled(sidewire: Sidewire) -> None:
    proxy = ResponseDroppingProxy(sidewire.port)
    client = Client(f"http://127.0.0.1:{proxy.port}", **FAST_RETRY)
    try:
        proxy.drop_answers.set()
        for i in range(50):
            client.emit("query_complete", {"n": i})
        # The server stores the batch; its answer is lost, so the client keeps it and retries.
        wait_until(lambda: sidewire.stats()["eventsTotal"] == 50, 10, what="the first delivery")
        wait_until(lambda: client.stats.retried >= 1, 10, what="a retry")
        sidewire.kill()
        sidewire.start()  # same store, same port
        proxy.drop_answers.clear()
        assert client.flush(15)
    finally:
        client.close(2)
        proxy.close()
    stats = client.stats
    assert (stats.sent, stats.duplicates, stats.dropped) == (50, 50, 0)
    assert sidewire.stats()["eventsTotal"] == 50
    assert len(sidewire.events("query_complete")) == 50


def test_events_emitted_while_the_server_is_killed_are_delivered_when_it_returns(sidewire: Sidewire) -> None:
    client = Client(sidewire.url, **FAST_RETRY)
    try:
        client.emit("query_complete", {"n": -1})
        assert client.flush(10)
        sidewire.kill()
        for i in range(200):
            assert client.emit("query_complete", {"n": i})
        wait_until(lambda: client.stats.retried >= 2, 10, what="failed attempts while the server is down")
        assert client.flush(0.2) is False
        assert client.stats.queued == 200
        sidewire.start()
        assert client.flush(15)
    finally:
        client.close(2)
    events = sidewire.events("query_complete")
    assert [e["data"]["n"] for e in events] == list(range(-1, 200))
    assert client.stats.dropped == 0


def test_a_wrong_token_drops_the_batch_and_logs_once(sidewire_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    server: Sidewire = sidewire_factory({"auth": {"ingest_tokens": ["s3cret"]}})
    wrong = Client(server.url, token="wrong", **FAST_RETRY)
    right = Client(server.url, token="s3cret", **FAST_RETRY)
    try:
        with caplog.at_level(logging.WARNING, logger="sidewire_client"):
            for i in range(3):
                wrong.emit("query_complete", {"n": i})
                assert wrong.flush(10)
        right.emit("query_complete", {"n": 99})
        assert right.flush(10)
    finally:
        wrong.close(1)
        right.close(1)
    assert wrong.stats.dropped_by_reason["unauthorized"] == 3
    assert wrong.stats.retried == 0
    assert len([r for r in caplog.records if "answered 401" in r.getMessage()]) == 1
    assert [e["data"]["n"] for e in server.events("query_complete")] == [99]


def test_413_from_the_server_splits_batches_and_drops_what_can_never_fit(sidewire_factory: Any) -> None:
    server: Sidewire = sidewire_factory({"ingest": {"max_batch": 10, "max_body_bytes": 8192}})
    client = Client(server.url, flush_at=1000, **FAST_RETRY)
    try:
        for i in range(35):
            client.emit("query_complete", {"n": i})
        client.emit("query_complete", {"n": "huge", "pad": "x" * 10_000})  # alone over 8 KiB
        client.emit("query_complete", {"n": 35})
        assert client.flush(15)
    finally:
        client.close(2)
    assert [e["data"]["n"] for e in server.events("query_complete")] == list(range(36))
    stats = client.stats
    assert (stats.sent, stats.dropped, stats.dropped_by_reason["too_large"]) == (36, 1, 1)


def test_an_event_the_server_refuses_is_dropped_alone(sidewire: Sidewire) -> None:
    client = Client(sidewire.url, flush_at=1000, **FAST_RETRY)
    try:
        client.emit("query_complete", {"n": 0})
        client.gauge(eventsTotal=5)  # a built-in stat: 400 reserved_stat, index 1
        client.emit("query_complete", {"n": 1})
        assert client.flush(10)
    finally:
        client.close(2)
    assert [e["data"]["n"] for e in sidewire.events("query_complete")] == [0, 1]
    assert client.stats.dropped_by_reason["rejected"] == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Forking a process whose sender thread runs is the point (gunicorn --preload
# after an emit at import time); Python >= 3.12 warns about exactly that.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_its_own_sender_and_delivers(sidewire: Sidewire) -> None:
    client = Client(sidewire.url, **FAST_RETRY)
    try:
        client.emit("query_complete", {"who": "parent", "n": 0})
        assert client.flush(10)  # the parent's sender thread is running
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child (gunicorn --preload style): same Client object
            ok = False
            try:
                for i in range(20):
                    client.emit("query_complete", {"who": "child", "n": i})
                ok = client.flush(10) and client.stats.sent == 20
                os.write(write_end, json.dumps(client.stats.sent).encode())
            finally:
                os._exit(0 if ok else 1)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        child_sent = os.read(read_end, 100)
        os.close(read_end)
        assert os.waitstatus_to_exitcode(status) == 0, child_sent
        client.emit("query_complete", {"who": "parent", "n": 1})
        assert client.flush(10)
    finally:
        client.close(2)
    events = sidewire.events("query_complete")
    assert [e["data"]["n"] for e in events if e["data"]["who"] == "child"] == list(range(20))
    assert [e["data"]["n"] for e in events if e["data"]["who"] == "parent"] == [0, 1]
    assert len({e["id"] for e in events}) == 22  # the child did not reuse the parent's ids
    assert client.stats.sent == 2  # the parent's counters are its own


def test_the_cli_emits_one_event_and_prints_its_seq(sidewire: Sidewire) -> None:
    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sidewire_client", "emit", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, **env},
        )

    ok = cli(
        "--type",
        "ingestion_complete",
        "--data",
        '{"file": "a.pdf"}',
        "--id",
        "cli-1",
        "--source",
        "sh",
        SIDEWIRE_URL=sidewire.url,
    )
    assert ok.returncode == 0, ok.stderr
    seq = int(ok.stdout.strip())
    (event,) = sidewire.events("ingestion_complete")
    assert (event["seq"], event["id"], event["source"], event["data"]) == (seq, "cli-1", "sh", {"file": "a.pdf"})

    invalid = cli("--type", "Bad", "--url", sidewire.url)
    assert invalid.returncode == 2 and "type" in invalid.stderr

    refused = cli("--type", "stats_update", "--data", '{"lastSeq": 1}', "--url", sidewire.url)
    assert refused.returncode == 1 and "reserved_stat" in refused.stderr

    sidewire.kill()
    unreachable = cli("--type", "query_complete", "--url", sidewire.url)
    assert unreachable.returncode == 3 and "could not reach" in unreachable.stderr
