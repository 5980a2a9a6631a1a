"""The client: a non-blocking ``emit`` in front of one background sender thread.

Design, and why:

* ``emit`` runs on the application's request path, so it only validates,
  serializes the event once and appends the bytes to a bounded queue under a
  short lock. It never does I/O, never waits for the server and never raises.
* One daemon thread (started on the first ``emit``) owns the HTTP connection
  and sends NDJSON batches. Only one batch is in flight at a time: that keeps
  events in order and bounds memory to the queue plus one batch.
* The queue is bounded by count and by bytes. When it is full the *oldest*
  event is dropped (the newest tell more about the present) and counted.
* Every failure that may be temporary (no connection, a timeout, 408, 429,
  5xx) keeps the batch and retries it with exponential backoff and jitter,
  ``Retry-After`` as a floor. Re-sending is safe because each event carries a
  unique ``id`` and the server's ingest is idempotent by ``id``.
* Answers that will not change on a retry (400, 401, 413, 415, ...) never
  loop: the one bad event is dropped (400 with ``index``), the batch is split
  (413), or the batch is dropped (401/415), each logged at most once per
  ``log_interval`` per kind.
"""

from __future__ import annotations

import asyncio
import atexit
import http.client
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from types import TracebackType
from typing import Any, Final

from . import _otel
from ._events import (
    MAX_ID_LEN,
    MAX_SOURCE_LEN,
    Encoder,
    IdFactory,
    InvalidEventError,
    check_ascii_field,
    check_gauges,
    check_type,
    format_timestamp,
    now_timestamp,
)
from ._transport import Endpoint, Response, Transport

logger: Final = logging.getLogger("sidewire_client")

DEFAULT_URL: Final = "http://127.0.0.1:8790"
#: The server's default ``ingest.max_batch`` and ``ingest.max_body_bytes``.
SERVER_MAX_BATCH: Final = 1000
SERVER_MAX_BODY_BYTES: Final = 1024 * 1024

Timestamp = datetime | float | int | str
"""What ``emit(timestamp=...)`` accepts: a ``datetime``, epoch seconds, or RFC 3339 text."""

# A queued event: its NDJSON line and the traceparent current when it was emitted.
_Item = tuple[bytes, str | None]

# emit() yields the GIL when the queue length is a multiple of this + 1 while a batch is being sent.
_YIELD_MASK: Final = 255

# Statuses worth retrying: the same request may succeed later.
_RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})

# Why events were dropped (keys of ClientStats.dropped_by_reason).
DROP_REASONS: Final = (
    "invalid",  # emit(): breaks a contract rule, never queued
    "closed",  # emit() after close()
    "queue_full",  # the oldest queued event, pushed out by a newer one
    "rejected",  # the server refused it (400): it would never be accepted
    "too_large",  # alone over the server's body limit (413)
    "unauthorized",  # 401/403: wrong or missing token
    "refused",  # any other answer that a retry cannot change (404, 415, ...)
    "shutdown",  # still undelivered when close()'s timeout ran out
    "error",  # an unexpected error in the sender thread (a bug: logged with its traceback)
)


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of what the client did with the events it was given.

    Every emitted event ends up counted once in ``sent`` or ``dropped``, or is
    still ``queued`` (waiting, or in the batch being sent).
    """

    queued: int
    """Events waiting in the queue or in the batch in flight."""
    sent: int
    """Events the server acknowledged with 202 (duplicates included)."""
    duplicates: int
    """Of ``sent``, events the server already had (a retry after a lost answer)."""
    dropped: int
    """Events given up on, for any reason (see ``dropped_by_reason``)."""
    retried: int
    """Attempts that failed in a way worth retrying and were retried (batches, not events)."""
    dropped_by_reason: Mapping[str, int] = field(default_factory=dict)


class _RateLimitedLog:
    """Log a kind of message at most once per interval, counting what was held back.

    A server that answers 401 to every batch must not flood the host app's
    logs; one line per minute that says how many were suppressed is enough.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        held_back = self._suppressed.pop(key, 0)
        if held_back:
            message += f" ({held_back} more like this in the last {self.interval:g} s)"
        logger.warning("%s", message)


