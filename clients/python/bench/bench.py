"""Benchmarks of sidewire-client (not tests: the figures go to BENCHMARKS.md).

    python bench/bench.py emit-latency [--events 100000]
        emit() per-call latency while the server is down (a refused port):
        the application's cost of one event when the sidecar is away.

    python bench/bench.py ceiling [--events 300000] [--without-ids]
        the same events as pre-built NDJSON bodies over one connection: what
        the server alone reaches on this machine (the client cannot beat it).

    python bench/bench.py throughput [--events 300000] [--runs 3] [--plugin sqlite|memory] [--bin PATH | --url URL]
        events/s from one process into a real sidewire (started from
        $SIDEWIRE_BIN or target/release/sidewire on a free loopback port with
        a temporary SQLite store, durable acks), counted from the first
        emit() until flush() returned, and checked against the server's
        eventsTotal.

Every loop is bounded by an event count and a time limit; only loopback
addresses are used.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sidewire_client import Client

REPO = Path(__file__).resolve().parents[3]
EVENT_DATA = {"query": "what changed in the Q3 report?", "latencyMs": 842.0, "sources": 3, "tokens": 512}
TIME_LIMIT = 120.0  # seconds per run, whatever --events says


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(sorted_values: list[int], q: float) -> float:
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return float(sorted_values[index])


def environment() -> str:
    load = os.getloadavg()
    return (
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}"
    )


def emit_latency(events: int) -> dict[str, Any]:
    port = free_port()  # nothing listens there: every send attempt is refused
    client = Client(f"http://127.0.0.1:{port}", source="bench", log_interval=3600)
    try:
        for _ in range(1000):  # warm-up: first-call costs, thread start, type cache
            client.emit("query_complete", EVENT_DATA)
        timings: list[int] = []
        clock = time.perf_counter_ns
        deadline = time.monotonic() + TIME_LIMIT
        for _ in range(events):
            started = clock()
            client.emit("query_complete", EVENT_DATA)
            timings.append(clock() - started)
            if len(timings) % 10_000 == 0 and time.monotonic() > deadline:
                break
        stats = client.stats
    finally:
        client.close(0.1)
    timings.sort()
    return {
        "calls": len(timings),
        "p50_us": percentile(timings, 0.50) / 1000,
        "p90_us": percentile(timings, 0.90) / 1000,
        "p99_us": percentile(timings, 0.99) / 1000,
        "p999_us": percentile(timings, 0.999) / 1000,
        "max_us": timings[-1] / 1000,
        "mean_us": statistics.fmean(timings) / 1000,
        "queued_at_end": stats.queued,
        "dropped_oldest": stats.dropped_by_reason["queue_full"],
        "send_attempts_failed": stats.retried,
    }


class Server:
    def __init__(self, binary: Path, plugin: str = "sqlite") -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="sidewire-bench-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = Path(self.dir.name) / "sidewire.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.port}"\n'
            f'[persist]\nplugin = "{plugin}"\nsqlite_path = "{Path(self.dir.name) / "sidewire.db"}"\n'
            '[telemetry]\nlog_level = "warn"\n'
        )
        self.process = subprocess.Popen(
            [str(binary), "serve", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                if self.get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("sidewire did not start")
            time.sleep(0.02)

    def get(self, path: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the sidewire process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)
        self.dir.cleanup()


def throughput(events: int, url: str | None, binary: Path | None, plugin: str = "sqlite") -> dict[str, Any]:
    server = Server(binary, plugin) if url is None and binary is not None else None
    target = server.url if server is not None else url
    if target is None:
        raise SystemExit("throughput needs --url or a sidewire binary")
    try:
        before = Server.get(server, "/api/v1/stats")[1]["eventsTotal"] if server is not None else None
        # A queue that holds the whole run: the figure is the delivered rate of
        # a producer that outruns the sender, not how much a full queue drops.
        client = Client(target, source="bench", max_queue=events, max_queue_bytes=1024 * 1024 * 1024)
        deadline = time.monotonic() + TIME_LIMIT
        server_cpu_before = server.cpu_seconds() if server is not None else 0.0
        cpu_before = time.process_time()
        started = time.perf_counter()
        emitted = 0
        timings: list[int] = []
        clock = time.perf_counter_ns
        for _ in range(events):
            before_emit = clock()
            client.emit("query_complete", EVENT_DATA)
            timings.append(clock() - before_emit)
            emitted += 1
            if emitted % 10_000 == 0 and time.monotonic() > deadline:
                break
        emitted_at = time.perf_counter()
        delivered = client.flush(TIME_LIMIT)
        finished = time.perf_counter()
        client_cpu = time.process_time() - cpu_before
        server_cpu = (server.cpu_seconds() - server_cpu_before) if server is not None else 0.0
        stats = client.stats
        client.close(5)
        result: dict[str, Any] = {
            "events": emitted,
            "all_delivered": delivered and stats.sent == emitted and stats.dropped == 0,
            "events_per_s": emitted / (finished - started),
            "emit_only_per_s": emitted / (emitted_at - started),
            "seconds": finished - started,
            # CPU time is what a busy machine distorts least: events per
            # second of the client process's CPU is the rate it could reach
            # with a core to itself (one GIL: its threads never run at once).
            "client_cpu_s": client_cpu,
            "events_per_client_cpu_s": emitted / client_cpu if client_cpu else 0.0,
            "server_cpu_s": server_cpu,
            "retried": stats.retried,
            "dropped": stats.dropped,
        }
        timings.sort()
        result["emit_p50_us"] = percentile(timings, 0.50) / 1000
        result["emit_p99_us"] = percentile(timings, 0.99) / 1000
        result["emit_max_us"] = timings[-1] / 1000
        if server is not None:
            after = server.get("/api/v1/stats")[1]["eventsTotal"]
            result["server_events_total_delta"] = after - before
        return result
    finally:
        if server is not None:
            server.stop()


def ceiling(events: int, binary: Path, with_ids: bool = True) -> dict[str, Any]:
    """The server's own rate for the same events, posted as pre-built bodies (almost no client CPU).

    Tells what one sequential connection can reach at all on this machine:
    the client cannot beat it, so compare the throughput figure with this.
    """
    server = Server(binary)
    try:
        bodies = []
        for start in range(0, events, 1000):
            batch: list[dict[str, Any]] = [
                {
                    "type": "query_complete",
                    "data": EVENT_DATA,
                    "timestamp": "2026-01-01T00:00:00.000Z",
                    "source": "bench",
                }
                for _ in range(start, min(events, start + 1000))
            ]
            if with_ids:  # as the client sends them: the idempotency key
                for n, event in enumerate(batch, start):
                    event["id"] = f"sw-ceilingbench0000-{n}"
            lines = [json.dumps(event, separators=(",", ":")) for event in batch]
            bodies.append("\n".join(lines).encode())
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        cpu_before = server.cpu_seconds()
        started = time.perf_counter()
        for body in bodies:
            conn.request("POST", "/api/v1/ingest", body, {"Content-Type": "application/x-ndjson"})
            response = conn.getresponse()
            response.read()
            if response.status != 202:
                raise SystemExit(f"ceiling: HTTP {response.status}")
        seconds = time.perf_counter() - started
        server_cpu = server.cpu_seconds() - cpu_before
        conn.close()
        return {
            "events": events,
            "ids": with_ids,
            "events_per_s": events / seconds,
            "server_cpu_s": server_cpu,
            "server_cpu_us_per_event": server_cpu / events * 1e6,
        }
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["emit-latency", "throughput", "ceiling", "all"])
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--without-ids", action="store_true", help="ceiling: events without ids (no dedupe)")
    parser.add_argument(
        "--plugin", default="sqlite", help="throughput: the server's persist.plugin (memory: dedupe in memory only)"
    )
    parser.add_argument("--url", help="an already running sidewire (throughput)")
    parser.add_argument(
        "--bin", type=Path, default=Path(os.environ.get("SIDEWIRE_BIN") or REPO / "target/release/sidewire")
    )
    args = parser.parse_args()
    print(environment())
    if args.what in ("emit-latency", "all"):
        for run in range(args.runs):
            result = emit_latency(args.events or 100_000)
            print(
                f"emit-latency run {run + 1}: "
                + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()})
            )
    if args.what in ("throughput", "all"):
        if args.url is None and not args.bin.is_file():
            print(f"no sidewire binary at {args.bin}; build it or pass --bin/--url", file=sys.stderr)
            return 2
        rates = []
        for run in range(args.runs):
            result = throughput(args.events or 300_000, args.url, args.bin, args.plugin)
            rates.append(result["events_per_s"])
            print(
                f"throughput run {run + 1}: "
                + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()})
            )
            if not result["all_delivered"]:
                print("not every event was delivered", file=sys.stderr)
                return 1
        print(f"throughput median {statistics.median(rates):,.0f} events/s, best {max(rates):,.0f}")
    if args.what in ("ceiling", "all"):
        if not args.bin.is_file():
            print(f"no sidewire binary at {args.bin}", file=sys.stderr)
            return 2
        for run in range(args.runs):
            result = ceiling(args.events or 300_000, args.bin, with_ids=not args.without_ids)
            print(
                f"ceiling run {run + 1}: "
                + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()})
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
