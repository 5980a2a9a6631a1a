"""Fixtures: the real sidewire release binary on a free loopback port, and a stdlib stub server.

The binary comes from ``$SIDEWIRE_BIN`` (default ``<repo>/target/release/sidewire``).
When it is missing, tests that need it skip with the reason, unless
``$SIDEWIRE_TEST_REQUIRE`` (a comma list) names ``sidewire``: then they fail,
so CI cannot pass by skipping.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from stub_server import StubServer

REPO = Path(__file__).resolve().parents[3]


def required(program: str) -> bool:
    return program in {p.strip() for p in os.environ.get("SIDEWIRE_TEST_REQUIRE", "").split(",")}


def sidewire_binary() -> Path:
    """The binary under test, or skip/fail (see the module docstring)."""
    path = Path(os.environ.get("SIDEWIRE_BIN") or REPO / "target" / "release" / "sidewire")
    if path.is_file() and os.access(path, os.X_OK):
        return path
    reason = f"sidewire binary not found at {path} (build it with `cargo build --release` or set SIDEWIRE_BIN)"
    if required("sidewire"):
        pytest.fail(reason + "; SIDEWIRE_TEST_REQUIRE names sidewire")
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float, interval: float = 0.02, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


class Sidewire:
    """A ``sidewire serve`` process with its own config, store and port; can be killed and restarted."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        sections: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        config_text: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``sections`` are merged into a generated config; ``config_text`` is used as is instead.

        With ``config_text`` (e.g. a manifest's config), the loopback port and
        the temporary store are set through ``SIDEWIRE__*`` overrides, which
        win over the file, and so are the extra ``env`` overrides.
        """
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(env or {})
        self.config_path = workdir / "sidewire.toml"
        self.log_path = workdir / "sidewire.log"
        self.process: subprocess.Popen[bytes] | None = None
        if config_text is not None:
            self.config_path.write_text(config_text)
            self.env["SIDEWIRE__SERVER__LISTEN"] = f"127.0.0.1:{self.port}"
            self.env["SIDEWIRE__PERSIST__SQLITE_PATH"] = str(workdir / "sidewire.db")
            return
        config: dict[str, dict[str, Any]] = {
            "server": {"listen": f"127.0.0.1:{self.port}"},
            "persist": {"sqlite_path": str(workdir / "sidewire.db")},
            "telemetry": {"log_level": "warn"},
        }
        for section, keys in (sections or {}).items():
            config.setdefault(section, {}).update(keys)
        self.config_path.write_text(
            "".join(
                f"[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items()) + "\n"
                for section, keys in config.items()
            )
        )

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(self.binary), "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
            cwd=self.workdir,
            env={**os.environ, **self.env},
        )
        log.close()
        deadline = time.monotonic() + 15
        while not self.healthy():
            if self.process.poll() is not None:
                raise AssertionError(f"sidewire exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"sidewire did not answer /healthz within 15 s:\n{self.log_path.read_text()}")
            time.sleep(0.02)

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, the port refuses connections until :meth:`start`."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        status, body = self.request("GET", "/api/v1/stats")
        assert status == 200, body
        return dict(body)

    def events(self, *types: str) -> list[dict[str, Any]]:
        """Every stored event (of these types), oldest first, paging through the activity API."""
        items: list[dict[str, Any]] = []
        before: int | None = None
        while True:
            query = "limit=500" + "".join(f"&type={t}" for t in types)
            if before is not None:
                query += f"&before={before}"
            status, body = self.request("GET", f"/api/v1/activity/recent?{query}")
            assert status == 200, body
            items.extend(body["items"])
            before = body["nextBefore"]
            if before is None:
                return list(reversed(items))


@pytest.fixture(scope="session")
def sidewire_bin() -> Path:
    return sidewire_binary()


@pytest.fixture
def sidewire_factory(sidewire_bin: Path, tmp_path: Path) -> Iterator[Any]:
    """Start servers with extra config sections: ``sidewire_factory({"ingest": {"max_batch": 10}})``."""
    servers: list[Sidewire] = []

    def start(sections: Mapping[str, Mapping[str, Any]] | None = None) -> Sidewire:
        workdir = tmp_path / f"sidewire-{len(servers)}"
        workdir.mkdir()
        server = Sidewire(sidewire_bin, workdir, sections)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def sidewire(sidewire_factory: Any) -> Sidewire:
    """A sidewire server with the default config (SQLite in a temp dir)."""
    server: Sidewire = sidewire_factory()
    return server


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer()
    server.start()
    yield server
    server.stop()