class Client:
    """Sends events to a sidewire sidecar without ever blocking or raising in the caller.

    ``url`` is the sidecar's base URL (``http://127.0.0.1:8790``, the
    default, or ``$SIDEWIRE_URL``); ``token`` an ingest token (default
    ``$SIDEWIRE_TOKEN``); ``source`` names this backend instance in every
    event (default ``$SIDEWIRE_SOURCE``).

    Batching: the sender wakes when ``flush_at`` events are queued or the
    oldest has waited ``flush_interval`` seconds, and then sends everything
    queued in batches of at most ``max_batch`` events and ``max_batch_bytes``
    bytes (keep both at or below the server's ``ingest.max_batch`` and
    ``ingest.max_body_bytes``; a 413 halves the batch size for the rest of
    the client's life).

    Memory: at most ``max_queue`` events and ``max_queue_bytes`` bytes wait,
    plus the one batch in flight.

    Retries: exponential backoff from ``backoff_base`` doubling to
    ``backoff_max`` seconds, each delay drawn uniformly from its upper half
    (jitter, so many clients do not retry in step), never shorter than the
    server's ``Retry-After`` (itself capped at ``max_retry_after``). There is
    no retry limit: while the server is away the queue holds what it can and
    drops the oldest beyond that, and ``close()`` gives up at its timeout.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        source: str | None = None,
        *,
        flush_at: int = 200,
        flush_interval: float = 0.5,
        max_batch: int = SERVER_MAX_BATCH,
        max_batch_bytes: int = SERVER_MAX_BODY_BYTES,
        max_queue: int = 10_000,
        max_queue_bytes: int = 16 * 1024 * 1024,
        timeout: float = 10.0,
        backoff_base: float = 0.2,
        backoff_max: float = 30.0,
        max_retry_after: float = 300.0,
        atexit_timeout: float = 2.0,
        propagate_trace: bool = True,
        json_default: Callable[[Any], Any] | None = None,
        log_interval: float = 60.0,
        idle_reconnect: float = 5.0,
    ) -> None:
        url = url if url is not None else os.environ.get("SIDEWIRE_URL") or DEFAULT_URL
        token = token if token is not None else os.environ.get("SIDEWIRE_TOKEN") or None
        source = source if source is not None else os.environ.get("SIDEWIRE_SOURCE") or None
        if flush_at < 1 or max_batch < 1 or max_queue < 1:
            raise ValueError("flush_at, max_batch and max_queue must be at least 1")
        if flush_interval <= 0 or timeout <= 0 or backoff_base <= 0 or backoff_max < backoff_base:
            raise ValueError("flush_interval, timeout and backoff_base must be > 0, backoff_max >= backoff_base")
        if token is not None and ("\r" in token or "\n" in token):
            raise ValueError("token must not contain line breaks")
        self._encoder = Encoder(json_default)
        self._source_json = ""
        if source is not None:
            try:
                check_ascii_field("source", source, MAX_SOURCE_LEN)
            except InvalidEventError as exc:
                raise ValueError(str(exc)) from None
            self._source_json = ',"source":' + self._encoder.encode_str(source)
        self.url = url
        self.source = source
        self._transport = Transport(Endpoint.parse(url), token=token, timeout=timeout, idle_reconnect=idle_reconnect)
        self._flush_at = flush_at
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._max_queue = max_queue
        self._max_queue_bytes = max_queue_bytes
        self._timeout = timeout
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_retry_after = max_retry_after
        self._atexit_timeout = atexit_timeout
        self._traceparent = _otel.traceparent_getter() if propagate_trace else None
        self._log = _RateLimitedLog(log_interval)
        self._ids = IdFactory()
        # Types already checked: a dict lookup is cheaper than the regex, and
        # an application uses a handful of types. Bounded against misuse.
        self._known_types: set[str] = set()
        self._init_state()
        _live_clients.add(self)
        atexit.register(self._atexit)

    def _init_state(self) -> None:
        """Everything a forked child must get fresh: locks, queue, thread, counters."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the sender waits on it
        self._progress = threading.Condition(self._lock)  # flush() waits on it
        self._queue: deque[_Item] = deque()
        self._queue_bytes = 0
        self._oldest_at = 0.0
        self._inflight = 0
        self._enqueued = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._closing = False
        self._close_deadline = 0.0
        self._close_kick = False
        self._flush_requested = False
        self._sending = False  # a batch is on the wire (read without the lock: a hint only)
        self._batch_limit = self._max_batch
        self._sent = 0
        self._duplicates = 0
        self._retried = 0
        self._overflowed_since_log = 0
        self._dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)

    # ------------------------------------------------------------------ emit

    def emit(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        timestamp: Timestamp | None = None,
    ) -> bool:
        """Queue one event; True when it was queued, False when it was dropped (and counted).

        Never blocks on I/O and never raises. ``data`` must be a JSON object
        of at most 64 KiB serialized and 32 levels; ``id`` (1-128 printable
        ASCII characters) defaults to a unique one, the idempotency key that
        makes retries safe; ``timestamp`` defaults to now (UTC, milliseconds).
        """
        try:
            if self._pid != os.getpid():
                self._after_fork()
            if self._closed:
                self._count_drop("closed")
                return False
            line = self._serialize(type, data, id, timestamp)
            traceparent = self._traceparent() if self._traceparent is not None else None
        except Exception as exc:  # whatever the caller passed, emit must not raise
            self._invalid(exc)
            return False
        size = len(line)
        with self._lock:
            if self._closed:
                self._dropped["closed"] += 1
                return False
            queue = self._queue
            if not queue:
                self._oldest_at = time.monotonic()
            queue.append((line, traceparent))
            self._queue_bytes += size
            self._enqueued += 1
            if len(queue) > self._max_queue or self._queue_bytes > self._max_queue_bytes:
                self._drop_oldest()
            length = len(queue)
            if length in (1, self._flush_at):
                self._wake.notify()
            if self._thread is None:
                self._start_sender()
        if self._sending and not length & _YIELD_MASK:
            # A batch is on the wire and a burst of emits keeps this thread
            # busy: hand the GIL over now and then, so the sender can read
            # the answer without waiting out the interpreter's switch
            # interval (5 ms) at each socket call. Once per 256 events, and
            # only during bursts: rare enough to stay out of emit's p99.
            time.sleep(0)
        return True

    def _serialize(
        self, event_type: str, data: Mapping[str, Any] | None, event_id: str | None, timestamp: Timestamp | None
    ) -> bytes:
        if event_type not in self._known_types:
            check_type(event_type)
            if len(self._known_types) < 1024:
                self._known_types.add(event_type)
        data_json = self._encoder.encode_data(data)
        if event_type == "stats_update" and data:
            check_gauges(data)
        if event_id is None:
            id_json = '"' + self._ids.next() + '"'
        else:
            id_json = self._encoder.encode_str(check_ascii_field("id", event_id, MAX_ID_LEN))
        stamp = now_timestamp() if timestamp is None else format_timestamp(timestamp)
        text = f'{{"type":"{event_type}","data":{data_json},"timestamp":"{stamp}","id":{id_json}{self._source_json}}}'
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidEventError("field `data`: contains a lone surrogate (not UTF-8)") from exc

    def _invalid(self, problem: Exception) -> None:
        """Count and log (rate-limited) an event that could not be queued; never raises."""
        try:
            self._count_drop("invalid")
            if isinstance(problem, InvalidEventError):
                self._log.warning("invalid", f"sidewire: event dropped, {problem}")
            else:
                self._log.warning("invalid", f"sidewire: event dropped, it could not be encoded: {problem!r}")
        except Exception:  # a repr or a log handler that raises: still nothing for the caller
            logger.debug("sidewire: could not report a dropped event", exc_info=True)

    def _drop_oldest(self) -> None:
        """Make room (lock held): drop the oldest queued events until both bounds hold."""
        queue = self._queue
        while len(queue) > 1 and (len(queue) > self._max_queue or self._queue_bytes > self._max_queue_bytes):
            line, _ = queue.popleft()
            self._queue_bytes -= len(line)
            self._dropped["queue_full"] += 1
            self._overflowed_since_log += 1
        self._progress.notify_all()

    def _count_drop(self, reason: str) -> None:
        with self._lock:
            self._dropped[reason] += 1

    # --------------------------------------------------------------- helpers

    def ingestion_complete(
        self,
        file: str | None = None,
        *,
        nodes_created: int | None = None,
        duration_ms: float | None = None,
        id: str | None = None,
        timestamp: Timestamp | None = None,
        **data: Any,
    ) -> bool:
        """A file finished processing (the default config counts it in ``filesProcessed``)."""
        fields: dict[str, Any] = {}
        if file is not None:
            fields["file"] = file
        if nodes_created is not None:
            fields["nodesCreated"] = nodes_created
        if duration_ms is not None:
            fields["durationMs"] = duration_ms
        fields.update(data)
        return self.emit("ingestion_complete", fields, id=id, timestamp=timestamp)

    def query_complete(
        self,
        query: str | None = None,
        *,
        latency_ms: float | None = None,
        id: str | None = None,
        timestamp: Timestamp | None = None,
        **data: Any,
    ) -> bool:
        """A chat/search query finished (counted in ``queriesCompleted``)."""
        fields: dict[str, Any] = {}
        if query is not None:
            fields["query"] = query
        if latency_ms is not None:
            fields["latencyMs"] = latency_ms
        fields.update(data)
        return self.emit("query_complete", fields, id=id, timestamp=timestamp)

    def error(
        self,
        message: str,
        *,
        component: str | None = None,
        code: str | None = None,
        id: str | None = None,
        timestamp: Timestamp | None = None,
        **data: Any,
    ) -> bool:
        """A system error worth showing on a dashboard (counted in ``errors``)."""
        fields: dict[str, Any] = {"message": message}
        if component is not None:
            fields["component"] = component
        if code is not None:
            fields["code"] = code
        fields.update(data)
        return self.emit("error", fields, id=id, timestamp=timestamp)

    def gauge(self, **values: float) -> bool:
        """Set gauges (a ``stats_update`` event): ``client.gauge(totalNodes=45, queueDepth=3)``."""
        return self.emit("stats_update", values)

    # ------------------------------------------------------- flush and close

    @property
    def stats(self) -> ClientStats:
        """Counters of what happened to the events so far (see :class:`ClientStats`)."""
        with self._lock:
            dropped = dict(self._dropped)
            return ClientStats(
                queued=len(self._queue) + self._inflight,
                sent=self._sent,
                duplicates=self._duplicates,
                dropped=sum(dropped.values()),
                retried=self._retried,
                dropped_by_reason=dropped,
            )

    def flush(self, timeout: float = 5.0) -> bool:
        """Send what is queued now, waiting at most ``timeout`` seconds.

        True when every event emitted before the call has left the client
        (delivered, or dropped for a reason ``stats`` shows); False on
        timeout, e.g. while the server is down (the events stay queued).
        Does not cut a retry backoff short: calling it in a loop must not
        turn into a busy loop against a server that is down.
        """
        if self._pid != os.getpid():
            self._after_fork()
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._enqueued
            if self._done_count() >= target:
                return True
            self._flush_requested = True
            self._wake.notify()
            while self._done_count() < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(remaining)
            return True

    def _done_count(self) -> int:
        # Events leave in FIFO order, so "emitted minus still here" counts
        # exactly the oldest events that were delivered or dropped.
        return self._enqueued - len(self._queue) - self._inflight

    def close(self, timeout: float = 5.0) -> bool:
        """Stop accepting events, send what is queued for at most ``timeout`` seconds, stop the thread.

        One immediate attempt is made even while a retry backoff is running
        (the server may be back); whatever is still undelivered at the
        deadline is dropped and counted (``shutdown``). Returns True when
        nothing was left behind (everything was sent, or dropped for a reason
        other than the deadline). Safe to call more than once.
        """
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            abandoned_before = self._dropped["shutdown"]
            self._closed = True
            if not self._closing:
                self._closing = True
                self._close_deadline = time.monotonic() + timeout
                self._close_kick = True
            thread = self._thread
            self._wake.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, self._close_deadline - time.monotonic()) + 0.05)
        if thread is None or not thread.is_alive():
            self._transport.close()
        atexit.unregister(self._atexit)
        with self._lock:
            return not self._queue and self._inflight == 0 and self._dropped["shutdown"] == abandoned_before

    async def aflush(self, timeout: float = 5.0) -> bool:
        """:meth:`flush` for async code: waits in a worker thread, not on the event loop."""
        return await asyncio.to_thread(self.flush, timeout)

    async def aclose(self, timeout: float = 5.0) -> bool:
        """:meth:`close` for async code (e.g. in an ASGI lifespan's shutdown)."""
        return await asyncio.to_thread(self.close, timeout)

    def _atexit(self) -> None:
        # A short cap: a process must not hang at exit because the sidecar is away.
        try:
            self.close(self._atexit_timeout)
        except Exception:  # never fail the interpreter's shutdown
            logger.debug("sidewire: close at exit failed", exc_info=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(url={self.url!r}, source={self.source!r})"

    # ------------------------------------------------------------------ fork

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock, queue and (lazily) thread; new ids; no inherited socket.

        The parent's thread does not exist in the child and its lock may have
        been held at the moment of the fork, so neither can be reused. The
        parent's queued events stay the parent's to send. The id prefix is
        re-drawn, or the child would repeat the parent's ids and the server
        would drop its events as duplicates.
        """
        closed = self._closed
        self._init_state()
        self._closed = closed
        self._closing = closed
        self._ids.reseed()
        self._transport.forget()

    # ---------------------------------------------------------------- sender

    def _start_sender(self) -> None:
        """Start the sender thread (lock held; first emit, or first emit after a fork)."""
        thread = threading.Thread(target=self._run, name="sidewire-client-sender", daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        """The sender thread: take a batch, deliver it (with retries), repeat until closed."""
        pid = os.getpid()
        while True:
            batch = self._next_batch()
            if batch is None or pid != os.getpid():
                return
            try:
                self._deliver(batch)
            except Exception:  # a bug here must not kill the thread and strand the queue
                logger.exception("sidewire: unexpected error while sending a batch; batch dropped")
                with self._lock:  # whatever of the batch is still in flight
                    self._dropped["error"] += self._inflight
                    self._inflight = 0
                    self._progress.notify_all()

    def _next_batch(self) -> list[_Item] | None:
        """Wait until a batch is due, then move it from the queue to in-flight."""
        if self._overflowed_since_log:  # logged here, outside the lock, never in emit()
            with self._lock:
                count, self._overflowed_since_log = self._overflowed_since_log, 0
            self._log.warning(
                "queue_full",
                f"sidewire: queue full ({self._max_queue} events / {self._max_queue_bytes} bytes), "
                f"dropped {count} oldest events",
            )
        with self._lock:
            while True:
                queue = self._queue
                if self._closing and time.monotonic() >= self._close_deadline:
                    self._abandon_queue()
                    return None
                if not queue:
                    self._flush_requested = False
                    if self._closing:
                        return None
                    self._wake.wait()
                    continue
                if len(queue) >= self._flush_at or self._flush_requested or self._closing:
                    break
                remaining = self._oldest_at + self._flush_interval - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.wait(remaining)
            batch = self._take_batch(queue)
            self._inflight = len(batch)
            if queue:
                self._oldest_at = time.monotonic()
            return batch

    def _take_batch(self, queue: deque[_Item]) -> list[_Item]:
        """Pop the next batch (lock held): at most ``_batch_limit`` events and ``max_batch_bytes`` bytes.

        Runs while emit() waits for the lock, so the common cases avoid a
        Python-level loop: when everything queued fits the byte limit, the
        batch is a C-speed copy or slice of the queue.
        """
        count = len(queue)
        limit = self._batch_limit
        byte_limit = self._max_batch_bytes
        if self._queue_bytes + count <= byte_limit:  # + one newline per event
            if count <= limit:
                batch = list(queue)
                queue.clear()
                self._queue_bytes = 0
                return batch
            pop = queue.popleft
            batch = [pop() for _ in range(limit)]
            self._queue_bytes -= sum(map(len, map(itemgetter(0), batch)))
            return batch
        batch = []
        size = 0
        while queue and len(batch) < limit:
            item = queue[0]
            # +1 for the newline; the first event goes even if it alone is too big (the server decides).
            if batch and size + len(item[0]) + 1 > byte_limit:
                break
            queue.popleft()
            batch.append(item)
            size += len(item[0]) + 1
        self._queue_bytes -= size - len(batch)
        return batch

    def _abandon_queue(self) -> None:
        """Close deadline passed (lock held): count what is left as dropped."""
        self._dropped["shutdown"] += len(self._queue)
        self._queue.clear()
        self._queue_bytes = 0
        self._progress.notify_all()

    def _finish(self, count: int, *, sent: int = 0, duplicates: int = 0, dropped: str | None = None) -> None:
        """``count`` events of the in-flight batch are done: delivered or dropped."""
        with self._lock:
            self._inflight = max(0, self._inflight - count)
            self._sent += sent
            self._duplicates += duplicates
            if dropped is not None:
                self._dropped[dropped] += count
            self._progress.notify_all()

    def _deliver(self, batch: list[_Item]) -> None:
        """Send one batch until every event in it is delivered or dropped for good.

        ``pending`` holds the parts still to send: a 413 splits a part in two,
        a 400 with ``index`` removes one event from it. Each non-retryable
        answer removes at least one event, so this loop ends; retryable
        failures wait a growing backoff in between.
        """
        pending: deque[list[_Item]] = deque([batch])
        failures = 0
        while pending:
            part = pending[0]
            timeout = self._timeout
            if self._closing:
                remaining = self._close_deadline - time.monotonic()
                if remaining <= 0:
                    self._finish(sum(len(p) for p in pending), dropped="shutdown")
                    return
                timeout = max(0.05, min(timeout, remaining))
            body = b"\n".join(map(itemgetter(0), part))
            response: Response | None = None
            self._sending = True
            try:
                response = self._transport.post(body, traceparent=part[0][1], timeout=timeout)
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
            else:
                problem = f"HTTP {response.status} {response.error_code or ''}".rstrip()
            finally:
                self._sending = False
            if response is not None:
                status = response.status
                if 200 <= status < 300:
                    duplicates = response.body.get("duplicates", 0)
                    self._finish(
                        len(part),
                        sent=len(part),
                        duplicates=duplicates if isinstance(duplicates, int) else 0,
                    )
                    pending.popleft()
                    failures = 0
                    continue
                if status not in _RETRYABLE_STATUSES and status < 500:
                    self._refused(pending, response)
                    failures = 0
                    continue
            failures += 1
            with self._lock:
                self._retried += 1
            delay = self._backoff(failures, response.retry_after if response is not None else None)
            self._log.warning(
                "retry",
                f"sidewire: ingest at {self.url} failed ({problem}); "
                f"{sum(len(p) for p in pending)} events kept, retrying in {delay:.2f} s",
            )
            self._sleep(delay)

    def _refused(self, pending: deque[list[_Item]], response: Response) -> None:
        """Handle an answer that a retry of the same request cannot change."""
        part = pending[0]
        status, code, message = response.status, response.error_code, response.error_message
        index = response.error_index
        if status == 400 and index is not None and 0 <= index < len(part):
            # All or nothing: nothing of this request was stored. Drop the one
            # event to blame and send the others again.
            self._log.warning(f"rejected:{code}", f"sidewire: server refused an event ({code}): {message}; dropped it")
            rest = part[:index] + part[index + 1 :]
            if rest:
                pending[0] = rest
            else:
                pending.popleft()
            self._finish(1, dropped="rejected")
        elif status == 413 and len(part) > 1:
            half = len(part) // 2
            if half < self._batch_limit:
                self._batch_limit = half
                logger.info("sidewire: server answered 413; batches are now at most %d events", half)
            pending.popleft()
            pending.appendleft(part[half:])
            pending.appendleft(part[:half])
        else:
            pending.popleft()
            if status == 413:
                reason = "too_large"
            elif status == 400:
                reason = "rejected"
            elif status in (401, 403):
                reason = "unauthorized"
            else:
                reason = "refused"
            self._log.warning(
                f"refused:{status}",
                f"sidewire: ingest at {self.url} answered {status} ({code}): {message}; dropped {len(part)} events",
            )
            self._finish(len(part), dropped=reason)

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter in the upper half; ``Retry-After`` is the floor."""
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** min(failures - 1, 30))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._max_retry_after))
        return delay

    def _sleep(self, delay: float) -> None:
        """Wait out a backoff; close() cuts it short once (one last try) and at its deadline."""
        with self._lock:
            end = time.monotonic() + delay
            while True:
                if self._closing:
                    if self._close_kick:
                        self._close_kick = False
                        return
                    end = min(end, self._close_deadline)
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return
                self._wake.wait(remaining)


# Clients alive in this process, reset in a forked child (os.register_at_fork).
_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _reset_clients_in_child() -> None:
    for client in list(_live_clients):
        client._after_fork()


os.register_at_fork(after_in_child=_reset_clients_in_child)
