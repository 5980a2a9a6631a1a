"""``python -m sidewire_client emit --type T --data JSON``: one event from a shell script.

Sends the event synchronously (no queue, no background thread), prints the
seq the server gave it and exits 0. Exit 1 when the server refused it (its
error is printed on stderr), 2 for a usage error or an event that breaks the
contract (checked before sending), 3 when the server could not be reached.
``--retries`` retries connection failures, 408, 429 and 5xx with backoff;
that is safe because the event keeps one ``id`` across attempts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import time
from collections.abc import Sequence

from ._client import DEFAULT_URL
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
from ._transport import Endpoint, Transport
from ._version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sidewire_client", description="Send events to a sidewire sidecar.")
    parser.add_argument("--version", action="version", version=f"sidewire-client {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    emit = commands.add_parser("emit", help="send one event and print its seq")
    emit.add_argument("--type", required=True, help="event type, e.g. ingestion_complete")
    emit.add_argument("--data", default="{}", help="the event's data, a JSON object (default {})")
    emit.add_argument("--id", help="idempotency key (default: a unique one)")
    emit.add_argument("--source", default=os.environ.get("SIDEWIRE_SOURCE"), help="sender name ($SIDEWIRE_SOURCE)")
    emit.add_argument("--timestamp", help="RFC 3339 time of the event (default: now)")
    emit.add_argument("--url", default=os.environ.get("SIDEWIRE_URL", DEFAULT_URL), help="sidecar URL ($SIDEWIRE_URL)")
    emit.add_argument("--token", default=os.environ.get("SIDEWIRE_TOKEN"), help="ingest token ($SIDEWIRE_TOKEN)")
    emit.add_argument("--timeout", type=float, default=10.0, help="seconds per attempt (default 10)")
    emit.add_argument("--retries", type=int, default=0, help="retries of a failed attempt (default 0)")
    return parser


def _event_body(args: argparse.Namespace) -> bytes:
    encoder = Encoder()
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        raise InvalidEventError(f"--data is not JSON: {exc}") from None
    event_type = check_type(args.type)
    data_json = encoder.encode_data(data)
    if event_type == "stats_update":
        check_gauges(data)
    event_id = check_ascii_field("id", args.id, MAX_ID_LEN) if args.id is not None else IdFactory().next()
    parts = [
        '{"type":' + encoder.encode_str(event_type),
        '"data":' + data_json,
        '"timestamp":"' + (format_timestamp(args.timestamp) if args.timestamp else now_timestamp()) + '"',
        '"id":' + encoder.encode_str(event_id),
    ]
    if args.source:
        parts.append('"source":' + encoder.encode_str(check_ascii_field("source", args.source, MAX_SOURCE_LEN)))
    return (",".join(parts) + "}").encode("utf-8")


def _emit(args: argparse.Namespace) -> int:
    try:
        body = _event_body(args)
    except InvalidEventError as exc:
        print(f"sidewire-client: {exc}", file=sys.stderr)
        return 2
    try:
        endpoint = Endpoint.parse(args.url)
    except ValueError as exc:
        print(f"sidewire-client: {exc}", file=sys.stderr)
        return 2
    transport = Transport(endpoint, token=args.token, timeout=args.timeout)
    attempt = 0
    while True:
        retry_after: float | None = None
        try:
            response = transport.post(body, "application/json")
        except (OSError, http.client.HTTPException) as exc:
            problem = f"could not reach {args.url}: {exc.__class__.__name__}: {exc}"
            code = 3
        else:
            if 200 <= response.status < 300:
                seqs = response.body.get("seqs")
                print(seqs[0] if isinstance(seqs, list) and seqs else "")
                return 0
            problem = f"{response.status} {response.error_code}: {response.error_message}"
            if response.status < 500 and response.status not in (408, 429):
                print(f"sidewire-client: refused: {problem}", file=sys.stderr)
                return 1
            retry_after = response.retry_after
            code = 1
        if attempt >= args.retries:
            print(f"sidewire-client: {problem}", file=sys.stderr)
            return code
        attempt += 1
        delay = random.uniform(0.5, 1.0) * min(10.0, 0.2 * 2 ** (attempt - 1))
        time.sleep(max(delay, min(retry_after or 0.0, 30.0)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m sidewire_client`` and the ``sidewire-client`` script."""
    args = _parser().parse_args(argv)
    if args.command == "emit":
        return _emit(args)
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":
    sys.exit(main())
